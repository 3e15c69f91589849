"""Run configuration: derived values ('auto' knobs) and validation with errors that name the key.

Config files live in ``configs/`` and return an ``ml_collections.ConfigDict`` from
``get_config()``; ``configs/base.py`` documents every key. This module only resolves and checks.
"""
from __future__ import annotations

import json
import math
from typing import Any

import ml_collections


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and says what to set."""


def _check(cond: bool, msg: str) -> None:
  if not cond:
    raise ConfigError(msg)


def resolve(config: ml_collections.ConfigDict, num_devices: int = 1) -> ml_collections.ConfigDict:
  """Returns a copy with the 'auto' values (negative numbers) filled in, after validating it.

  ``num_devices`` is the number of devices the global batch is split over (all processes).
  """
  config = ml_collections.ConfigDict(config.to_dict())
  m, t = config.model, config.train
  _check(m.resolution >= 8 and m.resolution & (m.resolution - 1) == 0,
         f"model.resolution must be a power of two from 8 to 1024, got {m.resolution}")
  _check(m.resolution <= 1024, f"model.resolution must be at most 1024, got {m.resolution}")
  _check(m.mapping_layers >= 1, f"model.mapping_layers must be >= 1, got {m.mapping_layers}")
  _check(m.channel_base // m.resolution >= 1,
         f"model.channel_base={m.channel_base} gives no channels at {m.resolution} px "
         f"(channels = min(channel_base // res, channel_max)); raise it to at least {m.resolution}")
  _check(m.conv_impl in ("auto", "xla", "custom"),
         f"model.conv_impl must be 'auto', 'xla' or 'custom', got {m.conv_impl!r}")
  _check(m.mbstd_grouping in ("contiguous", "strided"),
         f"model.mbstd_grouping must be 'contiguous' or 'strided', got {m.mbstd_grouping!r}")
  c4 = min(m.channel_base // 4, m.channel_max)
  _check(m.mbstd_num_channels == 0 or c4 % m.mbstd_num_channels == 0,
         f"model.mbstd_num_channels={m.mbstd_num_channels} must divide the 4x4 channels ({c4})")

  b = t.batch_size
  _check(b > 0, f"train.batch_size must be positive, got {b}")
  _check(b % num_devices == 0,
         f"train.batch_size={b} is not divisible by the {num_devices} devices; use a multiple "
         f"of {num_devices} (for example {num_devices * max(1, round(b / num_devices))})")
  per_device = b // num_devices
  # A group larger than the per-device batch would silently shrink to it, and then the statistic
  # would depend on the device count.
  _check(m.mbstd_num_channels == 0 or per_device % m.mbstd_group_size == 0,
         f"model.mbstd_group_size={m.mbstd_group_size} must divide the per-device batch "
         f"{per_device} (train.batch_size={b} over {num_devices} devices): minibatch-stddev groups "
         f"never span devices")
  if t.pl_weight > 0:
    _check(per_device % t.pl_batch_shrink == 0 and per_device // t.pl_batch_shrink >= 1,
           f"train.pl_batch_shrink={t.pl_batch_shrink} must divide the per-device batch {per_device}")
  for key in ("r1_interval", "pl_interval"):
    _check(t[key] >= 1, f"train.{key} must be >= 1, got {t[key]}")
  _check(t.total_kimg > 0, f"train.total_kimg must be positive, got {t.total_kimg}")
  _check(0 <= t.style_mixing_prob <= 1, f"train.style_mixing_prob must be in [0, 1], got {t.style_mixing_prob}")

  if t.r1_gamma < 0:  # StyleGAN2-ADA's heuristic
    t.r1_gamma = 0.0002 * m.resolution ** 2 / b
  if t.ema_kimg < 0:
    t.ema_kimg = b * 10 / 32
  if config.parallel.mode not in ("jit", "pmap"):
    raise ConfigError(f"parallel.mode must be 'jit' or 'pmap', got {config.parallel.mode!r}")
  return config


def num_steps(config: ml_collections.ConfigDict) -> int:
  """Optimizer steps of the run: ``train.total_kimg`` thousand images at ``train.batch_size``."""
  return int(math.ceil(config.train.total_kimg * 1000 / config.train.batch_size))


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def model_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The model hyper-parameters that define what the weights mean (stored with checkpoints)."""
  m = config.model
  keys = ("resolution", "img_channels", "z_dim", "w_dim", "mapping_layers", "mapping_lr_mul",
          "channel_base", "channel_max", "conv_clamp", "mbstd_num_channels", "mbstd_grouping")
  return {k: m[k] for k in keys}
