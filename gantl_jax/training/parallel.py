"""Data-parallel drivers of the one train step: ``jax.jit`` on a device Mesh (default) or ``pmap``.

``jit``: a global ``Mesh`` with one axis ``data`` over all devices of all processes. The state is
replicated, the global batch is sharded along ``data``; each process contributes its own rows with
``jax.make_array_from_process_local_data``. The step sees the global batch and XLA inserts the
gradient all-reduce. State is created inside ``jax.jit(..., out_shardings=...)`` so every leaf is a
global array (Orbax cannot save the process-local arrays that eager creation would make).

``pmap``: ``jax.pmap`` over the local devices with the axis name ``data``; the step ``pmean``-s the
gradients and every cross-device statistic itself. The state carries a leading device axis.

Checkpoints always hold the ``jit`` layout (global, replicated arrays), so a run can be resumed in
either mode, on any number of devices.
"""
from __future__ import annotations

import functools
import itertools
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from orbax.checkpoint import multihost as ocp_multihost

from gantl_jax import images as image_io
from gantl_jax.training import state as state_lib
from gantl_jax.training import steps

AXIS = "data"


def maybe_initialize_distributed(parallel: ml_collections.ConfigDict) -> None:
  """Joins a multi-process job when the config or the environment asks for it.

  ``parallel.coordinator_address`` / ``num_processes`` / ``process_id`` (or the environment
  variables GANTL_COORDINATOR, GANTL_NUM_PROCESSES, GANTL_PROCESS_ID) name the job explicitly;
  ``parallel.distributed=True`` alone lets JAX detect TPU pods and SLURM itself.
  """
  address = parallel.get("coordinator_address") or os.environ.get("GANTL_COORDINATOR", "")
  num = int(parallel.get("num_processes") or os.environ.get("GANTL_NUM_PROCESSES", 0) or 0)
  pid = parallel.get("process_id")
  pid = int(os.environ.get("GANTL_PROCESS_ID", -1)) if pid is None or pid < 0 else int(pid)
  if not (address or parallel.get("distributed")):
    return
  # CPU devices of several processes talk through gloo, JAX's default (tests on one machine).
  # Never ask for the backend here (jax.default_backend() and the like): that starts the XLA
  # backend, after which jax.distributed.initialize refuses to run.
  if parallel.get("cpu_collectives"):
    jax.config.update("jax_cpu_collectives_implementation", parallel.cpu_collectives)
  kwargs = {}
  if address:
    kwargs = dict(coordinator_address=address, num_processes=num or None,
                  process_id=pid if pid >= 0 else None)
  jax.distributed.initialize(**kwargs)


# Long enough for one process to compile the train step on a loaded machine while the others wait.
BARRIER_TIMEOUT_S = 1800
_barrier_ids = itertools.count()


def wait_for_all_processes(name: str, timeout_s: int = BARRIER_TIMEOUT_S) -> None:
  """Blocks until every process of the job has called this (a barrier of the distributed
  runtime's coordination service, no device collective; nothing in a single-process job).

  Call it after a phase whose length differs between processes (compiling, or reading the
  compilation cache) and before the next collective: gloo (the CPU collectives) gives up when the
  processes reach their first collective over a set of devices more than 30 s apart, a limit that
  neither ``jax.distributed.initialize`` nor XLA's ``xla_cpu_collective_timeout_seconds`` changes.
  Every process must make the same calls in the same order."""
  barrier = ocp_multihost.get_barrier_sync_fn()
  barrier(key=f"gantl_jax_{name}_{next(_barrier_ids)}", timeout_ms=timeout_s * 1000)


def make_mesh(devices: Optional[list] = None) -> Mesh:
  """A 1-D mesh ``data`` over all devices of all processes (or ``devices``)."""
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def create_state(nets: state_lib.Networks, seed: int, mode: str, mesh: Mesh) -> state_lib.GANState:
  """A fresh state in the layout of ``mode``, created on the devices (never eagerly on the host)."""
  state = jax.jit(lambda: state_lib.init_state(nets, seed), out_shardings=replicated(mesh))()
  return from_global(state, mode)


