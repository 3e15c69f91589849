"""The training loop: the only place with side effects (files, logs, signals).

A user can write this loop themselves from the importable pieces: ``state.build_networks``,
``parallel.create_state`` / ``make_step`` / ``place_batch`` (or ``steps.make_train_step`` with
their own ``jax.jit``), ``data.prepare`` / ``make_iterator`` and ``checkpoint.save`` / ``restore``.
"""
from __future__ import annotations

import json
import os
import signal
import time
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from gantl_jax import checkpoint
from gantl_jax import config as config_lib
from gantl_jax import parallel
from gantl_jax import state as state_lib
from gantl_jax import transfer
from gantl_jax.data import pipeline

# Keys that may differ when a run is resumed from its workdir; anything else means "another run".
RESUMABLE_CHANGES = ("train.total_kimg", "train.log_every", "train.sample_every",
                     "checkpoint.every_steps", "checkpoint.max_to_keep", "parallel.")


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def check_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuses to reuse a workdir that holds a different run (nothing already written is lost)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = _flat(json.load(f))
  new = _flat(json.loads(config_lib.to_json(config)))
  changed = sorted(k for k in set(old) | set(new)
                   if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES))
  if changed:
    details = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:10])
    raise config_lib.ConfigError(
        f"workdir {workdir} holds another run (config.json differs in {details}). Resume with the "
        f"same config, or choose a new --workdir.")


def save_grid(images: np.ndarray, cols: int, path: str) -> None:
  """Writes NHWC images in [-1, 1] as one PNG grid, ``cols`` images per row (atomically)."""
  n, h, w, c = images.shape
  rows = -(-n // cols)
  grid = np.zeros((rows * h, cols * w, c), np.uint8)
  pixels = np.clip(np.rint((images + 1) * 127.5), 0, 255).astype(np.uint8)
  for i in range(n):
    r, k = divmod(i, cols)
    grid[r * h:(r + 1) * h, k * w:(k + 1) * w] = pixels[i]
  tmp = path + ".tmp.png"
  Image.fromarray(grid[..., 0] if c == 1 else grid).save(tmp)
  os.replace(tmp, path)


class _Preemption:
  """Turns SIGTERM into a flag that the loop checks between steps."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self._previous = None
    return self

  def _handle(self, signum, frame):
    logging.warning("SIGTERM: saving a checkpoint at the end of this step, then exiting")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run of ``config`` in ``workdir``. Returns the final summary."""
  t_launch = time.time()
  mode = config.parallel.mode
  config = config_lib.resolve(config, num_devices=jax.device_count())
  is_main = jax.process_index() == 0
  workdir = os.path.abspath(os.path.expanduser(workdir))
  check_workdir(workdir, config)
  # '' means "from scratch"; anything else, including a required-but-unset placeholder (None, as in
  # configs/ffhq_to_anime.py), goes through the preflight, which explains what to provide.
  if config.transfer.source != "":
    transfer.preflight(config, workdir)  # a missing or unfitting source fails before any work
  if is_main:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config_lib.to_json(config))

  nets = state_lib.build_networks(config)
  mesh = parallel.make_mesh()
  prepared = pipeline.prepare(config.data, resolution=config.model.resolution, verbose=is_main)
  manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"),
                                    max_to_keep=config.checkpoint.max_to_keep)
  state = parallel.create_state(nets, config.seed, "jit", mesh)
  data_state = None
  transfer_report = None
  if manager.latest_step() is not None:
    state, data_state, _ = checkpoint.restore(manager, state)
    logging.info("resumed from %s at step %d", manager.directory, int(state.step))
  elif config.transfer.source:
    state, transfer_report = transfer.transfer_state(config, nets, state, workdir=workdir)
  state = parallel.from_global(state, mode)

  start_step = int(parallel.first_replica(state.step, mode))
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

  def write_samples(tag: str) -> None:
    if not is_main:
      return
    g_ema = parallel.first_replica({"p": state.g_ema_params, "b": state.g_ema_buffers}, mode)
    images = np.asarray(generate(g_ema["p"], g_ema["b"], grid_z, truncation_psi=config.train.sample_psi))
    save_grid(images, cols, os.path.join(workdir, f"samples_{tag}.png"))

  def save_checkpoint(force: bool) -> None:
    if force and manager.latest_step() == step:
      return  # this step was just saved by the periodic save
    checkpoint.save(manager, parallel.to_global(state, mode, mesh), data_state=data_iter.get_state(),
                    meta=meta, force=force)

  if is_main and start_step == 0:
    reals = np.concatenate([prepared.data_source[i][None] for i in range(min(cols * rows, prepared.num_examples))])
    save_grid(reals.astype(np.float32) / 127.5 - 1, cols, os.path.join(workdir, "reals.png"))
    write_samples("init")

  metrics_path = os.path.join(workdir, "metrics.jsonl")
  pending: list[dict] = []
  t_log, step_log = time.time(), start_step
  first_step_seconds = None
  step = start_step
  with _Preemption() as preemption:
    while step < total_steps:
      state, metrics = step_fn(state, parallel.place_batch(next(data_iter), mode, mesh), step)
      step += 1
      pending.append(metrics)
      if first_step_seconds is None:
        jax.block_until_ready(metrics)
        first_step_seconds = time.time() - t_launch
      if step % config.train.log_every == 0 or step == total_steps:
        # The only host sync of the loop: fetch the metrics of the last log_every steps at once.
        fetched = [parallel.first_replica(m, mode) for m in pending]
        pending = []
        now = time.time()
        record = {k: float(np.nanmean([f[k] for f in fetched])) if not all(np.isnan(f[k]) for f in fetched) else None
                  for k in fetched[0]}
        images_per_s = (step - step_log) * batch / max(now - t_log, 1e-9)
        record.update(step=step, kimg=step * batch / 1000, images_per_s=images_per_s,
                      sec_per_kimg=1000 / max(images_per_s, 1e-9))
        t_log, step_log = now, step
        if is_main:
          with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
          logging.info("step %d kimg %.1f  g %.3f  d %.3f  r1 %s  pl %s  %.1f img/s", step,
                       record["kimg"], record["g_loss"], record["d_loss"], record["r1_penalty"],
                       record["pl_penalty"], images_per_s)
      if config.train.sample_every and step % config.train.sample_every == 0:
        write_samples(f"{step:07d}")
      if config.checkpoint.every_steps and step % config.checkpoint.every_steps == 0:
        save_checkpoint(force=False)
      if _any_process(preemption.requested):
        save_checkpoint(force=True)
        break
    else:
      save_checkpoint(force=True)
      write_samples("final")
  manager.wait_until_finished()
  manager.close()
  data_iter.close()
  summary = {"step": step, "total_steps": total_steps, "preempted": step < total_steps,
             "first_step_seconds": first_step_seconds, "transfer_report": transfer_report}
  logging.info("done: %s", json.dumps({k: v for k, v in summary.items() if k != "transfer_report"}))
  return summary
