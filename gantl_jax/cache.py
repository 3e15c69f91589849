"""Arrays computed once and kept in files: statistics of real images beside the prepared data
(``<data_path>/eval_cache/``), so that each run, and each evaluation of a run, computes them once,
and a run's Fisher information (``fewshot/ewc.py``).

A cache file is a plain ``.npz`` of arrays (no pickle), written atomically. A file that cannot be
read (truncated, overwritten, bits flipped) is reported and recomputed by the caller; a cache
directory that cannot be written only costs the recomputation. No checksum of its own is stored:
reading a member to its end checks the zip format's CRC-32 of it, so a changed payload fails to
read instead of giving other numbers.
"""
from __future__ import annotations

import os
import uuid
from typing import Callable, Optional, TypeVar

import numpy as np
from absl import logging

T = TypeVar("T")


def path_for(reals, name: str) -> Optional[str]:
  """``<reals.cache_dir>/<name>_<reals.cache_tag>.npz``, or None when ``reals`` (a
  `metrics.RealImages`, or any iterable of batches) names no cache."""
  cache_dir, tag = getattr(reals, "cache_dir", None), getattr(reals, "cache_tag", None)
  return os.path.join(cache_dir, f"{name}_{tag}.npz") if cache_dir and tag else None


def read(path: Optional[str], from_arrays: Callable[[dict], T], what: str) -> Optional[T]:
  """``from_arrays`` of the arrays cached in ``path``; None when there is none or it cannot be read
  (a warning names the file)."""
  if not path or not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = dict(f)
  # numpy's and zipfile's readers raise a dozen types on a damaged file (BadZipFile on a bad CRC or
  # a truncated archive; ValueError, EOFError, tokenize.TokenError on a damaged header;
  # NotImplementedError or zlib.error on a flipped flag), and the file is only a cache.
  except Exception as e:  # pylint: disable=broad-except
    return _unreadable(path, what, e)
  try:
    return from_arrays(arrays)
  except (KeyError, ValueError, TypeError, IndexError) as e:  # arrays missing or inconsistent
    return _unreadable(path, what, e)


def _unreadable(path: str, what: str, error: Exception) -> None:
  logging.warning("ignoring unreadable %s cache %s, recomputing it (%s: %s)", what, path,
                  type(error).__name__, error)
  return None


def write(path: Optional[str], arrays: dict[str, np.ndarray], what: str) -> None:
  """Writes ``arrays`` to ``path`` atomically (a reader sees the old file or the whole new one)."""
  if not path:
    return
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
  except OSError as e:
    logging.warning("eval: could not cache %s in %s (%s)", what, os.path.dirname(path), e)