def from_global(state: Any, mode: str) -> Any:
  """Global replicated arrays (checkpoint / jit layout) -> the layout ``mode`` runs on."""
  if mode == "jit":
    return state
  n = jax.local_device_count()
  host = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state)
  # The same axis name as the step's pmap: its outputs then carry the same sharding as these
  # inputs, and the step compiles once (with another name the second step compiles again).
  return jax.pmap(lambda _, s: s, in_axes=(0, None), axis_name=AXIS)(np.arange(n), host)


def to_global(state: Any, mode: str, mesh: Mesh) -> Any:
  """The layout ``mode`` runs on -> global replicated arrays on ``mesh`` (what Orbax saves)."""
  if mode == "jit":
    return state
  return replicate(jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[0], state), mesh)


def first_replica(tree: Any, mode: str) -> Any:
  """Host numpy copy of a replicated tree (replica 0 under pmap)."""
  if mode == "jit":
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[0], tree)


def place_batch(local_batch: np.ndarray, mode: str, mesh: Mesh) -> jax.Array:
  """This process's rows of the global batch -> device input of the step."""
  if mode == "jit":
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local_batch)
  n = jax.local_device_count()
  if local_batch.shape[0] % n:
    raise ValueError(f"local batch {local_batch.shape[0]} does not split over {n} local devices")
  return local_batch.reshape((n, -1) + local_batch.shape[1:])


def _program(train_step: Callable, key: steps.StepFlags, merged: bool) -> Callable:
  """What one compiled program runs: ``(state, batch, frozen)`` with the static flags ``key``, or
  with merged programs ``(state, batch, frozen, cond_args)`` (``steps.with_cond_args``)."""
  if merged:
    return lambda state, batch, frozen, args: train_step(state, batch, frozen,
                                                         flags=steps.with_cond_args(key, args))
  return functools.partial(train_step, flags=key)


def make_step(config: ml_collections.ConfigDict, nets: state_lib.Networks, mode: str,
              mesh: Mesh) -> Callable[..., tuple[Any, dict]]:
  """``step(state, placed_batch, step_index, frozen=None) -> (state, metrics)``: the compiled
  train step of ``mode``, one program per ``steps.StepFlags`` value; with
  ``train.variant_programs`` merged, one per value of the static flags, which takes the lazy
  regularisers' flags as a fourth argument (``steps.cond_args``). Compiled on first use.

  The state is donated; ``frozen`` (source-network variables for the few-shot regularisers, in
  the ``jit`` layout: global replicated arrays, see :func:`replicate`) is replicated and never
  donated, so the same arrays serve every step. ``step.variant(step_index)`` is the jitted
  (pmapped) program of that step and ``step.flag_args(step_index)`` its arguments after
  ``frozen`` (``()`` with separate programs); ``step.lower(state, placed_batch, step_index,
  frozen=None)`` lowers it with that step's arguments.
  """
  merged = steps.merged_variants(config.train)
  flag_axes = (None,) if merged else ()  # a merged program's flags: replicated
  if mode == "jit":
    train_step = steps.make_train_step(config, nets, num_shards=mesh.devices.size)
    compile_variant = lambda key: jax.jit(
        _program(train_step, key, merged),
        in_shardings=(replicated(mesh), batch_sharding(mesh), replicated(mesh)) + tuple(replicated(mesh) for _ in flag_axes),
        out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0)
  elif mode == "pmap":
    train_step = steps.make_train_step(config, nets, axis_name=AXIS)
    compile_variant = lambda key: jax.pmap(
        _program(train_step, key, merged), axis_name=AXIS, in_axes=(0, 0, None) + flag_axes, donate_argnums=0)
  else:
    raise ValueError(f"parallel.mode must be 'jit' or 'pmap', got {mode!r}")
  variants: dict[steps.StepFlags, Callable] = {}
  placed_args: dict[steps.StepFlags, tuple] = {}

  def variant(step_index: int) -> Callable:
    """The jitted (pmapped) program that runs step ``step_index``."""
    key = steps.program_key(steps.schedule(step_index, config), merged)
    if key not in variants:
      variants[key] = compile_variant(key)
    return variants[key]

  def flag_args(step_index: int) -> tuple:
    """The merged program's last argument, () with separate programs: global replicated arrays
    under jit (every process passes the same), host arrays for pmap to broadcast."""
    if not merged:
      return ()
    flags = steps.schedule(step_index, config)
    if flags not in placed_args:
      args = steps.cond_args(flags)
      placed_args[flags] = replicate(args, mesh) if mode == "jit" else args
    return (placed_args[flags],)

  def step(state, batch, step_index: int, frozen: Any = None):
    return variant(step_index)(state, batch, frozen, *flag_args(step_index))

  step.variant = variant
  step.flag_args = flag_args
  step.lower = lambda state, batch, step_index, frozen=None: variant(step_index).lower(
      state, batch, frozen, *flag_args(step_index))
  return step


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Host (or single-device) arrays -> global arrays replicated on every device of ``mesh``, as
  the steps take ``frozen``. Every process must pass the same values."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_callback(
      np.shape(x), sharding, lambda idx, v=np.asarray(x): v[idx]), tree)


