"""CDC's intra-cluster distance and the diversity ratio (gantl_jax.metrics.diversity)."""
import numpy as np
import pytest

from gantl_jax.metrics import distances, diversity
from test_distances import random_images

PYRAMID = distances.pyramid_distance()


def test_identical_sets_ratio_one_and_one_repeated_image_zero():
  train = random_images(3, seed=10)
  samples = random_images(40, seed=11)
  out = diversity.diversity(PYRAMID, samples, train, heldout=samples)
  assert out["pyramid_diversity_ratio"] == pytest.approx(1.0, abs=1e-12)
  assert out["pyramid_pairwise"] > 0.1
  repeated = np.repeat(samples[:1], 20, axis=0)
  out = diversity.diversity(PYRAMID, repeated, train, heldout=samples)
  assert out["pyramid_intra_cluster"] == 0.0 and out["pyramid_pairwise"] == 0.0
  assert out["pyramid_diversity_ratio"] == 0.0
  assert out["pyramid_clusters_used"] == 1.0 and out["pyramid_clusters"] == 3.0


def test_intra_cluster_on_a_hand_made_matrix():
  # 6 samples on a line at positions p; 3 training images at 0, 10, 20.
  p = np.array([0.0, 1.0, 3.0, 10.0, 20.0, 12.0])
  within = np.abs(p[:, None] - p[None])
  to_train = np.abs(p[:, None] - np.array([0.0, 10.0, 20.0])[None])
  out = diversity.intra_cluster_distance(within, to_train)
  # Clusters {0, 1, 3}: pairs 1, 3, 2 -> 2; {10, 12}: 2; {20} skipped.
  assert out == {"intra_cluster": 2.0, "clusters_used": 2.0, "clusters": 3.0}
  # At most 2 a cluster: the first two of each, {0, 1} and {10, 12}.
  assert diversity.intra_cluster_distance(within, to_train, max_per_cluster=2)["intra_cluster"] == 1.5
  # A seeded choice is reproducible and picks among the members.
  a = diversity.intra_cluster_distance(within, to_train, max_per_cluster=2, seed=3)
  assert a == diversity.intra_cluster_distance(within, to_train, max_per_cluster=2, seed=3)
  assert (a["intra_cluster"] - 2.0 / 2) in (0.5, 1.0, 1.5)  # (1, 3 or 2) / 2 + 2 / 2
  lonely = diversity.intra_cluster_distance(within[:1, :1], to_train[:1])
  assert np.isnan(lonely["intra_cluster"]) and lonely["clusters_used"] == 0.0


def test_samples_clustered_around_training_images():
  # Samples = a training image plus small noise: small intra-cluster distance, every cluster used,
  # and far less diverse than independent images.
  rng = np.random.default_rng(12)
  train = random_images(4, seed=13)
  noise = rng.integers(-8, 9, (40, 16, 16, 3))
  samples = np.clip(np.repeat(train, 10, axis=0) + noise, 0, 255).astype(np.uint8)
  out = diversity.diversity(PYRAMID, samples, train, heldout=random_images(20, seed=14))
  assert out["pyramid_clusters_used"] == 4.0
  assert out["pyramid_intra_cluster"] < 0.2 * out["pyramid_heldout_pairwise"]
