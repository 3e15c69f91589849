"""Grayscale models (model.img_channels=1) end to end: data conversion against PIL, the exact
folds of an RGB source into a grayscale target, 1-channel imports, metrics and a tiny run.

References are independent of the code under test: PIL's convert('L') for the luma, the RGB
network on replicated images (or the luma of its image, with the ITU-R 601-2 weights written
here) for the folds, the official implementation's outputs (fixtures) for the import.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import tiny
from gantl_jax import config as config_lib
from gantl_jax.data import builders, pipeline
from gantl_jax.metrics import swd
from gantl_jax.models import stylegan2
from gantl_jax.training import parallel
from gantl_jax.training import state as state_lib
from gantl_jax.training import transfer

import test_import_stylegan2 as imp_tests
from test_transfer import make_config, networks, random_state, save_run_checkpoint
from gantl_jax import errors

REC601 = np.array([0.299, 0.587, 0.114])


def data_config(tmp_path, **kw):
  c = tiny.get_config().data
  c.update(data_dir=str(tmp_path / "tfds"), prefetch=0, num_workers=1, xflip=False, **kw)
  return c


def all_colours(n=4096, seed=0):
  """Random RGB pixels plus the corners of the cube, as a (64, 64 + k, 3) image."""
  rng = np.random.default_rng(seed)
  corners = np.array([[r, g, b] for r in (0, 255) for g in (0, 255) for b in (0, 255)], np.uint8)
  return np.concatenate([rng.integers(0, 256, (n, 3), dtype=np.uint8), corners]).reshape(1, -1, 3)


# ---------------------------------------------------------------------------
# Data.


def test_rgb_to_gray_conversion_is_pils_convert_l_bit_for_bit():
  rgb = all_colours()
  ours = pipeline.to_channels(rgb, 1)
  assert ours.shape == rgb.shape[:-1] + (1,) and ours.dtype == np.uint8
  np.testing.assert_array_equal(ours[..., 0], np.asarray(Image.fromarray(rgb).convert("L")))
  # The luma within rounding of the ITU-R 601-2 weights.
  assert np.abs(ours[..., 0] - rgb @ REC601).max() <= 0.5 + 1e-9


def test_gray_to_rgb_repeats_the_channel():
  gray = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
  rgb = pipeline.to_channels(gray, 3)
  np.testing.assert_array_equal(rgb, np.asarray(Image.fromarray(gray[..., 0]).convert("RGB")))
  assert pipeline.to_channels(rgb, 3) is rgb


def write_folder(folder, res=8):
  """An RGB, an RGBA (half transparent) and an 'L' PNG at ``res`` px (no resize needed)."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(1)
  rgb = rng.integers(0, 256, (res, res, 3), dtype=np.uint8)
  rgba = np.concatenate([rng.integers(0, 256, (res, res, 3), dtype=np.uint8),
                         np.tile(np.array([0, 128, 255], np.uint8), res * res)[:res * res].reshape(res, res, 1)], -1)
  gray = rng.integers(0, 256, (res, res), dtype=np.uint8)
  Image.fromarray(rgb).save(os.path.join(folder, "a_rgb.png"))
  Image.fromarray(rgba, "RGBA").save(os.path.join(folder, "b_rgba.png"))
  Image.fromarray(gray).save(os.path.join(folder, "c_gray.png"))
  white = Image.new("RGBA", (res, res), (255, 255, 255, 255))
  on_white = Image.alpha_composite(white, Image.fromarray(rgba, "RGBA"))
  # What each file should become in a grayscale dataset: PIL's own conversions.
  return [np.asarray(Image.fromarray(rgb).convert("L")), np.asarray(on_white.convert("L")), gray]


