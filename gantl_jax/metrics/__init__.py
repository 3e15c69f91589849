"""Evaluation of a generator: metrics over many samples, run by the loop and by eval mode.

An evaluator is ``fn(fake_batches, real_batches, eval_config, context) -> {name: value}``: it
consumes two iterables of uint8 NHWC batches (generated and real images; each can be iterated
once) and returns floats, among them one under the evaluator's own name (the headline value that
``checkpoint.keep_best`` compares; lower is better except for ``samples.HIGHER_IS_BETTER``).
``context`` (`samples.SampleContext`) carries the training images and the source generator's
samples that the sample-level evaluators (diversity, copies, correspondence) need. ``EVALUATORS`` maps
the names accepted by ``eval.metrics`` to them. One function may serve several names ('kid' and
'fid' share one pass of the Inception network): `run_evaluators` calls it once and it returns
all of them.

The real batches `run_evaluators` passes are a `RealImages`: besides iterating, it tells an
evaluator where it may cache statistics of exactly those images (``cache_dir``, ``cache_tag``);
evaluators that ignore this just iterate it.
"""
from __future__ import annotations

import os
from typing import Callable, Iterator

import ml_collections
import numpy as np

from gantl_jax import cache
from gantl_jax.errors import ConfigError
from gantl_jax.metrics import class_share as class_share_lib
from gantl_jax.metrics import kid_fid, samples, swd

Batches = Iterator[np.ndarray]
Evaluator = Callable[[Batches, Batches, ml_collections.ConfigDict], dict]

# Bump when the descriptors of an image set change (pyramid, patches, normalisation sums), so
# that accumulators cached by an older version are not compared with new ones.
SWD_CACHE_VERSION = 1


def cached_swd_reals(reals: Batches, seed: int) -> swd.SWDAccumulator:
  """The SWD accumulator of the real images ``reals`` with ``seed``, read from / written to the
  cache when ``reals`` says where (a `RealImages`): the same images and seed give the same
  accumulator, so a run's evaluations and every run on one dataset share one."""
  path = cache.path_for(reals, f"swd_s{seed}_m{swd.DEFAULT_MAX_DESCRIPTORS}_v{SWD_CACHE_VERSION}")
  acc = cache.read(path, swd.SWDAccumulator.from_arrays, "SWD descriptors")
  if acc is None:
    acc = swd.accumulate(reals, seed=seed)
    cache.write(path, acc.to_arrays(), "SWD descriptors")
  return acc


def evaluate_swd(fakes: Batches, reals: Batches, eval_config: ml_collections.ConfigDict,
                 context: samples.SampleContext | None = None) -> dict:
  """SWD x 10^3 per Laplacian level ('swd_r{S}') and their mean ('swd')."""
  del context
  seed = eval_config.seed
  values = swd.compute_swd(cached_swd_reals(reals, seed), swd.accumulate(fakes, seed=seed), seed=seed)
  values["swd"] = values.pop("swd_avg")
  return values


EVALUATORS: dict[str, Evaluator] = {
    "swd": evaluate_swd, "kid": kid_fid.evaluate, "fid": kid_fid.evaluate,
    "diversity": samples.evaluate, "copies": samples.evaluate,
    "correspondence": samples.evaluate_correspondence, "class_share": samples.evaluate_class_share}


def best_mode(metric: str) -> str:
  """'max' for the metrics where higher is better, else 'min' (``checkpoint.keep_best``)."""
  return "max" if metric in samples.HIGHER_IS_BETTER else "min"


