"""The training loop's periodic actions: log, sample, checkpoint, evaluate, and the stop signals.

Each is a small object with an interval in steps and ``__call__(step, state)``, which acts on the
steps the interval divides (:meth:`PeriodicAction.due`), in the spirit of
``clu.periodic_actions``. The loop (``train.py``) calls them after every step, in the order
log, samples, checkpoint, evaluation, stop signals. They hold the run's files and monitor, so
they have side effects; the loop owns their lifetime.
"""
from __future__ import annotations

import math
import os
import signal
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
from absl import logging

from gantl_jax import images as image_io
from gantl_jax.errors import NonFiniteStateError, TrainingError
from gantl_jax import metrics as metrics_lib
from gantl_jax.training import checkpoint
from gantl_jax.training import jsonl
from gantl_jax.training import monitor as monitor_lib
from gantl_jax.training import parallel

# What a user does about a diverged run, in every message that reports one.
DIVERGED_REMEDY = ("Lower optim.g.lr / optim.d.lr or raise train.r1_gamma, then resume or start a "
                   "new --workdir")
# Which phase of the step each loss metric belongs to, in the order the step runs them.
PHASE_OF_METRIC = {"g_loss": "G main", "pl_penalty": "G regularisation (path length)",
                   "d_loss": "D main", "r1_penalty": "D regularisation (R1)"}


def first_non_finite(fetched: list[dict], first_step: int) -> Optional[str]:
  """'step N, phase P (metric=value)' of the first non-finite loss among fetched step metrics."""
  for i, m in enumerate(fetched):
    for name, phase in PHASE_OF_METRIC.items():
      value = float(m[name])
      # NaN marks a lazy phase that did not run; a phase that ran and diverged gives NaN too,
      # but then the main losses of the step after it are non-finite as well.
      if math.isinf(value) or (math.isnan(value) and name in ("g_loss", "d_loss")):
        return f"step {first_step + i + 1}, phase {phase} ({name}={value})"
  return None


def check_finite(fetched: list[dict], first_step: int, manager) -> None:
  """Raises TrainingError naming the step and phase of the first non-finite loss, and the last
  good checkpoint of ``manager``."""
  where = first_non_finite(fetched, first_step)
  if where:
    last = checkpoint.last_committed(manager)
    kept = (f"the last good one (step {last}) is in {manager.directory}" if last is not None
            else "none was written before")
    raise TrainingError(f"training diverged at {where}; no checkpoint of a non-finite state was "
                        f"written, {kept}. {DIVERGED_REMEDY}")


def summarise(fetched: list[dict]) -> dict:
  """The mean of each metric over the fetched steps (lazy phases: over the steps that ran them)."""
  out = {}
  for k in fetched[0]:
    values = np.asarray([f[k] for f in fetched], np.float64)
    mean = float(np.nanmean(values)) if not np.all(np.isnan(values)) else math.nan
    out[k] = mean if math.isfinite(mean) else None  # JSON has no NaN or infinity
  return out


def any_process(flag: bool) -> bool:
  """Whether any process has ``flag`` set (a host allgather, so only called at sync points)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


class PeriodicAction:
  """Acts after every ``every``-th step (0: never): ``action(step, state)`` runs :meth:`run` on
  the steps :meth:`due` accepts."""

  def __init__(self, every: int):
    self.every = every

  def due(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def __call__(self, step: int, state: Any) -> None:
    if self.due(step):
      self.run(step, state)

  def run(self, step: int, state: Any) -> None:
    raise NotImplementedError


class LogMetrics(PeriodicAction):
  """Keeps each step's device metrics (:meth:`add`); every ``every`` steps and at the last step,
  the loop's host sync: fetches them at once, appends their means to ``path`` and the monitor,
  and raises TrainingError if a loss diverged."""

  def __init__(self, every: int, last_step: int, *, start_step: int, batch: int, mode: str,
               path: str, write: bool, monitor: monitor_lib.Monitor, manager):
    super().__init__(every)
    self.last_step, self.batch, self.mode = last_step, batch, mode
    self.path, self.write, self.monitor, self.manager = path, write, monitor, manager
    self.pending: list[dict] = []
    self.t_log, self.step_log = time.time(), start_step

  def due(self, step: int) -> bool:
    return super().due(step) or step == self.last_step

  def add(self, metrics: dict) -> None:
    self.pending.append(metrics)

  def restart_clock(self) -> None:
    """The next line's images/s counts from now (after compiling: it measures training)."""
    self.t_log = time.time()

  def check_pending(self, step: int) -> None:
    """Raises TrainingError if a metric not yet logged shows a diverged loss."""
    check_finite([parallel.first_replica(m, self.mode) for m in self.pending], step - len(self.pending),
                 self.manager)

  def run(self, step: int, state: Any) -> None:
    fetched = [parallel.first_replica(m, self.mode) for m in self.pending]
    first = step - len(self.pending)
    self.pending = []
    now = time.time()
    record = summarise(fetched)
    images_per_s = (step - self.step_log) * self.batch / max(now - self.t_log, 1e-9)
    record.update(step=step, kimg=step * self.batch / 1000, images_per_s=images_per_s,
                  sec_per_kimg=1000 / max(images_per_s, 1e-9), **monitor_lib.device_memory())
    self.t_log, self.step_log = now, step
    if self.write:
      jsonl.append(self.path, record)
    self.monitor.log(record)
    check_finite(fetched, first, self.manager)


