"""launch.py's modes on one tiny run: generate (--outdir, --grid), interpolate, blend, export.

The run is trained once for the module, with test_loop's config (its programs are already in the
compilation cache when the suite runs); its checkpoints at steps 5 and 10 are two generators of
one architecture, the parents of the blends.
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

from configs import tiny
from gantl_jax import config as config_lib
from gantl_jax import errors
from gantl_jax import images as image_io
from gantl_jax.cli import blend
from gantl_jax.cli import export
from gantl_jax.cli import generate
from gantl_jax.data import synthetic
from gantl_jax.errors import ConfigError
from gantl_jax.models import stylegan2
from gantl_jax.training import checkpoint
from gantl_jax.training import loop as train
from gantl_jax.training import runs
from gantl_jax.training import state as state_lib
from gantl_jax.training import transfer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R = 16  # the tiny model's resolution


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A 10-step tiny run on the 8 simulated devices (checkpoints at steps 5 and 10)."""
  tmp = tmp_path_factory.mktemp("modes")
  c = tiny.get_config()
  c.model.update(mbstd_group_size=1)
  c.train.update(total_kimg=0.08, log_every=1, pl_batch_shrink=1)
  c.checkpoint.update(every_steps=5, max_to_keep=2)
  c.data.update(data_dir=str(tmp / "tfds"))
  train.train_and_evaluate(c, str(tmp / "run"))
  assert checkpoint.committed_steps(str(tmp / "run" / "checkpoints")) == [5, 10]
  return str(tmp / "run")


@pytest.fixture(scope="module")
def parents(run):
  """(LOW, HIGH): the run's G-EMA at step 10 and at step 5 (read from its step directory)."""
  return runs.load_network(run), runs.load_network(os.path.join(run, "checkpoints", "5"))


def flat(tree):
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def assert_same(a, b):
  fa, fb = flat(a), flat(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def png(path):
  return np.asarray(Image.open(path).convert("RGB"))


def test_generate_grid_into_outdir(run, tmp_path):
  out = generate.generate(run, seeds="3", grid="4x2", outdir=str(tmp_path / "g"))
  names = sorted(os.listdir(out))
  assert names == sorted([f"seed{s:04d}.png" for s in range(3, 11)] + ["grid.png"])
  grid = png(os.path.join(out, "grid.png"))
  assert grid.shape == (2 * R, 4 * R, 3) and grid.std() > 0
  seed4 = png(os.path.join(out, "seed0004.png"))
  assert seed4.shape == (R, R, 3)
  np.testing.assert_array_equal(grid[:R, R:2 * R], seed4)  # row-major from the first seed


@pytest.mark.parametrize("text", ["4", "4x0", "ax2", "4x2x1"])
def test_grid_form_is_checked(text):
  with pytest.raises(ConfigError, match=r"^--grid='.*': give COLUMNSxROWS with both at least 1, e\.g\. '4x2'"):
    generate.parse_grid(text)


def test_interpolate_writes_strip_and_gif_through_the_seeds(run, parents, tmp_path):
  out = generate.interpolate(run, "0,5,9", frames=3, truncation_psi=0.7, outdir=str(tmp_path / "i"))
  strip = png(os.path.join(out, "interpolation.png"))
  assert strip.shape == (R, 7 * R, 3)  # 2 pairs x 3 frames + the last seed
  ends = generate.seed_images(parents[0], [0, 5, 9], truncation_psi=0.7)
  for tile, want in zip((0, 3, 6), ends):  # the path passes through every seed (another batch
    got = strip[:, tile * R:(tile + 1) * R].astype(int)  # size: rounding may differ by 1)
    assert np.abs(got - want).max() <= 1
  with Image.open(os.path.join(out, "interpolation.gif")) as gif:
    assert gif.size == (R, R) and gif.n_frames == 7 and gif.info["loop"] == 0
  with pytest.raises(ConfigError, match="--seeds='3': interpolation needs at least two seeds"):
    generate.interpolate(run, "3", outdir=str(tmp_path / "j"))
  with pytest.raises(ConfigError, match="--frames=0"):
    generate.interpolate(run, "0,1", frames=0, outdir=str(tmp_path / "j"))


def test_export_is_the_runs_g_ema_and_a_transfer_source(run, parents, tmp_path):
  low, _ = parents
  out = export.export(run, str(tmp_path / "exported"))
  step_dir = os.path.join(out, "0")
  assert sorted(n for n in os.listdir(step_dir) if os.path.isdir(os.path.join(step_dir, n))) == ["g_ema", "meta"]
  net = runs.load_network(out)
  assert net.config is None and net.hparams == low.hparams and net.home == out
  assert_same(net.variables, low.variables)
  seeds = [0, 1, 2, 3]
  np.testing.assert_array_equal(generate.seed_images(net, seeds, 0.5), generate.seed_images(low, seeds, 0.5))
  # Images written into the network checkpoint's directory leave it a checkpoint.
  generate.generate(out, seeds="0-1")
  assert os.path.isfile(os.path.join(out, "generated", "seed0001.png"))

  config = tiny.get_config()
  config.transfer.source = out
  config = config_lib.resolve(config)
  nets = state_lib.build_networks(config)
  fresh = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(lambda: state_lib.init_state(nets, 0)))
  with pytest.raises(errors.TransferError, match=r"has no item 'd' \(it has \['g_ema'\]\); set "
                     r"--config.transfer.d_from to one of those, or to '' to keep d"):
    transfer.transfer_state(config, fresh)
  config.transfer.d_from = ""
  state, _ = transfer.transfer_state(config, fresh)
  assert_same(state.g_ema.variables, low.variables)
  assert_same(state.g.variables, low.variables)

  with pytest.raises(ConfigError, match=r"^--outdir .*exported exists and is not an empty directory"):
    export.export(run, out)


