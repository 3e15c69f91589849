"""Fisher information of G's parameters on the source model, and EWC's penalty (Li et al. 2020,
"Few-shot image generation with elastic weight consolidation").

EWC keeps the weights that matter for the source where they were:

    penalty = sum_theta F(theta) * (theta - theta_source)^2,   added to G main's loss times fewshot.ewc_weight

F is the diagonal empirical Fisher information, E_z[(d log L(z) / d theta)^2] at theta_source. A GAN
has no likelihood; as the paper does, the source discriminator stands in for it: a sample's
log-likelihood is log D_s(G_s(z)) = log sigmoid(logit), the log-probability that the source D calls
the source G's image real (its gradient is that of G's non-saturating loss, with the opposite
sign). Decisions, each for a reason:

- Per sample, not per batch: the squared gradient of each sample's log-likelihood, averaged over
  ``fewshot.fisher_samples`` samples (the square of a batch-mean gradient would shrink F by up to
  the batch size, and make it depend on it).
- D's minibatch-stddev layer needs a group: each sample is judged with the other members of its
  group (``model.mbstd_group_size`` consecutive samples) as constants, so its gradient flows
  through its own image only.
- Latents z ~ N(0, I) with random noise inputs, no truncation and no style mixing: the source G's
  own distribution. Sample i is a function of (key, i) only.
- All of G's parameters (mapping, affines, kernels, biases, toRGB, the constant) get a Fisher, so
  the penalty covers whatever the freeze settings leave trainable. With kernel-modulation adapters
  the penalty is taken on the merged kernels, i.e. on the weights the model uses.

The loop computes F once, when the run starts from its transfer source, and stores it in the run
(``DIR/g_fisher.npz``, written atomically before the first checkpoint), so a resume reads it back
instead of recomputing. A stored file that cannot be read (truncated, overwritten) is recomputed,
with a warning: the computation is deterministic, so the run goes on bit for bit as it would have. It reaches the step in ``frozen['g_fisher']``, next to the source G in
``frozen['g']``.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax import lax

from gantl_jax import cache
from gantl_jax.errors import ConfigError

FILE = "g_fisher.npz"  # in the run's workdir


def ewc_weight(config) -> float:
  """``config.fewshot.ewc_weight``; 0 when EWC is off."""
  return float(config.fewshot.ewc_weight)


def needed(config) -> bool:
  """Whether a run needs G's Fisher: EWC is on, or adapters choose their layers by it."""
  fewshot = config.fewshot
  return ewc_weight(config) > 0 or (fewshot.adapter != "none" and fewshot.adapter_fisher_quantile > 0)


def ewc_penalty(params: Any, source_params: Any, g_fisher: Any) -> jax.Array:
  """sum F * (theta - theta_source)^2 over every leaf (float32 scalar). The three trees have G's
  plain params layout (merge adapters first)."""
  terms = jax.tree.map(lambda p, s, f: jnp.sum(f * jnp.square(p - s)), params, source_params, g_fisher)
  return sum(jax.tree.leaves(terms), jnp.zeros((), jnp.float32))


def ewc_enabled(config) -> bool:
  """Whether G main adds EWC's penalty."""
  return ewc_weight(config) > 0


def frozen_networks(config) -> dict[str, str]:
  """The source network EWC reads from the step's ``frozen`` (its Fisher, ``frozen['g_fisher']``,
  is not a source item: the loop adds it)."""
  del config
  return {"g": "g_ema"}


def ewc_terms(ctx, g_vars: Any) -> dict[str, tuple[jax.Array, jax.Array]]:
  """G main's EWC term for the step of ``ctx`` (``methods.StepContext``) on G's plain params in
  ``g_vars``: the weighted penalty, logged unweighted as the other penalties."""
  frozen = ctx.frozen
  if frozen is None or "g" not in frozen or "g_fisher" not in frozen:
    raise ValueError("fewshot.ewc_weight > 0 needs the source G and its Fisher: pass frozen={'g': "
                     "{'params', 'buffers'}, 'g_fisher': params-shaped tree} (see fisher.g_fisher)")
  penalty = ewc_penalty(g_vars["params"], frozen["g"]["params"], frozen["g_fisher"])
  return {"ewc_penalty": (ewc_weight(ctx.config) * penalty, penalty)}


def sample_group(discriminator) -> int:
  """Samples D judges together (its minibatch-stddev group; 1 without that layer): a Fisher batch
  is made of whole groups."""
  return discriminator.mbstd_group_size if discriminator.mbstd_num_channels > 0 else 1


