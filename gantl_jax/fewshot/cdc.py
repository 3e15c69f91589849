"""Few-shot regularisers that compare the adapted G with the transfer source: CDC.

**CDC** (cross-domain correspondence, Ojha et al. 2021, "Few-shot Image Generation via Cross-domain
Correspondence") has two parts, both selected in the config section ``fewshot``:

* Cross-domain distance consistency (``cdc_weight`` > 0). ``cdc_batch`` latents, shared by every
  device, go through the frozen source G and the adapted G with the same noise. At each synthesis
  block, each image's features are compared with those of the other images (cosine similarity),
  the similarities are turned into a distribution over the others (softmax), and the loss is the
  KL divergence from the source's distribution to the adapted G's. The adapted G thereby keeps the
  source's relative distances between samples, and with them its diversity.
* The anchor-region patch discriminator (``cdc_anchor_interval`` > 0). Every
  ``cdc_anchor_interval``-th step draws its latents near a few fixed anchors and D judges whole
  images; on the other steps latents are free and D judges patches (:func:`patch_resolution`), so
  that only the anchor region is pushed towards whole training images. The step's ``anchor`` flag
  (``steps.StepFlags``) says which.

The functions here are pure. The two parts are the methods 'cdc' and 'cdc_anchors' of
``methods.py``, whose hooks (:func:`cdc_terms`, :func:`anchor_latents`, :func:`patch_step`) the
step of ``steps.py`` calls.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gantl_jax import errors
from gantl_jax.models import stylegan2
from gantl_jax.resolutions import block_resolutions

Array = jax.Array

# Folded into state.rng to get the anchors' key. fold_in(state.rng, step) gives the steps' keys,
# and an int32 step never reaches this uint32 value, so the anchors share no key with any step.
_ANCHOR_KEY = 0xFFFFFFFF
# Sub-streams of a CDC example's key.
_CDC_Z, _CDC_NOISE = 0, 1
# Sub-streams of an example's latent key on anchor steps.
_ANCHOR_INDEX, _ANCHOR_OFFSET = 0, 1
# Folded into the step's key for its CDC latents; the step's own phases take 0 to 4.
CDC_PHASE = 5


def cdc_weight(config: ml_collections.ConfigDict) -> float:
  """The weight of the distance-consistency term; 0 when it is off."""
  return float(config.fewshot.cdc_weight)


def anchor_interval(config: ml_collections.ConfigDict) -> Optional[int]:
  """Steps between anchor steps, or None when the anchor-region patch discriminator is off."""
  f = config.fewshot
  return f.cdc_anchor_interval if f.cdc_anchor_interval > 0 else None


def cdc_enabled(config: ml_collections.ConfigDict) -> bool:
  """Whether G main adds the distance-consistency term."""
  return cdc_weight(config) > 0


def anchors_enabled(config: ml_collections.ConfigDict) -> bool:
  """Whether the run has the anchor-region patch discriminator."""
  return anchor_interval(config) is not None


def frozen_networks(config: ml_collections.ConfigDict) -> dict[str, str]:
  """The source networks the distance-consistency term reads from the step's ``frozen``."""
  del config
  return {"g": "g_ema"}


def patch_resolution(config: ml_collections.ConfigDict) -> int:
  """Side of D's patch-logit map, or 0 when D has no patch head (its parameters then are exactly
  those of a D without CDC). ``fewshot.cdc_patch_resolution`` = 0 means resolution / 8 (at least
  4): the official code's 32x32 map at 256 px."""
  if anchor_interval(config) is None:
    return 0
  res = config.fewshot.cdc_patch_resolution
  return res if res > 0 else max(config.model.resolution // 8, 4)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the ``fewshot.cdc_*`` key that cannot work."""
  f = config.fewshot
  if f.cdc_weight < 0:
    raise errors.ConfigError(f"fewshot.cdc_weight must be >= 0 (0 = off), got {f.cdc_weight}")
  if f.cdc_weight > 0:
    if f.cdc_batch < 2:
      raise errors.ConfigError(f"fewshot.cdc_batch must be >= 2 (each latent is compared with "
                               f"the others), got {f.cdc_batch}")
    if not config.transfer.source:
      raise errors.ConfigError(
          f"fewshot.cdc_weight={f.cdc_weight} compares G with the transfer source, but "
          f"transfer.source is empty; set --config.transfer.source=DIR or fewshot.cdc_weight=0")
  if f.cdc_anchor_interval < 0:
    raise errors.ConfigError(f"fewshot.cdc_anchor_interval must be >= 0 (0 = image-level D "
                             f"always), got {f.cdc_anchor_interval}")
  if f.cdc_anchor_interval > 0:
    if f.cdc_anchors < 1:
      raise errors.ConfigError(f"fewshot.cdc_anchors must be >= 1, got {f.cdc_anchors}")
    if f.cdc_anchor_std < 0:
      raise errors.ConfigError(f"fewshot.cdc_anchor_std must be >= 0, got {f.cdc_anchor_std}")
    # D's blocks output maps of resolution/2 down to 4.
    sides = [r // 2 for r in block_resolutions(config.model.resolution)[1:]]
    res = patch_resolution(config)
    if res not in sides:
      raise errors.ConfigError(
          f"fewshot.cdc_patch_resolution={f.cdc_patch_resolution}: the {config.model.resolution} px "
          f"discriminator's blocks output {sorted(sides)} px maps; choose one of those (0 = "
          f"resolution / 8, at least 4)")


# ---------------------------------------------------------------------------
# Cross-domain distance consistency.


def cdc_inputs(key: Array, batch: int, z_dim: int) -> tuple[Array, Array]:
  """The shared latents [batch, z_dim] and noise keys of one step's CDC term, from the step's CDC
  key alone: the same on every device, whatever the device count."""
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch))
  z = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, _CDC_Z), (z_dim,)))(keys)
  return z, jax.vmap(lambda k: jax.random.fold_in(k, _CDC_NOISE))(keys)


