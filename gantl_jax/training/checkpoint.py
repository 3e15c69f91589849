"""Orbax checkpoints of the whole training state, as separate items.

Items of a step directory (each readable alone, e.g. ``g_ema`` for sampling or transfer), all
derived from ``state.NETWORKS``:

  g, g_ema, d  {'params'[, 'buffers']}: the variables of each network
  opt          {'g', 'd'}: the optimizer states of the trained networks
  progress     step, images_seen, rng
  extras       the state's training-time statistics (pl_mean, ...)
  data         JSON: the input pipeline's position
  meta         JSON: 'format_version', 'model' hyper-parameters (what the weights mean), the
               resolved 'config'

``FORMAT_VERSION`` 1 is this layout. Version 0 (no 'format_version' in meta; pl_mean inside
'progress', no 'extras' item) still restores. An extra statistic that a checkpoint lacks, because
it was written before the statistic existed, keeps its fresh value.

Saves are asynchronous and atomic (Orbax writes to a temporary directory and renames it on
commit), so a crash during a save never damages the previous checkpoint, and a half-written one
is never listed. :func:`save` refuses a state with a non-finite value, so a diverged run never
replaces its last good checkpoint. :func:`restore_newest_readable` skips a committed step whose
files cannot be read (truncated, say) and restores the newest one that can.
"""
from __future__ import annotations

import os
import shutil
import sys
from typing import Any, Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from gantl_jax.errors import CheckpointError, NonFiniteStateError
from gantl_jax.training import state as state_lib
from gantl_jax.training.state import GANState

FORMAT_VERSION = 1
ARRAY_ITEMS = tuple(state_lib.NETWORKS) + ("opt", "progress", "extras")
STATE_ITEMS = ARRAY_ITEMS + ("data", "meta")
JSON_ITEMS = ("data", "meta")


def make_manager(directory: str, *, max_to_keep: Optional[int] = 3, async_save: bool = True,
                 item_names: tuple[str, ...] = STATE_ITEMS, read_only: bool = False,
                 **options) -> ocp.CheckpointManager:
  """A CheckpointManager over ``directory`` (created if missing, unless ``read_only``).

  Every item gets its handler up front (JSON for ``data`` and ``meta``), so a manager can read
  any subset of a step's items, those of older formats included. ``options`` go to
  ``CheckpointManagerOptions`` (e.g. ``best_fn``).
  """
  # Every process creates the directory itself (idempotent) instead of Orbax's create=True, which
  # adds a cross-process barrier at start-up, where processes of one job arrive furthest apart
  # (gloo's collectives time out after 30 s on CPU jobs).
  directory = os.path.abspath(directory)
  if not read_only:
    os.makedirs(directory, exist_ok=True)
  # PyTree handlers (not Standard) for the array items: they read checkpoints written with either,
  # and can read a subset of an item (transfer).
  handlers = {k: ocp.JsonCheckpointHandler() if k in JSON_ITEMS else ocp.PyTreeCheckpointHandler()
              for k in item_names}
  opts = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=False, enable_async_checkpointing=async_save,
      read_only=read_only, **options)
  return ocp.CheckpointManager(directory, item_handlers=handlers, options=opts)


