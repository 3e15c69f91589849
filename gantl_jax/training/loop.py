"""The training loop: the only place with side effects (files, logs, signals).

A user can write this loop themselves from the importable pieces: ``state.build_networks``,
``parallel.create_state`` / ``make_step`` / ``place_batch`` (or ``steps.make_train_step`` with
their own ``jax.jit``), ``data.prepare`` / ``make_iterator`` and ``checkpoint.save`` / ``restore``.

Order of a launch: every check that can fail (config, workdir, transfer source, data, checkpoint
directory) runs before anything is written to the workdir, so a failed start never blocks the
corrected command. Then the workdir is locked against a second launch, and the loop runs.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import signal
import time
from typing import Any, Iterator, Optional

import jax
import ml_collections
import numpy as np
from absl import logging

from gantl_jax import config as config_lib
from gantl_jax import errors
from gantl_jax import images as image_io
from gantl_jax import metrics as metrics_lib
from gantl_jax.data import pipeline
from gantl_jax.errors import TrainingError
from gantl_jax.fewshot import ewc as fisher_lib
from gantl_jax.models import stylegan2
from gantl_jax.training import checkpoint
from gantl_jax.training import compilation
from gantl_jax.training import jsonl
from gantl_jax.training import monitor as monitor_lib
from gantl_jax.training import parallel
from gantl_jax.training import runs
from gantl_jax.training import state as state_lib
from gantl_jax.training import steps
from gantl_jax.training import transfer

# Keys that may differ when a run is resumed from its workdir; anything else means "another run".
RESUMABLE_CHANGES = ("train.total_kimg", "train.log_every", "train.sample_every",
                     "train.compile_cache_dir", "train.tensorboard",
                     "checkpoint.every_steps", "checkpoint.max_to_keep", "checkpoint.keep_best",
                     "train.variant_programs", "parallel.", "eval.")
# What a user does about a diverged run, in every message that reports one.
DIVERGED_REMEDY = ("Lower optim.g.lr / optim.d.lr or raise train.r1_gamma, then resume or start a "
                   "new --workdir")
# Which phase of the step each loss metric belongs to, in the order the step runs them.
PHASE_OF_METRIC = {"g_loss": "G main", "pl_penalty": "G regularisation (path length)",
                   "d_loss": "D main", "r1_penalty": "D regularisation (R1)"}


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def _config_differences(old: dict, config: ml_collections.ConfigDict) -> list[str]:
  new = _flat(json.loads(config_lib.to_json(config)))
  old = _flat(config_lib.upgrade(old))
  changed = sorted(k for k in set(old) | set(new)
                   if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES))
  return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed]


def check_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuses a workdir that is not a directory, or that holds a different run: its
  ``config.json`` or, without one, the config stored in its latest checkpoint differs in more
  than the resumable keys. Reads only."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise errors.ConfigError(f"--workdir {workdir} is a file, not a directory; choose another --workdir")
  path = os.path.join(workdir, "config.json")
  where = path
  if os.path.exists(path):
    old = runs.read_config_json(path)
  else:
    old = _checkpoint_config(os.path.join(workdir, "checkpoints"))
    where = f"the latest checkpoint in {workdir}/checkpoints"
  if old is None:
    return
  changed = _config_differences(old, config)
  if changed:
    raise errors.ConfigError(
        f"workdir {workdir} holds another run ({where} differs in {'; '.join(changed[:10])}). "
        f"Resume with the same config, or choose a new --workdir.")


def _checkpoint_config(directory: str) -> Optional[dict]:
  """The resolved config stored with the newest readable checkpoint of ``directory``, if any (the
  resume skips unreadable ones the same way)."""
  steps = checkpoint.committed_steps(directory)
  if not steps:
    return None
  with checkpoint.make_manager(directory, item_names=("meta",), read_only=True, max_to_keep=None) as m:
    for step in reversed(steps):
      try:
        return checkpoint.read_meta(m, step).get("config")
      except Exception:  # pylint: disable=broad-except  # a damaged step: the resume reports it
        continue
  return None


def _write_atomically(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` through a temporary file in the same directory, so a crash or a
  full disk leaves the old file or the new one, never a truncated one."""
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _set_aside_unreadable(manager, unreadable: list[tuple[int, str]], resumed: int) -> None:
  """Renames the unreadable steps newer than the restored one to ``N.unreadable`` (never deleted:
  their files may still be recovered), so that the run can save those steps again; logs each."""
  for step, cause in unreadable:
    src = os.path.join(manager.directory, str(step))
    dst = f"{src}.unreadable"
    if jax.process_index() == 0:
      os.replace(src, dst)
    logging.warning("checkpoint step %d in %s cannot be read (%s); resuming from step %d, the newest "
                    "readable one; the damaged step is kept as %s", step, manager.directory, cause,
                    resumed, dst)
  parallel.wait_for_all_processes("unreadable checkpoints set aside")  # before any process reloads
  manager.reload()


