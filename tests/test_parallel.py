"""The one train step data-parallel: ``pmap`` and ``jit`` on a Mesh, on 1, 2, 4 and 8 of the 8
simulated CPU devices, from the same state on the same global batches, give the same parameters.

Tolerance. The drivers compute the same function, but the gradient all-reduce (and XLA's
fusion of the per-device programs) sums in a different order on each device count, so results
differ by float rounding: after one step up to 1.7e-5 relative on any leaf (``TOL_STEP1`` =
2e-5 per leaf). Training then amplifies it: Adam (beta1 = 0, eps 1e-8) divides each gradient
entry by ~|g|, so the rounding noise of a near-zero entry (e.g. the summed gradient of a scalar
noise strength) decides that entry's whole step, and G and D feed each other's differences back.
After ten steps single leaves differ by up to 8e-2 (how much depends on the conv kernels' order
of summation), while the parameters as a whole differ by at most 7.3e-6. So after ten steps the bound is on
the whole difference, |a - b| / |b| over all parameters (``TOL_GLOBAL``), and the largest
per-leaf difference is printed. Measured numbers: docs/parallel.md. A real error (a missing
pmean, a wrong example index, a cross-device mbstd group) changes a step by 1e-3 .. 1.

The compiled programs are memoised across tests (``parallel_common.reference``); expect several
minutes for the first test on a 2-core machine, mostly XLA compiles.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import PartitionSpec as P

import parallel_common as common
from configs import tiny
from gantl_jax import config as config_lib
from gantl_jax import errors
from gantl_jax.training import parallel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Measured on these batches (seed 0) / on seeds 0-7 of global_batches, over jit on 2 and 8 and
# pmap on 8 devices (jit on 4: seed 0 only): max per leaf after one step 5.4e-6 / 1.7e-5 (jit 8, seed 1); global after
# three steps 4.0e-9 / 2.3e-7 (one sign flip, jit 2, seed 3); global after ten 4.4e-9 / 7.3e-6
# (flips in 4 of 8 seeds). A bound below one flip's ~2e-7 at step 3 or a few flips' ~1e-5 at
# step 10 would fail on any change that moves one near-zero gradient across zero.
TOL_STEP1 = 2e-5   # max relative difference per leaf after one step
TOL_STEP3 = 1e-6   # relative L2 difference of all parameters after three steps
TOL_GLOBAL = 2e-5  # relative L2 difference of all parameters after ten steps


def _check(name: str, run: common.Run, ref: common.Run) -> None:
  diff, leaf = common.max_rel_diff(run.snapshots[1], ref.snapshots[1])
  print(f"{name} vs jit on 1 device after 1 step: max rel diff per leaf {diff:.2e} at {leaf}")
  assert diff < TOL_STEP1, (name, leaf, diff)
  total = common.global_rel_diff(run.snapshots[3], ref.snapshots[3])
  print(f"{name} vs jit on 1 device after 3 steps: global rel diff {total:.2e}")
  assert total < TOL_STEP3, (name, total)
  total = common.global_rel_diff(run.snapshots[10], ref.snapshots[10])
  diff, leaf = common.max_rel_diff(run.snapshots[10], ref.snapshots[10])
  print(f"{name} vs jit on 1 device after 10 steps: global rel diff {total:.2e}, "
        f"max per leaf {diff:.2e} at {leaf}")
  assert total < TOL_GLOBAL, (name, total)
  assert int(run.snapshots[10]["['step']"]) == 10


@pytest.mark.slow
def test_pmap_and_jit_on_8_devices_match_one_device():
  assert jax.device_count() == 8
  ref = common.reference("jit", 1)
  _check("pmap on 8 devices", common.reference("pmap", 8), ref)
  _check("jit on 8 devices", common.reference("jit", 8), ref)


def test_jit_on_1_2_4_8_devices_same_update():
  ref = common.reference("jit", 1)
  for n in (2, 4, 8):
    _check(f"jit on {n} devices", common.reference("jit", n), ref)


def test_each_driver_compiles_once():
  """One program per driver for all ten steps. (The pmap state used to come from a pmap without
  the step's axis name; its sharding then differed from the step's output and step 2 compiled
  the whole train step a second time.)"""
  for mode, n in (("jit", 1), ("jit", 8), ("pmap", 8)):
    assert common.reference(mode, n).compiles_after_first_step == 0, (mode, n)


def _hlo_ops(text: str, op: str) -> list[tuple[str, str]]:
  """(result type, line) of every ``op`` instruction in an HLO module's text."""
  # '%all-reduce.3 = (f32[16]{0}, /*index=5*/f32[32]{0}) all-reduce(%x, ...), replica_groups=...'
  pattern = re.compile(r"=\s(.*?)\s" + re.escape(op) + r"(-start)?\(")
  return [(m.group(1), line) for line in text.splitlines() if (m := pattern.search(line))]


