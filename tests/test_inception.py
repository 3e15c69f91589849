"""The FID Inception network (gantl_jax.metrics.inception): its weights, in both published file
formats, and its features against the reference network on the same random weights.

The weights are seeded random numbers, one tensor per state-dict name (`seeded_tensor`), written
by our own pickle writer as pytorch-fid's ``torch.save`` state dict and as NVIDIA's TorchScript
archive. ``fixtures/fid_inception_reference.npz`` holds the reference outputs for them (see
fixtures/README.md): pytorch-fid's FID Inception (and a torch module with NVIDIA's names and
forward, identical to it on these weights) behind NVIDIA's resize, on two 32 px uint8 images.
"""
import functools
import io
import os
import pickle
import zipfile
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gantl_jax.metrics import inception as inc
from gantl_jax.metrics import kid_fid
from gantl_jax.training import parallel
from test_safe_pickle import (Call, Global, NewObj, TorchZipWriter, dumps, ordered_dict,
                              tensor_node, torch_legacy_bytes)
from gantl_jax import errors

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "fid_inception_reference.npz")
WEIGHT_SEED = 20151205


@pytest.fixture(scope="module")
def ref():
  with np.load(FIXTURE) as f:
    return dict(f)


def seeded_tensor(name, shape, *, unit_scale=False, seed=WEIGHT_SEED):
  """A random tensor for one pytorch-fid state-dict entry, a function of its name only.

  He-scaled conv weights and moderate batch-norm statistics keep the 94 layers' activations
  in range (the reference features span 0..24, 13% zeros).
  """
  rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
  if name.endswith("num_batches_tracked"):
    return np.array(rng.integers(1, 1000), np.int64)
  if name.endswith("conv.weight"):
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
  if name.endswith("bn.weight"):
    return np.ones(shape, np.float32) if unit_scale else rng.uniform(0.6, 1.4, shape).astype(np.float32)
  if name.endswith("bn.running_var"):
    return rng.uniform(0.5, 1.5, shape).astype(np.float32)
  if name.endswith(("bn.bias", "bn.running_mean")):
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)
  if name.startswith("fc."):
    return (0.02 * rng.standard_normal(shape)).astype(np.float32)
  raise ValueError(name)


def pytorch_fid_state(ref, unit_scale):
  """pytorch-fid's state dict (names, shapes and order from the reference module) of seeded tensors."""
  return {str(name): seeded_tensor(str(name), tuple(int(s) for s in shape if s >= 0), unit_scale=unit_scale)
          for name, shape in zip(ref["names"], ref["shapes"])}


def nvidia_state(ref, pytorch_fid):
  """The same tensors under NVIDIA's names: the reference's pairing, independent of our tables."""
  return {str(theirs): pytorch_fid[str(ours)] for ours, theirs in ref["pairs"]}


def write_pth(state, legacy=True):
  """``torch.save(state_dict)``: the legacy stream (pytorch-fid's 2019 file) or the zip archive.
  An OrderedDict with ``_metadata`` state, as ``Module.state_dict()`` pickles."""
  meta = ordered_dict([("", {"version": 1})])
  if legacy:
    return torch_legacy_bytes(lambda storage: Call(
        Global("collections", "OrderedDict"), (), state={"_metadata": meta},
        items=[(k, tensor_node(storage(np.asarray(v).reshape(-1)), np.shape(v))) for k, v in state.items()]))
  zw = TorchZipWriter()
  tree = Call(Global("collections", "OrderedDict"), (), state={"_metadata": meta},
              items=[(k, zw.tensor(v)) for k, v in state.items()])
  return zw.write(tree)


