"""Losses against closed-form values."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from gantl_jax.training import losses


def test_logistic_losses_at_zero_and_limits():
  np.testing.assert_allclose(losses.g_logistic_ns(jnp.zeros(3)), math.log(2), rtol=1e-6)
  real, fake = losses.d_logistic(jnp.array([10.0]), jnp.array([-10.0]))
  assert float(real[0]) < 1e-4 and float(fake[0]) < 1e-4
  real, fake = losses.d_logistic(jnp.array([-10.0]), jnp.array([10.0]))
  np.testing.assert_allclose([real[0], fake[0]], [10.0, 10.0], rtol=1e-4)


def test_r1_penalty_closed_form():
  """D(x) = 0.5 * sum(a * x^2) per image has gradient a * x, so R1 = sum((a x)^2)."""
  x = jax.random.normal(jax.random.key(0), (3, 4, 4, 2))
  a = 1.7
  d_fn = lambda imgs: 0.5 * a * jnp.sum(imgs ** 2, axis=(1, 2, 3))
  penalty, logits = losses.r1_penalty(d_fn, x)
  np.testing.assert_allclose(np.asarray(penalty), np.sum((a * np.asarray(x)) ** 2, axis=(1, 2, 3)), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(d_fn(x)), rtol=1e-6)


def test_path_length_closed_form():
  """For img = c * reshape(ws), J^T y = c * reshape(y): the length is c * sqrt(mean_l sum_d y^2)."""
  n, num_ws, w_dim, c = 2, 4, 6, 2.5
  ws = jax.random.normal(jax.random.key(0), (n, num_ws, w_dim))
  synth = lambda w: c * w.reshape(n, 4, 3, 2)
  noise = jax.random.normal(jax.random.key(1), (n, 4, 3, 2))
  lengths = losses.path_length(synth, ws, noise)
  y = np.asarray(noise).reshape(n, num_ws, w_dim)
  expected = c * np.sqrt(np.mean(np.sum(y ** 2, axis=2), axis=1))
  np.testing.assert_allclose(np.asarray(lengths), expected, rtol=1e-5)
  # The running mean moves by pl_decay towards the batch mean before the penalty is taken.
  penalty, new_mean = losses.path_length_penalty(lengths, jnp.float32(1.0), 0.01)
  m = 1.0 + 0.01 * (expected.mean() - 1.0)
  np.testing.assert_allclose(float(new_mean), m, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(penalty), (expected - m) ** 2, rtol=1e-4)


def test_path_length_penalty_gradient_matches_finite_difference():
  ws = jax.random.normal(jax.random.key(0), (2, 3, 4))
  mat = jax.random.normal(jax.random.key(1), (4, 4))
  noise = jax.random.normal(jax.random.key(2), (2, 3, 4, 1))

  def loss(scale):
    synth = lambda w: jnp.tanh(scale * w @ mat)[..., None]
    lengths = losses.path_length(synth, ws, noise)
    return jnp.mean(losses.path_length_penalty(lengths, jnp.float32(0.3), 0.01)[0])

  grad = jax.grad(loss)(1.3)
  eps = 1e-3
  fd = (loss(1.3 + eps) - loss(1.3 - eps)) / (2 * eps)
  np.testing.assert_allclose(float(grad), float(fd), rtol=2e-2)


def test_style_mixing():
  a = jnp.zeros((2, 6, 3))
  b = jnp.ones((2, 6, 3))
  np.testing.assert_array_equal(losses.mix_styles(a, b, jax.random.key(0), 0.0), a)
  for seed in range(20):
    mixed = np.asarray(losses.mix_styles(a, b, jax.random.key(seed), 1.0))
    cutoff = int(np.argmax(mixed[0, :, 0] > 0))
    assert 1 <= cutoff < 6
    # One cutoff for the whole batch; layers before it keep ws, after it take the other latent.
    assert (mixed[:, :cutoff] == 0).all() and (mixed[:, cutoff:] == 1).all()
