"""Read StyleGAN2 network files without running any code stored in them.

Pretrained StyleGAN2 weights come as pickles: stylegan2-ada-pytorch pickles
(persistent classes that carry their own source code, torch tensors inside),
TensorFlow StyleGAN2 / stylegan2-ada pickles (``dnnlib.tflib.network.Network``
objects holding numpy arrays and the source of their build function) and
``torch.save`` files (rosinality's ``.pt``). Loading any of them with
``pickle.load`` or ``torch.load`` executes that code. This module instead
unpickles with an allow-list: only the handful of globals needed to rebuild
arrays and plain containers resolve, each to a small function of our own that
rebuilds numpy arrays with ``np.frombuffer``. Every other global raises
:class:`UnsafePickleError` before anything is called. torch is never imported.

Objects of the formats' own classes come back as inert records:
:class:`PersistentObject` (ada-pytorch ``persistence`` classes: class name and
state; ``module_src`` is kept as text and never executed), :class:`TFNetwork`
(TF ``Network``: its pickled state dict), :class:`Namespace`
(``argparse.Namespace``) and :class:`ScriptObject` (an object of a TorchScript
class, ``__torch__.*``: its attributes; a TorchScript archive's ``code/`` is
never read). Tensors and numpy arrays come back as ``np.ndarray``.

Public entry points: :func:`load` (any of the supported containers, detected
from the bytes), :func:`loads_pickle`, :func:`loads_torch`, and
:func:`module_state_dict` / :func:`script_module_state_dict` to flatten a
module into ``{dotted name: array}``.
"""
import collections
import io
import pickle
import struct
import zipfile

import numpy as np

from gantl_jax.errors import UnsafePickleError, SourceFormatError

__all__ = [
  "PersistentObject",
  "TFNetwork",
  "Namespace",
  "ScriptObject",
  "load",
  "loads_pickle",
  "loads_torch",
  "module_state_dict",
  "script_module_state_dict",
]

# torch.save's legacy (non-zip) stream starts with this pickled integer.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_LEGACY_PROTOCOL = 1001


# ---------------------------------------------------------------------------
# What find_class hands out is shared by every load in the process (one allow-list), so a file
# must not be able to change it: a BUILD on, say, the FloatStorage tag that renamed it to
# BFloat16Storage would make every later, clean file read float32 tensors as bfloat16. Every
# handed-out object is therefore frozen: attributes cannot be set or deleted, and BUILD (which
# calls ``__setstate__`` first) is refused.


def _refuse_state(what: str):
  raise UnsafePickleError(
    f"refusing to set state or attributes on {what}: it is one of this reader's own "
    "allow-listed globals, shared by every file it reads (BUILD on a global is never "
    "written by the supported formats)")


class _Frozen:
  """Base of the allow-listed objects that are not classes: immutable, refuses BUILD."""
  __slots__ = ()

  def __setattr__(self, name, value):
    _refuse_state(f"{self!r} (attribute {name!r})")

  def __delattr__(self, name):
    _refuse_state(f"{self!r} (attribute {name!r})")

  def __setstate__(self, state):
    _refuse_state(repr(self))


class _FrozenClass(type):
  """Metaclass of the allow-listed stand-in classes: the class itself is immutable.

  Instances keep their own ``__setstate__``; only on the class object does the
  lookup find the refusing one below (a data descriptor of the metaclass wins
  over the class's own attribute there).
  """

  def __setattr__(cls, name, value):
    _refuse_state(f"class {cls.__name__} (attribute {name!r})")

  def __delattr__(cls, name):
    _refuse_state(f"class {cls.__name__} (attribute {name!r})")

  @property
  def __setstate__(cls):
    def refuse(state):
      _refuse_state(f"class {cls.__name__}")
    return refuse


# ---------------------------------------------------------------------------
# Inert stand-ins for the formats' own classes.


