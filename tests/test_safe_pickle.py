"""Tests of the restricted unpickler, and a minimal pickle writer of our own.

The writer emits the opcodes the real formats use (GLOBAL / STACK_GLOBAL, REDUCE,
NEWOBJ, BUILD, BINPERSID, torch.save's legacy stream and zip layout), so the tests can
build files in exactly the published formats from plain numbers, without torch,
TensorFlow or any code of the original projects.
"""
import io
import os
import pickle
import struct
import sys
import zipfile

import numpy as np
import pytest

from gantl_jax import errors
from gantl_jax import safe_pickle as sp


# ---------------------------------------------------------------------------
# Minimal pickle writer (shared with test_import_stylegan2).


class Global:
  """A module-level name, written as GLOBAL (protocol 2) or STACK_GLOBAL (4)."""

  def __init__(self, module, name):
    self.module, self.name = module, name


class Call:
  """``func(*args)`` via REDUCE, then BUILD with ``state`` and SETITEMS ``items`` if given."""

  def __init__(self, func, args=(), state=None, items=None):
    self.func, self.args, self.state, self.items = func, tuple(args), state, items


class NewObj:
  """``cls.__new__(cls, *args)`` via NEWOBJ, then BUILD with ``state``."""

  def __init__(self, cls, args=(), state=None, items=None):
    self.cls, self.args, self.state, self.items = cls, tuple(args), state, items


class Build:
  """BUILD with ``state`` on ``obj`` as it stands (no call first): what a hostile file may do."""

  def __init__(self, obj, state):
    self.obj, self.state = obj, state


class PersId:
  """A persistent id (BINPERSID), as torch.save uses for storages."""

  def __init__(self, value):
    self.value = value


def ordered_dict(items):
  return Call(Global("collections", "OrderedDict"), (), items=list(items))


class PickleWriter:
  """Writes a tree of Python values and the nodes above as pickle opcodes."""

  def __init__(self, protocol=2):
    self.protocol = protocol
    self.out = io.BytesIO()

  def dumps(self, obj):
    self.out = io.BytesIO()
    self.out.write(b"\x80" + bytes([self.protocol]))
    self._w(obj)
    self.out.write(b".")
    return self.out.getvalue()

  def _str(self, s):
    raw = s.encode("utf-8")
    self.out.write(b"X" + struct.pack("<I", len(raw)) + raw)

  def _w(self, obj):
    w = self.out.write
    if obj is None:
      w(b"N")
    elif obj is True:
      w(b"\x88")
    elif obj is False:
      w(b"\x89")
    elif isinstance(obj, int):
      if 0 <= obj < 256:
        w(b"K" + bytes([obj]))
      elif -2**31 <= obj < 2**31:
        w(b"J" + struct.pack("<i", obj))
      else:
        raw = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
        w(b"\x8a" + bytes([len(raw)]) + raw)
    elif isinstance(obj, float):
      w(b"G" + struct.pack(">d", obj))
    elif isinstance(obj, str):
      self._str(obj)
    elif isinstance(obj, bytes):
      if self.protocol >= 3:
        w(b"B" + struct.pack("<I", len(obj)) + obj)
      else:  # what Python 3 writes for bytes at protocol 2
        self._w(Call(Global("_codecs", "encode"), (obj.decode("latin-1"), "latin1")))
    elif isinstance(obj, tuple):
      if not obj:
        w(b")")
      else:
        w(b"(")
        for x in obj:
          self._w(x)
        w(b"t")
    elif isinstance(obj, list):
      w(b"]")
      if obj:
        w(b"(")
        for x in obj:
          self._w(x)
        w(b"e")
    elif isinstance(obj, dict):
      w(b"}")
      self._setitems(list(obj.items()))
    elif isinstance(obj, Global):
      if self.protocol >= 4:
        self._str(obj.module)
        self._str(obj.name)
        w(b"\x93")
      else:
        w(b"c" + obj.module.encode() + b"\n" + obj.name.encode() + b"\n")
    elif isinstance(obj, Call):
      self._w(obj.func)
      self._w(obj.args)
      w(b"R")
      self._after(obj)
    elif isinstance(obj, NewObj):
      self._w(obj.cls)
      self._w(obj.args)
      w(b"\x81")
      self._after(obj)
    elif isinstance(obj, Build):
      self._w(obj.obj)
      self._w(obj.state)
      w(b"b")
    elif isinstance(obj, PersId):
      self._w(obj.value)
      w(b"Q")
    else:
      raise TypeError(f"writer cannot write {type(obj)}")

  def _setitems(self, items):
    if items:
      self.out.write(b"(")
      for k, v in items:
        self._w(k)
        self._w(v)
      self.out.write(b"u")

  def _after(self, node):
    if node.items:
      self._setitems(node.items)
    if node.state is not None:
      self._w(node.state)
      self.out.write(b"b")


