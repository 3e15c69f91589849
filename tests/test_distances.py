"""Image distances for the sample-level metrics (gantl_jax.metrics.distances)."""
import numpy as np
import pytest

from gantl_jax.data import synthetic
from gantl_jax.metrics import distances, swd


def random_images(n, size=16, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_pyramid_levels():
  assert [distances.pyramid_levels(r) for r in (4, 6, 8, 16, 32, 64)] == [1, 1, 2, 3, 4, 5]
  assert distances.pyramid_embed(random_images(2, 64)).shape == (2, 64 * 64 * 3 * (1 + 1/4 + 1/16 + 1/64 + 1/256))


def test_brightness_shift_moves_only_the_low_pass_level():
  # Adding c grey levels everywhere leaves every band-pass level unchanged (the filters keep a
  # constant) and moves each of the 4 px low-pass values by c / 255: the distance is the RMS over
  # the 4 levels of a 32 px image, sqrt((c / 255)^2 / 4).
  a = np.random.default_rng(1).integers(40, 200, (1, 32, 32, 3), dtype=np.uint8)
  b = a + np.uint8(30)
  d = distances.distances(distances.pyramid_distance(), a, b)
  assert d.shape == (1, 1)
  np.testing.assert_allclose(d[0, 0], np.sqrt((30 / 255) ** 2 / 4), rtol=1e-6)


def test_pyramid_distance_is_rms_over_levels_of_per_level_mse():
  a, b = random_images(1, 32, seed=2), random_images(1, 32, seed=3)
  la = swd.laplacian_pyramid(a.astype(np.float64) / 255, 4)
  lb = swd.laplacian_pyramid(b.astype(np.float64) / 255, 4)
  expected = np.sqrt(np.mean([np.mean((x - y) ** 2) for x, y in zip(la, lb)]))
  np.testing.assert_allclose(distances.distances(distances.pyramid_distance(), a, b)[0, 0], expected, rtol=1e-6)


@pytest.mark.parametrize("squared", [False, True])
def test_pairwise_matches_brute_force_in_small_blocks(squared):
  emb = np.random.default_rng(4).standard_normal((23, 40)).astype(np.float32)
  other = np.random.default_rng(5).standard_normal((9, 40)).astype(np.float32)
  dist = distances.Distance("test", lambda x: x, squared=squared)
  brute = lambda a, b: np.square(a[:, None].astype(np.float64) - b[None].astype(np.float64)).sum(-1)
  power = 1.0 if squared else 0.5
  # 5 rows a block (40 values x 8 bytes x 5): several blocks each way, a ragged last one.
  within = distances.pairwise(dist, emb, block_bytes=8 * 40 * 5)
  np.testing.assert_allclose(within, brute(emb, emb) ** power, rtol=1e-12, atol=1e-12)
  assert np.array_equal(within, within.T) and not np.diagonal(within).any()
  between = distances.pairwise(dist, emb, other, block_bytes=8 * 40 * 5)
  np.testing.assert_allclose(between, brute(emb, other) ** power, rtol=1e-12, atol=1e-12)


def test_a_shift_by_two_pixels_is_as_far_as_another_image():
  # What the weight-free distance does not see: a 2 px shift of a picture is about as far from it
  # as another picture of the domain is.
  photos = synthetic.render("photo", range(8), resolution=32)
  shifted = np.roll(photos, 2, axis=2)
  d = distances.distances(distances.pyramid_distance(), photos, np.concatenate([shifted, photos]))
  to_shifted = np.diagonal(d[:, :8])
  to_others = d[:, 8:][~np.eye(8, dtype=bool)]
  assert np.median(to_shifted) > 0.3 * np.median(to_others)


def test_float_images_are_refused_with_one_line():
  with pytest.raises(ValueError, match=r"^samples: expected uint8 NHWC.*to_uint8$"):
    distances.embed(distances.pyramid_distance(), np.zeros((2, 8, 8, 3), np.float32), "samples")