def g_fisher(generator, discriminator, g_vars: Any, d_params: Any, key: jax.Array, *,
             num_samples: int, batch: int, sharding: Optional[jax.sharding.NamedSharding] = None) -> Any:
  """The diagonal empirical Fisher of G's params at ``g_vars`` ({'params', 'buffers'}), with the
  log-likelihood log sigmoid(D(G(z))) through the discriminator ``d_params``: a tree like
  ``g_vars['params']``, float32, averaged over ``num_samples`` samples.

  ``batch`` samples are processed at once (their per-sample gradients are in memory together); it
  must be a multiple of D's minibatch-stddev group. With ``sharding`` (e.g.
  ``parallel.batch_sharding(mesh)``) each batch's groups are spread over its devices; the number
  of groups per batch must then divide evenly.
  """
  group = sample_group(discriminator)
  if batch % group:
    raise ValueError(f"the Fisher batch {batch} must be a multiple of the minibatch-stddev group {group}")
  z_dim = generator.z_dim

  def log_likelihood(params, buffers, d_params, z, noise_keys, images, j):
    """log sigmoid(D(x_j)), x_j regenerated from ``params``; the group's other images constant."""
    x = generator.apply({"params": params, "buffers": buffers}, z[j][None], noise_mode="random",
                        noise_keys=noise_keys[j][None])
    images = lax.dynamic_update_index_in_dim(images, x[0], j, 0)
    logit = discriminator.apply({"params": d_params}, images)[j]
    return -jax.nn.softplus(-logit)

  def group_sum(g_vars, d_params, key, ids):
    """Sum over one group's samples (global indices ``ids``) of their squared gradients."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)
    z = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), (z_dim,)))(keys)
    noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    images = lax.stop_gradient(generator.apply(g_vars, z, noise_mode="random", noise_keys=noise_keys))
    grad = jax.grad(log_likelihood)

    def squared(j):
      g = grad(g_vars["params"], g_vars["buffers"], d_params, z, noise_keys, images, j)
      valid = ids[j] < num_samples  # the last batch may run past num_samples
      return jax.tree.map(lambda x: jnp.where(valid, jnp.square(x), 0.0), g)

    return jax.tree.map(lambda x: jnp.sum(x, axis=0), jax.vmap(squared)(jnp.arange(group)))

  def batch_sum(g_vars, d_params, key, ids):
    return jax.tree.map(lambda x: jnp.sum(x, axis=0),
                        jax.vmap(lambda i: group_sum(g_vars, d_params, key, i))(ids))

  replicated = None
  if sharding is not None:
    replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
  step = jax.jit(batch_sum, out_shardings=replicated)
  total = None
  for start in range(0, num_samples, batch):
    ids = np.arange(start, start + batch, dtype=np.int32).reshape(batch // group, group)
    if sharding is not None:
      ids = jax.make_array_from_callback(ids.shape, sharding, lambda index, v=ids: v[index])
    part = step(g_vars, d_params, key, ids)
    total = part if total is None else jax.tree.map(jnp.add, total, part)
  return jax.tree.map(lambda x: x / num_samples, total)


def save(path: str, g_fisher: Any) -> None:
  """Writes ``g_fisher`` (host arrays) to ``path`` (.npz, keys are parameter paths), atomically:
  a reader finds the whole file or none."""
  flat = {k: np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(g_fisher, sep="/").items()}
  tmp = f"{path}.tmp-{os.getpid()}.npz"
  np.savez(tmp, **flat)
  os.replace(tmp, path)


def load(path: str, template: Any) -> Optional[Any]:
  """The Fisher stored at ``path``, as numpy arrays in the structure of ``template`` (G's plain
  params, arrays or shapes); None, with a warning naming the file, when there is none or it cannot
  be read (the caller recomputes it; never unpickled). Raises ConfigError naming the file if it
  reads but does not fit."""
  stored = cache.read(path, lambda arrays: arrays, "G's Fisher information")
  if stored is None:
    return None
  want = traverse_util.flatten_dict(template, sep="/")
  wrong = sorted(p for p, x in want.items() if p not in stored or stored[p].shape != tuple(x.shape))
  if wrong:
    raise ConfigError(f"{path} does not fit this run's generator ({len(wrong)} parameters missing or "
                      f"of another shape, e.g. {wrong[0]}); delete it to recompute the Fisher from "
                      f"transfer.source")
  return traverse_util.unflatten_dict({p: stored[p] for p in want}, sep="/")


def check_config(config) -> None:
  """Raises ConfigError naming the EWC key of ``config.fewshot`` (or the Fisher's) that cannot work."""
  f = config.fewshot
  if f.ewc_weight < 0:
    raise ConfigError(f"fewshot.ewc_weight must be >= 0 (0 turns EWC off), got {f.ewc_weight}")
  for key in ("fisher_samples", "fisher_batch"):
    if f[key] < 1:
      raise ConfigError(f"fewshot.{key} must be >= 1, got {f[key]}")
  if f.ewc_weight > 0 and config.transfer.source == "":
    raise ConfigError("fewshot.ewc_weight adapts a pretrained generator, but transfer.source is '' "
                      "(from scratch); set --config.transfer.source to a source checkpoint")
  # EWC pulls G towards the source G-EMA, so G has to start there.
  if f.ewc_weight > 0 and config.transfer.g_from != "g_ema":
    raise ConfigError(f"fewshot.ewc_weight > 0 anchors G at the source's G-EMA, but transfer.g_from "
                      f"is {config.transfer.g_from!r}; set --config.transfer.g_from=g_ema")