def dumps(obj, protocol=2):
  return PickleWriter(protocol).dumps(obj)


# numpy arrays, as numpy's own __reduce__ writes them (protocol <= 4).

_NP_CODES = {np.dtype("float32"): "f4", np.dtype("float64"): "f8", np.dtype("float16"): "f2",
             np.dtype("int64"): "i8", np.dtype("int32"): "i4", np.dtype("uint8"): "u1",
             np.dtype("bool"): "b1"}


def numpy_dtype_node(dtype):
  dtype = np.dtype(dtype)
  order = "|" if dtype.itemsize == 1 else "<"
  return Call(Global("numpy", "dtype"), (_NP_CODES[dtype.newbyteorder("=")], False, True),
              state=(3, order, None, None, None, -1, -1, 0))


def numpy_array_node(a, module="numpy.core.multiarray"):
  a = np.array(a, order="C")
  return Call(Global(module, "_reconstruct"), (Global("numpy", "ndarray"), (0,), b"b"),
              state=(1, tuple(a.shape), numpy_dtype_node(a.dtype), False, a.astype(a.dtype.newbyteorder("<")).tobytes()))


# torch tensors, as torch's __reduce_ex__ / torch.save write them.

_STORAGE_NAMES = {np.dtype("float32"): "FloatStorage", np.dtype("float64"): "DoubleStorage",
                  np.dtype("float16"): "HalfStorage", np.dtype("int64"): "LongStorage",
                  np.dtype("uint8"): "ByteStorage", np.dtype("bool"): "BoolStorage"}


def contiguous_strides(shape):
  strides, acc = [], 1
  for n in reversed(shape):
    strides.append(acc)
    acc *= n
  return tuple(reversed(strides))


def tensor_node(storage, shape, stride=None, offset=0, parameter=False):
  """``torch._utils._rebuild_tensor_v2`` (wrapped in ``_rebuild_parameter`` if a Parameter)."""
  stride = contiguous_strides(shape) if stride is None else stride
  t = Call(Global("torch._utils", "_rebuild_tensor_v2"),
           (storage, offset, tuple(shape), tuple(stride), False, ordered_dict([])))
  if parameter:
    t = Call(Global("torch._utils", "_rebuild_parameter"), (t, True, ordered_dict([])))
  return t


class TorchZipWriter:
  """Collects storages while a tree is built; writes a torch.save zip archive."""

  def __init__(self):
    self.storages = {}

  def tensor(self, a, parameter=False):
    a = np.array(a, order="C")
    key = str(len(self.storages))
    self.storages[key] = a.reshape(-1)
    pid = PersId(("storage", Global("torch", _STORAGE_NAMES[a.dtype]), key, "cpu", a.size))
    return tensor_node(pid, a.shape, parameter=parameter)

  def write(self, obj, name="archive"):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
      zf.writestr(f"{name}/data.pkl", dumps(obj, protocol=2))
      zf.writestr(f"{name}/byteorder", "little")
      for key, flat in self.storages.items():
        zf.writestr(f"{name}/data/{key}", flat.tobytes())
      zf.writestr(f"{name}/version", "3\n")
    return buf.getvalue()


