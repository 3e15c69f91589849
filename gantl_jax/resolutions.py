"""The size rules of StyleGAN2, defined once: which image resolutions are supported, the blocks
of a network (b4, b8, ..., bR) and the channels of each. Pure Python, so that the config checks,
the data layer and the models share them without importing each other."""
from __future__ import annotations

from typing import Optional

MIN_RESOLUTION, MAX_RESOLUTION = 8, 1024


def resolution_problem(resolution: int) -> Optional[str]:
  """Why ``resolution`` is not supported ('must be a power of two from 8 to 1024, got 12'), or
  None. Callers prefix the name of what they check."""
  r = int(resolution)
  if MIN_RESOLUTION <= r <= MAX_RESOLUTION and r & (r - 1) == 0:
    return None
  return f"must be a power of two from {MIN_RESOLUTION} to {MAX_RESOLUTION}, got {resolution}"


def block_resolutions(resolution: int) -> list[int]:
  """4, 8, ..., ``resolution``: the resolutions of the blocks of G and D (named b{R})."""
  return [2 ** i for i in range(2, int(resolution).bit_length())]


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
  """Feature maps of the block working at ``resolution`` (StyleGAN2's channel schedule)."""
  return min(channel_base // resolution, channel_max)


def num_ws(resolution: int) -> int:
  """Number of w vectors the synthesis network consumes: two per block (one for b4), plus one."""
  return 2 * (len(block_resolutions(resolution)) - 1) + 1 + 1


def low_precision_blocks(resolution: int, num_low_precision_res: int) -> list[int]:
  """The block resolutions that run in the low-precision compute dtype (``model.compute_dtype``).

  ``num_low_precision_res`` = N > 0 picks the N highest resolutions as stylegan2-ada-pytorch's
  ``num_fp16_res`` does: every block at ``max(2 ** (log2(resolution) + 1 - N), 8)`` px or above,
  so the 4x4 block is never one of them. 0 picks every block (b4 included). The same list holds
  for G's synthesis blocks and D's blocks (D's 4x4 epilogue is always float32).
  """
  blocks = block_resolutions(resolution)
  if num_low_precision_res <= 0:
    return blocks
  lowest = max(2 ** (int(resolution).bit_length() - num_low_precision_res), 8)
  return [r for r in blocks if r >= lowest]
