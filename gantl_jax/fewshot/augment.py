"""Discriminator augmentation as pure functions: ADA's pipeline and controller, and DiffAugment.

Every image D sees in training, real or generated, goes through :func:`make`'s function first
(G main, D main and R1, see ``steps.py``). Randomness comes from one key per example, which the
step derives from the *global* example index, so a batch is augmented the same on 1 or N devices.

**ADA** (Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data"): each
op of the pipeline (``'bgc'``: x-flip, rotation by quarter turns, integer translation, isotropic
scale, arbitrary rotation, anisotropic scale, fractional translation, brightness, contrast, luma
flip, hue, saturation) is applied to each image with probability p, with the strengths of
stylegan2-ada-pytorch. As there, the geometric ops of an image compose into one 3x3 matrix and the
colour ops into one 4x4 matrix, so an image costs one resampling and one matrix product whatever
the number of ops. The resampling does not leak: the image is extended by reflection, upsampled
2x, sampled bilinearly through the matrix and low-passed back to its size (:func:`warp`). Images
whose matrix is the identity are returned unchanged, bit for bit, and a batch in which no image
moves skips the resampling altogether (so p = 0 costs nothing and changes nothing).

The 2x up/down filters are the symmetric CDF 9/7 biorthogonal pair (JPEG 2000's wavelet), where
the official code uses the orthogonal 'sym6' wavelet: both make down(up(x)) = x, so the ops that
map pixels onto pixels (flips, quarter turns, integer shifts) are exact, and symmetry also lets
the reflection be done by folding sample coordinates instead of padding the image by its size.

**The controller** (:func:`ada_update`) moves p by sign(r_t - target) * batch * interval /
(ada_kimg * 1000) every ``ada_interval`` steps, where r_t = E[sign(D(real))] over those steps;
p and its accumulators live in the state's ``extras`` (:func:`initial_extras`). With CDC's patch
discriminator, r_t counts the image-level (anchor) steps only.

**DiffAugment** (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN
Training"): the policies ``color`` (brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5]),
``translation`` (up to 1/8 of the size, zero fill) and ``cutout`` (a square of half the size),
each applied to every image.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from gantl_jax import errors
from gantl_jax.fewshot import cdc
from gantl_jax.models import ops as model_ops

Array = jax.Array
# images [N, H, W, C], one key per example [N], p (scalar; ignored by DiffAugment) -> images
AugmentFn = Callable[[Array, Array, Any], Array]

KINDS = ("none", "ada", "fixed", "diffaug")

# ADA's ops, by group, in the order the official pipeline applies them.
BLIT = ("xflip", "rotate90", "xint")
GEOM = ("scale", "rotate", "aniso", "xfrac")
COLOR = ("brightness", "contrast", "lumaflip", "hue", "saturation")
GEOMETRIC = BLIT + GEOM
PIPELINES = {"blit": BLIT, "geom": GEOM, "color": COLOR, "bg": BLIT + GEOM, "bgc": BLIT + GEOM + COLOR}

# The strengths of stylegan2-ada-pytorch's AugmentPipe defaults.
XINT_MAX = 0.125       # integer translation: uniform in +-12.5% of the size, rounded to pixels
SCALE_STD = 0.2        # isotropic scale: 2 ** N(0, 0.2^2)
ROTATE_MAX = 1.0       # arbitrary rotation: uniform in +-pi * ROTATE_MAX
ANISO_STD = 0.2        # anisotropic scale: x by 2 ** N(0, 0.2^2), y by its inverse
XFRAC_STD = 0.125      # fractional translation: N(0, 0.125^2) of the size
BRIGHTNESS_STD = 0.2   # brightness: + N(0, 0.2^2)
CONTRAST_STD = 0.5     # contrast: x 2 ** N(0, 0.5^2)
HUE_MAX = 1.0          # hue: rotation about the luma axis, uniform in +-pi * HUE_MAX
SATURATION_STD = 1.0   # saturation: off-luma part x 2 ** N(0, 1)

DIFFAUG_POLICIES = ("color", "translation", "cutout")
DIFFAUG_TRANSLATION = 1 / 8  # largest shift, as a fraction of the size
DIFFAUG_CUTOUT = 1 / 2       # side of the cut-out square, as a fraction of the size

# All the random numbers of one image come from one vector of uniforms (and, for ADA, one of
# normals) drawn from its key, each op reading fixed slots: an op's numbers do not depend on which
# other ops are on, and the program generates random bits once or twice per image rather than
# several times per op. (Per-op draws, repeated in the four places D sees images and traced under
# vmap, made the random-number code most of the step's compile time.)
_ADA_UNIFORM = {name: i for i, name in enumerate((
    "xflip", "xflip_coin", "rotate90", "rotate90_turns", "xint", "xint_x", "xint_y", "scale",
    "rotate", "rotate_angle", "aniso", "rotate_post", "rotate_post_angle", "xfrac", "brightness",
    "contrast", "lumaflip", "lumaflip_coin", "hue", "hue_angle", "saturation"))}
_ADA_NORMAL = {name: i for i, name in enumerate((
    "scale", "aniso", "xfrac_x", "xfrac_y", "brightness", "contrast", "saturation"))}
_DIFFAUG_UNIFORM = {name: i for i, name in enumerate((
    "brightness", "saturation", "contrast", "translation_y", "translation_x", "cutout_y", "cutout_x"))}


# ----------------------------------------------------------------------------------------------
# Config and state.


def diffaug_policy(text: str) -> tuple[str, ...]:
  """'color,translation' -> ('color', 'translation'); blanks ignored, order kept."""
  return tuple(p.strip() for p in text.split(",") if p.strip())


def initial_extras(cfg: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """The statistics the step keeps in the state's ``extras`` for augmentation config ``cfg``
  (``config.augment``): ADA's p (starting at
  ``augment.p``) and the sum and count of the sign means since its last adjustment. Empty unless
  ``kind='ada'``, so that other runs keep the state layout (and checkpoints) they had."""
  if cfg.kind != "ada":
    return {}
  return {"aug_p": np.float32(cfg.p), "ada_sign_sum": np.float32(0.0), "ada_count": np.int32(0)}


def probability(cfg: ml_collections.ConfigDict, extras: dict[str, Array]) -> Any:
  """The ADA probability a step augments with: the state's p ('ada'), the constant ``augment.p``
  ('fixed'), or None."""
  if cfg.kind == "ada":
    return extras["aug_p"]
  return cfg.p if cfg.kind == "fixed" else None


def ada_update(extras: dict[str, Array], real_sign: Array, global_batch: int,
               cfg: ml_collections.ConfigDict, *, counted: bool = True,
               count_every: int = 1) -> tuple[dict[str, Array], Array]:
  """One step of ADA's controller, as in stylegan2-ada-pytorch's training loop.

  ``real_sign`` is this step's E[sign(D(real))] over the global batch (already averaged over
  every device and host). It is accumulated; every ``cfg.ada_interval`` counted steps, r_t is the
  mean over those steps and p moves by sign(r_t - ada_target) * global_batch * count_every *
  interval / (ada_kimg * 1000), clipped to [0, 1], and the accumulators restart. Returns the new
  extras and r_t (NaN on steps that did not adjust p, so that a log line's nanmean is the mean of
  the r_t it saw).

  ``counted=False`` leaves the accumulators as they are: ada_target is a level of image logits,
  so with CDC's patch discriminator only its image-level steps, one in ``count_every``, feed r_t,
  and p still moves by the images of all the steps between two adjustments.
  """
  sign_sum, count = extras["ada_sign_sum"], extras["ada_count"]
  if counted:
    sign_sum, count = sign_sum + real_sign.astype(jnp.float32), count + 1
  due = count >= cfg.ada_interval
  rt = sign_sum / jnp.maximum(count, 1).astype(jnp.float32)
  rate = global_batch * count_every * cfg.ada_interval / (cfg.ada_kimg * 1000)
  p = extras["aug_p"]
  p = jnp.where(due, jnp.clip(p + jnp.sign(rt - cfg.ada_target) * rate, 0.0, 1.0), p)
  new = {**extras, "aug_p": p.astype(jnp.float32),
         "ada_sign_sum": jnp.where(due, 0.0, sign_sum).astype(jnp.float32),
         "ada_count": jnp.where(due, 0, count).astype(jnp.int32)}
  return new, jnp.where(due, rt, jnp.nan)


def ada_enabled(config: ml_collections.ConfigDict) -> bool:
  """Whether D sees images through ADA's pipeline (``augment.kind`` 'ada' or 'fixed')."""
  return config.augment.kind in ("ada", "fixed")