def test_blend_ends_are_the_parents_bit_for_bit(parents):
  low, high = parents
  assert_same(blend.blend_variables(low.variables, high.variables, blend.high_weights(R, R)), low.variables)
  assert_same(blend.blend_variables(high.variables, low.variables, blend.high_weights(R, R)), high.variables)
  mixed = flat(blend.blend_variables(low.variables, high.variables, blend.high_weights(R, 4)))
  fl, fh = flat(low.variables), flat(high.variables)
  for path, value in mixed.items():
    from_low = "/synthesis/" not in path or "/synthesis/b4/" in path  # mapping, w_avg and b4
    np.testing.assert_array_equal(value, (fl if from_low else fh)[path], err_msg=path)
  assert not np.array_equal(fl["buffers/mapping/w_avg"], fh["buffers/mapping/w_avg"])
  # Images too: the blend at r = R draws the low parent's, with truncation towards its w_avg.
  blended = low._replace(variables=blend.blend_variables(low.variables, high.variables, blend.high_weights(R, R)))
  np.testing.assert_array_equal(generate.seed_images(blended, [0, 1], 0.5), generate.seed_images(low, [0, 1], 0.5))


def test_blend_weights():
  assert blend.high_weights(R, 8) == {4: 0.0, 8: 0.0, 16: 1.0}
  smooth = blend.high_weights(R, 8, 1.0)
  assert 0 < smooth[4] < smooth[8] < 0.5 < smooth[16] < 1
  np.testing.assert_allclose(smooth[8] + smooth[16], 1.0, rtol=1e-12)  # symmetric about 8 * 2**0.5
  sharp = blend.high_weights(R, 8, 1e-3)
  np.testing.assert_allclose([sharp[s] for s in (4, 8, 16)], [0, 0, 1], atol=1e-12)
  with pytest.raises(ConfigError, match=r"^--blend_resolution=12: not a block resolution of the 16 px "
                     r"generators; give one of 4, 8, 16$"):
    blend.high_weights(R, 12)
  with pytest.raises(ConfigError, match=r"^--blend_width=-1.0: give 0"):
    blend.high_weights(R, 8, -1.0)


def test_blend_mode_writes_a_network_and_the_comparison(run, parents, tmp_path):
  low, high = parents
  step5 = os.path.join(run, "checkpoints", "5")
  out = blend.blend(run, step5, 8, outdir=str(tmp_path / "b"), seeds="0-3", truncation_psi=0.7)
  assert sorted(os.listdir(out)) == ["0", "comparison.png"]
  net = runs.load_network(out)
  want = blend.blend_variables(low.variables, high.variables, blend.high_weights(R, 8))
  assert_same(net.variables, want)
  rows = png(os.path.join(out, "comparison.png"))
  assert rows.shape == (3 * R, 4 * R, 3)
  for i, source in enumerate((high, low, net)):  # rows: --blend_with, --workdir, the blend
    np.testing.assert_array_equal(rows[i * R:(i + 1) * R], np.concatenate(
        list(generate.seed_images(source, [0, 1, 2, 3], 0.7)), axis=1))
  src = transfer.read_source(out)
  assert src.step == 0 and set(src.shapes) == {"g_ema"} and src.meta["origin"]["blend_resolution"] == 8


