"""Correspondence between a source generator and its adaptation, on the same latents.

CDC (Ojha et al. 2021) asks that the adapted generator keep the source's *relative* distances:
two latents whose source images are alike should give alike target images. Measured here as
the Spearman rank correlation between the pairwise distances of the source images and those of
the adapted images (row i of both arrays from latent i; the N (N-1) / 2 pairs i < j): 1 when
the adapted images order their pairs exactly as the source ones, 0 when the orders are
unrelated, negative when they are reversed. Ranks make it independent of the scale of either
distance (any increasing transform of one side leaves it unchanged).

Spearman's rho is Pearson's correlation of the ranks, ties given the mean of the ranks they
span (as ``scipy.stats.spearmanr``); it is NaN when either side is constant.
"""
from __future__ import annotations

import numpy as np

from gantl_jax.metrics import distances as dist_lib


def rankdata(values: np.ndarray) -> np.ndarray:
  """float64 ranks 1..n of a 1-D array, tied values sharing the mean of their ranks."""
  values = np.asarray(values)
  order = np.argsort(values, kind="stable")
  sorted_values = values[order]
  # Runs of equal values: each gets the mean of the ranks first+1 .. last+1 it spans.
  starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
  ends = np.r_[starts[1:], len(values)]
  run_rank = (starts + 1 + ends) / 2.0
  ranks = np.empty(len(values), np.float64)
  ranks[order] = np.repeat(run_rank, ends - starts)
  return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
  """Spearman's rank correlation of two equal-length 1-D arrays (NaN if either is constant)."""
  a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
  if len(a) != len(b) or len(a) < 2:
    raise ValueError(f"expected two arrays of one length >= 2, got {len(a)} and {len(b)}")
  ra, rb = rankdata(a), rankdata(b)
  ra -= ra.mean()
  rb -= rb.mean()
  denom = np.sqrt(np.dot(ra, ra) * np.dot(rb, rb))
  return float(np.dot(ra, rb) / denom) if denom > 0 else float("nan")


def correspondence_from_distances(source_within: np.ndarray, adapted_within: np.ndarray) -> float:
  """Spearman correlation of the pairs i < j of two (N, N) pairwise distance matrices."""
  source_within, adapted_within = np.asarray(source_within), np.asarray(adapted_within)
  if source_within.shape != adapted_within.shape or source_within.ndim != 2 or len(source_within) < 3:
    raise ValueError(f"expected two square distance matrices of one size >= 3, got {source_within.shape} "
                     f"and {adapted_within.shape}")
  return spearman(dist_lib.upper_triangle(source_within), dist_lib.upper_triangle(adapted_within))


def correspondence(distance: dist_lib.Distance, source_images, adapted_images) -> dict[str, float]:
  """``{name}_correspondence`` of uint8 NHWC images from one set of latents through the source
  and the adapted generator (row i = latent i in both)."""
  source = dist_lib.distances(distance, source_images, what=("source images", ""))
  adapted = dist_lib.distances(distance, adapted_images, what=("adapted images", ""))
  if len(source) != len(adapted):
    raise ValueError(f"source and adapted images differ in number: {len(source)} and {len(adapted)}; "
                     "generate both from the same latents")
  return {f"{distance.name}_correspondence": correspondence_from_distances(source, adapted)}