def diffaug_enabled(config: ml_collections.ConfigDict) -> bool:
  """Whether D sees images through DiffAugment (``augment.kind='diffaug'``)."""
  return config.augment.kind == "diffaug"


def method_extras(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """:func:`initial_extras` of the run's augmentation."""
  return initial_extras(config.augment)


def d_view(ctx, images: Array, keys: Array) -> Array:
  """What D sees of ``images`` on the step of ``ctx`` (``methods.StepContext``): augmented with
  one key per image, with the state's (ADA) or the constant ('fixed') probability."""
  cfg = ctx.config.augment
  return make(cfg)(images, keys, probability(cfg, ctx.state.extras))


def after_step(ctx, extras: dict[str, Array], metrics: dict[str, Array]) -> tuple[dict, dict]:
  """ADA's controller at the end of the step of ``ctx``, on D main's sign of the (augmented) reals'
  logits, already a global mean; and the p the step augmented with, logged as ``aug_p``. Its
  target is a level of image logits: steps whose D judges patches (CDC's) do not count."""
  cfg = ctx.config.augment
  out = {}
  if cfg.kind == "ada":
    extras, out["ada_rt"] = ada_update(extras, metrics["real_sign"], ctx.global_batch, cfg,
                                       counted=not ctx.patch, count_every=cdc.anchor_interval(ctx.config) or 1)
  out["aug_p"] = jnp.asarray(extras.get("aug_p", probability(cfg, ctx.state.extras)), jnp.float32)
  return extras, out


def make(cfg: ml_collections.ConfigDict) -> Optional[AugmentFn]:
  """``augment(images, keys, p)`` for ``config.augment``, or None for ``kind='none'`` (then the
  step adds nothing). ``keys`` holds one key per image; ``p`` comes from :func:`probability`."""
  if cfg.kind == "none":
    return None
  if cfg.kind == "diffaug":
    policy = diffaug_policy(cfg.diffaug_policy)
    return lambda images, keys, p: diffaugment(images, keys, policy)
  return functools.partial(ada, ops=PIPELINES[cfg.pipeline])


# ----------------------------------------------------------------------------------------------
# ADA: the random matrices.


def _mm(a: Array, b: Array) -> Array:
  # Full float32 precision: on GPU the default may be TF32, which would shift sample positions
  # of a 256 px image by a fraction of a pixel.
  return jnp.matmul(a, b, precision=lax.Precision.HIGHEST)


def _matrix(*rows) -> Array:
  return jnp.stack([jnp.stack([jnp.asarray(v, jnp.float32) for v in row]) for row in rows])


def _translate2d(tx, ty) -> Array:
  return _matrix([1, 0, tx], [0, 1, ty], [0, 0, 1])


def _scale2d(sx, sy) -> Array:
  return _matrix([sx, 0, 0], [0, sy, 0], [0, 0, 1])


def _rotate2d(c, s) -> Array:
  """Rotation with cosine ``c`` and sine ``s``."""
  return _matrix([c, -s, 0], [s, c, 0], [0, 0, 1])


class Draws(NamedTuple):
  """ADA's random numbers for one image (or, with a leading axis, a batch): read by name."""
  uniform: Array  # U[0, 1), one per name of _ADA_UNIFORM
  normal: Array   # N(0, 1), one per name of _ADA_NORMAL

  def u(self, name: str) -> Array:
    return self.uniform[..., _ADA_UNIFORM[name]]

  def z(self, name: str) -> Array:
    return self.normal[..., _ADA_NORMAL[name]]


def draws(key: Array) -> Draws:
  """ADA's random numbers for the image of ``key``."""
  k_u, k_z = jax.random.split(key)
  return Draws(jax.random.uniform(k_u, (len(_ADA_UNIFORM),)),
               jax.random.normal(k_z, (len(_ADA_NORMAL),)))


def geometric_matrix(d: Draws, p, ops: Sequence[str], height: int, width: int) -> Array:
  """One image's geometric ops as a 3x3 matrix from output to input pixel coordinates (pixel
  centres, origin at the image centre, x right, y down), from its :func:`draws`. Ops not drawn
  contribute an exact identity, so an image that no op touched has exactly the identity."""
  g = jnp.eye(3, dtype=jnp.float32)
  one = jnp.float32(1)
  if "xflip" in ops:
    flip = jnp.where((d.u("xflip") < p) & (d.u("xflip_coin") < 0.5), -one, one)
    g = _mm(g, _scale2d(flip, one))
  if "rotate90" in ops:
    quarter = jnp.minimum(jnp.floor(d.u("rotate90_turns") * 4), 3).astype(jnp.int32)
    quarter = jnp.where(d.u("rotate90") < p, quarter, 0)
    # From tables, not cos/sin of multiples of pi/2, which are not exactly 0 and +-1 in float.
    cos = jnp.asarray([1, 0, -1, 0], jnp.float32)[quarter]
    sin = jnp.asarray([0, 1, 0, -1], jnp.float32)[quarter]
    g = _mm(g, _rotate2d(cos, sin))
  if "xint" in ops:
    t = (jnp.stack([d.u("xint_x"), d.u("xint_y")]) * 2 - 1) * XINT_MAX
    t = jnp.where(d.u("xint") < p, t, 0.0)
    g = _mm(g, _translate2d(-jnp.round(t[0] * width), -jnp.round(t[1] * height)))
  if "scale" in ops:
    s = jnp.where(d.u("scale") < p, jnp.exp2(d.z("scale") * SCALE_STD), one)
    g = _mm(g, _scale2d(1 / s, 1 / s))
  # Arbitrary rotation happens before and after the anisotropic scale, each with the probability
  # that makes "either" happen with probability p.
  p_rot = 1 - jnp.sqrt(jnp.clip(1 - jnp.asarray(p, jnp.float32), 0, 1))

  def rotation(name):
    theta = (d.u(f"{name}_angle") * 2 - 1) * math.pi * ROTATE_MAX
    theta = jnp.where(d.u(name) < p_rot, theta, 0.0)
    return _rotate2d(jnp.cos(-theta), jnp.sin(-theta))

  if "rotate" in ops:
    g = _mm(g, rotation("rotate"))
  if "aniso" in ops:
    s = jnp.where(d.u("aniso") < p, jnp.exp2(d.z("aniso") * ANISO_STD), one)
    g = _mm(g, _scale2d(1 / s, s))
  if "rotate" in ops:
    g = _mm(g, rotation("rotate_post"))
  if "xfrac" in ops:
    t = jnp.where(d.u("xfrac") < p, jnp.stack([d.z("xfrac_x"), d.z("xfrac_y")]) * XFRAC_STD, 0.0)
    g = _mm(g, _translate2d(-t[0] * width, -t[1] * height))
  return g


# The luma axis of RGB (the homogeneous coordinate last).
_LUMA = np.asarray([1, 1, 1, 0], np.float32) / np.sqrt(3)


def color_matrix(d: Draws, p, ops: Sequence[str]) -> Array:
  """One image's colour ops as a 4x4 matrix on homogeneous RGB (rgb_out = C[:3, :3] rgb_in +
  C[:3, 3]), from its :func:`draws`. Ops not drawn contribute an exact identity."""
  c = jnp.eye(4, dtype=jnp.float32)
  eye = jnp.eye(4, dtype=jnp.float32)
  vv = jnp.asarray(np.outer(_LUMA, _LUMA))
  if "brightness" in ops:
    b = jnp.where(d.u("brightness") < p, d.z("brightness") * BRIGHTNESS_STD, 0.0)
    c = _mm(eye.at[:3, 3].set(b), c)
  if "contrast" in ops:
    s = jnp.where(d.u("contrast") < p, jnp.exp2(d.z("contrast") * CONTRAST_STD), 1.0)
    c = _mm(jnp.diag(jnp.stack([s, s, s, jnp.float32(1)])), c)
  if "lumaflip" in ops:
    flip = ((d.u("lumaflip") < p) & (d.u("lumaflip_coin") < 0.5)).astype(jnp.float32)
    c = _mm(eye - 2 * vv * flip, c)  # Householder reflection of the luma component
  if "hue" in ops:
    theta = jnp.where(d.u("hue") < p, (d.u("hue_angle") * 2 - 1) * math.pi * HUE_MAX, 0.0)
    c = _mm(_rotate_about_luma(theta), c)
  if "saturation" in ops:
    s = jnp.where(d.u("saturation") < p, jnp.exp2(d.z("saturation") * SATURATION_STD), 1.0)
    sat = vv + (eye - vv) * s
    c = _mm(sat.at[3, 3].set(1.0), c)
  return c


def _rotate_about_luma(theta: Array) -> Array:
  """4x4 rotation by ``theta`` about the luma axis (Rodrigues' formula on the RGB part)."""
  v = jnp.asarray(_LUMA[:3])
  cross = jnp.asarray([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]], jnp.float32)
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  # At theta = 0 this is exactly the identity: cos 0 = 1 and sin 0 = 0 in float.
  r = cos * jnp.eye(3) + sin * cross + (1 - cos) * jnp.outer(v, v)
  return jnp.eye(4, dtype=jnp.float32).at[:3, :3].set(r)


