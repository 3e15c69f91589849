"""Augmentation (gantl_jax/fewshot/augment.py): each op's contract, exact inverses, no leaks, the official
strengths, DiffAugment, equality on 1 and 8 devices, ADA's controller, its state across a
checkpoint, the config section, and a tiny ADA run whose p rises."""
import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import tiny
from gantl_jax import config as config_lib
from gantl_jax.fewshot import augment
from gantl_jax.training import checkpoint
from gantl_jax.training import loop as train
from gantl_jax.training import losses
from gantl_jax.training import state as state_lib
from gantl_jax.training import steps
from test_step_golden import leaf_errors
from gantl_jax import errors

R = 16  # image size of the op tests
N = 8   # images per batch


def images(n=N, size=R, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)), jnp.float32)


def keys(n=N, seed=0):
  return jax.random.split(jax.random.key(seed), n)


@functools.lru_cache(maxsize=None)
def op_fn(op):
  """A jitted ``fn(images, keys, p)`` applying one op: an ADA op alone, or a DiffAugment policy."""
  if op in augment.DIFFAUG_POLICIES:
    return jax.jit(lambda x, k, p: augment.diffaugment(x, k, (op,)))
  return jax.jit(functools.partial(augment.ada, ops=(op,)))


ADA_OPS = augment.PIPELINES["bgc"]
ALL_OPS = ADA_OPS + augment.DIFFAUG_POLICIES


@pytest.mark.parametrize("op", ALL_OPS)
def test_op_contract(op):
  """Shape and dtype kept; p = 0 is exactly the identity (ADA ops); the same key gives the same
  output and another key another; gradients reach the input, finite and non-zero."""
  fn = op_fn(op)
  x, k = images(), keys()
  y = fn(x, k, 1.0)
  assert y.shape == x.shape and y.dtype == x.dtype
  assert not np.array_equal(np.asarray(y), np.asarray(x))
  np.testing.assert_array_equal(np.asarray(fn(x, k, 1.0)), np.asarray(y))
  assert not np.array_equal(np.asarray(fn(x, keys(seed=1), 1.0)), np.asarray(y))
  if op in ADA_OPS:
    np.testing.assert_array_equal(np.asarray(fn(x, k, 0.0)), np.asarray(x))
  weights = images(seed=2)
  grad = jax.grad(lambda x: jnp.sum(fn(x, k, 1.0) * weights))(x)
  assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.max(jnp.abs(grad))) > 0


def test_whole_pipeline_at_p0_is_the_identity_and_at_p1_moves_every_image():
  fn = jax.jit(augment.ada)
  x, k = images(), keys()
  np.testing.assert_array_equal(np.asarray(fn(x, k, 0.0)), np.asarray(x))
  moved = np.abs(np.asarray(fn(x, k, 1.0)) - np.asarray(x)).max(axis=(1, 2, 3))
  assert (moved > 0.1).all()


def geometric(op, p=1.0, n=N, size=R, seed=0):
  return jax.vmap(lambda k: augment.geometric_matrix(augment.draws(k), p, (op,), size, size))(keys(n, seed))


def test_pixel_ops_are_exact_and_invert():
  """x-flip, quarter turns and integer shifts map pixels onto pixels: through the warp (2x up,
  bilinear, 2x down) they equal the plain array operation, and the inverse matrix undoes them
  (integer shifts where the content stayed in the image)."""
  x = images()
  warp = jax.jit(augment.warp)
  g = geometric("xflip")
  flipped = np.asarray(g[:, 0, 0]) < 0
  assert 0 < flipped.sum() < N
  y = warp(x, g)
  want = np.where(flipped[:, None, None, None], np.asarray(x)[:, :, ::-1], np.asarray(x))
  np.testing.assert_allclose(np.asarray(y), want, atol=1e-6)
  np.testing.assert_allclose(np.asarray(warp(y, g)), np.asarray(x), atol=1e-6)  # its own inverse

  g = geometric("rotate90")
  y = warp(x, g)
  for i in range(N):
    turns = [k for k in range(4) if np.allclose(np.asarray(y[i]), np.rot90(np.asarray(x[i]), k), atol=1e-6)]
    assert len(turns) == 1, i
  np.testing.assert_allclose(np.asarray(warp(y, jnp.linalg.inv(g))), np.asarray(x), atol=1e-6)
  four = y
  for _ in range(3):
    four = warp(four, g)
  np.testing.assert_allclose(np.asarray(four), np.asarray(x), atol=1e-5)

  g = geometric("xint")
  shift = -np.asarray(g[:, :2, 2]).astype(int)  # output = input shifted by (tx, ty)
  assert np.abs(shift).max() <= round(augment.XINT_MAX * R) and np.abs(shift).max() > 0
  y = warp(x, g)
  back = np.asarray(warp(y, jnp.linalg.inv(g)))
  for i, (tx, ty) in enumerate(shift):
    inner = np.s_[max(ty, 0):R + min(ty, 0), max(tx, 0):R + min(tx, 0)]
    src = np.s_[max(-ty, 0):R + min(-ty, 0), max(-tx, 0):R + min(-tx, 0)]
    np.testing.assert_allclose(np.asarray(y[i])[inner], np.asarray(x[i])[src], atol=1e-6)
    # Back where the content never left the image (the shifted-out rows come back reflected).
    keep = np.s_[max(-ty, 0):R + min(-ty, 0), max(-tx, 0):R + min(-tx, 0)]
    np.testing.assert_allclose(back[i][keep], np.asarray(x[i])[keep], atol=1e-6)