class PersistentObject:
  """Stand-in for an ada-pytorch ``persistence.persistent_class`` instance.

  Attributes: ``class_name`` (e.g. 'Generator'), ``state`` (the object's
  ``__dict__`` as pickled: ``_parameters``/``_buffers``/``_modules``
  OrderedDicts, ``_init_kwargs``...), ``version`` and ``module_src`` (the
  pickled module source, kept as text only, never executed).
  """

  def __init__(self, meta):
    if not isinstance(meta, dict):
      raise UnsafePickleError("persistent object meta is not a dict")
    self.type = meta.get("type")
    self.version = meta.get("version")
    self.class_name = meta.get("class_name")
    self.module_src = meta.get("module_src")
    self.state = meta.get("state")

  def __repr__(self):
    return f"PersistentObject({self.class_name!r})"


class TFNetwork(metaclass=_FrozenClass):
  """Stand-in for ``dnnlib.tflib.network.Network``: keeps its pickled state.

  ``state`` has 'name', 'static_kwargs', 'components' (dict of TFNetwork),
  'variables' (list of (name, np.ndarray)), 'build_module_src' (never run).
  """

  def __init__(self, *args, **kwargs):
    self.state = {}

  def __setstate__(self, state):
    if not isinstance(state, dict):
      raise UnsafePickleError("TF Network state is not a dict")
    self.state = state

  def __repr__(self):
    return f"TFNetwork({self.state.get('name')!r})"


class Namespace(metaclass=_FrozenClass):
  """Stand-in for ``argparse.Namespace`` (rosinality's saved 'args')."""

  def __init__(self, *args, **kwargs):
    self.state = dict(kwargs)

  def __setstate__(self, state):
    # NEWOBJ makes instances with __new__ alone, so __init__ may not have run.
    if not isinstance(state, dict):
      raise UnsafePickleError("Namespace state is not a dict")
    self.state = dict(state)

  def __repr__(self):
    return f"Namespace({self.state!r})"


class ScriptObject(metaclass=_FrozenClass):
  """Stand-in for an object of a TorchScript class (``torch.jit.save``'s ``data.pkl``).

  TorchScript pickles each module as ``NEWOBJ`` of a ``__torch__.<qualified name>`` class
  (the class exists only as source text in the archive's ``code/``) followed by ``BUILD``
  with its attribute dict: ``training``, parameters and buffers as tensors, submodules as
  further objects. Every ``__torch__`` global resolves to this one inert class, so the
  class name is not kept; ``state`` is the attribute dict. Read it with
  :func:`script_module_state_dict`.
  """

  def __setstate__(self, state):
    # NEWOBJ makes instances with __new__ alone; BUILD then hands over the attributes.
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
      raise UnsafePickleError("TorchScript object state is not a dict of attribute names")
    self.state = state

  def __repr__(self):
    return f"ScriptObject({sorted(getattr(self, 'state', {}))!r})"


class _EasyDict(dict, metaclass=_FrozenClass):
  """Stand-in for ``dnnlib.EasyDict``: a dict; turned into a plain dict."""

  def __setstate__(self, state):
    # EasyDict keeps its content as dict items; any instance state is noise.
    pass


# ---------------------------------------------------------------------------
# Array rebuilding: numpy pickles.


class _Marker(_Frozen):
  """A named placeholder returned for globals used only as tags."""
  __slots__ = ("name",)

  def __init__(self, name):
    object.__setattr__(self, "name", name)

  def __repr__(self):
    return f"<{self.name}>"


_NDARRAY = _Marker("numpy.ndarray")
_TENSOR_TYPES = {
  ("torch", "Tensor"): _Marker("torch.Tensor"),
  ("torch._tensor", "Tensor"): _Marker("torch.Tensor"),
  ("torch.nn.parameter", "Parameter"): _Marker("torch.nn.Parameter"),
}

# Only plain numeric and bool dtypes are rebuilt; object, string, void and
# structured dtypes could smuggle in objects or are not weights at all.
_ALLOWED_DTYPE_KINDS = "biuf"