def torch_legacy_bytes(obj_builder):
  """A legacy (non-zip) torch.save stream. ``obj_builder(storage_fn)`` builds the tree,
  calling ``storage_fn(array)`` for the persistent id of each storage."""
  storages = []

  def storage_fn(flat):
    key = str(140000000 + len(storages))
    storages.append((key, np.array(flat, order="C").reshape(-1)))
    return PersId(("storage", Global("torch", _STORAGE_NAMES[flat.dtype]), key, "cpu", flat.size, None))

  body = dumps(obj_builder(storage_fn))
  out = io.BytesIO()
  out.write(dumps(0x1950A86A20F9469CFC6C))
  out.write(dumps(1001))
  out.write(dumps(dict(protocol_version=1001, little_endian=True,
                       type_sizes=dict(short=2, int=4, long=4))))
  out.write(body)
  out.write(dumps([key for key, _ in storages]))
  for _, flat in storages:
    out.write(struct.pack("<q", flat.size))
    out.write(flat.tobytes())
  return out.getvalue()


def pickled_tensor_node(a, parameter=False):
  """A tensor inside a plain pickle (ada-pytorch): its storage is
  ``torch.storage._load_from_bytes(<legacy torch.save of the storage>)``."""
  a = np.array(a, order="C")
  raw = torch_legacy_bytes(lambda storage_fn: storage_fn(a.reshape(-1)))
  storage = Call(Global("torch.storage", "_load_from_bytes"), (raw,))
  return tensor_node(storage, a.shape, parameter=parameter)


def persistent_module_node(class_name, params=None, buffers=None, modules=None, init_kwargs=None,
                           module_src="# module source (never executed)\n"):
  """An ada-pytorch persistent-class object: _reconstruct_persistent_obj(meta)."""
  state = {
      "training": False,
      "_parameters": ordered_dict((k, pickled_tensor_node(v, parameter=True)) for k, v in (params or {}).items()),
      "_buffers": ordered_dict((k, pickled_tensor_node(v)) for k, v in (buffers or {}).items()),
      "_non_persistent_buffers_set": Call(Global("builtins", "set"), ([],)),
      "_backward_hooks": ordered_dict([]),
      "_forward_hooks": ordered_dict([]),
      "_forward_pre_hooks": ordered_dict([]),
      "_state_dict_hooks": ordered_dict([]),
      "_load_state_dict_pre_hooks": ordered_dict([]),
      "_modules": ordered_dict((modules or {}).items()),
  }
  if init_kwargs is not None:
    state["_init_args"] = ()
    state["_init_kwargs"] = easydict_node(init_kwargs)
  meta = {"type": "class", "version": 6, "module_src": module_src, "class_name": class_name, "state": state}
  return Call(Global("torch_utils.persistence", "_reconstruct_persistent_obj"), (meta,))


def easydict_node(d):
  """dnnlib.EasyDict as pickled at protocol 2+: NEWOBJ, SETITEMS, BUILD {}."""
  items = [(k, easydict_node(v) if isinstance(v, dict) else v) for k, v in d.items()]
  return NewObj(Global("dnnlib.util", "EasyDict"), (), items=items, state={})


def tf_network_node(name, static_kwargs, variables, components=None, version=4):
  """A dnnlib.tflib.network.Network as pickled: NEWOBJ, then BUILD with its state dict."""
  state = {
      "version": version, "name": name, "static_kwargs": static_kwargs,
      "components": {k: v for k, v in (components or {}).items()},
      "build_module_src": "raise SystemExit('never executed')\n", "build_func_name": name,
      "variables": [(k, numpy_array_node(v)) for k, v in variables.items()],
  }
  return NewObj(Global("dnnlib.tflib.network", "Network"), (), state=state)


# ---------------------------------------------------------------------------
# Tests.


