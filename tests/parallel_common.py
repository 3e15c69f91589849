"""Shared by the parallel tests and the multi-host worker: one test config, fixed global batches,
a driver loop over ``gantl_jax.training.parallel`` and a comparison of parameter trees.

Compiles dominate the time of these tests (one train-step program costs 1-3 minutes on the
loaded 2-core dev box), so runs are memoised per (mode, device count) for the whole session and
the config keeps the number of programs per driver at one.
"""
from __future__ import annotations

import contextlib
import functools
import time
from typing import Any, Optional

import jax
import numpy as np

from configs import tiny
from gantl_jax import config as config_lib
from gantl_jax.training import parallel
from gantl_jax.training import state as state_lib

GLOBAL_BATCH = 16
STEPS = 10
SNAPSHOTS = (1, 3, 10)  # parameters are kept after these many steps


def test_config():
  """``configs/tiny.py`` with a global batch of 16 and mbstd groups of 2, so that every device
  count from 1 to 8 sees whole groups (per-device batch 2..16) and the model is the same on all;
  R1 and path length every step, so each driver compiles one program that runs all four phases
  (and every cross-device mean of the step)."""
  c = tiny.get_config()
  c.train.update(batch_size=GLOBAL_BATCH, r1_interval=1, pl_interval=1)
  c.model.mbstd_group_size = 2
  return c


test_config.__test__ = False  # not a pytest test


def global_batches(num: int = STEPS, seed: int = 0) -> list[np.ndarray]:
  """Fixed real-image batches [GLOBAL_BATCH, 16, 16, 3] in [-1, 1]."""
  rng = np.random.default_rng(seed)
  return [rng.uniform(-1, 1, (GLOBAL_BATCH, 16, 16, 3)).astype(np.float32) for _ in range(num)]


def local_rows(batch: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
  """This process's contiguous share of a global batch (as the data pipeline deals them)."""
  n = batch.shape[0] // process_count
  return batch[process_index * n:(process_index + 1) * n]


def params_of(state: Any, mode: str) -> dict[str, np.ndarray]:
  """Host copies of the trained variables (G, G-EMA, D, w_avg, pl_mean, step) of a state."""
  s = parallel.first_replica(state, mode)
  tree = {"g": s.g.params, "g_ema": s.g_ema.params, "d": s.d.params, "g_buffers": s.g.buffers,
          "pl_mean": s.extras["pl_mean"], "step": s.step}
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def max_rel_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[float, str]:
  """Largest |a - b| over a leaf divided by the largest |b| of that leaf, and the worst leaf."""
  assert a.keys() == b.keys()
  worst = (0.0, "")
  for k in a:
    x, y = a[k].astype(np.float64), b[k].astype(np.float64)
    d = float(np.max(np.abs(x - y), initial=0.0) / max(np.max(np.abs(y), initial=0.0), 1e-30))
    worst = max(worst, (d, k))
  return worst


def global_rel_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
  """|a - b| / |b| over all float leaves as one vector (L2): the size of the whole difference,
  which one near-zero leaf whose Adam step flipped sign (see test_parallel.py) cannot dominate."""
  assert a.keys() == b.keys()
  keys = [k for k in a if np.issubdtype(b[k].dtype, np.floating)]
  num = sum(float(np.sum((a[k].astype(np.float64) - b[k]) ** 2)) for k in keys)
  den = sum(float(np.sum(b[k].astype(np.float64) ** 2)) for k in keys)
  return (num / den) ** 0.5


class Run:
  """One driver on ``devices``: its config, networks, mesh and step, and the parameters after
  ``SNAPSHOTS`` steps on ``global_batches()``."""

  def __init__(self, mode: str, devices: Optional[list] = None, process_index: int = 0,
               process_count: int = 1):
    devices = jax.devices() if devices is None else devices
    if mode == "pmap":
      assert len(devices) == jax.device_count(), "pmap runs over all devices"
    self.mode = mode
    self.config = config_lib.resolve(test_config(), num_devices=len(devices))
    self.nets = state_lib.build_networks(self.config)
    self.mesh = parallel.make_mesh(devices)
    self.step = parallel.make_step(self.config, self.nets, mode, self.mesh)
    self.process_index, self.process_count = process_index, process_count
    self.state = parallel.create_state(self.nets, self.config.seed, mode, self.mesh)
    self.steps_done = 0
    self.snapshots: dict[int, dict[str, np.ndarray]] = {}
    self.first_step_seconds = None
    self.compiles_after_first_step = None
    self.images_per_s = None

  def place(self, batch: np.ndarray) -> Any:
    return parallel.place_batch(local_rows(batch, self.process_index, self.process_count),
                                self.mode, self.mesh)

  def run(self, until: int, batches: list[np.ndarray]) -> "Run":
    """Steps on until ``until`` steps are done. Times the first step (the compile) and the
    others, and counts the XLA compiles after the first step (the drivers should need none)."""
    t_rest, n_rest = time.time(), 0
    with count_compiles() as compiles:
      while self.steps_done < until:
        t = time.time()
        self.state, _ = self.step(self.state, self.place(batches[self.steps_done]), self.steps_done)
        self.steps_done += 1
        if self.first_step_seconds is None:
          jax.block_until_ready(self.state)
          self.first_step_seconds = time.time() - t
          compiles.clear()
          t_rest = time.time()
        else:
          n_rest += 1
        if self.steps_done in SNAPSHOTS:
          self.snapshots[self.steps_done] = params_of(self.state, self.mode)
      jax.block_until_ready(self.state)
    self.compiles_after_first_step = len(compiles)
    if n_rest:
      self.images_per_s = n_rest * GLOBAL_BATCH / (time.time() - t_rest)
    return self


@contextlib.contextmanager
def count_compiles():
  """Collects one entry per XLA backend compile inside the block."""
  events = []

  def listener(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      events.append(duration)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield events
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


@functools.lru_cache(maxsize=None)
def reference(mode: str, num_devices: int) -> Run:
  """A single-process run of ``STEPS`` steps on the first ``num_devices`` devices (memoised)."""
  return Run(mode, jax.devices()[:num_devices]).run(STEPS, global_batches())
