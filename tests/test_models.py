"""StyleGAN2 generator and discriminator: shapes, parameter counts and paths, demodulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from gantl_jax.models import stylegan2 as sg

KW = dict(channel_base=256, channel_max=32)
Z, W = 24, 32


def make_g(res, **kw):
  return sg.Generator(res, z_dim=Z, w_dim=W, mapping_layers=2, **{**KW, **kw})


def make_d(res, **kw):
  return sg.Discriminator(res, **{**KW, **kw})


def shapes(tree):
  return {k: v.shape for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def expected_g_param_count(res, z_dim=Z, w_dim=W, layers=2, cb=256, cm=32, img=3):
  """Counts StyleGAN2's generator parameters from the channel schedule."""
  ch = lambda r: min(cb // r, cm)
  n = z_dim * w_dim + w_dim + (layers - 1) * (w_dim * w_dim + w_dim)  # mapping
  n += 16 * ch(4)  # const

  def modconv(cin, cout, k):  # affine + weight + bias (+ noise strength for 3x3)
    return w_dim * cin + cin + k * k * cin * cout + cout + (1 if k == 3 else 0)

  for r in sg.block_resolutions(res):
    if r > 4:
      n += modconv(ch(r // 2), ch(r), 3)
    n += modconv(ch(r), ch(r), 3) + modconv(ch(r), img, 1)
  return n


def expected_d_param_count(res, cb=256, cm=32, img=3):
  ch = lambda r: min(cb // r, cm)
  n = img * ch(res) + ch(res)  # fromrgb
  for r in sg.block_resolutions(res)[:0:-1]:
    n += 9 * ch(r) * ch(r) + ch(r)  # conv0
    n += 9 * ch(r) * ch(r // 2) + ch(r // 2)  # conv1
    n += ch(r) * ch(r // 2)  # skip, no bias
  c = ch(4)
  n += 9 * (c + 1) * c + c + 16 * c * c + c + c + 1  # epilogue: conv, fc, out
  return n


@pytest.fixture(scope="module", params=[8, 16, 32])
def nets(request):
  res = request.param
  g, d = make_g(res), make_d(res)
  g_vars = sg.init_generator(g, jax.random.key(0))
  d_vars = sg.init_discriminator(d, jax.random.key(1))
  return res, g, d, g_vars, d_vars


def test_shapes_and_finite(nets):
  res, g, d, g_vars, d_vars = nets
  z = jax.random.normal(jax.random.key(2), (4, Z))
  keys = jax.random.split(jax.random.key(3), 4)
  img = jax.jit(lambda v, z: g.apply(v, z, noise_mode="random", noise_keys=keys))(g_vars, z)
  assert img.shape == (4, res, res, 3)
  assert np.isfinite(np.asarray(img)).all()
  logits = jax.jit(d.apply)(d_vars, img)
  assert logits.shape == (4,)
  assert np.isfinite(np.asarray(logits)).all()
  ws = g.apply(g_vars, z, method=g.map)
  assert ws.shape == (4, sg.num_ws(res), W)


def test_parameter_counts(nets):
  res, g, d, g_vars, d_vars = nets
  count = lambda t: sum(x.size for x in jax.tree.leaves(t))
  assert count(g_vars["params"]) == expected_g_param_count(res)
  assert count(d_vars["params"]) == expected_d_param_count(res)
  # Buffers: w_avg and one noise constant per 3x3 layer.
  expected_buffers = W + sum(r * r * (1 if r == 4 else 2) for r in sg.block_resolutions(res))
  assert count(g_vars["buffers"]) == expected_buffers


def test_paths_stable_across_resolutions():
  g16, g32 = (shapes(sg.init_generator(make_g(r, channel_max=16, channel_base=512), jax.random.key(0))) for r in (16, 32))
  d16, d32 = (shapes(sg.init_discriminator(make_d(r, channel_max=16, channel_base=512), jax.random.key(0))) for r in (16, 32))
  # Every generator block of the 16 px model exists with the same shape in the 32 px model.
  assert set(g16) < set(g32)
  assert all(g32[k] == v for k, v in g16.items())
  assert "params/synthesis/b32/conv0/weight" in g32 and "params/synthesis/b32/conv0/weight" not in g16
  # The discriminator shares its lower-resolution blocks; only the image-side fromrgb moves.
  shared = {k for k in d16 if "fromrgb" not in k}
  assert shared < set(d32) and all(d32[k] == d16[k] for k in shared)
  assert "params/b16/fromrgb/weight" in d16 and "params/b32/fromrgb/weight" in d32
  for path in ["params/mapping/fc0/weight", "params/synthesis/b4/const", "params/synthesis/b8/conv1/affine/bias",
               "buffers/mapping/w_avg", "buffers/synthesis/b16/conv0/noise_const", "params/synthesis/b16/torgb/weight"]:
    assert path in g32, path
  for path in ["params/b4/conv/weight", "params/b4/fc/weight", "params/b4/out/bias", "params/b16/skip/weight"]:
    assert path in d32, path


def test_demodulation_gives_unit_variance():
  """With demodulation, each output map has unit variance for unit-variance input whatever the
  styles; after leaky ReLU (slope 0.2) with gain sqrt(2), E[y^2] = (1 + 0.2^2) = 1.04."""
  cin, cout, res = 16, 8, 32
  layer = sg.SynthesisLayer(cout, W, res, layer_id=0)
  x = jax.random.normal(jax.random.key(0), (16, res, res, cin))
  w = 3.0 * jax.random.normal(jax.random.key(1), (16, W))  # strong, uneven styles
  variables = layer.init({"params": jax.random.key(2)}, x, w, "none", None)
  # Random (not unit-scale-isotropic) weights: demodulation must still normalise each output.
  params = jax.tree.map(lambda p: p, variables["params"])
  params["weight"] = params["weight"] * jnp.linspace(0.1, 3.0, cin)[None, None, :, None]
  y = layer.apply({"params": params, "buffers": variables["buffers"]}, x, w, "none", None)
  interior = np.asarray(y)[:, 1:-1, 1:-1, :]  # zero padding lowers the variance at the border
  mean_sq = (interior ** 2).mean(axis=(0, 1, 2))
  np.testing.assert_allclose(mean_sq, 1.04, rtol=0.08)
  # Scaling the styles (the affine layer's weight and bias) by 3: the demodulated layer's output
  # does not change; without demodulation (the toRGB path) it follows the styles instead, 3x.
  triple = lambda p: {**p, "affine": jax.tree.map(lambda a: 3.0 * a, p["affine"])}
  y3 = layer.apply({"params": triple(params), "buffers": variables["buffers"]}, x, w, "none", None)
  np.testing.assert_allclose(np.asarray(y3), np.asarray(y), rtol=1e-4, atol=1e-5)
  torgb = sg.ToRGB(3)
  rgb_params = torgb.init(jax.random.key(3), x, w)["params"]
  rgb, rgb3 = (torgb.apply({"params": p}, x, w) for p in (rgb_params, triple(rgb_params)))
  np.testing.assert_allclose(np.asarray(rgb3), 3.0 * np.asarray(rgb), rtol=1e-4, atol=1e-5)


def test_truncation_and_noise_modes():
  g = make_g(16)
  v = sg.init_generator(g, jax.random.key(0))
  v["buffers"]["mapping"]["w_avg"] = jnp.ones((W,))
  z = jax.random.normal(jax.random.key(1), (2, Z))
  ws = g.apply(v, z, method=g.map)
  ws0 = g.apply(v, z, truncation_psi=0.0, method=g.map)
  np.testing.assert_allclose(np.asarray(ws0), 1.0)
  ws_half = g.apply(v, z, truncation_psi=0.5, truncation_cutoff=2, method=g.map)
  np.testing.assert_allclose(np.asarray(ws_half[:, :2]), np.asarray(0.5 + 0.5 * ws[:, :2]), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(ws_half[:, 2:]), np.asarray(ws[:, 2:]))
  # Noise only matters once its strength is non-zero.
  v["params"] = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.ones_like(x) if "noise_strength" in jax.tree_util.keystr(p) else x, v["params"])
  keys = jax.random.split(jax.random.key(5), 2)
  a = g.apply(v, z, noise_mode="random", noise_keys=keys)
  b = g.apply(v, z, noise_mode="random", noise_keys=jax.random.split(jax.random.key(6), 2))
  c = g.apply(v, z, noise_mode="const")
  n = g.apply(v, z, noise_mode="none")
  assert not np.allclose(a, b) and not np.allclose(a, c) and not np.allclose(c, n)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(g.apply(v, z, noise_mode="random", noise_keys=keys)))
  with pytest.raises(ValueError, match="noise_keys"):
    g.apply(v, z, noise_mode="random")


def test_minibatch_stddev_groups_consecutive_samples():
  x = jax.random.normal(jax.random.key(0), (8, 4, 4, 6))
  y = sg.minibatch_stddev(x, group_size=4)
  assert y.shape == (8, 4, 4, 7)
  first = np.asarray(x[:4])
  expected = np.sqrt(first.var(axis=0) + 1e-8).mean()
  np.testing.assert_allclose(np.asarray(y[0, 0, 0, -1]), expected, rtol=1e-5)
  # Groups do not mix: changing the second half leaves the first group's statistic unchanged.
  y2 = sg.minibatch_stddev(x.at[4:].multiply(3.0), group_size=4)
  np.testing.assert_array_equal(np.asarray(y[:4]), np.asarray(y2[:4]))
  with pytest.raises(ValueError, match="group size"):
    sg.minibatch_stddev(x[:6], group_size=4)


@pytest.mark.parametrize("conv_impl", ["custom", "direct"])
def test_conv_impls_agree_with_xla(conv_impl):
  """How convolutions are computed is an implementation detail: the CPU-fast custom VJP and the
  direct strided / transposed resampling convs give the outputs and R1 gradients of 'xla' (D), and
  the images and path-length-style gradients of 'xla' (G)."""
  res = 16
  d_x, d_c = make_d(res, conv_impl="xla"), make_d(res, conv_impl=conv_impl)
  v = sg.init_discriminator(d_x, jax.random.key(0))
  img = jax.random.normal(jax.random.key(1), (4, res, res, 3))

  def r1_grads(d):
    def r1(p):
      g = jax.grad(lambda x: d.apply({"params": p}, x).sum())(img)
      return jnp.sum(g ** 2)
    return jax.jit(jax.grad(r1))(v["params"])

  a, b = r1_grads(d_x), r1_grads(d_c)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=2e-4, atol=1e-5 * float(np.abs(x).max()),
                               err_msg=jax.tree_util.keystr(path))

  g_x, g_c = make_g(res, conv_impl="xla"), make_g(res, conv_impl=conv_impl)
  gv = sg.init_generator(g_x, jax.random.key(2))
  ws = jax.random.normal(jax.random.key(3), (2, sg.num_ws(res), W))
  synth = lambda g, ws: g.apply(gv, ws, noise_mode="const", method=sg.Generator.synthesize)
  np.testing.assert_allclose(synth(g_c, ws), synth(g_x, ws), rtol=1e-4, atol=1e-5)
  pl_grad = lambda g: jax.jit(jax.grad(lambda ws: jnp.sum(jnp.sin(synth(g, ws)))))(ws)
  np.testing.assert_allclose(pl_grad(g_c), pl_grad(g_x), rtol=2e-4, atol=1e-5)