# ----------------------------------------------------------------------------------------------
# ADA: applying the matrices.


@functools.lru_cache(maxsize=None)
def resampling_filters() -> tuple[np.ndarray, np.ndarray]:
  """The CDF 9/7 biorthogonal low-pass pair (up: 7 taps summing to 2; down: 9 taps summing to
  1), both symmetric, with down(up(x)) = x.

  Derived here rather than copied: the maximally flat half-band filter with 8 zeros at z = -1
  (its taps are Lagrange interpolation weights at 0 from the nodes +-1/2, +-3/2, ...) is the
  product of the two; dividing out its zeros at -1 leaves a sixth-degree polynomial whose real
  root pair goes to the up filter and whose complex quadruplet goes to the down filter, with
  four zeros at -1 each.
  """
  order = 4
  nodes = (np.arange(-(2 * order - 1), 2 * order, 2)) / 2.0
  halfband = np.zeros(4 * order - 1)
  halfband[2 * order - 1] = 1.0
  for j, x in enumerate(nodes):
    halfband[2 * j] = np.prod([-y / (x - y) for y in nodes if y != x])
  rest = halfband
  for _ in range(2 * order):
    rest, _ = np.polydiv(rest, [1.0, 1.0])
  roots = np.roots(rest)
  real = roots[np.abs(roots.imag) < 1e-9].real
  quad = roots[np.abs(roots.imag) >= 1e-9]

  def poly(rs):
    out = np.array([1.0])
    for _ in range(order):
      out = np.convolve(out, [1.0, 1.0])
    for r in rs:
      out = np.convolve(out, [1.0, -r])
    return np.real(out)

  up, down = poly(real), poly(quad)
  up, down = up * 2 / up.sum(), down / down.sum()
  for taps in (up, down):
    taps.setflags(write=False)  # cached: shared by every caller
  return up, down


