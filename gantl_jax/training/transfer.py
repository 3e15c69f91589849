"""Transfer learning: start a run from another run's (or the weight importer's) Orbax checkpoint.

``transfer_state(config, nets, state, workdir=...)`` takes the freshly initialised state of the
target config and overlays on it the source's weights:

1. ``config.transfer.source`` is located: a run's workdir, its ``checkpoints/`` directory (the
   latest step is used) or one step directory. A missing source fails at once (``preflight``), and
   so does a damaged one: the preflight reads every array the transfer will restore.
2. The source's ``meta`` item holds the model hyper-parameters it was trained with; those that
   change what the weights mean (z_dim, w_dim, mapping depth, channels, ...) must equal the
   target's. The resolution may differ: blocks are named by resolution, so shared blocks match.
   One change of ``img_channels`` is accepted: an RGB source for a grayscale target (3 -> 1),
   whose toRGB and fromRGB leaves are folded exactly (:func:`fold_to_gray`).
3. Target leaves ('params/...' and 'buffers/...') are matched to the source item
   (``transfer.g_from`` / ``g_ema_from`` / ``d_from``) by path and shape, using Orbax's item
   metadata (shapes without reading data). Leaves missing from the source or of another shape are
   an error listing all of them (``transfer.on_mismatch='error'``), or keep their fresh
   initialisation (``'init'``). Parameters that only a training method adds (``NEW_IN_TARGET``:
   CDC's patch head of D; and G's kernel-modulation adapter leaves, whose initialisation is the
   identity modulation) keep their initialisation when the source lacks them, without either.
4. The matched leaves are read with a partial restore straight into the target's shardings and
   replace the fresh ones. Optimizer moments, step and counters stay fresh (step 0).
5. The report (the loop writes it as ``transfer_report.json``) lists what was restored, folded
   to grayscale, kept at init (of which ``new``: those only a training method adds), present only
   in the source, frozen and trainable (with adapters: which layers are modulated);
   :func:`summary` prints it.

``read_frozen`` reads a source network's variables for the steps' ``frozen`` argument (the
few-shot regularisers compare the adapted G with the source G).

What freezing saves in FLOPs: ``python -m gantl_jax.cli.bench --config ... --freeze_flops``.
"""
from __future__ import annotations

import math
import os
from typing import Any, NamedTuple, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from gantl_jax import config as config_lib
from gantl_jax.errors import TransferError
from gantl_jax.fewshot import adapters
from gantl_jax.models import stylegan2
from gantl_jax.training import checkpoint
from gantl_jax.training import optim
from gantl_jax.training import state as state_lib

NETWORKS = tuple(state_lib.NETWORKS)
# Path prefixes, per network, of parameters that only a training method adds and that no source
# has (pretrained StyleGAN2, or a run without that method): CDC's patch head of D. When the source
# lacks them they keep their fresh initialisation whatever transfer.on_mismatch says, and the
# report lists them under 'new'. (One of another shape in the source is still a mismatch.)
NEW_IN_TARGET = {"d": (f"params/{stylegan2.PATCH_HEAD}/",)}


def _new_in_target(net: str, path: str) -> bool:
  """Whether ``path`` of network ``net`` is a parameter only a training method adds: those of
  ``NEW_IN_TARGET``, and the adapter leaves of G (``fewshot.adapter``)."""
  return path.startswith(NEW_IN_TARGET.get(net, ())) or adapters.is_adapter_path(path)

# Model hyper-parameters whose change makes the source weights meaningless for the target.
# (resolution may differ; conv_clamp only clips activations and is reported, not enforced.)
MUST_MATCH = ("img_channels", "z_dim", "w_dim", "mapping_layers", "mapping_lr_mul",
              "channel_base", "channel_max", "mbstd_num_channels")
# ITU-R 601-2 luma: the weights of R, G, B in the grayscale image folded from an RGB generator,
# those with which the data pipeline converts RGB images (PIL's convert('L')).
LUMA = (0.299, 0.587, 0.114)
HOW_TO_MAKE_A_SOURCE = (
    "Provide --config.transfer.source=DIR, where DIR is a checkpoint of this project: train one, "
    "e.g. the demo source `python launch.py --config configs/demo_photo.py --workdir "
    "runs/demo_photo` (then DIR=runs/demo_photo/checkpoints), or import pretrained StyleGAN2 "
    "weights with `python -m gantl_jax.cli.import_stylegan2 NETWORK.pkl DIR`.")


