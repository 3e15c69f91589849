"""Transfer learning: start a run from another run's (or the weight importer's) Orbax checkpoint.

``transfer_state(config, nets, state, workdir=...)`` takes the freshly initialised state of the
target config and overlays on it the source's weights:

1. ``config.transfer.source`` is located: a run's workdir, its ``checkpoints/`` directory (the
   latest step is used) or one step directory. A missing source fails at once (``preflight``).
2. The source's ``meta`` item holds the model hyper-parameters it was trained with; those that
   change what the weights mean (z_dim, w_dim, mapping depth, channels, ...) must equal the
   target's. The resolution may differ: blocks are named by resolution, so shared blocks match.
3. Target leaves ('params/...' and 'buffers/...') are matched to the source item
   (``transfer.g_from`` / ``g_ema_from`` / ``d_from``) by path and shape, using Orbax's item
   metadata (shapes without reading data). Leaves missing from the source or of another shape are
   an error listing all of them (``transfer.on_mismatch='error'``), or keep their fresh
   initialisation (``'init'``).
4. The matched leaves are read with a partial restore straight into the target's shardings and
   replace the fresh ones. Optimizer moments, step and counters stay fresh (step 0).
5. ``transfer_report.json`` in the workdir lists what was restored, kept at init, present only in
   the source, frozen and trainable; a summary is printed.

``step_flops`` measures XLA's cost analysis of the compiled train step, which shows that frozen
parameters cost no weight-gradient FLOPs (``python -m gantl_jax.transfer --config ...``).
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from gantl_jax import config as config_lib
from gantl_jax import optim
from gantl_jax import state as state_lib

NETWORKS = ("g", "g_ema", "d")
# Model hyper-parameters whose change makes the source weights meaningless for the target.
# (resolution may differ; conv_clamp only clips activations and is reported, not enforced.)
MUST_MATCH = ("img_channels", "z_dim", "w_dim", "mapping_layers", "mapping_lr_mul",
              "channel_base", "channel_max", "mbstd_num_channels")
HOW_TO_MAKE_A_SOURCE = (
    "Provide --config.transfer.source=DIR, where DIR is a checkpoint of this project: train one, "
    "e.g. the demo source `python launch.py --config configs/demo_photo.py --workdir "
    "runs/demo_photo` (then DIR=runs/demo_photo/checkpoints), or import pretrained StyleGAN2 "
    "weights with `python -m gantl_jax.tools.import_stylegan2 NETWORK.pkl DIR`.")


class TransferError(config_lib.ConfigError):
  """The transfer source cannot be used with this config; the message says what to change."""


class Source(NamedTuple):
  """A located source checkpoint: its manager directory, step, item shapes and meta."""
  directory: str
  step: int
  shapes: dict[str, dict[str, tuple[int, ...]]]  # item -> {'params/...': shape}
  meta: dict


# ---------------------------------------------------------------------------
# Locating and reading the source.


def _steps_in(directory: str) -> list[int]:
  """Committed Orbax steps in a manager directory (temporary, uncommitted dirs are not digits)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def locate(source: str) -> tuple[str, int]:
  """(manager directory, step) of ``source``: a run workdir, its checkpoints dir or a step dir."""
  path = os.path.abspath(os.path.expanduser(source))
  if not os.path.exists(path):
    raise TransferError(f"transfer.source {source!r} does not exist. {HOW_TO_MAKE_A_SOURCE}")
  if _steps_in(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")  # a run's workdir
  steps = _steps_in(path)
  if steps:
    return path, steps[-1]
  name = os.path.basename(path)
  if name.isdigit() and os.path.exists(os.path.join(path, "_CHECKPOINT_METADATA")):
    return os.path.dirname(path), int(name)
  raise TransferError(f"transfer.source {source!r} holds no Orbax checkpoint (expected a run "
                      f"workdir, its checkpoints/ directory or one step directory in it). "
                      f"{HOW_TO_MAKE_A_SOURCE}")


def _open(directory: str, step: int) -> ocp.CheckpointManager:
  """A read-only manager of the source, with its own handlers (a manager binds handler types on
  first use, so the run's own manager must never touch the source). Every item of the step gets
  a handler, so Orbax does not warn about the ones transfer never reads (opt, progress, data)."""
  step_dir = os.path.join(directory, str(step))
  items = [n for n in os.listdir(step_dir) if os.path.isdir(os.path.join(step_dir, n))]
  handlers = {k: ocp.JsonCheckpointHandler() if k in ("meta", "data") else ocp.PyTreeCheckpointHandler()
              for k in items}
  options = ocp.CheckpointManagerOptions(read_only=True, create=False)
  return ocp.CheckpointManager(directory, item_handlers=handlers, options=options)


def _flat(tree: Any) -> dict[str, Any]:
  return traverse_util.flatten_dict(tree, sep="/")


def read_source(source: str) -> Source:
  """Locates ``source`` and reads its meta and the shapes of its network items (no array data)."""
  directory, step = locate(source)
  step_dir = os.path.join(directory, str(step))
  present = [k for k in NETWORKS if os.path.isdir(os.path.join(step_dir, k))]
  with _open(directory, step) as mngr:
    meta = {}
    if os.path.isdir(os.path.join(step_dir, "meta")):
      meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    metadata = mngr.item_metadata(step)
    shapes = {}
    for item in present:
      tree = metadata[item]
      tree = getattr(tree, "tree", tree)
      shapes[item] = {p: tuple(m.shape) for p, m in _flat(tree).items()}
  return Source(directory, step, shapes, meta)


def check_hparams(source_model: Optional[dict], config: ml_collections.ConfigDict, where: str) -> list[str]:
  """Raises unless the source's model hyper-parameters give its weights the target's meaning.

  Returns notes on harmless differences (resolution, conv_clamp).
  """
  if not source_model:
    raise TransferError(f"transfer.source {where} has no 'meta' item with the 'model' "
                        f"hyper-parameters, so its weights cannot be checked; make sources with "
                        f"this project's training or with gantl_jax.tools.import_stylegan2")
  target = config_lib.model_hparams(config)
  wrong = [k for k in MUST_MATCH if k in source_model and source_model[k] != target[k]]
  if wrong:
    details = ", ".join(f"{k}: source {source_model[k]!r}, target {target[k]!r}" for k in wrong)
    flags = " ".join(f"--config.model.{k}={source_model[k]}" for k in wrong)
    raise TransferError(f"transfer.source {where} was trained with other model hyper-parameters "
                        f"({details}); its weights would be meaningless for this model. "
                        f"Set {flags}")
  notes = []
  for k in ("resolution", "conv_clamp"):
    if k in source_model and source_model[k] != target[k]:
      notes.append(f"model.{k}: source {source_model[k]!r}, target {target[k]!r}")
  return notes


def preflight(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Fails at once (before data preparation and compilation) if the run will transfer from a
  source that is missing or does not fit. A run that will resume from its workdir is not checked."""
  if _steps_in(os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")):
    return
  t = config.transfer
  if t.source is None:
    raise TransferError(f"this config needs a transfer source. {HOW_TO_MAKE_A_SOURCE}")
  if not t.source:
    return
  if t.on_mismatch not in ("error", "init"):
    raise TransferError(f"transfer.on_mismatch must be 'error' or 'init', got {t.on_mismatch!r}")
  src = read_source(t.source)
  check_hparams(src.meta.get("model"), config, f"{src.directory}/{src.step}")
  for net in NETWORKS:
    item = t[f"{net}_from"]
    if item and item not in src.shapes:
      raise TransferError(
          f"transfer.{net}_from={item!r}: the source {src.directory}/{src.step} has no item "
          f"{item!r} (it has {sorted(src.shapes)}); choose one of those, or set "
          f"--config.transfer.{net}_from='' to keep {net} at its initialisation")


# ---------------------------------------------------------------------------
# Matching and restoring.


def match(target: dict[str, tuple], source: dict[str, tuple]) -> dict[str, list]:
  """Splits flat {path: shape} dicts into restored / mismatched (shape differs or missing from
  the source) / source_only paths."""
  restored = sorted(p for p in target if p in source and tuple(source[p]) == tuple(target[p]))
  mismatched = [dict(path=p, target=list(target[p]), source=list(source[p]) if p in source else None)
                for p in sorted(target) if p not in restored]
  return dict(restored=restored, mismatched=mismatched,
              source_only=sorted(p for p in source if p not in target))


def _restore_leaves(mngr: ocp.CheckpointManager, step: int, item: str, fresh: dict[str, jax.Array],
                    paths: list[str]) -> dict[str, jax.Array]:
  """The ``paths`` of ``item``, read into the shapes, dtypes and shardings of ``fresh``."""
  if not paths:
    return {}
  target = traverse_util.unflatten_dict(
      {p: jax.ShapeDtypeStruct(fresh[p].shape, fresh[p].dtype, sharding=fresh[p].sharding)
       for p in paths}, sep="/")
  args = ocp.args.PyTreeRestore(item=target, partial_restore=True,
                                restore_args=ocp.checkpoint_utils.construct_restore_args(target))
  out = mngr.restore(step, args=ocp.args.Composite(**{item: args}))[item]
  return _flat(out)


def _variables(state: state_lib.GANState, net: str) -> dict:
  if net == "d":
    return {"params": state.d_params}
  prefix = "g_ema_" if net == "g_ema" else "g_"
  return {"params": getattr(state, prefix + "params"), "buffers": getattr(state, prefix + "buffers")}


def _replace(state: state_lib.GANState, net: str, variables: dict) -> state_lib.GANState:
  if net == "d":
    return state.replace(d_params=variables["params"])
  prefix = "g_ema_" if net == "g_ema" else "g_"
  return state.replace(**{prefix + "params": variables["params"], prefix + "buffers": variables["buffers"]})


def _count(flat: dict[str, Any], paths) -> int:
  return int(sum(np.prod(flat[p].shape, dtype=np.int64) for p in paths))


def freeze_report(config: ml_collections.ConfigDict, state: state_lib.GANState) -> dict:
  """Frozen and trainable parameter paths of G and D under ``config.freeze``."""
  f = config.freeze
  g_patterns, d_patterns = optim.freeze_patterns(f, config.model.resolution)
  out = dict(preset=f.preset, g_patterns=list(g_patterns), d_patterns=list(d_patterns))
  for net, params, patterns, mults in (("g", state.g_params, g_patterns, f.g_lr_mults),
                                       ("d", state.d_params, d_patterns, f.d_lr_mults)):
    flat = _flat(params)
    frozen = optim.frozen_paths(params, patterns, mults)
    trainable = sorted(p for p in flat if p not in frozen)
    out[net] = dict(frozen=frozen, trainable=trainable, frozen_count=_count(flat, frozen),
                    trainable_count=_count(flat, trainable))
  return out


def transfer_state(config: ml_collections.ConfigDict, nets: state_lib.Networks, state: state_lib.GANState,
                   *, workdir: Optional[str] = None) -> tuple[state_lib.GANState, dict]:
  """Overlays the source weights of ``config.transfer`` on the fresh ``state`` (global arrays,
  the ``jit`` layout) and returns (state, report). Writes ``transfer_report.json`` to ``workdir``.

  The optimizer state, step and counters of ``state`` are kept: they are fresh (Adam moments are
  zeros whatever the weights), so the run starts at step 0.
  """
  del nets  # the state already has the target's structure; kept for a uniform signature
  t = config.transfer
  if t.on_mismatch not in ("error", "init"):
    raise TransferError(f"transfer.on_mismatch must be 'error' or 'init', got {t.on_mismatch!r}")
  src = read_source(t.source)
  where = f"{src.directory}/{src.step}"
  notes = check_hparams(src.meta.get("model"), config, where)

  # Match every network first, so an error lists all problems at once.
  plan = {}
  for net in NETWORKS:
    item = t[f"{net}_from"]
    fresh = _flat(_variables(state, net))
    if not item:
      plan[net] = dict(item=None, fresh=fresh, restored=[], mismatched=[], source_only=[])
      continue
    if item not in src.shapes:
      raise TransferError(f"transfer.{net}_from={item!r}: the source {where} has no item {item!r} "
                          f"(it has {sorted(src.shapes)}); set --config.transfer.{net}_from to one "
                          f"of those, or to '' to keep {net} at its initialisation")
    plan[net] = dict(item=item, fresh=fresh, **match({p: v.shape for p, v in fresh.items()}, src.shapes[item]))
  mismatched = [(net, m) for net in NETWORKS for m in plan[net]["mismatched"]]
  if mismatched and t.on_mismatch == "error":
    lines = "\n".join(f"  {net} <- {plan[net]['item']}: {m['path']}  target {tuple(m['target'])}, "
                      f"source {'missing' if m['source'] is None else tuple(m['source'])}"
                      for net, m in mismatched)
    raise TransferError(
        f"transfer.source {where}: {len(mismatched)} target parameters/buffers have no counterpart "
        f"of the same shape in the source:\n{lines}\nSet --config.transfer.on_mismatch=init to keep "
        f"the fresh initialisation for these (expected when the resolution differs).")

  with _open(src.directory, src.step) as mngr:
    for net in NETWORKS:
      p = plan[net]
      if p["item"] is None:
        continue
      # One read per network, so G and G-EMA never share buffers (the step donates the state).
      restored = _restore_leaves(mngr, src.step, p["item"], p["fresh"], p["restored"])
      state = _replace(state, net, traverse_util.unflatten_dict({**p["fresh"], **restored}, sep="/"))

  report = dict(
      source=dict(path=t.source, directory=src.directory, step=src.step, model=src.meta.get("model")),
      on_mismatch=t.on_mismatch, notes=notes, networks={}, freeze=freeze_report(config, state))
  for net in NETWORKS:
    p = plan[net]
    kept = [m["path"] for m in p["mismatched"]] if p["item"] else sorted(p["fresh"])
    report["networks"][net] = dict(
        source_item=p["item"], restored=p["restored"], kept_at_init=kept,
        mismatched=p["mismatched"], source_only=p["source_only"],
        restored_count=_count(p["fresh"], p["restored"]), kept_at_init_count=_count(p["fresh"], kept))
  if workdir is not None and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "transfer_report.json"), "w") as f:
      json.dump(report, f, indent=1)
  if jax.process_index() == 0:
    print(summary(report), flush=True)
  logging.info("transfer from %s done", where)
  return state, report


def summary(report: dict) -> str:
  """A few lines for the console: counts per network, and the paths kept at init."""
  src = report["source"]
  lines = [f"transfer from {src['directory']} step {src['step']} (on_mismatch={report['on_mismatch']})"]
  lines += [f"  note: {n}" for n in report["notes"]]
  for net, r in report["networks"].items():
    lines.append(f"  {net:5s} <- {r['source_item'] or '(none)':5s}  restored {len(r['restored'])} "
                 f"({r['restored_count']:,} values), kept at init {len(r['kept_at_init'])} "
                 f"({r['kept_at_init_count']:,}), only in source {len(r['source_only'])}")
    for path in r["kept_at_init"][:20]:
      lines.append(f"        init: {path}")
    if len(r["kept_at_init"]) > 20:
      lines.append(f"        ... {len(r['kept_at_init']) - 20} more in transfer_report.json")
  f = report["freeze"]
  lines.append(f"  freeze preset {f['preset']!r}: G patterns {f['g_patterns']}, D patterns {f['d_patterns']}")
  for net in ("g", "d"):
    lines.append(f"  {net}: frozen {len(f[net]['frozen'])} ({f[net]['frozen_count']:,} values), "
                 f"trainable {len(f[net]['trainable'])} ({f[net]['trainable_count']:,} values)")
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# What freezing saves: XLA's cost analysis of the compiled step.


def compile_step(config: ml_collections.ConfigDict, *, do_g_reg: bool = False, do_d_reg: bool = False,
                 nets: Optional[state_lib.Networks] = None):
  """The train step of ``config`` (resolved) compiled for one device, from abstract shapes."""
  from gantl_jax import steps  # the loop's modules; this file needs them only here
  nets = nets or state_lib.build_networks(config)
  step = functools.partial(steps.make_train_step(config, nets), do_g_reg=do_g_reg, do_d_reg=do_d_reg)
  m = config.model
  abstract_state = jax.eval_shape(lambda: state_lib.init_state(nets, 0))
  batch = jax.ShapeDtypeStruct((config.train.batch_size, m.resolution, m.resolution, m.img_channels), jnp.float32)
  return jax.jit(step).lower(abstract_state, batch).compile()


def flops(compiled) -> float:
  """FLOPs of a compiled function by XLA's cost analysis."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0]
  return float(cost["flops"])


def step_flops(config: ml_collections.ConfigDict, **kwargs) -> float:
  """FLOPs of one train step (the variant given by ``do_g_reg`` / ``do_d_reg``)."""
  return flops(compile_step(config, **kwargs))


def main(argv):
  """CLI: FLOPs of the config's train step with its freezing and with nothing frozen."""
  del argv
  config = config_lib.resolve(_CONFIG.value)
  unfrozen = ml_collections.ConfigDict(config.to_dict())
  unfrozen.freeze.update(preset="none", g="", d="")
  with_freeze, without = step_flops(config), step_flops(unfrozen)
  print(json.dumps(dict(preset=config.freeze.preset, resolution=config.model.resolution,
                        batch_size=config.train.batch_size, flops_frozen=with_freeze,
                        flops_unfrozen=without, ratio=with_freeze / without)))


if __name__ == "__main__":
  from absl import app
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file with get_config().")
  app.run(main)
