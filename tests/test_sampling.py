"""Sampling on a mesh (``parallel.sample_batches``) and the ``frozen`` argument of the drivers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from gantl_jax import config as config_lib
from gantl_jax.training import parallel
from gantl_jax.training import state as state_lib
from gantl_jax.training import steps

RES = 8


def small_config(num_devices=1):
  """8 px, batch 8; mbstd groups of 1, so that the batch splits over up to 8 devices."""
  c = tiny.get_config()
  c.model.update(resolution=RES, z_dim=16, w_dim=16, channel_base=64, channel_max=16,
                 mbstd_group_size=1)
  # No lazy regulariser: every step index is the same program, one compile per driver.
  c.train.update(batch_size=8, r1_gamma=0.0, pl_weight=0.0)
  return config_lib.resolve(c, num_devices=num_devices)


@pytest.fixture(scope="module")
def sampler():
  config = small_config()
  nets = state_lib.build_networks(config)
  g_vars = jax.device_get(state_lib.init_state(nets, 0).g_ema.variables)
  # noise_strength is 0 at init: give the noise a visible weight, so that the noise draws of
  # noise_mode='random' show in the images.
  g_vars["params"] = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.5 if "noise_strength" in jax.tree_util.keystr(p) else x, g_vars["params"])
  meshes = {1: parallel.make_mesh(jax.devices()[:1]), 8: parallel.make_mesh()}

  def sample(devices, *, num, batch_size, **kw):
    mesh = meshes[devices]
    g = parallel.replicate(g_vars, mesh)
    return list(parallel.sample_batches(nets, g, mesh, num=num, batch_size=batch_size, seed=5, **kw))

  return sample


def test_batches_are_uint8_nhwc_and_count_num(sampler):
  batches = sampler(8, num=10, batch_size=8)
  assert [b.shape for b in batches] == [(8, RES, RES, 3), (2, RES, RES, 3)]
  assert all(isinstance(b, np.ndarray) and b.dtype == np.uint8 for b in batches)
  images = np.concatenate(batches)
  # Distinct samples, not one image repeated (each index draws its own latent).
  assert len({im.tobytes() for im in images}) == 10
  # A batch size that is not a multiple of the devices is rounded down to one (here 8).
  assert [b.shape[0] for b in sampler(8, num=10, batch_size=12)] == [8, 2]
  assert [b.shape[0] for b in sampler(1, num=3, batch_size=16)] == [3]


@pytest.mark.parametrize("noise_mode", ["const", "random"])
def test_same_images_on_one_and_eight_devices(sampler, noise_mode):
  one = np.concatenate(sampler(1, num=10, batch_size=8, noise_mode=noise_mode))
  eight = np.concatenate(sampler(8, num=10, batch_size=8, noise_mode=noise_mode))
  diff = np.abs(one.astype(int) - eight.astype(int)).max()
  print(f"noise_mode={noise_mode}: 1 vs 8 devices, max uint8 difference {diff}")
  np.testing.assert_array_equal(one, eight)


def test_sample_depends_only_on_seed_and_index(sampler):
  """With the default constant noise, image i is a function of (seed, i) alone: batches of 8
  and of 16 (one batch) give the same 10 images, on either mesh."""
  by_8 = np.concatenate(sampler(8, num=10, batch_size=8))
  by_16 = np.concatenate(sampler(8, num=10, batch_size=16))
  one_by_16 = np.concatenate(sampler(1, num=10, batch_size=16))
  print("batch 8 vs 16: max uint8 difference", np.abs(by_8.astype(int) - by_16.astype(int)).max())
  np.testing.assert_array_equal(by_8, by_16)
  np.testing.assert_array_equal(by_8, one_by_16)
  # The first 3 of 10 are the 3 of a run that asks for 3.
  np.testing.assert_array_equal(by_8[:3], np.concatenate(sampler(8, num=3, batch_size=8)))


def test_random_noise_sample_depends_only_on_seed_and_index(sampler):
  """The same call on 1 and on 8 devices: batch_size 12 gives batches of 12 on one device and of
  8 on eight. (The noise once came from the batch start and the position in the batch, and
  samples 8 and 9 got other noise on 8 devices.)"""
  one = np.concatenate(sampler(1, num=10, batch_size=12, noise_mode="random"))
  eight = np.concatenate(sampler(8, num=10, batch_size=12, noise_mode="random"))
  np.testing.assert_array_equal(one[:8], eight[:8])
  np.testing.assert_array_equal(one, eight)


# --- frozen inputs are not donated ---------------------------------------------------------------

def step_reading_frozen(make_train_step):
  """``make_train_step`` whose step also reads ``frozen``, as the few-shot regularisers will
  (reported as the metric ``frozen_sum``). The library's step does not read it yet, and jit
  prunes an unused input before donation could apply: a driver that donated ``frozen`` would
  then go unnoticed."""
  def make(config, nets, **kwargs):
    inner = make_train_step(config, nets, **kwargs)

    def train_step(state, batch, frozen=None, *, flags):
      state, metrics = inner(state, batch, frozen, flags=flags)
      total = sum(jnp.sum(x) for x in jax.tree.leaves(frozen))
      return state, {**metrics, "frozen_sum": total}
    return train_step
  return make


@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_frozen_survives_steps_and_state_is_donated(mode, monkeypatch):
  config = small_config(num_devices=jax.device_count())
  nets = state_lib.build_networks(config)
  mesh = parallel.make_mesh()
  monkeypatch.setattr(steps, "make_train_step", step_reading_frozen(steps.make_train_step))
  step = parallel.make_step(config, nets, mode, mesh)
  state = parallel.create_state(nets, config.seed, mode, mesh)
  # A copy: on CPU first_replica's arrays are views of the device buffers, and a buffer that a
  # view still reads is not donated.
  host = jax.tree.map(np.array, parallel.first_replica(state.g_ema.variables, mode))
  frozen = parallel.replicate({"g": host}, mesh)
  expected_sum = sum(float(np.sum(x, dtype=np.float64)) for x in jax.tree.leaves(host))
  batch = np.random.default_rng(0).uniform(-1, 1, (8, RES, RES, 3)).astype(np.float32)

  first = state
  for i in range(2):
    state, metrics = step(state, parallel.place_batch(batch, mode, mesh), i, frozen)
    metrics = parallel.first_replica(metrics, mode)
    # The step saw the source values at every step.
    np.testing.assert_allclose(metrics["frozen_sum"], expected_sum, rtol=1e-5)
    # Checked before the next call: jax 0.10.2 on CPU crashes (SIGSEGV) rather than raising when
    # a sharded argument was donated by the call before.
    assert not any(x.is_deleted() for x in jax.tree.leaves(frozen)), (mode, i)
  assert np.isfinite(metrics["g_loss"])
  assert int(parallel.first_replica(state.step, mode)) == 2
  # The state passed in was donated: its buffers now belong to the step's outputs. All but
  # G-EMA's buffers: the step overwrites them with G's (w_avg, noise constants) without reading
  # them, and jit prunes an unused input before donation could apply (measured: those 4 arrays,
  # and only they, stay alive).
  alive = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(first)
           if not x.is_deleted() and not jax.tree_util.keystr(p).startswith(".g_ema.buffers")]
  assert not alive, (mode, alive)
  # frozen was not: every array still holds the source values after two steps.
  for x, y in zip(jax.tree.leaves(frozen), jax.tree.leaves({"g": host})):
    np.testing.assert_array_equal(np.asarray(x), y)