def test_blend_refuses_parents_of_another_architecture(run, parents, tmp_path):
  c = tiny.get_config()
  c.model.resolution = 8
  g8 = runs.generator_from_hparams(config_lib.model_hparams(c))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(
      lambda: stylegan2.init_generator(g8, jax.random.key(0))))
  other = export.write_network(str(tmp_path / "g8"), zeros, config_lib.model_hparams(c), {"mode": "test"})
  with pytest.raises(ConfigError, match=r"^--blend_with .*g8/0: its generator differs from --workdir's "
                     r"\(.*\) in resolution 8 vs 16; blend two generators of one architecture"):
    blend.blend(run, other, 8, outdir=str(tmp_path / "b"))
  assert not (tmp_path / "b").exists()


def test_launch_blend_end_to_end(run, tmp_path):
  """The flags reach the mode: a smooth blend through launch.py, on one CPU device."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch.py"), "--mode", "blend", "--workdir", run,
       "--blend_with", os.path.join(run, "checkpoints", "5"), "--blend_resolution", "4",
       "--blend_width", "0.5", "--seeds", "0-1", "--outdir", str(tmp_path / "b")],
      capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert png(tmp_path / "b" / "comparison.png").shape == (3 * R, 2 * R, 3)
  origin = transfer.read_source(str(tmp_path / "b")).meta["origin"]
  assert origin["blend_width"] == 0.5 and origin["high_weights"]["b16"] > origin["high_weights"]["b4"] > 0


def test_compare_writes_the_figure_and_the_table(run, tmp_path):
  """compare on a transfer run: rows source | transferred | blend | target shots from the same
  seeds (upscaled, labels on the left), and SWD of source and transfer against held-out images."""
  from gantl_jax.cli import compare
  c = tiny.get_config()
  c.model.update(mbstd_group_size=1)
  c.train.update(total_kimg=0.016, log_every=1, pl_batch_shrink=1)
  c.data.update(data_dir=str(tmp_path / "tfds"), domain="anime", num_images=4)
  c.transfer.update(source=os.path.join(run, "checkpoints"))
  target = str(tmp_path / "target")
  train.train_and_evaluate(c, target)

  table = compare.compare(target, seeds="0-5", num_eval=64)
  figure = png(os.path.join(target, "comparison.png"))
  scale = 128 // R
  assert figure.shape == (4 * R * scale, compare._LABEL_WIDTH + 6 * R * scale, 3)
  cells = figure[:, compare._LABEL_WIDTH:][::scale, ::scale]  # back to one pixel per pixel
  source, transferred = runs.load_network(os.path.join(run, "checkpoints")), runs.load_network(target)
  np.testing.assert_array_equal(cells[:R], image_io.make_grid(generate.seed_images(source, range(6)), 6))
  np.testing.assert_array_equal(cells[R:2 * R], image_io.make_grid(generate.seed_images(transferred, range(6)), 6))
  shots = synthetic.render("anime", np.arange(4), resolution=R, seed=0)
  np.testing.assert_array_equal(cells[3 * R:, :4 * R], image_io.make_grid(shots, 4))
  assert (cells[3 * R:, 4 * R:] == 255).all()  # 4 shots for 6 columns: the rest is blank
  with open(os.path.join(target, "comparison.json")) as f:
    assert json.load(f) == table
  assert table["swd_source_vs_target"] > 0 and table["swd_transfer_vs_target"] > 0
  assert table["kimg"] == pytest.approx(0.016) and table["training_seconds"] > 0
  assert "64 held-out 'anime' images" in table["swd_reference"]
  assert 0 <= table["transfer_copies"] <= 1 and -1 <= table["transfer_correspondence"] <= 1
  assert table["transfer_intra_cluster"] > 0 and table["transfer_diversity_ratio"] > 0