def write_torchscript(state, code="raise SystemExit('TorchScript code is never run')\n", root=None):
  """A ``torch.jit.save`` archive: data.pkl pickles the module tree as ``__torch__`` objects
  (NEWOBJ + BUILD with the attribute dict), tensors in data/, plus code/ and constants.pkl."""
  zw = TorchZipWriter()
  nested = {}
  for name, value in state.items():
    node = nested
    *path, leaf = name.split(".")
    for part in path:
      node = node.setdefault(part, {})
    node[leaf] = value

  def module(tree, qualname):
    attrs = {"training": False, "_is_full_backward_hook": None}
    for key, value in tree.items():
      attrs[key] = (module(value, f"{qualname}.{key}") if isinstance(value, dict)
                    else zw.tensor(value, parameter=False))
    modname, _, cls = f"__torch__.{qualname}".rpartition(".")
    return NewObj(Global(modname, cls or "Module"), (), state=attrs)

  tree = root if root is not None else module(nested, "InceptionV3")
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr("inception/data.pkl", dumps(tree, protocol=2))
    zf.writestr("inception/code/__torch__.py", code)
    zf.writestr("inception/constants.pkl", dumps((), protocol=2))
    for key, flat in zw.storages.items():
      zf.writestr(f"inception/data/{key}", flat.tobytes())
    zf.writestr("inception/version", "3\n")
    zf.writestr("inception/byteorder", "little")
  return buf.getvalue()


def images_u8():
  return np.random.default_rng(7).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)


def write(tmp_path, name, raw):
  path = tmp_path / name
  path.write_bytes(raw)
  return str(path)


@pytest.fixture(scope="module")
def files(ref, tmp_path_factory):
  """The weight files of the tests: random batch-norm scales (pytorch-fid format only) and unit
  scales (both formats; NVIDIA's has no scale tensor)."""
  tmp = tmp_path_factory.mktemp("inception")
  scaled = pytorch_fid_state(ref, unit_scale=False)
  unit = pytorch_fid_state(ref, unit_scale=True)
  return dict(
      scaled_pth=write(tmp, "pt_inception_scaled.pth", write_pth(scaled)),
      unit_pth=write(tmp, "pt_inception_unit.pth", write_pth(unit, legacy=False)),
      unit_pt=write(tmp, "inception-unit.pt", write_torchscript(nvidia_state(ref, unit))),
      unit_state=unit)


# ---------------------------------------------------------------------------
# Structure and preprocessing.


def test_parameter_tree_and_tables():
  shapes = inc.param_shapes()
  # 94 conv + batch-norm units (kernel, scale, bias, mean, var) and fc: pytorch-fid's 23,850,960
  # parameters plus the 2 x 17,216 batch-norm statistics torch keeps as buffers.
  assert len(shapes) == 94 * 5 + 2 and sum(int(np.prod(s)) for s in shapes.values()) == 23_885_392
  assert len(inc.conv_units()) == 94
  for fmt, count in (("pytorch-fid", 472), ("nvidia", 378)):
    table = inc.weight_table(fmt)
    assert len(table) == count and len(set(table.values())) == count
    leaves = set(table.values()) | ({p for p in shapes if p[-1] == "scale"} if fmt == "nvidia" else set())
    assert leaves == set(shapes)


def test_fid_pooling_quirks():
  x = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1)
  avg = np.asarray(inc.avg_pool_exclusive(x))[0, ..., 0]
  # TF's average ignores padding: the corner averages its 4 pixels, an edge its 6 (torch's
  # default would divide both by 9).
  assert avg[0, 0] == pytest.approx((0 + 1 + 4 + 5) / 4)
  assert avg[0, 1] == pytest.approx((0 + 1 + 2 + 4 + 5 + 6) / 6)
  assert avg[1, 1] == pytest.approx(np.mean([0, 1, 2, 4, 5, 6, 8, 9, 10]))
  # Max pools pad with -inf: an all-negative map keeps its values at the border.
  mx = np.asarray(inc.max_pool(-1.0 - x, 1, padding=1))[0, ..., 0]
  assert mx[0, 0] == -1.0 and mx[3, 3] == -11.0