def _write(tmp_path, name, raw):
  path = tmp_path / name
  path.write_bytes(raw)
  return str(path)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_arrays_pickled_by_numpy_itself(tmp_path, protocol):
  tree = {
      "f32": np.arange(12, dtype=np.float32).reshape(3, 4),
      "big_endian": np.arange(6, dtype=">f4").reshape(2, 3),
      "fortran": np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
      "bool": np.array([True, False]),
      "zero_d": np.array(2.5),
      "scalar": np.float64(1.25),
      "nested": [(1, "a"), {"b": None}],
  }
  _, got = sp.load(_write(tmp_path, "np.pkl", pickle.dumps(tree, protocol=protocol)))
  for key in ("f32", "big_endian", "fortran", "bool", "zero_d"):
    np.testing.assert_array_equal(got[key], tree[key])
    assert got[key].dtype.isnative
  assert got["scalar"] == 1.25 and got["nested"] == [(1, "a"), {"b": None}]


def test_numpy_arrays_from_our_writer_match_numpy_pickles():
  a = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
  for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    for protocol in (2, 3, 4):
      got = sp.loads_pickle(dumps({"a": numpy_array_node(a, module)}, protocol))
      np.testing.assert_array_equal(got["a"], a)


def test_torch_zip_archive(tmp_path):
  rng = np.random.default_rng(1)
  zw = TorchZipWriter()
  base = rng.standard_normal((4, 6)).astype(np.float32)
  # A transposed view of one storage, with an offset, like a sliced tensor.
  view_pid = PersId(("storage", Global("torch", "FloatStorage"), "shared", "cpu", base.size))
  zw.storages["shared"] = base.reshape(-1)
  tree = {
      "g": ordered_dict([("w", zw.tensor(rng.standard_normal((2, 3)).astype(np.float32), parameter=True)),
                         ("h", zw.tensor(np.arange(5, dtype=np.float16))),
                         ("n", zw.tensor(np.arange(3, dtype=np.int64)))]),
      "view": tensor_node(view_pid, (5, 4), stride=(1, 6), offset=1),
      "scalar": zw.tensor(np.array(3.0, np.float32)),
  }
  kind, got = sp.load(_write(tmp_path, "x.pt", zw.write(tree)))
  assert kind == "torch-zip"
  assert list(got["g"]) == ["w", "h", "n"]
  assert got["g"]["h"].dtype == np.float16 and got["g"]["n"].dtype == np.int64
  expected = np.lib.stride_tricks.as_strided(base.reshape(-1)[1:], (5, 4), (4, 24))
  np.testing.assert_array_equal(got["view"], expected)
  assert got["scalar"].shape == () and got["scalar"] == 3.0


def test_torch_bfloat16_storage():
  zw = TorchZipWriter()
  values = np.array([1.0, -2.5, 0.15625], np.float32)
  zw.storages["0"] = (values.view(np.uint32) >> 16).astype(np.uint16)
  pid = PersId(("storage", Global("torch", "BFloat16Storage"), "0", "cpu", 3))
  got = sp.loads_torch(zw.write({"b": tensor_node(pid, (3,))}))
  np.testing.assert_array_equal(got["b"], values)


def test_torch_legacy_stream():
  rng = np.random.default_rng(2)
  a = rng.standard_normal((3, 4)).astype(np.float32)
  b = np.arange(7, dtype=np.int64)
  raw = torch_legacy_bytes(lambda storage: {"a": tensor_node(storage(a.reshape(-1)), a.shape),
                                            "b": tensor_node(storage(b), (3,), offset=2)})
  got = sp.loads_torch(raw)
  np.testing.assert_array_equal(got["a"], a)
  np.testing.assert_array_equal(got["b"], b[2:5])


