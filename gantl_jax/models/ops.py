"""Low-level ops of StyleGAN2: one convolution entry point, FIR resampling, bias + activation.

Every convolution of the models goes through :func:`conv2d`, so that its implementation can be
chosen per backend (``conv_impl``):

* ``'xla'``: ``lax.conv_general_dilated`` with XLA's own gradients (right on GPU/TPU).
* ``'custom'``: the same forward, but a hand-written backward (``jax.custom_vjp``). XLA on CPU is
  3-4x slower at convolution *gradients* than at the forward pass; the custom backward expresses
  the input gradient as another forward convolution (which calls :func:`conv2d` again, so that
  second-order gradients such as R1 and path length stay on the fast path) and the weight
  gradient as one matmul per kernel row over shifted views of the input, a cache-sized chunk of
  the batch at a time.
* ``'direct'``: as ``'xla'``, but the resampling convolutions are XLA's own strided and
  transposed (input-dilated) convolutions, the official code's form, for backends whose
  convolution library does those natively (cuDNN). Slow on CPU (XLA's gradients of them).
* ``'auto'``: ``'custom'`` on CPU, ``'xla'`` elsewhere.

Under ``'xla'`` and ``'custom'`` all convolutions are stride 1: strided and transposed
convolutions of StyleGAN2 are written as four stride-1 convolutions, one per phase (see
:func:`conv2d_up2` and :func:`conv2d_down2`), which does the FLOPs of the direct formulation and
keeps every gradient on the CPU's fast path.

Layouts: activations NHWC, kernels HWIO.
"""
from __future__ import annotations

import functools
import math
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Padding = tuple[tuple[int, int], tuple[int, int]]

# The StyleGAN2 low-pass filter, normalised to unit sum per dimension.
FIR_TAPS = (1.0, 3.0, 3.0, 1.0)
LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)

_DIMS = ("NHWC", "HWIO", "NHWC")


def _named(scope: str):
  """Names the ops a function emits (their HLO ``op_name`` gets ``scope``), so that a profile
  can say which kernels are FIR filtering, resampling glue or a convolution's gradients
  (``benchmarks/profile_step.py`` groups by these names). Metadata only: the program is the same."""
  def wrap(fn):
    @functools.wraps(fn)
    def named(*args, **kwargs):
      with jax.named_scope(scope):
        return fn(*args, **kwargs)
    return named
  return wrap


CONV_IMPLS = ("xla", "custom", "direct")


def resolve_conv_impl(conv_impl: str) -> str:
  """Maps ``'auto'`` to the implementation that is fastest on the default backend."""
  if conv_impl == "auto":
    return "custom" if jax.default_backend() == "cpu" else "xla"
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f"model.conv_impl must be one of {('auto',) + CONV_IMPLS}, got {conv_impl!r}")
  return conv_impl


def _conv_xla(x: jax.Array, w: jax.Array, padding: Padding) -> jax.Array:
  return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_DIMS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_custom(x: jax.Array, w: jax.Array, padding: Padding) -> jax.Array:
  return _conv_xla(x, w, padding)


def _conv_custom_fwd(x, w, padding):
  # The primal goes through _conv_custom again, not _conv_xla: under a second-order gradient
  # (R1, path length) JAX differentiates this rule's body, and must meet the custom backward
  # there too, not XLA's slow convolution gradients.
  return _conv_custom(x, w, padding), (x, w)