def committed_steps(directory: str) -> list[int]:
  """Committed Orbax steps in a manager directory (temporary, uncommitted dirs are not digits),
  read from the file system without opening a manager."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def _split(state: GANState) -> dict[str, Any]:
  """The array items of ``state``."""
  items = {name: state_lib.network(state, name).variables for name in state_lib.NETWORKS}
  items["opt"] = {name: state_lib.network(state, name).opt_state for name in state_lib.TRAINED}
  items["progress"] = {"step": state.step, "images_seen": state.images_seen, "rng": state.rng}
  items["extras"] = dict(state.extras)
  return items


def _join(template: GANState, items: dict[str, Any]) -> GANState:
  subs = {}
  for name in state_lib.NETWORKS:
    v = items[name]
    opt_state = items["opt"][name] if name in state_lib.TRAINED else None
    subs[name] = state_lib.NetState(params=v["params"], buffers=v.get("buffers", {}), opt_state=opt_state)
  p = items["progress"]
  return template.replace(step=p["step"], images_seen=p["images_seen"], rng=p["rng"],
                          extras=items["extras"], **subs)


def all_finite(tree: Any) -> jax.Array:
  """One device bool: every floating-point leaf of ``tree`` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def save(manager: ocp.CheckpointManager, state: GANState, *, data_state: dict, meta: dict,
         force: bool = False, metrics: Optional[dict] = None) -> bool:
  """Saves ``state`` (global arrays) at its step, asynchronously; returns whether it saved.

  Raises ``NonFiniteStateError`` (and saves nothing) if the state holds a NaN or an infinity,
  ``CheckpointError`` if the save cannot fit on the disk or fails; the previous checkpoint is then
  intact, and the message names it. ``metrics`` go to Orbax's ``best_fn`` where the manager keeps
  the best checkpoints.
  """
  step = int(jax.device_get(state.step))
  if not bool(jax.device_get(jax.jit(all_finite)(state))):
    raise NonFiniteStateError(f"the state at step {step} holds NaN or infinite values and was not "
                              f"saved; {kept(manager)}")
  items = _split(state)
  # The save in flight must be on the disk before its free space is measured (Orbax's save waits
  # for it anyway, so this blocks no longer); a failure of that save is reported here.
  wait(manager)
  _check_space(manager, sum(x.nbytes for x in jax.tree.leaves(items)))
  args = {k: ocp.args.PyTreeSave(v) for k, v in items.items()}
  args["data"] = ocp.args.JsonSave(data_state)
  args["meta"] = ocp.args.JsonSave({**meta, "format_version": FORMAT_VERSION})
  try:
    return manager.save(step, args=ocp.args.Composite(**args), force=force, metrics=metrics)
  except Exception as e:  # Orbax raises many kinds (OSError, ValueError from tensorstore, ...)
    raise CheckpointError(_failed(manager, e)) from e


# Room left beyond the arrays' bytes for Orbax's metadata and one more step during rotation.
SPACE_MARGIN = 1.25


def _check_space(manager: ocp.CheckpointManager, nbytes: int) -> None:
  """Refuses a save that cannot fit on the disk. Checked before the asynchronous write starts,
  because a write that runs out of space fails later, in Orbax's threads, with hundreds of lines
  of traces."""
  free = shutil.disk_usage(manager.directory).free
  if free < nbytes * SPACE_MARGIN:
    raise CheckpointError(
        f"not enough disk space for a checkpoint in {manager.directory}: it needs about "
        f"{nbytes * SPACE_MARGIN / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free; free some "
        f"space, then resume ({kept(manager)})")


def wait(manager: ocp.CheckpointManager) -> None:
  """Waits for the asynchronous save in flight; a failure becomes one ``CheckpointError``."""
  try:
    manager.wait_until_finished()
  except Exception as e:
    raise CheckpointError(_failed(manager, e)) from e


def check(manager: ocp.CheckpointManager) -> None:
  """Raises ``CheckpointError`` at once if an asynchronous save has failed (a full disk, say),
  instead of one save interval later. Never blocks: cheap enough to call after every step."""
  try:
    manager.check_for_errors()
  except Exception as e:
    raise CheckpointError(_failed(manager, e)) from e


def close(manager: ocp.CheckpointManager) -> None:
  """Lets the save in flight commit, then releases the manager; never raises, so that it can run
  on every exit path of a loop. A save that fails here is not reported again: the loop has
  already stopped on that error (:func:`check`, :func:`wait`) or on one of its own, whose
  message names the last committed step (:func:`kept`)."""
  for release in (manager.wait_until_finished, manager.close):
    try:
      release()
    except Exception:  # pylint: disable=broad-except  # Orbax raises the failed save's error again
      pass


