"""Spearman correspondence of pairwise distances (gantl_jax.metrics.correspondence)."""
import numpy as np
import pytest
import scipy.stats

from gantl_jax.metrics import correspondence, distances
from test_distances import random_images

PYRAMID = distances.pyramid_distance()


@pytest.mark.parametrize("seed", [0, 1])
def test_spearman_against_scipy_with_ties(seed):
  rng = np.random.default_rng(seed)
  a = rng.integers(0, 7, 200).astype(np.float64)  # many ties
  b = a + rng.integers(0, 4, 200)
  np.testing.assert_allclose(correspondence.rankdata(a), scipy.stats.rankdata(a), rtol=0, atol=0)
  assert correspondence.spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b).statistic, abs=1e-12)
  c = rng.standard_normal(200)
  assert correspondence.spearman(c, b) == pytest.approx(scipy.stats.spearmanr(c, b).statistic, abs=1e-12)
  assert np.isnan(correspondence.spearman(np.ones(5), np.arange(5.0)))


def test_identical_monotone_and_permuted():
  source = random_images(40, seed=30)
  assert correspondence.correspondence(PYRAMID, source, source) == {"pyramid_correspondence": 1.0}
  d = distances.distances(PYRAMID, source)
  # An increasing transform of one side's distances leaves the ranks as they are.
  assert correspondence.correspondence_from_distances(d, np.exp(3 * d) + 2) == pytest.approx(1.0, abs=1e-12)
  # Synthetic distances with structure: points on a line. The adapted side with its rows permuted
  # (latent i no longer matches) is unrelated to the source; unpermuted it matches exactly.
  p = np.random.default_rng(31).standard_normal(60)
  line = np.abs(p[:, None] - p[None])
  perm = np.random.default_rng(32).permutation(60)
  assert abs(correspondence.correspondence_from_distances(line, line[np.ix_(perm, perm)])) < 0.1
  assert correspondence.correspondence_from_distances(line, line) == pytest.approx(1.0, abs=1e-12)
  images = random_images(30, seed=33)
  shuffled = images[np.random.default_rng(34).permutation(30)]
  assert abs(correspondence.correspondence(PYRAMID, images, shuffled)["pyramid_correspondence"]) < 0.15


def test_mismatched_counts_are_refused():
  with pytest.raises(ValueError, match="same latents"):
    correspondence.correspondence(PYRAMID, random_images(4), random_images(5))