def _fold(k: Array, size: int) -> Array:
  """Positions on a grid of ``size`` samples reflected into [0, size - 1] (mirror about the end
  samples, as 'reflect' padding), for any distance outside."""
  period = 2 * (size - 1)
  k = jnp.mod(k, period)
  return jnp.minimum(k, period - k)


def _interleave(even: Array, odd: Array, axis: int) -> Array:
  """even[i] -> out[2i], odd[i] -> out[2i+1]; ``odd`` is one shorter along ``axis``."""
  pad = [(0, 0)] * odd.ndim
  pad[axis] = (0, 1)
  both = jnp.stack([even, jnp.pad(odd, pad)], axis=axis + 1)
  shape = list(even.shape)
  shape[axis] *= 2
  return lax.slice_in_dim(both.reshape(shape), 0, shape[axis] - 1, axis=axis)


def _upsample(x: Array) -> Array:
  """[N, H, W, C] -> [N, 2H-1, 2W-1, C]: samples at every half pixel from the first to the last
  pixel centre (even ones at the pixels), by the up filter on the reflection-extended image."""
  up, _ = resampling_filters()
  # Polyphase: the 7 taps at offsets -3..3 split into the even offsets (-2, 0, 2: sample 2i from
  # x[i-1..i+1]) and the odd ones (-3, -1, 1, 3: sample 2i+1 from x[i-1..i+2]); no zeros inserted.
  even_taps, odd_taps = up[1::2], up[0::2]
  for axis in (1, 2):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 1)
    xp = jnp.pad(x, pad, mode="reflect")
    x = _interleave(model_ops.fir_1d(xp, even_taps, axis), model_ops.fir_1d(xp, odd_taps, axis), axis)
  return x


