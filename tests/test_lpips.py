"""LPIPS-VGG (gantl_jax.metrics.lpips) against the ``lpips`` package on seeded random weights.

``fixtures/lpips_reference.npz`` (fixtures/README.md, made by make_lpips_reference.py) holds
images and the package's LPIPS between every pair of them, with VGG16 and lin weights from
`seeded_tensor`; the weights are made again here (58 MB, not committed) and written in the file
formats `lpips.load_weights` reads.
"""
import os
import zlib

import numpy as np
import pytest

from gantl_jax.metrics import distances, lpips
from test_inception import write_pth
from gantl_jax import errors

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "lpips_reference.npz")
WEIGHT_SEED = 20180111


def seeded_tensor(name, shape, seed=WEIGHT_SEED):
  """A random tensor for one LPIPS-VGG tensor, a function of its name only (as the generator's)."""
  rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
  if name.endswith("model.1.weight"):
    return rng.uniform(0.0, 1.0, shape).astype(np.float32)
  if name.endswith(".weight"):
    return (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))).astype(np.float32)
  if name.endswith(".bias"):
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)
  raise ValueError(name)


@pytest.fixture(scope="module")
def ref():
  with np.load(FIXTURE) as f:
    return dict(f)


@pytest.fixture(scope="module")
def state():
  """torchvision / lpips-file names -> seeded tensors, in VGG16's shapes written out here."""
  out, cin = {}, 3
  for index, cout in zip((0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
                         (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)):
    out[f"features.{index}.weight"] = seeded_tensor(f"features.{index}.weight", (cout, cin, 3, 3))
    out[f"features.{index}.bias"] = seeded_tensor(f"features.{index}.bias", (cout,))
    cin = cout
  for layer, c in enumerate((64, 128, 256, 512, 512)):
    out[f"lin{layer}.model.1.weight"] = seeded_tensor(f"lin{layer}.model.1.weight", (1, c, 1, 1))
  return out


@pytest.fixture(scope="module")
def weights(state, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("lpips") / "lpips_vgg.npz")
  np.savez(path, **state)
  return lpips.load_weights(path)


def test_pairwise_lpips_matches_the_package(ref, weights):
  dist = lpips.lpips_distance(weights, batch_size=3)  # 6 images: two batches
  for key in ("a", "b"):
    images, expected = ref[f"images_{key}"], ref[f"lpips_{key}"]
    got = distances.pairwise(dist, distances.embed(dist, images))
    off = ~np.eye(len(images), dtype=bool)
    # Measured: max relative difference 2.7e-7 (a), 5.7e-8 (b).
    np.testing.assert_allclose(got[off], expected[off], rtol=1e-5)
    assert not np.diagonal(got).any()


def test_file_layouts_give_the_same_parameters(state, weights, tmp_path):
  # torchvision's vgg16 state dict (with its classifier) as .npz plus lpips' vgg.pth (torch zip).
  vgg = {k: v for k, v in state.items() if k.startswith("features.")}
  vgg["classifier.0.weight"] = np.zeros((4, 2), np.float32)
  np.savez(tmp_path / "vgg16.npz", **vgg)
  (tmp_path / "vgg.pth").write_bytes(write_pth({k: v for k, v in state.items() if k.startswith("lin")},
                                               legacy=False))
  two = lpips.load_weights(f"{tmp_path / 'vgg16.npz'}, {tmp_path / 'vgg.pth'}")
  # An lpips.LPIPS module's own state dict: net.slice{k}.{i}.*, lin{l} and lins.{l}, scaling_layer.
  slices = {0: 1, 2: 1, 5: 2, 7: 2, 10: 3, 12: 3, 14: 3, 17: 4, 19: 4, 21: 4, 24: 5, 26: 5, 28: 5}
  module = {f"net.slice{slices[int(k.split('.')[1])]}.{k.split('.', 1)[1]}": v for k, v in vgg.items()
            if k.startswith("features.")}
  for layer in range(5):
    module[f"lin{layer}.model.1.weight"] = module[f"lins.{layer}.model.1.weight"] = state[f"lin{layer}.model.1.weight"]
  module["scaling_layer.shift"] = np.zeros((1, 3, 1, 1), np.float32)
  np.savez(tmp_path / "module.npz", **module)
  one = lpips.load_weights(str(tmp_path / "module.npz"))
  for other in (two, one):
    for a, b in zip(weights.params["lin"], other.params["lin"]):
      np.testing.assert_array_equal(a, b)
    for i, conv in weights.params["features"].items():
      np.testing.assert_array_equal(conv["kernel"], other.params["features"][i]["kernel"])
      np.testing.assert_array_equal(conv["bias"], other.params["features"][i]["bias"])
  assert weights.params["features"]["0"]["kernel"].shape == (3, 3, 3, 64)


def test_bad_weight_files_are_refused_in_one_line(state, tmp_path):
  def refused(tensors, match, name="w.npz"):
    np.savez(tmp_path / name, **tensors)
    with pytest.raises(errors.LPIPSWeightsError, match=match) as e:
      lpips.load_weights(str(tmp_path / name))
    assert "\n" not in str(e.value)

  no_lin = {k: v for k, v in state.items() if not k.startswith("lin4")}
  refused(no_lin, r"1 missing tensor\(s\): \['lin4.model.1.weight'\]")
  refused({**state, "lin2.model.1.weight": -state["lin2.model.1.weight"]}, "lin2.model.1.weight: negative")
  refused({**state, "features.0.bias": np.zeros(3, np.float32)}, r"features.0.bias: shape \(3,\), expected \(64,\)")
  refused({**state, "extra.weight": np.zeros(1, np.float32)}, r"unexpected tensor\(s\): \['extra.weight'\]")
  np.savez(tmp_path / "lin.npz", **{k: v for k, v in state.items() if k.startswith("lin")})
  with pytest.raises(errors.LPIPSWeightsError, match="repeats tensor"):
    lpips.load_weights([str(tmp_path / "lin.npz"), str(tmp_path / "lin.npz")])
  (tmp_path / "junk.pth").write_bytes(b"not a torch file")
  with pytest.raises(errors.LPIPSWeightsError, match=r"^cannot read LPIPS weights .*junk.pth: ") as e:
    lpips.load_weights(str(tmp_path / "junk.pth"))
  assert "Inception" not in str(e.value)


def test_small_images_are_refused(weights):
  with pytest.raises(ValueError, match="at least 16 px"):
    distances.embed(lpips.lpips_distance(weights), np.zeros((2, 8, 8, 3), np.uint8))