def get_evaluators(eval_config: ml_collections.ConfigDict, keep_best: str = "") -> dict[str, Evaluator]:
  """The evaluators named in ``eval.metrics`` (comma-separated), in that order; ``keep_best``
  (``checkpoint.keep_best``) must be one of them.

  'kid' and 'fid' need ``eval.inception_weights``: with '' they are dropped with a logged note
  (a keep_best on them is a ConfigError), and a file that is missing or not an Inception weight
  file is a ConfigError naming the key. The file is read here, once per process.
  """
  names = [n.strip() for n in str(eval_config.metrics or "").split(",") if n.strip()]
  unknown = [n for n in names if n not in EVALUATORS]
  if unknown:
    raise ConfigError(f"eval.metrics: unknown metric(s) {unknown}; choose from {sorted(EVALUATORS)}")
  if keep_best and keep_best not in names:
    raise ConfigError(f"checkpoint.keep_best={keep_best!r} is not among eval.metrics={names}; add it "
                      f"there (and set eval.every_kimg) or set --config.checkpoint.keep_best=''")
  if names and not eval_config.every_kimg > 0:
    raise ConfigError(f"eval.metrics={names} never run: set eval.every_kimg > 0 (kimg between evaluations)")
  if eval_config.lpips_weights and set(names) & {"diversity", "copies", "correspondence"}:
    try:
      samples.lpips_weights(eval_config.lpips_weights)  # read here, once per process, before training
    except ValueError as e:
      raise ConfigError(str(e)) from None
  if "class_share" in names:
    check_label_folder(eval_config)
  inception_names = tuple(n for n in names if n in kid_fid.METRICS)
  if inception_names and kid_fid.load_configured_weights(eval_config) is None:
    if keep_best in inception_names:
      raise ConfigError(f"checkpoint.keep_best={keep_best!r} needs eval.inception_weights (pytorch-fid's "
                        "pt_inception-2015-12-05-6726825d.pth or NVIDIA's inception-2015-12-05.pt)")
    kid_fid.note_skipped(inception_names)
    names = [n for n in names if n not in inception_names]
  return {n: EVALUATORS[n] for n in names}


def check_label_folder(eval_config: ml_collections.ConfigDict) -> None:
  """ConfigError naming the key unless ``eval.label_folder`` lists labelled images among which
  ``eval.target_label`` is a label (the images themselves are read at the first evaluation)."""
  from gantl_jax.data import builders  # pylint: disable=import-outside-toplevel  # tfds: only if asked
  folder, target = eval_config.label_folder, str(eval_config.target_label)
  if not folder or not target:
    raise ConfigError("eval.metrics: 'class_share' labels the samples by their nearest images of a labelled "
                      "folder; set eval.label_folder (files named <label>_*.png) and eval.target_label")
  try:
    files, _ = builders.list_images(folder)
    labels = {class_share_lib.label_of(f) for f in files}
  except ValueError as e:
    raise ConfigError(f"eval.label_folder={folder!r}: {e}") from None
  if target not in labels:
    raise ConfigError(f"eval.target_label={target!r} is not a label of eval.label_folder={folder!r} "
                      f"(its labels: {', '.join(sorted(labels))})")


def real_batches(data_source, indices, batch_size: int) -> Batches:
  """The images ``indices`` of a prepared data source (uint8 HWC rows), in batches."""
  for start in range(0, len(indices), batch_size):
    yield np.stack([data_source[int(i)] for i in indices[start:start + batch_size]])


def prepare_reals(config: ml_collections.ConfigDict, prepared, verbose: bool = True):
  """The prepared dataset the evaluators compare with: the images of ``eval.real_folder``
  (prepared once, like a training folder, all of them); with ``eval.heldout`` ``eval.num_real``
  held-out images of the same synthetic domain or IDX classes (none of them in the training set;
  `pipeline.prepare_held_out`); otherwise ``prepared``, the training data itself."""
  from gantl_jax.data import pipeline  # pylint: disable=import-outside-toplevel  # tfds: only here
  e = config.eval
  if e.real_folder:
    return pipeline.prepare_folder(e.real_folder, data_config=config.data,
                                   resolution=config.model.resolution, key="eval.real_folder",
                                   channels=config.model.img_channels, verbose=verbose)
  if not e.heldout:
    return prepared
  return pipeline.prepare_held_out(config.data, resolution=config.model.resolution,
                                   num=int(e.num_real), channels=config.model.img_channels,
                                   verbose=verbose)


