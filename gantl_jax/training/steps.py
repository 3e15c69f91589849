"""The pure training step of StyleGAN2 (the phases of stylegan2-ada-pytorch) and generation.

``make_train_step`` returns ``train_step(state, real_images, frozen=None, *, flags)``, a pure
function of the state and one batch of real images. It runs the four phases of StyleGAN2 in order,
each a small pure function and its own optimizer step: G main (:func:`g_main`, non-saturating
loss), G regularisation (:func:`g_reg`, path length, lazy), D main (:func:`d_main`, logistic loss),
D regularisation (:func:`d_reg`, R1, lazy); then the G-EMA update (:func:`ema`). ``flags`` (a
:class:`StepFlags`) is static: each value compiles to its own program with no dead branches, and
:func:`schedule` says which one a step needs. Drivers pass it through unchanged.

The few-shot and data-efficiency methods (CDC, EWC, ADA, DiffAugment, adapters) enter the phases
through one interface, ``methods.Method``: the phases run the hooks of the enabled methods
(``methods.active``) and know none of them by name. With every method off, the step is the
program of plain StyleGAN2. What the methods do in the step:

* EWC (``cdc.ewc_weight``) adds ``ewc_weight * sum F * (theta - theta_source)^2`` to G main's
  loss (logged as ``ewc_penalty``), from the source G and G's Fisher in ``frozen``.
* CDC (``cdc.cdc_weight`` > 0) adds the distance-consistency term against ``frozen['g']``
  (``cdc.py``); with ``cdc.cdc_anchor_interval`` > 0 the ``anchor`` flag chooses between
  latents near the anchors with image-level D, and free latents with patch-level D.
* With ``augment.kind`` other than ``'none'``, every image D sees goes through ``augment.py``
  first: the fakes in G main, reals and fakes in D main, and the reals in R1 (whose gradient is
  taken with respect to the un-augmented reals, through the augmentation). ADA's controller runs
  at the end of the step on D main's E[sign(D(real))] and keeps p in ``state.extras``.
* G's params may carry kernel-modulation adapters (``adapters.py``): every use of G merges them
  into the kernels first, so the step trains the adapter leaves through the merged weights.

``frozen`` holds variables of source networks that the methods compare against (``{'g':
{'params', 'buffers'}}`` of the transfer source's G-EMA, say; :func:`frozen_networks`). It is an
ordinary input: replicated, never donated and never part of the state, so never checkpointed.

Randomness is a pure function of (state.rng, step, phase, *global* example index): the same global
batch gives the same update on 1 or 8 devices, under ``jit`` or ``pmap``.

With ``axis_name`` set (``pmap``), gradients and every cross-device statistic are ``pmean``-ed over
that axis; without it (single device, or ``jit`` over a sharded global batch) the batch is global
and XLA inserts the collectives itself.
"""
from __future__ import annotations

import collections
import functools
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from gantl_jax.fewshot import adapters
from gantl_jax.fewshot import cdc
from gantl_jax.fewshot import registry as methods
from gantl_jax.fewshot.registry import StepContext
from gantl_jax.training import losses
from gantl_jax.training import optim
from gantl_jax.training.state import GANState, Networks

Array = jax.Array
TrainStep = Callable[..., tuple[GANState, dict[str, Array]]]

# Sub-streams of an example's key.
_Z, _Z_MIX, _NOISE, _PL_NOISE, _AUG_FAKE, _AUG_REAL = 0, 1, 2, 3, 4, 5
# Phases of one step. Methods fold their own numbers into the step's key above these.
_G_MAIN, _G_REG, _D_MAIN, _D_REG, _MIX = 0, 1, 2, 3, 4
_CDC = cdc.CDC_PHASE  # CDC's shared latents