@pytest.mark.parametrize("op", augment.COLOR)
def test_colour_ops_invert(op):
  x = images()
  c = jax.vmap(lambda k: augment.color_matrix(augment.draws(k), 1.0, (op,)))(keys())
  y = augment.apply_color(x, c)
  assert not np.allclose(np.asarray(y), np.asarray(x))
  np.testing.assert_allclose(np.asarray(augment.apply_color(y, jnp.linalg.inv(c))), np.asarray(x), atol=2e-5)


def test_constant_image_stays_constant_under_every_geometric_op():
  """Reflection, not zeros, fills what comes from outside the image: a constant stays constant."""
  x = jnp.full((64, R, R, 3), 0.7, jnp.float32)
  y = jax.jit(functools.partial(augment.ada, ops=augment.GEOMETRIC))(x, keys(64), 1.0)
  np.testing.assert_allclose(np.asarray(y), 0.7, atol=1e-6)


def _band_limited(n, size, fmax, seed):
  """Random images whose spectrum is zero beyond ``fmax`` cycles/pixel (radially)."""
  rng = np.random.default_rng(seed)
  f = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij"))
  spec = (rng.normal(size=(n, size, size, 3)) + 1j * rng.normal(size=(n, size, size, 3))) * (f < fmax)[None, :, :, None]
  img = np.real(np.fft.ifft2(spec, axes=(1, 2)))
  return (img / np.abs(img).max(axis=(1, 2, 3), keepdims=True)).astype(np.float32), f


def test_rotation_keeps_a_band_limited_image_band_limited():
  """Rotating a band-limited image by arbitrary angles adds no energy above its band (inside the
  inscribed disc, which a rotation about the centre maps from inside the image). Measured on 32 px
  images with content below 0.25 cycles/px, energy beyond 0.35: input 1.1e-5, this warp 4.0e-5,
  bilinear on the pixel grid 1.4e-3, nearest neighbour 5.1e-2."""
  size = 32
  x, f = _band_limited(64, size, 0.25, seed=0)
  g = jax.vmap(lambda k: augment.geometric_matrix(augment.draws(k), 1.0, ("rotate",), size, size))(keys(64))
  y = np.asarray(jax.jit(augment.warp)(jnp.asarray(x), g))
  c = (size - 1) / 2
  yy, xx = np.meshgrid(np.arange(size) - c, np.arange(size) - c, indexing="ij")
  radius = np.hypot(xx, yy) / (c - 1)
  window = np.where(radius < 1, np.cos(np.pi * radius / 2) ** 2, 0)[None, :, :, None]

  def above(img):
    power = np.abs(np.fft.fft2(img * window, axes=(1, 2))) ** 2
    return power[:, f > 0.35].sum() / power.sum()

  assert above(x) < 2e-5
  assert above(y) < 2e-4, above(y)


