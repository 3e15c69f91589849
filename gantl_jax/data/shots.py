"""The order in which images are taken for an n-shot subset, shared by the folder, IDX and emoji
sources (numpy only: no tfds)."""
import numpy as np


def n_shot_order(num_files: int, seed: int) -> np.ndarray:
  """The order in which files are tried for an n-shot subset.

  Depends on the seed only (not on n), so for one seed the 10-shot subset is
  inside the 100-shot one.
  """
  return np.random.default_rng([seed, 0x5E7]).permutation(num_files)