def test_preprocess_matches_nvidias_resize(ref):
  rng = np.random.default_rng(11)
  inputs = {"a": images_u8(), "b": rng.integers(0, 256, (1, 24, 40, 3), dtype=np.uint8),
            "c": rng.integers(0, 256, (1, 400, 333, 3), dtype=np.uint8)}
  # Measured max abs differences to torch's affine_grid + grid_sample (float32 grid arithmetic):
  # 3.7e-6, 3.9e-6 (upsampling), 4.6e-5 (shrinking 400 x 333).
  for key, atol in (("a", 1e-5), ("b", 1e-5), ("c", 1e-4)):
    y = np.asarray(inc.preprocess(jnp.asarray(inputs[key])))
    assert y.shape == inputs[key].shape[:1] + (299, 299, 3)
    idx = np.random.default_rng(12).integers(0, y.size, 500)
    np.testing.assert_allclose(y.reshape(-1)[idx], ref[f"resize_{key}_values"], rtol=0, atol=atol)
    np.testing.assert_allclose(y.astype(np.float64).sum((1, 2)), ref[f"resize_{key}_sums"], rtol=0, atol=0.02)
  # TF alignment: output pixel j samples input j * in / 299, so row and column 0 are the input's
  # first pixel exactly (pytorch-fid's half-pixel grid would mix in the second).
  y = np.asarray(inc.preprocess(jnp.asarray(inputs["a"])))
  np.testing.assert_allclose(y[:, 0, 0], (inputs["a"][:, 0, 0] - 128.0) / 128.0, atol=1e-6)
  # A 299 px image passes unchanged; grey images become RGB.
  same = rng.integers(0, 256, (1, 299, 299, 1), dtype=np.uint8)
  np.testing.assert_array_equal(np.asarray(inc.preprocess(jnp.asarray(same))), np.repeat((same - 128.0) / 128.0, 3, -1))


# ---------------------------------------------------------------------------
# Weights and features.


def test_features_match_pytorch_fid_on_the_same_weights(ref, files):
  weights = inc.load_weights(files["scaled_pth"])
  assert weights.fmt == "pytorch-fid" and len(weights.sha256) == 64
  model = inc.InceptionV3()
  apply = jax.jit(functools.partial(model.apply, logits=True))
  features, logits = apply({"params": weights.params}, inc.preprocess(jnp.asarray(images_u8())))
  # Measured max abs: 9.5e-6 (features span 0..24) and 8.6e-6 for the logits under the tests'
  # XLA flags, 1.1e-5 / 9.8e-6 with XLA's defaults.
  np.testing.assert_allclose(np.asarray(features), ref["features_scaled"], rtol=0, atol=3e-5)
  np.testing.assert_allclose(np.asarray(logits), ref["logits_scaled"], rtol=0, atol=3e-5)
  # The metrics' path, sharded over 2 devices (one image each), gives the same.
  sharded = kid_fid.extract_features(weights, [images_u8()], batch_size=2, mesh=parallel.make_mesh(jax.devices()[:2]))
  np.testing.assert_allclose(np.concatenate(list(sharded)), ref["features_scaled"], rtol=0, atol=3e-5)


def test_both_formats_load_to_identical_parameters_and_nvidias_features(ref, files):
  pth, pt = inc.load_weights(files["unit_pth"]), inc.load_weights(files["unit_pt"])
  assert (pth.fmt, pt.fmt) == ("pytorch-fid", "nvidia") and pth.sha256 != pt.sha256
  flat_pth = dict(jax_flatten(pth.params))
  flat_pt = dict(jax_flatten(pt.params))
  assert flat_pth.keys() == flat_pt.keys() == set(inc.param_shapes())
  for path, value in flat_pth.items():
    np.testing.assert_array_equal(flat_pt[path], value, err_msg=str(path))
  # Conv kernels come in HWIO, fc as (in, out).
  np.testing.assert_array_equal(pt.params["Mixed_7c"]["branch3x3_2a"]["kernel"],
                                files["unit_state"]["Mixed_7c.branch3x3_2a.conv.weight"].transpose(2, 3, 1, 0))
  features = inc.make_feature_fn()(pt.params, images_u8())
  # Measured max abs 3.8e-6 (features span 0..8.5).
  np.testing.assert_allclose(np.asarray(features), ref["features_unit"], rtol=0, atol=3e-5)


