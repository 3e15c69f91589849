"""Sampling from a generator on disk (a run's G-EMA or a network checkpoint, see ``runs``): seed
images and grids (``launch.py --mode generate``) and W-space interpolations between seeds, as a
strip PNG and an animated GIF (``--mode interpolate``).

The latent of seed N is ``np.random.RandomState(N).randn(z_dim)``, as in StyleGAN2's tools, so a
seed names the same latent everywhere. Noise inputs are the generator's constant noise, so an
image is a function of its latent (and truncation) only.
"""
from __future__ import annotations

import functools
import os
import re
from typing import Optional

import jax
import numpy as np
from PIL import Image

from gantl_jax import images as image_io
from gantl_jax.errors import ConfigError
from gantl_jax.models import stylegan2
from gantl_jax.training import runs

# Images per device call: one compiled shape, and memory bounded whatever the number of images.
BATCH = 16
# Seeds (images) of one call at most: every image is held in memory until it is written (10,000
# images of 256 px are 2 GB). Larger sets are several calls.
MAX_SEEDS = 10_000
GIF_FRAME_MS = 80


def parse_seeds(text: str) -> list[int]:
  """'0-3,7' -> [0, 1, 2, 3, 7]: comma-separated seeds and inclusive ranges LO-HI.

  Raises ConfigError naming ``--seeds`` and the expected form, also for more than ``MAX_SEEDS``
  seeds (counted before any list is made).
  """
  form = "comma-separated seeds or ranges LO-HI with 0 <= LO <= HI < 2**32, e.g. '0-15' or '1,5,9'"
  seeds, count = [], 0
  for part in text.split(","):
    part = part.strip()
    if not part:
      continue
    bounds = part.split("-")
    if len(bounds) > 2 or not all(b.strip().isdecimal() for b in bounds):
      raise ConfigError(f"--seeds={text!r}: {part!r} is not a seed or a range; give {form}")
    lo, hi = int(bounds[0]), int(bounds[-1])
    if lo > hi:
      raise ConfigError(f"--seeds={text!r}: the range {part!r} runs backwards; give {form}")
    if hi >= 2 ** 32:  # np.random.RandomState's limit
      raise ConfigError(f"--seeds={text!r}: {hi} is not below 2**32; give {form}")
    count += hi - lo + 1
    if count > MAX_SEEDS:
      raise ConfigError(f"--seeds={text!r} holds more than the {MAX_SEEDS:,} seeds of one call (all "
                        f"its images are held in memory); split it into several calls, e.g. "
                        f"--seeds=0-{MAX_SEEDS - 1}")
    seeds.extend(range(lo, hi + 1))
  if not seeds:
    raise ConfigError(f"--seeds={text!r} holds no seed; give {form}")
  return seeds


def parse_grid(text: str) -> tuple[int, int]:
  """'4x2' -> (4 columns, 2 rows). Raises ConfigError naming ``--grid`` and the expected form, or
  the limit of ``MAX_SEEDS`` images."""
  m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
  if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
    raise ConfigError(f"--grid={text!r}: give COLUMNSxROWS with both at least 1, e.g. '4x2' "
                      f"(4 columns, 2 rows of consecutive seeds from the first of --seeds)")
  cols, rows = int(m.group(1)), int(m.group(2))
  if cols * rows > MAX_SEEDS:
    raise ConfigError(f"--grid={text!r}: {cols * rows:,} images, more than the {MAX_SEEDS:,} of one "
                      f"call (all of them are held in memory); give a smaller grid")
  return cols, rows


def seed_latents(seeds: list[int], z_dim: int) -> np.ndarray:
  """[len(seeds), z_dim] float32: the latent of each seed."""
  return np.stack([np.random.RandomState(s).randn(z_dim) for s in seeds]).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("generator", "truncation_psi"))
def map_latents(generator: stylegan2.Generator, variables, z, truncation_psi: float = 1.0):
  """z [N, z_dim] -> ws [N, num_ws, w_dim] through the mapping network, truncated towards the
  generator's w_avg by ``truncation_psi``."""
  return generator.apply(variables, z, truncation_psi, method=stylegan2.Generator.map)


@functools.partial(jax.jit, static_argnames=("generator",))
def _synthesize(generator: stylegan2.Generator, variables, ws):
  images = generator.apply(variables, ws, noise_mode="const", method=stylegan2.Generator.synthesize)
  return image_io.to_uint8(images)


def synthesize(generator: stylegan2.Generator, variables, ws) -> np.ndarray:
  """ws [N, num_ws, w_dim] -> uint8 images [N, R, R, C] (constant noise), ``BATCH`` at a time."""
  ws = np.asarray(ws)
  size = min(BATCH, len(ws))
  out = []
  for start in range(0, len(ws), size):
    chunk = ws[start:start + size]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)])
    out.append(np.asarray(_synthesize(generator, variables, padded))[:len(chunk)])
  return np.concatenate(out)