def test_jit_step_all_reduces_gradients_and_never_gathers_the_batch():
  run = common.reference("jit", 8)
  batch = run.place(common.global_batches(1)[0])
  text = run.step.lower(run.state, batch, 0).compile().as_text()
  all_reduces = _hlo_ops(text, "all-reduce")
  assert all_reduces, "no cross-device all-reduce in the jit step"
  # Every parameter gradient is reduced: the all-reduced elements cover at least G and D once.
  n_params = sum(x.size for x in jax.tree.leaves((run.state.g.params, run.state.d.params)))
  reduced = sum(int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
                for ty, _ in all_reduces for dims in re.findall(r"f32\[([0-9,]*)\]", ty))
  assert reduced >= n_params, (reduced, n_params)
  # Nothing brings the global batch (or any per-example tensor of it) onto one device.
  for op in ("all-gather", "all-to-all", "collective-permute"):
    for ty, line in _hlo_ops(text, op):
      dims = re.findall(r"\[([0-9,]+)\]", ty)
      assert not any(d.split(",")[0] == str(common.GLOBAL_BATCH) for d in dims), line
  print(f"jit step on 8 devices: {len(all_reduces)} all-reduces over {reduced} elements "
        f"({n_params} parameters); no all-gather / all-to-all of batch-shaped operands")


def test_mbstd_groups_stay_within_a_device():
  """Groups are consecutive samples within one device. jit sees the global batch, so a group
  larger than the per-device batch would span devices there but not under pmap: resolve refuses
  it (the tiny config's group of 4 fits 1 or 2 devices, not 8 at batch 8)."""
  c = tiny.get_config()  # batch 8, group 4
  assert config_lib.resolve(c, 2).model.mbstd_group_size == 4
  with pytest.raises(errors.ConfigError, match="mbstd_group_size=4 must divide the per-device batch 1"):
    config_lib.resolve(c, 8)


def test_indivisible_batch_fails_at_start():
  c = tiny.get_config()
  c.train.batch_size = 12
  with pytest.raises(errors.ConfigError, match=r"train.batch_size=12 is not divisible by the 8 devices"):
    config_lib.resolve(c, 8)
  # Through the user path: launch.py exits 2 with the message, before building anything.
  out = subprocess.run(
      [sys.executable, "launch.py", "--config", "configs/tiny.py", "--workdir", "/tmp/gantl_never_created",
       "--config.train.batch_size=12"], cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 2, out.stderr[-2000:]
  assert "error: train.batch_size=12 is not divisible by the 8 devices" in out.stderr
  assert not os.path.exists("/tmp/gantl_never_created")


def test_shard_map_check_vma_trap():
  """Why production uses plain jit: under jit(shard_map) with check_vma=True, the gradient of a
  replicated (P()) input comes back already summed over devices; a pmean after it, as a pmap
  step would do, leaves it N times too large. Plain jit needs no collective at all."""
  mesh = parallel.make_mesh()
  n = mesh.size
  x = np.arange(4 * n, dtype=np.float32).reshape(n, 4)
  w = np.float32(1.0)
  loss = lambda w, x: jnp.mean(w * x)  # noqa: E731
  expected = np.mean(x)  # d/dw of the global-batch mean loss

  def per_device(w, x):
    return lax.pmean(jax.grad(loss)(w, x), parallel.AXIS)

  traps = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(parallel.AXIS)), out_specs=P()))
  np.testing.assert_allclose(traps(w, x), n * expected, rtol=1e-6)  # N x too large
  no_check = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(parallel.AXIS)), out_specs=P(),
                                   check_vma=False))
  np.testing.assert_allclose(no_check(w, x), expected, rtol=1e-6)
  plain = jax.jit(jax.grad(loss), in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)))
  np.testing.assert_allclose(plain(w, x), expected, rtol=1e-6)