def describe_reals(config: ml_collections.ConfigDict, reals) -> str:
  """Which real images the evaluators of ``config`` compare with (``reals``: what
  `prepare_reals` returned), for eval.jsonl, the eval table and the comparison."""
  e, d = config.eval, config.data
  num = min(int(e.num_real), reals.num_examples)
  if e.real_folder:
    return f"{num} held-out images of eval.real_folder={e.real_folder}"
  if e.heldout and d.source == "idx":
    return f"{num} held-out images of classes {d.classes or 'all'} of {d.idx_dir} (none in the {d.n_shot}-shot set)"
  if e.heldout:
    return f"{num} held-out '{d.domain}' images (synthetic, none in a training set)"
  if d.source == "folder":
    what = f"data.folder={d.folder}"
  elif d.source == "idx":
    what = f"classes {d.classes or 'all'} of {d.idx_dir}"
  else:
    what = f"synthetic '{d.domain}'"
  return f"{num} training images ({what}; not held out: set eval.real_folder)"


class RealImages:
  """``num`` images of a prepared dataset as an iterable of uint8 batches, and where statistics
  of exactly these images may be cached.

  With fewer than the dataset holds, they are a uniform choice by ``seed`` (`eval.seed`;
  `pipeline.subset_indices`), not the first ones: a folder's order is its file names', which may
  sort class by class. With more, they are all of them and then their mirrors, in order.
  ``cache_dir`` is beside the prepared data (``<prepared.data_path>/eval_cache``: the path
  already fingerprints the dataset and its resolution); ``cache_tag`` names the image count, the
  seed of a chosen subset and mirroring, when the count reaches into the x-flipped copies.
  """

  def __init__(self, prepared, num: int, batch_size: int, seed: int = 0):
    from gantl_jax.data import pipeline  # pylint: disable=import-outside-toplevel  # tfds: only here
    source = prepared.data_source
    self.data_source = source
    self.num = min(int(num), len(source))
    self.batch_size = batch_size
    size = getattr(source, "size", len(source))
    mirrored = bool(getattr(source, "mirror", False)) and self.num > size
    chosen = self.num < size
    self.indices = pipeline.subset_indices(size, self.num, seed) if chosen else np.arange(self.num)
    self.cache_tag = f"n{self.num}" + (f"_s{seed}" if chosen else "") + ("_mirror" if mirrored else "")
    data_path = getattr(prepared, "data_path", "")
    self.cache_dir = os.path.join(data_path, "eval_cache") if data_path else None

  def __iter__(self) -> Batches:
    return real_batches(self.data_source, self.indices, self.batch_size)


def sample_context(config: ml_collections.ConfigDict, prepared, eval_reals,
                   source_batches: Callable[[int], Batches] | None = None) -> samples.SampleContext:
  """The `samples.SampleContext` of a run: its training images (at most ``eval.num_real``, no
  mirrored copies), whether ``eval_reals`` are held out, and the source's samples."""
  source = prepared.data_source
  num_train = min(getattr(source, "size", len(source)), int(config.eval.num_real))
  train_images = np.stack([source[i] for i in range(num_train)])
  return samples.SampleContext(train_images, eval_reals is not prepared, source_batches)


def run_evaluators(evaluators: dict[str, Evaluator], fake_batches: Callable[[int], Batches],
                   prepared, eval_config: ml_collections.ConfigDict,
                   context: samples.SampleContext | None = None) -> dict[str, float]:
  """Runs each distinct evaluator once on ``eval.num_fake`` samples (``fake_batches(num)``) and
  up to ``eval.num_real`` images of ``prepared`` (a `RealImages` chosen by ``eval.seed``); returns
  all their values in one dict."""
  out = {}
  for fn in dict.fromkeys(evaluators.values()):  # 'kid' and 'fid' share one function: call it once
    reals = RealImages(prepared, eval_config.num_real, eval_config.batch_size, int(eval_config.seed))
    values = fn(fake_batches(eval_config.num_fake), reals, eval_config, context)
    out.update({k: float(v) for k, v in values.items()})
  return out