def warp(images: Array, g_inv: Array) -> Array:
  """Resamples each image [N, H, W, C] through its 3x3 matrix ``g_inv`` (output pixel ->
  input pixel, as :func:`geometric_matrix`), without leaking: the image is extended by
  reflection, upsampled 2x, sampled bilinearly at the transformed positions of a 2x grid
  (reflected back into the image), then low-passed and decimated to H x W. An exact resampling
  for matrices that map pixels onto pixels (flips, quarter turns, integer shifts)."""
  n, h, w, c = images.shape
  _, down = resampling_filters()
  halo = len(down) // 2  # the down filter reaches this many 2x samples beyond the image
  u = _upsample(images.astype(jnp.float32))
  hu, wu = 2 * h - 1, 2 * w - 1
  # The output's 2x grid, with the halo the down filter needs, in pixel units about the centre.
  ky = jnp.arange(-halo, hu + halo, dtype=jnp.float32)[:, None] / 2 - (h - 1) / 2
  kx = jnp.arange(-halo, wu + halo, dtype=jnp.float32)[None, :] / 2 - (w - 1) / 2

  def sample(u_i, g):
    # Element-wise products, not a matmul: full float32 precision on every backend.
    x_in = (g[0, 0] * kx + g[0, 1] * ky + g[0, 2] + (w - 1) / 2) * 2
    y_in = (g[1, 0] * kx + g[1, 1] * ky + g[1, 2] + (h - 1) / 2) * 2
    x_in, y_in = _fold(x_in, wu), _fold(y_in, hu)
    x0 = jnp.clip(jnp.floor(x_in), 0, wu - 2)
    y0 = jnp.clip(jnp.floor(y_in), 0, hu - 2)
    fx, fy = (x_in - x0)[..., None], (y_in - y0)[..., None]
    flat = u_i.reshape(hu * wu, c)
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    at = lambda yy, xx: jnp.take(flat, yy * wu + xx, axis=0)
    top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
    bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy

  v = jax.vmap(sample)(u, g_inv.astype(jnp.float32))
  for axis in (1, 2):
    v = model_ops.fir_1d(v, down, axis, down=2)
  return v.astype(images.dtype)