def seed_images(network: runs.Network, seeds: list[int], truncation_psi: float = 1.0) -> np.ndarray:
  """uint8 images [len(seeds), R, R, C] of ``network`` for ``seeds``."""
  z = seed_latents(seeds, network.generator.z_dim)
  ws = map_latents(network.generator, network.variables, z, truncation_psi=truncation_psi)
  return synthesize(network.generator, network.variables, ws)


def interpolation_ws(ws: np.ndarray, frames: int) -> np.ndarray:
  """Linear paths through ``ws`` [S, ...] in order, ``frames`` per consecutive pair (the pair's
  start included, its end not), then the last: [(S - 1) * frames + 1, ...]."""
  ws = np.asarray(ws, np.float32)
  t = (np.arange(frames, dtype=np.float32) / frames)[:, None, None]
  path = [a + t * (b - a) for a, b in zip(ws[:-1], ws[1:])]
  return np.concatenate(path + [ws[-1:]])


def generate(path: str, seeds: str = "0-15", truncation_psi: float = 1.0, outdir: str = "",
             grid: str = "", step: Optional[int] = None) -> str:
  """Writes ``seed{N}.png`` for each seed and ``grid.png`` for the G-EMA at ``path`` (a run or a
  network checkpoint) into ``outdir`` (default: ``generated/`` in the run or checkpoint
  directory). ``grid`` 'CxR': C columns x R rows of consecutive seeds from the first of
  ``seeds``; otherwise every seed of ``seeds``, up to 8 per row. Returns ``outdir``."""
  seed_list = parse_seeds(seeds)
  if grid:
    cols, rows = parse_grid(grid)
    seed_list = list(range(seed_list[0], seed_list[0] + cols * rows))
  else:
    cols = min(len(seed_list), 8)
  network = runs.load_network(path, step)
  pixels = seed_images(network, seed_list, truncation_psi)
  out_dir = os.path.abspath(outdir or os.path.join(network.home, "generated"))
  os.makedirs(out_dir, exist_ok=True)
  for s, img in zip(seed_list, pixels):
    image_io.save_png(img, os.path.join(out_dir, f"seed{s:04d}.png"))
  image_io.save_grid(pixels, cols, os.path.join(out_dir, "grid.png"))
  print(f"{network.where}: wrote {len(seed_list)} images and grid.png to {out_dir}")
  return out_dir


def save_gif(frames: np.ndarray, path: str, frame_ms: int = GIF_FRAME_MS) -> None:
  """Writes uint8 NHWC ``frames`` as an endlessly looping animated GIF (through a temporary file)."""
  pictures = [Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in frames]
  tmp = path + ".tmp.gif"
  pictures[0].save(tmp, save_all=True, append_images=pictures[1:], duration=frame_ms, loop=0)
  os.replace(tmp, path)


def interpolate(path: str, seeds: str, frames: int = 16, truncation_psi: float = 1.0,
                outdir: str = "", step: Optional[int] = None) -> str:
  """W-space interpolation of the G-EMA at ``path`` through ``seeds`` in order: each seed's z is
  mapped (and truncated) to w, consecutive ws are joined by ``frames`` linear steps, and the
  frames are synthesised with constant noise. Writes ``interpolation.png`` (one row) and
  ``interpolation.gif`` into ``outdir`` (default: ``interpolated/`` in the run or checkpoint
  directory); returns ``outdir``."""
  seed_list = parse_seeds(seeds)
  if len(seed_list) < 2:
    raise ConfigError(f"--seeds={seeds!r}: interpolation needs at least two seeds, e.g. '0,5,9'")
  if frames < 1:
    raise ConfigError(f"--frames={frames}: give at least 1 frame per pair of seeds")
  network = runs.load_network(path, step)
  z = seed_latents(seed_list, network.generator.z_dim)
  ws = map_latents(network.generator, network.variables, z, truncation_psi=truncation_psi)
  pixels = synthesize(network.generator, network.variables, interpolation_ws(ws, frames))
  out_dir = os.path.abspath(outdir or os.path.join(network.home, "interpolated"))
  os.makedirs(out_dir, exist_ok=True)
  image_io.save_grid(pixels, len(pixels), os.path.join(out_dir, "interpolation.png"))
  save_gif(pixels, os.path.join(out_dir, "interpolation.gif"))
  print(f"{network.where}: wrote {len(pixels)} frames through seeds {seed_list} as "
        f"interpolation.png and interpolation.gif to {out_dir}")
  return out_dir
