"""The train step as a library (determinism, learning) and launch.py end to end."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import tiny
from gantl_jax import config as config_lib
from gantl_jax import errors
from gantl_jax.data import synthetic
from gantl_jax.training import state as state_lib
from gantl_jax.training import steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**train):
  c = tiny.get_config()
  c.train.update(**train)
  return config_lib.resolve(c)


@pytest.fixture(scope="module")
def setup():
  """One compiled step (no lazy regularisation in this module: r1/pl intervals never hit after 0)."""
  config = tiny_config(r1_interval=1000, pl_interval=1000, style_mixing_prob=0.9)
  nets = state_lib.build_networks(config)
  init = jax.jit(lambda seed: state_lib.init_state(nets, jax.random.key(seed)))
  train_step = jax.jit(steps.make_train_step(config, nets), static_argnames=("flags",))
  reals = synthetic.render("anime", range(4), resolution=16, seed=0).astype(np.float32) / 127.5 - 1
  return config, nets, init, train_step, jnp.asarray(np.concatenate([reals, reals]))


def run(setup, seed, n_steps, start_reg=True):
  config, nets, init, train_step, batch = setup
  state = init(seed)
  for i in range(n_steps):
    # Step 0 runs both regularisers, later steps neither (intervals are 1000 here).
    reg = i == 0 and start_reg
    state, metrics = train_step(state, batch, flags=steps.StepFlags(g_reg=reg, d_reg=reg))
  return state, metrics


def test_same_seed_same_result_bitwise(setup):
  a, _ = run(setup, 0, 3)
  b, _ = run(setup, 0, 3)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  c, _ = run(setup, 1, 3)
  differs = [not np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a.g.params), jax.tree.leaves(c.g.params))]
  assert all(differs)


def test_state_invariants_after_steps(setup):
  config, nets, init, *_ = setup
  s0 = init(0)
  s, metrics = run(setup, 0, 3)
  assert int(s.step) == 3 and int(s.images_seen) == 3 * config.train.batch_size
  assert all(np.isfinite(float(v)) or k in ("pl_penalty", "r1_penalty") for k, v in metrics.items())
  assert float(s.extras["pl_mean"]) > 0  # the path-length regulariser ran at step 0
  # w_avg moves towards the batch mean of w; noise constants are buffers and never change.
  assert not np.array_equal(s.g.buffers["mapping"]["w_avg"], s0.g.buffers["mapping"]["w_avg"])
  np.testing.assert_array_equal(s.g.buffers["synthesis"]["b16"]["conv1"]["noise_const"],
                                s0.g.buffers["synthesis"]["b16"]["conv1"]["noise_const"])
  # G-EMA lags G: the ramp-up (half-life 5% of the images seen) gives beta = 0.5 ** (8 / 0.8)
  # at the third step.
  np.testing.assert_allclose(float(metrics["ema_beta"]), 0.5 ** 10, rtol=1e-5)
  assert not np.array_equal(s.g_ema.params["synthesis"]["b16"]["conv1"]["weight"],
                            s.g.params["synthesis"]["b16"]["conv1"]["weight"])


def _nearest_real_error(images, reals):
  """Mean over images of the mean absolute pixel error to the closest real image."""
  d = np.abs(images[:, None] - reals[None]).mean(axis=(2, 3, 4))
  return float(d.min(axis=1).mean())


def test_overfit_a_handful_of_images(setup):
  """A few hundred steps on four fixed images: D separates reals from fakes, then G's samples
  move measurably closer to the reals."""
  config, nets, init, train_step, batch = setup
  reals = np.asarray(batch[:4])
  z = jax.random.normal(jax.random.key(123), (16, config.model.z_dim))
  sample = jax.jit(lambda s: steps.generate(nets, s.g_ema.variables, z))
  state = init(0)
  err0 = _nearest_real_error(np.asarray(sample(state)), reals)
  gaps = []
  for i in range(240):
    state, metrics = train_step(state, batch, flags=steps.StepFlags(d_reg=i % 16 == 0))
    if i < 40:
      gaps.append(metrics["real_logits"] - metrics["fake_logits"])
  err1 = _nearest_real_error(np.asarray(sample(state)), reals)
  gap = float(np.mean(jax.device_get(gaps)))
  assert gap > 0.2, f"D did not separate reals from fakes early on: mean logit gap {gap:.3f}"
  assert err1 < 0.75 * err0, f"samples did not approach the reals: {err0:.3f} -> {err1:.3f}"


def single_device_env():
  """The environment of a user on one CPU: conftest's 8 simulated devices removed."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
  return env