def apply_color(images: Array, c: Array) -> Array:
  """rgb -> C[:3, :3] rgb + C[:3, 3] per image, for 4x4 matrices ``c`` [N, 4, 4]."""
  out = jnp.einsum("nij,nhwj->nhwi", c[:, :3, :3], images, precision=lax.Precision.HIGHEST)
  return out + c[:, None, None, :3, 3]


def _is_identity(m: Array) -> Array:
  """[N, k, k] -> [N] bool: exactly the identity."""
  return jnp.all(m == jnp.eye(m.shape[-1], dtype=m.dtype), axis=(1, 2))


def ada(images: Array, keys: Array, p, *, ops: Sequence[str] = PIPELINES["bgc"]) -> Array:
  """ADA's augmentation of a batch [N, H, W, 3] with probability ``p`` per op and image.

  ``keys`` [N] gives each image its randomness; ``ops`` the ops of the pipeline (default
  'bgc'). Images that no op touched come back bit for bit; when no image of the batch has a
  geometric op the resampling is skipped (``lax.cond``), as it always is at p = 0.
  """
  _, h, w, _ = images.shape
  geometric = [o for o in ops if o in GEOMETRIC]
  colour = [o for o in ops if o in COLOR]
  d = jax.vmap(draws)(keys)
  if geometric:
    g = jax.vmap(lambda d: geometric_matrix(d, p, geometric, h, w))(d)
    moved = ~_is_identity(g)
    images = lax.cond(
        jnp.any(moved),
        lambda x: jnp.where(moved[:, None, None, None], warp(x, g), x),
        lambda x: x, images)
  if colour:
    c = jax.vmap(lambda d: color_matrix(d, p, colour))(d)
    images = jnp.where(_is_identity(c)[:, None, None, None], images, apply_color(images, c))
  return images


