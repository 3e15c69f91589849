"""Tests of benchmarks/official_transfer.py's way back to the official stylegan2-ada-pytorch (no
torch needed): our variables -> official state dict is the inverse of the importer's mapping, with
the official file's own names and layouts as the reference, and the constructor kwargs and FreezeD
count mean what ours do."""
import json
import os
import types

import numpy as np
import pytest

from benchmarks import official_transfer
from gantl_jax.cli import import_stylegan2 as imp
from test_import_stylegan2 import write_ada_pickle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "stylegan2_ada_pytorch_res16.npz")


@pytest.fixture(scope="module")
def official():
  """The fixture: official state dicts ('G.', 'D.' names) and constructor kwargs."""
  with np.load(FIXTURE) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def imported(official, tmp_path_factory):
  path = write_ada_pickle(official, tmp_path_factory.mktemp("ada") / "network-snapshot.pkl")
  fmt, tree = imp.read_source(path)
  return imp.convert(tree, fmt)


def _official_sd(fix, net):
  # The FIR filters are not among our variables: the official modules construct them.
  return {k[len(net) + 1:]: v for k, v in fix.items()
          if k.startswith(net + ".") and not k.endswith("resample_filter")}


@pytest.mark.parametrize("net", ["G", "D"])
def test_to_official_gives_the_official_state_dict(official, imported, net):
  hp, _, g_ema, d, _ = imported
  ours = g_ema if net == "G" else d
  exported = official_transfer.to_official(ours)
  expected = _official_sd(official, net)
  assert sorted(exported) == sorted(expected)
  for name, value in expected.items():
    assert exported[name].shape == value.shape, name
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
    assert exported[name].dtype == np.float32 and exported[name].flags.c_contiguous, name


def test_importer_reads_the_export_back_unchanged(imported):
  hp, _, g_ema, d, _ = imported
  for net, ours, rules in (("g", g_ema, imp._rules_ada_g()), ("d", d, imp._rules_ada_d())):
    report = imp._new_report("ada-pytorch")
    back = imp.map_tensors(official_transfer.to_official(ours), rules, imp._expected_shapes(hp, net), net, report)
    assert not (report["unmapped_source"] or report["unset_target"] or report["shape_mismatch"]), report
    flat_back, flat_ours = imp._flatten(back), imp._flatten(ours)
    assert sorted(flat_back) == sorted(flat_ours)
    for key in flat_ours:
      np.testing.assert_array_equal(flat_back[key], flat_ours[key], err_msg=key)


def test_official_kwargs_are_read_back_as_our_hparams(official, imported):
  hp = imported[0]
  g_kwargs, d_kwargs = official_transfer.official_kwargs(hp)
  # The fixture's constructor kwargs (what the official code was built with) say the same.
  fixture_g = json.loads(str(official["G_init_kwargs"]))
  for key in ("z_dim", "w_dim", "img_resolution", "img_channels", "c_dim"):
    assert g_kwargs[key] == fixture_g[key], key
  assert g_kwargs["synthesis_kwargs"]["channel_base"] == fixture_g["synthesis_kwargs"]["channel_base"]
  report = imp._new_report("ada-pytorch")
  as_source = lambda kw: types.SimpleNamespace(state={"_init_kwargs": kw})
  back = imp._hparams_ada(as_source(g_kwargs), as_source(d_kwargs), report)
  assert back == {k: v for k, v in hp.items() if k != "mbstd_grouping"}


@pytest.mark.parametrize("d_blocks", [1, 2])
def test_freezed_count_covers_our_frozen_d_blocks(official, d_blocks):
  # The official FreezeD counts D's layers from the image side; the layers are those with a weight
  # in the official state dict, block by block from the highest resolution.
  blocks = [16, 8]  # the fixture's D blocks above the b4 epilogue
  layers = [[k for k in _official_sd(official, "D") if k.startswith(f"b{r}.") and k.endswith(".weight")]
            for r in blocks]
  assert official_transfer.freezed_layers(d_blocks) == sum(len(ls) for ls in layers[:d_blocks])
  assert official_transfer.freezed_layers(2) == 7  # the demo: b32 (4 layers) and b16 (3)


# ---------------------------------------------------------------------------
# The target: 'anime' or a folder with shots/ and held_out/ (no torch, no training).

TWEMOJI_CONFIG = os.path.join(ROOT, "configs", "twemoji_faces.py")