def last_committed(manager: ocp.CheckpointManager) -> Optional[int]:
  """The newest committed step of ``manager`` (None if none), once the save in flight has
  committed or failed: this waits for it."""
  try:
    manager.wait_until_finished()
  except Exception:  # pylint: disable=broad-except  # it failed: the steps on disk tell
    pass
  committed = committed_steps(manager.directory)
  return committed[-1] if committed else None


def kept(manager: ocp.CheckpointManager) -> str:
  """'the last complete checkpoint, step N, is kept in DIR', or that none was completed (after
  waiting for the save in flight)."""
  step = last_committed(manager)
  if step is None:
    return f"no checkpoint was completed in {manager.directory}"
  return f"the last complete checkpoint, step {step}, is kept in {manager.directory}"


def _failed(manager: ocp.CheckpointManager, e: BaseException) -> str:
  return f"a checkpoint save to {manager.directory} failed ({root_cause(e)}); {kept(manager)}"


def _is_closed_loop_callback(unraisable) -> bool:
  """Orbax writes a step's arrays with tensorstore from a private asyncio loop, and closes that
  loop as soon as one write fails (a full disk); tensorstore's other writes then finish into the
  closed loop, and each one's callback raises this RuntimeError where nothing can catch it."""
  frames = []
  tb = unraisable.exc_traceback
  while tb is not None:
    frames.append(tb.tb_frame.f_code.co_name)
    tb = tb.tb_next
  return (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"
          and unraisable.object is None and "call_soon_threadsafe" in frames)


def ignore_closed_loop_callbacks() -> None:
  """Drops, process-wide, the stray 'Event loop is closed' errors that a failed asynchronous save
  leaves behind (see ``_is_closed_loop_callback``); the failure itself is reported by
  :func:`check` / :func:`wait`. Every other unraisable exception goes to the previous hook."""
  previous = sys.unraisablehook
  if getattr(previous, "ignores_closed_loop_callbacks", False):
    return

  def hook(unraisable):
    if not _is_closed_loop_callback(unraisable):
      previous(unraisable)

  hook.ignores_closed_loop_callbacks = True
  sys.unraisablehook = hook


def root_cause(e: BaseException) -> str:
  """The innermost exception of a chain, as one short line (Orbax wraps I/O errors several
  times; tensorstore's messages name every layer, the OS error comes last)."""
  while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
    e = e.__cause__ or e.__context__
  text = str(e).splitlines()[0] if str(e) else type(e).__name__
  return text if len(text) <= 200 else "... " + text[-200:]


def restore_args(target: Any, partial: bool = False) -> ocp.args.PyTreeRestore:
  """Orbax arguments that read an array item into the shapes, dtypes and shardings of ``target``
  (a pytree of ``jax.ShapeDtypeStruct``); ``partial``: ``target`` may hold a subset of the
  item's leaves."""
  return ocp.args.PyTreeRestore(item=target, partial_restore=partial,
                                restore_args=ocp.checkpoint_utils.construct_restore_args(target))