def test_folder_prepared_as_grayscale_is_pils_luma_and_never_shares_the_rgb_preparation(tmp_path):
  expected = write_folder(tmp_path / "faces")
  c = data_config(tmp_path, source="folder", folder=str(tmp_path / "faces"))
  gray = pipeline.prepare(c, resolution=8, channels=1, verbose=False)
  rgb = pipeline.prepare(c, resolution=8, channels=3, verbose=False)
  assert gray.name != rgb.name
  assert "_c1_" in gray.name and "_c1_" not in rgb.name
  assert gray.data_path != rgb.data_path and not gray.report["reused"]
  assert gray.report["files"] == ["a_rgb.png", "b_rgba.png", "c_gray.png"]
  # The 'L' file is stored as read; the RGB and RGBA ones are converted.
  assert [x["mode"] for x in gray.report["converted"]] == ["RGB", "RGBA"]
  assert "converted 2 to grayscale (L) from RGB, RGBA" in builders.summarize(gray.report)
  for i, want in enumerate(expected):
    assert gray.data_source[i].shape == (8, 8, 1)
    np.testing.assert_array_equal(gray.data_source[i][..., 0], want)
  # The same dataset read by an RGB model: the gray image repeated (stored C=1, model C=3) ...
  as_rgb = pipeline.prepare(c, resolution=8, channels=1, verbose=False)
  as_rgb.data_source.channels = 3
  np.testing.assert_array_equal(as_rgb.data_source[2], np.repeat(expected[2][..., None], 3, -1))
  # ... and the RGB preparation read by a grayscale model: its luma (stored C=3, model C=1).
  rgb.data_source.channels = 1
  for i, want in enumerate(expected):
    np.testing.assert_array_equal(rgb.data_source[i][..., 0], want)
  batch = next(pipeline.make_iterator(gray, global_batch=3, seed=0))
  assert batch.shape == (3, 8, 8, 1) and batch.dtype == np.float32


def test_synthetic_grayscale_is_the_luma_of_the_rgb_rendering(tmp_path):
  c = data_config(tmp_path, num_images=4)
  gray = pipeline.prepare(c, resolution=8, channels=1, verbose=False)
  rgb = pipeline.prepare(c, resolution=8, channels=3, verbose=False)
  assert gray.name != rgb.name
  for i in range(4):
    want = np.asarray(Image.fromarray(rgb.data_source[i]).convert("L"))
    np.testing.assert_array_equal(gray.data_source[i][..., 0], want)


def test_grayscale_grid_is_an_l_png(tmp_path):
  from gantl_jax import images  # pylint: disable=import-outside-toplevel
  x = np.random.default_rng(0).uniform(-1, 1, (6, 4, 4, 1)).astype(np.float32)
  images.save_grid(x, 3, str(tmp_path / "grid.png"))
  with Image.open(tmp_path / "grid.png") as im:
    assert im.mode == "L" and im.size == (12, 8)
    np.testing.assert_array_equal(np.asarray(im), images.make_grid(x, 3)[..., 0])


# ---------------------------------------------------------------------------
# Transfer: an RGB source folded into a grayscale target.


@pytest.fixture(scope="module")
def mesh():
  return parallel.make_mesh()


def gray_config(**transfer_kw):
  c = tiny.get_config()
  c.model.img_channels = 1
  c.transfer.update(**transfer_kw)
  return config_lib.resolve(c)


@pytest.fixture(scope="module")
def rgb_source(tmp_path_factory, mesh):
  root = tmp_path_factory.mktemp("rgb_source")
  config = make_config(16)
  state = random_state(state_lib.build_networks(config), 1, mesh)
  save_run_checkpoint(config, state, str(root / "run" / "checkpoints"))
  return config, str(root / "run"), networks(state)