@pytest.mark.parametrize("config_file", ["demo_anime.py", "twemoji_faces.py"])
def test_official_settings_are_what_our_config_runs(config_file):
  # The constants given to the official loop, against our config as the loop resolves it.
  from gantl_jax import config as config_lib
  c = config_lib.resolve(official_transfer.demo_config(os.path.join(ROOT, "configs", config_file)))
  t, o = c.train, official_transfer
  assert (t.batch_size, c.model.mbstd_group_size) == (o.BATCH, o.MBSTD_GROUP)
  assert t.r1_gamma == pytest.approx(o.R1_GAMMA) and t.ema_kimg == pytest.approx(o.EMA_KIMG)
  assert (t.r1_interval, t.pl_interval, t.pl_weight) == (o.R1_INTERVAL, o.PL_INTERVAL, o.PL_WEIGHT)
  assert (t.ema_rampup, t.style_mixing_prob) == (o.EMA_RAMPUP, o.STYLE_MIXING)
  for opt in (c.optim.g, c.optim.d):
    assert (opt.lr, (opt.beta1, opt.beta2), opt.eps) == (o.LR, o.BETAS, o.EPS)
  a = c.augment
  assert (a.kind, a.pipeline, a.ada_target, a.ada_interval, a.ada_kimg) == (
      "ada", "bgc", o.ADA_TARGET, o.ADA_INTERVAL, o.ADA_KIMG)
  assert (c.freeze.preset, c.freeze.d_blocks) == ("freezed", o.FREEZE_D_BLOCKS)


def _write_rgba(path, rgb, alpha):
  from PIL import Image
  Image.fromarray(np.dstack([rgb, alpha]).astype(np.uint8), "RGBA").save(path)


def _composited_on_white(rgb, alpha):
  # The reference: straight alpha over a white background.
  a = alpha[..., None].astype(np.float64) / 255
  return rgb * a + 255 * (1 - a)


def _in_order_of(images, references):
  """``references`` reordered to match ``images`` one to one (the pipeline keeps its own order)."""
  diff = np.abs(images[:, None].astype(int) - references[None].round().astype(int)).reshape(
      len(images), len(references), -1).max(-1)
  order = diff.argmin(1)
  assert sorted(order) == list(range(len(references))), diff
  return references[order]


@pytest.fixture(scope="module")
def folder_target(tmp_path_factory):
  """A target folder of 32 px RGBA images (3 shots, 5 held out) with their composites on white,
  and our side's twemoji config for it, preparing into a temporary data_dir."""
  root = tmp_path_factory.mktemp("target")
  rng = np.random.default_rng(0)
  expected = {}
  for sub, count in (("shots", 3), ("held_out", 5)):
    os.makedirs(root / sub)
    expected[sub] = []
    for i in range(count):
      rgb = rng.integers(0, 256, (32, 32, 3))
      alpha = np.where(rng.random((32, 32)) < 0.5, 0, rng.integers(0, 256, (32, 32)))
      _write_rgba(root / sub / f"{i:02d}.png", rgb, alpha)
      expected[sub].append(_composited_on_white(rgb, alpha))
  config = official_transfer.demo_config(TWEMOJI_CONFIG, str(root))
  config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
  return str(root), config, {k: np.stack(v) for k, v in expected.items()}


def test_folder_target_config_trains_on_shots_and_names_held_out(folder_target):
  root, config, _ = folder_target
  assert (config.data.source, config.data.folder, config.data.n_shot) == ("folder", os.path.join(root, "shots"), 0)
  assert config.eval.real_folder == os.path.join(root, "held_out")
  assert config.transfer.source == os.path.join(ROOT, "pretrained", "noto32")
  # The anime target keeps demo_anime's setup with 10 images.
  assert official_transfer.config_overrides("anime") == {"data.num_images": 10}


def test_folder_target_writes_the_prepared_shots_as_rgb_pngs(folder_target, tmp_path):
  from PIL import Image
  from gantl_jax.data import pipeline
  root, config, expected = folder_target
  folder = official_transfer.write_target_images(str(tmp_path), root, config)
  files = sorted(os.listdir(folder))
  assert files == ["00.png", "01.png", "02.png"]
  written = []
  for name in files:
    with Image.open(os.path.join(folder, name)) as im:
      assert im.mode == "RGB"
      written.append(np.asarray(im))
  written = np.stack(written)
  # The same pixels as our side trains on, and those are the shots composited on white.
  prepared = pipeline.prepare(config.data, resolution=32, verbose=False)
  ours = np.stack([prepared.data_source[i] for i in range(prepared.num_examples)])
  np.testing.assert_array_equal(written, ours)
  np.testing.assert_allclose(written, _in_order_of(written, expected["shots"]), atol=1)