def jax_flatten(tree, prefix=()):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from jax_flatten(value, prefix + (key,))
    else:
      yield prefix + (key,), value


def test_missing_extra_and_misshapen_tensors_are_listed(ref, files, tmp_path):
  state = dict(files["unit_state"])
  del state["Mixed_6b.branch7x7_2.conv.weight"]
  state["Mixed_6b.branch7x7_9.conv.weight"] = np.zeros((1,), np.float32)
  state["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
  state["fc.bias"] = np.zeros(1000, np.float32)
  with pytest.raises(errors.InceptionWeightsError) as e:
    inc.params_from_state_dict(state)
  msg = str(e.value)
  assert "1 missing tensor(s): ['Mixed_6b.branch7x7_2.conv.weight']" in msg
  assert "2 unexpected tensor(s): ['Mixed_6b.branch7x7_9.conv.weight', 'AuxLogits.fc.weight']" in msg
  assert "fc.bias: shape (1000,), expected (1008,)" in msg
  # The same through a file, in NVIDIA's format: its batch norms have no scale, so a stray one is extra.
  nv = nvidia_state(ref, files["unit_state"])
  del nv["layers.mixed_10.tower_2_conv.var"]
  nv["layers.mixed_10.tower_2_conv.gamma"] = np.ones(192, np.float32)
  with pytest.raises(errors.InceptionWeightsError, match=r"(?s)missing.*mixed_10.tower_2_conv.var.*unexpected"
                                                      r".*mixed_10.tower_2_conv.gamma"):
    inc.load_weights(write(tmp_path, "bad.pt", write_torchscript(nv)))
  with pytest.raises(errors.InceptionWeightsError, match="neither pytorch-fid's"):
    inc.load_weights(write(tmp_path, "other.pth", write_pth({"w": np.zeros(3, np.float32)})))
  with pytest.raises(errors.InceptionWeightsError, match="cannot read"):
    inc.load_weights(str(tmp_path / "absent.pth"))


class _Evil:
  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


def test_hostile_files_are_refused_and_their_code_never_runs(ref, files, tmp_path):
  marker = tmp_path / "pwned"
  # A pickle that calls os.system, in either container.
  with pytest.raises(errors.InceptionWeightsError, match="os.system|posix.system") as e:
    inc.load_weights(write(tmp_path, "evil.pth", pickle.dumps({"fc.weight": _Evil(f"touch {marker}")})))
  assert isinstance(e.value.__cause__, errors.UnsafePickleError)
  zw = TorchZipWriter()
  raw = zw.write({"fc.weight": Call(Global("os", "system"), (f"touch {marker}",))})
  with pytest.raises(errors.InceptionWeightsError, match="os.system"):
    inc.load_weights(write(tmp_path, "evil_zip.pth", raw))
  # A TorchScript archive's code is text that is never read, let alone run.
  code = f"import os\nos.system('touch {marker}')\n"
  weights = inc.load_weights(write(tmp_path, "code.pt", write_torchscript(nvidia_state(ref, files["unit_state"]), code)))
  assert weights.fmt == "nvidia"
  # A __torch__ class name cannot be called to run anything either: it is one inert class.
  with pytest.raises(errors.InceptionWeightsError):
    inc.load_weights(write(tmp_path, "call.pt", write_torchscript({}, root=Call(Global("__torch__.os", "system"),
                                                                                  (f"touch {marker}",)))))
  assert not marker.exists()