def test_rgb_source_folds_exactly_into_a_grayscale_target(rgb_source, mesh):
  rgb_config, source, src = rgb_source
  config = gray_config(source=source)
  nets = state_lib.build_networks(config)
  transfer.preflight(config, "/nonexistent_workdir_for_preflight")
  state, report = transfer.transfer_state(config, random_state(nets, 3, mesh))
  assert any("source 3 (RGB), target 1 (grayscale)" in n for n in report["notes"])
  for net in ("g", "g_ema", "d"):
    r = report["networks"][net]
    assert r["kept_at_init"] == [] and r["mismatched"] == []
  folded_g = report["networks"]["g"]["folded_to_gray"]
  assert folded_g == sorted(f"params/synthesis/b{r}/torgb/{k}" for r in (4, 8, 16) for k in ("bias", "weight"))
  assert report["networks"]["d"]["folded_to_gray"] == ["params/b16/fromrgb/weight"]
  assert "folded to gray 6" in transfer.summary(report)

  got = networks(state)
  # D on a gray image x equals the RGB D on (x, x, x).
  x = np.random.default_rng(5).uniform(-1, 1, (4, 16, 16, 1)).astype(np.float32)
  d_rgb = stylegan2.discriminator_from_config(rgb_config.model)
  d_gray = stylegan2.discriminator_from_config(config.model)
  unflat = lambda f: {"params": jax.tree.map(jnp.asarray, _unflatten(f)["params"])}
  want = np.asarray(d_rgb.apply(unflat(src["d"]), jnp.asarray(np.repeat(x, 3, -1))))
  have = np.asarray(d_gray.apply(unflat(got["d"]), jnp.asarray(x)))
  print(f"\nD logits: max abs diff {np.abs(have - want).max():.2e}, scale {np.abs(want).max():.2e}")
  # Measured on CPU: 1.3e-6 on logits up to 0.22 (float32 sums in another order).
  np.testing.assert_allclose(have, want, rtol=0, atol=2e-5 * np.abs(want).max())
  # G's image equals the luma of the RGB G's image.
  z = np.random.default_rng(6).standard_normal((2, config.model.z_dim)).astype(np.float32)
  g_rgb = stylegan2.generator_from_config(rgb_config.model)
  g_gray = stylegan2.generator_from_config(config.model)
  for net in ("g", "g_ema"):
    item = "g_ema"  # transfer.g_from and g_ema_from default to the source's G-EMA
    rgb_img = np.asarray(g_rgb.apply(_unflatten(src[item]), jnp.asarray(z), noise_mode="const"))
    gray_img = np.asarray(g_gray.apply(_unflatten(got[net]), jnp.asarray(z), noise_mode="const"))
    want = (rgb_img.astype(np.float64) @ REC601)[..., None]
    scale = np.abs(want).max()
    print(f"{net} image: max abs diff {np.abs(gray_img - want).max():.2e}, scale {scale:.2e}")
    assert gray_img.shape == (2, 16, 16, 1)
    # Measured on CPU: 1.4e-6 on images up to 8.8.
    np.testing.assert_allclose(gray_img, want, rtol=0, atol=1e-6 * scale)


def test_the_few_shot_regularisers_read_the_source_folded(rgb_source, mesh):
  _, source, src = rgb_source
  config = gray_config(source=source)
  state = random_state(state_lib.build_networks(config), 3, mesh)
  frozen = transfer.read_frozen(config, state, {"g": "g_ema"})["g"]
  weight = np.asarray(frozen["params"]["synthesis"]["b8"]["torgb"]["weight"])
  np.testing.assert_allclose(weight[..., 0], src["g_ema"]["params/synthesis/b8/torgb/weight"] @ REC601, rtol=1e-6)


def test_a_grayscale_source_for_an_rgb_target_is_refused(tmp_path, mesh):
  config = gray_config()
  state = random_state(state_lib.build_networks(config), 1, mesh)
  save_run_checkpoint(config, state, str(tmp_path / "gray" / "checkpoints"))
  target = make_config(16, source=str(tmp_path / "gray"))
  with pytest.raises(errors.TransferError, match=r"img_channels: source 1, target 3.*--config.model.img_channels=1"):
    transfer.transfer_state(target, random_state(state_lib.build_networks(target), 3, mesh))


