"""StyleGAN2 generator (mapping + skip synthesis) and residual discriminator in Flax linen.

The networks follow StyleGAN2 (Karras et al. 2020, config F) in the form of stylegan2-ada-pytorch,
and store every weight exactly as that implementation does (unit-scale weights; equalised learning
rate applied at run time; the same initialisation), only transposed to JAX layouts: dense weights
(in, out), conv kernels HWIO, the 4x4 constant HWC. This makes importing official weights a
transpose and nothing else.

Parameter paths are part of the public API (transfer, freezing and weight import use them):

Generator ``{'params', 'buffers'}``::

  mapping/fc{i}/{weight,bias}
  synthesis/b4/const
  synthesis/b{R}/conv0/...           (R > 4: the up-sampling conv)
  synthesis/b{R}/conv1/{weight,bias,noise_strength,affine/weight,affine/bias}
  synthesis/b{R}/torgb/{weight,bias,affine/weight,affine/bias}
  buffers: mapping/w_avg, synthesis/b{R}/conv{0,1}/noise_const

Discriminator ``{'params'}``::

  b{R}/fromrgb/{weight,bias}         (the highest resolution only)
  b{R}/conv0, b{R}/conv1/{weight,bias}, b{R}/skip/weight
  b4/conv, b4/fc, b4/out/{weight,bias}
  patch_head/{weight,bias}           (only with ``patch_resolution`` > 0: CDC's patch logits)

A block is named by the resolution it works at, so a 256 px and a 1024 px model share the names
of their common blocks.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections

from gantl_jax.models import ops
from gantl_jax.resolutions import (block_resolutions, channels_at, low_precision_blocks, num_ws,
                                    resolution_problem)

Array = jax.Array
Dtype = Any
NOISE_MODES = ("random", "const", "none")
# The Flax collection that blocks ``sow`` their outputs into (see :func:`apply_with_features`).
FEATURES = "intermediates"
# The discriminator's patch-logit head (CDC's anchor-region patch discriminator). No source
# network has it: transfer initialises it fresh (transfer.NEW_IN_TARGET).
PATCH_HEAD = "patch_head"


def _normal(stddev: float):
  return nn.initializers.normal(stddev=stddev)


class Dense(nn.Module):
  """Fully connected layer with equalised learning rate (weight stored at unit scale / lr_mul)."""
  features: int
  lr_mul: float = 1.0
  bias_init: float = 0.0
  act: str = "linear"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    fan_in = x.shape[-1]
    weight = self.param("weight", _normal(1.0 / self.lr_mul), (fan_in, self.features))
    bias = self.param("bias", nn.initializers.constant(self.bias_init), (self.features,))
    x = x @ (weight * (self.lr_mul / math.sqrt(fan_in)))
    return ops.bias_act(x, bias * self.lr_mul, self.act)


class MappingNetwork(nn.Module):
  """z -> w: 2nd-moment normalisation, then ``num_layers`` dense layers with lr multiplier."""
  z_dim: int
  w_dim: int
  num_layers: int = 8
  lr_mul: float = 0.01

  @nn.compact
  def __call__(self, z: Array) -> Array:
    self.variable("buffers", "w_avg", jnp.zeros, (self.w_dim,))
    x = ops.normalize_2nd_moment(z.astype(jnp.float32))
    for i in range(self.num_layers):
      x = Dense(self.w_dim, lr_mul=self.lr_mul, act="lrelu", name=f"fc{i}")(x)
    return x

  def w_avg(self) -> Array:
    return self.get_variable("buffers", "w_avg")


def _noise(noise_mode: str, noise_keys: Optional[Array], layer_id: int, shape, const: Array) -> Optional[Array]:
  """Per-pixel noise for one layer: a function of (example key, layer), never of the device."""
  if noise_mode == "none":
    return None
  if noise_mode == "const":
    return const[None, :, :, None]
  if noise_keys is None:
    raise ValueError("noise_mode='random' needs noise_keys (one PRNG key per example)")
  draw = lambda k: jax.random.normal(jax.random.fold_in(k, layer_id), shape + (1,), jnp.float32)
  return jax.vmap(draw)(noise_keys)


class SynthesisLayer(nn.Module):
  """Modulated 3x3 convolution with weight demodulation, noise, bias and leaky ReLU."""
  out_channels: int
  w_dim: int
  resolution: int
  layer_id: int
  up: bool = False
  conv_clamp: Optional[float] = None
  conv_impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, w: Array, noise_mode: str, noise_keys: Optional[Array]) -> Array:
    in_channels = x.shape[-1]
    styles = Dense(in_channels, bias_init=1.0, name="affine")(w)  # [N, in]
    weight = self.param("weight", _normal(1.0), (3, 3, in_channels, self.out_channels))
    bias = self.param("bias", nn.initializers.zeros, (self.out_channels,))
    noise_strength = self.param("noise_strength", nn.initializers.zeros, ())
    noise_const = self.variable(
        "buffers", "noise_const",
        lambda: jax.random.normal(self.make_rng("params"), (self.resolution, self.resolution)))
    # Modulate the activations instead of the weights: the convolution then shares one kernel
    # across the batch (a plain conv, not a grouped one), and demodulation is a per-sample,
    # per-output-channel scale computed from the squared kernel.
    # Styles and demodulation coefficients stay float32 whatever the compute dtype: they are
    # per-sample scales whose error would be multiplied into every activation.
    with jax.named_scope("modulate"):
      dcoefs = jax.lax.rsqrt(jnp.square(styles) @ jnp.sum(jnp.square(weight), axis=(0, 1)) + 1e-8)
      x = x.astype(self.dtype) * styles[:, None, None, :].astype(self.dtype)
    kernel = weight.astype(self.dtype)
    if self.up:
      x = ops.conv2d_up2(x, kernel, impl=self.conv_impl)
    else:
      x = ops.conv2d(x, kernel, 1, impl=self.conv_impl)
    with jax.named_scope("demodulate"):
      x = x * dcoefs[:, None, None, :].astype(self.dtype)
    with jax.named_scope("noise"):
      noise = _noise(noise_mode, noise_keys, self.layer_id, (self.resolution, self.resolution),
                     noise_const.value)
      if noise is not None:
        x = x + (noise * noise_strength).astype(self.dtype)
    return ops.bias_act(x, bias.astype(self.dtype), "lrelu", clamp=self.conv_clamp)


class ToRGB(nn.Module):
  """Modulated 1x1 convolution to RGB, without demodulation."""
  out_channels: int
  conv_clamp: Optional[float] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, w: Array) -> Array:
    in_channels = x.shape[-1]
    styles = Dense(in_channels, bias_init=1.0, name="affine")(w) / math.sqrt(in_channels)
    weight = self.param("weight", _normal(1.0), (1, 1, in_channels, self.out_channels))
    bias = self.param("bias", nn.initializers.zeros, (self.out_channels,))
    x = jnp.einsum("nhwi,io->nhwo", x * styles[:, None, None, :].astype(x.dtype),
                   weight[0, 0].astype(x.dtype))
    # The RGB skip sum accumulates over all blocks: keep it float32.
    return ops.bias_act(x.astype(jnp.float32), bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
  """One resolution of the synthesis network: [const | up-conv0], conv1, toRGB (skip architecture)."""
  resolution: int
  in_channels: int  # 0 for the first block, which starts from the learned constant
  out_channels: int
  w_dim: int
  img_channels: int = 3
  first_layer_id: int = 0
  conv_clamp: Optional[float] = None
  conv_impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Optional[Array], img: Optional[Array], ws: Array, noise_mode: str,
               noise_keys: Optional[Array]) -> tuple[Array, Array]:
    layer = lambda up, layer_id, name: SynthesisLayer(
        out_channels=self.out_channels, w_dim=self.w_dim, resolution=self.resolution,
        layer_id=layer_id, up=up, conv_clamp=self.conv_clamp, conv_impl=self.conv_impl,
        dtype=self.dtype, name=name)
    if self.in_channels == 0:
      const = self.param("const", _normal(1.0), (4, 4, self.out_channels))
      x = jnp.broadcast_to(const[None], (ws.shape[0],) + const.shape)
      ws_conv, w_rgb = [ws[:, 0]], ws[:, 1]
      names = ["conv1"]
    else:
      ws_conv, w_rgb = [ws[:, 0], ws[:, 1]], ws[:, 2]
      names = ["conv0", "conv1"]
    for i, (name, w) in enumerate(zip(names, ws_conv)):
      x = layer(name == "conv0", self.first_layer_id + i, name)(x, w, noise_mode, noise_keys)
    self.sow(FEATURES, "features", x)
    y = ToRGB(out_channels=self.img_channels, conv_clamp=self.conv_clamp, dtype=self.dtype,
              name="torgb")(x, w_rgb)
    img = y if img is None else ops.upsample2d(img) + y
    return x, img


class SynthesisNetwork(nn.Module):
  """ws -> image: learned 4x4 constant, one block per resolution, skip-architecture RGB outputs."""
  resolution: int
  w_dim: int
  img_channels: int = 3
  channel_base: int = 16384
  channel_max: int = 512
  conv_clamp: Optional[float] = None
  conv_impl: str = "auto"
  dtype: Dtype = jnp.float32
  num_low_precision_res: int = 0  # blocks in ``dtype``: see resolutions.low_precision_blocks

  @nn.compact
  def __call__(self, ws: Array, noise_mode: str = "random", noise_keys: Optional[Array] = None) -> Array:
    if noise_mode not in NOISE_MODES:
      raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
    ch = lambda r: channels_at(r, self.channel_base, self.channel_max)
    low = low_precision_blocks(self.resolution, self.num_low_precision_res)
    x = img = None
    w_idx = layer_id = 0
    for res in block_resolutions(self.resolution):
      num_conv = 1 if res == 4 else 2
      # A block's toRGB shares its w with the next block's first conv.
      block_ws = ws[:, w_idx:w_idx + num_conv + 1]
      x, img = SynthesisBlock(
          resolution=res, in_channels=0 if res == 4 else ch(res // 2), out_channels=ch(res),
          w_dim=self.w_dim, img_channels=self.img_channels, first_layer_id=layer_id,
          conv_clamp=self.conv_clamp, conv_impl=self.conv_impl,
          dtype=self.dtype if res in low else jnp.float32,
          name=f"b{res}")(x, img, block_ws, noise_mode, noise_keys)
      w_idx += num_conv
      layer_id += num_conv
    return img


class Generator(nn.Module):
  """StyleGAN2 generator. ``__call__(z)`` maps and synthesises; ``map``/``synthesize`` do one half.

  ``dtype`` is the compute dtype of the synthesis convolutions of the blocks that
  ``num_low_precision_res`` selects (0: all; N: the N highest resolutions, as the official
  ``num_fp16_res``); the other blocks, parameters, the mapping network, styles, demodulation
  coefficients and the output image stay float32.
  """
  resolution: int
  z_dim: int = 512
  w_dim: int = 512
  mapping_layers: int = 8
  mapping_lr_mul: float = 0.01
  img_channels: int = 3
  channel_base: int = 16384
  channel_max: int = 512
  conv_clamp: Optional[float] = None
  conv_impl: str = "auto"
  dtype: Dtype = jnp.float32
  num_low_precision_res: int = 0

  def setup(self):
    problem = resolution_problem(self.resolution)
    if problem:
      raise ValueError(f"model.resolution {problem}")
    self.mapping = MappingNetwork(z_dim=self.z_dim, w_dim=self.w_dim, num_layers=self.mapping_layers,
                                  lr_mul=self.mapping_lr_mul)
    self.synthesis = SynthesisNetwork(
        resolution=self.resolution, w_dim=self.w_dim, img_channels=self.img_channels,
        channel_base=self.channel_base, channel_max=self.channel_max, conv_clamp=self.conv_clamp,
        conv_impl=self.conv_impl, dtype=self.dtype, num_low_precision_res=self.num_low_precision_res)

  @property
  def num_ws(self) -> int:
    return num_ws(self.resolution)

  def map(self, z: Array, truncation_psi: float = 1.0, truncation_cutoff: Optional[int] = None) -> Array:
    """z [N, z_dim] -> ws [N, num_ws, w_dim], with truncation towards the tracked ``w_avg``."""
    w = self.mapping(z)
    ws = jnp.broadcast_to(w[:, None], (w.shape[0], self.num_ws, self.w_dim))
    if truncation_psi != 1.0:
      w_avg = self.mapping.w_avg()
      cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
      layer = jnp.arange(self.num_ws)[None, :, None]
      ws = jnp.where(layer < cutoff, w_avg + truncation_psi * (ws - w_avg), ws)
    return ws

  def synthesize(self, ws: Array, noise_mode: str = "random", noise_keys: Optional[Array] = None) -> Array:
    """ws [N, num_ws, w_dim] -> images [N, R, R, C] (NHWC, nominally in [-1, 1])."""
    return self.synthesis(ws, noise_mode, noise_keys)

  def __call__(self, z: Array, truncation_psi: float = 1.0, truncation_cutoff: Optional[int] = None,
               noise_mode: str = "random", noise_keys: Optional[Array] = None) -> Array:
    return self.synthesize(self.map(z, truncation_psi, truncation_cutoff), noise_mode, noise_keys)


class ConvLayer(nn.Module):
  """Discriminator convolution with equalised learning rate and optional 2x FIR down-sampling."""
  out_channels: int
  kernel_size: int
  act: str = "lrelu"
  down: bool = False
  use_bias: bool = True
  conv_clamp: Optional[float] = None
  conv_impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, gain: float = 1.0) -> Array:
    k = self.kernel_size
    in_channels = x.shape[-1]
    weight = self.param("weight", _normal(1.0), (k, k, in_channels, self.out_channels))
    bias = self.param("bias", nn.initializers.zeros, (self.out_channels,)) if self.use_bias else None
    x = x.astype(self.dtype)
    weight = (weight * (1.0 / math.sqrt(in_channels * k * k))).astype(self.dtype)
    bias = None if bias is None else bias.astype(self.dtype)
    if self.down and k == 1:
      x = ops.conv2d(ops.downsample2d(x), weight, impl=self.conv_impl)
    elif self.down:
      x = ops.conv2d_down2(x, weight, impl=self.conv_impl)
    else:
      x = ops.conv2d(x, weight, k // 2, impl=self.conv_impl)
    clamp = None if self.conv_clamp is None else self.conv_clamp * gain
    return ops.bias_act(x, bias, self.act, gain=gain, clamp=clamp)


MBSTD_GROUPINGS = ("contiguous", "strided")


def minibatch_stddev(x: Array, group_size: int, num_channels: int = 1, grouping: str = "contiguous",
                     num_shards: int = 1) -> Array:
  """Appends the per-group feature standard deviation as ``num_channels`` extra channels.

  The batch is first split into ``num_shards`` contiguous shares (one per device when the
  global batch is sharded over devices under ``jit``), and groups never leave a share. Inside a
  share of ``m * g`` samples (``g = min(group_size, share)``), ``grouping`` says which samples
  form a group:

  * ``'contiguous'``: runs of ``g`` consecutive samples. Since ``g`` divides the share, the
    statistic is the same for any ``num_shards``: it does not depend on the device count.
  * ``'strided'``: sample ``i`` of the share is in group ``i mod m``, as stylegan2-ada-pytorch's
    ``x.reshape(G, -1, ...)`` does on each GPU's batch. Needed to reproduce official logits (for
    imported weights); but the result then depends on the per-device batch, so the same global
    batch gives different logits on a different number of devices.

  The two agree when the share equals the group size.

  Args:
    x: features [N, H, W, C].
    group_size: samples per group (capped at the share size).
    num_channels: statistics appended; must divide C.
    grouping: 'contiguous' or 'strided'.
    num_shards: contiguous shares of the batch that groups stay inside; must divide N.

  Returns:
    [N, H, W, C + num_channels].
  """
  n, h, w, c = x.shape
  if grouping not in MBSTD_GROUPINGS:
    raise ValueError(f"minibatch-stddev grouping must be one of {MBSTD_GROUPINGS}, got {grouping!r}")
  if num_shards < 1 or n % num_shards:
    raise ValueError(f"minibatch-stddev: {num_shards} shards do not divide the batch {n}")
  share = n // num_shards
  g = min(group_size, share)
  if share % g:
    raise ValueError(f"minibatch-stddev group size {g} does not divide the per-shard batch {share}")
  m, f = share // g, num_channels
  # Axis 1 or 2 of [shards, ., ., H, W, F, C/F] runs over the members of a group.
  if grouping == "contiguous":
    y, axis = x.reshape(num_shards, m, g, h, w, f, c // f), 2
  else:
    y, axis = x.reshape(num_shards, g, m, h, w, f, c // f), 1
  y = y - jnp.mean(y, axis=axis, keepdims=True)
  y = jnp.sqrt(jnp.mean(jnp.square(y), axis=axis) + 1e-8)  # [shards, m, H, W, F, C/F]
  y = jnp.mean(y, axis=(2, 3, 5))  # [shards, m, F]
  # Back to one value per sample: group j's members are j*g..j*g+g-1 (contiguous) or j, j+m, ...
  y = jnp.repeat(y, g, axis=1) if grouping == "contiguous" else jnp.tile(y, (1, g, 1))
  y = y.reshape(n, 1, 1, f)
  return jnp.concatenate([x, jnp.broadcast_to(y, (n, h, w, f))], axis=-1)


class DiscriminatorBlock(nn.Module):
  """One resolution of the residual discriminator: [fromRGB], conv0, down-conv1, plus a 1x1 skip."""
  tmp_channels: int
  out_channels: int
  from_rgb: bool
  conv_clamp: Optional[float] = None
  conv_impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(conv_clamp=self.conv_clamp, conv_impl=self.conv_impl, dtype=self.dtype)
    if self.from_rgb:
      x = ConvLayer(out_channels=self.tmp_channels, kernel_size=1, name="fromrgb", **kw)(x)
    # sqrt(0.5) on both branches keeps the residual sum at unit variance.
    # The skip path is linear and unclamped, as in stylegan2-ada-pytorch.
    y = ConvLayer(out_channels=self.out_channels, kernel_size=1, act="linear", down=True,
                  use_bias=False, conv_impl=self.conv_impl, dtype=self.dtype,
                  name="skip")(x, gain=math.sqrt(0.5))
    x = ConvLayer(out_channels=self.tmp_channels, kernel_size=3, name="conv0", **kw)(x)
    x = ConvLayer(out_channels=self.out_channels, kernel_size=3, down=True, name="conv1",
                  **kw)(x, gain=math.sqrt(0.5))
    x = y + x
    self.sow(FEATURES, "features", x)
    return x


class DiscriminatorEpilogue(nn.Module):
  """The 4x4 end of the discriminator: minibatch stddev, conv, fc, output logit."""
  channels: int
  mbstd_group_size: int = 4
  mbstd_num_channels: int = 1
  conv_clamp: Optional[float] = None
  conv_impl: str = "auto"
  mbstd_grouping: str = "contiguous"

  @nn.compact
  def __call__(self, x: Array, mbstd_num_shards: int = 1) -> Array:
    # The epilogue runs in float32 whatever the blocks' dtype, as the official mixed precision.
    x = x.astype(jnp.float32)
    if self.mbstd_num_channels > 0:
      x = minibatch_stddev(x, self.mbstd_group_size, self.mbstd_num_channels, self.mbstd_grouping,
                           mbstd_num_shards)
    x = ConvLayer(out_channels=self.channels, kernel_size=3, conv_clamp=self.conv_clamp,
                  conv_impl=self.conv_impl, name="conv")(x)
    # Flatten in (C, H, W) order, as the PyTorch reference does, so imported weights need no permute.
    x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)
    x = Dense(self.channels, act="lrelu", name="fc")(x)
    return Dense(1, name="out")(x)[:, 0]


class Discriminator(nn.Module):
  """StyleGAN2 residual discriminator: image [N, R, R, C] -> logits [N].

  ``mbstd_grouping`` ('contiguous' | 'strided') and the call's ``mbstd_num_shards`` say which
  samples share a minibatch-stddev group; see :func:`minibatch_stddev`.

  With ``patch_resolution`` > 0 D also has a patch head (``patch_head/{weight,bias}``), and
  ``__call__(img, patch=True)`` returns patch logits [N, P, P] (P = ``patch_resolution``) instead
  of one logit per image, without running the layers after them. With 0 (the default) the
  parameters are exactly those of StyleGAN2's D.
  """
  resolution: int
  img_channels: int = 3
  channel_base: int = 16384
  channel_max: int = 512
  mbstd_group_size: int = 4
  mbstd_num_channels: int = 1
  conv_clamp: Optional[float] = None
  conv_impl: str = "auto"
  mbstd_grouping: str = "contiguous"
  dtype: Dtype = jnp.float32  # compute dtype of the blocks; the 4x4 epilogue is float32
  num_low_precision_res: int = 0  # blocks in ``dtype``: see resolutions.low_precision_blocks
  patch_resolution: int = 0  # side of the patch-logit map (a block output's); 0: no patch head

  @nn.compact
  def __call__(self, img: Array, *, mbstd_num_shards: int = 1, patch: bool = False) -> Array:
    if patch and not self.patch_resolution:
      raise ValueError("patch=True needs a Discriminator with patch_resolution > 0")
    ch = lambda r: channels_at(r, self.channel_base, self.channel_max)
    kw = dict(conv_clamp=self.conv_clamp, conv_impl=self.conv_impl)
    low = low_precision_blocks(self.resolution, self.num_low_precision_res)
    x = img
    for res in block_resolutions(self.resolution)[:0:-1]:
      x = DiscriminatorBlock(tmp_channels=ch(res), out_channels=ch(res // 2),
                             from_rgb=(res == self.resolution),
                             dtype=self.dtype if res in low else jnp.float32,
                             name=f"b{res}", **kw)(x)
      # The official CDC code reads a 3x3 conv to one channel off an intermediate D map (the
      # 32x32 output of a block's down-sampling conv, before the residual sum, at 256 px). Here
      # the head reads a block's output, the residual sum, which is what our blocks expose and
      # the next block reads. The official head ends in its conv class's default activation, a
      # biased leaky ReLU; ours is linear, so that a patch logit ranges over both signs as the
      # image logit does and the logistic losses treat both alike.
      if self.patch_resolution and res // 2 == self.patch_resolution and (patch or self.is_initializing()):
        logits = ConvLayer(out_channels=1, kernel_size=3, act="linear", conv_impl=self.conv_impl,
                           name=PATCH_HEAD)(x.astype(jnp.float32))[..., 0]
        if patch:
          return logits
    return DiscriminatorEpilogue(channels=ch(4), mbstd_group_size=self.mbstd_group_size,
                                 mbstd_num_channels=self.mbstd_num_channels,
                                 mbstd_grouping=self.mbstd_grouping, name="b4", **kw)(x, mbstd_num_shards)


def generator_from_config(model: ml_collections.ConfigDict) -> Generator:
  """Builds the Generator from the ``config.model`` section."""
  return Generator(
      resolution=model.resolution, z_dim=model.z_dim, w_dim=model.w_dim,
      mapping_layers=model.mapping_layers, mapping_lr_mul=model.mapping_lr_mul,
      img_channels=model.img_channels, channel_base=model.channel_base,
      channel_max=model.channel_max, conv_clamp=model.conv_clamp, conv_impl=model.conv_impl,
      dtype=jnp.dtype(model.compute_dtype),
      num_low_precision_res=model.num_low_precision_res)


def discriminator_from_config(model: ml_collections.ConfigDict, patch_resolution: int = 0) -> Discriminator:
  """Builds the Discriminator from the ``config.model`` section; ``patch_resolution`` > 0 adds
  the patch head (the training step asks for it: ``fewshot.patch_resolution``)."""
  return Discriminator(
      resolution=model.resolution, img_channels=model.img_channels,
      channel_base=model.channel_base, channel_max=model.channel_max,
      mbstd_group_size=model.mbstd_group_size, mbstd_num_channels=model.mbstd_num_channels,
      conv_clamp=model.conv_clamp, conv_impl=model.conv_impl,
      mbstd_grouping=model.mbstd_grouping,
      dtype=jnp.dtype(model.compute_dtype),
      num_low_precision_res=model.num_low_precision_res, patch_resolution=patch_resolution)


def init_generator(g: Generator, rng: Array) -> dict[str, Any]:
  """Initial ``{'params', 'buffers'}`` of ``g``."""
  z = jnp.zeros((1, g.z_dim), jnp.float32)
  return dict(g.init({"params": rng}, z, noise_mode="const"))


def init_discriminator(d: Discriminator, rng: Array) -> dict[str, Any]:
  """Initial ``{'params'}`` of ``d``."""
  img = jnp.zeros((d.mbstd_group_size, d.resolution, d.resolution, d.img_channels), jnp.float32)
  return dict(d.init({"params": rng}, img))


def apply_with_features(module: nn.Module, variables: Any, *args, **kwargs) -> tuple[Any, dict[str, Array]]:
  """``module.apply`` that also returns the blocks' outputs: ``(output, {block path: features})``.

  Block paths are those of the parameters, e.g. ``'synthesis/b16'`` (G, NHWC after the block's
  convolutions) or ``'b16'`` (D, the block's residual output at half its resolution). Without
  this function the blocks' ``sow`` is a no-op and costs nothing.
  """
  out, state = module.apply(variables, *args, mutable=[FEATURES], **kwargs)
  flat = traverse_util.flatten_dict(state.get(FEATURES, {}), sep="/")
  return out, {path.rsplit("/", 1)[0]: value[-1] for path, value in flat.items()}