class WriteSamples(PeriodicAction):
  """Every ``every`` steps, a grid of the G-EMA's images of fixed latents: ``samples_NNNNNNN.png``
  in the workdir and the monitor's 'samples' image (the main process only)."""

  def __init__(self, every: int, *, generate: Callable, grid_z: np.ndarray, cols: int, psi: float,
               workdir: str, mode: str, write: bool, monitor: monitor_lib.Monitor):
    super().__init__(every)
    self.generate, self.grid_z, self.cols, self.psi = generate, grid_z, cols, psi
    self.workdir, self.mode, self.write, self.monitor = workdir, mode, write, monitor

  def write_grid(self, tag: str, step: int, state: Any) -> None:
    """``samples_{tag}.png`` of ``state``'s G-EMA."""
    if not self.write:
      return
    g_ema = parallel.first_replica(state.g_ema.variables, self.mode)
    grid = image_io.make_grid(np.asarray(self.generate(g_ema, self.grid_z, truncation_psi=self.psi)), self.cols)
    image_io.save_png(grid, os.path.join(self.workdir, f"samples_{tag}.png"))
    self.monitor.image("samples", step, grid)

  def run(self, step: int, state: Any) -> None:
    self.write_grid(f"{step:07d}", step, state)


class SaveCheckpoint(PeriodicAction):
  """Every ``every`` steps, an asynchronous save of the state, the data iterator's position and
  ``meta`` to ``manager``; :meth:`save` also serves the forced saves (the end, a stop signal, the
  best checkpoint of an evaluation)."""

  def __init__(self, every: int, *, manager, mode: str, mesh, data_iter, meta: dict, log: LogMetrics):
    super().__init__(every)
    self.manager, self.mode, self.mesh = manager, mode, mesh
    self.data_iter, self.meta, self.log = data_iter, meta, log

  def save(self, step: int, state: Any, force: bool, manager=None, metrics: Optional[dict] = None) -> None:
    """Saves ``state`` of ``step`` to ``manager`` (default: the run's). A forced save of a step
    that was just saved does nothing. A non-finite state raises TrainingError and is not saved."""
    manager = manager or self.manager
    if force and manager.latest_step() == step:
      return  # this step was just saved by the periodic save
    global_state = parallel.to_global(state, self.mode, self.mesh)
    try:
      checkpoint.save(manager, global_state, data_state=self.data_iter.get_state(), meta=self.meta,
                      force=force, metrics=metrics)
    except NonFiniteStateError as e:
      # Name the step and phase where it happened, if the metrics not yet fetched show it.
      self.log.check_pending(step)
      raise TrainingError(f"training diverged: {e}. {DIVERGED_REMEDY}") from None

  def run(self, step: int, state: Any) -> None:
    self.save(step, state, force=False)


class Evaluate(PeriodicAction):
  """Every ``every`` steps, the evaluators on the G-EMA's samples: a line of ``path``, the
  monitor's, and with ``best_manager`` a save there kept by the metric."""

  def __init__(self, every: int, *, evaluators: dict, sample_batches: Callable, eval_reals,
               eval_config, sample_context, reals_described: str, batch: int, mode: str, mesh,
               path: str, write: bool, monitor: monitor_lib.Monitor, best_manager,
               saver: SaveCheckpoint):
    super().__init__(every)
    self.evaluators, self.sample_batches, self.eval_reals = evaluators, sample_batches, eval_reals
    self.eval_config, self.sample_context, self.reals_described = eval_config, sample_context, reals_described
    self.batch, self.mode, self.mesh = batch, mode, mesh
    self.path, self.write, self.monitor = path, write, monitor
    self.best_manager, self.saver = best_manager, saver

  def run(self, step: int, state: Any) -> None:
    g_ema = parallel.to_global(state.g_ema.variables, self.mode, self.mesh)  # not the whole state
    t0 = time.time()
    values = metrics_lib.run_evaluators(self.evaluators, lambda num: self.sample_batches(g_ema, num),
                                        self.eval_reals, self.eval_config, self.sample_context)
    record = dict(step=step, kimg=step * self.batch / 1000, seconds=round(time.time() - t0, 2), **values,
                  reals=self.reals_described)
    if self.write:
      jsonl.append(self.path, record)
    self.monitor.log_eval(step, values)
    if self.best_manager is not None:
      self.saver.save(step, state, force=True, manager=self.best_manager, metrics=values)


class StopSignals(PeriodicAction):
  """Turns SIGTERM and the first Ctrl-C (SIGINT) into a request that the loop checks between
  steps (``stop(step)`` says whether to save and exit now). A second Ctrl-C interrupts at once.
  One process alone sees its signal; agreeing needs a host allgather, so a job of several
  processes agrees at the log steps only (single-process jobs stop at the next step)."""

  def __init__(self, log: LogMetrics):
    super().__init__(1)
    self.log = log
    self.requested = False
    self._previous = {}

  def due(self, step: int) -> bool:
    return self.log.due(step) or jax.process_count() == 1

  def __call__(self, step: int, state: Any = None) -> bool:
    return self.due(step) and any_process(self.requested)

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    logging.warning("%s: saving a checkpoint at the end of this step, then exiting (Ctrl-C again "
                    "to interrupt now)", signal.Signals(signum).name)
    self.requested = True

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