def test_ada_style_persistent_objects_and_tensor_bytes():
  w = np.random.default_rng(3).standard_normal((4, 2)).astype(np.float32)
  leaf = persistent_module_node("FullyConnectedLayer", params={"weight": w, "bias": np.zeros(4, np.float32)})
  root = persistent_module_node("MappingNetwork", buffers={"w_avg": np.ones(2, np.float32)},
                                modules={"fc0": leaf}, init_kwargs={"z_dim": 2, "inner": {"a": 1}})
  for protocol in (2, 4):
    got = sp.loads_pickle(dumps({"G": root, "training_set_kwargs": easydict_node({"x": 1})}, protocol))
    obj = got["G"]
    assert isinstance(obj, sp.PersistentObject) and obj.class_name == "MappingNetwork"
    assert obj.state["_init_kwargs"] == {"z_dim": 2, "inner": {"a": 1}}
    assert type(obj.state["_init_kwargs"]) is dict and type(got["training_set_kwargs"]) is dict
    sd = sp.module_state_dict(obj)
    assert list(sd) == ["w_avg", "fc0.weight", "fc0.bias"]
    np.testing.assert_array_equal(sd["fc0.weight"], w)


def test_tf_network_objects():
  v = np.random.default_rng(4).standard_normal((3, 2)).astype(np.float32)
  sub = tf_network_node("G_mapping", {}, {"Dense0/weight": v})
  top = tf_network_node("G", {"resolution": 8}, {"dlatent_avg": np.zeros(2, np.float32)}, {"mapping": sub})
  for protocol in (2, 3):
    got = sp.loads_pickle(dumps((top, top, top), protocol))
    assert all(isinstance(x, sp.TFNetwork) for x in got)
    comp = got[0].state["components"]["mapping"]
    assert comp.state["variables"][0][0] == "Dense0/weight"
    np.testing.assert_array_equal(comp.state["variables"][0][1], v)


class _Evil:
  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


def test_hostile_pickle_runs_nothing(tmp_path):
  marker = tmp_path / "pwned"
  raw = pickle.dumps({"G": _Evil(f"touch {marker}")})
  with pytest.raises(errors.UnsafePickleError, match="system"):
    sp.load(_write(tmp_path, "evil.pkl", raw))
  assert not marker.exists()


@pytest.mark.parametrize("module,name", [
    ("os", "system"), ("posix", "system"), ("builtins", "eval"), ("builtins", "exec"),
    ("builtins", "getattr"), ("builtins", "__import__"), ("subprocess", "Popen"),
    ("importlib", "import_module"), ("numpy", "load"), ("torch", "load"),
    ("torch_utils.persistence", "_src_to_module"), ("dnnlib.util", "call_func_by_name"),
])
def test_refuses_globals_outside_the_allow_list(tmp_path, module, name):
  marker = tmp_path / "pwned"
  raw = dumps(Call(Global(module, name), (f"touch {marker}",)))
  with pytest.raises(errors.UnsafePickleError, match=f"{module}.{name}"):
    sp.loads_pickle(raw)
  assert not marker.exists()


def test_refuses_to_import_modules(tmp_path):
  name = "gantl_jax_never_imported_module"
  (tmp_path / f"{name}.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w').close()\nx = 1\n")
  sys.path.insert(0, str(tmp_path))
  try:
    with pytest.raises(errors.UnsafePickleError):
      sp.loads_pickle(dumps(Global(name, "x")))
  finally:
    sys.path.remove(str(tmp_path))
  assert name not in sys.modules
  assert not (tmp_path / "pwned").exists()


def test_persistent_class_source_is_never_executed(tmp_path):
  marker = tmp_path / "pwned"
  src = f"open({str(marker)!r}, 'w').close()\n"
  got = sp.loads_pickle(dumps({"G_ema": persistent_module_node("Generator", module_src=src)}))
  assert got["G_ema"].module_src == src
  assert not marker.exists()


def test_tf_build_module_src_is_never_executed(tmp_path):
  marker = tmp_path / "pwned"
  node = tf_network_node("G", {}, {})
  node.state["build_module_src"] = f"open({str(marker)!r}, 'w').close()\n"
  got = sp.loads_pickle(dumps(node))
  assert isinstance(got, sp.TFNetwork)
  assert not marker.exists()


def _clean_float32_zip():
  zw = TorchZipWriter()
  return zw.write({"t": zw.tensor(np.array([1.0, 2.0], np.float32))})


