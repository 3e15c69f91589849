"""G's Fisher (fisher.g_fisher) with minibatch-stddev groups of 4, against a per-sample reference.

fisher.py defines sample i's log-likelihood as log sigmoid(D(x)_i), where D judges x, the images
of i's group (the group_size consecutive sample indices that contain i), and only x_i depends on
G's parameters: the other members enter as constants. The Fisher is the mean over samples of the
squared gradient. The reference below builds each sample's group by hand, one sample at a time,
and differentiates only through that sample's image. 10 samples in batches of 8: the second
batch's first group (samples 8..11) is cut by num_samples, its members 10 and 11 still judged with
8 and 9 but not counted.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import tiny
from gantl_jax import config as config_lib
from gantl_jax.fewshot import ewc as fisher
from gantl_jax.models import stylegan2
from gantl_jax.training import state as state_lib

GROUP, SAMPLES, BATCH = 4, 10, 8


def flat(tree):
  return {k: np.asarray(v, np.float64) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


@pytest.fixture(scope="module")
def networks():
  c = tiny.get_config()
  c.model.update(resolution=8, z_dim=16, w_dim=16, channel_base=64, channel_max=16, mbstd_group_size=GROUP)
  nets = state_lib.build_networks(config_lib.resolve(c))
  assert fisher.sample_group(nets.discriminator) == GROUP
  rng = np.random.default_rng(3)
  # Random weights (scaled down, so that the tiny networks do not saturate) instead of compiling
  # the initialisers.
  random = lambda init, module: jax.tree.map(
      lambda x: (0.5 * rng.standard_normal(x.shape)).astype(np.float32),
      jax.eval_shape(lambda: init(module, jax.random.key(0))))
  return nets, random(stylegan2.init_generator, nets.generator), random(stylegan2.init_discriminator, nets.discriminator)


def per_sample_fisher(nets, g_vars, d_params, key, alone=False, through_group=False):
  """Mean over samples of the squared gradient of log sigmoid(D(group)_i) with respect to G's
  params. ``alone``: D judges sample i by itself (a group of one); ``through_group``: the
  gradient also flows through the other members' images. Both are wrong, for the checks that
  the comparison would see them."""
  g, d = nets.generator, nets.discriminator
  draw = lambda i: (jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, i), 0), (g.z_dim,)),
                    jax.random.fold_in(jax.random.fold_in(key, i), 1))

  def image(params, i):
    z, noise_key = draw(i)
    return g.apply({**g_vars, "params": params}, z[None], noise_mode="random", noise_keys=noise_key[None])[0]

  def squared_grad(i):
    members = i - i % GROUP + jnp.arange(GROUP)
    j = i % GROUP

    def log_likelihood(params):
      if alone:
        return jax.nn.log_sigmoid(d.apply({"params": d_params}, image(params, i)[None])[0])
      x = jax.vmap(lambda m: image(params, m))(members)
      if not through_group:
        x = jnp.where((jnp.arange(GROUP) == j)[:, None, None, None], x, jax.lax.stop_gradient(x))
      return jax.nn.log_sigmoid(d.apply({"params": d_params}, x)[j])

    return jax.tree.map(jnp.square, jax.grad(log_likelihood)(g_vars["params"]))

  grads = flat(jax.jit(jax.vmap(squared_grad))(jnp.arange(SAMPLES)))
  return {p: np.mean(v, axis=0) for p, v in grads.items()}


@pytest.fixture(scope="module")
def fishers(networks):
  nets, g_vars, d_vars = networks
  key = jax.random.key(9)
  got = flat(fisher.g_fisher(nets.generator, nets.discriminator, g_vars, d_vars["params"], key,
                             num_samples=SAMPLES, batch=BATCH))
  return got, {kind: per_sample_fisher(nets, g_vars, d_vars["params"], key, **kw)
               for kind, kw in (("reference", {}), ("alone", dict(alone=True)),
                                ("through_group", dict(through_group=True)))}


def tolerances_off(got, want):
  """The worst element's |got - want| in units of the tolerance (rtol 1e-5, atol 1e-6 of the
  leaf's largest value): at most 1 passes."""
  return max(np.max(np.abs(got[p] - want[p]) / (1e-5 * np.abs(want[p]) + 1e-6 * np.max(want[p])))
             for p in want)


def test_fisher_with_mbstd_groups_is_the_mean_squared_per_sample_gradient(fishers):
  got, refs = fishers
  assert set(got) == set(refs["reference"])
  off = {kind: tolerances_off(got, want) for kind, want in refs.items()}
  print("Fisher vs the references, worst element in tolerances:", off)
  assert off["reference"] <= 1
  # The group matters: judging each sample alone, or differentiating through the whole group's
  # images, gives another Fisher, far outside the tolerance.
  assert off["alone"] > 10 and off["through_group"] > 10
