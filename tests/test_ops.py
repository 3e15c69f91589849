"""Tests of the low-level ops: FIR resampling against the numpy reference, the phase-split
resampling convolutions against direct lax formulations, and the custom-VJP convolution's first-
and second-order gradients against XLA's. All tiny: they run in seconds."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from gantl_jax.models import ops

DIMS = ("NHWC", "HWIO", "NHWC")
FIR_2D = np.outer(ops.FIR_TAPS, ops.FIR_TAPS) / np.sum(ops.FIR_TAPS) ** 2


def reference_upfirdn_1d(x: np.ndarray, up: int, down: int, pad, gain: float) -> np.ndarray:
  """Direct numpy reference of 1-D upfirdn (up-sample, pad, FIR, down-sample) along axis 0: the
  ground truth for the fast formulations of ops.py."""
  taps = np.asarray(ops.FIR_TAPS, np.float64)
  taps = taps / taps.sum() * gain
  n = x.shape[0]
  u = np.zeros((n * up,) + x.shape[1:], np.float64)
  u[::up] = x
  u = np.concatenate([np.zeros((pad[0],) + x.shape[1:]), u, np.zeros((pad[1],) + x.shape[1:])])
  out = np.stack([np.tensordot(taps[::-1], u[i:i + len(taps)], axes=(0, 0))
                  for i in range(u.shape[0] - len(taps) + 1)])
  return out[::down]


def _rand(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _ref_upfirdn_2d(x, up, down, pad, gain):
  """The 2-D separable reference: the 1-D numpy reference along H, then along W."""
  x = np.asarray(x, np.float64).transpose(1, 2, 0, 3)  # [H, W, N, C]
  x = reference_upfirdn_1d(x, up, down, pad, np.sqrt(gain))
  x = reference_upfirdn_1d(x.transpose(1, 0, 2, 3), up, down, pad, np.sqrt(gain))
  return x.transpose(2, 1, 0, 3)


def _fir_conv(x, pad, gain):
  """The FIR as a depthwise lax convolution, for the resampling convs' direct references."""
  c = x.shape[-1]
  k = jnp.tile(jnp.asarray(FIR_2D * gain, jnp.float32)[:, :, None, None], (1, 1, 1, c))
  return lax.conv_general_dilated(x, k, (1, 1), (pad, pad), dimension_numbers=DIMS,
                                  feature_group_count=c, precision=lax.Precision.HIGHEST)


def test_fir_filter_matches_reference():
  x = _rand((2, 7, 6, 3), 0)
  np.testing.assert_allclose(ops.fir_filter(x, (2, 1), gain=2.0),
                             _ref_upfirdn_2d(x, 1, 1, (2, 1), 2.0), atol=1e-5)


def test_upsample2d_matches_reference():
  x = _rand((2, 5, 4, 3), 1)
  np.testing.assert_allclose(ops.upsample2d(x), _ref_upfirdn_2d(x, 2, 1, (2, 1), 4.0), atol=1e-5)


def test_downsample2d_matches_reference():
  x = _rand((2, 8, 6, 3), 2)
  np.testing.assert_allclose(ops.downsample2d(x), _ref_upfirdn_2d(x, 1, 2, (1, 1), 1.0), atol=1e-5)


@pytest.fixture(params=["packed", "phases"])
def resample_form(request, monkeypatch):
  """Runs a test with both formulations of the resampling convs (chosen by input size)."""
  monkeypatch.setattr(ops, "PHASE_SPLIT_MIN_MACS", 2 ** 40 if request.param == "packed" else 0)
  return request.param


@pytest.mark.parametrize("impl", ["xla", "custom", "direct"])
@pytest.mark.parametrize("size", [4, 5])
def test_conv2d_up2_matches_transposed_conv(impl, size, resample_form):
  """Transposed conv (stride 2) as an lhs-dilated conv with the flipped kernel, then the FIR."""
  x, w = _rand((2, size, size, 3), 3), _rand((3, 3, 3, 4), 4)
  t = lax.conv_general_dilated(x, jnp.flip(w, (0, 1)), (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2),
                               dimension_numbers=DIMS, precision=lax.Precision.HIGHEST)
  want = _fir_conv(t, (1, 1), 4.0)
  assert want.shape == (2, 2 * size, 2 * size, 4)
  np.testing.assert_allclose(ops.conv2d_up2(x, w, impl=impl), want, atol=1e-4)


