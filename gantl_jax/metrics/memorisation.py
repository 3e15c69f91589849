"""Memorisation: how close generated samples come to the training images, against held-out reals.

For each sample, the distance to its nearest training image (by a `distances.Distance`); the
same for held-out real images of the target domain (none of them in the training set), which
show how close an unseen image of the domain falls to the training set by chance. Reported for
both: mean, median and the 5/25/75/95 % quantiles (numpy's linear interpolation). And
``copies``: the fraction of samples nearer to a training image than the nearest of all held-out
reals is, i.e. nearer than the domain itself ever came in that held-out set. A generator that
reproduces its training set has every nearest distance at 0 and ``copies`` 1; one whose
samples are as far from the training set as new images of the domain has the two distributions
alike and ``copies`` near 0 (with many held-out images the threshold is strict, so near 0 even
then).
"""
from __future__ import annotations

import numpy as np

from gantl_jax.metrics import distances as dist_lib

QUANTILES = (0.05, 0.25, 0.75, 0.95)


def summary(values: np.ndarray, prefix: str) -> dict[str, float]:
  """Mean, median and `QUANTILES` of ``values``, as ``{prefix}_mean``, ``_median``, ``_q05`` ..."""
  values = np.asarray(values, np.float64)
  out = {f"{prefix}_mean": float(values.mean()), f"{prefix}_median": float(np.median(values))}
  out.update({f"{prefix}_q{round(100 * q):02d}": float(np.quantile(values, q)) for q in QUANTILES})
  return out


def memorisation_from_nearest(sample_nearest: np.ndarray, heldout_nearest: np.ndarray | None = None) -> dict[str, float]:
  """The memorisation statistics from each sample's and each held-out image's nearest-training
  distance (see the module docstring); ``copies`` only with held-out distances."""
  sample_nearest = np.asarray(sample_nearest, np.float64)
  if sample_nearest.ndim != 1 or not len(sample_nearest):
    raise ValueError(f"expected a non-empty vector of nearest distances, got shape {sample_nearest.shape}")
  out = summary(sample_nearest, "nearest")
  if heldout_nearest is not None:
    heldout_nearest = np.asarray(heldout_nearest, np.float64)
    if heldout_nearest.ndim != 1 or not len(heldout_nearest):
      raise ValueError(f"expected a non-empty vector of held-out distances, got shape {heldout_nearest.shape}")
    out.update(summary(heldout_nearest, "heldout_nearest"))
    out["copies"] = float(np.mean(sample_nearest < heldout_nearest.min()))
  return out


def memorisation(distance: dist_lib.Distance, samples, train, heldout=None) -> dict[str, float]:
  """Memorisation statistics of uint8 NHWC ``samples`` against the ``train`` images, with
  ``heldout`` reals for comparison; keys prefixed with ``distance.name``."""
  return memorisation_of_embeddings(distance, dist_lib.embed_sets(distance, samples=samples, train=train,
                                                                   heldout=heldout))


def memorisation_of_embeddings(distance: dist_lib.Distance, embedded: dict[str, np.ndarray]) -> dict[str, float]:
  """`memorisation` of image sets already embedded by ``distance`` (`distances.embed_sets`)."""
  def nearest_of(name):
    return dist_lib.pairwise(distance, embedded[name], embedded["train"]).min(axis=1)

  out = memorisation_from_nearest(nearest_of("samples"), nearest_of("heldout") if "heldout" in embedded else None)
  return {f"{distance.name}_{k}": v for k, v in out.items()}