def test_rotation_and_fractional_shift_resample_accurately():
  """Plane waves (below 0.2 cycles/px) rotated and shifted by the pipeline match the waves
  evaluated at the transformed positions, where those fall inside the image: relative RMS error
  measured 0.016 (bilinear on the pixel grid: 0.060, nearest neighbour: 0.21)."""
  size, n, waves = 32, 32, 6
  rng = np.random.default_rng(0)
  radius, angle = rng.uniform(0.02, 0.2, (n, waves)), rng.uniform(0, 2 * np.pi, (n, waves))
  fx, fy = radius * np.cos(angle), radius * np.sin(angle)
  phase = rng.uniform(0, 2 * np.pi, (n, waves, 3))

  def render(xs, ys):  # xs, ys [n, H, W]: positions about the centre
    arg = fx[:, None, None, :, None] * xs[..., None, None] + fy[:, None, None, :, None] * ys[..., None, None]
    return np.mean(np.cos(2 * np.pi * arg + phase[:, None, None]), axis=3)

  c = (size - 1) / 2
  yy, xx = np.meshgrid(np.arange(size) - c, np.arange(size) - c, indexing="ij")
  x = render(np.broadcast_to(xx, (n, size, size)), np.broadcast_to(yy, (n, size, size))).astype(np.float32)
  g = np.asarray(jax.vmap(lambda k: augment.geometric_matrix(augment.draws(k), 1.0, ("rotate", "xfrac"), size, size))(keys(n)))
  xs = g[:, 0, 0, None, None] * xx + g[:, 0, 1, None, None] * yy + g[:, 0, 2, None, None]
  ys = g[:, 1, 0, None, None] * xx + g[:, 1, 1, None, None] * yy + g[:, 1, 2, None, None]
  inside = ((np.abs(xs) < c - 2) & (np.abs(ys) < c - 2))[..., None]
  assert inside.mean() > 0.3
  want = render(xs, ys)
  y = np.asarray(jax.jit(augment.warp)(jnp.asarray(x), jnp.asarray(g)))
  error = np.sqrt(np.sum(((y - want) * inside) ** 2) / np.sum((want * inside) ** 2))
  assert error < 0.03, error


def test_resampling_filters_reconstruct_and_are_symmetric():
  up, down = augment.resampling_filters()
  assert len(up) == 7 and len(down) == 9
  np.testing.assert_allclose(up, up[::-1], atol=1e-12)
  np.testing.assert_allclose(down, down[::-1], atol=1e-12)
  product = np.convolve(down, up)  # even lags from the centre: a unit impulse
  np.testing.assert_allclose(product[1::2], np.eye(1, 7, 3)[0], atol=1e-12)
  # Both reject the top of the 2x band (no leak of the image copies the upsampling makes).
  for taps, gain in ((up, 2.0), (down, 1.0)):
    n = np.arange(len(taps)) - len(taps) // 2
    at = lambda f: abs(np.sum(taps * np.cos(2 * np.pi * f * n))) / gain
    assert at(0.0) == pytest.approx(1.0) and at(0.5) < 1e-9 and at(0.4) < 0.1


