"""Orbax checkpoints of the whole training state, as separate items.

Items of a step directory (each readable alone, e.g. ``g_ema`` for sampling or transfer):

  g, g_ema   {'params', 'buffers'} of the generator and its moving average
  d          {'params'} of the discriminator
  opt        {'g', 'd'}: optimizer states
  progress   step, images_seen, pl_mean, rng (and any other scalar training state)
  data       JSON: the input pipeline's position
  meta       JSON: 'model' hyper-parameters (what the weights mean), the resolved 'config'

Saves are asynchronous and atomic (Orbax writes to a temporary directory and renames it on
commit), so a crash during a save never damages the previous checkpoint, and a half-written one
is never listed.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from gantl_jax.state import GANState

NETWORK_ITEMS = ("g", "g_ema", "d")
STATE_ITEMS = NETWORK_ITEMS + ("opt", "progress", "data", "meta")


def make_manager(directory: str, *, max_to_keep: Optional[int] = 3, async_save: bool = True,
                 item_names: tuple[str, ...] = STATE_ITEMS) -> ocp.CheckpointManager:
  """A CheckpointManager over ``directory`` (created if missing)."""
  # Every process creates the directory itself (idempotent) instead of Orbax's create=True, which
  # adds a cross-process barrier at start-up, where processes of one job arrive furthest apart
  # (gloo's collectives time out after 30 s on CPU jobs).
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=False, enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(directory, item_names=item_names, options=options)


def _split(state: GANState) -> dict[str, Any]:
  return dict(
      g={"params": state.g_params, "buffers": state.g_buffers},
      g_ema={"params": state.g_ema_params, "buffers": state.g_ema_buffers},
      d={"params": state.d_params},
      opt={"g": state.g_opt_state, "d": state.d_opt_state},
      progress={"step": state.step, "images_seen": state.images_seen, "pl_mean": state.pl_mean,
                "rng": state.rng},
  )


def _join(items: dict[str, Any]) -> GANState:
  p = items["progress"]
  return GANState(
      step=p["step"], images_seen=p["images_seen"], pl_mean=p["pl_mean"], rng=p["rng"],
      g_params=items["g"]["params"], g_buffers=items["g"]["buffers"],
      g_ema_params=items["g_ema"]["params"], g_ema_buffers=items["g_ema"]["buffers"],
      d_params=items["d"]["params"], g_opt_state=items["opt"]["g"], d_opt_state=items["opt"]["d"])


def save(manager: ocp.CheckpointManager, state: GANState, *, data_state: dict, meta: dict,
         force: bool = False) -> bool:
  """Saves ``state`` (global arrays) at its step, asynchronously. Returns whether it saved."""
  step = int(jax.device_get(state.step))
  args = {k: ocp.args.StandardSave(v) for k, v in _split(state).items()}
  args["data"] = ocp.args.JsonSave(data_state)
  args["meta"] = ocp.args.JsonSave(meta)
  return manager.save(step, args=ocp.args.Composite(**args), force=force)


def restore(manager: ocp.CheckpointManager, abstract_state: GANState,
            step: Optional[int] = None) -> tuple[GANState, dict, dict]:
  """Restores (state, data_state, meta) at ``step`` (default: latest) into the shardings and
  structure of ``abstract_state`` (e.g. a freshly created state, or its ``jax.eval_shape``)."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}")
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _split(abstract_state))
  args = {k: ocp.args.StandardRestore(v) for k, v in target.items()}
  args["data"] = ocp.args.JsonRestore()
  args["meta"] = ocp.args.JsonRestore()
  out = manager.restore(step, args=ocp.args.Composite(**args))
  return _join({k: out[k] for k in target}), out["data"], out["meta"]


def save_networks(directory: str, *, g: Any, g_ema: Any, d: Optional[Any], meta: dict, step: int = 0) -> str:
  """Writes network items only (no optimizer or progress), e.g. imported weights, as a transfer
  source. Blocks until the checkpoint is committed."""
  items = {"g": g, "g_ema": g_ema}
  if d is not None:
    items["d"] = d
  args = {k: ocp.args.StandardSave(v) for k, v in items.items()}
  args["meta"] = ocp.args.JsonSave(meta)
  with make_manager(directory, max_to_keep=None, async_save=False, item_names=tuple(args)) as mngr:
    mngr.save(step, args=ocp.args.Composite(**args))
    mngr.wait_until_finished()
  return os.path.abspath(directory)
