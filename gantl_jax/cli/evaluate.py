"""Offline evaluation of a run's G-EMA: ``python launch.py --mode eval --workdir DIR [--step N]
[--metrics swd,kid,fid] [--num_fake 10000] [--real_folder HELD_OUT_DIR] [--label_folder DIR
--target_label L]``. Appends one record to
``DIR/eval.jsonl`` (marked ``"offline": true``) and prints a table, both saying which real images
the values were measured against. The samples, the real images and the metrics are those of the
evaluation hook in training (``eval.*`` of the run's config, overridable here)."""
from __future__ import annotations

import os
import time
from typing import Optional

import jax

from gantl_jax import metrics as metrics_lib
from gantl_jax.data import pipeline
from gantl_jax.errors import ConfigError
from gantl_jax.training import jsonl
from gantl_jax.training import parallel
from gantl_jax.training import runs
from gantl_jax.training import transfer


def evaluate_workdir(workdir: str, *, step: Optional[int] = None, metrics: str = "",
                     num_fake: int = 0, inception_weights: str = "", real_folder: str = "",
                     label_folder: str = "", target_label: str = "") -> dict:
  """Evaluates G-EMA of ``step`` (default: the latest checkpoint) of the run in ``workdir`` with
  ``metrics`` (default: the run's ``eval.metrics``, else 'swd') against ``real_folder`` (default:
  the run's ``eval.real_folder`` or held-out set, else its training images), and for
  'class_share' ``label_folder`` and ``target_label`` (default: the run's ``eval.*``); returns the
  record written."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  mesh = parallel.make_mesh()
  config, nets, step, g_vars = runs.load_g_ema(workdir, step, parallel.replicated(mesh))
  e = config.eval
  e.metrics = metrics or e.metrics or "swd"
  e.num_fake = num_fake or e.num_fake
  e.inception_weights = inception_weights or e.inception_weights
  e.label_folder = label_folder or e.label_folder
  e.target_label = target_label or e.target_label
  e.every_kimg = e.every_kimg or 1.0  # the hook's schedule does not apply here
  if real_folder:
    e.real_folder, e.heldout = real_folder, False
  try:
    metrics_lib.samples.check([n.strip() for n in e.metrics.split(",")], e,
                              held_out=bool(e.heldout or e.real_folder), transfer_source=config.transfer.source)
  except ValueError as err:
    raise ConfigError(f"--metrics {e.metrics}: {err}") from None
  evaluators = metrics_lib.get_evaluators(e)
  if not evaluators:
    raise ConfigError(f"--metrics {e.metrics}: nothing left to run (kid and fid need "
                      f"--inception_weights or eval.inception_weights)")
  verbose = jax.process_index() == 0
  prepared = pipeline.prepare(config.data, resolution=config.model.resolution,
                              channels=config.model.img_channels, verbose=verbose)
  reals = metrics_lib.prepare_reals(config, prepared, verbose)
  source_batches = None
  if "correspondence" in evaluators:
    source_g = transfer.read_source_g_ema(config, nets.generator, parallel.replicated(mesh))
    source_batches = lambda num: parallel.sample_batches(nets, source_g, mesh, num=num,
                                                         batch_size=e.batch_size, seed=e.seed)
  context = metrics_lib.sample_context(config, prepared, reals, source_batches)
  t0 = time.time()
  values = metrics_lib.run_evaluators(
      evaluators, lambda num: parallel.sample_batches(nets, g_vars, mesh, num=num,
                                                      batch_size=e.batch_size, seed=e.seed),
      reals, e, context)
  record = dict(step=step, kimg=step * config.train.batch_size / 1000, offline=True,
                num_fake=e.num_fake, seconds=round(time.time() - t0, 2), **values,
                reals=metrics_lib.describe_reals(config, reals))
  if jax.process_index() == 0:
    jsonl.append(os.path.join(workdir, "eval.jsonl"), record)
    print(table(record))
  return record


def table(record: dict) -> str:
  """The metric values of one record as a two-column text table."""
  rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in record.items()]
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