def test_official_strengths_and_probabilities():
  """Over 4000 images at p = 0.5, each op applies to its share of images with the strength of
  stylegan2-ada-pytorch (standard deviations of the log2 scales, ranges of shifts and angles)."""
  n, p = 4000, 0.5
  k = keys(n, seed=5)
  geo = lambda op: np.asarray(jax.vmap(lambda kk: augment.geometric_matrix(augment.draws(kk), p, (op,), R, R))(k))
  col = lambda op: np.asarray(jax.vmap(lambda kk: augment.color_matrix(augment.draws(kk), p, (op,)))(k))
  moved = lambda m: ~np.all(m == np.eye(m.shape[-1]), axis=(1, 2))
  share = lambda m, expect: abs(moved(m).mean() - expect) < 0.03

  m = geo("xflip")
  assert share(m, p / 2) and set(np.unique(m[:, 0, 0])) == {-1.0, 1.0}  # half of the drawn flip
  m = geo("rotate90")
  assert share(m, p * 3 / 4) and set(np.unique(np.round(m[:, 0, 1]))) == {-1.0, 0.0, 1.0}
  m = geo("xint")
  shift = m[moved(m), :2, 2]
  still = (0.5 / (0.125 * R)) ** 2  # both shifts round to 0 pixels
  assert share(m, p * (1 - still)) and np.all(shift == np.round(shift)) and np.abs(shift).max() == round(0.125 * R)
  m = geo("scale")
  assert share(m, p) and np.std(np.log2(m[moved(m), 0, 0])) == pytest.approx(0.2, rel=0.1)
  m = geo("rotate")  # before or after the anisotropic scale: either with probability p
  angle = np.arctan2(m[moved(m), 1, 0], m[moved(m), 0, 0])
  assert share(m, p) and np.abs(angle).max() > 0.95 * math.pi and np.std(angle) == pytest.approx(math.pi / math.sqrt(3), rel=0.1)
  m = geo("aniso")
  assert share(m, p) and np.std(np.log2(m[moved(m), 0, 0])) == pytest.approx(0.2, rel=0.1)
  assert np.allclose(m[:, 0, 0] * m[:, 1, 1], 1.0, rtol=1e-5)
  m = geo("xfrac")
  assert share(m, p) and np.std(m[moved(m), :2, 2]) == pytest.approx(0.125 * R, rel=0.1)

  m = col("brightness")
  assert share(m, p) and np.std(m[moved(m), 0, 3]) == pytest.approx(0.2, rel=0.1)
  m = col("contrast")
  assert share(m, p) and np.std(np.log2(m[moved(m), 0, 0])) == pytest.approx(0.5, rel=0.1)
  m = col("lumaflip")
  luma = np.ones(3) / np.sqrt(3)
  assert share(m, p / 2) and np.allclose(m[moved(m), :3, :3] @ luma, -luma, atol=1e-6)
  m = col("hue")
  cosine = (np.trace(m[moved(m), :3, :3], axis1=1, axis2=2) - 1) / 2  # rotation angle about luma
  assert share(m, p) and cosine.min() < -0.99 and np.allclose(m[:, :3, :3] @ luma, luma, atol=1e-5)
  m = col("saturation")
  off_luma = np.eye(3) - np.outer(luma, luma)
  s = np.einsum("nij,ij->n", m[moved(m), :3, :3], off_luma) / 2  # the off-luma factor
  assert share(m, p) and np.std(np.log2(s)) == pytest.approx(1.0, rel=0.1)


