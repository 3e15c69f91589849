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
import dataclasses
import fcntl
import json
import os
import time
from typing import Any, Iterator, NamedTuple, Optional

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
from gantl_jax.training import actions
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

  Raises ``config.ConfigError`` / ``data.DataError`` / ``transfer.TransferError`` before writing
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


class _Run(NamedTuple):
  """What the loop starts from: the launch's networks, checkpoint managers and state (restored,
  transferred or fresh), and what the state came with."""
  config: ml_collections.ConfigDict
  workdir: str
  mesh: Any
  nets: state_lib.Networks
  evaluators: dict
  manager: Any
  best_manager: Any
  state: Any               # the global (jit-layout) state it starts from
  start_step: int
  frozen: Any
  data_state: Any
  transfer_report: Optional[dict]
  g_fisher: Any
  fisher_is_new: bool
  cache_counts: dict

  @property
  def mode(self) -> str:
    return self.config.parallel.mode


@dataclasses.dataclass
class _Progress:
  """The loop's position (its state, in the layout of ``parallel.mode``, and step) and timings,
  for the summary and the messages of any exit."""
  state: Any
  step: int
  first_step_seconds: Optional[float] = None
  compile_seconds: Optional[float] = None


class _Actions(NamedTuple):
  """The loop's periodic actions, in the order they run after a step."""
  log: actions.LogMetrics
  samples: actions.WriteSamples
  saver: actions.SaveCheckpoint
  evaluate: actions.Evaluate
  stop: actions.StopSignals


def _train(config: ml_collections.ConfigDict, workdir: str, prepared, eval_reals,
           t_launch: float) -> dict[str, Any]:
  run = _start(config, workdir)
  _write_run_files(run)
  return _loop(run, parallel.from_global(run.state, run.mode), prepared, eval_reals, t_launch)


def _start(config: ml_collections.ConfigDict, workdir: str) -> _Run:
  """The networks, checkpoint managers and state the run starts from: restored from its newest
  readable checkpoint, else transferred from its source, else fresh. Writes nothing but the
  unreadable checkpoints it sets aside."""
  # The processes got here after imports and data preparation of different lengths; the first
  # collective (the checkpoint manager's) must not find them more than gloo's 30 s apart.
  parallel.wait_for_all_processes("started")
  cache_counts = compilation.cache_counts()  # this run's hits and writes are counted from here
  mesh = parallel.make_mesh()
  g_fisher, fisher_is_new = None, False
  if fisher_lib.needed(config):
    g_fisher, fisher_is_new = _source_fisher(config, os.path.join(workdir, fisher_lib.FILE), mesh)
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
  return _Run(config, workdir, mesh, nets, evaluators, manager, best_manager, state,
              int(jax.device_get(state.step)), frozen, data_state, transfer_report, g_fisher,
              fisher_is_new, cache_counts)


def _write_run_files(run: _Run) -> None:
  """From here on the run writes to its workdir (the main process): its config, a new Fisher, the
  logs trimmed to the resumed step, the transfer report."""
  if jax.process_index() != 0:
    return
  workdir, start_step = run.workdir, run.start_step
  _write_atomically(os.path.join(workdir, "config.json"), config_lib.to_json(run.config))
  if run.fisher_is_new:  # before the first checkpoint: a resume reads it instead of recomputing
    fisher_lib.save(os.path.join(workdir, fisher_lib.FILE), run.g_fisher)
  for name in ("metrics.jsonl", "eval.jsonl"):
    path = os.path.join(workdir, name)
    dropped = jsonl.trim(path, start_step)
    if dropped:
      logging.info("%s: dropped %d records past step %d (re-run after the resume)", path, dropped, start_step)
  if run.transfer_report is not None:
    _write_atomically(os.path.join(workdir, "transfer_report.json"), json.dumps(run.transfer_report, indent=1))
    print(transfer.summary(run.transfer_report), flush=True)


def _make_actions(run: _Run, prepared, eval_reals, data_iter, total_steps: int,
                  monitor: monitor_lib.Monitor) -> _Actions:
  """The periodic actions of ``run``'s loop, writing to its workdir and ``monitor``."""
  config, workdir, mode, mesh = run.config, run.workdir, run.mode, run.mesh
  is_main, batch = jax.process_index() == 0, config.train.batch_size
  cols, rows = config.train.sample_grid
  grid_z = np.random.default_rng(config.seed).standard_normal((cols * rows, config.model.z_dim)).astype(np.float32)
  meta = {"model": config_lib.model_hparams(config), "config": json.loads(config_lib.to_json(config))}
  log = actions.LogMetrics(config.train.log_every, total_steps, start_step=run.start_step, batch=batch,
                           mode=mode, path=os.path.join(workdir, "metrics.jsonl"), write=is_main,
                           monitor=monitor, manager=run.manager)
  samples = actions.WriteSamples(config.train.sample_every, generate=parallel.make_generate(run.nets),
                                 grid_z=grid_z, cols=cols, psi=config.train.sample_psi, workdir=workdir,
                                 mode=mode, write=is_main, monitor=monitor)
  saver = actions.SaveCheckpoint(config.checkpoint.every_steps, manager=run.manager, mode=mode, mesh=mesh,
                                 data_iter=data_iter, meta=meta, log=log)
  monitor.write(monitor_lib.watch_line(workdir, config.train.tensorboard))
  eval_every = _steps_per_kimg(config.eval.every_kimg, batch) if run.evaluators else 0
  reals_described = metrics_lib.describe_reals(config, eval_reals)
  sample_context = _sample_context(config, run.nets, mesh, prepared, eval_reals) if run.evaluators else None
  if eval_every:
    monitor.write(f"evaluating {', '.join(run.evaluators)} every {eval_every} steps against {reals_described}")
  sample_batches = lambda g_ema, num: parallel.sample_batches(
      run.nets, g_ema, mesh, num=num, batch_size=config.eval.batch_size, seed=config.eval.seed)
  evaluate = actions.Evaluate(eval_every, evaluators=run.evaluators, sample_batches=sample_batches,
                              eval_reals=eval_reals, eval_config=config.eval, sample_context=sample_context,
                              reals_described=reals_described, batch=batch, mode=mode, mesh=mesh,
                              path=os.path.join(workdir, "eval.jsonl"), write=is_main, monitor=monitor,
                              best_manager=run.best_manager, saver=saver)
  return _Actions(log, samples, saver, evaluate, actions.StopSignals(log))


