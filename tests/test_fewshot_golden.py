"""Golden tests of the few-shot terms of the train step: CDC's distance consistency (on a patch
step and on an anchor step) and EWC's penalty, against G main and D main assembled by hand.

Both optimizers are plain SGD with learning rate 1 here, so that a parameter's change over the
step is minus its gradient: the test compares G main's and D main's gradients themselves (the
Adam composition is test_step_golden's). The reference writes each loss from its definition:

* adversarial: mean softplus(-D(G(z))) over D's image logits (anchor steps) or patch logits;
* CDC (Ojha et al. 2021): for each synthesis block above 4x4, the cosine similarities of each
  image's features with those of the other images of a shared batch of latents, a softmax per
  image, and the KL divergence from the source G's distribution to the adapted G's, averaged over
  the N(N-1) entries and then over the blocks; the source side is a constant;
* EWC (Li et al. 2020): sum F * (theta - theta_source)^2 over G's parameters.

The random draws (per-example keys, anchors, CDC's shared latents) are the step's, taken through
its helpers, as in test_step_golden. Both terms are weighted to move G about as much as the
adversarial loss does, so that a dropped term (a stop_gradient on the adapted side), a flipped
sign or a wrong weight changes G's gradient by far more than rounding; the test checks that about
its own reference too.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from configs import tiny
from gantl_jax import config as config_lib
from gantl_jax.fewshot import cdc as fewshot
from gantl_jax.models import stylegan2
from gantl_jax.training import losses
from gantl_jax.training import state as state_lib
from gantl_jax.training import steps
from test_step_golden import leaf_errors

RES, BATCH = 16, 4  # 16 px: G has two synthesis blocks above 4x4 (b8, b16), CDC averages over both
# Each term's gradient about that of the adversarial loss (measured global norms, patch step: 0.048
# adversarial, 0.040 CDC, 0.050 EWC; the anchor step's adversarial 0.027).
CDC_WEIGHT, EWC_WEIGHT = 150.0, 1e-3


def make_config():
  c = tiny.get_config()
  c.model.update(resolution=RES, z_dim=16, w_dim=16, channel_base=64, channel_max=16, mapping_layers=2)
  # Style mixing always, so that the anchor step's unmixed latents differ from the free ones; no
  # lazy regulariser (the step's flags leave them off anyway).
  c.train.update(batch_size=BATCH, style_mixing_prob=1.0, pl_weight=0.0)
  c.transfer.update(source="unused")  # CDC needs one to resolve; the test passes `frozen` itself
  c.fewshot.update(cdc_weight=CDC_WEIGHT, cdc_batch=4, cdc_anchor_interval=2, cdc_anchors=3,
                   cdc_anchor_std=0.1, ewc_weight=EWC_WEIGHT)
  return config_lib.resolve(c)


def random_like(tree, rng, scale):
  return jax.tree.map(lambda x: (scale * rng.standard_normal(x.shape)).astype(np.float32), tree)


@pytest.fixture(scope="module")
def setup():
  """Config, SGD networks, a state whose G is the source moved by noise, reals and ``frozen``."""
  config = make_config()
  nets = state_lib.build_networks(config)
  nets = nets._replace(g_tx=optax.sgd(1.0), d_tx=optax.sgd(1.0))
  shapes = lambda init, module: jax.eval_shape(lambda: init(module, jax.random.key(0)))
  rng = np.random.default_rng(0)
  # Random weights instead of the initialisers (whose compile costs tens of seconds), scaled down
  # so that the tiny networks do not saturate.
  source = random_like(shapes(stylegan2.init_generator, nets.generator), rng, 0.5)
  d_vars = random_like(shapes(stylegan2.init_discriminator, nets.discriminator), rng, 0.5)
  g_vars = {**source, "params": jax.tree.map(lambda x: x + 0.3 * rng.standard_normal(x.shape).astype(np.float32),
                                             source["params"])}
  g_fisher = jax.tree.map(lambda x: np.abs(rng.standard_normal(x.shape)).astype(np.float32), source["params"])
  state = state_lib.state_from_variables(nets, {"g": g_vars, "g_ema": g_vars, "d": d_vars},
                                         np.array([0, 5], np.uint32))
  state = state.replace(step=jnp.int32(3), images_seen=jnp.int32(160))
  reals = jnp.asarray(rng.uniform(-1, 1, (BATCH, RES, RES, 3)), jnp.float32)
  frozen = {"g": source, "g_fisher": g_fisher}
  train_step = jax.jit(steps.make_train_step(config, nets), static_argnames=("flags",))
  return config, nets, state, reals, frozen, train_step


# --- the hand-assembled G main and D main --------------------------------------------------------

def block_features(g, variables, z, noise_keys):
  """{block: [N, ...]} outputs of G's synthesis blocks above 4x4 for latents ``z``."""
  _, collections = g.apply(variables, z, noise_mode="random", noise_keys=noise_keys,
                           mutable=[stylegan2.FEATURES])
  flat = traverse_util.flatten_dict(collections[stylegan2.FEATURES], sep="/")
  return {path: value[-1] for path, value in flat.items()
          if path.startswith("synthesis/b") and not path.startswith("synthesis/b4/")}