@pytest.mark.parametrize("impl", ["xla", "custom", "direct"])
@pytest.mark.parametrize("size", [8, 6])
def test_conv2d_down2_matches_strided_conv(impl, size, resample_form):
  x, w = _rand((2, size, size, 3), 5), _rand((3, 3, 3, 4), 6)
  want = lax.conv_general_dilated(_fir_conv(x, (2, 2), 1.0), w, (2, 2), "VALID",
                                  dimension_numbers=DIMS, precision=lax.Precision.HIGHEST)
  assert want.shape == (2, size // 2, size // 2, 4)
  np.testing.assert_allclose(ops.conv2d_down2(x, w, impl=impl), want, atol=1e-4)


def _plain_fir_1d(x, taps, axis, pad, down):
  """The filter as shifted slices summed, differentiated by JAX itself: the reference for the
  custom backward of ops.fir_1d."""
  pads = [(0, 0)] * x.ndim
  pads[axis] = pad
  xp = jnp.pad(x, pads)
  n_out = xp.shape[axis] - len(taps) + 1
  out = sum(float(t) * lax.slice_in_dim(xp, i, i + n_out, axis=axis) for i, t in enumerate(taps))
  return lax.slice_in_dim(out, 0, n_out, stride=down, axis=axis)


_STYLEGAN2_TAPS = np.asarray(ops.FIR_TAPS, np.float32) / np.sum(ops.FIR_TAPS)


@pytest.mark.parametrize("n", [5, 6])
@pytest.mark.parametrize("taps,pad,down", [
    # The models' filter, with the paddings and strides they use (and its gains).
    (_STYLEGAN2_TAPS, (2, 2), 1), (2 * _STYLEGAN2_TAPS, (1, 0), 1), (2 * _STYLEGAN2_TAPS, (2, 1), 1),
    (_STYLEGAN2_TAPS, (1, 1), 2),
    # An asymmetric filter (augment's polyphase halves are): the backward reverses the taps.
    ((0.5, -1.25, 2.0), (1, 2), 1), ((0.5, -1.25, 2.0), (0, 1), 2)])
def test_fir_backward_matches_autodiff(n, taps, pad, down):
  """fir_1d's custom backward (the reversed filter on the cotangent, cropped) against JAX's
  autodiff of the plain filter, first and second order."""
  x = _rand((2, n, n + 1, 3), 13)
  ref = lambda x: _plain_fir_1d(x, taps, 1, pad, down)
  got = lambda x: ops.fir_1d(x, taps, 1, pad, down)
  np.testing.assert_allclose(got(x), ref(x), rtol=1e-6, atol=1e-6)
  weighted = lambda y: jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape))
  loss = lambda f: lambda x: weighted(f(x))
  np.testing.assert_allclose(jax.grad(loss(got))(x), jax.grad(loss(ref))(x), rtol=1e-5, atol=1e-5)
  second = lambda f: lambda x: jnp.sum(jnp.square(jax.grad(loss(f))(x)))
  np.testing.assert_allclose(jax.grad(second(got))(x), jax.grad(second(ref))(x), rtol=1e-4, atol=1e-4)


def _loss_fns():
  """(name, f(x, w, impl), x shape): every conv path the models use."""
  return [
      ("conv3x3", lambda x, w, impl: ops.conv2d(x, w, 1, impl=impl), (2, 6, 6, 3)),
      ("conv3x3_asym_pad", lambda x, w, impl: ops.conv2d(x, w, ((2, 0), (0, 1)), impl=impl), (2, 5, 6, 3)),
      ("up2", lambda x, w, impl: ops.conv2d_up2(x, w, impl=impl), (2, 4, 4, 3)),
      ("down2", lambda x, w, impl: ops.conv2d_down2(x, w, impl=impl), (2, 8, 8, 3)),
  ]


@pytest.fixture(params=["whole_batch", "chunked"])
def weight_grad_chunks(request, monkeypatch):
  """The custom weight gradient over the whole batch at once (the tests' shapes are small) and as
  a scan over chunks of one sample (what bench32's large layers take)."""
  if request.param == "chunked":
    monkeypatch.setattr(ops, "WEIGHT_GRAD_CHUNK_ELEMENTS", 1)
  return request.param


def test_weight_grad_chunk_is_the_largest_divisor_that_fits():
  assert ops._weight_grad_chunk(16, 32 * 32 * 3 * 128) == 2  # bench32's D at 32 px: 3 MB chunks
  assert ops._weight_grad_chunk(16, 16 * 16 * 3 * 256) == 4  # 5 samples would fit; 4 divides 16
  assert ops._weight_grad_chunk(16, 4 * 4 * 3 * 256) == 16  # the whole batch: no scan
  assert ops._weight_grad_chunk(6, 2 ** 18) == 3
  assert ops._weight_grad_chunk(5, 2 ** 21) == 1