def _loop(run: _Run, state, prepared, eval_reals, t_launch: float) -> dict[str, Any]:
  """Runs the steps of ``run`` from ``state`` (in the layout of ``parallel.mode``) to the end or to
  a stop signal. Whatever ends it, the save in
  flight is committed (or fails) and the writers are closed before this returns or raises."""
  config = run.config
  total_steps = config_lib.num_steps(config)
  batch = config.train.batch_size
  data_iter = pipeline.make_iterator(
      prepared, global_batch=batch, process_index=jax.process_index(),
      process_count=jax.process_count(), seed=config.seed, state=run.data_state)
  step_fn = parallel.make_step(config, run.nets, run.mode, run.mesh)
  progress = _Progress(state=state, step=run.start_step)
  monitor = monitor_lib.Monitor(run.workdir, enabled=jax.process_index() == 0,
                                total_kimg=total_steps * batch / 1000, kimg_per_step=batch / 1000,
                                start_step=run.start_step, tensorboard=config.train.tensorboard)
  acts = _make_actions(run, prepared, eval_reals, data_iter, total_steps, monitor)
  managers = [m for m in (run.manager, run.best_manager) if m is not None]
  checkpoint.ignore_closed_loop_callbacks()
  try:
    if run.start_step == 0:
      _write_first_images(run, state, prepared, acts.samples, monitor)
    with acts.stop:
      _run_steps(run, step_fn, data_iter, acts, monitor, progress, total_steps, t_launch)
    for m in managers:
      checkpoint.wait(m)  # a failure of the final save is this run's error
  except BaseException as e:
    if not isinstance(e, (TrainingError, errors.CheckpointError)):  # those name what is kept
      logging.warning("the run stopped at step %d (%s); %s", progress.step, type(e).__name__,
                      checkpoint.kept(run.manager))
    raise
  finally:
    # Every exit path commits the save in flight (or lets it fail) before the process ends:
    # otherwise it stays a temporary directory that the resume ignores.
    data_iter.close()
    monitor.close()
    for m in managers:
      checkpoint.close(m)
  return _summary(run, progress, total_steps)


def _write_first_images(run: _Run, state, prepared, samples: actions.WriteSamples,
                        monitor: monitor_lib.Monitor) -> None:
  """A new run's ``reals.png`` (training images) and ``samples_init.png`` (the main process)."""
  if jax.process_index() != 0:
    return
  cols, rows = run.config.train.sample_grid
  reals = image_io.make_grid(pipeline.take_images(prepared, cols * rows), cols)
  image_io.save_png(reals, os.path.join(run.workdir, "reals.png"))
  monitor.image("reals", 0, reals)
  samples.write_grid("init", 0, state)


def _run_steps(run: _Run, step_fn, data_iter, acts: _Actions, monitor: monitor_lib.Monitor,
               progress: _Progress, total_steps: int, t_launch: float) -> None:
  """The steps from ``progress.step`` on, each followed by the periodic actions; at the end (not
  at a stop signal) the final save, evaluation and samples."""
  while progress.step < total_steps:
    placed = parallel.place_batch(next(data_iter), run.mode, run.mesh)
    if progress.compile_seconds is None:
      progress.compile_seconds = _compile_ahead(step_fn, run.config, progress.step, total_steps,
                                                (progress.state, placed, run.frozen), monitor)
      parallel.wait_for_all_processes("compiled")  # compiling took each process its own time
      monitor.start_bar()
      acts.log.restart_clock()
    progress.state, metrics = step_fn(progress.state, placed, progress.step, run.frozen)
    progress.step += 1
    step, state = progress.step, progress.state
    monitor.advance(step)
    checkpoint.check(run.manager)  # a failed asynchronous save stops the run now
    acts.log.add(metrics)
    if progress.first_step_seconds is None:
      jax.block_until_ready(metrics)
      progress.first_step_seconds = time.time() - t_launch
    for action in (acts.log, acts.samples, acts.saver, acts.evaluate):
      action(step, state)
    if acts.stop(step):
      acts.saver.save(step, state, force=True)
      return
  step, state = progress.step, progress.state
  acts.saver.save(step, state, force=True)
  if acts.evaluate.every and step % acts.evaluate.every:
    acts.evaluate.run(step, state)
  acts.samples.write_grid("final", step, state)


def _summary(run: _Run, progress: _Progress, total_steps: int) -> dict[str, Any]:
  """The run's summary, logged and returned by :func:`train_and_evaluate`."""
  summary = {"step": progress.step, "total_steps": total_steps, "preempted": progress.step < total_steps,
             "first_step_seconds": progress.first_step_seconds, "compile_seconds": progress.compile_seconds,
             "compile_cache": {k: v - run.cache_counts[k] for k, v in compilation.cache_counts().items()},
             "transfer_report": run.transfer_report}
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