def read_network(directory: str, step: int, item: str, template: Any) -> Any:
  """One network item (e.g. 'g_ema') of ``step`` in ``directory``, read into the shapes, dtypes
  and shardings of ``template`` (arrays or ``jax.ShapeDtypeStruct`` with shardings)."""
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
  with make_manager(directory, item_names=(item,), read_only=True, max_to_keep=None) as manager:
    return manager.restore(step, args=ocp.args.Composite(**{item: restore_args(target)}))[item]


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
  """The JSON ``meta`` item of ``step`` (format 0 and later)."""
  return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore(manager: ocp.CheckpointManager, abstract_state: GANState,
            step: Optional[int] = None) -> tuple[GANState, dict, dict]:
  """Restores (state, data_state, meta) at ``step`` (default: latest) into the shardings and
  structure of ``abstract_state`` (a freshly created state: its values fill statistics the
  checkpoint lacks)."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}")
  meta = read_meta(manager, step)
  version = meta.get("format_version", 0)
  if version > FORMAT_VERSION:
    raise CheckpointError(f"{manager.directory}/{step} has checkpoint format {version}; this "
                          f"gantl_jax reads up to {FORMAT_VERSION}: update gantl_jax")
  fresh = _split(abstract_state)
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, fresh)
  stored_extras = _stored_keys(manager, step, "extras") if version >= 1 else set()
  if version == 0:  # pl_mean lived in 'progress', and there was no 'extras' item
    target["progress"]["pl_mean"] = target["extras"]["pl_mean"]
  target["extras"] = {k: v for k, v in target["extras"].items() if k in stored_extras}
  names = [k for k in ARRAY_ITEMS if k != "extras" or target["extras"]]
  args = {k: restore_args(target[k]) for k in names}
  args["data"] = ocp.args.JsonRestore()
  out = manager.restore(step, args=ocp.args.Composite(**args))
  items = {k: out[k] for k in names}
  extras = dict(fresh["extras"])
  if version == 0:
    extras["pl_mean"] = items["progress"].pop("pl_mean")
  extras.update(items.get("extras", {}))
  items["extras"] = extras
  return _join(abstract_state, items), out["data"], meta


def restore_newest_readable(manager: ocp.CheckpointManager, abstract_state: GANState
                            ) -> tuple[GANState, dict, dict, int, list[tuple[int, str]]]:
  """Restores the newest committed step whose files can be read, like :func:`restore`.

  Returns (state, data_state, meta, step, unreadable): ``unreadable`` lists (step, cause) of the
  newer steps that failed to read (a truncated or corrupt file), newest first; they are left as
  they are. Raises ``CheckpointError`` naming each step and cause when no step can be read, and
  at once for a step of a newer format (that is not damage).
  """
  unreadable = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state, data_state, meta = restore(manager, abstract_state, step)
    except CheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # tensorstore, JSON, msgpack, ...
      unreadable.append((step, root_cause(e)))
      continue
    return state, data_state, meta, step, unreadable
  causes = "; ".join(f"step {step}: {cause}" for step, cause in unreadable)
  raise CheckpointError(f"no checkpoint in {manager.directory} can be read ({causes}); restore the "
                        f"directory from a backup, or move it aside to start the run again")


def _stored_keys(manager: ocp.CheckpointManager, step: int, item: str) -> set[str]:
  """Top-level keys of an array item of ``step``, from its metadata (no data read)."""
  metadata = manager.item_metadata(step)[item]
  tree = getattr(metadata, "tree", metadata)
  return set(tree or {})


def save_networks(directory: str, *, g_ema: Any, g: Optional[Any] = None, d: Optional[Any] = None,
                  meta: dict, step: int = 0) -> str:
  """Writes network items only (no optimizer or progress), e.g. imported weights or an exported
  G-EMA, as a transfer source; ``g`` and ``d`` are optional. Blocks until the checkpoint is
  committed; raises ``CheckpointError`` if ``directory`` already holds that step (Orbax would keep
  the old one and only return False)."""
  items = {name: v for name, v in (("g", g), ("g_ema", g_ema), ("d", d)) if v is not None}
  args = {k: ocp.args.PyTreeSave(v) for k, v in items.items()}
  args["meta"] = ocp.args.JsonSave({**meta, "format_version": FORMAT_VERSION})
  with make_manager(directory, max_to_keep=None, async_save=False, item_names=tuple(args)) as mngr:
    if not mngr.save(step, args=ocp.args.Composite(**args)):
      raise CheckpointError(f"{directory} already holds step {step}; nothing was written")
    mngr.wait_until_finished()
    if step not in mngr.all_steps():
      raise CheckpointError(f"step {step} was not committed to {directory}")
  return os.path.abspath(directory)

