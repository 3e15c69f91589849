"""Sampling from a trained run: G-EMA of the latest checkpoint of a workdir -> PNGs."""
from __future__ import annotations

import os

import jax
import numpy as np

from gantl_jax import images as image_io
from gantl_jax import parallel
from gantl_jax import runs
from gantl_jax.config import ConfigError


def parse_seeds(text: str) -> list[int]:
  """'0-3,7' -> [0, 1, 2, 3, 7]: comma-separated seeds and inclusive ranges LO-HI.

  Raises ConfigError naming ``--seeds`` and the expected form.
  """
  form = "comma-separated seeds or ranges LO-HI with 0 <= LO <= HI < 2**32, e.g. '0-15' or '1,5,9'"
  seeds = []
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
    seeds.extend(range(lo, hi + 1))
  if not seeds:
    raise ConfigError(f"--seeds={text!r} holds no seed; give {form}")
  return seeds


def generate_from_workdir(workdir: str, seeds: str = "0-15", truncation_psi: float = 1.0) -> str:
  """Writes ``generated/seed{N}.png`` and ``generated/grid.png`` for G-EMA at the latest step.

  The latent of seed N is ``np.random.RandomState(N).randn(z_dim)``, as in StyleGAN2's tools, so
  a seed names the same latent everywhere.
  """
  seed_list = parse_seeds(seeds)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config, nets, step, g_ema = runs.load_g_ema(workdir)
  generate = parallel.make_generate(nets)
  z = np.stack([np.random.RandomState(s).randn(config.model.z_dim) for s in seed_list]).astype(np.float32)
  pixels = image_io.to_uint8(np.asarray(jax.device_get(generate(g_ema, z, truncation_psi=truncation_psi))))
  out_dir = os.path.join(workdir, "generated")
  os.makedirs(out_dir, exist_ok=True)
  for s, img in zip(seed_list, pixels):
    image_io.save_png(img, os.path.join(out_dir, f"seed{s:04d}.png"))
  image_io.save_grid(pixels, min(len(seed_list), 8), os.path.join(out_dir, "grid.png"))
  print(f"step {step}: wrote {len(seed_list)} images and grid.png to {out_dir}")
  return out_dir
