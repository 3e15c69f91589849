"""The whole GAN training state as one ``flax.struct`` dataclass, and its creation."""
from __future__ import annotations

from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from gantl_jax import optim
from gantl_jax.models import stylegan2


@flax.struct.dataclass
class GANState:
  """Everything a step reads and writes. All leaves are arrays, so the state can be jitted,
  donated, sharded and checkpointed as one pytree."""
  step: jax.Array            # int32, optimizer steps taken
  images_seen: jax.Array     # int32, real images shown to D (drives the G-EMA ramp-up)
  g_params: Any
  g_buffers: Any             # non-trained variables of G: mapping/w_avg, noise constants
  g_ema_params: Any
  g_ema_buffers: Any
  d_params: Any
  g_opt_state: Any
  d_opt_state: Any
  pl_mean: jax.Array         # running mean of the path lengths
  rng: jax.Array             # raw uint32 PRNG key data (portable through checkpoints)

  @property
  def key(self) -> jax.Array:
    return jax.random.wrap_key_data(self.rng)


class Networks(NamedTuple):
  """The modules and optimizers a run is built from (static, never part of the state)."""
  generator: stylegan2.Generator
  discriminator: stylegan2.Discriminator
  g_tx: optax.GradientTransformation
  d_tx: optax.GradientTransformation


def build_networks(config: ml_collections.ConfigDict) -> Networks:
  """Modules from ``config.model``, optimizers from ``config.optim`` and ``config.freeze``."""
  g = stylegan2.generator_from_config(config.model)
  d = stylegan2.discriminator_from_config(config.model)
  # Labels need the parameter tree structure only, so abstract evaluation is enough.
  g_shapes = jax.eval_shape(lambda k: stylegan2.init_generator(g, k), jax.random.key(0))["params"]
  d_shapes = jax.eval_shape(lambda k: stylegan2.init_discriminator(d, k), jax.random.key(0))["params"]
  t = config.train
  g_freeze, d_freeze = optim.freeze_patterns(config.freeze, config.model.resolution)
  g_tx = optim.make_optimizer(g_shapes, config.optim.g, freeze=g_freeze,
                              lr_mults=config.freeze.g_lr_mults,
                              reg_interval=t.pl_interval if t.pl_weight > 0 else None)
  d_tx = optim.make_optimizer(d_shapes, config.optim.d, freeze=d_freeze,
                              lr_mults=config.freeze.d_lr_mults,
                              reg_interval=t.r1_interval if t.r1_gamma > 0 else None)
  return Networks(g, d, g_tx, d_tx)


def init_state(nets: Networks, seed: int | jax.Array) -> GANState:
  """A fresh state. Call it under ``jax.jit`` (see ``parallel.create_state``) so that every leaf,
  optimizer counters included, is created as a global array with the intended sharding."""
  key = jax.random.key(seed) if isinstance(seed, int) else seed
  k_g, k_d, k_run = jax.random.split(key, 3)
  g_vars = stylegan2.init_generator(nets.generator, k_g)
  d_vars = stylegan2.init_discriminator(nets.discriminator, k_d)
  return state_from_variables(nets, g_vars, g_vars, d_vars, jax.random.key_data(k_run))


def state_from_variables(nets: Networks, g_vars: Any, g_ema_vars: Any, d_vars: Any, rng: jax.Array) -> GANState:
  """A step-0 state around given network variables (fresh optimizer moments)."""
  return GANState(
      step=jnp.zeros((), jnp.int32),
      images_seen=jnp.zeros((), jnp.int32),
      g_params=g_vars["params"],
      g_buffers=g_vars["buffers"],
      g_ema_params=g_ema_vars["params"],
      g_ema_buffers=g_ema_vars["buffers"],
      d_params=d_vars["params"],
      g_opt_state=nets.g_tx.init(g_vars["params"]),
      d_opt_state=nets.d_tx.init(d_vars["params"]),
      pl_mean=jnp.zeros((), jnp.float32),
      rng=rng,
  )
