"""The procedural photo/anime face domains."""
import os

import numpy as np
import pytest

from gantl_jax.data import synthetic


@pytest.mark.parametrize("domain", ["photo", "anime"])
def test_deterministic_by_seed_and_index(domain):
  a = synthetic.render(domain, [3, 7, 11], resolution=16, seed=0)
  b = synthetic.render(domain, [3, 7, 11], resolution=16, seed=0)
  np.testing.assert_array_equal(a, b)
  # An image does not depend on its batch-mates.
  np.testing.assert_array_equal(a[1], synthetic.render(domain, [7], resolution=16, seed=0)[0])
  c = synthetic.render(domain, [3, 7, 11], resolution=16, seed=1)
  assert all(np.abs(a[k].astype(int) - c[k]).mean() > 3 for k in range(3))
  assert np.abs(a[0].astype(int) - a[1]).mean() > 3  # different indices differ too


@pytest.mark.parametrize("domain", ["photo", "anime"])
@pytest.mark.parametrize("resolution", [8, 32])
def test_dtype_shape_range(domain, resolution):
  x = synthetic.render(domain, range(4), resolution=resolution, seed=0)
  assert x.dtype == np.uint8 and x.shape == (4, resolution, resolution, 3)
  assert x.min() < 80 and x.max() > 170  # real contrast, not a flat image


def test_bad_arguments():
  with pytest.raises(ValueError, match="power of two"):
    synthetic.render("photo", [0], resolution=48)
  with pytest.raises(ValueError, match="power of two"):
    synthetic.render("photo", [0], resolution=2048)
  with pytest.raises(ValueError, match="unknown synthetic domain"):
    synthetic.render("cartoon", [0], resolution=16)


def _saturation(images):
  x = images.reshape(-1, 3).astype(np.float32) / 255
  mx, mn = x.max(1), x.min(1)
  return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0).mean()


def _flat_fraction(images):
  # Cel shading repeats exact colours along rows; smooth shading plus noise hardly ever does.
  return (images[:, :, 1:] == images[:, :, :-1]).all(-1).mean()


def test_domains_differ_in_style_but_share_layout():
  idx = np.arange(32)
  photo = synthetic.render("photo", idx, resolution=32, seed=0)
  anime = synthetic.render("anime", idx, resolution=32, seed=0)
  assert _saturation(anime) > _saturation(photo) + 0.1
  assert _flat_fraction(anime) > _flat_fraction(photo) + 0.2

  def layout(domain):
    m = synthetic.face_masks(domain, idx, resolution=32, seed=0)
    ys, xs = np.mgrid[:32, :32]
    area = m.sum((1, 2))
    cy = (m * ys).sum((1, 2)) / area
    cx = (m * xs).sum((1, 2)) / area
    return area.mean(), cy.mean(), cx.mean()

  (a_p, y_p, x_p), (a_a, y_a, x_a) = layout("photo"), layout("anime")
  assert 0.75 < a_a / a_p < 1.33
  assert abs(y_p - y_a) < 1.5 and abs(x_p - x_a) < 1.0
  assert abs(x_p - 15.5) < 1.5  # faces are centred


def test_cli_writes_pngs_and_grid(tmp_path):
  from PIL import Image

  synthetic.main(["--domain", "anime", "--count", "5", "--resolution", "16", "--out", str(tmp_path)])
  files = sorted(os.listdir(tmp_path))
  assert files == [f"anime_{i:06d}.png" for i in range(5)] + ["grid.png"]
  im = np.asarray(Image.open(tmp_path / "anime_000002.png"))
  np.testing.assert_array_equal(im, synthetic.render("anime", [2], resolution=16)[0])