def _checked_dtype(dtype):
  dtype = np.dtype(dtype)
  if dtype.kind not in _ALLOWED_DTYPE_KINDS or dtype.fields is not None:
    raise UnsafePickleError(f"refusing numpy dtype {dtype!r}: only bool, integer and "
                            "floating-point arrays are read")
  return dtype


class _DTypeStub:
  """What ``numpy.dtype(name, align, copy)`` + BUILD rebuilds to."""

  def __init__(self, name):
    if not isinstance(name, str) or len(name) > 8:
      raise UnsafePickleError(f"bad numpy dtype name {name!r}")
    self.dtype = _checked_dtype(name)

  def __setstate__(self, state):
    # state = (version, byteorder, subarray, names, fields, elsize, alignment, flags)
    if not isinstance(state, tuple) or len(state) < 5:
      raise UnsafePickleError("bad numpy dtype state")
    if state[2] is not None or state[3] is not None or state[4] is not None:
      raise UnsafePickleError("refusing structured numpy dtype")
    byteorder = state[1]
    if byteorder in ("<", ">"):
      self.dtype = self.dtype.newbyteorder(byteorder)
    elif byteorder not in ("|", "="):
      raise UnsafePickleError(f"bad numpy byte order {byteorder!r}")


def _numpy_dtype(name, align=False, copy=False):
  return _DTypeStub(name)


def _as_dtype(obj):
  if isinstance(obj, _DTypeStub):
    return obj.dtype
  if isinstance(obj, np.dtype):
    return _checked_dtype(obj)
  raise UnsafePickleError(f"expected a numpy dtype, got {type(obj).__name__}")


def _as_bytes(obj):
  if isinstance(obj, (bytes, bytearray)):
    return bytes(obj)
  if isinstance(obj, str):
    # Python-2 era pickles store raw bytes as latin-1 strings.
    return obj.encode("latin-1")
  raise UnsafePickleError(f"expected raw bytes, got {type(obj).__name__}")


class _NDArrayStub:
  """What ``numpy.core.multiarray._reconstruct`` + BUILD rebuilds to."""

  def __init__(self):
    self.array = None

  def __setstate__(self, state):
    # state = (version, shape, dtype, is_fortran, rawdata)
    if not isinstance(state, tuple) or len(state) != 5:
      raise UnsafePickleError("bad numpy array state")
    _, shape, dtype, is_fortran, raw = state
    self.array = _array_from_bytes(
      _as_bytes(raw), _as_dtype(dtype), shape, "F" if is_fortran else "C")


def _array_from_bytes(raw, dtype, shape, order="C"):
  shape = tuple(int(s) for s in shape)
  if any(s < 0 for s in shape):
    raise UnsafePickleError(f"bad array shape {shape}")
  count = int(np.prod(shape, dtype=np.int64))
  if len(raw) != count * dtype.itemsize:
    raise SourceFormatError(
      f"array data has {len(raw)} bytes, expected {count * dtype.itemsize} "
      f"for shape {shape} {dtype}")
  arr = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape, order=order)
  return arr.astype(dtype.newbyteorder("="), copy=True)


def _numpy_reconstruct(cls, shape, typecode):
  if cls is not _NDARRAY:
    raise UnsafePickleError("numpy _reconstruct of something other than ndarray")
  return _NDArrayStub()


def _numpy_scalar(dtype, raw=None):
  dtype = _as_dtype(dtype)
  raw = _as_bytes(raw)
  if len(raw) != dtype.itemsize:
    raise SourceFormatError("numpy scalar has the wrong number of bytes")
  return np.frombuffer(raw, dtype=dtype)[0].astype(dtype.newbyteorder("="))


def _numpy_frombuffer(buf, dtype, shape, order):
  return _array_from_bytes(_as_bytes(buf), _as_dtype(dtype), shape, order)


# ---------------------------------------------------------------------------
# Array rebuilding: torch tensors and storages, without torch.