def test_diffaugment_published_strengths():
  """translation: whole-pixel shifts up to round(size / 8), zero fill; cutout: a zero square of
  round(size / 2); color: brightness +[-0.5, 0.5), saturation x[0, 2), contrast x[0.5, 1.5)."""
  n, size = 256, 16
  k = keys(n, seed=3)
  ramp = jnp.broadcast_to((1 + jnp.arange(size, dtype=jnp.float32))[None, None, :, None], (n, size, size, 3))
  y = np.asarray(augment.diffaug_translation(ramp, k))
  # Each row of y holds ramp values shifted by tx (and zeros where it came from outside).
  tx = np.array([row[row > 0][0] - 1 - np.argmax(row > 0) for row in y[:, size // 2, :, 0]])
  assert set(tx) == set(range(-2, 3))
  assert (y == 0).any() and set(np.unique(y)) <= set(range(size + 1))
  y = np.asarray(augment.diffaug_cutout(jnp.ones((n, size, size, 3)), k))
  zeros = (y[..., 0] == 0).sum(axis=(1, 2))
  assert zeros.max() == 8 * 8 and zeros.min() > 0 and set(np.unique(y)) == {0.0, 1.0}
  # Colour on grey images: only brightness shows (saturation and contrast keep a constant).
  y = np.asarray(augment.diffaug_color(jnp.full((n, size, size, 3), 0.25), k))
  shift = y[:, 0, 0, 0] - 0.25
  assert shift.min() >= -0.5 and shift.max() < 0.5 and np.ptp(shift) > 0.9
  two = jnp.broadcast_to(jnp.asarray([0.5, -0.5, 0.0]), (n, size, size, 3))  # zero mean per pixel
  y = np.asarray(augment.diffaug_color(two, k))
  spread = (y[:, 0, 0, 0] - y[:, 0, 0, 1])  # = saturation x contrast: in [0, 2) x [0.5, 1.5)
  assert spread.min() >= 0 and spread.max() < 3.0 and spread.max() > 2.0


@pytest.mark.parametrize("kind", ["ada", "diffaug"])
def test_same_augmentation_on_1_and_8_devices(kind):
  """The step's per-example keys (a function of the global index) under pmap over 8 devices give
  the same augmented batch as one device with the whole batch."""
  cfg = tiny.get_config().augment
  cfg.kind = kind
  fn = augment.make(cfg)
  n = 16
  x = images(n)
  key = jax.random.key(7)
  one = jax.jit(lambda x: fn(x, steps._example_keys(key, n, None), 0.7))(x)
  eight = jax.pmap(lambda x: fn(x, steps._example_keys(key, n // 8, "data"), 0.7), axis_name="data")(
      x.reshape(8, n // 8, R, R, 3))
  np.testing.assert_allclose(np.asarray(eight).reshape(one.shape), np.asarray(one), atol=1e-6)
  assert not np.allclose(np.asarray(one), np.asarray(x))


@pytest.mark.slow
def test_step_shows_d_augmented_reals_and_takes_r1_through_the_augmentation():
  """With both learning rates 0 (the networks stay at init), the step's D-main logits of the reals
  and its R1 penalty equal those recomputed here from the step's per-example keys: D sees
  aug(real), and R1 is |d D(aug(x)) / dx|^2 at the un-augmented reals. The colour pipeline at
  p = 1 scales images, so the two wrong R1s (no augmentation; gradient w.r.t. aug(x)) differ."""
  c = tiny.get_config()
  still = dict(lr=0.0, beta1=0.0, beta2=0.99, eps=1e-8)
  c.optim.update(g=still, d=still)
  c.train.update(pl_weight=0.0)
  c.augment.update(kind="fixed", p=1.0, pipeline="color")
  config = config_lib.resolve(c)
  nets = state_lib.build_networks(config)
  state = jax.jit(lambda: state_lib.init_state(nets, 0))()
  reals = images(8)
  _, metrics = jax.jit(steps.make_train_step(config, nets), static_argnames="flags")(
      state, reals, flags=steps.StepFlags(d_reg=True))

  key = jax.random.fold_in(state.key, state.step)
  aug = augment.make(config.augment)
  d = lambda x: nets.discriminator.apply({"params": state.d.params}, x)
  stream = lambda phase: jax.vmap(lambda k: jax.random.fold_in(k, steps._AUG_REAL))(
      steps._example_keys(jax.random.fold_in(key, phase), 8, None))
  real_logits = d(aug(reals, stream(steps._D_MAIN), 1.0))
  assert float(metrics["real_logits"]) == pytest.approx(float(jnp.mean(real_logits)), rel=1e-5, abs=1e-6)
  assert float(metrics["real_sign"]) == float(jnp.mean(jnp.sign(real_logits)))
  r1_keys = stream(steps._D_REG)
  through, _ = losses.r1_penalty(lambda x: d(aug(x, r1_keys, 1.0)), reals)
  plain, _ = losses.r1_penalty(d, reals)
  at_augmented, _ = losses.r1_penalty(d, aug(reals, r1_keys, 1.0))
  r1 = float(metrics["r1_penalty"])
  assert r1 == pytest.approx(float(jnp.mean(through)), rel=1e-4)
  for wrong in (plain, at_augmented):
    assert abs(float(jnp.mean(wrong)) / r1 - 1) > 0.05


def test_step_shows_g_and_d_augmented_fakes_and_differentiates_g_through_them():
  """With plain SGD of rate 1 (a parameter's change is minus its gradient), the step's G main and
  D main equal those assembled here from the step's per-example keys: G main's loss is that of
  D(aug(G(z))) with G main's keys and the fakes' sub-stream, its gradient taken through the
  augmentation; D main sees aug(fake) of the updated G with D main's keys and the fakes'
  sub-stream, next to aug(real) with the reals' one. The pipeline 'bg' at p = 1 warps every
  image, so that fakes left unaugmented, or augmented with the reals' sub-stream, change both
  gradients by far more than the tolerance."""
  c = tiny.get_config()
  c.model.update(resolution=8, z_dim=16, w_dim=16, channel_base=64, channel_max=16)
  c.train.update(pl_weight=0.0, style_mixing_prob=0.0)
  c.augment.update(kind="fixed", p=1.0, pipeline="bg")
  config = config_lib.resolve(c)
  nets = state_lib.build_networks(config)
  nets = nets._replace(g_tx=optax.sgd(1.0), d_tx=optax.sgd(1.0))
  state = jax.jit(lambda: state_lib.init_state(nets, 0))()
  reals = images(8, 8)
  new_state, metrics = jax.jit(steps.make_train_step(config, nets), static_argnames="flags")(
      state, reals, flags=steps.StepFlags())

  g, d = nets.generator, nets.discriminator
  aug = augment.make(config.augment)
  key = jax.random.fold_in(state.key, state.step)
  buffers = state.g.buffers

  def reference(fake_stream, fake_p):
    """G main and D main with the fakes augmented by sub-stream ``fake_stream`` at ``fake_p``."""
    def fakes(params, phase):
      keys = steps._example_keys(jax.random.fold_in(key, phase), 8, None)
      z = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, steps._Z), (g.z_dim,)))(keys)
      noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, steps._NOISE))(keys)
      x = g.apply({"params": params, "buffers": buffers}, z, noise_mode="random", noise_keys=noise_keys)
      return x, keys

    sub = lambda keys, stream: jax.vmap(lambda k: jax.random.fold_in(k, stream))(keys)
    D = lambda params, x: d.apply({"params": params}, x)

    def g_main(params):
      x, keys = fakes(params, steps._G_MAIN)
      return jnp.mean(jax.nn.softplus(-D(state.d.params, aug(x, sub(keys, fake_stream), fake_p))))

    g_loss, grads = jax.value_and_grad(g_main)(state.g.params)
    g_params = jax.tree.map(lambda p, dp: p - dp, state.g.params, grads)
    fake, keys = fakes(g_params, steps._D_MAIN)
    fake = aug(fake, sub(keys, fake_stream), fake_p)
    real = aug(reals, sub(keys, steps._AUG_REAL), 1.0)

    def d_main(params):
      fake_logits = D(params, fake)
      return jnp.mean(jax.nn.softplus(-D(params, real)) + jax.nn.softplus(fake_logits)), fake_logits

    (d_loss, fake_logits), grads = jax.value_and_grad(d_main, has_aux=True)(state.d.params)
    d_params = jax.tree.map(lambda p, dp: p - dp, state.d.params, grads)
    return dict(g=g_params, d=d_params, g_loss=g_loss, d_loss=d_loss, fake_logits=jnp.mean(fake_logits))

  reference = jax.jit(reference)
  refs = {"augmented with their own sub-stream": reference(steps._AUG_FAKE, 1.0),
          "augmented with the reals' sub-stream": reference(steps._AUG_REAL, 1.0),
          "left unaugmented": reference(steps._AUG_FAKE, 0.0)}
  for name in ("g_loss", "d_loss", "fake_logits"):
    assert float(metrics[name]) == pytest.approx(float(refs["augmented with their own sub-stream"][name]), rel=1e-5, abs=1e-6), name
  for kind, ref in refs.items():
    for net in ("g", "d"):
      errors = leaf_errors(getattr(new_state, net).params, ref[net], getattr(state, net).params)
      worst = max(e[0] / e[1] for e in errors.values())
      print(f"{net} against the reference with its fakes {kind}: worst leaf {worst:.2g} tolerances off")
      if kind == "augmented with their own sub-stream":
        assert worst <= 1, (net, kind)
      else:
        assert worst > 30, (net, kind)


def ada_config(**kw):
  c = tiny.get_config()
  c.augment.update(kind="ada", **kw)
  return config_lib.resolve(c).augment


def test_ada_controller_moves_p_by_the_sign_and_stays_in_range():
  cfg = ada_config(ada_kimg=10.0, ada_interval=4)
  batch, rate = 16, 16 * 4 / (10.0 * 1000)
  extras = {"pl_mean": jnp.float32(0), **augment.initial_extras(cfg)}
  update = jax.jit(lambda e, s: augment.ada_update(e, s, batch, cfg))
  # Over-confident on reals (mean sign 0.75 > 0.6): p rises once per 4 steps, by exactly the rate.
  ps, rts = [], []
  for sign in (1.0, 0.5, 0.75, 0.75) * 2:
    extras, rt = update(extras, jnp.float32(sign))
    ps.append(float(extras["aug_p"]))
    rts.append(float(rt))
  assert ps == pytest.approx([0, 0, 0, rate, rate, rate, rate, 2 * rate])
  assert np.isnan(rts[:3]).all() and rts[3] == pytest.approx(0.75) and int(extras["ada_count"]) == 0
  # Below the target: p falls, and stops at 0.
  for _ in range(12):
    extras, _ = update(extras, jnp.float32(0.2))
  assert float(extras["aug_p"]) == 0.0
  # And never passes 1.
  extras = {**extras, "aug_p": jnp.float32(1 - rate / 2)}
  for _ in range(4):
    extras, _ = update(extras, jnp.float32(1.0))
  assert float(extras["aug_p"]) == 1.0


def test_ada_counts_only_the_image_level_steps_of_cdc():
  """With CDC's patch discriminator (anchor steps every 2nd step), a patch step's sign of the patch
  logits leaves ADA's accumulators and p alone; an anchor step's sign of the image logits is r_t,
  and p moves by the images of both steps. Reference: the rule written out here."""
  c = tiny.get_config()
  c.model.update(resolution=8, z_dim=16, w_dim=16, channel_base=64, channel_max=16, mbstd_group_size=1)
  c.train.update(batch_size=8, pl_weight=0.0)
  c.fewshot.update(cdc_anchor_interval=2)
  c.augment.update(kind="ada", p=0.5, ada_interval=1, ada_kimg=1.0)
  config = config_lib.resolve(c)
  nets = state_lib.build_networks(config)
  state = jax.jit(lambda: state_lib.init_state(nets, 0))()
  step = jax.jit(steps.make_train_step(config, nets), static_argnames="flags")
  rate = 8 * 2 * 1 / (1.0 * 1000)

  after_patch, m = step(state, images(8, 8), flags=steps.StepFlags(anchor=False))
  assert np.isnan(float(m["ada_rt"]))
  assert {k: float(v) for k, v in after_patch.extras.items() if k != "pl_mean"} == {
      "aug_p": 0.5, "ada_sign_sum": 0.0, "ada_count": 0}

  after_anchor, m = step(after_patch, images(8, 8, seed=1), flags=steps.StepFlags(anchor=True))
  sign = float(m["real_sign"])
  assert float(m["ada_rt"]) == sign
  assert float(after_anchor.extras["aug_p"]) == pytest.approx(0.5 + np.sign(sign - 0.6) * rate, abs=1e-7)
  assert float(after_anchor.extras["ada_count"]) == 0


def test_config_section_is_validated_and_ada_kimg_resolved():
  def resolve(**kw):
    c = tiny.get_config()
    for key, value in kw.items():
      section, name = key.split("__")
      c[section][name] = value
    return config_lib.resolve(c)

  assert resolve(augment__kind="ada").augment.ada_kimg == 500
  assert resolve(augment__kind="ada", transfer__source="/some/run").augment.ada_kimg == 100
  assert resolve(augment__kind="ada", augment__ada_kimg=20.0).augment.ada_kimg == 20
  assert resolve().augment.ada_kimg == -1  # only resolved where it is used
  for key, value, words in [("kind", "adaptive", "augment.kind must be one of"),
                            ("p", 1.5, "augment.p must be in [0, 1]"),
                            ("pipeline", "bgcfnc", "augment.pipeline must be one of"),
                            ("ada_target", 2.0, "augment.ada_target must be in [-1, 1]"),
                            ("ada_interval", 0, "augment.ada_interval must be >= 1"),
                            ("ada_kimg", 0.0, "augment.ada_kimg must be positive"),
                            ("diffaug_policy", "color,zoom", "unknown policies ['zoom']"),
                            ("diffaug_policy", " , ", "augment.diffaug_policy is empty")]:
    kw = {f"augment__{key}": value}
    if key == "diffaug_policy":
      kw["augment__kind"] = "diffaug"
    with pytest.raises(errors.ConfigError) as e:
      resolve(**kw)
    assert words in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_ada_state_survives_a_checkpoint_and_old_checkpoints_start_fresh(tmp_path):
  """p and its accumulators are saved and restored exactly, so the controller continues where it
  was; a checkpoint without them (a run from before, or without ADA) restores p = augment.p."""
  c = tiny.get_config()
  c.augment.update(kind="ada", p=0.125)
  config = config_lib.resolve(c)
  nets = state_lib.build_networks(config)
  fresh = jax.jit(lambda: state_lib.init_state(nets, 0))()
  assert {k: float(v) for k, v in fresh.extras.items()} == {"pl_mean": 0, "aug_p": 0.125, "ada_sign_sum": 0, "ada_count": 0}
  state = fresh.replace(step=jnp.int32(7), extras={"pl_mean": jnp.float32(0.5), "aug_p": jnp.float32(0.3712),
                                                   "ada_sign_sum": jnp.float32(1.25), "ada_count": jnp.int32(2)})
  with checkpoint.make_manager(str(tmp_path / "a"), async_save=False) as m:
    checkpoint.save(m, state, data_state={}, meta={})
    restored, _, _ = checkpoint.restore(m, fresh)
  for name in state.extras:
    assert restored.extras[name].dtype == state.extras[name].dtype
    np.testing.assert_array_equal(np.asarray(restored.extras[name]), np.asarray(state.extras[name]))
  update = lambda e: augment.ada_update(e, jnp.float32(0.9), 8, config.augment)[0]
  np.testing.assert_array_equal(np.asarray(update(update(restored.extras))["aug_p"]),
                                np.asarray(update(update(state.extras))["aug_p"]))

  old = fresh.replace(extras={"pl_mean": jnp.float32(0.5)})
  with checkpoint.make_manager(str(tmp_path / "b"), async_save=False) as m:
    checkpoint.save(m, old, data_state={}, meta={})
    restored, _, _ = checkpoint.restore(m, fresh)
  assert float(restored.extras["pl_mean"]) == 0.5 and float(restored.extras["aug_p"]) == 0.125


def tiny_ada_config(data_dir, total_steps):
  """configs/tiny.py with 32 images and ADA reacting fast (ada_kimg 0.1: p moves by 0.32 every 4
  steps of 8 images); R1 through the augmentation every step and no path length, so the loop runs
  one compiled program (on the 8 simulated devices)."""
  c = tiny.get_config()
  c.model.update(mbstd_group_size=1)
  c.train.update(total_kimg=total_steps * 8 / 1000, log_every=1, r1_interval=1, pl_weight=0.0)
  c.checkpoint.update(every_steps=0)
  c.data.update(num_images=32, data_dir=str(data_dir))
  c.augment.update(kind="ada", ada_kimg=0.1)
  return c


def run_records(workdir):
  return [json.loads(line) for line in open(workdir / "metrics.jsonl")]


def final_extras(workdir, config):
  with checkpoint.make_manager(str(workdir / "checkpoints"), read_only=True, max_to_keep=None) as m:
    nets = state_lib.build_networks(config_lib.resolve(config, num_devices=jax.device_count()))
    state, _, _ = checkpoint.restore(m, jax.jit(lambda: state_lib.init_state(nets, 0))())
  return {k: np.asarray(v) for k, v in state.extras.items()}


@pytest.fixture(scope="module")
def tiny_ada_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("ada")
  config = tiny_ada_config(root / "tfds", 32)
  train.train_and_evaluate(config, str(root / "run"))
  return root, config


@pytest.mark.slow
def test_tiny_ada_run_raises_p_and_logs_it(tiny_ada_run):
  """Within 32 steps D is over-confident on the reals and p rises above 0 (measured with seeds
  0-5: the first rise comes by step 20 in each); every move of p follows the sign of r_t - 0.6;
  aug_p and ada_rt are in metrics.jsonl and p is in the checkpoint."""
  root, config = tiny_ada_run
  records = run_records(root / "run")
  assert [r["step"] for r in records] == list(range(1, 33))
  p = [0.0] + [r["aug_p"] for r in records]  # p[i]: after step i
  rt = [None] + [r["ada_rt"] for r in records]
  assert max(p) > 0, p
  for i in range(1, 33):
    if i % 4:  # no adjustment: no r_t, p unchanged
      assert rt[i] is None and p[i] == p[i - 1], i
    else:
      want = min(max(p[i - 1] + math.copysign(0.32, rt[i] - 0.6), 0.0), 1.0)
      assert p[i] == pytest.approx(want, abs=1e-6), (i, p[i - 1], rt[i], p[i])
  assert float(final_extras(root / "run", config)["aug_p"]) == p[-1]


@pytest.mark.slow
def test_tiny_ada_run_resumed_continues_p_exactly(tiny_ada_run):
  """Stopped after 16 steps and resumed to 32, the run logs the same p and r_t at every step and
  ends with the same extras as the run that was not stopped (the official code restarts p at 0)."""
  root, config = tiny_ada_run
  workdir = root / "resumed"
  train.train_and_evaluate(tiny_ada_config(root / "tfds", 16), str(workdir))
  assert float(final_extras(workdir, config)["aug_p"]) == run_records(root / "run")[15]["aug_p"]
  train.train_and_evaluate(config, str(workdir))
  keys_ = ("step", "aug_p", "ada_rt", "real_sign", "d_loss")
  assert [[r[k] for k in keys_] for r in run_records(workdir)] == [[r[k] for k in keys_] for r in run_records(root / "run")]
  resumed, straight = final_extras(workdir, config), final_extras(root / "run", config)
  assert resumed.keys() == straight.keys()
  for k in straight:
    np.testing.assert_array_equal(resumed[k], straight[k])
