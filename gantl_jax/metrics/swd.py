"""Sliced Wasserstein distance (SWD) between two image sets, as in Progressive GAN.

Karras et al. 2018 ("Progressive Growing of GANs", section 5) compare the
distributions of small patches of the two sets at every scale of a Laplacian
pyramid. No network weights are involved, so this metric always runs: in the
demo, in tests, offline.

Per image set (an `SWDAccumulator`, fed batch by batch):
  1. Laplacian pyramid of each image, from its resolution R down to 16 px:
     levels R, R/2, ..., halving while the half is a whole number >= 16
     (one level, the image itself, when R < 32). The filter is the 5-tap
     binomial [1, 4, 6, 4, 1] / 16 on each axis, down (blur, keep even
     pixels) and up (insert zeros, blur, x4), with borders reflected without
     repeating the edge pixel (scipy.ndimage's 'mirror', as PGGAN's code).
     The last level is the low-pass image, the others band-pass details.
  2. 128 random 7x7 patches per image and level: descriptors of C*7*7 values
     (channel-major).
  3. Descriptors normalised per level and colour channel: minus the mean and
     divided by the std of that channel over all descriptors of the level
     that the set has seen (each set by its own statistics, as PGGAN).
Then per level, between two sets (`compute_swd`):
  4. 4 repeats x 128 random unit directions in descriptor space; both sets are
     projected, sorted, and the mean absolute difference of the sorted values
     (the 1-D Wasserstein-1 distance along that direction) is averaged over
     the 512 directions. Sets of different sizes are compared at the smaller
     size: the larger one is subsampled, uniformly without replacement and
     seeded, so that sorted values pair one to one.
  5. Reported x 10^3 per level, and averaged over levels:
       {'swd_r64': ..., 'swd_r32': ..., 'swd_r16': ..., 'swd_avg': ...}
     'swd_rS' is level S px (S = R is the finest detail, the smallest S the
     low-pass image); 'swd_avg' is the plain mean of the levels. Lower is
     closer; two samples of one distribution give a small positive floor,
     from the finite number of descriptors.

Input convention: uint8 NHWC images in [0, 255], i.e. what a generator gives
after quantisation; `gantl_jax.images.to_uint8` converts float images in [-1, 1]. Quantising
first means reals and fakes go through the same rounding.

Memory is flat in the number of images: each level keeps at most
`max_descriptors` descriptors, a uniform sample of all it has seen (reservoir
sampling), so an accumulator holds at most max_descriptors * C*49 * 4 bytes
per level: with the default 2**17, 77 MB per level for RGB, 154 MB at 32 px
and 231 MB at 64 px. The normalisation statistics are running sums over every
descriptor seen. `max_descriptors=None` keeps everything, as PGGAN does
(128 * C*49 * 4 bytes = 75 kB per image and level for RGB, plus up to 50%
while the buffer grows). `compute_swd` needs, per level, two normalised
copies and two blocks of 128 projections of the compared descriptors on top.

The floor between two samples of one distribution falls as more descriptors
are compared, so values are comparable only at equal `max_descriptors` and
image counts. Measured on the synthetic domains at 32 px, 5000 images a set
(swd_avg): photo against disjoint photo 10.4 / 7.5 / 6.0 / 4.6 / 3.8 with
2**15 / 2**16 / 2**17 / 2**18 / all (640K) descriptors a level; photo
against anime 106.7 to 108.0 for every cap.

Determinism: the patch positions of image i (counted over all `add` calls of
one accumulator) at level S, and whether its descriptors enter the reservoir,
come from `np.random.default_rng([seed, S, i, tag])`; the directions and the
subsample of step 4 from `[seed, S, tag]` of `compute_swd`'s seed. A result is
therefore a function of the seeds and of the order of the images, and not of
how they were split into batches. Reordering images draws other patches: the
value changes within its sampling noise. Two accumulators with one seed take
their i-th images' patches at the same positions.

Differences from PGGAN's code (metrics/sliced_wasserstein.py there): seeded
per-image random numbers instead of the global numpy RNG (values agree in
distribution, not bit for bit); the descriptor cap; unequal set sizes allowed;
a constant channel is left unscaled instead of divided by a zero std.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

PATCH_SIZE = 7
PATCHES_PER_IMAGE = 128
DIR_REPEATS = 4
DIRS_PER_REPEAT = 128
MIN_RESOLUTION = 16
DEFAULT_MAX_DESCRIPTORS = 1 << 17

# Each stream's tag is the last, nonzero word of its seed: SeedSequence treats
# trailing zero words as absent, so a zero tag could alias another stream.
_PATCHES, _DIRECTIONS, _SUBSET = 1, 2, 3

_TAPS = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)


def pyramid_resolutions(resolution: int) -> list[int]:
  """Level sizes of an R px image: R, R/2, ..., halving while the half is a whole number >= 16."""
  sizes = [int(resolution)]
  while sizes[-1] % 2 == 0 and sizes[-1] // 2 >= MIN_RESOLUTION:
    sizes.append(sizes[-1] // 2)
  return sizes


def _binomial(x: np.ndarray, axis: int, step: int, gain: float) -> np.ndarray:
  """5-tap binomial filter along `axis` with reflected borders, keeping every `step`-th output."""
  pad = [(0, 0)] * x.ndim
  pad[axis] = (2, 2)
  p = np.pad(x, pad, mode="reflect")  # a b c d -> c b | a b c d | c b: the edge is not repeated
  n = x.shape[axis]
  out = None
  for k, tap in enumerate(_TAPS):
    index = [slice(None)] * x.ndim
    index[axis] = slice(k, k + n, step)
    term = p[tuple(index)] * (tap * gain)
    out = term if out is None else out + term
  return out


def pyr_down(x: np.ndarray) -> np.ndarray:
  """Blurs NHWC images and keeps the even rows and columns: (N, H, W, C) -> (N, H/2, W/2, C)."""
  return _binomial(_binomial(x, 1, 2, 1.0), 2, 2, 1.0)


def pyr_up(x: np.ndarray) -> np.ndarray:
  """Inserts zero rows and columns and blurs (x4 to keep the mean): (N, H, W, C) -> (N, 2H, 2W, C)."""
  n, h, w, c = x.shape
  z = np.zeros((n, 2 * h, 2 * w, c), x.dtype)
  z[:, ::2, ::2] = x
  return _binomial(_binomial(z, 1, 1, 2.0), 2, 1, 2.0)


def laplacian_pyramid(images, num_levels: int | None = None) -> list[np.ndarray]:
  """Laplacian pyramid of NHWC images, finest level first.

  With G_0 the images and G_{k+1} = pyr_down(G_k), level k < L-1 is
  G_k - pyr_up(G_{k+1}) and the last level is G_{L-1}, so
  `reconstruct_laplacian_pyramid` inverts it exactly up to rounding.
  `num_levels` defaults to `len(pyramid_resolutions(H))`; H and W must be
  divisible by 2**(num_levels - 1). Float inputs keep their dtype, others
  are computed in float32.
  """
  x = np.asarray(images)
  if x.ndim != 4:
    raise ValueError(f"expected NHWC images, got shape {x.shape}")
  x = x.astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32, copy=False)
  if num_levels is None:
    num_levels = len(pyramid_resolutions(x.shape[1]))
  scale = 2 ** (num_levels - 1)
  if num_levels < 1 or x.shape[1] % scale or x.shape[2] % scale:
    raise ValueError(f"{num_levels} levels need H and W divisible by {scale}, got {x.shape[1:3]}")
  levels = [x]
  for _ in range(num_levels - 1):
    low = pyr_down(levels[-1])
    levels[-1] = levels[-1] - pyr_up(low)
    levels.append(low)
  return levels


def reconstruct_laplacian_pyramid(levels: Sequence[np.ndarray]) -> np.ndarray:
  """The images whose `laplacian_pyramid` is `levels` (finest first)."""
  x = levels[-1]
  for detail in reversed(levels[:-1]):
    x = pyr_up(x) + detail
  return x


def _draw_patches(seed: int, size: int, first_image: int, n: int) -> tuple[np.ndarray, np.ndarray]:
  """Patch corners (n, P, 2) and reservoir uniforms (n, P) of images first_image.. at a level of `size` px."""
  corners = np.empty((n, PATCHES_PER_IMAGE, 2), np.int64)
  uniforms = np.empty((n, PATCHES_PER_IMAGE))
  for k in range(n):
    # One generator per image, so an image's draws do not depend on its batch-mates.
    rng = np.random.default_rng([seed, size, first_image + k, _PATCHES])
    corners[k] = rng.integers(0, size - PATCH_SIZE + 1, size=(PATCHES_PER_IMAGE, 2))
    uniforms[k] = rng.random(PATCHES_PER_IMAGE)
  return corners, uniforms


def _extract(level: np.ndarray, corners: np.ndarray) -> np.ndarray:
  """Descriptors (n * P, C*7*7) of the 7x7 patches of `level` (n, S, S, C) at `corners` (n, P, 2)."""
  windows = np.lib.stride_tricks.sliding_window_view(level, (PATCH_SIZE, PATCH_SIZE), axis=(1, 2))
  image = np.arange(len(level))[:, None]
  return windows[image, corners[..., 0], corners[..., 1]].reshape(-1, level.shape[-1] * PATCH_SIZE**2)


class SWDAccumulator:
  """The patch descriptors of one image set, per pyramid level, fed batch by batch.

      real = SWDAccumulator(seed=0)
      for batch in batches:          # uint8 (N, R, R, C), the same R and C every time
        real.add(batch)
      compute_swd(real, fake)        # fake: another accumulator, same R and C

  Keeps at most `max_descriptors` descriptors per level, a uniform random
  sample of all seen (None: keep all); see the module docstring for memory
  and determinism. An accumulator can be compared with several others.
  """

  def __init__(self, *, seed: int = 0, max_descriptors: int | None = DEFAULT_MAX_DESCRIPTORS):
    if max_descriptors is not None and max_descriptors < 1:
      raise ValueError(f"max_descriptors must be >= 1 or None, got {max_descriptors}")
    self.seed = int(seed)
    self.max_descriptors = max_descriptors
    self.num_images = 0
    self.resolutions: list[int] = []
    self.channels = 0
    self._kept: dict[int, np.ndarray] = {}
    self._sum: dict[int, np.ndarray] = {}
    self._sumsq: dict[int, np.ndarray] = {}

  @property
  def num_seen(self) -> int:
    """Descriptors seen per level."""
    return self.num_images * PATCHES_PER_IMAGE

  @property
  def num_kept(self) -> int:
    """Descriptors kept per level."""
    return self.num_seen if self.max_descriptors is None else min(self.num_seen, self.max_descriptors)

  @property
  def nbytes(self) -> int:
    """Bytes held by the kept descriptors, all levels (allocated capacity)."""
    return sum(buf.nbytes for buf in self._kept.values())

  def add(self, images: np.ndarray) -> None:
    """Adds a batch of uint8 NHWC images in [0, 255] (see `images.to_uint8` for [-1, 1] floats)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
      raise TypeError(f"SWD takes uint8 images in [0, 255], got {images.dtype}; convert [-1, 1] floats with gantl_jax.images.to_uint8")
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
      raise ValueError(f"expected square NHWC images, got shape {images.shape}")
    if not self.resolutions:
      if images.shape[1] < PATCH_SIZE:
        raise ValueError(f"images of {images.shape[1]} px are smaller than a {PATCH_SIZE}x{PATCH_SIZE} patch")
      self.resolutions = pyramid_resolutions(images.shape[1])
      self.channels = images.shape[3]
    elif images.shape[1:] != (self.resolutions[0], self.resolutions[0], self.channels):
      raise ValueError(f"images of shape {images.shape[1:]} after images of {self.resolutions[0]} px "
                       f"and {self.channels} channels")
    if not len(images):
      return
    for size, level in zip(self.resolutions, laplacian_pyramid(images, len(self.resolutions))):
      corners, uniforms = _draw_patches(self.seed, size, self.num_images, len(images))
      desc = _extract(level, corners)
      per_channel = desc.reshape(len(desc), self.channels, -1)
      self._sum[size] = self._sum.get(size, 0.0) + per_channel.sum((0, 2), dtype=np.float64)
      self._sumsq[size] = self._sumsq.get(size, 0.0) + np.square(per_channel, dtype=np.float64).sum((0, 2))
      self._keep(size, desc, uniforms.reshape(-1))
    self.num_images += len(images)

  def _keep(self, size: int, desc: np.ndarray, uniforms: np.ndarray) -> None:
    """Reservoir sampling (Algorithm R), vectorised over one batch of descriptors."""
    cap = self.max_descriptors or np.inf
    t = self.num_seen + np.arange(len(desc))  # global index of each descriptor
    buf = self._buffer(size, int(min(t[-1] + 1, cap)), desc.shape[1])
    fill = t < cap
    buf[t[fill]] = desc[fill]
    # Descriptor t >= cap replaces slot j ~ U{0..t} when j < cap. Each decision
    # ignores the buffer's contents, so taking a batch at once equals one by one
    # as long as a slot drawn twice ends with the later descriptor.
    slot = (uniforms * (t + 1)).astype(np.int64)
    take = np.flatnonzero(~fill & (slot < cap))
    if len(take):
      _, last_from_end = np.unique(slot[take][::-1], return_index=True)
      take = take[len(take) - 1 - last_from_end]
      buf[slot[take]] = desc[take]

  def _buffer(self, size: int, needed: int, dim: int) -> np.ndarray:
    """Level `size`'s buffer, grown (by half, up to the cap) to at least `needed` rows."""
    buf = self._kept.get(size)
    if buf is None or len(buf) < needed:
      # Growing by half, not doubling: copies stay amortised O(1) a row, and
      # keeping everything overshoots by at most 50%.
      rows = max(needed, 3 * len(buf) // 2 if buf is not None else 0)
      if self.max_descriptors is not None:
        rows = min(rows, self.max_descriptors)
      grown = np.empty((rows, dim), np.float32)
      if buf is not None:
        grown[: len(buf)] = buf
      self._kept[size] = buf = grown
    return buf

  def descriptors(self, size: int) -> np.ndarray:
    """The kept descriptors of level `size`, normalised per channel: float32 (num_kept, C*7*7).

    The result is the transpose of a C-contiguous (C*7*7, num_kept) array,
    the layout `sliced_wasserstein` projects from without another copy.
    """
    if size not in self._kept:
      raise ValueError(f"no descriptors of level {size} (levels: {self.resolutions})")
    count = self.num_seen * PATCH_SIZE**2
    mean = self._sum[size] / count
    std = np.sqrt(np.maximum(self._sumsq[size] / count - mean**2, 0.0))
    std = np.where(std > 0, std, 1.0)  # a constant channel is all zeros after centring; leave it so
    n = self.num_kept
    out = np.ascontiguousarray(self._kept[size][:n].T)  # (C*49, n)
    per_channel = out.reshape(self.channels, -1, n)
    # float32 statistics: float64 ones would upcast (and double) the whole set.
    per_channel -= mean.astype(np.float32)[:, None, None]
    per_channel *= (1 / std).astype(np.float32)[:, None, None]
    return out.T


  def to_arrays(self) -> dict[str, np.ndarray]:
    """The state as plain arrays (for ``np.savez``; no pickle): `from_arrays` restores an
    accumulator that compares, and goes on adding, exactly as this one."""
    out = dict(seed=np.array(self.seed), num_images=np.array(self.num_images),
               max_descriptors=np.array(-1 if self.max_descriptors is None else self.max_descriptors),
               resolutions=np.array(self.resolutions, np.int64), channels=np.array(self.channels))
    for size in self.resolutions:
      out.update({f"kept_{size}": self._kept[size][: self.num_kept], f"sum_{size}": self._sum[size],
                  f"sumsq_{size}": self._sumsq[size]})
    return out

  @classmethod
  def from_arrays(cls, arrays) -> "SWDAccumulator":
    """The inverse of `to_arrays`."""
    cap = int(arrays["max_descriptors"])
    acc = cls(seed=int(arrays["seed"]), max_descriptors=None if cap < 0 else cap)
    acc.num_images = int(arrays["num_images"])
    acc.resolutions = [int(r) for r in arrays["resolutions"]]
    acc.channels = int(arrays["channels"])
    for size in acc.resolutions:
      acc._kept[size] = np.array(arrays[f"kept_{size}"], np.float32)
      acc._sum[size] = np.asarray(arrays[f"sum_{size}"], np.float64)
      acc._sumsq[size] = np.asarray(arrays[f"sumsq_{size}"], np.float64)
    if any(len(acc._kept[s]) != acc.num_kept for s in acc.resolutions):
      raise ValueError(f"kept descriptors do not match {acc.num_images} images")
    return acc


def accumulate(batches: Iterable[np.ndarray], *, seed: int = 0,
               max_descriptors: int | None = DEFAULT_MAX_DESCRIPTORS) -> SWDAccumulator:
  """A new `SWDAccumulator` fed every batch of `batches` (uint8 NHWC arrays), in order."""
  acc = SWDAccumulator(seed=seed, max_descriptors=max_descriptors)
  for batch in batches:
    acc.add(batch)
  return acc


def swd_of_images(a: np.ndarray, b: np.ndarray, *, seed: int = 0, batch_size: int = 256) -> dict[str, float]:
  """SWD x 10^3 (per level and ``swd_avg``) between two uint8 NHWC image arrays held in memory, each
  accumulated ``batch_size`` images at a time with the same ``seed``."""
  def batches(x):
    return (x[i:i + batch_size] for i in range(0, len(x), batch_size))
  return compute_swd(accumulate(batches(a), seed=seed), accumulate(batches(b), seed=seed), seed=seed)


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, *, seed: int | Sequence[int] = 0,
                       dir_repeats: int = DIR_REPEATS, dirs_per_repeat: int = DIRS_PER_REPEAT) -> float:
  """Mean 1-D Wasserstein-1 distance between projections of a (n, D) and b (m, D) on random unit directions.

  Uses dir_repeats * dirs_per_repeat directions, uniform on the sphere and
  drawn from `seed` (an int or a sequence of ints). If n != m the larger set is
  subsampled to the smaller size (uniformly without replacement, from `seed`)
  so that the sorted projections pair one to one. Not scaled by 10^3.
  """
  a = np.asarray(a, np.float32)
  b = np.asarray(b, np.float32)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not len(a) or not len(b):
    raise ValueError(f"expected two non-empty (n, D) descriptor sets of one D, got {a.shape} and {b.shape}")
  words = [int(s) for s in np.atleast_1d(seed)]
  if len(a) != len(b):
    small, big = (a, b) if len(a) < len(b) else (b, a)
    subset = np.random.default_rng(words + [_SUBSET]).choice(len(big), len(small), replace=False)
    a, b = small, big[np.sort(subset)]
  # Numpy, with each direction's projections as one contiguous row: sorting
  # rows was ~6x faster than sorting columns (128 x 131072 float32: 0.035 s
  # against 0.2 s on 2 cores), and with (D, n) descriptors the projection is a
  # plain matrix product that writes those rows. The transposes cost nothing
  # for `SWDAccumulator.descriptors`' layout, and in-place sorts and
  # differences keep the transient memory at two projection blocks. A jitted
  # jax.numpy version of this step was 20x slower on CPU, where the metric runs.
  at, bt = np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)
  pa, pb = np.empty((2, dirs_per_repeat, len(a)), np.float32)
  rng = np.random.default_rng(words + [_DIRECTIONS])
  total = 0.0
  for _ in range(dir_repeats):
    dirs = rng.standard_normal((dirs_per_repeat, a.shape[1]))
    dirs = (dirs / np.linalg.norm(dirs, axis=1, keepdims=True)).astype(np.float32)
    np.matmul(dirs, at, out=pa)
    np.matmul(dirs, bt, out=pb)
    pa.sort(axis=1)
    pb.sort(axis=1)
    np.subtract(pa, pb, out=pa)
    total += float(np.abs(pa, out=pa).mean(dtype=np.float64))
  return total / dir_repeats


def compute_swd(a: SWDAccumulator, b: SWDAccumulator, *, seed: int = 0, dir_repeats: int = DIR_REPEATS,
                dirs_per_repeat: int = DIRS_PER_REPEAT) -> dict[str, float]:
  """SWD x 10^3 between two image sets per level, {'swd_r<S>': ...} finest first, and 'swd_avg'.

  Both accumulators must hold images of the same resolution and channels.
  Level S uses the directions (and subsample) of seed (seed, S).
  """
  if not a.num_images or not b.num_images:
    raise ValueError("both sets need at least one image")
  if (a.resolutions, a.channels) != (b.resolutions, b.channels):
    raise ValueError(f"sets differ: levels {a.resolutions} x {a.channels} channels against "
                     f"{b.resolutions} x {b.channels}")
  out = {}
  for size in a.resolutions:
    dist = sliced_wasserstein(a.descriptors(size), b.descriptors(size), seed=(seed, size),
                              dir_repeats=dir_repeats, dirs_per_repeat=dirs_per_repeat)
    out[f"swd_r{size}"] = 1e3 * dist
  out["swd_avg"] = float(np.mean(list(out.values())))
  return out