# ----------------------------------------------------------------------------------------------
# DiffAugment.


def _diffaug_uniform(keys: Array) -> Array:
  """DiffAugment's U[0, 1) numbers, [N, len(_DIFFAUG_UNIFORM)]: one draw per image."""
  return jax.vmap(lambda k: jax.random.uniform(k, (len(_DIFFAUG_UNIFORM),)))(keys)


def _per_image(u: Array, name: str) -> Array:
  return u[:, _DIFFAUG_UNIFORM[name], None, None, None]


def _integers(u: Array, name: str, low: int, high: int) -> Array:
  """Integers uniform in [low, high) from the slot ``name`` of ``u``, [N]."""
  n = high - low
  return low + jnp.minimum(jnp.floor(u[:, _DIFFAUG_UNIFORM[name]] * n), n - 1).astype(jnp.int32)


def diffaug_color(images: Array, keys: Array) -> Array:
  """Brightness + U[-0.5, 0.5), saturation x U[0, 2), contrast x U[0.5, 1.5), in that order."""
  u = _diffaug_uniform(keys)
  x = images + (_per_image(u, "brightness") - 0.5)
  mean = jnp.mean(x, axis=3, keepdims=True)
  x = (x - mean) * (_per_image(u, "saturation") * 2) + mean
  mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  return (x - mean) * (_per_image(u, "contrast") + 0.5) + mean


def diffaug_translation(images: Array, keys: Array, ratio: float = DIFFAUG_TRANSLATION) -> Array:
  """Shifts each image by whole pixels, up to ``ratio`` of its size each way (rounded), filling
  with zeros: out[y, x] = in[y + ty, x + tx]."""
  _, h, w, c = images.shape
  sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
  u = _diffaug_uniform(keys)
  shift = jnp.stack([_integers(u, "translation_y", -sy, sy + 1),
                     _integers(u, "translation_x", -sx, sx + 1)], axis=1)
  padded = jnp.pad(images, ((0, 0), (sy, sy), (sx, sx), (0, 0)))
  return jax.vmap(lambda x, t: lax.dynamic_slice(x, (sy + t[0], sx + t[1], 0), (h, w, c)))(padded, shift)