def _launch(workdir, *overrides, timeout=900, env=None):
  cmd = [sys.executable, os.path.join(ROOT, "launch.py"), "--config", os.path.join(ROOT, "configs/tiny.py"),
         "--workdir", str(workdir), *overrides]
  return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                        env=env or single_device_env())


def background_jobs(tmp_path_factory):
  """The end-to-end launches start with this module and run beside the other tests
  (conftest.py); ``test_launch_end_to_end`` waits for them."""
  tmp_path = tmp_path_factory.mktemp("launch_end_to_end")
  return {"end_to_end": lambda: _launch_end_to_end(tmp_path)}


def test_launch_end_to_end(background):
  """launch.py on the tiny config: config.json, reals, sample grids, metrics and a checkpoint."""
  background[(__name__, "end_to_end")].wait()


def _launch_end_to_end(tmp_path):
  workdir = tmp_path / "run"
  data_dir = tmp_path / "tfds"
  # Regularisers off: one compiled step variant (the others are covered above), to keep it quick.
  # JAX_PLATFORMS unset, as a user launches it: JAX probes for a TPU.
  user_env = {k: v for k, v in single_device_env().items() if k != "JAX_PLATFORMS"}
  proc = _launch(workdir, "--config.train.total_kimg=0.016", "--config.train.log_every=1",
                 f"--config.data.data_dir={data_dir}", "--config.train.r1_gamma=0",
                 "--config.train.pl_weight=0", env=user_env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # No library line that reads like an error of the run; the data layer's own line stays.
  for noise in ("Unable to initialize backend 'tpu'", "Unknown size", "OpenCV is not installed"):
    assert noise not in proc.stdout + proc.stderr, noise
  assert "prepared gantl_synthetic/" in proc.stdout
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"]["resolution"] == 16 and config["train"]["ema_kimg"] == 8 * 10 / 32  # resolved 'auto'
  grid = np.asarray(Image.open(workdir / "samples_final.png"))
  assert grid.shape == (2 * 16, 4 * 16, 3) and grid.std() > 0
  assert (workdir / "reals.png").exists() and (workdir / "samples_init.png").exists()
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [1, 2]
  assert all(np.isfinite(r["g_loss"]) and np.isfinite(r["d_loss"]) for r in records)
  assert (workdir / "checkpoints" / "2").is_dir()

  # The same workdir with a different run's config is refused, and nothing in it changes.
  before = (workdir / "config.json").read_text()
  proc = _launch(workdir, "--config.train.total_kimg=0.016", "--config.model.z_dim=16",
                 f"--config.data.data_dir={data_dir}")
  assert proc.returncode == 2
  assert "model.z_dim" in proc.stderr and "new --workdir" in proc.stderr
  assert (workdir / "config.json").read_text() == before

  # Sampling from the run.
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--workdir", str(workdir),
                         "--mode", "generate", "--seeds", "0-3"], capture_output=True, text=True, timeout=600,
                        env=single_device_env())
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert len(list((workdir / "generated").glob("seed*.png"))) == 4


def test_bad_config_fails_at_start_with_the_key(tmp_path):
  c = tiny.get_config()
  c.train.batch_size = 6
  with pytest.raises(errors.ConfigError, match=r"train.batch_size=6 is not divisible by the 4 devices"):
    config_lib.resolve(c, num_devices=4)
  c = tiny.get_config()
  c.model.resolution = 24
  with pytest.raises(errors.ConfigError, match="model.resolution must be a power of two"):
    config_lib.resolve(c)
  c = tiny.get_config()
  c.train.batch_size = 4
  c.model.mbstd_group_size = 8
  with pytest.raises(errors.ConfigError, match="mbstd_group_size=8 must divide the per-device batch 2"):
    config_lib.resolve(c, num_devices=2)
