"""The evaluation cache (gantl_jax/cache.py): a damaged file is recomputed, never trusted
and never fatal."""
import os

import numpy as np
import pytest
from absl import logging as absl_logging

from gantl_jax import cache
from gantl_jax import metrics
from gantl_jax.metrics import swd

NAME = f"swd_s5_m{swd.DEFAULT_MAX_DESCRIPTORS}_v{metrics.SWD_CACHE_VERSION}_n8.npz"


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)


def reals_in(directory, images=None):
  class Reals(list):  # what metrics.RealImages tells an evaluator
    cache_dir, cache_tag = str(directory), "n8"
  return Reals([images] if images is not None else [])


def arrays_of(acc):
  return {k: np.asarray(v) for k, v in acc.to_arrays().items()}


def same(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def cached(images, tmp_path_factory):
  """(the cache file's bytes, the accumulator's arrays) of the real images."""
  directory = tmp_path_factory.mktemp("eval_cache")
  acc = metrics.cached_swd_reals(reals_in(directory, images), seed=5)
  assert os.listdir(directory) == [NAME]
  return (directory / NAME).read_bytes(), arrays_of(acc)


def test_truncated_cache_is_recomputed_with_a_warning(cached, images, tmp_path, monkeypatch):
  data, want = cached
  warnings = []
  monkeypatch.setattr(absl_logging, "warning", lambda msg, *args: warnings.append(msg % args))
  for size in (0, 1, 100, len(data) // 2, len(data) - 1):
    (tmp_path / NAME).write_bytes(data[:size])
    acc = metrics.cached_swd_reals(reals_in(tmp_path, images), seed=5)
    assert same(arrays_of(acc), want)
    assert (tmp_path / NAME).read_bytes() == data  # replaced by the recomputed one
    assert len(warnings) == 1 and f"unreadable SWD descriptors cache {tmp_path / NAME}" in warnings.pop()


def test_bit_flips_never_give_other_numbers(cached, tmp_path, monkeypatch):
  """One bit flipped in a byte of the file, for every byte of the zip and array headers at its ends
  and 500 random bytes of the arrays' payload: the read either fails (and the caller recomputes)
  or gives the cached numbers exactly (a flip in a field nobody reads, e.g. a time stamp)."""
  data, want = cached
  monkeypatch.setattr(absl_logging, "warning", lambda *a: None)
  path = tmp_path / NAME
  payload = np.random.default_rng(1).integers(1000, len(data) - 2000, 500)
  positions = sorted(set(range(1000)) | set(range(len(data) - 2000, len(data))) | set(payload.tolist()))
  unreadable = 0
  for i in positions:
    flipped = bytearray(data)
    flipped[i] ^= 1 << (i % 8)
    path.write_bytes(bytes(flipped))
    acc = cache.read(str(path), swd.SWDAccumulator.from_arrays, "SWD descriptors")
    if acc is None:
      unreadable += 1
    else:
      assert same(arrays_of(acc), want), f"byte {i}"
      assert i not in payload, f"byte {i}"  # the CRC-32 covers the payload
  assert unreadable > 0.8 * len(positions)
