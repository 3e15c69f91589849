"""The run's stored Fisher (``DIR/g_fisher.npz``): a file that cannot be read is recomputed with a
warning, never unpickled and never fatal on resume."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging as absl_logging
from flax import traverse_util

from configs import tiny
from gantl_jax import config as config_lib
from gantl_jax.fewshot import ewc as fisher
from gantl_jax.training import loop as train
from gantl_jax.training import parallel
from gantl_jax.training import transfer

TREE = {"a": {"w": np.arange(600, dtype=np.float32).reshape(20, 30)}, "b": np.ones((4,), np.float32)}


@pytest.fixture
def warnings(monkeypatch):
  out = []
  monkeypatch.setattr(absl_logging, "warning", lambda msg, *args: out.append(msg % args))
  return out


def damaged(data):
  """Garbage (a pickle's first bytes, as numpy would offer to unpickle), truncations and bit flips
  in the first array's payload (which the zip CRC-32 covers)."""
  start = data.index(b"\x93NUMPY") + 128
  flips = []
  for i in (start, start + 1000, len(data) // 2):
    b = bytearray(data)
    b[i] ^= 0x10
    flips.append(bytes(b))
  return [b"\x80\x04garbage", b""] + [data[:n] for n in (10, 200, len(data) - 1)] + flips


def test_unreadable_file_is_none_with_a_warning(tmp_path, warnings):
  path = tmp_path / fisher.FILE
  fisher.save(str(path), TREE)
  data = path.read_bytes()
  for bad in damaged(data):
    path.write_bytes(bad)
    assert fisher.load(str(path), TREE) is None
    assert len(warnings) == 1 and f"unreadable G's Fisher information cache {path}, recomputing it" in warnings.pop()
  path.write_bytes(data)
  np.testing.assert_array_equal(fisher.load(str(path), TREE)["a"]["w"], TREE["a"]["w"])
  assert fisher.load(str(tmp_path / "none.npz"), TREE) is None and not warnings


def test_resume_recomputes_an_unreadable_fisher(tmp_path, monkeypatch, warnings):
  """train._source_fisher, the loop's reader: with the file damaged it computes the Fisher again
  (and says it is new, so the loop stores it), with the file intact it reads it."""
  c = tiny.get_config()
  c.model.update(resolution=8, mbstd_group_size=1)
  c.transfer.source = "unused"
  c.fewshot.update(ewc_weight=1.0, fisher_samples=8, fisher_batch=8)
  config = config_lib.resolve(c)
  computed = []

  def fake_fisher(g, d, g_vars, d_params, key, **kw):
    computed.append(1)
    return jax.tree.map(lambda x: jnp.full(x.shape, 0.5, x.dtype), g_vars["params"])

  monkeypatch.setattr(transfer, "read_networks", lambda config, nets, templates: templates)
  monkeypatch.setattr(fisher, "g_fisher", fake_fisher)
  mesh = parallel.make_mesh()
  path = tmp_path / fisher.FILE
  path.write_bytes(b"\x80\x04garbage")
  g_fisher, is_new = train._source_fisher(config, str(path), mesh)
  assert is_new and computed == [1] and len(warnings) == 1
  leaves = traverse_util.flatten_dict(g_fisher, sep="/")
  assert leaves and all(np.all(v == 0.5) for v in leaves.values())
  fisher.save(str(path), g_fisher)
  again, is_new = train._source_fisher(config, str(path), mesh)
  assert not is_new and computed == [1]
  assert traverse_util.flatten_dict(again, sep="/").keys() == leaves.keys()