def similarity_log_softmax(features):
  """[N, ...] -> [N, N-1]: per image, log softmax over the other images of the cosine similarity."""
  n = features.shape[0]
  f = features.reshape(n, -1)
  cos = (f @ f.T) / (jnp.linalg.norm(f, axis=1)[:, None] * jnp.linalg.norm(f, axis=1)[None, :])
  # The off-diagonal entries of an N x N matrix, row by row.
  others = cos.reshape(-1)[1:].reshape(n - 1, n + 1)[:, :-1].reshape(n, n - 1)
  return others - jax.scipy.special.logsumexp(others, axis=1, keepdims=True)


def consistency_kl(source, adapted):
  """KL(source || adapted) of the similarity distributions: mean over entries, then over blocks."""
  assert sorted(source) == sorted(adapted) and len(source) == 2, sorted(source)
  kls = [jnp.mean(jnp.exp(lp) * (lp - similarity_log_softmax(adapted[k])))
         for k, lp in ((k, similarity_log_softmax(v)) for k, v in source.items())]
  return sum(kls) / len(kls)


def ewc(params, source_params, g_fisher):
  return sum(jnp.sum(f * (p - s) ** 2) for p, s, f in zip(
      jax.tree.leaves(params), jax.tree.leaves(source_params), jax.tree.leaves(g_fisher)))


def reference_step(config, nets, state, reals, frozen, anchor, cdc_weight, ewc_weight):
  """G main (adversarial + cdc_weight * CDC + ewc_weight * EWC) and D main of one step, each an
  SGD step of rate 1; the tracked w_avg."""
  g, d = nets.generator, nets.discriminator
  t = config.train
  key = jax.random.fold_in(state.key, state.step)
  n = reals.shape[0]
  D = lambda params, x: d.apply({"params": params}, x, patch=not anchor)

  def fakes(params, buffers, phase):
    phase_key = jax.random.fold_in(key, phase)
    keys = steps._example_keys(phase_key, n, None)
    variables = {"params": params, "buffers": buffers}
    latents = lambda stream: jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, stream), (g.z_dim,)))(keys)
    if anchor:  # near the anchors, unmixed
      z_keys = jax.vmap(lambda k: jax.random.fold_in(k, steps._Z))(keys)
      ws = g.apply(variables, fewshot.near_anchors(state.key, z_keys, config.fewshot, g.z_dim), method=g.map)
    else:
      ws = losses.mix_styles(g.apply(variables, latents(steps._Z), method=g.map),
                             g.apply(variables, latents(steps._Z_MIX), method=g.map),
                             jax.random.fold_in(phase_key, steps._MIX), t.style_mixing_prob)
    noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, steps._NOISE))(keys)
    return g.apply(variables, ws, "random", noise_keys, method=g.synthesize), ws

  g_params, buffers, d_params = state.g.params, state.g.buffers, state.d.params
  cdc_z, cdc_noise_keys = fewshot.cdc_inputs(jax.random.fold_in(key, steps._CDC),
                                             config.fewshot.cdc_batch, g.z_dim)
  source = block_features(g, frozen["g"], cdc_z, cdc_noise_keys)  # a constant

  def g_main(p):
    images, ws = fakes(p, buffers, steps._G_MAIN)
    adversarial = jnp.mean(jax.nn.softplus(-D(d_params, images)))
    cdc = consistency_kl(source, block_features(g, {"params": p, "buffers": buffers}, cdc_z, cdc_noise_keys))
    penalty = ewc(p, frozen["g"]["params"], frozen["g_fisher"])
    return adversarial + cdc_weight * cdc + ewc_weight * penalty, (adversarial, cdc, penalty, ws[:, 0])

  (_, (g_loss, cdc, penalty, w0)), grads = jax.value_and_grad(g_main, has_aux=True)(g_params)
  g_params = jax.tree.map(lambda p, dp: p - dp, g_params, grads)
  if not anchor:  # anchor latents are not drawn from the prior: w_avg stays
    w_avg = buffers["mapping"]["w_avg"]
    w_avg = jnp.mean(w0, 0) + t.w_avg_beta * (w_avg - jnp.mean(w0, 0))
    buffers = {**buffers, "mapping": {**buffers["mapping"], "w_avg": w_avg}}

  fake, _ = fakes(g_params, buffers, steps._D_MAIN)
  d_loss, grads = jax.value_and_grad(lambda p: jnp.mean(
      jax.nn.softplus(-D(p, reals)) + jax.nn.softplus(D(p, fake))))(d_params)
  d_params = jax.tree.map(lambda p, dp: p - dp, d_params, grads)
  return dict(g=g_params, d=d_params, w_avg=buffers["mapping"]["w_avg"], g_loss=g_loss,
              cdc_loss=cdc_weight * cdc, ewc_penalty=penalty, d_loss=d_loss)


