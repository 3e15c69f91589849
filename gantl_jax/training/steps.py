"""The pure training step of StyleGAN2 (the phases of stylegan2-ada-pytorch) and generation.

``make_train_step`` returns ``train_step(state, real_images, frozen=None, *, flags)``, a pure
function of the state and one batch of real images. It runs the four phases of StyleGAN2 in order,
each its own optimizer step: G main (non-saturating loss), G regularisation (path length, lazy),
D main (logistic loss), D regularisation (R1, lazy); then the G-EMA update. ``flags`` (a
:class:`StepFlags`) is static: each value compiles to its own program with no dead branches, and
:func:`schedule` says which one a step needs. Drivers pass it through unchanged.

``frozen`` holds variables of source networks that the few-shot regularisers compare against
(``{'g': {'params', 'buffers'}}`` of the transfer source's G-EMA, say). It is an ordinary input:
replicated, never donated and never part of the state, so never checkpointed. EWC
(``fewshot.ewc_weight``) reads the source G there and G's Fisher (``frozen['g_fisher']``), and adds
``ewc_weight * sum F * (theta - theta_source)^2`` to G main's loss (logged as ``ewc_penalty``).

G's params may carry kernel-modulation adapters (``adapters.py``): every use of G merges them into
the kernels first, so the step trains the adapter leaves through the merged weights.

Randomness is a pure function of (state.rng, step, phase, *global* example index): the same global
batch gives the same update on 1 or 8 devices, under ``jit`` or ``pmap``.

With ``augment.kind`` other than ``'none'``, every image D sees goes through ``augment.py`` first:
the fakes in G main, reals and fakes in D main, and the reals in R1 (whose gradient is taken with
respect to the un-augmented reals, through the augmentation). ADA's controller runs at the end of
the step on D main's E[sign(D(real))] and keeps p in ``state.extras``. With ``'none'`` the step is
the program it was before augmentation existed.

With ``fewshot.cdc_weight`` > 0, G main adds CDC's distance-consistency term against
``frozen['g']`` (``fewshot.py``); with ``fewshot.cdc_anchor_interval`` > 0 the ``anchor`` flag
chooses between latents near the anchors with image-level D, and free latents with patch-level D.
Both off, the step is the program it was before CDC existed.

With ``axis_name`` set (``pmap``), gradients and every cross-device statistic are ``pmean``-ed over
that axis; without it (single device, or ``jit`` over a sharded global batch) the batch is global
and XLA inserts the collectives itself.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from gantl_jax.fewshot import adapters
from gantl_jax.fewshot import augment
from gantl_jax.fewshot import cdc as fewshot
from gantl_jax.fewshot import ewc as fisher
from gantl_jax.training import losses
from gantl_jax.training import optim
from gantl_jax.training.state import GANState, Networks

Array = jax.Array
TrainStep = Callable[..., tuple[GANState, dict[str, Array]]]

# Sub-streams of an example's key.
_Z, _Z_MIX, _NOISE, _PL_NOISE, _AUG_FAKE, _AUG_REAL = 0, 1, 2, 3, 4, 5
# Phases of one step.
_G_MAIN, _G_REG, _D_MAIN, _D_REG, _MIX = 0, 1, 2, 3, 4
_CDC = 5  # CDC's shared latents (fewshot.cdc_inputs)


class StepFlags(NamedTuple):
  """The lazy phases one step runs. Python bools (static): each value is its own compiled program
  without dead branches. The lazy regularisers' flags (:data:`COND_FLAGS`) may also be traced
  bools passed as an argument (:func:`with_cond_args`): one program then serves all their values,
  each of those phases behind a ``lax.cond``."""
  g_reg: bool = False  # path-length regularisation of G
  d_reg: bool = False  # R1 regularisation of D
  # CDC: latents near the anchors and image-level D (False, with fewshot.cdc_anchor_interval > 0:
  # free latents and patch-level D).
  anchor: bool = False


VARIANT_PROGRAMS = ("auto", "separate", "merged")
# The StepFlags fields that a merged program takes as an argument, each lazy phase behind a
# lax.cond. CDC's ``anchor`` changes the latents and the D of the whole step, so it stays static:
# a merged run compiles one program per value of it.
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
  """StepFlags field -> its interval in steps, or None where the phase is off. Adding a lazy
  phase means a field above and an entry here."""
  intervals = optim.reg_intervals(config.train)
  return dict(g_reg=intervals["g"], d_reg=intervals["d"], anchor=fewshot.anchor_interval(config))


def schedule(step: int, config: ml_collections.ConfigDict) -> StepFlags:
  """The flags of step ``step`` of the run of ``config``: each lazy phase runs every
  ``interval`` steps, from step 0."""
  return StepFlags(**{name: bool(interval is not None and step % interval == 0)
                      for name, interval in _lazy_phases(config).items()})


def schedule_period(config: ml_collections.ConfigDict) -> int:
  """Steps after which :func:`schedule` repeats itself: the lcm of the lazy phases' intervals."""
  return math.lcm(*[i for i in _lazy_phases(config).values() if i])  # lcm() is 1