def synthesis_features(g: stylegan2.Generator, variables: Any, z: Array, noise_keys: Array
                       ) -> dict[str, Array]:
  """The synthesis blocks' outputs for latents ``z``, without the 4x4 block (the official code
  leaves out its 4x4 layer too)."""
  _, features = stylegan2.apply_with_features(g, variables, z, noise_mode="random",
                                              noise_keys=noise_keys)
  return {k: v for k, v in features.items() if k.startswith("synthesis/") and k != "synthesis/b4"}


def similarity_log_probs(features: Array) -> Array:
  """[N, ...] features -> [N, N-1]: for each image, the log-softmax over the other images of the
  cosine similarity between flattened features."""
  n = features.shape[0]
  f = features.reshape(n, -1).astype(jnp.float32)
  f = f / jnp.maximum(jnp.linalg.norm(f, axis=1, keepdims=True), 1e-8)
  others = np.array([[j for j in range(n) if j != i] for i in range(n)])
  return jax.nn.log_softmax(jnp.take_along_axis(f @ f.T, others, axis=1), axis=1)


def distance_consistency(source: dict[str, Array], adapted: dict[str, Array]) -> Array:
  """KL(source || adapted) of the similarity distributions, averaged over the feature levels.

  Per level the KL is averaged over the N(N-1) entries, as the official code's ``KLDivLoss()``
  (reduction 'mean'), which the paper's weight of 1000 is set for. The official code compares
  each image at one randomly drawn level; the mean over the levels is that estimate's
  expectation, without its noise."""
  kls = []
  for name, feats in source.items():
    log_p = similarity_log_probs(feats)
    log_q = similarity_log_probs(adapted[name])
    kls.append(jnp.mean(jnp.exp(log_p) * (log_p - log_q)))
  return jnp.mean(jnp.stack(kls))


def cdc_loss(g: stylegan2.Generator, adapted_vars: Any, source_vars: Any, z: Array,
             noise_keys: Array) -> Array:
  """The distance-consistency KL (unweighted) between the adapted G (``adapted_vars``,
  differentiable) and the frozen source G (``source_vars``, no gradient) on latents ``z``."""
  source = synthesis_features(g, jax.lax.stop_gradient(source_vars), z, noise_keys)
  adapted = synthesis_features(g, adapted_vars, z, noise_keys)
  return distance_consistency(source, adapted)


def cdc_terms(ctx, g_vars: Any) -> dict[str, tuple[Array, Array]]:
  """G main's weighted distance-consistency term for the step of ``ctx`` (``methods.StepContext``)
  between G's variables ``g_vars`` (plain params) and the source G of ``ctx.frozen['g']``."""
  if ctx.frozen is None or "g" not in ctx.frozen:
    raise ValueError("fewshot.cdc_weight > 0 needs the source G: pass frozen={'g': "
                     "{'params', 'buffers'}} (see steps.frozen_networks and transfer.read_frozen)")
  g = ctx.nets.generator
  # No device offset: every device computes the term on the same latents.
  z, noise_keys = cdc_inputs(jax.random.fold_in(ctx.key, CDC_PHASE), ctx.config.fewshot.cdc_batch, g.z_dim)
  term = cdc_weight(ctx.config) * cdc_loss(g, g_vars, ctx.frozen["g"], z, noise_keys)
  return {"cdc_loss": (term, term)}


# ---------------------------------------------------------------------------
# Anchor regions.


def anchors(state_key: Array, num: int, z_dim: int) -> Array:
  """The ``num`` anchor latents [num, z_dim]: a function of the run's key alone, so they are
  fixed for the run (and across resumes) without being stored."""
  key = jax.random.fold_in(state_key, _ANCHOR_KEY)
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (z_dim,)))(jnp.arange(num))


def near_anchors(state_key: Array, z_keys: Array, f: ml_collections.ConfigDict, z_dim: int) -> Array:
  """Latents near the anchors, one per key of ``z_keys`` (the examples' latent keys): a random
  anchor plus N(0, ``cdc_anchor_std``²) noise, as the official code's anchor sampling."""
  points = anchors(state_key, f.cdc_anchors, z_dim)

  def one(k):
    index = jax.random.randint(jax.random.fold_in(k, _ANCHOR_INDEX), (), 0, f.cdc_anchors)
    offset = jax.random.normal(jax.random.fold_in(k, _ANCHOR_OFFSET), (z_dim,))
    return points[index] + f.cdc_anchor_std * offset

  return jax.vmap(one)(z_keys)


def anchor_latents(ctx) -> Optional[Any]:
  """On anchor steps (``ctx.flags.anchor``), the latents of G main and D main: examples' latent
  keys -> latents near the anchors (drawn without style mixing, as the official code); else None."""
  if not ctx.flags.anchor:
    return None
  return lambda z_keys: near_anchors(ctx.state.key, z_keys, ctx.config.fewshot, ctx.nets.generator.z_dim)


def patch_step(ctx) -> bool:
  """Whether D judges patches on this step: every step but the anchor steps."""
  return not ctx.flags.anchor
