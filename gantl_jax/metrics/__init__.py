"""Evaluation of a generator: metrics over many samples, run by the loop and by eval mode.

An evaluator is ``fn(fake_batches, real_batches, eval_config) -> {name: value}``: it consumes two
iterators of uint8 NHWC batches (generated and real images; each can be iterated once) and
returns floats, among them one under the evaluator's own name (the headline value that
``checkpoint.keep_best`` compares; lower is better for every metric here). ``EVALUATORS`` maps
the names accepted by ``eval.metrics`` to them.
"""
from __future__ import annotations

from typing import Callable, Iterator

import ml_collections
import numpy as np

from gantl_jax.config import ConfigError
from gantl_jax.metrics import swd

Batches = Iterator[np.ndarray]
Evaluator = Callable[[Batches, Batches, ml_collections.ConfigDict], dict]

def evaluate_swd(fakes: Batches, reals: Batches, eval_config: ml_collections.ConfigDict) -> dict:
  """SWD x 10^3 per Laplacian level ('swd_r{S}') and their mean ('swd')."""
  values = swd.compute_swd(swd.accumulate(reals, seed=eval_config.seed),
                           swd.accumulate(fakes, seed=eval_config.seed), seed=eval_config.seed)
  values["swd"] = values.pop("swd_avg")
  return values


EVALUATORS: dict[str, Evaluator] = {"swd": evaluate_swd}


def get_evaluators(eval_config: ml_collections.ConfigDict, keep_best: str = "") -> dict[str, Evaluator]:
  """The evaluators named in ``eval.metrics`` (comma-separated), in that order; ``keep_best``
  (``checkpoint.keep_best``) must be one of them."""
  names = [n.strip() for n in str(eval_config.metrics or "").split(",") if n.strip()]
  unknown = [n for n in names if n not in EVALUATORS]
  if unknown:
    raise ConfigError(f"eval.metrics: unknown metric(s) {unknown}; choose from {sorted(EVALUATORS)}")
  if keep_best and keep_best not in names:
    raise ConfigError(f"checkpoint.keep_best={keep_best!r} is not among eval.metrics={names}; add it "
                      f"there (and set eval.every_kimg) or set --config.checkpoint.keep_best=''")
  if names and not eval_config.every_kimg > 0:
    raise ConfigError(f"eval.metrics={names} never run: set eval.every_kimg > 0 (kimg between evaluations)")
  return {n: EVALUATORS[n] for n in names}


def real_batches(data_source, num: int, batch_size: int) -> Batches:
  """The first ``num`` images of a prepared data source (uint8 HWC rows), in batches."""
  num = min(num, len(data_source))
  for start in range(0, num, batch_size):
    yield np.stack([data_source[i] for i in range(start, min(start + batch_size, num))])


def run_evaluators(evaluators: dict[str, Evaluator], fake_batches: Callable[[int], Batches],
                   prepared, eval_config: ml_collections.ConfigDict) -> dict[str, float]:
  """Runs each evaluator on ``eval.num_fake`` samples (``fake_batches(num)``) and up to
  ``eval.num_real`` images of ``prepared``; returns all their values in one dict."""
  out = {}
  for fn in evaluators.values():
    reals = real_batches(prepared.data_source, eval_config.num_real, eval_config.batch_size)
    out.update({k: float(v) for k, v in fn(fake_batches(eval_config.num_fake), reals, eval_config).items()})
  return out
