"""Checkpoints: the versioned item layout, restoring the pre-versioned format, extras added later,
refusing non-finite states, disk space (measured once the save in flight has committed) and the
network-only writer."""
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gantl_jax import config as config_lib
from gantl_jax import errors
from gantl_jax.training import checkpoint
from gantl_jax.training import state as state_lib

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "checkpoint_v0")


@pytest.fixture(scope="module")
def v0():
  """The networks of the committed pre-versioned checkpoint, and a fresh state for them."""
  with open(os.path.join(FIXTURE, "config.json")) as f:
    config = ml_collections.ConfigDict(config_lib.upgrade(json.load(f)))
  nets = state_lib.build_networks(config)
  return config, nets, jax.jit(lambda: state_lib.init_state(nets, 1))()


def leaf_sums(tree):
  return {jax.tree_util.keystr(p): float(np.sum(np.asarray(l, np.float64)))
          for p, l in jax.tree_util.tree_leaves_with_path(tree)}


def test_pre_versioned_checkpoint_restores_exactly(v0):
  """A checkpoint written before format versions (pl_mean in 'progress', no 'extras' item)
  restores its networks, both optimizers, progress, pl_mean and data position."""
  _, _, fresh = v0
  with checkpoint.make_manager(os.path.join(FIXTURE, "checkpoints"), read_only=True, max_to_keep=None) as m:
    state, data, meta = checkpoint.restore(m, fresh)
  with open(os.path.join(FIXTURE, "expected_sums.json")) as f:
    expected = json.load(f)
  old_fields = {"g_params": state.g.params, "g_buffers": state.g.buffers, "g_ema_params": state.g_ema.params,
                "g_ema_buffers": state.g_ema.buffers, "d_params": state.d.params,
                "g_opt_state": state.g.opt_state, "d_opt_state": state.d.opt_state}
  for name, tree in old_fields.items():
    assert leaf_sums(tree) == expected[name], name
  assert int(state.step) == expected["step"] == 3 and int(state.images_seen) == expected["images_seen"]
  assert float(state.extras["pl_mean"]) == expected["pl_mean"] != 0
  assert np.asarray(state.rng).tolist() == expected["rng"]
  assert data == expected["data"]
  assert "format_version" not in meta


def save_and_restore(tmp_path, state, template):
  with checkpoint.make_manager(str(tmp_path / "ckpt"), async_save=False) as m:
    assert checkpoint.save(m, state, data_state={"step": 1}, meta={"model": {}})
    m.wait_until_finished()
    return checkpoint.restore(m, template)


def test_roundtrip_carries_the_format_version_and_every_item(v0, tmp_path):
  _, nets, fresh = v0
  state = jax.tree.map(lambda x: x + 1 if jnp.issubdtype(x.dtype, jnp.floating) else x, fresh)
  state = state.replace(step=jnp.int32(9), extras={"pl_mean": jnp.float32(0.25)})
  restored, data, meta = save_and_restore(tmp_path, state, fresh)
  assert meta["format_version"] == checkpoint.FORMAT_VERSION == 1 and data == {"step": 1}
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  items = {n for n in os.listdir(tmp_path / "ckpt" / "9") if os.path.isdir(tmp_path / "ckpt" / "9" / n)}
  assert items == set(checkpoint.STATE_ITEMS)


def test_an_extra_added_later_keeps_its_fresh_value(v0, tmp_path):
  """A statistic the checkpoint does not have (added to the state after it was written) restores
  as the template's value; the others come from the checkpoint."""
  _, _, fresh = v0
  state = fresh.replace(extras={"pl_mean": jnp.float32(0.5)})
  template = fresh.replace(extras={"pl_mean": jnp.float32(0.0), "aug_p": jnp.float32(0.125)})
  restored, _, _ = save_and_restore(tmp_path, state, template)
  assert float(restored.extras["pl_mean"]) == 0.5 and float(restored.extras["aug_p"]) == 0.125


def test_a_newer_format_is_refused(v0, tmp_path):
  _, _, fresh = v0
  with checkpoint.make_manager(str(tmp_path / "ckpt"), async_save=False) as m:
    checkpoint.save(m, fresh, data_state={}, meta={})
  meta_file = tmp_path / "ckpt" / "0" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  meta_file.write_text(json.dumps({**meta, "format_version": 99}))
  with checkpoint.make_manager(str(tmp_path / "ckpt"), read_only=True, max_to_keep=None) as m:
    with pytest.raises(errors.CheckpointError, match="format 99; this gantl_jax reads up to 1"):
      checkpoint.restore(m, fresh)


def test_a_non_finite_state_is_never_saved(v0, tmp_path):
  _, _, fresh = v0
  bad = fresh.replace(d=fresh.d.replace(params=jax.tree.map(lambda x: x * jnp.nan, fresh.d.params)))
  with checkpoint.make_manager(str(tmp_path / "ckpt"), async_save=False) as m:
    with pytest.raises(errors.CheckpointError, match="NaN or infinite"):
      checkpoint.save(m, bad, data_state={}, meta={})
  assert checkpoint.committed_steps(str(tmp_path / "ckpt")) == []


def test_a_save_that_cannot_fit_is_refused_before_it_starts(v0, tmp_path, monkeypatch):
  _, _, fresh = v0
  real = checkpoint.shutil.disk_usage
  monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
  with checkpoint.make_manager(str(tmp_path / "ckpt"), async_save=False) as m:
    with pytest.raises(errors.CheckpointError, match=r"not enough disk space .* 0.0 MiB are free"):
      checkpoint.save(m, fresh, data_state={}, meta={})
  assert os.listdir(tmp_path / "ckpt") == []


def test_a_save_waits_for_the_one_in_flight_before_measuring_free_space(v0, tmp_path, monkeypatch):
  """The disk-space check counts the previous save's files: that save is committed first (it
  commits half a second after its arrays are written here)."""
  _, _, fresh = v0
  directory = str(tmp_path / "ckpt")
  committed_when_measured = []
  real = checkpoint.shutil.disk_usage

  def disk_usage(path):
    committed_when_measured.append(checkpoint.committed_steps(directory))
    return real(path)

  monkeypatch.setattr(checkpoint.shutil, "disk_usage", disk_usage)
  finalize = checkpoint.ocp.CheckpointManager._finalize
  monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "_finalize",
                      lambda self, *a, **k: (time.sleep(0.5), finalize(self, *a, **k))[1])
  with checkpoint.make_manager(directory) as m:
    for step in (1, 2):
      checkpoint.save(m, fresh.replace(step=jnp.int32(step)), data_state={}, meta={})
  assert committed_when_measured == [[], [1]]
  assert checkpoint.committed_steps(directory) == [1, 2]


def test_save_networks_refuses_an_existing_step(v0, tmp_path):
  _, _, fresh = v0
  g = jax.tree.map(np.asarray, fresh.g.variables)
  checkpoint.save_networks(str(tmp_path / "src"), g=g, g_ema=g, d=None, meta={})
  with pytest.raises(errors.CheckpointError, match="already holds step 0"):
    checkpoint.save_networks(str(tmp_path / "src"), g=g, g_ema=g, d=None, meta={})