def diffaug_cutout(images: Array, keys: Array, ratio: float = DIFFAUG_CUTOUT) -> Array:
  """Zeroes a square of ``ratio`` of the size (rounded) in each image, clipped at the borders;
  as the official code, its centre is uniform in [0, size + (1 - side % 2)) and its first row
  and column are centre - side // 2."""
  _, h, w, _ = images.shape
  ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
  u = _diffaug_uniform(keys)
  centre = jnp.stack([_integers(u, "cutout_y", 0, h + (1 - ch % 2)),
                      _integers(u, "cutout_x", 0, w + (1 - cw % 2))], axis=1)
  y = jnp.arange(h)[None, :, None]
  x = jnp.arange(w)[None, None, :]
  top = (centre[:, 0] - ch // 2)[:, None, None]
  left = (centre[:, 1] - cw // 2)[:, None, None]
  inside = (y >= top) & (y < top + ch) & (x >= left) & (x < left + cw)
  return images * (~inside)[..., None].astype(images.dtype)


_DIFFAUG_OPS = {"color": diffaug_color, "translation": diffaug_translation, "cutout": diffaug_cutout}


def diffaugment(images: Array, keys: Array, policy: Sequence[str] = DIFFAUG_POLICIES) -> Array:
  """DiffAugment of a batch [N, H, W, C] with the named policies, in the order given."""
  for name in policy:
    images = _DIFFAUG_OPS[name](images, keys)
  return images


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the ``augment.*`` key that cannot work; resolves ``ada_kimg`` 'auto'
  (-1), in place."""
  a = config.augment
  choices = lambda names: ", ".join(map(repr, names))
  if a.kind not in KINDS:
    raise errors.ConfigError(f"augment.kind must be one of {choices(KINDS)}, got {a.kind!r}")
  if not 0 <= a.p <= 1:
    raise errors.ConfigError(f"augment.p must be in [0, 1], got {a.p}")
  if a.pipeline not in PIPELINES:
    raise errors.ConfigError(f"augment.pipeline must be one of {choices(PIPELINES)}, got {a.pipeline!r}")
  if not -1 <= a.ada_target <= 1:
    raise errors.ConfigError(f"augment.ada_target must be in [-1, 1] (a mean of signs), got {a.ada_target}")
  if a.ada_interval < 1:
    raise errors.ConfigError(f"augment.ada_interval must be >= 1, got {a.ada_interval}")
  if not (a.ada_kimg > 0 or a.ada_kimg == -1):
    raise errors.ConfigError(f"augment.ada_kimg must be positive, or -1 for 500 (100 with "
                             f"transfer.source), got {a.ada_kimg}")
  policy = diffaug_policy(a.diffaug_policy)
  unknown = [p for p in policy if p not in DIFFAUG_POLICIES]
  if unknown:
    raise errors.ConfigError(f"augment.diffaug_policy has unknown policies {unknown}; use a "
                             f"comma-separated list of {choices(DIFFAUG_POLICIES)}")
  if a.kind == "diffaug" and not policy:
    raise errors.ConfigError(f"augment.diffaug_policy is empty; name at least one of "
                             f"{choices(DIFFAUG_POLICIES)} (or set augment.kind='none')")
  # As stylegan2-ada-pytorch: p reacts 5x faster when adapting a pretrained network. Resolved for
  # 'ada' only, so that other runs' configs stay what they were before augmentation existed.
  if a.kind == "ada" and a.ada_kimg == -1:
    a.ada_kimg = 100.0 if config.transfer.source != "" else 500.0
