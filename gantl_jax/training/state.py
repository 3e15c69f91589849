"""The GAN training state (``flax.struct`` dataclasses), the networks it is built from, and its
creation.

Layout::

  GANState
    step, images_seen, rng     progress (int32, int32, raw uint32 key data)
    g, g_ema, d                NetState each: params, buffers, opt_state
    extras                     {name: array}: training-time statistics (pl_mean; with ADA its
                               probability aug_p and the accumulators ada_sign_sum, ada_count)

``NETWORKS`` is the one table of the networks a state holds: checkpoint items, transfer and its
report iterate over it and reach a network with :func:`network` / :func:`replace_network`, never
by field-name arithmetic.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from gantl_jax.fewshot import adapters
from gantl_jax.fewshot import cdc
from gantl_jax.fewshot import registry as methods
from gantl_jax.models import stylegan2
from gantl_jax.training import optim

# name -> which module it is an instance of. G-EMA has no optimizer (its opt_state is None).
NETWORKS = {"g": "generator", "g_ema": "generator", "d": "discriminator"}
TRAINED = ("g", "d")


@flax.struct.dataclass
class NetState:
  """One network: trained parameters, non-trained variables (``buffers``: G's w_avg and noise
  constants; empty for D) and, for a trained network, its optimizer state."""
  params: Any
  buffers: Any
  opt_state: Any = None

  @property
  def variables(self) -> dict[str, Any]:
    """The Flax variables to ``apply`` the module with."""
    return {"params": self.params, "buffers": self.buffers} if self.buffers else {"params": self.params}


@flax.struct.dataclass
class GANState:
  """Everything a step reads and writes. All leaves are arrays, so the state can be jitted,
  donated, sharded and checkpointed as one pytree."""
  step: jax.Array            # int32, optimizer steps taken
  images_seen: jax.Array     # int32, real images shown to D (drives the G-EMA ramp-up)
  rng: jax.Array             # raw uint32 PRNG key data (portable through checkpoints)
  g: NetState
  g_ema: NetState
  d: NetState
  extras: dict[str, jax.Array]

  @property
  def key(self) -> jax.Array:
    return jax.random.wrap_key_data(self.rng)


def network(state: GANState, name: str) -> NetState:
  """The sub-state of network ``name`` (a key of ``NETWORKS``)."""
  if name not in NETWORKS:
    raise KeyError(f"unknown network {name!r}; the state holds {tuple(NETWORKS)}")
  return getattr(state, name)


def replace_network(state: GANState, name: str, net: NetState) -> GANState:
  network(state, name)  # validates the name
  return state.replace(**{name: net})


def initial_extras(more: tuple[tuple[str, Any], ...] = ()) -> dict[str, jax.Array]:
  """Fresh training-time statistics: ``pl_mean`` and the ``(name, value)`` pairs of ``more``
  (``Networks.extras``: those of the run's augmentation). A checkpoint that lacks one of them
  (written before it existed) restores the others and keeps this value for it."""
  return {"pl_mean": jnp.zeros((), jnp.float32), **{k: jnp.asarray(v) for k, v in more}}


class Networks(NamedTuple):
  """The modules and optimizers a run is built from (static, never part of the state)."""
  generator: stylegan2.Generator
  discriminator: stylegan2.Discriminator
  g_tx: optax.GradientTransformation
  d_tx: optax.GradientTransformation
  # Statistics the step keeps beyond pl_mean, with their fresh values, as (name, numpy scalar)
  # pairs: ADA's p and its accumulators (methods.initial_extras); empty otherwise.
  extras: tuple[tuple[str, Any], ...] = ()
  # G's params carry kernel-modulation adapter leaves (fewshot.adapter, gantl_jax/fewshot/adapters.py).
  g_adapters: bool = False

  def optimizer(self, name: str) -> optax.GradientTransformation:
    return {"g": self.g_tx, "d": self.d_tx}[name]


def build_networks(config: ml_collections.ConfigDict, g_fisher: Any = None) -> Networks:
  """Modules from ``config.model`` (D with CDC's patch head when ``config.fewshot`` asks for it),
  optimizers from ``config.optim``, ``config.freeze`` and the adapters of ``config.fewshot``, the
  statistics the enabled methods keep (``methods.initial_extras``).

  ``g_fisher`` (G's Fisher on the source, ``fisher.g_fisher``) chooses the adapted layers when
  ``fewshot.adapter_fisher_quantile`` > 0; without it every conv layer counts as adapted, which
  changes only G's optimizer (enough for shapes, sampling and export; the loop passes it)."""
  g = stylegan2.generator_from_config(config.model)
  d = stylegan2.discriminator_from_config(config.model, patch_resolution=cdc.patch_resolution(config))
  with_adapters = adapters.kind(config) != "none"
  # Labels need the parameter tree structure only, so abstract evaluation is enough.
  g_shapes = jax.eval_shape(lambda k: adapters.init_g_variables(g, k, with_adapters), jax.random.key(0))["params"]
  d_shapes = jax.eval_shape(lambda k: stylegan2.init_discriminator(d, k), jax.random.key(0))["params"]
  intervals = optim.reg_intervals(config.train)
  g_freeze, d_freeze = freeze_patterns(config, g_shapes, g_fisher)
  g_tx = optim.make_optimizer(g_shapes, config.optim.g, freeze=g_freeze,
                              lr_mults=config.freeze.g_lr_mults,
                              reg_interval=intervals["g"])
  d_tx = optim.make_optimizer(d_shapes, config.optim.d, freeze=d_freeze,
                              lr_mults=config.freeze.d_lr_mults,
                              reg_interval=intervals["d"])
  # The extras the enabled methods keep (ADA: p and its accumulators).
  extras = tuple(methods.initial_extras(config).items())
  return Networks(g, d, g_tx, d_tx, extras, g_adapters=with_adapters)


def freeze_patterns(config: ml_collections.ConfigDict, g_params: Any, g_fisher: Any = None
                    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(G regexes, D regexes) of the frozen parameters: ``config.freeze`` (``optim.freeze_patterns``)
  and, with adapters, the adapted source kernels (``adapters.frozen_patterns``). ``g_params``:
  G's params tree (arrays or shapes)."""
  g, d = optim.freeze_patterns(config.freeze, config.model.resolution)
  return g + adapters.frozen_patterns(config, g_params, g_fisher), d


def init_state(nets: Networks, seed: int | jax.Array) -> GANState:
  """A fresh state. Call it under ``jax.jit`` (see ``parallel.create_state``) so that every leaf,
  optimizer counters included, is created as a global array with the intended sharding."""
  key = jax.random.key(seed) if isinstance(seed, int) else seed
  k_g, k_d, k_run = jax.random.split(key, 3)
  g_vars = adapters.init_g_variables(nets.generator, k_g, nets.g_adapters)
  d_vars = stylegan2.init_discriminator(nets.discriminator, k_d)
  return state_from_variables(nets, {"g": g_vars, "g_ema": g_vars, "d": d_vars}, jax.random.key_data(k_run))


def state_from_variables(nets: Networks, variables: dict[str, Any], rng: jax.Array) -> GANState:
  """A step-0 state around given network variables ``{name: {'params', ['buffers']}}`` for every
  name of ``NETWORKS``, with fresh optimizer moments and statistics."""
  subs = {}
  for name in NETWORKS:
    v = variables[name]
    opt_state = nets.optimizer(name).init(v["params"]) if name in TRAINED else None
    subs[name] = NetState(params=v["params"], buffers=v.get("buffers", {}), opt_state=opt_state)
  return GANState(step=jnp.zeros((), jnp.int32), images_seen=jnp.zeros((), jnp.int32), rng=rng,
                  extras=initial_extras(nets.extras), **subs)
