"""Generators read back from disk: a trained run's directory (its config and the G-EMA of one of its
checkpoints) or a network checkpoint (written by ``launch.py --mode export`` / ``blend`` or by the
weight importer), for generation, blending, export and offline evaluation."""
from __future__ import annotations

import json
import os
from typing import Any, NamedTuple, Optional

import jax
import ml_collections

from gantl_jax import config as config_lib
from gantl_jax import errors
from gantl_jax.errors import ConfigError
from gantl_jax.fewshot import adapters
from gantl_jax.models import stylegan2
from gantl_jax.training import checkpoint
from gantl_jax.training import state as state_lib
from gantl_jax.training import transfer

NETWORK_SOURCES = ("a run directory, its checkpoints/ directory, one step directory in it, or a "
                   "network checkpoint (written by launch.py --mode export or blend, or by "
                   "gantl_jax.cli.import_stylegan2)")


class RunGEMA(NamedTuple):
  config: ml_collections.ConfigDict  # the run's resolved config (DIR/config.json)
  nets: state_lib.Networks
  step: int
  g_ema: Any                         # {'params', 'buffers'} with the requested sharding


class Network(NamedTuple):
  """A generator read from disk, ready to sample from."""
  generator: stylegan2.Generator
  variables: Any                     # plain {'params', 'buffers'} (an adapter run's merged)
  hparams: dict                      # model hyper-parameters (config.model_hparams' keys)
  step: int
  where: str                         # the step directory it was read from
  config: Optional[ml_collections.ConfigDict]  # the run's config; None for network checkpoints

  @property
  def home(self) -> str:
    """Where outputs go by default: the run directory, else the checkpoint directory."""
    directory = os.path.dirname(self.where)
    run = os.path.dirname(directory)
    is_run = os.path.basename(directory) == "checkpoints" and os.path.isfile(os.path.join(run, "config.json"))
    return run if is_run else directory


def read_config_json(path: str) -> dict:
  """A run's ``config.json`` as a dict; ``ConfigError`` naming the file when it is not a JSON
  object (empty or truncated, e.g. by a full disk)."""
  try:
    with open(path) as f:
      config = json.load(f)
  except json.JSONDecodeError as e:
    config = e
  if not isinstance(config, dict):
    why = (f"not valid JSON ({config.msg} at line {config.lineno} column {config.colno})"
           if isinstance(config, json.JSONDecodeError) else "not a JSON object")
    raise ConfigError(f"{path} is {why}; delete it: the config stored with each checkpoint is "
                      f"used instead, and the next training launch of this workdir writes it again")
  return config


def generator_variables(config: ml_collections.ConfigDict, g_vars: Any) -> Any:
  """The plain generator variables (what ``Generator.apply`` takes) of a run's stored G-EMA.

  The one place where an adapter run's G-EMA (``fewshot.adapter`` other than 'none') is merged
  into plain weights, so generation, evaluation, blending and export all see the adapted G.
  """
  return g_vars if adapters.kind(config) == "none" else jax.jit(adapters.merge_variables)(g_vars)


def _read_g_ema(ckpt_dir: str, step: int, generator: stylegan2.Generator,
                config: Optional[ml_collections.ConfigDict],
                sharding: Optional[jax.sharding.Sharding]) -> Any:
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  # An adapter run's G-EMA holds the adapter leaves next to the source kernels.
  with_adapters = config is not None and adapters.kind(config) != "none"
  template = jax.eval_shape(lambda: adapters.init_g_variables(generator, jax.random.key(0), with_adapters))
  g_ema = checkpoint.read_network(ckpt_dir, step, "g_ema", jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), template))
  return g_ema if config is None else generator_variables(config, g_ema)


def load_g_ema(workdir: str, step: Optional[int] = None,
               sharding: Optional[jax.sharding.Sharding] = None) -> RunGEMA:
  """G-EMA of ``step`` (None or < 0: the latest) of the run in ``workdir``, read straight into
  ``sharding`` (default: the first local device); an adapter run's is merged."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{config_path} not found: --workdir must be a training run directory")
  config = ml_collections.ConfigDict(config_lib.upgrade(read_config_json(config_path)))
  ckpt_dir = os.path.join(workdir, "checkpoints")
  steps = checkpoint.committed_steps(ckpt_dir)
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {ckpt_dir}: train first")
  step = steps[-1] if step is None or step < 0 else step
  if step not in steps:
    raise ConfigError(f"--step {step}: {ckpt_dir} holds steps {steps}")
  nets = state_lib.build_networks(config)
  return RunGEMA(config, nets, step, _read_g_ema(ckpt_dir, step, nets.generator, config, sharding))


def generator_from_hparams(hparams: dict) -> stylegan2.Generator:
  """The float32 Generator of stored model hyper-parameters (a checkpoint's ``meta['model']``)."""
  model = config_lib.upgrade({"model": {**hparams, "conv_impl": "auto"}})["model"]
  return stylegan2.generator_from_config(ml_collections.ConfigDict(model))


def load_network(path: str, step: Optional[int] = None, flag: str = "--workdir",
                 sharding: Optional[jax.sharding.Sharding] = None) -> Network:
  """The G-EMA generator at ``path``: a run directory, its checkpoints/ directory, one step
  directory, or a network checkpoint; ``step`` None or < 0: the latest (or the given step
  directory's). ``flag`` names the command-line flag that gave ``path`` in error messages."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"{flag} {path} does not exist: give {NETWORK_SOURCES}")
  step = None if step is None or step < 0 else step
  if os.path.isfile(os.path.join(path, "config.json")):
    run = load_g_ema(path, step)
    where = os.path.join(path, "checkpoints", str(run.step))
    return Network(run.nets.generator, run.g_ema, config_lib.model_hparams(run.config), run.step,
                   where, run.config)
  try:
    directory, located = transfer.locate(path)
  except errors.TransferError:
    raise ConfigError(f"{flag} {path} holds no checkpoint: give {NETWORK_SOURCES}") from None
  steps = checkpoint.committed_steps(directory)
  if step is not None and step not in steps:
    raise ConfigError(f"--step {step}: {directory} holds steps {steps}")
  step = located if step is None else step
  where = os.path.join(directory, str(step))
  if not os.path.isdir(os.path.join(where, "g_ema")):
    raise ConfigError(f"{flag} {path}: {where} holds no G-EMA ('g_ema' item); give {NETWORK_SOURCES}")
  with checkpoint.make_manager(directory, item_names=("meta",), read_only=True, max_to_keep=None) as m:
    meta = checkpoint.read_meta(m, step) if os.path.isdir(os.path.join(where, "meta")) else {}
  if not meta.get("model"):
    raise ConfigError(f"{flag} {path}: {where} stores no model hyper-parameters (meta['model']), "
                      f"so its generator cannot be built; give {NETWORK_SOURCES}")
  config = ml_collections.ConfigDict(config_lib.upgrade(meta["config"])) if meta.get("config") else None
  generator = (stylegan2.generator_from_config(config.model) if config is not None
               else generator_from_hparams(meta["model"]))
  variables = _read_g_ema(directory, step, generator, config, sharding)
  return Network(generator, variables, dict(meta["model"]), step, where, config)
