"""Run configuration: derived values ('auto' knobs) and validation with errors that name the key.

Config files live in ``configs/`` and return an ``ml_collections.ConfigDict`` from
``get_config()``; ``gantl_jax/defaults.py`` documents every key. This module resolves and checks a
config (each feature module checks its own section: ``check_config``), and upgrades the config of
an older run to today's keys (:func:`upgrade`).
"""
from __future__ import annotations

import json
import math
from typing import Any

import ml_collections

from gantl_jax import defaults
from gantl_jax import resolutions
from gantl_jax.data import checks as data_checks
from gantl_jax.errors import ConfigError
from gantl_jax.fewshot import adapters
from gantl_jax.fewshot import augment
from gantl_jax.fewshot import cdc
from gantl_jax.fewshot import ewc
from gantl_jax.metrics import samples as sample_metrics
from gantl_jax.models import ops
from gantl_jax.training import optim
from gantl_jax.training import steps

# Keys added after runs were first written whose value in those runs, written without them, is
# not today's default. :func:`upgrade` fills these values; every other missing key gets its default.
VALUES_BEFORE_THE_KEY = {
    "train.variant_programs": "separate",
}


def _check(cond: bool, msg: str) -> None:
  if not cond:
    raise ConfigError(msg)


def resolve(config: ml_collections.ConfigDict, num_devices: int | None = 1) -> ml_collections.ConfigDict:
  """Returns a copy with the 'auto' values (negative numbers) filled in, after validating it.

  ``num_devices`` is the number of devices the global batch is split over (all processes); None
  when it is not known yet (before the backend starts): the checks of the per-device batch are
  then left to a later call with the real count, which must follow before the config is used.
  Raises ConfigError naming the first key that cannot work (``data.*`` keys: ``errors.DataError``,
  also a ValueError); files and folders are checked later, where they are read.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  m, t = config.model, config.train
  _check(m.img_channels in (1, 3),
         f"model.img_channels={m.img_channels}: set it to 3 (RGB) or 1 (grayscale: images are "
         f"converted to their luma, samples written as grayscale PNGs)")
  problem = resolutions.resolution_problem(m.resolution)
  _check(problem is None, f"model.resolution {problem}")
  _check(m.mapping_layers >= 1, f"model.mapping_layers must be >= 1, got {m.mapping_layers}")
  _check(resolutions.channels_at(m.resolution, m.channel_base, m.channel_max) >= 1,
         f"model.channel_base={m.channel_base} gives no channels at {m.resolution} px "
         f"(channels = min(channel_base // res, channel_max)); raise it to at least {m.resolution}")
  _check(m.conv_impl in ("auto",) + ops.CONV_IMPLS,
         f"model.conv_impl must be one of {('auto',) + ops.CONV_IMPLS}, got {m.conv_impl!r}")
  _check(m.mbstd_grouping in ("contiguous", "strided"),
         f"model.mbstd_grouping must be 'contiguous' or 'strided', got {m.mbstd_grouping!r}")
  # The models hand the name to jnp.dtype, which would also take 'float16' or 'int8'.
  _check(m.compute_dtype in ("float32", "bfloat16"),
         f"model.compute_dtype must be 'float32' or 'bfloat16', got {m.compute_dtype!r}")
  _check(isinstance(m.num_low_precision_res, int) and m.num_low_precision_res >= 0,
         f"model.num_low_precision_res must be an integer >= 0 (0: every block in compute_dtype), "
         f"got {m.num_low_precision_res!r}")
  for key in ("z_dim", "w_dim", "channel_max", "mbstd_group_size"):
    _check(m[key] >= 1, f"model.{key} must be >= 1, got {m[key]}")
  _check(m.mapping_lr_mul > 0, f"model.mapping_lr_mul must be positive, got {m.mapping_lr_mul}")
  _check(m.conv_clamp is None or m.conv_clamp > 0,
         f"model.conv_clamp must be positive or None (no clamping), got {m.conv_clamp}")
  _check(m.mbstd_num_channels >= 0, f"model.mbstd_num_channels must be >= 0 (0 disables minibatch "
         f"stddev), got {m.mbstd_num_channels}")
  c4 = resolutions.channels_at(4, m.channel_base, m.channel_max)
  _check(m.mbstd_num_channels == 0 or c4 % m.mbstd_num_channels == 0,
         f"model.mbstd_num_channels={m.mbstd_num_channels} must divide the 4x4 channels ({c4})")

  _check(t.variant_programs in steps.VARIANT_PROGRAMS,
         f"train.variant_programs must be one of {', '.join(map(repr, steps.VARIANT_PROGRAMS))}, "
         f"got {t.variant_programs!r}")
  # Checked before the divisibility tests below, which divide by them.
  for key in ("r1_interval", "pl_interval", "pl_batch_shrink", "log_every"):
    _check(t[key] >= 1, f"train.{key} must be >= 1, got {t[key]}")
  b = t.batch_size
  _check(b > 0, f"train.batch_size must be positive, got {b}")
  if num_devices is not None:
    _check_per_device_batch(config, num_devices)
  _check(t.total_kimg > 0, f"train.total_kimg must be positive, got {t.total_kimg}")
  for key in ("style_mixing_prob", "pl_decay", "w_avg_beta"):
    _check(0 <= t[key] <= 1, f"train.{key} must be in [0, 1], got {t[key]}")
  _check(t.pl_weight >= 0, f"train.pl_weight must be >= 0 (0 disables path-length regularisation), "
         f"got {t.pl_weight}")
  _check(t.ema_rampup is None or t.ema_rampup >= 0,
         f"train.ema_rampup must be >= 0 (0 or None: no ramp-up), got {t.ema_rampup}")
  _check(t.sample_every >= 0, f"train.sample_every must be >= 0 (0: samples only at the end), "
         f"got {t.sample_every}")
  grid = tuple(t.sample_grid) if isinstance(t.sample_grid, (tuple, list)) else ()
  _check(len(grid) == 2 and all(isinstance(n, int) and n >= 1 for n in grid),
         f"train.sample_grid must be two positive integers (columns, rows), got {t.sample_grid!r}")
  ck = config.checkpoint
  _check(ck.every_steps >= 0, f"checkpoint.every_steps must be >= 0 (0: only at the end and on "
         f"SIGTERM), got {ck.every_steps}")
  _check(ck.max_to_keep is None or ck.max_to_keep >= 1,
         f"checkpoint.max_to_keep must be >= 1 (or None to keep every checkpoint), got {ck.max_to_keep}")
  for net in ("g", "d"):
    o = config.optim[net]
    # lr 0 is a legitimate way to hold a network fixed; a negative lr ascends the loss.
    _check(o.lr >= 0, f"optim.{net}.lr must be >= 0, got {o.lr}")
    for key in ("beta1", "beta2"):
      _check(0 <= o[key] < 1, f"optim.{net}.{key} must be in [0, 1), got {o[key]}")
    _check(o.eps > 0, f"optim.{net}.eps must be positive, got {o.eps}")
  optim.check_freeze(config.freeze, m.resolution)
  data_checks.check_config(config.data)
  augment.check_config(config)
  cdc.check_config(config)
  ewc.check_config(config)
  adapters.check_config(config)
  optim.check_freeze_matches(config)  # needs the model and fewshot keys checked
  try:
    sample_metrics.check([n.strip() for n in config.eval.metrics.split(",")], config.eval,
                         held_out=bool(config.eval.heldout or config.eval.real_folder),
                         transfer_source=config.transfer.source)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _check(not (config.eval.heldout and config.eval.real_folder),
         "eval.heldout=True and eval.real_folder are two sources of held-out images; set one of them")
  _check(not config.eval.heldout or config.data.source in ("synthetic", "idx"),
         f"eval.heldout=True needs held-out images, which only a synthetic domain or an IDX set has "
         f"(data.source={config.data.source!r}); set --config.eval.heldout=False and give a folder of "
         f"held-out images as --config.eval.real_folder")

  if t.r1_gamma < 0:  # StyleGAN2-ADA's heuristic
    t.r1_gamma = 0.0002 * m.resolution ** 2 / b
  if t.ema_kimg < 0:
    t.ema_kimg = b * 10 / 32
  if config.parallel.mode not in ("jit", "pmap"):
    raise ConfigError(f"parallel.mode must be 'jit' or 'pmap', got {config.parallel.mode!r}")
  return config


def _check_per_device_batch(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Checks that ``train.batch_size`` splits over ``num_devices`` into shares that the
  minibatch-stddev groups and the path-length batch divide."""
  m, t = config.model, config.train
  b = t.batch_size
  devices = f"{num_devices} device{'s' if num_devices != 1 else ''}"
  _check(b % num_devices == 0,
         f"train.batch_size={b} is not divisible by the {devices}; use a multiple "
         f"of {num_devices} (for example {num_devices * max(1, round(b / num_devices))})")
  per_device = b // num_devices
  # A group larger than the per-device batch would silently shrink to it, and then the statistic
  # would depend on the device count.
  _check(m.mbstd_num_channels == 0 or per_device % m.mbstd_group_size == 0,
         f"model.mbstd_group_size={m.mbstd_group_size} must divide the per-device batch "
         f"{per_device} (train.batch_size={b} over {devices}): minibatch-stddev groups never span "
         f"devices; use a train.batch_size that is a multiple of "
         f"{num_devices * m.mbstd_group_size}, or a model.mbstd_group_size that divides {per_device}")
  if t.pl_weight > 0:
    _check(per_device % t.pl_batch_shrink == 0 and per_device // t.pl_batch_shrink >= 1,
           f"train.pl_batch_shrink={t.pl_batch_shrink} must divide the per-device batch {per_device}")


