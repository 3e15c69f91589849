"""FID and KID between generated and real images, on the FID Inception's 2048-d pool features.

Both compare the distributions of `inception.InceptionV3` features (NVIDIA's preprocessing, see
`inception`) of two image sets; lower is closer, 0 for identical distributions.

**FID** (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to the two feature
sets, ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``. The covariances are population
covariances (divided by N, as stylegan2-ada-pytorch; pytorch-fid and clean-fid divide by N - 1,
which gives a slightly different value for small sets). ``tr((S1 S2)^(1/2))`` is computed with
numpy alone (`trace_sqrt_product`): with S1 = V L V^T and B = V L^(1/2), S1 S2 has the
eigenvalues of the symmetric B^T S2 B, so the trace is the sum of their square roots. This
handles singular covariances (fewer images than 2048 + 1, as in few-shot sets) without
pytorch-fid's offset, works on the rank of S1 only (the smaller set goes first), and agrees with
``scipy.linalg.sqrtm`` to 2e-13 relative on full-rank 2048-d covariances (measured); on a
singular product it drops the null directions' rounding noise that sqrtm keeps (2e-8 relative).

**KID** (Bińkowski et al. 2018): the unbiased estimator of the squared MMD with the kernel
``k(x, y) = (x.y / d + 1)^3``, averaged over 100 random subsets of at most 1000 features of each
set (drawn without replacement, seeded), as stylegan2-ada-pytorch's
``kernel_inception_distance.py``. Reported raw (not x 10^3). Dot products are float32 matrix
products; cubes and sums are float64, which moves the value by ~6e-5 relative from NVIDIA's
all-float32 code (measured) and makes it independent of summation order. When both sets have at
most ``max_subset_size`` features every subset is the whole set, so it is computed once
(0.3 s for 1000 against 1000); otherwise each of the 100 subsets costs three 1000 x 2048 x 1000
products.

Memory: feature statistics are running float64 sums (`FeatureStats`: a 2048-vector and a
2048 x 2048 matrix, 32 MB a set), flat in the number of images. KID needs the features
themselves: 2048 float32 = 8 kB per image and set (80 MB for 10k images). Images pass through
the network in fixed-size batches (`extract_features`), sharded over all devices of all processes.

Time, measured on this project's 2-core CPU machine while shared with other jobs (load 3-6):
170-220 s of network per 1000 images at 32 px (one process, 1 device; 0.08 s an image when
the cores were free), ~15 s for FID's eigenproblems at 2048 full-rank dimensions.

Real-image statistics are cached (`cached_real_stats`) beside the prepared dataset, keyed by the
image count and the SHA-256 of the weight file, so each run computes them once.
"""
from __future__ import annotations

import functools
from typing import Any, Iterable, Iterator

import jax
import ml_collections
import numpy as np
from absl import logging

from gantl_jax import cache
from gantl_jax import errors
from gantl_jax.errors import ConfigError
from gantl_jax.metrics import inception
from gantl_jax.training import parallel

METRICS = ("kid", "fid")
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
# Larger CPU batches only cost cache misses: 16 images a batch took 172-178 s per 1000 images
# on 2 cores, 64 a batch 221 s (measured side by side).
CPU_BATCH_PER_DEVICE = 16
# Bump when the features of the same images and weights change (preprocessing, network): old
# cached real statistics then stop matching.
FEATURE_VERSION = 1


# ---------------------------------------------------------------------------
# Statistics and distances.