_STORAGE_DTYPES = {
  "FloatStorage": np.dtype("<f4"),
  "DoubleStorage": np.dtype("<f8"),
  "HalfStorage": np.dtype("<f2"),
  "BFloat16Storage": np.dtype("<u2"),  # widened to float32 when read
  "LongStorage": np.dtype("<i8"),
  "IntStorage": np.dtype("<i4"),
  "ShortStorage": np.dtype("<i2"),
  "CharStorage": np.dtype("i1"),
  "ByteStorage": np.dtype("u1"),
  "BoolStorage": np.dtype("?"),
}
_TORCH_DTYPES = {
  "float32": "FloatStorage", "float": "FloatStorage",
  "float64": "DoubleStorage", "double": "DoubleStorage",
  "float16": "HalfStorage", "half": "HalfStorage",
  "bfloat16": "BFloat16Storage",
  "int64": "LongStorage", "long": "LongStorage",
  "int32": "IntStorage", "int": "IntStorage",
  "int16": "ShortStorage", "short": "ShortStorage",
  "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage",
}


class _StorageType(_Frozen):
  """Tag for ``torch.FloatStorage`` etc. and for torch dtypes."""
  __slots__ = ("name", "dtype")

  def __init__(self, name):
    object.__setattr__(self, "name", name)
    object.__setattr__(self, "dtype", _STORAGE_DTYPES[name])

  def __repr__(self):
    return f"<torch.{self.name}>"


class _Storage:
  """A flat typed buffer; its bytes may arrive after the tensors using it."""

  def __init__(self, storage_type, numel, base=None, offset=0):
    self.storage_type = storage_type
    self.numel = int(numel)
    self.base = base  # a view of another storage (legacy format only)
    self.offset = int(offset)
    self._array = None

  def set_bytes(self, raw):
    self._array = _array_from_bytes(raw, self.storage_type.dtype, (self.numel,))

  @property
  def array(self):
    if self.base is not None:
      base = self.base.array
      if self.offset + self.numel > base.shape[0]:
        raise SourceFormatError("storage view runs past its base storage")
      return base[self.offset:self.offset + self.numel]
    if self._array is None:
      raise SourceFormatError("a tensor's storage data is missing from the file")
    return self._array


class _LazyTensor:
  """A tensor view (offset, size, stride) of a storage, resolved at the end."""

  def __init__(self, storage, offset, size, stride):
    if not isinstance(storage, _Storage):
      raise UnsafePickleError("tensor rebuilt from something that is not a storage")
    self.storage = storage
    self.offset = int(offset)
    self.size = tuple(int(s) for s in size)
    self.stride = tuple(int(s) for s in stride)
    if len(self.size) != len(self.stride) or any(s < 0 for s in self.size + self.stride):
      raise UnsafePickleError(f"bad tensor size/stride {self.size} {self.stride}")

  def resolve(self):
    flat = self.storage.array
    if 0 in self.size:
      arr = np.zeros(self.size, flat.dtype)
    else:
      # as_strided does no bounds checks: check the furthest element first.
      last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
      if self.offset < 0 or last >= flat.shape[0]:
        raise SourceFormatError("tensor view runs past its storage")
      item = flat.dtype.itemsize
      arr = np.lib.stride_tricks.as_strided(
        flat[self.offset:], shape=self.size,
        strides=tuple(s * item for s in self.stride), writeable=False).copy()
    if self.storage.storage_type.name == "BFloat16Storage":
      arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad,
            backward_hooks, dtype=None, *unused):
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
  if not isinstance(data, _LazyTensor):
    raise UnsafePickleError("parameter rebuilt from something that is not a tensor")
  return data


def _rebuild_from_type_v2(func, new_type, args, state):
  # func is whatever find_class returned, so it is one of our own wrapped functions.
  if not (isinstance(func, _Function)
          and func.fn in (_rebuild_tensor, _rebuild_tensor_v3, _rebuild_parameter)):
    raise UnsafePickleError("_rebuild_from_type_v2 with an unexpected function")
  if new_type not in _TENSOR_TYPES.values():
    raise UnsafePickleError("_rebuild_from_type_v2 with an unexpected type")
  return func(*args)