# The lazy phases one step runs, then the static flags of the registered methods (CDC's
# ``anchor``: latents near the anchors and image-level D; False, with cdc.cdc_anchor_interval
# > 0: free latents and patch-level D). Python bools (static): each value is its own compiled
# program without dead branches. The lazy regularisers' flags (:data:`COND_FLAGS`) may also be
# traced bools passed as an argument (:func:`with_cond_args`): one program then serves all their
# values, each of those phases behind a ``lax.cond``.
_FIELDS = ("g_reg", "d_reg") + methods.flag_names()
StepFlags = collections.namedtuple("StepFlags", _FIELDS, defaults=(False,) * len(_FIELDS))
StepFlags.__doc__ = ("The lazy phases (g_reg: path length, d_reg: R1) and the methods' static "
                     "choices one step runs; all False by default.")


VARIANT_PROGRAMS = ("auto", "separate", "merged")
# The StepFlags fields that a merged program takes as an argument, each lazy phase behind a
# lax.cond. The methods' flags (CDC's ``anchor`` changes the latents and the D of the whole step)
# stay static: a merged run compiles one program per value of them.
COND_FLAGS = ("g_reg", "d_reg")


def merged_variants(train: ml_collections.ConfigDict) -> bool:
  """Whether the drivers compile one program for the values of :data:`COND_FLAGS`
  (``train.variant_programs``): 'merged' yes, 'separate' no, 'auto' on CPU only."""
  value = train.variant_programs
  if value not in VARIANT_PROGRAMS:
    raise ValueError(f"train.variant_programs must be one of {VARIANT_PROGRAMS}, got {value!r}")
  return value == "merged" or (value == "auto" and jax.default_backend() == "cpu")


def program_key(flags: StepFlags, merged: bool) -> StepFlags:
  """Which compiled program runs a step of ``flags``: its own (separate programs), or with merged
  programs the one of its static flags (the fields of :data:`COND_FLAGS` set to None)."""
  return flags._replace(**{name: None for name in COND_FLAGS}) if merged else flags


def cond_args(flags: StepFlags) -> tuple:
  """The :data:`COND_FLAGS` of ``flags`` as bool arrays: the argument of a merged program."""
  return tuple(np.asarray(getattr(flags, name), bool) for name in COND_FLAGS)


def with_cond_args(key: StepFlags, args: tuple) -> StepFlags:
  """The flags that the merged program of ``key`` (:func:`program_key`) runs with its argument
  ``args`` (traced inside the program)."""
  return key._replace(**dict(zip(COND_FLAGS, args)))


def _lazy_phases(config: ml_collections.ConfigDict) -> dict[str, Optional[int]]:
  """StepFlags field -> its interval in steps, or None where the phase is off."""
  intervals = optim.reg_intervals(config.train)
  return dict(g_reg=intervals["g"], d_reg=intervals["d"], **methods.flag_intervals(config))


def schedule(step: int, config: ml_collections.ConfigDict) -> StepFlags:
  """The flags of step ``step`` of the run of ``config``: each lazy phase runs every
  ``interval`` steps, from step 0."""
  return StepFlags(**{name: bool(interval is not None and step % interval == 0)
                      for name, interval in _lazy_phases(config).items()})


def schedule_period(config: ml_collections.ConfigDict) -> int:
  """Steps after which :func:`schedule` repeats itself: the lcm of the lazy phases' intervals."""
  return math.lcm(*[i for i in _lazy_phases(config).values() if i])  # lcm() is 1


def frozen_networks(config: ml_collections.ConfigDict) -> dict[str, str]:
  """The source networks the step's methods read from ``frozen``, as {name in ``frozen``:
  transfer-source item}. Empty: the step needs no ``frozen`` (the loop then passes None). CDC and
  EWC add ``'g': 'g_ema'`` here. EWC also needs ``frozen['g_fisher']``, which the loop adds
  (``ewc.g_fisher``; not a source item)."""
  return methods.frozen_networks(config)