class FeatureStats:
  """Running statistics of feature vectors, fed batch by batch; optionally the features too.

  Sums are float64 and taken around the first batch's mean, so the covariance does not lose
  digits to a large common offset.
  """

  def __init__(self, *, keep_features: bool = False):
    self.keep_features = keep_features
    self.num = 0
    self._shift = None
    self._sum = None
    self._outer = None
    self._kept: list[np.ndarray] = []

  def add(self, features: np.ndarray) -> None:
    """Adds (n, d) features."""
    x = np.asarray(features)
    if x.ndim != 2 or (self._sum is not None and x.shape[1] != len(self._sum)):
      raise ValueError(f"expected (n, {len(self._sum) if self._sum is not None else 'd'}) features, got {x.shape}")
    if not len(x):
      return
    x64 = x.astype(np.float64)
    if self._shift is None:
      self._shift = x64.mean(0)
      self._sum = np.zeros(x.shape[1])
      self._outer = np.zeros((x.shape[1], x.shape[1]))
    centred = x64 - self._shift
    self._sum += centred.sum(0)
    self._outer += centred.T @ centred
    self.num += len(x)
    if self.keep_features:
      self._kept.append(x.astype(np.float32))

  def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and population covariance (d, d), float64."""
    if self.num < 1:
      raise ValueError("no features")
    m = self._sum / self.num
    cov = self._outer / self.num - np.outer(m, m)
    return self._shift + m, (cov + cov.T) / 2

  def features(self) -> np.ndarray:
    """All features added, (num, d) float32 (needs keep_features=True)."""
    if not self.keep_features:
      raise ValueError("features were not kept (keep_features=False)")
    if len(self._kept) > 1:
      self._kept = [np.concatenate(self._kept)]
    return self._kept[0] if self._kept else np.zeros((0, 0), np.float32)

  def to_arrays(self) -> dict[str, np.ndarray]:
    """The state as plain arrays (for ``np.savez``; no pickle)."""
    out = dict(num=np.array(self.num), shift=self._shift, sum=self._sum, outer=self._outer)
    if self.keep_features:
      out["features"] = self.features()
    return out

  @classmethod
  def from_arrays(cls, arrays) -> "FeatureStats":
    """The inverse of `to_arrays`."""
    stats = cls(keep_features="features" in arrays)
    stats.num = int(arrays["num"])
    stats._shift, stats._sum, stats._outer = (np.asarray(arrays[k], np.float64) for k in ("shift", "sum", "outer"))
    if stats.keep_features:
      stats._kept = [np.asarray(arrays["features"], np.float32)]
    return stats


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """tr((S1 S2)^(1/2)) for symmetric positive semi-definite S1, S2, numpy only.

  With S1 = V diag(l) V^T and B = V diag(l)^(1/2) (columns with l > 0 only), S1 S2 is similar
  to the symmetric positive semi-definite B^T S2 B on the range of S1 and zero elsewhere, so
  its square root's trace is the sum of the square roots of that matrix's eigenvalues.
  """
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  w, v = np.linalg.eigh(s1)
  keep = w > _rounding_floor(w)
  b = v[:, keep] * np.sqrt(w[keep])
  m = b.T @ (s2 @ b)
  eig = np.linalg.eigvalsh((m + m.T) / 2)
  return float(np.sqrt(np.where(eig > _rounding_floor(eig), eig, 0.0)).sum())


def _rounding_floor(eigenvalues: np.ndarray) -> float:
  """Eigenvalues up to this are rounding noise of a zero one (numpy's matrix_rank tolerance).

  The square root magnifies them: kept, the ~1e-15 noise of each null direction of a singular
  covariance would add ~3e-8 to the trace, and only ever upwards.
  """
  if not len(eigenvalues):
    return 0.0
  return float(max(eigenvalues.max(), 0.0) * len(eigenvalues) * np.finfo(np.float64).eps)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)): the Fréchet distance of two Gaussians.

  Symmetric in its two Gaussians; it is fastest with the lower-rank covariance first.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f"mismatched statistics: {mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}")
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
  """FID between two feature sets' statistics."""
  # The smaller set first: its covariance has the lower rank, and `trace_sqrt_product`'s second
  # eigenproblem then has that size (100 x 100 for 101 few-shot images instead of 2048 x 2048).
  a, b = (a, b) if a.num <= b.num else (b, a)
  return frechet_distance(*a.mean_cov(), *b.mean_cov())


def _mmd_subset(x: np.ndarray, y: np.ndarray) -> float:
  """m * unbiased MMD^2 estimate with the cubic kernel, NVIDIA's per-subset term."""
  m, d = x.shape

  def kernel_sum(a, b, skip_diagonal):
    k = (np.matmul(a, b.T).astype(np.float64) / d + 1.0) ** 3
    return k.sum() - (np.trace(k) if skip_diagonal else 0.0)

  within = kernel_sum(x, x, True) + kernel_sum(y, y, True)
  return within / (m - 1) - 2.0 * kernel_sum(x, y, False) / m


def kernel_inception_distance(fake: np.ndarray, real: np.ndarray, *, num_subsets: int = KID_SUBSETS,
                              max_subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> float:
  """KID between (n, d) feature sets: the mean over ``num_subsets`` subsets of size
  ``m = min(n_fake, n_real, max_subset_size)`` of the unbiased MMD^2 with k = (x.y/d + 1)^3.

  Subset i takes ``rng.choice(n_fake, m, replace=False)`` then ``rng.choice(n_real, m,
  replace=False)`` from ``np.random.default_rng(seed)``.
  """
  fake, real = np.asarray(fake, np.float32), np.asarray(real, np.float32)
  if fake.ndim != 2 or real.ndim != 2 or fake.shape[1] != real.shape[1]:
    raise ValueError(f"expected two (n, d) feature sets of one d, got {fake.shape} and {real.shape}")
  m = min(len(fake), len(real), max_subset_size)
  if m < 2:
    raise ValueError(f"KID needs at least 2 features a set, got {len(fake)} and {len(real)}")
  if m == len(fake) == len(real):
    # Every subset is a permutation of both whole sets, and the estimate ignores order.
    return _mmd_subset(fake, real) / m
  rng = np.random.default_rng(seed)
  total = 0.0
  for _ in range(num_subsets):
    x = fake[rng.choice(len(fake), m, replace=False)]
    y = real[rng.choice(len(real), m, replace=False)]
    total += _mmd_subset(x, y)
  return total / num_subsets / m


# ---------------------------------------------------------------------------
# Features of image batches.


def _fixed_batches(batches: Iterable[np.ndarray], size: int) -> Iterator[tuple[np.ndarray, int]]:
  """Re-cuts uint8 NHWC batches into batches of exactly ``size`` (the last zero-padded), with the
  count of real images in each: one compiled shape, whatever batches come in."""
  pending, count, shape = [], 0, None
  for batch in batches:
    batch = np.asarray(batch)
    if batch.dtype != np.uint8 or batch.ndim != 4:
      raise TypeError(f"expected uint8 NHWC image batches, got {batch.dtype} {batch.shape}; "
                      "convert [-1, 1] floats with gantl_jax.images.to_uint8")
    if shape is None:
      shape = batch.shape[1:]
    elif batch.shape[1:] != shape:
      raise ValueError(f"images of shape {batch.shape[1:]} after images of shape {shape}")
    while len(batch):
      take = min(size - count, len(batch))
      pending.append(batch[:take])
      count += take
      batch = batch[take:]
      if count == size:
        yield np.concatenate(pending), size
        pending, count = [], 0
  if count:
    pending.append(np.zeros((size - count,) + shape, np.uint8))
    yield np.concatenate(pending), count


@functools.lru_cache(maxsize=4)
def _sharded_feature_fn(mesh):
  model = inception.InceptionV3()

  @functools.partial(jax.jit, out_shardings=parallel.replicated(mesh))
  def features(params, images):
    images = jax.lax.with_sharding_constraint(images, parallel.batch_sharding(mesh))
    return model.apply({"params": params}, inception.preprocess(images, precision=model.precision))

  return features


@functools.lru_cache(maxsize=4)
def _replicated_params(weights: inception.InceptionWeights, mesh):
  return parallel.replicate(weights.params, mesh)


def extract_features(weights: inception.InceptionWeights, batches: Iterable[np.ndarray], *,
                     batch_size: int = 64, mesh=None) -> Iterator[np.ndarray]:
  """Yields the (n, 2048) float32 pool features of uint8 NHWC ``batches``, batch by batch.

  Images are re-cut into batches of ``batch_size`` (at most `CPU_BATCH_PER_DEVICE` a device on
  CPU) rounded up to a multiple of the devices of ``mesh`` (default: all devices of all
  processes) and sharded over them; every process must pass the same images, as
  `parallel.sample_batches` and `metrics.real_batches` give them.
  """
  mesh = mesh if mesh is not None else parallel.make_mesh()
  n_dev = mesh.devices.size
  per_device = -(-int(batch_size) // n_dev)
  if mesh.devices.flat[0].platform == "cpu":
    per_device = min(per_device, CPU_BATCH_PER_DEVICE)
  size = max(1, per_device) * n_dev
  fn = _sharded_feature_fn(mesh)
  params = _replicated_params(weights, mesh)
  sharding = parallel.batch_sharding(mesh)
  for images, count in _fixed_batches(batches, size):
    placed = jax.make_array_from_callback(images.shape, sharding, lambda idx, v=images: v[idx])
    yield np.asarray(fn(params, placed).addressable_data(0))[:count]


def feature_stats(weights: inception.InceptionWeights, batches: Iterable[np.ndarray], *,
                  keep_features: bool, batch_size: int = 64, mesh=None) -> FeatureStats:
  """`FeatureStats` of the images of ``batches`` (see `extract_features`)."""
  stats = FeatureStats(keep_features=keep_features)
  for features in extract_features(weights, batches, batch_size=batch_size, mesh=mesh):
    stats.add(features)
  return stats


# ---------------------------------------------------------------------------
# Real-image statistics, cached beside the prepared data.


def cache_name(weights: inception.InceptionWeights) -> str:
  """The cache name of real statistics: one per weight file and feature version (and, added by
  `cache.path_for`, per image set)."""
  return f"inception_{weights.sha256[:16]}_v{FEATURE_VERSION}"


def cached_real_stats(reals, weights: inception.InceptionWeights, *, keep_features: bool,
                      batch_size: int = 64, mesh=None) -> FeatureStats:
  """`FeatureStats` of the real images ``reals``, read from / written to the cache when ``reals``
  says where (``cache_dir`` and ``cache_tag`` attributes, as `metrics.RealImages` has them).

  A cached file without features is recomputed when ``keep_features``; an unreadable one is
  recomputed and replaced; an unwritable cache directory only costs the recomputation.
  """
  path = cache.path_for(reals, cache_name(weights))
  stats = cache.read(path, FeatureStats.from_arrays, "Inception statistics")
  if stats is not None and keep_features and not stats.keep_features:
    stats = None
  # Computing is a collective over every process's devices: all of them must take the same
  # branch, so a cache counts only when every process has it (each has its own data directory).
  if _on_every_process(stats is not None):
    logging.info("eval: real Inception statistics of %d images from %s", stats.num, path)
    return stats
  stats = feature_stats(weights, reals, keep_features=keep_features, batch_size=batch_size, mesh=mesh)
  cache.write(path, stats.to_arrays(), "Inception statistics")
  return stats


def _on_every_process(flag: bool) -> bool:
  """``flag`` and-ed over all processes (itself in a single-process run)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return bool(np.all(multihost_utils.process_allgather(np.array(flag))))


# ---------------------------------------------------------------------------
# The evaluator.


def load_configured_weights(eval_config: ml_collections.ConfigDict) -> inception.InceptionWeights | None:
  """The weights of ``eval.inception_weights``; None when it is ''. ConfigError naming the key
  when the file is missing or not an accepted Inception file."""
  path = str(eval_config.inception_weights or "")
  if not path:
    return None
  try:
    return inception.load_weights(path)
  except errors.InceptionWeightsError as e:
    raise ConfigError(
        f"eval.inception_weights={path!r}: {e}\n  Give pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
        "or NVIDIA's inception-2015-12-05.pt, or set --config.eval.inception_weights='' to skip KID and FID") from e


@functools.lru_cache(maxsize=None)
def note_skipped(names: tuple[str, ...]) -> None:
  """Logs, once per process and set of names, that KID / FID are skipped for want of weights."""
  logging.warning("eval: %s skipped: no Inception weights (set eval.inception_weights to pytorch-fid's "
                  "pt_inception-2015-12-05-6726825d.pth or NVIDIA's inception-2015-12-05.pt)", "/".join(names))


def requested(eval_config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Which of KID and FID ``eval.metrics`` names (both when it names neither)."""
  names = {n.strip() for n in str(eval_config.metrics or "").split(",")}
  return tuple(m for m in METRICS if m in names) or METRICS


def evaluate(fakes: Iterable[np.ndarray], reals: Iterable[np.ndarray],
             eval_config: ml_collections.ConfigDict, context: Any = None) -> dict[str, float]:
  """The evaluator of 'kid' and 'fid': ``{'kid': ..., 'fid': ...}`` for those ``eval.metrics`` names.

  One pass of the network over each image set serves both. With ``eval.inception_weights`` ''
  it returns {} (logged once): no value is ever made up.
  """
  del context  # the Inception metrics need the samples and the reals only
  names = requested(eval_config)
  weights = load_configured_weights(eval_config)
  if weights is None:
    note_skipped(names)
    return {}
  batch_size = int(eval_config.batch_size)
  keep = "kid" in names
  real = cached_real_stats(reals, weights, keep_features=keep, batch_size=batch_size)
  fake = feature_stats(weights, fakes, keep_features=keep, batch_size=batch_size)
  out = {}
  if "kid" in names:
    out["kid"] = kernel_inception_distance(fake.features(), real.features(), seed=int(eval_config.seed))
  if "fid" in names:
    out["fid"] = fid_from_stats(fake, real)
  return out