def _load_storage_from_bytes(raw):
  """``torch.storage._load_from_bytes``: a storage torch.save'd into bytes."""
  # Unresolved, so the outer tensor can take its view of the storage.
  result = _load_torch_bytes(_as_bytes(raw), resolve=False)
  if not isinstance(result, _Storage):
    raise UnsafePickleError("_load_from_bytes did not hold a storage")
  return result


def _ordered_dict(*args):
  if args:
    raise UnsafePickleError("OrderedDict rebuilt with arguments")
  return collections.OrderedDict()


def _make_set(items=()):
  return set(_check_plain_items(items))


def _make_frozenset(items=()):
  return frozenset(_check_plain_items(items))


def _check_plain_items(items):
  if not isinstance(items, (list, tuple)):
    raise UnsafePickleError("set rebuilt from something that is not a list")
  return items


def _codecs_encode(text, encoding="latin1"):
  # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, 'latin1').
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise UnsafePickleError("_codecs.encode used for something other than bytes")
  return text.encode("latin-1")


# builtins.object / builtins.dict appear only as the base argument of copyreg._reconstructor;
# tags stand in for them, so not even a built-in type is handed to the file.
_OBJECT = _Marker("builtins.object")
_DICT = _Marker("builtins.dict")


def _copyreg_reconstructor(cls, base, state):
  # Protocol 0/1 form of object creation; only for our own stand-in classes.
  if cls not in (TFNetwork, Namespace, _EasyDict) or base not in (_OBJECT, _DICT):
    raise UnsafePickleError("copyreg._reconstructor of a class not allowed")
  return cls.__new__(cls)


def _reconstruct_persistent_obj(meta):
  return PersistentObject(meta)


# (module, name) -> what the unpickler gets instead. Every entry is ours.
_ALLOWED = {
  ("collections", "OrderedDict"): _ordered_dict,
  ("builtins", "set"): _make_set,
  ("builtins", "frozenset"): _make_frozenset,
  ("builtins", "object"): _OBJECT,
  ("builtins", "dict"): _DICT,
  ("copyreg", "_reconstructor"): _copyreg_reconstructor,
  ("_codecs", "encode"): _codecs_encode,
  ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
  ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
  ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
  ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
  ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
  ("dnnlib.tflib.network", "Network"): TFNetwork,
  ("dnnlib.util", "EasyDict"): _EasyDict,
  ("dnnlib", "EasyDict"): _EasyDict,
  ("argparse", "Namespace"): Namespace,
  ("numpy", "ndarray"): _NDARRAY,
  ("numpy", "dtype"): _numpy_dtype,
}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
  _ALLOWED[(_mod, "_reconstruct")] = _numpy_reconstruct
  _ALLOWED[(_mod, "scalar")] = _numpy_scalar
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
  _ALLOWED[(_mod, "_frombuffer")] = _numpy_frombuffer
for _name in _STORAGE_DTYPES:
  _ALLOWED[("torch", _name)] = _StorageType(_name)
for _name, _storage in _TORCH_DTYPES.items():
  _ALLOWED[("torch", _name)] = _StorageType(_storage)
_ALLOWED.update(_TENSOR_TYPES)


class _Function(_Frozen):
  """An allow-listed function as handed to the unpickler: callable, immutable, refuses BUILD.

  A plain function has a writable ``__dict__`` and ``__defaults__``, which BUILD could change
  for every later load.
  """
  __slots__ = ("name", "fn")

  def __init__(self, name, fn):
    object.__setattr__(self, "name", name)
    object.__setattr__(self, "fn", fn)

  def __call__(self, *args):
    return self.fn(*args)

  def __repr__(self):
    return f"<{self.name}>"