@pytest.fixture(scope="module", params=["patch", "anchor"])
def stepped(setup, request):
  """The step on a patch step and on an anchor step, the reference at the config's weights and at
  wrong ones: {(cdc weight, ewc weight): reference}."""
  config, nets, state, reals, frozen, train_step = setup
  anchor = request.param == "anchor"
  new_state, metrics = train_step(state, reals, frozen, flags=steps.StepFlags(anchor=anchor))
  reference = jax.jit(lambda s, x, fr, wc, we: reference_step(config, nets, s, x, fr, anchor, wc, we))
  weights = [(CDC_WEIGHT, EWC_WEIGHT), (0.0, EWC_WEIGHT), (-CDC_WEIGHT, EWC_WEIGHT),
             (1.1 * CDC_WEIGHT, EWC_WEIGHT), (CDC_WEIGHT, 0.0), (CDC_WEIGHT, -EWC_WEIGHT),
             (CDC_WEIGHT, 1.1 * EWC_WEIGHT)]
  refs = {w: reference(state, reals, frozen, *w) for w in weights}
  return request.param, state, new_state, metrics, refs


def g_errors(state, new_state, ref):
  return leaf_errors(new_state.g.params, ref["g"], state.g.params)


def test_g_and_d_gradients_match_hand_assembled_losses(stepped):
  kind, state, new_state, _, refs = stepped
  for net, old, new in (("g", state.g.params, new_state.g.params), ("d", state.d.params, new_state.d.params)):
    errors = leaf_errors(new, refs[CDC_WEIGHT, EWC_WEIGHT][net], old)
    worst = max(errors, key=lambda k: errors[k][0] / errors[k][1])
    diff, tol, moved = errors[worst]
    print(f"{kind} {net}: worst leaf {worst}: |step - reference| {diff:.2e} = {diff / tol:.2f} of "
          f"its tolerance (gradient {moved:.2e})")
    assert all(e[0] <= e[1] for e in errors.values()), (kind, net, worst, errors[worst])


def test_a_dropped_flipped_or_reweighted_term_shows(stepped):
  """The reference with either term's weight at 0 (as a stop_gradient on the adapted side),
  negated or 10% off moves G's gradient by many tolerances: the comparison above would fail."""
  kind, state, new_state, _, refs = stepped
  for weights, ref in refs.items():
    if weights == (CDC_WEIGHT, EWC_WEIGHT):
      continue
    errors = g_errors(state, new_state, ref)
    worst = max(e[0] / e[1] for e in errors.values())
    print(f"{kind}: reference with (cdc, ewc) weights {weights}: worst G leaf {worst:.0f} tolerances off")
    assert worst > 30, (kind, weights, worst)


def test_losses_and_w_avg_match(stepped):
  kind, state, new_state, metrics, refs = stepped
  ref = refs[CDC_WEIGHT, EWC_WEIGHT]
  print(kind, {k: (float(metrics[k]), float(ref[k])) for k in ("g_loss", "cdc_loss", "ewc_penalty", "d_loss")})
  for name in ("g_loss", "ewc_penalty", "d_loss"):
    np.testing.assert_allclose(metrics[name], ref[name], rtol=1e-5, err_msg=name)
  # The KL is a small mean of differences of log-probabilities of order 1, so its rounding is
  # absolute: measured 5e-9 (unweighted) between the two programs.
  np.testing.assert_allclose(metrics["cdc_loss"], ref["cdc_loss"], rtol=0, atol=CDC_WEIGHT * 2e-8)
  assert float(ref["cdc_loss"]) > 1e-3  # G is away from the source: the term is not at its minimum
  np.testing.assert_allclose(new_state.g.buffers["mapping"]["w_avg"], ref["w_avg"], rtol=0, atol=1e-6)
  if kind == "anchor":
    np.testing.assert_array_equal(ref["w_avg"], state.g.buffers["mapping"]["w_avg"])