def ema_beta(images_seen: Array, global_batch: int, ema_kimg: float, ema_rampup: Optional[float]) -> Array:
  """G-EMA decay per step from a half-life in kimg, with StyleGAN2-ADA's ramp-up."""
  ema_nimg = jnp.asarray(ema_kimg * 1000.0, jnp.float32)
  if ema_rampup:
    ema_nimg = jnp.minimum(ema_nimg, images_seen.astype(jnp.float32) * ema_rampup)
  return 0.5 ** (global_batch / jnp.maximum(ema_nimg, 1e-8))


def _example_keys(key: Array, n: int, axis_name: Optional[str]) -> Array:
  """One key per example, a function of the global example index only."""
  offset = lax.axis_index(axis_name) * n if axis_name else 0
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(offset + jnp.arange(n))


def _normal_per_example(keys: Array, stream: int, shape: tuple[int, ...]) -> Array:
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, stream), shape, jnp.float32))(keys)


def _streams(keys: Array, stream: int) -> Array:
  return jax.vmap(lambda k: jax.random.fold_in(k, stream))(keys)


def _lazy(flag, phase: Callable, *operands):
  """A lazy phase: ``phase(*operands)`` (its updated operands and its penalty) where ``flag`` is
  set, else the operands unchanged and a NaN penalty. A Python bool decides while tracing, so each
  value is its own program without the other branch; a traced bool becomes a ``lax.cond``, so that
  one program serves every step of the schedule."""
  skip = lambda *xs: (*xs, jnp.full((), jnp.nan, jnp.float32))
  if isinstance(flag, (bool, np.bool_)):
    return phase(*operands) if flag else skip(*operands)
  return lax.cond(flag, phase, skip, *operands)


# ----------------------------------------------------------------------------------------------
# The parts of a step: pure functions of the step's context.


def _pmean(ctx: StepContext, x: Array) -> Array:
  return lax.pmean(x, ctx.axis_name) if ctx.axis_name else x


