"""Layer blending of two generators of one architecture, as Toonify's "layer swapping" (Pinkney &
Adler 2020, "Resolution Dependent GAN Interpolation for Controllable Image Synthesis Between
Domains"): ``launch.py --mode blend --workdir LOW --blend_with HIGH --blend_resolution r``.

The synthesis blocks b4 .. b{r} come from LOW and the blocks above r from HIGH. Low-resolution
blocks set pose and shape, high-resolution ones texture and lighting, so Toonify takes LOW = the
fine-tuned (cartoon) model and HIGH = its photo source: a cartoon's structure with photographic
rendering. The mapping network and its w_avg come from LOW as in Pinkney's ``blend_models.py``
(whose output starts as a copy of the low-resolution model): LOW maps a latent to the w its
structure was trained with, and at r = the full resolution the blend is LOW bit for bit.

``blend_width`` w > 0 replaces the hard switch by a sigmoid in log2 resolution: block b{s} takes
``(1 - a) * LOW + a * HIGH`` with ``a = sigmoid((log2 s - log2 r - 1/2) / w)``. w is in octaves
(factors of 2 in resolution), and the centre lies half an octave above r, between the last block
LOW gives in the hard switch and the first block HIGH gives, so w -> 0 tends to the hard switch.
A block's buffers (its constant noise) follow its weights.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Optional

import numpy as np
from flax import traverse_util

from gantl_jax import images as image_io
from gantl_jax.cli import export
from gantl_jax.cli import generate
from gantl_jax.errors import ConfigError
from gantl_jax.resolutions import block_resolutions
from gantl_jax.training import runs

# The hyper-parameters that make two generators' variables interchangeable, block by block.
ARCHITECTURE = ("resolution", "img_channels", "z_dim", "w_dim", "mapping_layers", "mapping_lr_mul",
                "channel_base", "channel_max", "conv_clamp")
_BLOCK = re.compile(r"^(?:params|buffers)/synthesis/b(\d+)/")


def high_weights(resolution: int, blend_resolution: int, width: float = 0.0) -> dict[int, float]:
  """{block resolution: weight of the HIGH parent} for the generators' ``resolution``. Raises
  ConfigError naming the flag unless ``blend_resolution`` is one of the block resolutions and
  ``width`` >= 0."""
  blocks = block_resolutions(resolution)
  if blend_resolution not in blocks:
    raise ConfigError(f"--blend_resolution={blend_resolution}: not a block resolution of the "
                      f"{resolution} px generators; give one of {', '.join(map(str, blocks))}")
  if not width >= 0:  # also refuses NaN
    raise ConfigError(f"--blend_width={width}: give 0 (a hard switch) or a width in octaves > 0")
  if width == 0:
    return {s: float(s > blend_resolution) for s in blocks}
  centre = math.log2(blend_resolution) + 0.5
  # The logistic function as tanh, which never overflows for narrow widths.
  return {s: 0.5 + 0.5 * math.tanh((math.log2(s) - centre) / (2 * width)) for s in blocks}


def blend_variables(low: Any, high: Any, weights: dict[int, float]) -> Any:
  """Generator variables: each synthesis block ``b{s}`` (weights and buffers) mixed as
  ``(1 - weights[s]) * low + weights[s] * high`` (a weight of 0 or 1 takes the parent's array
  itself), everything else (mapping network, w_avg) from ``low``. Both trees must have the same
  paths and shapes."""
  flat_low = traverse_util.flatten_dict(low, sep="/")
  flat_high = traverse_util.flatten_dict(high, sep="/")
  out = {}
  for path, a in flat_low.items():
    m = _BLOCK.match(path)
    alpha = weights[int(m.group(1))] if m else 0.0
    if alpha == 0.0:
      out[path] = a
    elif alpha == 1.0:
      out[path] = flat_high[path]
    else:
      out[path] = (1.0 - alpha) * a + alpha * flat_high[path]
  return traverse_util.unflatten_dict(out, sep="/")


def check_parents(low: runs.Network, high: runs.Network) -> None:
  """Raises ConfigError naming ``--blend_with`` unless the two generators share an architecture
  (same hyper-parameters, same variable paths and shapes)."""
  differ = [k for k in ARCHITECTURE if low.hparams.get(k) != high.hparams.get(k)]
  if differ:
    details = ", ".join(f"{k} {high.hparams.get(k)!r} vs {low.hparams.get(k)!r}" for k in differ)
    raise ConfigError(f"--blend_with {high.where}: its generator differs from --workdir's "
                      f"({low.where}) in {details}; blend two generators of one architecture, "
                      f"e.g. a transferred run and its source")
  shapes = lambda net: {p: np.shape(v) for p, v in traverse_util.flatten_dict(net.variables, sep="/").items()}
  if shapes(low) != shapes(high):
    raise ConfigError(f"--blend_with {high.where}: its generator's variables differ from "
                      f"--workdir's ({low.where}) in paths or shapes; blend two generators of one "
                      f"architecture")


def blend(path: str, blend_with: str, blend_resolution: int, blend_width: float = 0.0,
          outdir: str = "", seeds: str = "0-7", truncation_psi: float = 1.0,
          step: Optional[int] = None) -> str:
  """Blends the G-EMA at ``path`` (LOW: blocks up to ``blend_resolution`` and the mapping
  network) with the one at ``blend_with`` (HIGH: the blocks above), writes the result as a network
  checkpoint in ``outdir`` (default: ``blend_r{r}_w{w}/`` in LOW's run or checkpoint directory)
  and ``outdir/comparison.png``: rows HIGH, LOW and the blend, one column per seed. Returns
  ``outdir``."""
  seed_list = generate.parse_seeds(seeds)
  if outdir:
    export.check_outdir(outdir)  # before the reads
  low = runs.load_network(path, step, flag="--workdir")
  high = runs.load_network(blend_with, flag="--blend_with")
  check_parents(low, high)
  weights = high_weights(low.hparams["resolution"], blend_resolution, blend_width)
  out_dir = export.check_outdir(outdir or os.path.join(low.home, f"blend_r{blend_resolution}_w{blend_width:g}"))
  variables = blend_variables(low.variables, high.variables, weights)
  origin = dict(mode="blend", low=low.where, high=high.where, blend_resolution=blend_resolution,
                blend_width=blend_width, high_weights={f"b{s}": a for s, a in weights.items()})
  export.write_network(out_dir, variables, low.hparams, origin)
  rows = [generate.seed_images(net, seed_list, truncation_psi)
          for net in (high, low, low._replace(variables=variables))]
  image_io.save_grid(np.concatenate(rows), len(seed_list), os.path.join(out_dir, "comparison.png"))
  print(f"blend of {low.where} (b4..b{blend_resolution}, mapping) and {high.where} (above "
        f"b{blend_resolution}), width {blend_width:g}: network checkpoint and comparison.png "
        f"(rows: --blend_with, --workdir, blend) in {out_dir}")
  return out_dir