class Source(NamedTuple):
  """A located source checkpoint: its manager directory, step, item shapes and meta."""
  directory: str
  step: int
  shapes: dict[str, dict[str, tuple[int, ...]]]  # item -> {'params/...': shape}
  meta: dict


# ---------------------------------------------------------------------------
# Locating and reading the source.


def locate(source: str) -> tuple[str, int]:
  """(manager directory, step) of ``source``: a run workdir, its checkpoints dir or a step dir."""
  path = os.path.abspath(os.path.expanduser(source))
  if not os.path.exists(path):
    raise TransferError(f"transfer.source {source!r} does not exist. {HOW_TO_MAKE_A_SOURCE}")
  if checkpoint.committed_steps(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")  # a run's workdir
  steps = checkpoint.committed_steps(path)
  if steps:
    return path, steps[-1]
  name = os.path.basename(path)
  if name.isdigit() and os.path.exists(os.path.join(path, "_CHECKPOINT_METADATA")):
    return os.path.dirname(path), int(name)
  raise TransferError(f"transfer.source {source!r} holds no Orbax checkpoint (expected a run "
                      f"workdir, its checkpoints/ directory or one step directory in it). "
                      f"{HOW_TO_MAKE_A_SOURCE}")


def _open(directory: str, step: int) -> ocp.CheckpointManager:
  """A read-only manager of the source, of its own (the run's manager never touches the source).
  Every item of the step gets a handler, so Orbax does not warn about the ones transfer never
  reads (opt, progress, data)."""
  step_dir = os.path.join(directory, str(step))
  items = tuple(n for n in os.listdir(step_dir) if os.path.isdir(os.path.join(step_dir, n)))
  return checkpoint.make_manager(directory, max_to_keep=None, item_names=items, read_only=True)


def _flat(tree: Any) -> dict[str, Any]:
  return traverse_util.flatten_dict(tree, sep="/")


def read_source(source: str) -> Source:
  """Locates ``source`` and reads its meta and the shapes of its network items (no array data)."""
  directory, step = locate(source)
  step_dir = os.path.join(directory, str(step))
  present = [k for k in NETWORKS if os.path.isdir(os.path.join(step_dir, k))]
  where = f"{directory}/{step}"
  with _open(directory, step) as mngr:
    try:
      meta = checkpoint.read_meta(mngr, step) if os.path.isdir(os.path.join(step_dir, "meta")) else {}
    except Exception as e:  # pylint: disable=broad-except  (see _damaged)
      raise _damaged(where, "meta", e) from None
    try:
      metadata = mngr.item_metadata(step)
    except Exception as e:  # pylint: disable=broad-except
      raise _damaged(where, _unreadable_item(directory, step, present), e) from None
    shapes = {}
    for item in present:
      tree = metadata[item]
      tree = getattr(tree, "tree", tree)
      if not isinstance(tree, dict):  # Orbax gives None when the item's _METADATA is missing
        raise _damaged(where, item, f"{os.path.join(step_dir, item, '_METADATA')} is missing or unreadable")
      shapes[item] = {p: tuple(m.shape) for p, m in _flat(tree).items()}
  return Source(directory, step, shapes, meta)


def _unreadable_item(directory: str, step: int, items: list[str]) -> str:
  """The first of ``items`` whose metadata a manager of that item alone cannot read (the error of
  reading all items at once does not say which); 'item metadata' if each reads alone."""
  for item in items:
    try:
      with checkpoint.make_manager(directory, max_to_keep=None, item_names=(item,), read_only=True) as mngr:
        mngr.item_metadata(step)
    except Exception:  # pylint: disable=broad-except
      return item
  return "item metadata"


def _damaged(where: str, item: str, cause: Any) -> "TransferError":
  """The one-line error for a source item that cannot be read. Orbax and TensorStore raise
  assorted types for damaged files (AssertionError for a missing _METADATA, ValueError for a
  truncated data file, ...), with messages of many lines: the first line says what broke."""
  text = f"{type(cause).__name__}: {cause}" if isinstance(cause, BaseException) else str(cause)
  first = text.strip().splitlines()[0] if text.strip() else type(cause).__name__
  return TransferError(f"transfer.source {where}: its item {item!r} cannot be read ({first[:400]}); the "
                       f"checkpoint is damaged or incomplete: copy it again, or point "
                       f"--config.transfer.source at another checkpoint")


def check_hparams(source_model: Optional[dict], config: ml_collections.ConfigDict, where: str) -> list[str]:
  """Raises unless the source's model hyper-parameters give its weights the target's meaning.

  Returns notes on harmless differences (resolution, conv_clamp).
  """
  if not source_model:
    raise TransferError(f"transfer.source {where} has no 'meta' item with the 'model' "
                        f"hyper-parameters, so its weights cannot be checked; make sources with "
                        f"this project's training or with gantl_jax.cli.import_stylegan2")
  target = config_lib.model_hparams(config)
  gray = _gray_from_rgb(source_model, config)
  wrong = [k for k in MUST_MATCH if k in source_model and source_model[k] != target[k]
           and not (k == "img_channels" and gray)]
  if wrong:
    details = ", ".join(f"{k}: source {source_model[k]!r}, target {target[k]!r}" for k in wrong)
    flags = " ".join(f"--config.model.{k}={source_model[k]}" for k in wrong)
    raise TransferError(f"transfer.source {where} was trained with other model hyper-parameters "
                        f"({details}); its weights would be meaningless for this model. "
                        f"Set {flags}")
  notes = []
  if gray:
    notes.append("model.img_channels: source 3 (RGB), target 1 (grayscale): G's toRGB layers give "
                 "the luma of the source's image, D's fromRGB layers see a gray image as RGB with "
                 "equal channels (the folded leaves are listed per network)")
  for k in ("resolution", "conv_clamp", "mbstd_grouping"):
    if k in source_model and source_model[k] != target[k]:
      notes.append(f"model.{k}: source {source_model[k]!r}, target {target[k]!r}")
  return notes


def preflight(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Fails at once (before data preparation and compilation) if the run will transfer from a
  source that is missing or does not fit. A run that will resume from its workdir is not checked."""
  if checkpoint.committed_steps(os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")):
    return
  t = config.transfer
  if t.source is None:
    raise TransferError(f"this config needs a transfer source. {HOW_TO_MAKE_A_SOURCE}")
  if not t.source:
    return
  src = read_source(t.source)
  check_hparams(src.meta.get("model"), config, f"{src.directory}/{src.step}")
  nets = state_lib.build_networks(config)
  plan = _plan(config, src, jax.eval_shape(lambda: state_lib.init_state(nets, 0)))
  # Every array the transfer will restore is read once now, into host memory, and dropped: a
  # damaged data file stops the launch here, before the run writes anything. (Sources are a few
  # hundred MB at most: a second read costs seconds.)
  wanted: dict[str, set] = {}
  for net in NETWORKS:
    if plan[net]["item"] is not None:
      wanted.setdefault(plan[net]["item"], set()).update(plan[net]["restored"] + plan[net]["folded"])
  with _open(src.directory, src.step) as mngr:
    for item, paths in wanted.items():
      # One leaf at a time: when a read fails, no other read of the item is left in flight, whose
      # completion after Orbax closed its event loop would print tracebacks.
      for path in sorted(paths):
        _read_host(mngr, src, item, [path])


def _plan(config: ml_collections.ConfigDict, src: Source, state: state_lib.GANState) -> dict:
  """Matches every network of ``state`` (arrays or shapes) with its source item; raises with
  every problem at once, unless ``transfer.on_mismatch='init'`` accepts the mismatches."""
  t = config.transfer
  if t.on_mismatch not in ("error", "init"):
    raise TransferError(f"transfer.on_mismatch must be 'error' or 'init', got {t.on_mismatch!r}")
  where = f"{src.directory}/{src.step}"
  plan = {}
  for net in NETWORKS:
    item = t[f"{net}_from"]
    fresh = _flat(_variables(state, net))
    if not item:
      plan[net] = dict(item=None, fresh=fresh, restored=[], folded=[], mismatched=[], source_only=[], new=[])
      continue
    if item not in src.shapes:
      raise TransferError(f"transfer.{net}_from={item!r}: the source {where} has no item {item!r} "
                          f"(it has {sorted(src.shapes)}); set --config.transfer.{net}_from to one "
                          f"of those, or to '' to keep {net} at its initialisation")
    _refuse_adapted_source(src, item)
    m = match({p: v.shape for p, v in fresh.items()}, src.shapes[item],
              fold_gray=_gray_from_rgb(src.meta.get("model"), config))
    is_new = lambda mm: mm["source"] is None and _new_in_target(net, mm["path"])
    plan[net] = dict(item=item, fresh=fresh, restored=m["restored"], folded=m["folded"],
                     source_only=m["source_only"],
                     mismatched=[mm for mm in m["mismatched"] if not is_new(mm)],
                     new=[mm["path"] for mm in m["mismatched"] if is_new(mm)])
  mismatched = [(net, m) for net in NETWORKS for m in plan[net]["mismatched"]]
  if mismatched and t.on_mismatch == "error":
    lines = "\n".join(f"  {net} <- {plan[net]['item']}: {m['path']}  target {tuple(m['target'])}, "
                      f"source {'missing' if m['source'] is None else tuple(m['source'])}"
                      for net, m in mismatched)
    raise TransferError(
        f"transfer.source {where}: {len(mismatched)} target parameters/buffers have no counterpart "
        f"of the same shape in the source:\n{lines}\nSet --config.transfer.on_mismatch=init to keep "
        f"the fresh initialisation for these (expected when the resolution differs).")
  return plan


def _refuse_adapted_source(src: Source, item: str) -> None:
  """A source trained with adapters holds its adaptation in the adapter leaves, which a plain
  read of its kernels would lose."""
  if any(adapters.is_adapter_path(p) for p in src.shapes[item]):
    raise TransferError(f"transfer.source {src.directory}/{src.step}: its {item!r} was trained with "
                        f"kernel-modulation adapters; export it to a plain checkpoint first "
                        f"(adapters.merge_variables) and transfer from that")


# ---------------------------------------------------------------------------
# Matching and restoring.


def match(target: dict[str, tuple], source: dict[str, tuple], fold_gray: bool = False) -> dict[str, list]:
  """Splits flat {path: shape} dicts into restored / folded (with ``fold_gray``: RGB leaves that
  :func:`fold_to_gray` gives the target's shape) / mismatched (shape differs or missing from the
  source) / source_only paths."""
  restored = sorted(p for p in target if p in source and tuple(source[p]) == tuple(target[p]))
  folded = sorted(p for p in target if fold_gray and p in source and p not in restored
                  and _gray_shape(p, source[p]) == tuple(target[p]))
  mismatched = [dict(path=p, target=list(target[p]), source=list(source[p]) if p in source else None)
                for p in sorted(target) if p not in restored and p not in folded]
  return dict(restored=restored, folded=folded, mismatched=mismatched,
              source_only=sorted(p for p in source if p not in target))


# ---------------------------------------------------------------------------
# A grayscale target from an RGB source.


def _gray_from_rgb(source_model: Optional[dict], config: ml_collections.ConfigDict) -> bool:
  """Whether the source is an RGB network and the target a grayscale one."""
  return bool(source_model) and source_model.get("img_channels") == 3 and config.model.img_channels == 1


def _rgb_layer(path: str) -> Optional[str]:
  """'torgb' or 'fromrgb' for the leaves whose shape has the image channels, else None."""
  parts = path.split("/")
  if parts[-2:] in (["torgb", "weight"], ["torgb", "bias"]):
    return "torgb"
  if parts[-2:] == ["fromrgb", "weight"]:
    return "fromrgb"
  return None


def _gray_shape(path: str, shape: tuple) -> Optional[tuple]:
  """The shape :func:`fold_to_gray` gives the RGB leaf ``path`` of ``shape``; None if it folds none."""
  shape, layer = tuple(shape), _rgb_layer(path)
  if layer == "torgb" and shape[-1:] == (3,):
    return shape[:-1] + (1,)
  if layer == "fromrgb" and len(shape) == 4 and shape[2] == 3:
    return shape[:2] + (1,) + shape[3:]
  return None


def fold_to_gray(path: str, value: np.ndarray) -> np.ndarray:
  """The grayscale network's leaf ``path`` from the RGB network's ``value``, exactly.

  G's toRGB (``.../torgb/weight`` HWIO with O = 3, ``.../torgb/bias`` (3,)): a layer linear in
  its weight and bias whose outputs are summed over the blocks, so the weighted sum of the 3
  output channels with `LUMA` gives the luma of the RGB image (its affine, over the input
  channels, is unchanged). Exact as long as ``model.conv_clamp`` does not clip the image.
  D's fromRGB (``.../fromrgb/weight`` HWIO with I = 3): on a gray image x repeated as (x, x, x)
  the RGB layer computes (W_R + W_G + W_B) x / sqrt(3) (its equalised learning rate divides by
  sqrt(fan_in)), so the folded weight is that sum over the input channels times sqrt(1 / 3).
  """
  layer = _rgb_layer(path)
  value = np.asarray(value)
  if layer == "torgb":
    luma = np.asarray(LUMA, np.float64)
    return (value.astype(np.float64) @ luma)[..., None].astype(value.dtype)
  if layer == "fromrgb":
    return (value.astype(np.float64).sum(axis=2, keepdims=True) / math.sqrt(3)).astype(value.dtype)
  raise ValueError(f"{path} has no image channels to fold")


def _fold_leaves(mngr: ocp.CheckpointManager, src: Source, item: str, fresh: dict[str, Any],
                 paths: list[str]) -> dict[str, jax.Array]:
  """The RGB source leaves ``paths`` of ``item`` folded to grayscale (:func:`fold_to_gray`),
  placed in the dtypes and shardings of ``fresh``."""
  out = {}
  for path, value in _read_host(mngr, src, item, paths).items():
    folded = fold_to_gray(path, value).astype(fresh[path].dtype)
    out[path] = jax.make_array_from_callback(folded.shape, fresh[path].sharding, lambda index, a=folded: a[index])
  return out


def _restore_leaves(mngr: ocp.CheckpointManager, src: Source, item: str, fresh: dict[str, jax.Array],
                    paths: list[str]) -> dict[str, jax.Array]:
  """The ``paths`` of ``item``, read into the shapes, dtypes and shardings of ``fresh``."""
  if not paths:
    return {}
  target = traverse_util.unflatten_dict(
      {p: jax.ShapeDtypeStruct(fresh[p].shape, fresh[p].dtype, sharding=fresh[p].sharding)
       for p in paths}, sep="/")
  return _restore(mngr, src, item, checkpoint.restore_args(target, partial=True))


def _read_host(mngr: ocp.CheckpointManager, src: Source, item: str, paths: list[str]) -> dict[str, np.ndarray]:
  """The ``paths`` of ``item`` as numpy arrays (no device, no target shapes: those of the source)."""
  if not paths:
    return {}
  target = traverse_util.unflatten_dict(
      {p: jax.ShapeDtypeStruct(src.shapes[item][p], np.float32) for p in paths}, sep="/")
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
  return _restore(mngr, src, item, ocp.args.PyTreeRestore(item=target, partial_restore=True, restore_args=args))


def _restore(mngr: ocp.CheckpointManager, src: Source, item: str, args: ocp.args.PyTreeRestore) -> dict[str, Any]:
  """The flat leaves of ``item`` read with ``args``; TransferError when a file of it is damaged."""
  try:
    return _flat(mngr.restore(src.step, args=ocp.args.Composite(**{item: args}))[item])
  except Exception as e:  # pylint: disable=broad-except  (see _damaged)
    raise _damaged(f"{src.directory}/{src.step}", item, e) from None


def _variables(state: state_lib.GANState, net: str) -> dict:
  return state_lib.network(state, net).variables


def _replace(state: state_lib.GANState, net: str, variables: dict) -> state_lib.GANState:
  sub = state_lib.network(state, net)
  return state_lib.replace_network(state, net, sub.replace(
      params=variables["params"], buffers=variables.get("buffers", sub.buffers)))


def _count(flat: dict[str, Any], paths) -> int:
  return int(sum(np.prod(flat[p].shape, dtype=np.int64) for p in paths))


def freeze_report(config: ml_collections.ConfigDict, state: state_lib.GANState, g_fisher: Any = None) -> dict:
  """Frozen and trainable parameter paths of G and D under ``config.freeze`` and the adapters
  (whose layers ``g_fisher`` may choose; see ``state.build_networks``)."""
  f = config.freeze
  g_patterns, d_patterns = state_lib.freeze_patterns(config, state.g.params, g_fisher)
  out = dict(preset=f.preset, g_patterns=list(g_patterns), d_patterns=list(d_patterns))
  for net, params, patterns, mults in (("g", state.g.params, g_patterns, f.g_lr_mults),
                                       ("d", state.d.params, d_patterns, f.d_lr_mults)):
    flat = _flat(params)
    frozen = optim.frozen_paths(params, patterns, mults)
    trainable = sorted(p for p in flat if p not in frozen)
    out[net] = dict(frozen=frozen, trainable=trainable, frozen_count=_count(flat, frozen),
                    trainable_count=_count(flat, trainable))
  return out


def transfer_state(config: ml_collections.ConfigDict, state: state_lib.GANState, g_fisher: Any = None
                   ) -> tuple[state_lib.GANState, dict]:
  """Overlays the source weights of ``config.transfer`` on the fresh ``state`` (global arrays,
  the ``jit`` layout) and returns (state, report). Writes no file. ``g_fisher``: G's Fisher on the
  source, when the adapters choose their layers by it (the report says which).

  The optimizer state, step and counters of ``state`` are kept: they are fresh (Adam moments are
  zeros whatever the weights), so the run starts at step 0.
  """
  t = config.transfer
  src = read_source(t.source)
  where = f"{src.directory}/{src.step}"
  notes = check_hparams(src.meta.get("model"), config, where)

  plan = _plan(config, src, state)

  with _open(src.directory, src.step) as mngr:
    for net in NETWORKS:
      p = plan[net]
      if p["item"] is None:
        continue
      # One read per network, so G and G-EMA never share buffers (the step donates the state).
      restored = _restore_leaves(mngr, src, p["item"], p["fresh"], p["restored"])
      restored.update(_fold_leaves(mngr, src, p["item"], p["fresh"], p["folded"]))
      state = _replace(state, net, traverse_util.unflatten_dict({**p["fresh"], **restored}, sep="/"))

  report = dict(
      source=dict(path=t.source, directory=src.directory, step=src.step, model=src.meta.get("model")),
      on_mismatch=t.on_mismatch, notes=notes, networks={}, freeze=freeze_report(config, state, g_fisher))
  for net in NETWORKS:
    p = plan[net]
    kept = sorted([m["path"] for m in p["mismatched"]] + p["new"]) if p["item"] else sorted(p["fresh"])
    report["networks"][net] = dict(
        source_item=p["item"], restored=p["restored"], folded_to_gray=p["folded"], kept_at_init=kept,
        new=p["new"], mismatched=p["mismatched"], source_only=p["source_only"],
        restored_count=_count(p["fresh"], p["restored"]), kept_at_init_count=_count(p["fresh"], kept))
  if adapters.kind(config) != "none":
    report["adapters"] = adapters.report(config, state.g.params, report["freeze"]["g"]["trainable"], g_fisher)
  logging.info("transfer from %s done", where)
  return state, report


def read_frozen(config: ml_collections.ConfigDict, state: state_lib.GANState,
                networks: dict[str, str]) -> dict[str, dict]:
  """Variables of source networks for the steps' ``frozen`` argument: ``networks`` maps a name
  of the frozen tree to the source item it is read from (e.g. ``{'g': 'g_ema'}``), into the
  structure, dtypes and shardings of the same-named network of ``state`` (global arrays; adapter
  leaves left out: the source G is plain). Every leaf must exist in the source with the target's
  shape."""
  templates = {name: traverse_util.unflatten_dict(
      {p: v for p, v in _flat(_variables(state, name)).items() if not adapters.is_adapter_path(p)}, sep="/")
      for name in networks}
  return read_networks(config, networks, templates)


def read_networks(config: ml_collections.ConfigDict, networks: dict[str, str],
                  templates: dict[str, Any]) -> dict[str, dict]:
  """Variables of source items (``networks``: {name: source item}), each read into ``templates[name]``
  (variables of arrays or ``jax.ShapeDtypeStruct`` with shardings). Every leaf must exist in the
  source with the template's shape."""
  src = read_source(config.transfer.source)
  fold_gray = _gray_from_rgb(src.meta.get("model"), config)
  out = {}
  with _open(src.directory, src.step) as mngr:
    for name, item in networks.items():
      fresh = _flat(templates[name])
      if item not in src.shapes:
        raise TransferError(f"the few-shot regularisers need the source's {item!r}, but "
                            f"{src.directory}/{src.step} has only {sorted(src.shapes)}")
      _refuse_adapted_source(src, item)
      m = match({p: v.shape for p, v in fresh.items()}, src.shapes[item], fold_gray=fold_gray)
      if m["mismatched"]:
        raise TransferError(f"the few-shot regularisers need the whole source {item!r} with the "
                            f"target's shapes; {len(m['mismatched'])} leaves differ, e.g. "
                            f"{m['mismatched'][0]['path']}: keep model.resolution and the "
                            f"channels of the source")
      leaves = _restore_leaves(mngr, src, item, fresh, m["restored"])
      leaves.update(_fold_leaves(mngr, src, item, fresh, m["folded"]))
      out[name] = traverse_util.unflatten_dict(leaves, sep="/")
  return out


def read_source_g_ema(config: ml_collections.ConfigDict, generator, sharding) -> dict:
  """The source's G-EMA variables (``transfer.source``) for ``generator``'s shapes, placed with
  ``sharding``: what the source draws from the same latents, for the correspondence metric."""
  shapes = jax.eval_shape(lambda k: stylegan2.init_generator(generator, k), jax.random.key(0))
  template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)
  return read_networks(config, {"g": "g_ema"}, {"g": template})["g"]


def summary(report: dict) -> str:
  """A few lines for the console: counts per network, and the paths kept at init."""
  src = report["source"]
  lines = [f"transfer from {src['directory']} step {src['step']} (on_mismatch={report['on_mismatch']})"]
  lines += [f"  note: {n}" for n in report["notes"]]
  for net, r in report["networks"].items():
    lines.append(f"  {net:5s} <- {r['source_item'] or '(none)':5s}  restored {len(r['restored'])} "
                 f"({r['restored_count']:,} values), "
                 + (f"folded to gray {len(r['folded_to_gray'])}, " if r.get("folded_to_gray") else "")
                 + f"kept at init {len(r['kept_at_init'])} "
                 f"({r['kept_at_init_count']:,}), only in source {len(r['source_only'])}")
    new = set(r.get("new", ()))
    for path in r["kept_at_init"][:20]:
      lines.append(f"        {'new' if path in new else 'init'}: {path}")
    if len(r["kept_at_init"]) > 20:
      lines.append(f"        ... {len(r['kept_at_init']) - 20} more in transfer_report.json")
  f = report["freeze"]
  lines.append(f"  freeze preset {f['preset']!r}: G patterns {f['g_patterns']}, D patterns {f['d_patterns']}")
  for net in ("g", "d"):
    lines.append(f"  {net}: frozen {len(f[net]['frozen'])} ({f[net]['frozen_count']:,} values), "
                 f"trainable {len(f[net]['trainable'])} ({f[net]['trainable_count']:,} values)")
  a = report.get("adapters")
  if a:
    lines.append(f"  adapters {a['kind']}: {len(a['modulated'])} conv layers modulated (source kernels "
                 f"frozen), {len(a['fine_tuned'])} fine-tuned; {a['trainable_adapter_count']:,} "
                 f"trainable adapter values")
  return "\n".join(lines)
