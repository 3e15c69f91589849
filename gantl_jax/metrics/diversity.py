"""Diversity of generated samples: CDC's intra-cluster distance and the diversity ratio.

**Intra-cluster distance** (Ojha et al. 2021, "Few-shot Image Generation via Cross-domain
Correspondence", section 4; they use LPIPS): with N generated samples (1000 by default in
their protocol) and the K training images of a few-shot domain,

  1. every sample joins the cluster of its nearest training image (by the chosen distance;
     ties go to the lower training index);
  2. in each cluster, the mean distance over all pairs among at most ``max_per_cluster`` (50)
     of its samples: the first 50 in sample order, or with ``seed`` a uniform choice without
     replacement from ``np.random.default_rng(seed)`` (drawn cluster by cluster, in training
     order);
  3. the mean over the clusters that hold at least 2 samples (``clusters_used``; the others
     have no pair and are skipped).

A generator that reproduces its training images scores near 0; one whose samples vary around
each training image scores higher. Higher is more diverse (unlike the loss-like metrics of
`gantl_jax.metrics`, where lower is better).

**Diversity ratio**: the mean pairwise distance among the samples divided by the mean pairwise
distance among held-out real images of the target domain (images not in the training set): 1
when the samples are as varied as the domain, below 1 when they have collapsed.

The functions on distance matrices (`intra_cluster_distance`, `mean_pairwise_distance`) are pure
numpy; `diversity` embeds image arrays with a `distances.Distance` first.
"""
from __future__ import annotations

import numpy as np

from gantl_jax.metrics import distances as dist_lib

MAX_PER_CLUSTER = 50


def nearest(to_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(index, distance) of the nearest training image of each row of an (N, K) distance matrix."""
  to_train = np.asarray(to_train)
  if to_train.ndim != 2 or not to_train.shape[1]:
    raise ValueError(f"expected an (N, K) distance matrix with K >= 1, got shape {to_train.shape}")
  index = np.argmin(to_train, axis=1)
  return index, to_train[np.arange(len(to_train)), index]


def mean_pairwise_distance(within: np.ndarray) -> float:
  """Mean of the distances above the diagonal of a square (N, N) matrix (each pair once); N >= 2."""
  within = np.asarray(within)
  if within.ndim != 2 or within.shape[0] != within.shape[1] or len(within) < 2:
    raise ValueError(f"expected a square distance matrix of at least 2 images, got shape {within.shape}")
  return float(np.mean(dist_lib.upper_triangle(within)))


def intra_cluster_distance(within: np.ndarray, to_train: np.ndarray, *, max_per_cluster: int = MAX_PER_CLUSTER,
                           seed: int | None = None) -> dict[str, float]:
  """CDC's intra-cluster distance from the samples' (N, N) distances and their (N, K) distances
  to the training images (see the module docstring).

  Returns ``intra_cluster`` (NaN when no cluster has 2 samples), ``clusters_used`` and
  ``clusters`` (K).
  """
  within, to_train = np.asarray(within), np.asarray(to_train)
  if within.shape != (len(to_train), len(to_train)):
    raise ValueError(f"sample distances of shape {within.shape} do not match {len(to_train)} samples")
  if max_per_cluster < 2:
    raise ValueError(f"max_per_cluster must be >= 2, got {max_per_cluster}")
  assignment, _ = nearest(to_train)
  rng = None if seed is None else np.random.default_rng(seed)
  means = []
  for k in range(to_train.shape[1]):
    members = np.flatnonzero(assignment == k)
    if len(members) > max_per_cluster:
      members = np.sort(rng.choice(members, max_per_cluster, replace=False)) if rng else members[:max_per_cluster]
    if len(members) >= 2:
      means.append(mean_pairwise_distance(within[np.ix_(members, members)]))
  return {"intra_cluster": float(np.mean(means)) if means else float("nan"),
          "clusters_used": float(len(means)), "clusters": float(to_train.shape[1])}


def diversity(distance: dist_lib.Distance, samples, train, heldout=None, *,
              max_per_cluster: int = MAX_PER_CLUSTER, seed: int | None = None) -> dict[str, float]:
  """Intra-cluster distance of uint8 NHWC ``samples`` around the ``train`` images, the samples'
  mean pairwise distance, and with ``heldout`` reals also theirs and the ``diversity_ratio``
  (samples' mean pairwise / held-out's). Keys are prefixed with ``distance.name``."""
  embedded = dist_lib.embed_sets(distance, samples=samples, train=train, heldout=heldout)
  return diversity_of_embeddings(distance, embedded, max_per_cluster=max_per_cluster, seed=seed)


def diversity_of_embeddings(distance: dist_lib.Distance, embedded: dict[str, np.ndarray], *,
                            max_per_cluster: int = MAX_PER_CLUSTER, seed: int | None = None) -> dict[str, float]:
  """`diversity` of image sets already embedded by ``distance`` (`distances.embed_sets`: 'samples',
  'train' and, if held-out reals were given, 'heldout')."""
  s = embedded["samples"]
  within = dist_lib.pairwise(distance, s)
  to_train = dist_lib.pairwise(distance, s, embedded["train"])
  out = intra_cluster_distance(within, to_train, max_per_cluster=max_per_cluster, seed=seed)
  out["pairwise"] = mean_pairwise_distance(within)
  if "heldout" in embedded:
    out["heldout_pairwise"] = mean_pairwise_distance(dist_lib.pairwise(distance, embedded["heldout"]))
    out["diversity_ratio"] = out["pairwise"] / out["heldout_pairwise"]
  return {f"{distance.name}_{k}": v for k, v in out.items()}