def make_generate(nets: state_lib.Networks) -> Callable[..., jax.Array]:
  """Jitted ``generate(g_vars, z, truncation_psi)`` with constant noise (for sample grids)."""
  @functools.partial(jax.jit, static_argnames=("truncation_psi",))
  def generate(g_vars, z, truncation_psi: float = 1.0):
    return steps.generate(nets, g_vars, z, truncation_psi=truncation_psi, noise_mode="const")
  return generate


def _sample_keys(seed: int, stream: int, start, count: int) -> jax.Array:
  key = jax.random.fold_in(jax.random.key(seed), stream)
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(start + jnp.arange(count))


def latents(seed: int, start: int, count: int, z_dim: int) -> jax.Array:
  """The latents of sample indices ``start .. start+count-1`` of stream ``seed``: z_i depends
  only on (seed, i), so a set of samples is the same on any number of devices and hosts."""
  return jax.vmap(lambda k: jax.random.normal(k, (z_dim,)))(_sample_keys(seed, 0, start, count))


def sample_batches(nets: state_lib.Networks, g_vars: Any, mesh: Mesh, *, num: int, batch_size: int,
                   seed: int, truncation_psi: float = 1.0, noise_mode: str = "const"):
  """Yields ``num`` generator samples as uint8 NHWC numpy batches of at most ``batch_size``.

  Each batch is generated sharded over every device of every process (``g_vars`` in the ``jit``
  layout, e.g. ``to_global(state, mode, mesh).g_ema.variables``) and all-gathered, so every
  process yields the same batches and all of them must iterate together; memory is one batch,
  whatever ``num``. Pixels are quantised on the devices by ``images.to_uint8``.
  """
  n_dev = mesh.devices.size
  batch_size = max(n_dev, batch_size // n_dev * n_dev)  # a multiple of the device count
  z_dim = nets.generator.z_dim

  @functools.partial(jax.jit, out_shardings=replicated(mesh))
  def one_batch(g_vars, start):
    z = jax.lax.with_sharding_constraint(latents(seed, start, batch_size, z_dim), batch_sharding(mesh))
    # Noise inputs ('random' mode) from (seed, i) too, like the latents.
    noise_keys = _sample_keys(seed, 1, start, batch_size)
    images = steps.generate(nets, g_vars, z, truncation_psi=truncation_psi, noise_mode=noise_mode,
                            noise_keys=noise_keys)
    return image_io.to_uint8(images)

  for start in range(0, num, batch_size):
    images = one_batch(g_vars, jnp.int32(start))
    yield np.asarray(images.addressable_data(0))[:min(batch_size, num - start)]
