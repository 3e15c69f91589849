"""A trained run's directory read back: its config and the G-EMA of one of its checkpoints (for
generation and offline evaluation)."""
from __future__ import annotations

import json
import os
from typing import Any, NamedTuple, Optional

import jax
import ml_collections

from gantl_jax import adapters
from gantl_jax import checkpoint
from gantl_jax import state as state_lib
from gantl_jax.config import ConfigError


class RunGEMA(NamedTuple):
  config: ml_collections.ConfigDict  # the run's resolved config (DIR/config.json)
  nets: state_lib.Networks
  step: int
  g_ema: Any                         # {'params', 'buffers'} with the requested sharding (adapters merged)


def load_g_ema(workdir: str, step: Optional[int] = None,
               sharding: Optional[jax.sharding.Sharding] = None) -> RunGEMA:
  """G-EMA of ``step`` (None or < 0: the latest) of the run in ``workdir``, read straight into
  ``sharding`` (default: the first local device). A run trained with kernel-modulation adapters
  gives its plain G: the adapters merged into the kernels (``adapters.merge_variables``)."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{config_path} not found: --workdir must be a training run directory")
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  ckpt_dir = os.path.join(workdir, "checkpoints")
  steps = checkpoint.committed_steps(ckpt_dir)
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {ckpt_dir}: train first")
  step = steps[-1] if step is None or step < 0 else step
  if step not in steps:
    raise ConfigError(f"--step {step}: {ckpt_dir} holds steps {steps}")
  nets = state_lib.build_networks(config)
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  template = jax.eval_shape(
      lambda: state_lib.init_g_variables(nets.generator, jax.random.key(0), nets.g_adapters))
  g_ema = checkpoint.read_network(ckpt_dir, step, "g_ema", jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), template))
  if nets.g_adapters:
    g_ema = jax.jit(adapters.merge_variables)(g_ema)
  return RunGEMA(config, nets, step, g_ema)