def frozen_networks(config: ml_collections.ConfigDict) -> dict[str, str]:
  """The source networks the step's regularisers read from ``frozen``, as {name in ``frozen``:
  transfer-source item}. Empty: the step needs no ``frozen`` (the loop then passes None). The
  few-shot regularisers that compare with the source G add ``'g': 'g_ema'`` here (CDC, EWC). EWC
  also needs ``frozen['g_fisher']``, which the loop adds (``fisher.g_fisher``; not a source item)."""
  needs_source_g = fewshot.cdc_weight(config) > 0 or fisher.ewc_weight(config) > 0
  return {"g": "g_ema"} if needs_source_g else {}


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


def _lazy(flag, phase: Callable, *operands):
  """A lazy phase: ``phase(*operands)`` (its updated operands and its penalty) where ``flag`` is
  set, else the operands unchanged and a NaN penalty. A Python bool decides while tracing, so each
  value is its own program without the other branch; a traced bool becomes a ``lax.cond``, so that
  one program serves every step of the schedule."""
  skip = lambda *xs: (*xs, jnp.full((), jnp.nan, jnp.float32))
  if isinstance(flag, (bool, np.bool_)):
    return phase(*operands) if flag else skip(*operands)
  return lax.cond(flag, phase, skip, *operands)


