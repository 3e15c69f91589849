"""Learning-rate multipliers and the lazy-regularisation correction of ``optim.make_optimizer``,
against Adam written out by hand in float64. (The freeze presets' label sets: test_freeze.py.)"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from gantl_jax.training import optim
from test_freeze import opt_state_paths

# beta1 > 0 (StyleGAN2 uses 0) so that a wrong beta1 correction changes the updates too.
OPT = ml_collections.ConfigDict(dict(lr=0.01, beta1=0.5, beta2=0.9, eps=1e-8))
PATHS = ("mapping/fc0/weight", "mapping/fc1/weight", "synthesis/b4/conv1/weight", "synthesis/b4/conv1/bias")
STEPS = 3


def tree(values):
  """A parameter tree with PATHS as its leaves, from one array per path."""
  out = {}
  for path, v in zip(PATHS, values):
    *parents, leaf = path.split("/")
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = jnp.asarray(v, jnp.float32)
  return out


def flat(t):
  return {jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(t)}


# Every leaf gets the same gradients, so leaves differ only by their label. Signs change between
# steps and magnitudes span 1e-8 .. 3 (at 1e-8, eps halves the first step).
GRADS = [np.array([3.0, -0.5, 1e-3, -1e-8, 0.0]), np.array([-1.0, -0.25, 2e-3, 5e-4, 1.0]),
         np.array([0.5, 2.0, -1e-3, 0.0, -3.0])]
PARAMS = tree([np.linspace(-1, 1, 5)] * len(PATHS))


def hand_adam(grads, lr, b1, b2, eps):
  """Adam's parameter updates (Kingma & Ba, bias-corrected moments), one per gradient."""
  m = v = 0.0
  out = []
  for t, g in enumerate(grads, 1):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    out.append(-lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps))
  return out


def run(tx, grads=GRADS):
  """The updates of ``tx`` for each gradient (the same on every leaf), and the final state."""
  state, params, updates = tx.init(PARAMS), PARAMS, []
  for g in grads:
    u, state = tx.update(tree([g] * len(PATHS)), state, params)
    params = optax.apply_updates(params, u)
    updates.append(flat(u))
  return updates, state, flat(params)


def test_first_adam_step_is_lr_times_sign():
  """Adam's first bias-corrected step is -lr * g / (|g| + eps): -lr * sign(g) unless |g| ~ eps."""
  updates, _, _ = run(optim.make_optimizer(PARAMS, OPT))
  g = GRADS[0]
  expected = -OPT.lr * g / (np.abs(g) + OPT.eps)
  np.testing.assert_allclose(expected, [-0.01, 0.01, -0.01, 0.005, 0.0], rtol=1e-4, atol=0)
  for path in PATHS:
    np.testing.assert_allclose(updates[0][path], expected, rtol=1e-6, atol=0, err_msg=path)


def test_multiplier_scales_the_update_exactly():
  """A matched leaf's update is mult x the unmatched leaf's at every step, and both are Adam by
  hand (at lr * mult). Within float32 rounding, not bit-equal even for a power of two: optax's
  Adam rounds a one-leaf group differently from a group of several (1.9e-7 relative measured)."""
  updates, _, _ = run(optim.make_optimizer(PARAMS, OPT, lr_mults="^mapping/fc0/=0.25,^mapping/fc1/=0.01"))
  hand = hand_adam(GRADS, OPT.lr, OPT.beta1, OPT.beta2, OPT.eps)
  for step, (u, h) in enumerate(zip(updates, hand)):
    base = u["synthesis/b4/conv1/weight"]
    np.testing.assert_allclose(base, h, rtol=1e-6, atol=1e-12, err_msg=f"step {step}")
    np.testing.assert_array_equal(u["synthesis/b4/conv1/bias"], base, err_msg=f"step {step}")
    for path, mult in (("mapping/fc0/weight", 0.25), ("mapping/fc1/weight", 0.01)):
      np.testing.assert_allclose(u[path], mult * base, rtol=1e-6, atol=1e-14, err_msg=f"{path} step {step}")
      np.testing.assert_allclose(u[path], mult * h, rtol=1e-6, atol=1e-14, err_msg=f"{path} step {step}")