_ALLOWED = {key: _Function(".".join(key), v) if callable(v) and not isinstance(v, type) else v
            for key, v in _ALLOWED.items()}


def _is_torchscript_class(module, name):
  """``__torch__[.a.b] Name``: a class compiled by TorchScript, named after the Python one."""
  parts = module.split(".") + [name]
  return parts[0] == "__torch__" and len(parts) > 1 and all(p.isidentifier() for p in parts[1:])


class _RestrictedUnpickler(pickle.Unpickler):
  """An Unpickler whose globals come only from the allow-list above.

  REDUCE / NEWOBJ / BUILD can only ever call what ``find_class`` returned
  (or methods of objects those calls made), so with an allow-list of our
  own functions and inert classes no code from the file can run.
  """

  def __init__(self, file, storages=None):
    super().__init__(file, encoding="latin1")
    self._storages = storages  # None: the pickle must have no persistent ids

  def find_class(self, module, name):
    target = _ALLOWED.get((module, name))
    if target is None and _is_torchscript_class(module, name):
      target = ScriptObject
    if target is None:
      raise UnsafePickleError(
        f"refusing to load global '{module}.{name}': it is not an array, "
        "tensor or plain container this reader knows, and loading it could "
        "run code from the file")
    return target

  def persistent_load(self, pid):
    if self._storages is None:
      raise UnsafePickleError(f"unexpected persistent id {pid!r} in a plain pickle")
    return self._storages(pid)


def _unpickle(file, storages=None):
  try:
    return _RestrictedUnpickler(file, storages).load()
  except (UnsafePickleError, SourceFormatError):
    raise
  except (EOFError, pickle.UnpicklingError, ValueError, TypeError, KeyError,
      IndexError, AttributeError, struct.error, OverflowError, MemoryError) as e:
    raise SourceFormatError(f"truncated or corrupt pickle data ({type(e).__name__}: {e})") from e


# ---------------------------------------------------------------------------
# Containers: plain pickle, torch.save legacy stream, torch.save zip.


def _storage_pid(pid, storages_by_key, legacy):
  """Decode a torch storage persistent id into a (shared) _Storage."""
  if not isinstance(pid, tuple) or not pid:
    raise UnsafePickleError(f"unexpected persistent id {pid!r}")
  kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
  if kind != "storage":
    raise UnsafePickleError(f"unsupported persistent id kind {kind!r}")
  if legacy:
    if len(pid) != 6:
      raise SourceFormatError(f"bad legacy storage id {pid!r}")
    _, storage_type, key, _location, numel, view = pid
  else:
    if len(pid) != 5:
      raise SourceFormatError(f"bad storage id {pid!r}")
    _, storage_type, key, _location, numel = pid
    view = None
  if not isinstance(storage_type, _StorageType):
    raise UnsafePickleError(f"unexpected storage type {storage_type!r}")
  key = str(key)
  if key not in storages_by_key:
    storages_by_key[key] = _Storage(storage_type, numel)
  root = storages_by_key[key]
  if view is None:
    return root
  view_key, offset, view_numel = view
  view_key = str(view_key)
  if view_key not in storages_by_key:
    storages_by_key[view_key] = _Storage(storage_type, view_numel, base=root, offset=offset)
  return storages_by_key[view_key]