def make_train_step(config: ml_collections.ConfigDict, nets: Networks,
                    axis_name: Optional[str] = None, num_shards: int = 1) -> TrainStep:
  """Builds ``train_step(state, real_images, frozen=None, *, flags) -> (state, metrics)``.

  ``config`` must be resolved (``gantl_jax.config.resolve``). ``real_images`` are NHWC floats in
  [-1, 1]: the global batch, or under ``pmap`` this device's share. Metrics are device scalars;
  the loss of a phase that did not run is NaN. ``num_shards`` is the number of devices a ``jit``
  step's batch is split over: D's strided minibatch-stddev groups (``model.mbstd_grouping``) stay
  inside each device's share (under ``pmap`` each call sees one share: leave it at 1).
  """
  t = config.train
  g, d = nets.generator, nets.discriminator
  pmean = (lambda x: lax.pmean(x, axis_name)) if axis_name else (lambda x: x)
  aug_config = config.augment
  augment_fn = augment.make(aug_config)
  cdc_weight = fewshot.cdc_weight(config)
  patch_d = fewshot.patch_resolution(config) > 0
  ewc_weight = fisher.ewc_weight(config)

  def run_g(params, buffers, key, n, phase, anchor_key=None):
    """Samples n images: latents, style mixing and noise from per-example keys. With
    ``anchor_key`` (the run's key, on CDC's anchor steps) the latents are drawn near the anchors,
    without style mixing, as the official code."""
    phase_key = jax.random.fold_in(key, phase)
    keys = _example_keys(phase_key, n, axis_name)
    # With kernel-modulation adapters, the kernels the model uses are the merged ones.
    variables = {"params": adapters.merge(params), "buffers": buffers}
    if anchor_key is None:
      z = _normal_per_example(keys, _Z, (g.z_dim,))
    else:
      z_keys = jax.vmap(lambda k: jax.random.fold_in(k, _Z))(keys)
      z = fewshot.near_anchors(anchor_key, z_keys, config.fewshot, g.z_dim)
    ws = g.apply(variables, z, method=g.map)
    if t.style_mixing_prob > 0 and anchor_key is None:
      ws_mix = g.apply(variables, _normal_per_example(keys, _Z_MIX, (g.z_dim,)), method=g.map)
      ws = losses.mix_styles(ws, ws_mix, jax.random.fold_in(phase_key, _MIX), t.style_mixing_prob)
    noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, _NOISE))(keys)
    synthesize = lambda w: g.apply(variables, w, "random", noise_keys, method=g.synthesize)
    return synthesize, ws, keys

  def d_logits(d_params, images, patch=False):
    """One logit per image, or with ``patch`` (CDC) one per patch: [N, P, P]."""
    return d.apply({"params": d_params}, images, mbstd_num_shards=num_shards, patch=patch)

  def augmented(images, keys, stream, p):
    """What D sees of ``images``: augmented with the examples' ``keys`` (sub-stream ``stream``),
    or the images themselves when augmentation is off (then nothing is added to the program)."""
    if augment_fn is None:
      return images
    return augment_fn(images, jax.vmap(lambda k: jax.random.fold_in(k, stream))(keys), p)

  def train_step(state: GANState, real_images: Array, frozen: Any = None, *,
                 flags: StepFlags = StepFlags()) -> tuple[GANState, dict[str, Array]]:
    n = real_images.shape[0]
    global_batch = n * (lax.psum(1, axis_name) if axis_name else 1)
    key = jax.random.fold_in(state.key, state.step)
    metrics = {}
    g_state, d_state = state.g, state.d
    aug_p = augment.probability(aug_config, state.extras) if augment_fn is not None else None
    # CDC's anchor-region patch D: anchor steps draw G main's and D main's latents near the
    # anchors and D judges images; the other steps draw free latents and D judges patches.
    anchor_key = state.key if flags.anchor else None
    patch = patch_d and not flags.anchor
    if cdc_weight > 0:
      if frozen is None or "g" not in frozen:
        raise ValueError("fewshot.cdc_weight > 0 needs the source G: pass frozen={'g': "
                         "{'params', 'buffers'}} (see steps.frozen_networks and transfer.read_frozen)")
      # No device offset: every device computes the term on the same latents.
      cdc_z, cdc_noise_keys = fewshot.cdc_inputs(jax.random.fold_in(key, _CDC), config.fewshot.cdc_batch, g.z_dim)
    if ewc_weight > 0 and (frozen is None or "g" not in frozen or "g_fisher" not in frozen):
      raise ValueError("fewshot.ewc_weight > 0 needs the source G and its Fisher: pass frozen={'g': "
                       "{'params', 'buffers'}, 'g_fisher': params-shaped tree} (see fisher.g_fisher)")

    # Phase 1, G main: make D call the fakes real (with CDC, keep the source's distances; with
    # EWC, stay near the source's weights where they matter to it).
    def g_main_loss(g_params):
      synthesize, ws, keys = run_g(g_params, g_state.buffers, key, n, _G_MAIN, anchor_key)
      logits = d_logits(d_state.params, augmented(synthesize(ws), keys, _AUG_FAKE, aug_p), patch)
      loss = jnp.mean(losses.g_logistic_ns(logits))
      parts = {"g_loss": loss}  # logged apart: g_loss stays the adversarial loss
      plain = adapters.merge(g_params)  # the weights the model uses
      if cdc_weight > 0:
        parts["cdc_loss"] = cdc_weight * fewshot.cdc_loss(
            g, {"params": plain, "buffers": g_state.buffers}, frozen["g"], cdc_z, cdc_noise_keys)
        loss = loss + parts["cdc_loss"]
      if ewc_weight > 0:  # logged unweighted, as the other penalties
        parts["ewc_penalty"] = fisher.ewc_penalty(plain, frozen["g"]["params"], frozen["g_fisher"])
        loss = loss + ewc_weight * parts["ewc_penalty"]
      return loss, (ws[:, 0], parts)

    (_, (w_batch, parts)), g_grads = jax.value_and_grad(g_main_loss, has_aux=True)(g_state.params)
    updates, g_opt_state = nets.g_tx.update(pmean(g_grads), g_state.opt_state, g_state.params)
    g_params = optax.apply_updates(g_state.params, updates)
    metrics.update({name: pmean(value) for name, value in parts.items()})

    # The tracked average w, for truncation (StyleGAN2 tracks it in the mapping network). Not
    # from anchor steps, whose latents are not drawn from the prior.
    g_buffers = g_state.buffers
    if not flags.anchor:
      w_mean = pmean(jnp.mean(w_batch, axis=0))
      w_avg = w_mean + t.w_avg_beta * (g_state.buffers["mapping"]["w_avg"] - w_mean)
      g_buffers = {**g_state.buffers, "mapping": {**g_state.buffers["mapping"], "w_avg": w_avg}}

    # Phase 2, G regularisation: path length, every pl_interval steps, scaled by the interval.
    def g_reg_phase(g_params, g_opt_state, pl_mean):
      n_pl = n // t.pl_batch_shrink

      def g_pl_loss(g_params):
        synthesize, ws, keys = run_g(g_params, g_buffers, key, n_pl, _G_REG)
        res = g.resolution
        pl_noise = _normal_per_example(keys, _PL_NOISE, (res, res, g.img_channels)) / math.sqrt(res * res)
        lengths = losses.path_length(synthesize, ws, pl_noise)
        penalty, new_mean = losses.path_length_penalty(lengths, pl_mean, t.pl_decay, pmean)
        return jnp.mean(penalty) * t.pl_weight * t.pl_interval, (lax.stop_gradient(new_mean), jnp.mean(penalty))

      (_, (pl_mean, pl_penalty)), pl_grads = jax.value_and_grad(g_pl_loss, has_aux=True)(g_params)
      updates, g_opt_state = nets.g_tx.update(pmean(pl_grads), g_opt_state, g_params)
      return optax.apply_updates(g_params, updates), g_opt_state, pl_mean, pmean(pl_penalty)

    g_params, g_opt_state, pl_mean, metrics["pl_penalty"] = _lazy(
        flags.g_reg, g_reg_phase, g_params, g_opt_state, state.extras["pl_mean"])
    metrics["pl_mean"] = pl_mean

    # Phase 3, D main: real vs fake from the updated G.
    synthesize, ws, d_keys = run_g(g_params, g_buffers, key, n, _D_MAIN, anchor_key)
    fake_images = lax.stop_gradient(synthesize(ws))
    d_reals = augmented(real_images, d_keys, _AUG_REAL, aug_p)
    d_fakes = augmented(fake_images, d_keys, _AUG_FAKE, aug_p)

    def d_main_loss(d_params):
      real_logits = d_logits(d_params, d_reals, patch)
      fake_logits = d_logits(d_params, d_fakes, patch)
      loss_real, loss_fake = losses.d_logistic(real_logits, fake_logits)
      return jnp.mean(loss_real + loss_fake), (real_logits, fake_logits)

    (d_loss, (real_logits, d_fake_logits)), d_grads = jax.value_and_grad(d_main_loss, has_aux=True)(d_state.params)
    updates, d_opt_state = nets.d_tx.update(pmean(d_grads), d_state.opt_state, d_state.params)
    d_params = optax.apply_updates(d_state.params, updates)
    metrics.update(d_loss=pmean(d_loss), real_logits=pmean(jnp.mean(real_logits)),
                   fake_logits=pmean(jnp.mean(d_fake_logits)),
                   real_sign=pmean(jnp.mean(jnp.sign(real_logits))))

    # Phase 4, D regularisation: R1 on reals, every r1_interval steps, scaled by the interval.
    def d_reg_phase(d_params, d_opt_state):
      r1_keys = (_example_keys(jax.random.fold_in(key, _D_REG), n, axis_name)
                 if augment_fn is not None else None)

      def d_r1_loss(d_params):
        # The gradient is w.r.t. the un-augmented reals, through the augmentation (as ADA). On
        # CDC's patch steps, of each image's mean patch logit (as the official code).
        def d_fn(x):
          logits = d_logits(d_params, augmented(x, r1_keys, _AUG_REAL, aug_p), patch)
          return jnp.mean(logits, axis=(1, 2)) if patch else logits

        penalty, _ = losses.r1_penalty(d_fn, real_images)
        return jnp.mean(penalty) * (t.r1_gamma / 2) * t.r1_interval, jnp.mean(penalty)

      (_, r1), r1_grads = jax.value_and_grad(d_r1_loss, has_aux=True)(d_params)
      updates, d_opt_state = nets.d_tx.update(pmean(r1_grads), d_opt_state, d_params)
      return optax.apply_updates(d_params, updates), d_opt_state, pmean(r1)

    d_params, d_opt_state, metrics["r1_penalty"] = _lazy(flags.d_reg, d_reg_phase, d_params, d_opt_state)

    # G-EMA: a half-life in images, ramped up early in training; buffers are copied.
    beta = ema_beta(state.images_seen, global_batch, t.ema_kimg, t.ema_rampup)
    g_ema_params = jax.tree.map(lambda e, p: p + beta * (e - p), state.g_ema.params, g_params)
    metrics["ema_beta"] = beta

    extras = {**state.extras, "pl_mean": pl_mean}
    # ADA's controller, on D main's sign of the (augmented) reals' logits, already a global mean.
    # Its target is a level of image logits: CDC's patch steps do not count.
    if aug_config is not None and aug_config.kind == "ada":
      extras, metrics["ada_rt"] = augment.ada_update(
          extras, metrics["real_sign"], global_batch, aug_config, counted=not patch,
          count_every=fewshot.anchor_interval(config) if patch_d else 1)
    if aug_p is not None:
      metrics["aug_p"] = jnp.asarray(extras.get("aug_p", aug_p), jnp.float32)

    new_state = state.replace(
        step=state.step + 1, images_seen=state.images_seen + global_batch,
        g=g_state.replace(params=g_params, buffers=g_buffers, opt_state=g_opt_state),
        g_ema=state.g_ema.replace(params=g_ema_params, buffers=g_buffers),
        d=d_state.replace(params=d_params, opt_state=d_opt_state),
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
