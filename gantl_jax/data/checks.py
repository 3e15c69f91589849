"""The rules of a run config's `data` section, and the data layer's error type.

Kept apart from the builders and the pipeline so that `config.resolve` can
check the section at start without importing tensorflow_datasets. The
defaults and the meaning of every key are in `gantl_jax/defaults.py`.
"""
from __future__ import annotations

from typing import Any

from gantl_jax.data import synthetic
from gantl_jax.errors import DataError

SOURCES = ("synthetic", "folder", "idx")
# A synthetic dataset of n images holds images 0..n-1 of its domain and seed; images from here on
# are in none (data.num_images must stay below), so every domain has an unlimited held-out set.
HELD_OUT_START = 1_000_000


def check_config(c: Any) -> None:
  """Raises DataError naming the first `data.*` key whose value cannot work.

  Only values are checked here; whether `data.folder` is set and holds
  images, or `data.idx_dir` the IDX files, is checked by `prepare`, where they are read.
  """
  if c.source not in SOURCES:
    raise DataError(f"data.source must be 'synthetic', 'folder' or 'idx', got {c.source!r}")
  if c.source == "synthetic":
    try:
      synthetic.domain_id(c.domain)
    except ValueError as e:
      raise DataError(f"data.domain: {e}") from None
    if not 0 < c.num_images <= HELD_OUT_START:
      raise DataError(f"data.num_images must be > 0 and at most {HELD_OUT_START} for data.source='synthetic' "
                      f"(images from there on are the held-out set), got {c.num_images}")
  if c.source == "idx":
    from gantl_jax.data import idx  # pylint: disable=import-outside-toplevel  (numpy and PIL, no tfds)
    idx.parse_classes(c.classes)
  if c.n_shot < 0:
    raise DataError(f"data.n_shot must be >= 0 (0 = all images), got {c.n_shot}")
  for key in ("prefetch", "num_workers"):
    if c[key] < 0:
      raise DataError(f"data.{key} must be >= 0, got {c[key]}")