def _load_torch_legacy(f, resolve=True):
  """torch.save(..., _use_new_zipfile_serialization=False) stream."""
  magic = _unpickle(f)
  if magic != _TORCH_LEGACY_MAGIC:
    raise SourceFormatError("not a torch.save file (bad magic number)")
  protocol = _unpickle(f)
  if protocol != _TORCH_LEGACY_PROTOCOL:
    raise SourceFormatError(f"unsupported torch.save protocol version {protocol!r}")
  sys_info = _unpickle(f)
  if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
    raise SourceFormatError("big-endian torch.save files are not supported")
  storages = {}
  result = _unpickle(f, lambda pid: _storage_pid(pid, storages, legacy=True))
  keys = _unpickle(f)
  if not isinstance(keys, list):
    raise SourceFormatError("torch.save storage key list is missing")
  for key in keys:
    storage = storages.get(str(key))
    if storage is None:
      raise SourceFormatError(f"torch.save data for unknown storage {key!r}")
    head = f.read(8)
    if len(head) != 8:
      raise SourceFormatError("truncated torch.save file (storage header)")
    (numel,) = struct.unpack("<q", head)
    if numel != storage.numel:
      raise SourceFormatError(f"storage {key!r}: {numel} elements, expected {storage.numel}")
    nbytes = numel * storage.storage_type.dtype.itemsize
    raw = f.read(nbytes)
    if len(raw) != nbytes:
      raise SourceFormatError("truncated torch.save file (storage data)")
    storage.set_bytes(raw)
  return _resolve(result) if resolve else result


def _load_torch_zip(zf, resolve=True):
  """torch.save zip archive: <name>/data.pkl plus <name>/data/<key>."""
  pkls = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
  if len(pkls) != 1:
    raise SourceFormatError(f"zip file is not a torch.save archive (found {zf.namelist()[:5]})")
  prefix = pkls[0][: -len("data.pkl")]
  byteorder = "little"
  if prefix + "byteorder" in zf.namelist():
    byteorder = zf.read(prefix + "byteorder").decode("ascii").strip()
  if byteorder != "little":
    raise SourceFormatError("big-endian torch.save files are not supported")
  storages = {}
  result = _unpickle(io.BytesIO(zf.read(pkls[0])),
            lambda pid: _storage_pid(pid, storages, legacy=False))
  for key, storage in storages.items():
    name = f"{prefix}data/{key}"
    try:
      raw = zf.read(name)
    except KeyError as e:
      raise SourceFormatError(f"torch.save archive lacks {name}") from e
    nbytes = storage.numel * storage.storage_type.dtype.itemsize
    if len(raw) < nbytes:
      raise SourceFormatError(f"torch.save archive entry {name} is truncated")
    storage.set_bytes(raw[:nbytes])
  return _resolve(result) if resolve else result


def _is_torch_legacy(head):
  # The legacy stream is a protocol-2 pickle of the magic number: PROTO 2, LONG1.
  return head[:3] == b"\x80\x02\x8a"


def _load_torch_bytes(raw, resolve=True):
  if raw[:4] == b"PK\x03\x04":
    try:
      with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        return _load_torch_zip(zf, resolve)
    except zipfile.BadZipFile as e:
      raise SourceFormatError(f"corrupt torch.save zip archive: {e}") from e
  if _is_torch_legacy(raw):
    return _load_torch_legacy(io.BytesIO(raw), resolve)
  raise SourceFormatError("bytes are not a torch.save serialisation")


def _resolve(obj):
  """Replace lazy tensors and array stubs by numpy arrays, EasyDicts by dicts."""
  done = {}

  def walk(x):
    key = id(x)
    if key in done:
      return done[key]
    if isinstance(x, _LazyTensor):
      out = x.resolve()
    elif isinstance(x, _NDArrayStub):
      if x.array is None:
        raise SourceFormatError("numpy array without data")
      out = x.array
    elif isinstance(x, _DTypeStub):
      out = x.dtype
    elif isinstance(x, _Storage):
      out = x.array
    elif isinstance(x, _EasyDict):
      out = {}
      done[key] = out
      for k, v in x.items():
        out[walk(k)] = walk(v)
      return out
    elif isinstance(x, dict):
      out = type(x)()
      done[key] = out
      for k, v in x.items():
        out[walk(k)] = walk(v)
      return out
    elif isinstance(x, list):
      out = []
      done[key] = out
      out.extend(walk(v) for v in x)
      return out
    elif isinstance(x, tuple):
      out = tuple(walk(v) for v in x)
    elif isinstance(x, (set, frozenset)):
      out = type(x)(walk(v) for v in x)
    elif isinstance(x, PersistentObject):
      done[key] = x
      x.state = walk(x.state)
      return x
    elif isinstance(x, (TFNetwork, Namespace, ScriptObject)):
      done[key] = x
      x.state = walk(getattr(x, "state", None) or {})
      return x
    else:
      out = x
    done[key] = out
    return out

  return walk(obj)