@pytest.mark.parametrize("entries, expected", [
    # mapping/fc0/weight matches all three entries, mapping/fc1/weight the last two.
    (("^mapping/fc0/=0.5", "^mapping/=0.25", "weight$=4"), (0.5, 0.25, 4, 1)),
    (("^mapping/=0.25", "^mapping/fc0/=0.5", "weight$=4"), (0.25, 0.25, 4, 1)),
    (("weight$=4", "^mapping/fc0/=0.5", "^mapping/=0.25"), (4, 4, 4, 1)),
])
def test_first_matching_entry_wins(entries, expected):
  """The entries are tried in order and the first re.search match decides, not the most specific."""
  updates, _, _ = run(optim.make_optimizer(PARAMS, OPT, lr_mults=entries), GRADS[:1])
  base = -OPT.lr * GRADS[0] / (np.abs(GRADS[0]) + OPT.eps)
  for path, mult in zip(PATHS, expected):
    np.testing.assert_allclose(updates[0][path], mult * base, rtol=1e-6, atol=0, err_msg=path)


def test_multiplier_zero_freezes():
  """mult 0 is a freeze: bit-identical parameters and no Adam moments, like a freeze regex; a
  freeze regex wins over a multiplier that also matches."""
  for kw in (dict(lr_mults="^synthesis/=0"), dict(freeze="^synthesis/", lr_mults="^synthesis/=2")):
    updates, state, params = run(optim.make_optimizer(PARAMS, OPT, **kw))
    before = flat(PARAMS)
    for path in PATHS:
      frozen = path.startswith("synthesis/")
      assert np.array_equal(params[path], before[path]) == frozen, (kw, path)
      if frozen:
        assert all(not u[path].any() for u in updates), (kw, path)
    assert opt_state_paths(state) == {"mapping/fc0/weight", "mapping/fc1/weight"}, kw
    assert optim.frozen_paths(PARAMS, **kw) == ["synthesis/b4/conv1/bias", "synthesis/b4/conv1/weight"]


@pytest.mark.parametrize("interval", [4, 16])
def test_lazy_regularisation_correction(interval):
  """With reg_interval, Adam runs at lr * r and betas ** r, r = interval / (interval + 1), on
  multiplied groups too; without it, at the configured values."""
  r = interval / (interval + 1)
  updates, _, _ = run(optim.make_optimizer(PARAMS, OPT, lr_mults="^mapping/=0.25", reg_interval=interval))
  hand = hand_adam(GRADS, OPT.lr * r, OPT.beta1 ** r, OPT.beta2 ** r, OPT.eps)
  plain = hand_adam(GRADS, OPT.lr, OPT.beta1, OPT.beta2, OPT.eps)
  for step, (u, h, p) in enumerate(zip(updates, hand, plain)):
    np.testing.assert_allclose(u["synthesis/b4/conv1/weight"], h, rtol=1e-6, atol=1e-12, err_msg=f"step {step}")
    np.testing.assert_allclose(u["mapping/fc0/weight"], 0.25 * h, rtol=1e-6, atol=1e-12, err_msg=f"step {step}")
    # The correction is far larger than the tolerance: a missing one cannot pass by rounding.
    assert np.max(np.abs(h - p)) > 1e-4 * OPT.lr, step
  # Only the lr enters the first step; the betas from the second on: check both were corrected.
  unscaled_betas = hand_adam(GRADS, OPT.lr * r, OPT.beta1, OPT.beta2, OPT.eps)
  assert np.max(np.abs(updates[1]["synthesis/b4/conv1/weight"] - unscaled_betas[1])) > 1e-4 * OPT.lr
  for reg_interval in (None, 0):
    updates, _, _ = run(optim.make_optimizer(PARAMS, OPT, reg_interval=reg_interval))
    for u, p in zip(updates, plain):
      np.testing.assert_allclose(u["synthesis/b4/conv1/weight"], p, rtol=1e-6, atol=1e-12)


def test_lr_mult_entries_parse_or_fail():
  assert optim.parse_lr_mults("^a/=0.5, b=c=2") == (("^a/", 0.5), ("b=c", 2.0))
  assert optim.parse_lr_mults(("^a/=1e-2",)) == (("^a/", 0.01),)
  with pytest.raises(ValueError, match="must look like 'regex=multiplier'"):
    optim.parse_lr_mults("^a/")
  with pytest.raises(ValueError, match="'x' is not a number"):
    optim.parse_lr_mults("^a/=x")
  with pytest.raises(ValueError, match="invalid regular expression"):
    optim.make_optimizer(PARAMS, OPT, lr_mults="(=2")


def test_multiplier_keeps_full_precision():
  # Group names once held the multiplier as f'{mult:g}' (6 digits: 0.1234567 -> 0.123457).
  updates, _, _ = run(optim.make_optimizer(PARAMS, OPT, lr_mults="^mapping/=0.1234567"), GRADS[:1])
  np.testing.assert_allclose(updates[0]["mapping/fc0/weight"],
                             0.1234567 * updates[0]["synthesis/b4/conv1/weight"], rtol=1e-6)
