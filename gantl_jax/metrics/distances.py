"""Distances between images for the sample-level metrics (diversity, memorisation, correspondence).

Every distance here is a Euclidean distance between embeddings: a `Distance` maps a batch of
uint8 NHWC images to float32 vectors (``embed``), and the distance of two images is the L2 norm
of the difference of their vectors, or its square (``squared``). Two are provided:

``pyramid`` (weight-free, always available; `pyramid_distance`). Each image, scaled to [0, 1],
is split into a Laplacian pyramid (``swd.laplacian_pyramid``: 5-tap binomial filter) from its
resolution down to 4 px (R, R/2, ..., halving while the half is a whole number >= 4; one level,
the image itself, below 8 px). Every level is flattened and divided by the square root of its
number of values, and the distance is ``sqrt(sum over levels of the mean squared difference of
the level / number of levels)``: an RMS difference in [0, 1] intensity units in which the 4 px
low-pass image weighs as much as the finest band-pass detail. What it sees: the layout of the
picture and its colours (the coarse levels) and the position and contrast of edges at every
scale (the band-pass levels). What it misses: anything semantic (two different faces with the
same layout are close; one face on another background is far), and it is not shift-invariant:
moving an image by a pixel or two changes its fine levels as much as a new image would (LPIPS
compares pooled features of a convolutional network, which vary more slowly under small shifts;
not measured here). Measured on 8
synthetic 32 px `photo` images: a 2 px horizontal shift is at a median distance of 0.043 from
the original, another photo of the domain at 0.085.

``lpips`` (perceptual; `gantl_jax.metrics.lpips.lpips_distance`): LPIPS-VGG v0.1 (Zhang et al.
2018) with weights from a file the user provides. LPIPS is itself a squared Euclidean distance
between embeddings (its channel weights are non-negative), so it fits the same interface with
``squared=True``.

`pairwise` computes all distances between two embedded sets in float64, in blocks of rows and
columns of at most ``block_bytes`` each: the only memory that grows with the set sizes is the
embeddings (float32, ``N x dim``) and the ``N x M`` result. ``pyramid`` at 64 px embeds an
RGB image in 16,368 values (64 kB; 1000 samples: 65 MB), at 32 px in 4,080; LPIPS at 32 px in
124,928. Measured on a shared 2-core CPU: `diversity.diversity` with ``pyramid`` on 1000
samples, 10 training and 200 held-out images at 64 px in 2.8 s, all included; LPIPS on 300
images at 32 px: embedding 28 s, their 300 x 300 distances 8.7 s (the float64 products scale
with N^2 dim: 1000 samples take ~100 s there).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from gantl_jax.metrics import swd

PYRAMID_MIN_RESOLUTION = 4
DEFAULT_BLOCK_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class Distance:
  """An image distance: L2 (``squared=False``) or squared L2 (``squared=True``) of embeddings.

  ``embed(images)`` takes a uint8 NHWC batch of at most ``batch_size`` images and returns
  float32 ``(N, dim)``; it is a pure function of each image (no batch statistics).
  """

  name: str
  embed: Callable[[np.ndarray], np.ndarray]
  squared: bool = False
  batch_size: int = 256


def check_images(images, what: str = "images") -> np.ndarray:
  """``images`` as a uint8 NHWC numpy array, or a ValueError naming ``what``."""
  x = np.asarray(images)
  if x.dtype != np.uint8 or x.ndim != 4:
    raise ValueError(f"{what}: expected uint8 NHWC images in [0, 255], got {x.dtype} {x.shape}; "
                     "convert [-1, 1] floats with gantl_jax.images.to_uint8")
  return x


def pyramid_levels(resolution: int) -> int:
  """How many pyramid levels `pyramid_embed` takes of an R px image: R, R/2, ... >= 4 px."""
  levels = 1
  while resolution % 2 == 0 and resolution // 2 >= PYRAMID_MIN_RESOLUTION:
    resolution //= 2
    levels += 1
  return levels


def pyramid_embed(images) -> np.ndarray:
  """float32 (N, dim) Laplacian-pyramid embedding of uint8 NHWC images (see the module docstring)."""
  x = check_images(images).astype(np.float32) / 255.0
  num_levels = pyramid_levels(min(x.shape[1], x.shape[2]))
  levels = swd.laplacian_pyramid(x, num_levels)
  parts = [lvl.reshape(len(x), -1) / np.float32(np.sqrt(lvl[0].size * num_levels)) for lvl in levels]
  return np.concatenate(parts, axis=1)


def pyramid_distance() -> Distance:
  """The weight-free Laplacian-pyramid distance (RMS difference over levels, [0, 1] units)."""
  return Distance("pyramid", pyramid_embed, squared=False)


def embed(distance: Distance, images, what: str = "images") -> np.ndarray:
  """float32 (N, dim) embeddings of all ``images``, ``distance.batch_size`` at a time."""
  x = check_images(images, what)
  if not len(x):
    raise ValueError(f"{what}: no images")
  step = max(1, int(distance.batch_size))
  return np.concatenate([np.asarray(distance.embed(x[s:s + step]), np.float32)
                         for s in range(0, len(x), step)])


# What each named set is called in errors about its images.
_SET_NAMES = {"samples": "samples", "train": "training images", "heldout": "held-out images"}


def embed_sets(distance: Distance, **images) -> dict[str, np.ndarray]:
  """{name: embeddings} of each named image set given (``samples=``, ``train=``, ``heldout=``; a
  set given as None is left out), so that the diagnostics of one evaluation embed each set once."""
  return {name: embed(distance, x, _SET_NAMES.get(name, name)) for name, x in images.items() if x is not None}


def pairwise(distance: Distance, a: np.ndarray, b: np.ndarray | None = None, *,
             block_bytes: int = DEFAULT_BLOCK_BYTES) -> np.ndarray:
  """float64 (N, M) distances between embeddings ``a`` (N, dim) and ``b`` (M, dim) (``b=None``: a).

  ``|x - y|^2 = |x|^2 + |y|^2 - 2 x.y`` in float64, blocks of rows and columns converted at
  most ``block_bytes`` at a time; rounding below zero is clipped. With ``b=None`` the result is
  exactly symmetric with a zero diagonal.
  """
  same = b is None
  b = a if same else b
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(f"expected (N, dim) and (M, dim) embeddings of one dim, got {a.shape} and {b.shape}")
  rows = max(1, int(block_bytes // (8 * max(1, a.shape[1]))))
  out = np.zeros((len(a), len(b)), np.float64)
  norm_b = np.einsum("ij,ij->i", b, b, dtype=np.float64)
  for i in range(0, len(a), rows):
    ai = a[i:i + rows].astype(np.float64)
    norm_a = np.einsum("ij,ij->i", ai, ai)
    for j in range(0, len(b), rows):
      if same and j + rows <= i:  # the lower triangle is filled from the upper one below
        continue
      bj = b[j:j + rows].astype(np.float64)
      out[i:i + rows, j:j + rows] = norm_a[:, None] + norm_b[None, j:j + rows] - 2.0 * (ai @ bj.T)
  np.maximum(out, 0.0, out=out)
  if same:
    upper = np.triu(out, 1)
    out = upper + upper.T
  return out if distance.squared else np.sqrt(out)


def distances(distance: Distance, a_images, b_images=None, *, what=("images", "images")) -> np.ndarray:
  """float64 (N, M) distances between two uint8 NHWC image sets (``b_images=None``: within a)."""
  a = embed(distance, a_images, what[0])
  b = None if b_images is None else embed(distance, b_images, what[1])
  return pairwise(distance, a, b)


def upper_triangle(matrix: np.ndarray) -> np.ndarray:
  """The entries above the diagonal of a square matrix, row by row: each pair i < j once."""
  return matrix[np.triu_indices(len(matrix), 1)]