def _check_writable(directory: str, what: str) -> None:
  """Creates ``directory`` and proves a file can be written in it, or fails with one line."""
  try:
    os.makedirs(directory, exist_ok=True)
    probe = os.path.join(directory, f".write_probe_{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:  # a start-time problem of --workdir, like the config's: status 2
    raise errors.ConfigError(f"cannot write {what} {directory}: {e.strerror or e}; make it "
                             f"writable or choose another --workdir") from None


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[None]:
  """Holds an exclusive lock on ``workdir/.lock`` (flock: released by the kernel if the process
  dies, so a killed run never leaves a stale lock). A second launch on the same workdir is
  refused with the holder's pid."""
  path = os.path.join(workdir, ".lock")
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
      raise errors.ConfigError(
          f"workdir {workdir} is in use by another launch (pid {holder}, lock {path}); wait for "
          f"it to finish or stop it, or choose another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the flock


class _StopSignals:
  """Turns SIGTERM and the first Ctrl-C (SIGINT) into a flag that the loop checks between steps:
  it then saves a checkpoint and exits cleanly. A second Ctrl-C interrupts at once."""

  def __init__(self):
    self.requested = False
    self._previous = {}

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


def _any_process(flag: bool) -> bool:
  """Whether any process has ``flag`` set (a host allgather, so only called at sync points)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


def _first_non_finite(fetched: list[dict], first_step: int) -> Optional[str]:
  """'step N, phase P (metric=value)' of the first non-finite loss among fetched step metrics."""
  for i, m in enumerate(fetched):
    for name, phase in PHASE_OF_METRIC.items():
      value = float(m[name])
      # NaN marks a lazy phase that did not run; a phase that ran and diverged gives NaN too,
      # but then the main losses of the step after it are non-finite as well.
      if math.isinf(value) or (math.isnan(value) and name in ("g_loss", "d_loss")):
        return f"step {first_step + i + 1}, phase {phase} ({name}={value})"
  return None


def _summarise(fetched: list[dict]) -> dict:
  """The mean of each metric over the fetched steps (lazy phases: over the steps that ran them)."""
  out = {}
  for k in fetched[0]:
    values = np.asarray([f[k] for f in fetched], np.float64)
    mean = float(np.nanmean(values)) if not np.all(np.isnan(values)) else math.nan
    out[k] = mean if math.isfinite(mean) else None  # JSON has no NaN or infinity
  return out


def prepare_run(config: ml_collections.ConfigDict, workdir: str):
  """Every check of a launch, in the order that fails fastest; writes nothing to ``workdir``.
  Returns (resolved config, absolute workdir, prepared data, the prepared real images of the
  evaluation: the same data or the held-out set of ``eval.heldout``)."""
  config = config_lib.resolve(config, num_devices=jax.device_count())
  workdir = os.path.abspath(os.path.expanduser(workdir))
  check_workdir(workdir, config)
  # '' means "from scratch"; anything else, including a required-but-unset placeholder (None, as in
  # configs/ffhq_to_anime.py), goes through the preflight, which explains what to provide.
  if config.transfer.source != "":
    transfer.preflight(config, workdir)
  evaluators = metrics_lib.get_evaluators(config.eval, config.checkpoint.keep_best)
  verbose = jax.process_index() == 0
  prepared = pipeline.prepare(config.data, resolution=config.model.resolution,
                              channels=config.model.img_channels, verbose=verbose)
  eval_reals = metrics_lib.prepare_reals(config, prepared, verbose) if evaluators else prepared
  return config, workdir, prepared, eval_reals


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run of ``config`` in ``workdir``; returns the final summary.

  Raises ``errors.ConfigError`` / ``errors.DataError`` / ``errors.TransferError`` before writing
  anything, and ``TrainingError`` / ``errors.CheckpointError`` when the run diverges or its
  files cannot be written (its last good checkpoint is kept, and named). Whatever ends the run, the
  checkpoint save in flight is committed first. A resume restores the newest readable checkpoint;
  newer, unreadable ones are renamed ``N.unreadable`` with a warning.
  """
  t_launch = time.time()
  compilation.enable_cache(config.train.compile_cache_dir)  # before anything compiles
  config, workdir, prepared, eval_reals = prepare_run(config, workdir)
  is_main = jax.process_index() == 0
  if is_main:
    _check_writable(workdir, "the workdir")
  with workdir_lock(workdir) if is_main else contextlib.nullcontext():
    check_workdir(workdir, config)  # again, now that no other launch can be writing
    _check_writable(os.path.join(workdir, "checkpoints"), "the checkpoint directory")
    return _train(config, workdir, prepared, eval_reals, t_launch)


def _train(config: ml_collections.ConfigDict, workdir: str, prepared, eval_reals,
           t_launch: float) -> dict[str, Any]:
  mode = config.parallel.mode
  is_main = jax.process_index() == 0
  # The processes got here after imports and data preparation of different lengths; the first
  # collective (the checkpoint manager's) must not find them more than gloo's 30 s apart.
  parallel.wait_for_all_processes("started")
  cache_counts = compilation.cache_counts()  # this run's hits and writes are counted from here
  mesh = parallel.make_mesh()
  fisher_path = os.path.join(workdir, fisher_lib.FILE)
  g_fisher, fisher_is_new = None, False
  if fisher_lib.needed(config):
    g_fisher, fisher_is_new = _source_fisher(config, fisher_path, mesh)
  nets = state_lib.build_networks(config, g_fisher=g_fisher)
  evaluators = metrics_lib.get_evaluators(config.eval, config.checkpoint.keep_best)
  manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"),
                                    max_to_keep=config.checkpoint.max_to_keep)
  best_manager = None
  if config.checkpoint.keep_best:
    metric = config.checkpoint.keep_best
    best_manager = checkpoint.make_manager(
        os.path.join(workdir, "best"), max_to_keep=1, best_fn=lambda m: m[metric],
        best_mode=metrics_lib.best_mode(metric))
  state = parallel.create_state(nets, config.seed, "jit", mesh)
  data_state, transfer_report = None, None
  if manager.latest_step() is not None:
    state, data_state, _, resumed, unreadable = checkpoint.restore_newest_readable(manager, state)
    if unreadable:
      _set_aside_unreadable(manager, unreadable, resumed)
    logging.info("resumed from %s at step %d", manager.directory, int(state.step))
  elif config.transfer.source:
    state, transfer_report = transfer.transfer_state(config, state, g_fisher=g_fisher)
  frozen_items = steps.frozen_networks(config)
  frozen = transfer.read_frozen(config, state, frozen_items) if frozen_items else None
  if fisher_lib.ewc_weight(config) > 0:
    frozen = {**(frozen or {}), "g_fisher": parallel.replicate(g_fisher, mesh)}
  start_step = int(jax.device_get(state.step))

  # From here on the run writes to its workdir.
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  eval_path = os.path.join(workdir, "eval.jsonl")
  if is_main:
    _write_atomically(os.path.join(workdir, "config.json"), config_lib.to_json(config))
    if fisher_is_new:  # before the first checkpoint: a resume reads it instead of recomputing
      fisher_lib.save(fisher_path, g_fisher)
    for path in (metrics_path, eval_path):
      dropped = jsonl.trim(path, start_step)
      if dropped:
        logging.info("%s: dropped %d records past step %d (re-run after the resume)", path, dropped, start_step)
    if transfer_report is not None:
      _write_atomically(os.path.join(workdir, "transfer_report.json"), json.dumps(transfer_report, indent=1))
      print(transfer.summary(transfer_report), flush=True)
  state = parallel.from_global(state, mode)

  total_steps = config_lib.num_steps(config)
  batch = config.train.batch_size
  data_iter = pipeline.make_iterator(
      prepared, global_batch=batch, process_index=jax.process_index(),
      process_count=jax.process_count(), seed=config.seed, state=data_state)
  step_fn = parallel.make_step(config, nets, mode, mesh)
  generate = parallel.make_generate(nets)
  cols, rows = config.train.sample_grid
  grid_z = np.random.default_rng(config.seed).standard_normal((cols * rows, config.model.z_dim)).astype(np.float32)
  meta = {"model": config_lib.model_hparams(config), "config": json.loads(config_lib.to_json(config))}
  step = start_step
  pending: list[dict] = []

  def write_samples(tag: str) -> None:
    if not is_main:
      return
    g_ema = parallel.first_replica(state.g_ema.variables, mode)
    grid = image_io.make_grid(np.asarray(generate(g_ema, grid_z, truncation_psi=config.train.sample_psi)), cols)
    image_io.save_png(grid, os.path.join(workdir, f"samples_{tag}.png"))
    monitor.image("samples", step, grid)

  def fail_if_diverged(fetched: list[dict], first_step: int) -> None:
    where = _first_non_finite(fetched, first_step)
    if where:
      last = checkpoint.last_committed(manager)
      kept = (f"the last good one (step {last}) is in {manager.directory}" if last is not None
              else "none was written before")
      raise TrainingError(f"training diverged at {where}; no checkpoint of a non-finite state was "
                          f"written, {kept}. {DIVERGED_REMEDY}")

  def save_checkpoint(force: bool, manager=manager, metrics=None) -> None:
    if force and manager.latest_step() == step:
      return  # this step was just saved by the periodic save
    global_state = parallel.to_global(state, mode, mesh)
    try:
      checkpoint.save(manager, global_state, data_state=data_iter.get_state(), meta=meta,
                      force=force, metrics=metrics)
    except errors.NonFiniteStateError as e:
      # Name the step and phase where it happened, if the metrics not yet fetched show it.
      fail_if_diverged([parallel.first_replica(m, mode) for m in pending], step - len(pending))
      raise TrainingError(f"training diverged: {e}. {DIVERGED_REMEDY}") from None

  def evaluate() -> None:
    g_ema = parallel.to_global(state.g_ema.variables, mode, mesh)  # not the whole state
    t0 = time.time()
    values = metrics_lib.run_evaluators(
        evaluators, lambda num: parallel.sample_batches(
            nets, g_ema, mesh, num=num, batch_size=config.eval.batch_size, seed=config.eval.seed),
        eval_reals, config.eval, sample_context)
    record = dict(step=step, kimg=step * batch / 1000, seconds=round(time.time() - t0, 2), **values,
                  reals=reals_described)
    if is_main:
      jsonl.append(eval_path, record)
    monitor.log_eval(step, values)
    if best_manager is not None:
      save_checkpoint(force=True, manager=best_manager, metrics=values)

  monitor = monitor_lib.Monitor(workdir, enabled=is_main, total_kimg=total_steps * batch / 1000,
                                kimg_per_step=batch / 1000, start_step=start_step,
                                tensorboard=config.train.tensorboard)
  monitor.write(monitor_lib.watch_line(workdir, config.train.tensorboard))
  eval_every = _steps_per_kimg(config.eval.every_kimg, batch) if evaluators else 0
  reals_described = metrics_lib.describe_reals(config, eval_reals)
  sample_context = _sample_context(config, nets, mesh, prepared, eval_reals) if evaluators else None
  if eval_every:
    monitor.write(f"evaluating {', '.join(evaluators)} every {eval_every} steps against {reals_described}")
  t_log, step_log = time.time(), start_step
  first_step_seconds = compile_seconds = None
  managers = [m for m in (manager, best_manager) if m is not None]
  checkpoint.ignore_closed_loop_callbacks()
  try:
    if is_main and start_step == 0:
      reals = np.stack([prepared.data_source[i] for i in range(min(cols * rows, prepared.num_examples))])
      reals = image_io.make_grid(reals, cols)
      image_io.save_png(reals, os.path.join(workdir, "reals.png"))
      monitor.image("reals", 0, reals)
      write_samples("init")
    with _StopSignals() as stop:
      while step < total_steps:
        placed = parallel.place_batch(next(data_iter), mode, mesh)
        if compile_seconds is None:
          compile_seconds = _compile_ahead(step_fn, config, step, total_steps, (state, placed, frozen), monitor)
          parallel.wait_for_all_processes("compiled")  # compiling took each process its own time
          monitor.start_bar()
          t_log = time.time()  # the first line's images/s measures training, not compiling
        state, metrics = step_fn(state, placed, step, frozen)
        step += 1
        monitor.advance(step)
        checkpoint.check(manager)  # a failed asynchronous save stops the run now
        pending.append(metrics)
        if first_step_seconds is None:
          jax.block_until_ready(metrics)
          first_step_seconds = time.time() - t_launch
        at_log = step % config.train.log_every == 0 or step == total_steps
        if at_log:
          # The loop's host sync: fetch the metrics of the last log_every steps at once, and ask
          # the other processes whether they were told to stop.
          fetched = [parallel.first_replica(m, mode) for m in pending]
          first = step - len(pending)
          pending = []
          now = time.time()
          record = _summarise(fetched)
          images_per_s = (step - step_log) * batch / max(now - t_log, 1e-9)
          record.update(step=step, kimg=step * batch / 1000, images_per_s=images_per_s,
                        sec_per_kimg=1000 / max(images_per_s, 1e-9), **monitor_lib.device_memory())
          t_log, step_log = now, step
          if is_main:
            jsonl.append(metrics_path, record)
          monitor.log(record)
          fail_if_diverged(fetched, first)
        if config.train.sample_every and step % config.train.sample_every == 0:
          write_samples(f"{step:07d}")
        if config.checkpoint.every_steps and step % config.checkpoint.every_steps == 0:
          save_checkpoint(force=False)
        if eval_every and step % eval_every == 0:
          evaluate()
        # One process alone sees its signal; agreeing needs a host allgather, so a job of several
        # processes agrees at the log steps only (single-process jobs stop at the next step).
        if (at_log or jax.process_count() == 1) and _any_process(stop.requested):
          save_checkpoint(force=True)
          break
      else:
        save_checkpoint(force=True)
        if eval_every and step % eval_every:
          evaluate()
        write_samples("final")
    for m in managers:
      checkpoint.wait(m)  # a failure of the final save is this run's error
  except BaseException as e:
    if not isinstance(e, (TrainingError, errors.CheckpointError)):  # those name what is kept
      logging.warning("the run stopped at step %d (%s); %s", step, type(e).__name__, checkpoint.kept(manager))
    raise
  finally:
    # Every exit path commits the save in flight (or lets it fail) before the process ends:
    # otherwise it stays a temporary directory that the resume ignores.
    data_iter.close()
    monitor.close()
    for m in managers:
      checkpoint.close(m)
  summary = {"step": step, "total_steps": total_steps, "preempted": step < total_steps,
             "first_step_seconds": first_step_seconds, "compile_seconds": compile_seconds,
             "compile_cache": {k: v - cache_counts[k] for k, v in compilation.cache_counts().items()},
             "transfer_report": transfer_report}
  logging.info("done: %s", json.dumps({k: v for k, v in summary.items() if k != "transfer_report"}))
  return summary


def _source_fisher(config: ml_collections.ConfigDict, path: str, mesh) -> tuple[Any, bool]:
  """(G's Fisher on the transfer source as host arrays, whether it was computed now): read from
  ``path`` when the run has stored it (a resume), else computed from the source's G-EMA and D
  (``fisher.g_fisher``, with ``fewshot.fisher_samples`` samples from ``seed``), sharded over the
  devices. The caller stores a new one."""
  g = stylegan2.generator_from_config(config.model)
  d = stylegan2.discriminator_from_config(config.model)
  shapes = jax.eval_shape(lambda k: {"g": stylegan2.init_generator(g, k),
                                     "d": stylegan2.init_discriminator(d, k)}, jax.random.key(0))
  stored = fisher_lib.load(path, shapes["g"]["params"])  # None: none yet, or unreadable
  if stored is not None:
    logging.info("G's Fisher information read from %s", path)
    return stored, False
  f = config.fewshot
  # Whole groups of minibatch-stddev samples, spread evenly over the devices.
  per_call = fisher_lib.sample_group(d) * mesh.devices.size
  batch = max(per_call, f.fisher_batch // per_call * per_call)
  logging.info("computing G's Fisher information on the source (%d samples, %d at a time)",
               f.fisher_samples, batch)
  t0 = time.time()
  sharding = parallel.replicated(mesh)
  templates = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)
  source = transfer.read_networks(config, {"g": "g_ema", "d": "d"}, templates)
  key = jax.random.fold_in(jax.random.key(config.seed), 1)
  g_fisher = fisher_lib.g_fisher(g, d, source["g"], source["d"]["params"], key, num_samples=f.fisher_samples,
                                 batch=batch, sharding=parallel.batch_sharding(mesh))
  g_fisher = parallel.first_replica(g_fisher, "jit")
  logging.info("G's Fisher information computed in %.1f s", time.time() - t0)
  return g_fisher, True


def _sample_context(config: ml_collections.ConfigDict, nets: state_lib.Networks, mesh, prepared,
                    eval_reals) -> metrics_lib.samples.SampleContext:
  """The training images and, for 'correspondence', the source G-EMA's samples of the
  evaluation latents (the source read once, replicated)."""
  source_batches = None
  if "correspondence" in config.eval.metrics:
    source_g = transfer.read_source_g_ema(config, nets.generator, parallel.replicated(mesh))
    source_batches = lambda num: parallel.sample_batches(
        nets, source_g, mesh, num=num, batch_size=config.eval.batch_size, seed=config.eval.seed)
  return metrics_lib.sample_context(config, prepared, eval_reals, source_batches)


def _compile_ahead(step_fn, config: ml_collections.ConfigDict, start: int, stop: int, args: tuple,
                   monitor: monitor_lib.Monitor) -> float:
  """Compiles every variant of the train step that steps ``start .. stop-1`` run, before the
  first step, saying why nothing moves meanwhile; returns the seconds it took."""
  variants = compilation.step_variants(config, start, stop)
  cache = jax.config.jax_compilation_cache_dir
  hits = compilation.cache_counts()["hits"]
  later = (f"later launches read them from the cache in {cache}" if cache else
           "the compilation cache is off (train.compile_cache_dir='')")
  monitor.write(f"compiling the train step ({len(variants)} program{'' if len(variants) == 1 else 's'}: "
                f"{', '.join(map(compilation.variant_name, variants))}) on {jax.default_backend()}; "
                f"a first launch takes a minute or more, {later}")
  t0 = time.time()
  compilation.compile_step_variants(step_fn, list(variants.values()), *args)
  seconds = time.time() - t0
  hits = compilation.cache_counts()["hits"] - hits
  monitor.write(f"compiled in {seconds:.1f} s" + (f" ({hits} of {len(variants)} read from the cache)" if cache else ""))
  return seconds


def _steps_per_kimg(kimg: float, batch: int) -> int:
  return max(1, int(round(kimg * 1000 / batch))) if kimg > 0 else 0

