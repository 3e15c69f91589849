"""StyleGAN2 losses as pure functions: non-saturating logistic, R1, path length, style mixing."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def g_logistic_ns(fake_logits: Array) -> Array:
  """Non-saturating generator loss per example: softplus(-D(G(z)))."""
  return jax.nn.softplus(-fake_logits)


def d_logistic(real_logits: Array, fake_logits: Array) -> tuple[Array, Array]:
  """Discriminator logistic loss per example, split into its real and fake parts."""
  return jax.nn.softplus(-real_logits), jax.nn.softplus(fake_logits)


def r1_penalty(d_fn: Callable[[Array], Array], real_images: Array) -> tuple[Array, Array]:
  """Per-example squared gradient norm of D's logit w.r.t. the real images, and the logits.

  ``d_fn`` maps a batch of images to one logit per image; logits of different images must not
  depend on each other through anything but batch statistics that D uses (minibatch stddev),
  which StyleGAN2 also differentiates through.
  """
  logits, vjp = jax.vjp(d_fn, real_images)
  (grads,) = vjp(jnp.ones_like(logits))
  return jnp.sum(jnp.square(grads), axis=(1, 2, 3)), logits


def path_length(synthesize: Callable[[Array], Array], ws: Array, pl_noise: Array) -> Array:
  """Per-example path length |J_w^T y| for image-space noise ``y`` (scaled by 1/sqrt(H*W)).

  ``ws`` is [N, num_ws, w_dim]; the Jacobian-vector product is taken through the synthesis
  network, summed over image pixels, and the norm is over w_dim averaged over the ws.
  """
  images, vjp = jax.vjp(synthesize, ws)
  (grads,) = vjp(pl_noise.astype(images.dtype))
  return jnp.sqrt(jnp.mean(jnp.sum(jnp.square(grads), axis=2), axis=1))


def path_length_penalty(pl_lengths: Array, pl_mean: Array, pl_decay: float,
                        mean_fn: Callable[[Array], Array] = jnp.mean) -> tuple[Array, Array]:
  """Per-example (|J^T y| - a)^2 with the running mean ``a`` updated first, as StyleGAN2.

  As in StyleGAN2 the penalty differentiates through the updated mean (its batch-mean part, with
  weight ``pl_decay``); only the value carried to the next step is detached. ``mean_fn`` averages
  over the global batch (a ``pmean`` under pmap). Returns (penalty, new a).
  """
  new_mean = pl_mean + pl_decay * (mean_fn(jnp.mean(pl_lengths)) - pl_mean)
  return jnp.square(pl_lengths - new_mean), new_mean


def mix_styles(ws: Array, ws_other: Array, key: Array, prob: float) -> Array:
  """Style mixing regularisation: with probability ``prob`` the layers from a random cutoff on
  take their w from another latent. One cutoff per batch, as in StyleGAN2."""
  if prob <= 0:
    return ws
  num_ws = ws.shape[1]
  k_cut, k_use = jax.random.split(key)
  cutoff = jax.random.randint(k_cut, (), 1, num_ws)
  cutoff = jnp.where(jax.random.uniform(k_use, ()) < prob, cutoff, num_ws)
  layer = jnp.arange(num_ws)[None, :, None]
  return jnp.where(layer < cutoff, ws, ws_other)