def num_steps(config: ml_collections.ConfigDict) -> int:
  """Optimizer steps of the run: ``train.total_kimg`` thousand images at ``train.batch_size``."""
  return int(math.ceil(config.train.total_kimg * 1000 / config.train.batch_size))


def upgrade(old: dict) -> dict:
  """The config of a run written by an older gantl_jax (its ``config.json``, or the config stored
  with a checkpoint), with the keys it lacks filled in: the value such runs had
  (``VALUES_BEFORE_THE_KEY``), else today's default. Its own values, and keys that no longer
  exist, are kept as they are."""
  filled = defaults.get_config().to_dict()
  for path, value in VALUES_BEFORE_THE_KEY.items():
    section, key = path.split(".")
    filled[section][key] = value
  return _merged(filled, old)


def _merged(base: dict, over: dict) -> dict:
  out = dict(base)
  for k, v in over.items():
    out[k] = _merged(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
  return out


def to_json(config: ml_collections.ConfigDict) -> str:
  """The config as the JSON written to a run's ``config.json`` (sorted keys, 2-space indent)."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def model_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The model hyper-parameters that define what the weights mean (stored with checkpoints)."""
  m = config.model
  keys = ("resolution", "img_channels", "z_dim", "w_dim", "mapping_layers", "mapping_lr_mul",
          "channel_base", "channel_max", "conv_clamp", "mbstd_num_channels", "mbstd_grouping")
  return {k: m[k] for k in keys}