@pytest.mark.parametrize("module,name,state", [
    # The reported file: renames the shared FloatStorage tag, so later float32 reads as bfloat16.
    ("torch", "FloatStorage", {"name": "BFloat16Storage"}),
    ("torch", "FloatStorage", (None, {"dtype": "x"})),  # slot-state form: setattr
    ("torch", "float", {"name": "BFloat16Storage"}),
    ("collections", "OrderedDict", (None, {"__defaults__": (1,)})),  # a function
    ("torch._utils", "_rebuild_tensor_v2", {"x": 1}),
    ("dnnlib.tflib.network", "Network", {"__setstate__": None}),  # a class
    ("argparse", "Namespace", (None, {"__init__": None})),
    ("dnnlib.util", "EasyDict", {"x": 1}),
    ("numpy", "ndarray", {"name": "x"}),  # a tag
    ("builtins", "dict", {"x": 1}),
    ("__torch__.torch.nn.modules.linear", "Linear", {"__setstate__": None}),  # TorchScript's stand-in class
])
def test_build_on_an_allowed_global_is_refused_and_changes_nothing(module, name, state):
  raw = dumps(Build(Global(module, name), state))
  assert len(raw) < 100
  with pytest.raises(errors.UnsafePickleError, match="refusing to set state or attributes on"):
    sp.loads_pickle(raw)
  # A clean file read afterwards in the same process is read as written.
  got = sp.loads_torch(_clean_float32_zip())["t"]
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, [1.0, 2.0])


def test_every_allowed_global_is_immutable():
  # find_class hands the same objects to every load: none of them may be changeable.
  unpickler = sp._RestrictedUnpickler(io.BytesIO(b""))
  for module, name in sp._ALLOWED:
    obj = unpickler.find_class(module, name)
    with pytest.raises(errors.UnsafePickleError):
      setattr(obj, "name", "changed")
    with pytest.raises(errors.UnsafePickleError):
      obj.__setstate__({"name": "changed"})


def torchscript_module(qualname, attrs):
  """A TorchScript module as torch.jit.save pickles it: NEWOBJ of a __torch__ class, BUILD with
  its attribute dict (training flag, hook flag, tensors, submodules)."""
  module, _, cls = f"__torch__.{qualname}".rpartition(".")
  state = {"training": False, "_is_full_backward_hook": None, **attrs}
  return NewObj(Global(module, cls), (), state=state)


def test_torchscript_archive_module_tree():
  rng = np.random.default_rng(5)
  w, b, m = (rng.standard_normal(s).astype(np.float32) for s in ((4, 3, 1, 1), (4,), (3,)))
  zw = TorchZipWriter()
  conv = torchscript_module("Conv", {"weight": zw.tensor(w), "mean": zw.tensor(m), "kernel": 3})
  seq = torchscript_module("torch.nn.modules.container.Sequential", {"0": conv, "1": torchscript_module("Pool", {})})
  root = torchscript_module("___torch_mangle_4.Net", {"layers": seq, "output": torchscript_module(
      "torch.nn.modules.linear.Linear", {"weight": zw.tensor(w[:, :, 0, 0]), "bias": zw.tensor(b)})})
  got = sp.loads_torch(zw.write(root))
  assert isinstance(got, sp.ScriptObject) and got.state["training"] is False
  sd = sp.script_module_state_dict(got)
  assert list(sd) == ["layers.0.weight", "layers.0.mean", "output.weight", "output.bias"]
  np.testing.assert_array_equal(sd["layers.0.weight"], w)
  np.testing.assert_array_equal(sd["output.bias"], b)
  with pytest.raises(errors.SourceFormatError, match="expected a TorchScript module"):
    sp.script_module_state_dict({"w": w})