def _optimize(ctx: StepContext, tx: optax.GradientTransformation, grads: Any, opt_state: Any,
              params: Any) -> tuple[Any, Any]:
  """One optimizer step on the (device-averaged) gradients: (new params, new optimizer state)."""
  updates, opt_state = tx.update(_pmean(ctx, grads), opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def g_weights(ctx: StepContext, g_params: Any) -> Any:
  """The plain params G takes from its trained ``g_params`` (the methods' ``g_weights``: merged
  adapters)."""
  for m in ctx.methods:
    if m.g_weights is not None:
      g_params = m.g_weights(g_params)
  return g_params


def sample_g(ctx: StepContext, params: Any, buffers: Any, n: int, phase: int,
             latents: Optional[Callable[[Array], Array]] = None):
  """(synthesize, ws, keys) of n examples of ``phase``: latents, style mixing and noise from
  per-example keys. ``latents`` (a method's, e.g. CDC's anchors) maps the examples' latent keys to
  z instead of the prior; its latents are not style-mixed, as the official code."""
  g, t = ctx.nets.generator, ctx.config.train
  phase_key = jax.random.fold_in(ctx.key, phase)
  keys = _example_keys(phase_key, n, ctx.axis_name)
  variables = {"params": g_weights(ctx, params), "buffers": buffers}
  if latents is None:
    z = _normal_per_example(keys, _Z, (g.z_dim,))
  else:
    z = latents(_streams(keys, _Z))
  ws = g.apply(variables, z, method=g.map)
  if t.style_mixing_prob > 0 and latents is None:
    ws_mix = g.apply(variables, _normal_per_example(keys, _Z_MIX, (g.z_dim,)), method=g.map)
    ws = losses.mix_styles(ws, ws_mix, jax.random.fold_in(phase_key, _MIX), t.style_mixing_prob)
  noise_keys = _streams(keys, _NOISE)
  synthesize = lambda w: g.apply(variables, w, "random", noise_keys, method=g.synthesize)
  return synthesize, ws, keys


def d_logits(ctx: StepContext, d_params: Any, images: Array) -> Array:
  """One logit per image, or on a method's patch steps (CDC) one per patch: [N, P, P]."""
  return ctx.nets.discriminator.apply({"params": d_params}, images, mbstd_num_shards=ctx.num_shards,
                                      patch=ctx.patch)


def _views(ctx: StepContext) -> list[Callable]:
  return [m.d_view for m in ctx.methods if m.d_view is not None]


def d_view(ctx: StepContext, images: Array, keys: Array, stream: int) -> Array:
  """What D sees of ``images``: through the methods' ``d_view`` (augmentation) with the examples'
  ``keys`` (sub-stream ``stream``), or the images themselves (then nothing is added)."""
  views = _views(ctx)
  if not views:
    return images
  stream_keys = _streams(keys, stream)
  for view in views:
    images = view(ctx, images, stream_keys)
  return images


def g_main(ctx: StepContext, g_state: Any, d_params: Any):
  """Phase 1: make D call the fakes real, plus the methods' ``g_terms`` (CDC: keep the source's
  distances; EWC: stay near the source's weights where they matter to it). Returns (params,
  optimizer state, the batch's w [N, w_dim], metrics); ``g_loss`` is the adversarial loss alone."""
  def loss_fn(g_params):
    synthesize, ws, keys = sample_g(ctx, g_params, g_state.buffers, ctx.n, _G_MAIN, ctx.latents)
    logits = d_logits(ctx, d_params, d_view(ctx, synthesize(ws), keys, _AUG_FAKE))
    loss = jnp.mean(losses.g_logistic_ns(logits))
    parts = {"g_loss": loss}
    g_vars = {"params": g_weights(ctx, g_params), "buffers": g_state.buffers}
    for m in ctx.methods:
      if m.g_terms is not None:
        for name, (term, logged) in m.g_terms(ctx, g_vars).items():
          parts[name] = logged
          loss = loss + term
    return loss, (ws[:, 0], parts)

  (_, (w_batch, parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(g_state.params)
  params, opt_state = _optimize(ctx, ctx.nets.g_tx, grads, g_state.opt_state, g_state.params)
  return params, opt_state, w_batch, {name: _pmean(ctx, value) for name, value in parts.items()}


def track_w_avg(ctx: StepContext, buffers: Any, w_batch: Array) -> Any:
  """G's buffers with the tracked average w, for truncation (StyleGAN2 tracks it in the mapping
  network), moved towards this batch's mean. Not from a method's latents (CDC's anchors), which
  are not drawn from the prior."""
  if ctx.latents is not None:
    return buffers
  w_mean = _pmean(ctx, jnp.mean(w_batch, axis=0))
  w_avg = w_mean + ctx.config.train.w_avg_beta * (buffers["mapping"]["w_avg"] - w_mean)
  return {**buffers, "mapping": {**buffers["mapping"], "w_avg": w_avg}}


def g_reg(ctx: StepContext, g_buffers: Any, g_params: Any, g_opt_state: Any, pl_mean: Array):
  """Phase 2, lazy: path-length regularisation, scaled by its interval. Returns (params, optimizer
  state, the new path-length mean, the penalty)."""
  g, t = ctx.nets.generator, ctx.config.train
  n_pl = ctx.n // t.pl_batch_shrink

  def loss_fn(g_params):
    synthesize, ws, keys = sample_g(ctx, g_params, g_buffers, n_pl, _G_REG)
    res = g.resolution
    pl_noise = _normal_per_example(keys, _PL_NOISE, (res, res, g.img_channels)) / math.sqrt(res * res)
    lengths = losses.path_length(synthesize, ws, pl_noise)
    penalty, new_mean = losses.path_length_penalty(lengths, pl_mean, t.pl_decay, functools.partial(_pmean, ctx))
    return jnp.mean(penalty) * t.pl_weight * t.pl_interval, (lax.stop_gradient(new_mean), jnp.mean(penalty))

  (_, (pl_mean, pl_penalty)), grads = jax.value_and_grad(loss_fn, has_aux=True)(g_params)
  g_params, g_opt_state = _optimize(ctx, ctx.nets.g_tx, grads, g_opt_state, g_params)
  return g_params, g_opt_state, pl_mean, _pmean(ctx, pl_penalty)


def d_main(ctx: StepContext, d_state: Any, g_params: Any, g_buffers: Any, real_images: Array):
  """Phase 3: real vs fake from the updated G. Returns (params, optimizer state, metrics)."""
  synthesize, ws, keys = sample_g(ctx, g_params, g_buffers, ctx.n, _D_MAIN, ctx.latents)
  fake_images = lax.stop_gradient(synthesize(ws))
  d_reals = d_view(ctx, real_images, keys, _AUG_REAL)
  d_fakes = d_view(ctx, fake_images, keys, _AUG_FAKE)

  def loss_fn(d_params):
    real_logits = d_logits(ctx, d_params, d_reals)
    fake_logits = d_logits(ctx, d_params, d_fakes)
    loss_real, loss_fake = losses.d_logistic(real_logits, fake_logits)
    return jnp.mean(loss_real + loss_fake), (real_logits, fake_logits)

  (d_loss, (real_logits, fake_logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(d_state.params)
  params, opt_state = _optimize(ctx, ctx.nets.d_tx, grads, d_state.opt_state, d_state.params)
  pmean = functools.partial(_pmean, ctx)
  metrics = dict(d_loss=pmean(d_loss), real_logits=pmean(jnp.mean(real_logits)),
                 fake_logits=pmean(jnp.mean(fake_logits)), real_sign=pmean(jnp.mean(jnp.sign(real_logits))))
  return params, opt_state, metrics


def d_reg(ctx: StepContext, real_images: Array, d_params: Any, d_opt_state: Any):
  """Phase 4, lazy: R1 on the reals, scaled by its interval. Returns (params, optimizer state,
  the penalty)."""
  t = ctx.config.train
  keys = _example_keys(jax.random.fold_in(ctx.key, _D_REG), ctx.n, ctx.axis_name) if _views(ctx) else None

  def loss_fn(d_params):
    # The gradient is w.r.t. the un-augmented reals, through the augmentation (as ADA). On
    # patch steps (CDC's), of each image's mean patch logit (as the official code).
    def d_fn(x):
      logits = d_logits(ctx, d_params, d_view(ctx, x, keys, _AUG_REAL))
      return jnp.mean(logits, axis=(1, 2)) if ctx.patch else logits

    penalty, _ = losses.r1_penalty(d_fn, real_images)
    return jnp.mean(penalty) * (t.r1_gamma / 2) * t.r1_interval, jnp.mean(penalty)

  (_, r1), grads = jax.value_and_grad(loss_fn, has_aux=True)(d_params)
  d_params, d_opt_state = _optimize(ctx, ctx.nets.d_tx, grads, d_opt_state, d_params)
  return d_params, d_opt_state, _pmean(ctx, r1)


def ema(ctx: StepContext, g_params: Any) -> tuple[Any, Array]:
  """The G-EMA's new params and its decay: a half-life in images, ramped up early in training."""
  t, state = ctx.config.train, ctx.state
  beta = ema_beta(state.images_seen, ctx.global_batch, t.ema_kimg, t.ema_rampup)
  return jax.tree.map(lambda e, p: p + beta * (e - p), state.g_ema.params, g_params), beta


def step_context(config: ml_collections.ConfigDict, nets: Networks, axis_name: Optional[str],
                 num_shards: int, state: GANState, n: int, frozen: Any, flags: StepFlags) -> StepContext:
  """The context of one step, with the enabled methods' choices for it (latents, patch D)."""
  active = methods.active(config)
  off = [m.name for m in methods.REGISTRY if m not in active and any(getattr(flags, f) for f, _ in m.flags)]
  if off:
    raise ValueError(f"{flags} sets a flag of method {off[0]!r}, which this config leaves off; take "
                     f"the flags from steps.schedule")
  ctx = StepContext(
      config=config, nets=nets, axis_name=axis_name, num_shards=num_shards, methods=active,
      state=state, key=jax.random.fold_in(state.key, state.step), flags=flags, frozen=frozen,
      n=n, global_batch=n * (lax.psum(1, axis_name) if axis_name else 1))
  latents = {m.name: m.latents(ctx) for m in active if m.latents is not None}
  latents = {name: f for name, f in latents.items() if f is not None}
  if len(latents) > 1:
    raise ValueError(f"methods {sorted(latents)} each draw this step's latents; enable one of them")
  patch = any(m.d_patch(ctx) for m in active if m.d_patch is not None)
  return ctx._replace(latents=next(iter(latents.values()), None), patch=patch)


def make_train_step(config: ml_collections.ConfigDict, nets: Networks,
                    axis_name: Optional[str] = None, num_shards: int = 1) -> TrainStep:
  """Builds ``train_step(state, real_images, frozen=None, *, flags) -> (state, metrics)``.

  ``config`` must be resolved (``gantl_jax.config.resolve``). ``real_images`` are NHWC floats in
  [-1, 1]: the global batch, or under ``pmap`` this device's share. Metrics are device scalars;
  the loss of a phase that did not run is NaN. ``num_shards`` is the number of devices a ``jit``
  step's batch is split over: D's strided minibatch-stddev groups (``model.mbstd_grouping``) stay
  inside each device's share (under ``pmap`` each call sees one share: leave it at 1).
  """
  def train_step(state: GANState, real_images: Array, frozen: Any = None, *,
                 flags: StepFlags = StepFlags()) -> tuple[GANState, dict[str, Array]]:
    ctx = step_context(config, nets, axis_name, num_shards, state, real_images.shape[0], frozen, flags)
    g_params, g_opt_state, w_batch, metrics = g_main(ctx, state.g, state.d.params)
    g_buffers = track_w_avg(ctx, state.g.buffers, w_batch)
    g_params, g_opt_state, pl_mean, metrics["pl_penalty"] = _lazy(
        flags.g_reg, functools.partial(g_reg, ctx, g_buffers), g_params, g_opt_state, state.extras["pl_mean"])
    metrics["pl_mean"] = pl_mean
    d_params, d_opt_state, d_metrics = d_main(ctx, state.d, g_params, g_buffers, real_images)
    metrics.update(d_metrics)
    d_params, d_opt_state, metrics["r1_penalty"] = _lazy(
        flags.d_reg, functools.partial(d_reg, ctx, real_images), d_params, d_opt_state)
    g_ema_params, metrics["ema_beta"] = ema(ctx, g_params)
    extras = {**state.extras, "pl_mean": pl_mean}
    for m in ctx.methods:
      if m.after_step is not None:
        extras, more = m.after_step(ctx, extras, metrics)
        metrics.update(more)
    new_state = state.replace(
        step=state.step + 1, images_seen=state.images_seen + ctx.global_batch,
        g=state.g.replace(params=g_params, buffers=g_buffers, opt_state=g_opt_state),
        g_ema=state.g_ema.replace(params=g_ema_params, buffers=g_buffers),
        d=state.d.replace(params=d_params, opt_state=d_opt_state),
        extras=extras)
    return new_state, metrics

  return train_step


def generate(nets: Networks, g_vars: Any, z: Array, *, truncation_psi: float = 1.0,
             noise_mode: str = "const", noise_keys: Optional[Array] = None) -> Array:
  """Images [N, R, R, C] in [-1, 1] (nominally) from latents z with a generator's variables
  (``{'params', 'buffers'}``, e.g. ``state.g_ema.variables``). ``noise_mode='random'`` needs
  ``noise_keys``, one PRNG key per example. Kernel-modulation adapters in ``g_vars`` are merged."""
  return nets.generator.apply(adapters.merge_variables(g_vars), z, truncation_psi=truncation_psi,
                              noise_mode=noise_mode, noise_keys=noise_keys)
