"""Images to and from files: quantisation to uint8 and PNG grids (written atomically)."""
from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
from PIL import Image


def to_uint8(images):
  """NHWC floats in [-1, 1] -> uint8 [0, 255]: round((x + 1) * 127.5), clipped. The one
  quantisation of the project (sample grids, generate, the metrics' fake images); it runs on
  numpy arrays and inside ``jax.jit`` alike."""
  xp = np if isinstance(images, np.ndarray) else jnp
  return xp.clip(xp.round((images + 1) * 127.5), 0, 255).astype(xp.uint8)


def to_pil(pixels: np.ndarray) -> Image.Image:
  """One uint8 HWC image as a PIL image: mode 'L' for C = 1 (grayscale), 'RGB' for C = 3."""
  return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def save_png(pixels: np.ndarray, path: str) -> None:
  """Writes one uint8 HWC image (C = 1: a grayscale PNG, C = 3: RGB) through a temporary file,
  so a reader (or a crash) never sees half an image."""
  tmp = path + ".tmp.png"
  to_pil(pixels).save(tmp)
  os.replace(tmp, path)


def make_grid(images: np.ndarray, cols: int) -> np.ndarray:
  """NHWC images (floats in [-1, 1] or uint8) -> one uint8 HWC grid, ``cols`` images per row."""
  pixels = images if images.dtype == np.uint8 else to_uint8(np.asarray(images, np.float32))
  n, h, w, c = pixels.shape
  rows = -(-n // cols)
  grid = np.zeros((rows * h, cols * w, c), np.uint8)
  for i in range(n):
    r, k = divmod(i, cols)
    grid[r * h:(r + 1) * h, k * w:(k + 1) * w] = pixels[i]
  return grid


def save_grid(images: np.ndarray, cols: int, path: str) -> None:
  """Writes NHWC images (floats in [-1, 1] or uint8) as one PNG grid, ``cols`` per row."""
  save_png(make_grid(images, cols), path)