def _conv_custom_bwd(padding, residuals, dy):
  x, w = residuals
  kh, kw, c_in, c_out = w.shape
  (pt, pb), (pl, pr) = padding
  # Input gradient: a "full" correlation of dy with the spatially flipped, in/out-swapped kernel.
  with jax.named_scope("conv_input_grad"):
    w_t = jnp.flip(w, (0, 1)).swapaxes(2, 3)
    dx = _conv_custom(dy, w_t, ((kh - 1 - pt, kh - 1 - pb), (kw - 1 - pl, kw - 1 - pr)))
  # Weight gradient: per kernel row, one matmul contracting over N*H*W against the row's kw
  # shifted views of x, stacked beside the channels (a concatenation on the channel axis emits
  # 3x slower copies on XLA:CPU). dy is contracted over its leading axis (XLA folds that
  # transpose into the matmul). The batch goes through in chunks, a scan over them, so that each
  # chunk's views (up to 4 MB) stay in the cache between the copy and the matmul: on the bench32
  # step's largest layer, alone, this took the weight gradient from 50 to 24 ms (docs/bench.md). The
  # partial sums are float32 whatever the compute dtype. (XLA's own weight-gradient convolution
  # was 0.4-0.6x as fast alone at 32 px, but 3x slower in the train step: docs/bench.md.)
  with jax.named_scope("conv_weight_grad"):
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    n, hy, wy = dy.shape[:3]
    chunk = _weight_grad_chunk(n, hy * wy * kw * c_in)

    def rows(xp_chunk, dy_chunk):  # [kh, out, kw * in] of one chunk of the batch
      dy_flat = dy_chunk.reshape(-1, c_out)
      out = []
      for a in range(kh):
        row = jnp.stack([xp_chunk[:, a:a + hy, b:b + wy] for b in range(kw)], axis=-2)
        out.append(jnp.matmul(dy_flat.T, row.reshape(-1, kw * c_in), preferred_element_type=jnp.float32))
      return jnp.stack(out)

    if chunk == n:
      dw = rows(xp, dy)
    else:
      def add_chunk(total, chunk_args):
        return total + rows(*chunk_args), None
      dw, _ = lax.scan(add_chunk, jnp.zeros((kh, c_out, kw * c_in), jnp.float32),
                       (xp.reshape(n // chunk, chunk, *xp.shape[1:]), dy.reshape(n // chunk, chunk, *dy.shape[1:])))
    dw = dw.reshape(kh, c_out, kw, c_in).transpose(0, 2, 3, 1)
  return dx, dw.astype(w.dtype)


_conv_custom.defvjp(_conv_custom_fwd, _conv_custom_bwd)

# Elements of one chunk's shifted views in the weight gradient: 4 MB in float32, so that they stay
# in a 32 MB L3 cache beside everything else the step has in flight. In the bench32 step, 4 MB
# chunks ran 3 % faster than 8 MB and 16 MB ones (docs/bench.md).
WEIGHT_GRAD_CHUNK_ELEMENTS = 2 ** 20


def _weight_grad_chunk(n: int, elements_per_sample: int) -> int:
  """The largest divisor of the batch ``n`` whose views fit in WEIGHT_GRAD_CHUNK_ELEMENTS (at least 1)."""
  return max([c for c in range(1, n + 1) if n % c == 0 and c * elements_per_sample <= WEIGHT_GRAD_CHUNK_ELEMENTS]
             or [1])


@_named("conv")
def conv2d(x: jax.Array, w: jax.Array, padding: Padding | int = 0, *, impl: str = "auto") -> jax.Array:
  """Stride-1 2-D cross-correlation, NHWC x HWIO, with explicit (top, bottom), (left, right) padding."""
  if isinstance(padding, int):
    padding = ((padding, padding), (padding, padding))
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  if w.shape[0] == 1 and w.shape[1] == 1:
    # A 1x1 convolution is a matmul (zero padding of the input is zero padding of the output);
    # XLA's dot gradients are fast everywhere.
    y = jnp.einsum("nhwi,io->nhwo", x, w[0, 0])
    return jnp.pad(y, ((0, 0),) + padding + ((0, 0),)) if any(sum(padding, ())) else y
  if resolve_conv_impl(impl) == "custom":
    return _conv_custom(x, w, padding)
  return _conv_xla(x, w, padding)


# ----------------------------------------------------------------------------------------------
# FIR filtering. The [1,3,3,1] filter is separable, so it is applied as shifted adds along H and
# W: cheap elementwise work that XLA fuses, with a backward of the same form.


def fir_1d(x: jax.Array, taps, axis: int, pad: tuple[int, int] = (0, 0), down: int = 1) -> jax.Array:
  """Correlates ``x`` along ``axis`` with the constant ``taps`` (used as given, no normalisation)
  after zero-padding it by ``pad``, keeping every ``down``-th output. For a symmetric filter
  correlation and convolution agree.

  The backward is the same kind of filter: the cotangent (zero-inserted where the forward kept
  every other sample) correlated in full with the reversed taps, then cropped by ``pad``. So it is
  one fused pass of shifted reads like the forward, where JAX's own transpose of the shifted
  slices is one zero-padded copy per tap, summed (bench32's step: 505 -> 460 ms)."""
  return _fir_1d_linear(x, tuple(float(t) for t in taps), axis, tuple(int(p) for p in pad), down,
                        x.shape[axis])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5))
def _fir_1d_linear(x, taps, axis, pad, down, n):
  del n  # the input length, for the backward
  pads = [(0, 0)] * x.ndim
  pads[axis] = pad
  xp = jnp.pad(x, pads)
  n_out = xp.shape[axis] - len(taps) + 1
  out = sum(t * lax.slice_in_dim(xp, i, i + n_out, axis=axis) for i, t in enumerate(taps))
  if down > 1:
    out = lax.slice_in_dim(out, 0, n_out, stride=down, axis=axis)
  return out


def _fir_1d_linear_fwd(x, taps, axis, pad, down, n):
  return _fir_1d_linear(x, taps, axis, pad, down, n), None


def _fir_1d_linear_bwd(taps, axis, pad, down, n, _, g):
  n_full = n + pad[0] + pad[1] - len(taps) + 1  # the filtered length before keeping every down-th
  if down > 1:
    config = [(0, 0, 0)] * g.ndim
    config[axis] = (0, n_full - ((g.shape[axis] - 1) * down + 1), down - 1)
    g = lax.pad(g, jnp.zeros((), g.dtype), config)
  reach = len(taps) - 1
  g = _fir_1d_linear(g, taps[::-1], axis, (reach, reach), 1, n_full)
  return (lax.slice_in_dim(g, pad[0], pad[0] + n, axis=axis),)


_fir_1d_linear.defvjp(_fir_1d_linear_fwd, _fir_1d_linear_bwd)


def _fir_1d(x: jax.Array, axis: int, pad: tuple[int, int], gain: float, down: int = 1) -> jax.Array:
  taps = np.asarray(FIR_TAPS, np.float32)
  return fir_1d(x, taps / taps.sum() * gain, axis, pad, down)


@_named("fir")
def fir_filter(x: jax.Array, pad: tuple[int, int], gain: float = 1.0) -> jax.Array:
  """Pads H and W by ``pad`` and applies the 2-D [1,3,3,1] low-pass filter (total gain ``gain``)."""
  g = math.sqrt(gain)
  return _fir_1d(_fir_1d(x, 1, pad, g), 2, pad, g)


def _zero_insert(x: jax.Array, axis: int) -> jax.Array:
  """x[q] -> y[2q] = x[q], y[2q+1] = 0 along ``axis``."""
  y = jnp.stack([x, jnp.zeros_like(x)], axis=axis + 1)
  shape = list(x.shape)
  shape[axis] *= 2
  return y.reshape(shape)


@_named("fir")
def upsample2d(x: jax.Array) -> jax.Array:
  """2x FIR up-sampling (zero insertion, then the low-pass filter with gain 4), as StyleGAN2."""
  x = _fir_1d(_zero_insert(x, 1), 1, (2, 1), 2.0)
  return _fir_1d(_zero_insert(x, 2), 2, (2, 1), 2.0)


@_named("fir")
def downsample2d(x: jax.Array) -> jax.Array:
  """2x FIR down-sampling (low-pass filter, then every other pixel), as StyleGAN2."""
  x = _fir_1d(x, 1, (1, 1), 1.0, down=2)
  return _fir_1d(x, 2, (1, 1), 1.0, down=2)


# ----------------------------------------------------------------------------------------------
# Resampling convolutions as stride-1 convolutions.

# Both resampling convolutions are split into their four output (up) or input (down) phases.
# Along one dimension a 3-tap kernel k meets the even phase with two taps and the odd phase with
# one, so the four 2-D phases use 2x2, 2x1, 1x2 and 1x1 kernels: 9 taps in all, the FLOPs of the
# direct strided / transposed convolution. (One stride-1 2x2 convolution packing the phases into
# channels does 16 taps for the 9 useful ones, and measured slower.)
#
# Transposed convolution (up), per dimension, on x padded by one each side (xp[j] = x[j-1]):
#   y[2m] = x[m-1] k2 + x[m] k0   -> 2 taps (k2, k0) over xp[m:m+2]
#   y[2m+1] = x[m] k1             -> 1 tap  k1 over xp[m+1]
# for m = 0..h, which gives the 2h+1 outputs plus one trailing zero (y[2h+1], as x[h] is padding).
_UP_TAPS = ((2, 0), (1,))  # kernel indices of the even / odd output phase
_UP_START = (0, 1)         # where that phase's window starts in xp
# Strided correlation (down), per dimension, on u of length 2h+1 with phases ue[j] = u[2j],
# uo[j] = u[2j+1]:  out[m] = ue[m] k0 + ue[m+1] k2 + uo[m] k1.
_DOWN_TAPS = ((0, 2), (1,))  # kernel indices meeting the even / odd input phase


# Below this many multiply-adds per kernel tap (N*H*W*C_in*C_out of the input), the resampling
# convolutions use one phase-packed 2x2 convolution instead of four phase convolutions: it does
# 16 taps for the 9 useful ones, but has fewer ops: with phases everywhere the tiny test model's
# full train step compiled 1.4x slower. (bench32's smallest resampling conv has 2**22.)
PHASE_SPLIT_MIN_MACS = 2 ** 21


# Phase-packed formulation (small inputs). For a 3-tap kernel along one dimension, the stride-2
# transposed convolution gives
#   y[2m] = x[m] k0 + x[m-1] k2,   y[2m+1] = x[m] k1.
# On the input padded by one pixel each side, a 2-tap correlation at m reads (x[m-1], x[m]), so the
# per-phase 2-tap kernels are: even phase (k2, k0), odd phase (0, k1). Index -1 means zero.
_UP_PHASE_TAPS = ((2, 0), (-1, 1))
# For the stride-2 3-tap correlation out[m] = u[2m] k0 + u[2m+1] k1 + u[2m+2] k2 written on the
# space-to-depth input U[j] = (u[2j], u[2j+1]): tap a of the 2x2 kernel reads U[m+a], phase p of it
# is u[2(m+a)+p], which carries kernel index 2a+p (or nothing when that exceeds 2).
_DOWN_PHASE_TAPS = ((0, 1), (2, -1))


def _gather_taps(w: jax.Array, index: np.ndarray) -> jax.Array:
  """w[kh, kw, ...] gathered at a (…, 2) index table of kernel positions, zero where index is -1."""
  ih, iw = index[..., 0], index[..., 1]
  valid = (ih >= 0) & (iw >= 0)
  picked = w[np.maximum(ih, 0), np.maximum(iw, 0)]
  return jnp.where(valid.reshape(valid.shape + (1,) * (w.ndim - 2)), picked, 0)


def _phase_index(tap_of) -> np.ndarray:
  """[a, b, py, px, 2]: kernel position that tap (a, b) meets on phase (py, px), -1 for none.

  ``tap_of(phase, tap)`` is the 1-D kernel index of that (phase, tap) pair, or -1.
  """
  idx = np.zeros((2, 2, 2, 2, 2), np.int64)
  for a in range(2):
    for b in range(2):
      for py in range(2):
        for px in range(2):
          kh, kw = tap_of(py, a), tap_of(px, b)
          idx[a, b, py, px] = (kh, kw) if kh >= 0 and kw >= 0 else (-1, -1)
  return idx


@functools.lru_cache(maxsize=None)
def _up_index() -> np.ndarray:
  return _phase_index(lambda phase, tap: _UP_PHASE_TAPS[phase][tap])


@functools.lru_cache(maxsize=None)
def _down_index() -> np.ndarray:
  return _phase_index(lambda phase, tap: _DOWN_PHASE_TAPS[tap][phase])


def _phase_kernel(w: jax.Array, py: int, px: int, taps) -> jax.Array:
  rows = jnp.stack([w[i] for i in taps[py]])
  return jnp.stack([rows[:, j] for j in taps[px]], axis=1)


def _conv2d_up2_packed(x, w, impl):
  """conv2d_up2 as one stride-1 2x2 convolution whose output channels pack the four phases."""
  n, h, wd, c_in = x.shape
  c_out = w.shape[-1]
  k = _gather_taps(w, _up_index())  # [2, 2, py, px, in, out]
  k = jnp.moveaxis(k, 4, 2).reshape(2, 2, c_in, 4 * c_out)
  y = conv2d(x, k, ((1, 1), (1, 1)), impl=impl)  # [n, h+1, w+1, (py, px, out)]
  y = y.reshape(n, h + 1, wd + 1, 2, 2, c_out).transpose(0, 1, 3, 2, 4, 5)
  y = y.reshape(n, 2 * h + 2, 2 * wd + 2, c_out)
  # y is the 2h+1 transposed-conv output plus one trailing zero row/column, which stands in for
  # the FIR's right padding of 1.
  return fir_filter(y, (1, 0), gain=4.0)


def _conv2d_down2_packed(x, w, impl):
  """conv2d_down2 as one stride-1 2x2 convolution on the space-to-depth input."""
  c_in, c_out = w.shape[2:]
  u = fir_filter(x, (2, 2))  # [n, h+1, w+1, c]
  u = jnp.pad(u, ((0, 0), (0, 1), (0, 1), (0, 0)))  # even size; the extra zeros meet zero taps
  n, hu, wu, _ = u.shape
  u = u.reshape(n, hu // 2, 2, wu // 2, 2, c_in).transpose(0, 1, 3, 2, 4, 5)
  u = u.reshape(n, hu // 2, wu // 2, 4 * c_in)  # channels (py, px, in)
  k = _gather_taps(w, _down_index()).reshape(2, 2, 4 * c_in, c_out)
  return conv2d(u, k, 0, impl=impl)


@_named("conv_up2")
def conv2d_up2(x: jax.Array, w: jax.Array, *, impl: str = "auto") -> jax.Array:
  """StyleGAN2's 3x3 up-sampling convolution: transposed conv (stride 2), then FIR (pad 1, gain 4).

  The transposed convolution is computed as four stride-1 convolutions, one per output phase,
  whose outputs are interleaved (depth-to-space).
  """
  n, h, wd, c_in = x.shape
  kh, kw, _, c_out = w.shape
  if (kh, kw) != (3, 3):
    raise ValueError(f"conv2d_up2 expects a 3x3 kernel, got {w.shape}")
  if resolve_conv_impl(impl) == "direct":
    # The transposed convolution as a correlation of the 2x zero-inserted input with the flipped
    # kernel: 2h+1 outputs, then the FIR with its padding of 1 on each side.
    y = lax.conv_general_dilated(x, jnp.flip(w, (0, 1)), (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2),
                                 dimension_numbers=_DIMS)
    return fir_filter(y, (1, 1), gain=4.0)
  if x.size * c_out < PHASE_SPLIT_MIN_MACS:
    return _conv2d_up2_packed(x, w, impl)
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  phases = [[conv2d(xp[:, _UP_START[py]:, _UP_START[px]:], _phase_kernel(w, py, px, _UP_TAPS), 0,
                    impl=impl) for px in range(2)] for py in range(2)]  # each [n, h+1, w+1, out]
  y = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)  # [n, h+1, py, w+1, px, out]
  y = y.reshape(n, 2 * h + 2, 2 * wd + 2, c_out)
  # y is the 2h+1 transposed-conv output plus one trailing zero row/column, which stands in for
  # the FIR's right padding of 1.
  return fir_filter(y, (1, 0), gain=4.0)


@_named("conv_down2")
def conv2d_down2(x: jax.Array, w: jax.Array, *, impl: str = "auto") -> jax.Array:
  """StyleGAN2's 3x3 down-sampling convolution: FIR (pad 2), then a stride-2 3x3 convolution.

  The strided convolution is computed as the sum of four stride-1 convolutions, one per phase of
  the filtered input (space-to-depth).
  """
  kh, kw, c_in, c_out = w.shape
  if (kh, kw) != (3, 3):
    raise ValueError(f"conv2d_down2 expects a 3x3 kernel, got {w.shape}")
  if resolve_conv_impl(impl) == "direct":
    return lax.conv_general_dilated(fir_filter(x, (2, 2)), w, (2, 2), "VALID", dimension_numbers=_DIMS)
  if x.size * c_out < PHASE_SPLIT_MIN_MACS:
    return _conv2d_down2_packed(x, w, impl)
  u = fir_filter(x, (2, 2))  # [n, 2h+1, 2w+1, c]
  out = None
  for py in range(2):
    for px in range(2):
      y = conv2d(u[:, py::2, px::2], _phase_kernel(w, py, px, _DOWN_TAPS), 0, impl=impl)
      out = y if out is None else out + y
  return out


@_named("bias_act")
def bias_act(x: jax.Array, bias: jax.Array | None, act: str = "linear", gain: float = 1.0,
             clamp: float | None = None) -> jax.Array:
  """Adds a per-channel bias (last axis), applies ``act`` times its gain and ``gain``, clamps."""
  if bias is not None:
    x = x + bias
  if act == "lrelu":
    x = jax.nn.leaky_relu(x, LRELU_SLOPE)
    gain = gain * LRELU_GAIN
  elif act != "linear":
    raise ValueError(f"unknown activation {act!r}")
  if gain != 1.0:
    x = x * gain
  if clamp is not None:
    x = jnp.clip(x, -clamp, clamp)
  return x


def normalize_2nd_moment(x: jax.Array, axis: int = -1, eps: float = 1e-8) -> jax.Array:
  return x * lax.rsqrt(jnp.mean(jnp.square(x), axis=axis, keepdims=True) + eps)