def _unflatten(flat_tree):
  from flax import traverse_util  # pylint: disable=import-outside-toplevel
  return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat_tree.items()}, sep="/")


# ---------------------------------------------------------------------------
# Import of a 1-channel official network.


def test_one_channel_official_pickle_imports(tmp_path):
  """A 1-channel stylegan2-ada-pytorch network: the fixture's RGB network with its toRGB layers
  cut to the red output and its fromRGB to the red input (divided by sqrt(3): the layer's
  equalised learning rate divides by sqrt(fan_in), 3 then 1). Its image is then the red channel
  of the official RGB image, and its D on x the RGB D's logits on (x, 0, 0)."""
  fix = imp_tests._fixture("stylegan2_ada_pytorch_res16.npz")

  def to_one_channel(g_ema_sd, g_sd, d_sd, gk, dk):
    for sd in (g_ema_sd, g_sd):
      for k in list(sd):
        if ".torgb." in k and k.endswith(("weight", "bias")) and ".affine." not in k:
          sd[k] = np.ascontiguousarray(sd[k][:1])
    for k in list(d_sd):
      if k.endswith("fromrgb.weight"):
        d_sd[k] = np.ascontiguousarray(d_sd[k][:, :1] / np.float32(np.sqrt(3)))
    gk["img_channels"] = dk["img_channels"] = 1

  path = imp_tests.write_ada_pickle(fix, tmp_path / "gray.pkl", mutate=to_one_channel)
  fmt, tree = imp_tests.imp.read_source(path)
  hp, _, g_ema, d, _ = imp_tests.imp.convert(tree, fmt)
  assert hp["img_channels"] == 1
  out = imp_tests._prefixed(fix, "out.")
  img = imp_tests.generate(hp, g_ema, out["z"], 1.0)  # NCHW
  assert img.shape[1] == 1
  print(f"\n1-channel import: G max abs diff {np.abs(img[:, 0] - out['img_psi1'][:, 0]).max():.2e}")
  # Measured: 1.9e-6, as the RGB import's (the importer tests' tolerances).
  np.testing.assert_allclose(img[:, 0], out["img_psi1"][:, 0], rtol=0, atol=imp_tests.G_TOL)
  # D: the official logits are on RGB images; ours on the red channel equals the RGB import's on
  # (red, 0, 0), whose agreement with the official D the importer's own tests establish.
  hp_rgb, _, _, d_rgb, _ = imp_tests.imp.convert(*reversed(imp_tests.imp.read_source(
      imp_tests.write_ada_pickle(fix, tmp_path / "rgb.pkl"))))
  red = out["d_images"][:, :1]
  only_red = np.concatenate([red, np.zeros_like(red), np.zeros_like(red)], axis=1)
  logits, want = imp_tests.discriminate(hp, d, red), imp_tests.discriminate(hp_rgb, d_rgb, only_red)
  print(f"1-channel import: D max abs diff {np.abs(logits - want).max():.2e}")
  np.testing.assert_allclose(logits, want, rtol=0, atol=imp_tests.D_TOL)  # measured 1.8e-7


# ---------------------------------------------------------------------------
# Metrics.


def test_swd_of_one_channel_images():
  rng = np.random.default_rng(0)
  a = rng.integers(0, 256, (64, 16, 16, 1), dtype=np.uint8)
  b = np.clip(a.astype(int) + rng.integers(-60, 60, a.shape), 0, 255).astype(np.uint8)
  acc_a, acc_b, acc_a2 = (swd.accumulate([x], seed=0) for x in (a, b, a))
  assert acc_a.descriptors(16).shape[1] == 1 * 49
  same = swd.compute_swd(acc_a, acc_a2, seed=0)
  other = swd.compute_swd(acc_a, acc_b, seed=0)
  assert same["swd_avg"] == pytest.approx(0.0, abs=1e-9)
  assert other["swd_avg"] > 1.0