def _assert_gradients_match_xla(f, shape, impl):
  """The gradients of a loss through ``f`` under ``impl`` against those under 'xla': first order,
  and second order as R1 (grad w.r.t. weights of a squared input-gradient norm) and path length
  (the same with the roles swapped) take it. Returns the loss, for further checks."""
  x, w = _rand(shape, 7), _rand((3, 3, 3, 4), 8)
  loss = lambda x, w, impl: jnp.sum(jnp.sin(f(x, w, impl)))
  for g, r in zip(jax.grad(loss, (0, 1))(x, w, impl), jax.grad(loss, (0, 1))(x, w, "xla")):
    np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-4)
  r1 = lambda w, impl: jnp.sum(jnp.square(jax.grad(loss, 0)(x, w, impl)))
  pl = lambda x, impl: jnp.sum(jnp.square(jax.grad(loss, 1)(x, w, impl)))
  np.testing.assert_allclose(jax.grad(r1)(w, impl), jax.grad(r1)(w, "xla"), atol=1e-3, rtol=1e-4)
  np.testing.assert_allclose(jax.grad(pl)(x, impl), jax.grad(pl)(x, "xla"), atol=1e-3, rtol=1e-4)
  return loss, x, w


@pytest.mark.parametrize("name,f,shape", _loss_fns(), ids=[n for n, _, _ in _loss_fns()])
def test_custom_vjp_gradients_match_xla(name, f, shape, resample_form, weight_grad_chunks):
  _assert_gradients_match_xla(f, shape, "custom")


@pytest.mark.parametrize("name,f,shape", _loss_fns()[2:], ids=[n for n, _, _ in _loss_fns()[2:]])
def test_direct_resampling_gradients_match_phases(name, f, shape, resample_form):
  """'direct' (XLA's strided / transposed convolutions) against the phase forms under XLA's
  gradients: first order, and second order as R1 and path length take it."""
  loss, x, w = _assert_gradients_match_xla(f, shape, "direct")
  direct_convs = [line for line in jax.jit(loss, static_argnums=2).lower(x, w, "direct").as_text().splitlines()
                  if "stablehlo.convolution" in line]
  assert len(direct_convs) == 1 and ("lhs_dilate = [2, 2]" in direct_convs[0]
                                     or "stride = [2, 2]" in direct_convs[0]), direct_convs


def test_second_order_stays_on_custom_path(resample_form):
  """Under grad-of-grad every convolution must be a plain NHWC x HWIO forward one: XLA's own
  gradient rules (other dimension numbers) were 5-10x slower on CPU, and a forward rule that
  called them made R1 and path length 2-5x slower."""
  x, w = _rand((2, 8, 8, 3), 9), _rand((3, 3, 3, 3), 10)

  def loss(x, w):
    y = ops.conv2d(x, w, 1, impl="custom")
    return jnp.sum(jnp.sin(ops.conv2d_down2(ops.conv2d_up2(y, w, impl="custom"), w, impl="custom")))

  r1 = jax.grad(lambda w: jnp.sum(jnp.square(jax.grad(loss, 0)(x, w))))
  pl = jax.grad(lambda x: jnp.sum(jnp.square(jax.grad(loss, 1)(x, w))))
  for fn, arg in ((r1, w), (pl, x)):
    convs = [line for line in jax.jit(fn).lower(arg).as_text().splitlines()
             if "stablehlo.convolution" in line]
    assert convs
    for line in convs:
      assert "dim_numbers = [b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f]" in line, line
      assert "lhs_dilate" not in line or "lhs_dilate = [1, 1]," in line, line


def test_ops_name_their_parts_for_profiles():
  """The compiled program's op_names carry the parts (benchmarks/profile_step.py groups by them)."""
  x, w = _rand((2, 8, 8, 3), 9), _rand((3, 3, 3, 3), 10)
  loss = lambda x, w: jnp.sum(ops.bias_act(ops.conv2d_down2(ops.conv2d(x, w, 1, impl="custom"), w,
                                                            impl="custom"), None, "lrelu"))
  text = jax.jit(jax.grad(loss, (0, 1))).lower(x, w).compile().as_text()
  names = set(re.findall(r'op_name="([^"]+)"', text))
  for scope in ("conv", "conv_input_grad", "conv_weight_grad", "fir", "conv_down2", "bias_act"):
    # A scope is one path component, inside JAX's transformation names: .../transpose(jvp(conv))/...
    assert any(re.search(rf"[/(]{scope}[/)]", n) for n in names), (scope, names)


def test_conv2d_1x1_with_padding():
  x, w = _rand((2, 4, 5, 3), 11), _rand((1, 1, 3, 4), 12)
  want = lax.conv_general_dilated(x, w, (1, 1), ((0, 1), (2, 0)), dimension_numbers=DIMS,
                                  precision=lax.Precision.HIGHEST)
  np.testing.assert_allclose(ops.conv2d(x, w, ((0, 1), (2, 0))), want, atol=1e-5)


def test_resolve_conv_impl():
  assert ops.resolve_conv_impl("auto") == ("custom" if jax.default_backend() == "cpu" else "xla")
  assert ops.resolve_conv_impl("direct") == "direct"
  with pytest.raises(ValueError, match="model.conv_impl must be one of"):
    ops.resolve_conv_impl("fast")