def loads_pickle(raw):
  """Restricted-unpickle a plain pickle (ada-pytorch or TF network pickle)."""
  return _resolve(_unpickle(io.BytesIO(raw)))


def loads_torch(raw):
  """Read a ``torch.save`` file (zip or legacy stream) from bytes, without torch."""
  return _load_torch_bytes(raw)


def load(path):
  """Read a network file of any supported container, without running its code.

  Returns ``(container, obj)`` where container is 'torch-zip', 'torch-legacy'
  or 'pickle' and obj holds numpy arrays, plain containers and the inert
  stand-ins of this module. Raises :class:`UnsafePickleError` for a file
  that asks for anything else, :class:`SourceFormatError` for one that is
  truncated, corrupt or no pickle at all.
  """
  with open(path, "rb") as f:
    raw = f.read()
  if not raw:
    raise SourceFormatError(f"{path} is empty")
  if raw[:4] == b"PK\x03\x04":
    return "torch-zip", _load_torch_bytes(raw)
  if _is_torch_legacy(raw):
    try:
      return "torch-legacy", _load_torch_legacy(io.BytesIO(raw))
    except SourceFormatError as e:
      if "magic number" not in str(e):
        raise
  if raw[:1] != b"\x80":
    raise SourceFormatError(
      f"{path} is not a pickle or torch.save file (starts with {raw[:8]!r})")
  return "pickle", loads_pickle(raw)


def module_state_dict(obj, prefix=""):
  """Flatten a PersistentObject torch module into {dotted name: array}.

  Mirrors torch's ``state_dict()``: ``_parameters`` then ``_buffers`` of a
  module, then its ``_modules`` recursively; None entries are skipped.
  """
  if not isinstance(obj, PersistentObject) or not isinstance(obj.state, dict):
    raise SourceFormatError(f"expected a pickled torch module, got {obj!r}")
  out = {}
  state = obj.state
  skip = set(state.get("_non_persistent_buffers_set") or ())
  for group in ("_parameters", "_buffers"):
    for name, value in (state.get(group) or {}).items():
      if value is None or (group == "_buffers" and name in skip):
        continue
      out[prefix + name] = value
  for name, child in (state.get("_modules") or {}).items():
    if child is None:
      continue
    if isinstance(child, PersistentObject):
      out.update(module_state_dict(child, prefix + name + "."))
    else:
      raise SourceFormatError(
        f"submodule {prefix + name} is {child!r}, not a pickled persistent module")
  return out


def script_module_state_dict(obj, prefix=""):
  """Flatten a TorchScript module (:class:`ScriptObject`) into {dotted name: array}.

  Every array attribute is an entry named by its path of attribute names: for a module saved
  by ``torch.jit.save`` these are its parameters and buffers, under the names of its
  ``state_dict()``. Submodules (nested objects) are walked; other attributes (``training``,
  hooks, numbers, strings) are skipped. A module reached twice is an error, so a file cannot
  make this loop.
  """
  if not isinstance(obj, ScriptObject) or not isinstance(getattr(obj, "state", None), dict):
    raise SourceFormatError(f"expected a TorchScript module, got {obj!r}")
  out, seen = {}, set()

  def walk(module, path):
    if id(module) in seen:
      raise SourceFormatError(f"TorchScript module {path.rstrip('.') or '<root>'} appears twice")
    seen.add(id(module))
    for name, value in module.state.items():
      if isinstance(value, np.ndarray):
        out[path + name] = value
      elif isinstance(value, ScriptObject):
        walk(value, path + name + ".")

  walk(obj, prefix)
  return out