def test_torchscript_stand_in_is_inert(tmp_path):
  marker = tmp_path / "pwned"
  # Calling a __torch__ name (REDUCE) only reaches the inert class, which takes no arguments.
  with pytest.raises(errors.SourceFormatError):
    sp.loads_pickle(dumps(Call(Global("__torch__.os", "system"), (f"touch {marker}",))))
  # Its state must be a dict of attribute names; names must be identifiers under __torch__.
  with pytest.raises(errors.UnsafePickleError, match="TorchScript object state"):
    sp.loads_pickle(dumps(NewObj(Global("__torch__", "Net"), (), state=[1, 2])))
  for module, name in (("__torch__.a-b", "Net"), ("__torch__", "os.system"), ("__torch__x", "Net"), ("torch", "Net")):
    with pytest.raises(errors.UnsafePickleError, match="refusing to load global"):
      sp.loads_pickle(dumps(NewObj(Global(module, name), (), state={})))
  unpickler = sp._RestrictedUnpickler(io.BytesIO(b""))
  cls = unpickler.find_class("__torch__.torch.nn.modules.conv", "Conv2d")
  assert cls is sp.ScriptObject
  with pytest.raises(errors.UnsafePickleError):
    setattr(cls, "state", "changed")
  assert not marker.exists()


def test_torchscript_module_cycle_is_an_error():
  # A module whose attribute is itself (memo reference): PROTO 2, GLOBAL, EMPTY_TUPLE, NEWOBJ,
  # BINPUT 0, EMPTY_DICT, 'self', BINGET 0, SETITEM, BUILD, STOP.
  raw = (b"\x80\x02c__torch__\nNet\n)\x81q\x00}X\x04\x00\x00\x00selfh\x00sb.")
  got = sp.loads_pickle(raw)
  assert got.state["self"] is got
  with pytest.raises(errors.SourceFormatError, match="appears twice"):
    sp.script_module_state_dict(got)


def test_refuses_object_arrays_and_structured_dtypes():
  with pytest.raises(errors.UnsafePickleError):
    sp.loads_pickle(pickle.dumps(np.array([None, 1], dtype=object), protocol=3))
  with pytest.raises(errors.UnsafePickleError):
    sp.loads_pickle(pickle.dumps(np.zeros(2, dtype=[("a", "f4"), ("b", "i4")]), protocol=3))


def test_refuses_persistent_ids_in_plain_pickles():
  with pytest.raises(errors.UnsafePickleError, match="persistent id"):
    sp.loads_pickle(dumps(PersId(("storage", Global("torch", "FloatStorage"), "0", "cpu", 1))))


def test_tensor_view_past_its_storage_is_an_error():
  zw = TorchZipWriter()
  zw.storages["0"] = np.zeros(4, np.float32)
  pid = PersId(("storage", Global("torch", "FloatStorage"), "0", "cpu", 4))
  with pytest.raises(errors.SourceFormatError, match="past its storage"):
    sp.loads_torch(zw.write({"t": tensor_node(pid, (3, 3))}))


def test_truncated_and_non_pickle_files(tmp_path):
  zw = TorchZipWriter()
  good = dumps({"a": numpy_array_node(np.arange(100, dtype=np.float32))})
  with pytest.raises(errors.SourceFormatError, match="truncated or corrupt"):
    sp.load(_write(tmp_path, "t.pkl", good[: len(good) // 2]))
  with pytest.raises(errors.SourceFormatError, match="not a pickle"):
    sp.load(_write(tmp_path, "t.txt", b"hello, world"))
  with pytest.raises(errors.SourceFormatError, match="empty"):
    sp.load(_write(tmp_path, "e.pkl", b""))
  zipped = zw.write({"t": zw.tensor(np.arange(10, dtype=np.float32))})
  with pytest.raises(errors.SourceFormatError):
    sp.load(_write(tmp_path, "t.pt", zipped[: len(zipped) - 40]))
  legacy = torch_legacy_bytes(lambda s: {"a": tensor_node(s(np.arange(50, dtype=np.float32)), (50,))})
  with pytest.raises(errors.SourceFormatError, match="truncated"):
    sp.load(_write(tmp_path, "l.pt", legacy[:-10]))