def test_inception_feature_of_a_gray_image_is_that_of_the_image_repeated_to_rgb():
  from gantl_jax.metrics import inception  # pylint: disable=import-outside-toplevel
  import test_inception  # pylint: disable=import-outside-toplevel
  with np.load(test_inception.FIXTURE) as f:
    ref = dict(f)
  params = inception.params_from_state_dict(test_inception.pytorch_fid_state(ref, unit_scale=False))
  fn = inception.make_feature_fn()
  gray = np.random.default_rng(3).integers(0, 256, (1, 16, 16, 1), dtype=np.uint8)
  one = np.asarray(fn(params, jnp.asarray(gray)))
  three = np.asarray(fn(params, jnp.asarray(np.repeat(gray, 3, -1))))
  assert one.shape == (1, 2048) and np.abs(three).max() > 0.1
  print(f"\nInception 1 vs 3 channels: max abs diff {np.abs(one - three).max():.2e}, scale {np.abs(three).max():.2e}")
  # Measured: identical (0.0 on features up to 20.5); the two shapes compile to two programs.
  np.testing.assert_allclose(one, three, rtol=0, atol=1e-6 * np.abs(three).max())


# ---------------------------------------------------------------------------
# A tiny grayscale run, end to end.


def test_tiny_grayscale_run_trains_generates_exports_and_measures(tmp_path):
  from gantl_jax.cli import export
  from gantl_jax.cli import generate
  from gantl_jax.training import loop as train  # pylint: disable=import-outside-toplevel
  from gantl_jax.training import runs
  folder = tmp_path / "gray_faces"
  folder.mkdir()
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:16, :16]
  for i in range(16):
    cy, cx, r = rng.uniform(5, 11), rng.uniform(5, 11), rng.uniform(3, 6)
    disc = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r * r, 200, 40) + rng.integers(0, 20, (16, 16))
    Image.fromarray(disc.astype(np.uint8)).save(folder / f"{i:02d}.png")
  c = tiny.get_config()
  c.model.update(img_channels=1, mbstd_group_size=1)
  c.train.update(total_kimg=0.016, log_every=1, pl_batch_shrink=1)  # 2 steps of 8
  c.data.update(source="folder", folder=str(folder), data_dir=str(tmp_path / "tfds"))
  c.checkpoint.update(every_steps=2)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(c, workdir)

  with Image.open(os.path.join(workdir, "reals.png")) as im:
    assert im.mode == "L" and im.size == (4 * 16, 2 * 16)
    reals = np.asarray(im)
  # The grid's first cell is the first training image (the folder's files in sorted order).
  np.testing.assert_array_equal(reals[:16, :16], np.asarray(Image.open(folder / "00.png")))
  with Image.open(os.path.join(workdir, "samples_init.png")) as im:
    assert im.mode == "L"

  out = generate.generate(workdir, seeds="0-3", outdir=str(tmp_path / "gen"))
  network = runs.load_network(workdir)
  pixels = generate.seed_images(network, [0, 1, 2, 3])
  assert pixels.shape == (4, 16, 16, 1)
  for s in range(4):
    with Image.open(os.path.join(out, f"seed{s:04d}.png")) as im:
      assert im.mode == "L"
      np.testing.assert_array_equal(np.asarray(im), pixels[s, ..., 0])

  exported = export.export(workdir, outdir=str(tmp_path / "exported"))
  again = runs.load_network(exported)
  assert again.hparams["img_channels"] == 1
  np.testing.assert_array_equal(generate.seed_images(again, [0, 1, 2, 3]), pixels)

  read_back = np.stack([np.asarray(Image.open(os.path.join(out, f"seed{s:04d}.png")))[..., None] for s in range(4)])
  real = np.stack([np.asarray(Image.open(folder / f"{i:02d}.png"))[..., None] for i in range(16)])
  values = swd.compute_swd(swd.accumulate([real], seed=0), swd.accumulate([read_back], seed=0), seed=0)
  assert np.isfinite(values["swd_avg"]) and values["swd_avg"] > 0
