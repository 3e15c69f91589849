"""Nearest-training distances and copies (gantl_jax.metrics.memorisation)."""
import numpy as np
import pytest

from gantl_jax.metrics import distances, memorisation
from test_distances import random_images

PYRAMID = distances.pyramid_distance()


def test_a_copied_training_set():
  train = random_images(5, seed=20)
  heldout = random_images(12, seed=21)
  out = memorisation.memorisation(PYRAMID, np.concatenate([train, train[::-1]]), train, heldout)
  assert out["pyramid_copies"] == 1.0
  # Zero up to the rounding of |x|^2 + |y|^2 - 2 x.y in float64.
  assert out["pyramid_nearest_mean"] == pytest.approx(0.0, abs=1e-6)
  assert out["pyramid_nearest_q95"] == pytest.approx(0.0, abs=1e-6)
  assert out["pyramid_heldout_nearest_q05"] > 0.1


def test_new_images_are_not_copies():
  train = random_images(5, seed=20)
  out = memorisation.memorisation(PYRAMID, random_images(30, seed=22), train, random_images(30, seed=23))
  assert out["pyramid_copies"] < 0.2
  assert out["pyramid_nearest_median"] == pytest.approx(out["pyramid_heldout_nearest_median"], rel=0.1)


def test_statistics_from_nearest_distances():
  samples = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
  out = memorisation.memorisation_from_nearest(samples, np.array([2.5, 6.0]))
  assert out["nearest_mean"] == 2.0 and out["nearest_median"] == 2.0
  assert out["nearest_q05"] == pytest.approx(0.2) and out["nearest_q95"] == pytest.approx(3.8)
  assert out["nearest_q25"] == 1.0 and out["nearest_q75"] == 3.0
  assert out["copies"] == 3 / 5  # 0, 1, 2 are below the held-out minimum 2.5
  assert "copies" not in memorisation.memorisation_from_nearest(samples)