def test_score_measures_against_every_held_out_image(folder_target, monkeypatch):
  from gantl_jax.cli import compare, generate
  from gantl_jax.training import runs
  root, config, expected = folder_target
  seen = {}

  def swd(fakes, reals):
    seen["swd"] = (len(fakes), reals)
    return 1.0

  def diagnostics(c, source_samples, run_samples, reals):
    seen["diagnostics"] = (c, len(source_samples), len(run_samples), reals)
    return {"transfer_copies": 0.0}

  # No networks: the samples are blank, the evaluators record what they are given.
  monkeypatch.setattr(runs, "load_network", lambda path, **kw: path)
  monkeypatch.setattr(generate, "seed_images", lambda net, seeds: np.zeros((len(seeds), 32, 32, 3), np.uint8))
  monkeypatch.setattr(compare, "_swd", swd)
  monkeypatch.setattr(compare, "_diagnostics", diagnostics)
  out = official_transfer.score("net", 16, config=config, target=root)
  assert out == {"swd": 1.0, "copies": 0.0}
  num_fakes, reals = seen["swd"]
  assert num_fakes == 16 and len(reals) == 5  # as many held-out images as the folder has
  np.testing.assert_allclose(reals, _in_order_of(reals, expected["held_out"]), atol=1)
  diag_config, n_src, n_run, diag_reals = seen["diagnostics"]
  assert diag_config is config and (n_src, n_run) == (16, 16)
  np.testing.assert_array_equal(diag_reals, reals)


def test_target_without_held_out_is_one_line_naming_target(tmp_path):
  os.makedirs(tmp_path / "shots")
  with pytest.raises(SystemExit, match=r"^error: --target .*held_out.*shots/ .* held_out/"):
    official_transfer.target_folders(str(tmp_path))


def test_export_source_writes_official_state_dicts_and_reference(tmp_path):
  # The shipped demo source as --check exports it: every G-EMA and D variable under its official
  # name, our outputs on the check's latents, and the kwargs the official networks are built with.
  hp = official_transfer.export_source(os.path.join(ROOT, "pretrained", "photo32"), str(tmp_path))
  folder = tmp_path / "export"
  with np.load(folder / "source.npz") as f:
    names = set(f.files)
  assert {"G.synthesis.b4.const", "G.mapping.fc0.weight", "D.b32.fromrgb.weight", "D.b4.out.weight"} <= names
  with np.load(folder / "reference.npz") as f:
    assert f["images_nchw"].shape == (4, 3, 32, 32) and f["logits"].shape == (hp["mbstd_group_size"],)
    assert np.isfinite(f["logits"]).all()
  kwargs = json.loads((folder / "kwargs.json").read_text())
  assert kwargs["G"]["z_dim"] == 64 and kwargs["step"] == 4000


def test_summarise_takes_each_runs_last_snapshot_per_side():
  run = lambda side, seed, p: dict(run=f"{side}_ada_seed{seed}", kind="run", side=side, aug="ada",
                                   p_curve=[dict(kimg=0.8, p=0.0), dict(kimg=1.6, p=p)])
  scored = lambda side, seed, kimg, swd: dict(run=f"{side}_ada_seed{seed}", kimg=kimg, swd=swd, copies=0.0)
  records = [run("ours", 0, 0.01), scored("ours", 0, 0.0, 99.0), scored("ours", 0, 1.6, 70.0),
             scored("ours", 0, 0.8, 80.0), run("ours", 1, 0.03), scored("ours", 1, 1.6, 74.0),
             run("ours", 2, 0.02), scored("ours", 2, 1.6, 71.0),
             run("official", 0, 0.0), scored("official", 0, 1.632, 60.0)]
  stats = official_transfer.summarise(records)
  assert stats["ours ada"]["swd"] == (71.0, 70.0, 74.0, 3)
  assert stats["ours ada"]["final_p"] == (0.02, 0.01, 0.03, 3)
  assert stats["official ada"]["swd"] == (60.0, 60.0, 60.0, 1)
  assert "diversity_ratio" not in stats["ours ada"]
