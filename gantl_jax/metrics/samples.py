"""The evaluators of few-shot training's failure modes, over one set of samples:

- ``diversity``: CDC's intra-cluster distance (`diversity.diversity`: each sample joins its
  nearest training image, pairwise distances within each cluster, averaged), with the samples'
  mean pairwise distance over that of held-out reals (``*_diversity_ratio``) where the real
  images are held out. Higher is more diverse; collapse drives it to 0.
- ``copies``: each sample's distance to its nearest training image against the same for
  held-out reals (`memorisation.memorisation`); the headline is the fraction of samples nearer
  to a training image than any held-out real is ("copies"). Needs held-out reals.
- ``correspondence``: the Spearman correlation between the pairwise distances of the same
  latents through the source and through the adapted generator (`correspondence`): CDC's claim
  that sample i keeps the structure of the source's sample i, as a number. Needs a transfer run.
- ``class_share``: the share of samples whose nearest labelled real images (``eval.label_folder``,
  files named ``<label>_*``) carry ``eval.target_label`` (`class_share`): whether the samples show
  the target's kind of object at all. Needs a labelled folder.

Each is computed with every distance available: the weight-free ``pyramid`` distance always, and
LPIPS-VGG when ``eval.lpips_weights`` names its weight file; keys carry the distance's name
(``pyramid_intra_cluster``, ``lpips_copies``, ...) and the headline (``diversity``, ``copies``,
``correspondence``) is the pyramid value. They use the first ``eval.num_diagnostic`` samples.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Iterator, NamedTuple, Optional

import ml_collections
import numpy as np

from gantl_jax.metrics import class_share as class_share_lib
from gantl_jax.metrics import correspondence as correspondence_lib
from gantl_jax.metrics import distances
from gantl_jax.metrics import diversity as diversity_lib
from gantl_jax.metrics import memorisation

Batches = Iterator[np.ndarray]
# Direction of each headline, for checkpoint.keep_best (every other metric: lower is better).
HIGHER_IS_BETTER = ("diversity", "correspondence", "class_share")


class SampleContext(NamedTuple):
  """What these evaluators need beyond the samples and the real images."""
  train_images: Optional[np.ndarray]          # uint8 NHWC: the images the run trained on
  reals_held_out: bool                        # whether the real images are held-out ones
  source_batches: Optional[Callable[[int], Batches]] = None  # the source G on the same latents


def take(batches: Batches, num: int) -> np.ndarray:
  """The first ``num`` images of ``batches`` as one uint8 array (the rest is not generated)."""
  out, count = [], 0
  for batch in batches:
    out.append(batch[:num - count])
    count += len(out[-1])
    if count >= num:
      break
  return np.concatenate(out)


@functools.lru_cache(maxsize=2)
def lpips_weights(paths: str):
  """The LPIPS-VGG weights of ``eval.lpips_weights``, read once per process; ValueError naming
  the key when they cannot be read."""
  from gantl_jax.metrics import lpips  # pylint: disable=import-outside-toplevel  # jax model: only if asked
  try:
    return lpips.load_weights(paths)
  except (OSError, ValueError) as e:
    raise ValueError(f"eval.lpips_weights={paths!r}: {e}") from None


def configured_distances(eval_config: ml_collections.ConfigDict) -> list[distances.Distance]:
  """``pyramid``, and ``lpips`` when ``eval.lpips_weights`` names a weight file."""
  out = [distances.pyramid_distance()]
  if eval_config.lpips_weights:
    from gantl_jax.metrics import lpips  # pylint: disable=import-outside-toplevel
    out.append(lpips.lpips_distance(lpips_weights(eval_config.lpips_weights)))
  return out


def _real_images(reals, num: int) -> np.ndarray:
  return take(iter(reals), num)


def evaluate(fakes: Batches, reals, eval_config: ml_collections.ConfigDict,
             context: SampleContext) -> dict[str, float]:
  """The evaluator of 'diversity' and 'copies' (one set of samples serves both)."""
  samples = take(fakes, int(eval_config.num_diagnostic))
  heldout = _real_images(reals, int(eval_config.num_real)) if context.reals_held_out else None
  names = [n.strip() for n in eval_config.metrics.split(",")]
  out = {}
  for distance in configured_distances(eval_config):
    embedded = distances.embed_sets(distance, samples=samples, train=context.train_images, heldout=heldout)
    if "diversity" in names:
      out.update(diversity_lib.diversity_of_embeddings(distance, embedded, seed=int(eval_config.seed)))
    if "copies" in names:
      out.update(memorisation.memorisation_of_embeddings(distance, embedded))
  if "diversity" in names:
    out["diversity"] = out["pyramid_intra_cluster"]
  if "copies" in names:
    out["copies"] = out["pyramid_copies"]
  return out


def evaluate_correspondence(fakes: Batches, reals, eval_config: ml_collections.ConfigDict,
                            context: SampleContext) -> dict[str, float]:
  """The evaluator of 'correspondence'."""
  del reals
  num = int(eval_config.num_diagnostic)
  adapted = take(fakes, num)
  source = take(context.source_batches(num), num)
  out = {}
  for distance in configured_distances(eval_config):
    out.update(correspondence_lib.correspondence(distance, source, adapted))
  out["correspondence"] = out["pyramid_correspondence"]
  return out


@functools.lru_cache(maxsize=2)
def labelled_images(folder: str, resolution: int, channels: int) -> tuple[np.ndarray, tuple[str, ...]]:
  """The images of ``eval.label_folder`` at the samples' size, read once per process, and their
  labels; ValueError naming the key and the file when one cannot be read or has no label."""
  from gantl_jax.data import builders  # pylint: disable=import-outside-toplevel  # tfds: only if asked
  try:
    files, _ = builders.list_images(folder)
  except ValueError as e:
    raise ValueError(f"eval.label_folder={folder!r}: {e}") from None
  images, labels = [], []
  for file in files:
    loaded = builders.load_image(folder, file, resolution, channels)
    if loaded.error:
      raise ValueError(f"eval.label_folder: {os.path.join(folder, file)}: {loaded.error}")
    try:
      labels.append(class_share_lib.label_of(file))
    except ValueError as e:
      raise ValueError(f"eval.label_folder: {os.path.join(folder, file)}: {e}") from None
    images.append(loaded.image)
  return np.stack(images), tuple(labels)


def evaluate_class_share(fakes: Batches, reals, eval_config: ml_collections.ConfigDict,
                         context: SampleContext) -> dict[str, float]:
  """The evaluator of 'class_share' (pyramid distance; LPIPS is not used here)."""
  del reals, context
  samples = take(fakes, int(eval_config.num_diagnostic))
  references, labels = labelled_images(eval_config.label_folder, samples.shape[1], samples.shape[3])
  return class_share_lib.class_share(distances.pyramid_distance(), samples, references, labels,
                                     str(eval_config.target_label))


def check(names: list[str], eval_config: ml_collections.ConfigDict, held_out: bool, transfer_source: str) -> None:
  """Raises ValueError naming what a requested evaluator lacks (held-out reals, a source)."""
  if "copies" in names and not held_out:
    raise ValueError("eval.metrics: 'copies' compares samples with held-out reals; give a folder of "
                     "held-out images as eval.real_folder (or eval.heldout=True for a synthetic domain)")
  if "correspondence" in names and not transfer_source:
    raise ValueError("eval.metrics: 'correspondence' compares the source's samples with the run's; "
                     "it needs a transfer run (transfer.source)")
  if int(eval_config.num_diagnostic) < 3:
    raise ValueError(f"eval.num_diagnostic must be >= 3, got {eval_config.num_diagnostic}")
