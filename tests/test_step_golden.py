"""A golden test of one train step: the real jitted step against the same step assembled by hand.

The reference below rebuilds the four phases of ``steps.make_train_step`` with plain ``jax.grad``
and a hand-written Adam (no optax), from the same state and real batch, and every leaf of G, D,
G-EMA, w_avg and pl_mean must agree. What it pins down is the composition: each phase's loss and
weight (pl_weight * pl_interval, r1_gamma / 2 * r1_interval), which parameters each phase
differentiates and reads (G main against the old D, D main on fakes of the updated G, R1 on the
D after its main step), the lazy-regularisation correction of Adam (lr * r and betas ** r with
r = interval / (interval + 1); G with pl_interval, D with r1_interval), the path-length mean
update and the G-EMA. The random draws are not re-derived independently: the reference uses the
step's key derivation (``fold_in(fold_in(state.key, step), phase)``, then per-example keys and
sub-streams) through the step module's own helpers and stream ids.

The config is chosen so that every one of those choices changes the result: G and D get
different learning rates, betas and intervals (a swap shows), beta1 > 0 (at Adam's second
update, the regularisation phase, the betas and their correction matter), the regularisers are
strong enough to move the second update, style mixing always happens, and the state starts with
step > 0, pl_mean > 0 and enough images seen that the G-EMA beta is far from 0 and 1.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from gantl_jax import config as config_lib
from gantl_jax.training import losses
from gantl_jax.training import state as state_lib
from gantl_jax.training import steps

# Both sides compute the same float32 function in two XLA programs (fused and ordered
# differently), so they differ by rounding only: a few ulps of a leaf's largest value (the mapping
# network stores its weights at 1 / lr_mul = 100 times the scale of the others, where an ulp is
# 3e-5), plus a small fraction of the step's update for the leaves near 0 (biases). Measured: at
# most 1 ulp (0.25 of the tolerance below) on every leaf. A composition error changes updates by
# ~10% .. 100%.
ULPS, UPDATE_RTOL = 4, 1e-5
SCALAR_RTOL = 1e-5


def golden_config():
  c = tiny.get_config()
  c.model.update(resolution=8, z_dim=16, w_dim=16, channel_base=64, channel_max=16)
  # style_mixing_prob = 1: every phase mixes, so the reference must reproduce the mixing too.
  c.train.update(batch_size=4, style_mixing_prob=1.0, r1_gamma=2.0, r1_interval=16, pl_weight=2.0,
                 pl_interval=4, pl_batch_shrink=2, pl_decay=0.05, ema_kimg=1.0, ema_rampup=0.05)
  c.optim.g.update(lr=0.002, beta1=0.5, beta2=0.99, eps=1e-8)
  c.optim.d.update(lr=0.003, beta1=0.3, beta2=0.95, eps=1e-8)
  return config_lib.resolve(c)


def start_state(nets):
  """A fresh state moved to step 3 with 160 images seen (G-EMA beta 0.5 ** (4 / 8)) and a
  non-zero running path length: the key derivation, the EMA and the pl_mean update all show."""
  s = state_lib.init_state(nets, 7)
  return s.replace(step=jnp.int32(3), images_seen=jnp.int32(160),
                   extras={**s.extras, "pl_mean": jnp.float32(0.2)})


def real_batch(n, res):
  return jax.random.uniform(jax.random.key(11), (n, res, res, 3), jnp.float32, -1.0, 1.0)


# --- the hand-assembled step -------------------------------------------------------------------

def adam_init(params):
  zeros = jax.tree.map(jnp.zeros_like, params)
  return {"m": zeros, "v": zeros, "t": 0}


def adam_apply(params, grads, moments, opt, interval):
  """One Adam step with StyleGAN2's lazy-regularisation correction, written out."""
  r = interval / (interval + 1)
  lr, b1, b2 = opt.lr * r, opt.beta1 ** r, opt.beta2 ** r
  t = moments["t"] + 1
  m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, moments["m"], grads)
  v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, moments["v"], grads)
  new = jax.tree.map(
      lambda p, m, v: p - lr * (m / (1 - b1 ** t)) / (jnp.sqrt(v / (1 - b2 ** t)) + opt.eps),
      params, m, v)
  return new, {"m": m, "v": v, "t": t}


def reference_step(config, nets, state, reals):
  t = config.train
  g, d = nets.generator, nets.discriminator
  step_key = jax.random.fold_in(state.key, state.step)
  D = lambda params, x: d.apply({"params": params}, x)

  def fakes(params, buffers, phase, n):
    """(synthesis of ws, mixed ws, example keys) of ``phase``, drawn as the step draws them."""
    phase_key = jax.random.fold_in(step_key, phase)
    keys = steps._example_keys(phase_key, n, None)
    variables = {"params": params, "buffers": buffers}
    to_ws = lambda stream: g.apply(
        variables, steps._normal_per_example(keys, stream, (g.z_dim,)), method=g.map)
    ws = losses.mix_styles(to_ws(steps._Z), to_ws(steps._Z_MIX),
                           jax.random.fold_in(phase_key, steps._MIX), t.style_mixing_prob)
    noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, steps._NOISE))(keys)
    return (lambda w: g.apply(variables, w, "random", noise_keys, method=g.synthesize)), ws, keys

  n = reals.shape[0]
  g_params, buffers, d_params = state.g.params, state.g.buffers, state.d.params
  g_adam, d_adam = adam_init(g_params), adam_init(d_params)

  # Phase 1: mean softplus(-D(G(z))) against the D of the step's start.
  def g_main(p):
    synth, ws, _ = fakes(p, buffers, steps._G_MAIN, n)
    return jnp.mean(jax.nn.softplus(-D(d_params, synth(ws)))), ws[:, 0]

  (g_loss, w0), grads = jax.value_and_grad(g_main, has_aux=True)(g_params)
  g_params, g_adam = adam_apply(g_params, grads, g_adam, config.optim.g, t.pl_interval)
  w_avg = buffers["mapping"]["w_avg"]
  w_avg = jnp.mean(w0, 0) + t.w_avg_beta * (w_avg - jnp.mean(w0, 0))
  buffers = {**buffers, "mapping": {**buffers["mapping"], "w_avg": w_avg}}

  # Phase 2: path length on half the batch, at the G after phase 1.
  def g_pl(p):
    synth, ws, keys = fakes(p, buffers, steps._G_REG, n // t.pl_batch_shrink)
    res = g.resolution
    y = jax.vmap(lambda k: jax.random.normal(
        jax.random.fold_in(k, steps._PL_NOISE), (res, res, g.img_channels)))(keys) / res
    _, vjp = jax.vjp(synth, ws)
    (jt_y,) = vjp(y)
    lengths = jnp.sqrt(jnp.mean(jnp.sum(jt_y ** 2, axis=2), axis=1))
    new_mean = state.extras["pl_mean"] * (1 - t.pl_decay) + t.pl_decay * jnp.mean(lengths)
    penalty = jnp.mean((lengths - new_mean) ** 2)
    return penalty * t.pl_weight * t.pl_interval, (new_mean, penalty)

  (_, (pl_mean, pl_penalty)), grads = jax.value_and_grad(g_pl, has_aux=True)(g_params)
  g_params, g_adam = adam_apply(g_params, grads, g_adam, config.optim.g, t.pl_interval)

  # Phase 3: logistic loss of D on reals and on fakes of the G after phases 1 and 2.
  synth, ws, _ = fakes(g_params, buffers, steps._D_MAIN, n)
  fake = synth(ws)

  def d_main(p):
    return jnp.mean(jax.nn.softplus(-D(p, reals)) + jax.nn.softplus(D(p, fake)))

  d_loss, grads = jax.value_and_grad(d_main)(d_params)
  d_params, d_adam = adam_apply(d_params, grads, d_adam, config.optim.d, t.r1_interval)

  # Phase 4: R1 at the D after phase 3.
  def d_r1(p):
    grad_x = jax.grad(lambda x: jnp.sum(D(p, x)))(reals)
    penalty = jnp.mean(jnp.sum(grad_x ** 2, axis=(1, 2, 3)))
    return penalty * (t.r1_gamma / 2) * t.r1_interval, penalty

  (_, r1_penalty), grads = jax.value_and_grad(d_r1, has_aux=True)(d_params)
  d_params, d_adam = adam_apply(d_params, grads, d_adam, config.optim.d, t.r1_interval)

  # G-EMA: half-life ema_kimg, ramped up to images_seen * ema_rampup early on.
  beta = 0.5 ** (n / jnp.minimum(t.ema_kimg * 1000, state.images_seen * t.ema_rampup))
  g_ema = jax.tree.map(lambda e, p: beta * e + (1 - beta) * p, state.g_ema.params, g_params)
  return dict(g=g_params, d=d_params, g_ema=g_ema, w_avg=w_avg, pl_mean=pl_mean,
              g_loss=g_loss, d_loss=d_loss, pl_penalty=pl_penalty, r1_penalty=r1_penalty,
              beta=beta)


# --- fixtures and tests --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def golden():
  config = golden_config()
  nets = state_lib.build_networks(config)
  state = jax.jit(lambda: start_state(nets))()
  reals = real_batch(config.train.batch_size, config.model.resolution)
  train_step = jax.jit(steps.make_train_step(config, nets), static_argnames=("flags",))
  new_state, metrics = train_step(state, reals, flags=steps.StepFlags(g_reg=True, d_reg=True))
  ref = jax.jit(lambda s, x: reference_step(config, nets, s, x))(state, reals)
  return config, nets, state, reals, train_step, new_state, metrics, ref


def leaf_errors(new, ref, old):
  """{path: (max |new - ref|, its tolerance, max |ref - old|)} per leaf."""
  out = {}
  for (path, x), y, y0 in zip(jax.tree_util.tree_flatten_with_path(new)[0], jax.tree.leaves(ref),
                              jax.tree.leaves(old)):
    x, y, y0 = (np.asarray(v, np.float64) for v in (x, y, y0))
    assert x.shape == y.shape == y0.shape
    moved = float(np.max(np.abs(y - y0)))
    tol = ULPS * float(np.spacing(np.float32(np.max(np.abs(y))))) + UPDATE_RTOL * moved
    out[jax.tree_util.keystr(path)] = (float(np.max(np.abs(x - y))), tol, moved)
  return out


@pytest.mark.parametrize("net", ["g", "d", "g_ema"])
def test_parameters_match_hand_assembled_step(golden, net):
  _, _, state, *_, new_state, _, ref = golden
  errors = leaf_errors(state_lib.network(new_state, net).params, ref[net],
                       state_lib.network(state, net).params)
  worst = max(errors, key=lambda k: errors[k][0] / errors[k][1])
  diff, tol, moved = errors[worst]
  print(f"{net}: max |step - reference| {max(e[0] for e in errors.values()):.2e}; worst leaf "
        f"{worst}: {diff:.2e} = {diff / tol:.2f} of its tolerance (update {moved:.2e})")
  assert all(e[0] <= e[1] for e in errors.values()), (net, worst, errors[worst])
  # Not vacuous: every leaf moved by more than its tolerance, so a phase whose update went
  # missing, or a leaf that no phase reaches, shows (G-EMA's mapping weights move least: ~30
  # ulps of their scale, 7 tolerances).
  least = min(errors, key=lambda k: errors[k][2] / errors[k][1])
  print(f"{net}: least-moved leaf {least}: {errors[least][2] / errors[least][1]:.1f} tolerances")
  assert all(e[2] > 3 * e[1] for e in errors.values()), (net, least, errors[least])


def test_statistics_and_losses_match(golden):
  config, _, state, _, _, new_state, metrics, ref = golden
  np.testing.assert_allclose(new_state.g.buffers["mapping"]["w_avg"], ref["w_avg"], rtol=0, atol=1e-6)
  np.testing.assert_array_equal(new_state.g_ema.buffers["mapping"]["w_avg"],
                                new_state.g.buffers["mapping"]["w_avg"])
  print("pl_mean: step {:.8g} reference {:.8g}".format(float(new_state.extras["pl_mean"]),
                                                        float(ref["pl_mean"])))
  np.testing.assert_allclose(new_state.extras["pl_mean"], ref["pl_mean"], rtol=SCALAR_RTOL)
  np.testing.assert_allclose(metrics["pl_mean"], ref["pl_mean"], rtol=SCALAR_RTOL)
  for name in ("g_loss", "d_loss", "pl_penalty", "r1_penalty"):
    np.testing.assert_allclose(metrics[name], ref[name], rtol=SCALAR_RTOL, err_msg=name)
  # The EMA beta is far from 0 and 1 here, so G-EMA tests the weighting, not a copy.
  beta = float(metrics["ema_beta"])
  np.testing.assert_allclose(beta, 0.5 ** (4 / (160 * 0.05)), rtol=1e-6)
  np.testing.assert_allclose(beta, float(ref["beta"]), rtol=1e-6)
  assert int(new_state.step) == 4 and int(new_state.images_seen) == 164


def test_step_without_regularisers_keeps_pl_mean(golden):
  _, _, state, reals, train_step, *_ = golden
  new_state, metrics = train_step(state, reals, flags=steps.StepFlags(g_reg=False, d_reg=False))
  np.testing.assert_array_equal(new_state.extras["pl_mean"], state.extras["pl_mean"])
  np.testing.assert_array_equal(metrics["pl_mean"], state.extras["pl_mean"])
  assert math.isnan(float(metrics["pl_penalty"])) and math.isnan(float(metrics["r1_penalty"]))
  assert np.isfinite(float(metrics["g_loss"])) and np.isfinite(float(metrics["d_loss"]))
