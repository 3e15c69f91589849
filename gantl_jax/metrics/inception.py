"""The FID Inception network (InceptionV3, TF graph of 2015-12-05) in Flax, and its weights.

FID and KID compare images through the 2048-d pool features of one particular network: the
InceptionV3 graph that TensorFlow published on 2015-12-05 (``inception-2015-12-05.tgz``), the
one Heusel et al.'s TF code used. Its PyTorch ports differ from torchvision's InceptionV3 in
three places, kept here:

  * the average pools inside the A, C and first E blocks (``Mixed_5b``..``Mixed_5d``,
    ``Mixed_6b``..``Mixed_6e``, ``Mixed_7b``) divide by the number of pixels inside the
    image, not 9 (TF's pooling ignores the zero padding; torch's ``count_include_pad=False``);
  * the pool branch of the last E block (``Mixed_7c``) takes a 3x3 *max* pool (stride 1,
    padding 1), where the paper and torchvision average;
  * every batch norm has eps 1e-3 and, in the TF graph, no scale (gamma = 1).

Layout: NHWC, and the parameter tree mirrors pytorch-fid's module names
(``Conv2d_1a_3x3``, ``Mixed_5b/branch5x5_1``, ..., ``fc``); each conv + batch norm + ReLU unit
holds ``kernel`` (HWIO), ``scale``, ``bias``, ``mean``, ``var``, all under ``params``: the
network is only ever used with frozen statistics.

Preprocessing (`preprocess`) is NVIDIA's (the TorchScript ``inception-2015-12-05.pt`` that
stylegan2-ada-pytorch, stylegan3 and clean-fid run), itself a copy of the TF graph's own input
layers:

  1. uint8 images in [0, 255] (generated images are quantised first, as the loop does);
  2. bilinear resize to 299 x 299 with TF1's ``resize_bilinear`` alignment: output pixel j
     samples input coordinate ``j * in / 299`` (no half-pixel shift), edge pixels repeated
     past the border, no antialiasing. NVIDIA's graph gets this from ``affine_grid`` +
     ``grid_sample(border)`` with the grid shifted by ``1/in - 1/299``; an image that is
     already 299 px passes unchanged;
  3. ``(x - 128) / 128``, so [-1, 0.992].

The alternatives, and why not them. pytorch-fid resizes with ``F.interpolate(bilinear,
align_corners=False)``, i.e. half-pixel centres (output j samples ``(j + 0.5) * in / 299 -
0.5``): a shift of up to half an input pixel against the TF graph, and it scales by
``2 * x / 255 - 1``. clean-fid resizes outside the network with PIL's bicubic filter (float
mode, antialiased when shrinking) and then feeds NVIDIA's network at 299. Both give other FID
values for the same images; we follow NVIDIA because the few-shot GAN papers compare against
stylegan2-ada-pytorch's numbers. Measured on 8 synthetic 32 px images (4 `photo`, 4 `anime`)
upsampled to 299, in grey levels of the 0..255 input: ours differs from pytorch-fid's resize by
8.0 on average (max 157; 8.2 with its other scaling), and from clean-fid's PIL bicubic by 8.9
(max 174); pytorch-fid's and clean-fid's differ from each other by 2.1 (max 48). At a x9.3
upscale the half-pixel shift moves every edge by ~4.7 output pixels, which dominates these
numbers; values of different tools are therefore not comparable, at 32 px least of all.

Weights (`load_weights`) come from a file the user provides, read by
``gantl_jax.safe_pickle`` (no torch, nothing from the file executed):

  * pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``: a ``torch.save`` state dict
    (legacy stream or zip) with torchvision names (``Mixed_5b.branch1x1.conv.weight``,
    ``...bn.weight/bias/running_mean/running_var``, ``fc.weight/bias``);
  * NVIDIA's TorchScript ``inception-2015-12-05.pt``: a zip archive whose ``data.pkl`` holds
    the module's tensors (``layers.mixed.tower.conv.weight``, ``...beta``, ``...mean``,
    ``...var``, ``output.weight/bias``); its code is never read. It stores no batch-norm
    scale: ``scale`` is set to 1, as the TF graph has it.

Every tensor is mapped to a parameter path by an explicit table (`weight_table`); a file with
an unknown tensor, a missing one or a wrong shape is refused with the list.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gantl_jax import errors
from gantl_jax import safe_pickle
from gantl_jax.errors import InceptionWeightsError

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008  # the TF graph's 1008 logits: ImageNet's 1000 classes and 8 unused
BN_EPS = 1e-3

Params = Any


# ---------------------------------------------------------------------------
# The network.


class ConvBN(nn.Module):
  """Convolution (no bias), batch norm with frozen statistics, ReLU: torchvision's BasicConv2d."""

  features: int
  kernel_size: tuple[int, int]
  stride: int = 1
  padding: tuple[int, int] = (0, 0)  # (rows, columns) of zeros on each side
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, x.shape[-1], self.features))
    scale = self.param("scale", nn.initializers.ones, (self.features,))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    mean = self.param("mean", nn.initializers.zeros, (self.features,))
    var = self.param("var", nn.initializers.ones, (self.features,))
    ph, pw = self.padding
    y = jax.lax.conv_general_dilated(
        x, kernel, (self.stride, self.stride), ((ph, ph), (pw, pw)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.precision)
    # Batch norm in inference form, as torch evaluates it: (y - mean) / sqrt(var + eps) * scale + bias.
    y = (y - mean) * (scale * jax.lax.rsqrt(var + BN_EPS)) + bias
    return jax.nn.relu(y)


def max_pool(x: jax.Array, stride: int, padding: int = 0) -> jax.Array:
  """3x3 max pool; padded pixels never win (torch pads max pools with -inf)."""
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1), pad)


def avg_pool_exclusive(x: jax.Array) -> jax.Array:
  """3x3 average pool, stride 1, padding 1, dividing by the pixels inside the image (TF's rule).

  Corner outputs average 4 pixels and edge outputs 6, where torch's default would divide by 9.
  """
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  window, strides = (1, 3, 3, 1), (1, 1, 1, 1)
  sums = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
  ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
  counts = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pad)
  return sums / counts


class InceptionA(nn.Module):
  """Mixed_5b..5d: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | exclusive avg pool -> 1x1."""

  pool_features: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(ConvBN, precision=self.precision)
    b1 = conv(64, (1, 1), name="branch1x1")(x)
    b5 = conv(48, (1, 1), name="branch5x5_1")(x)
    b5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, (1, 1), name="branch_pool")(avg_pool_exclusive(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a (grid reduction): 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | max pool 3x3/2."""

  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(ConvBN, precision=self.precision)
    b3 = conv(384, (3, 3), stride=2, name="branch3x3")(x)
    bd = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = conv(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, max_pool(x, 2)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..6e: 1x1 | factorised 7x7 | twice factorised 7x7 | exclusive avg pool -> 1x1."""

  channels_7x7: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(ConvBN, precision=self.precision)
    c7 = self.channels_7x7
    b1 = conv(192, (1, 1), name="branch1x1")(x)
    b7 = conv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = conv(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = conv(192, (1, 1), name="branch_pool")(avg_pool_exclusive(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a (grid reduction): 1x1 -> 3x3/2 | 1x1 -> 1x7 -> 7x1 -> 3x3/2 | max pool 3x3/2."""

  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(ConvBN, precision=self.precision)
    b3 = conv(192, (1, 1), name="branch3x3_1")(x)
    b3 = conv(320, (3, 3), stride=2, name="branch3x3_2")(b3)
    b7 = conv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = conv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, max_pool(x, 2)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b / 7c: 1x1 | 1x1 -> (1x3, 3x1) | 1x1 -> 3x3 -> (1x3, 3x1) | pool -> 1x1.

  ``pool='avg'`` (Mixed_7b) averages TF-style; ``pool='max'`` (Mixed_7c) is the FID graph's
  max pool, stride 1, padding 1.
  """

  pool: str
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(ConvBN, precision=self.precision)
    b1 = conv(320, (1, 1), name="branch1x1")(x)
    b3 = conv(384, (1, 1), name="branch3x3_1")(x)
    b3a = conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3)
    b3b = conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)
    bd = conv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bda = conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd)
    bdb = conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)
    pooled = avg_pool_exclusive(x) if self.pool == "avg" else max_pool(x, 1, padding=1)
    bp = conv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3a, b3b, bda, bdb, bp], axis=-1)


class InceptionV3(nn.Module):
  """The FID InceptionV3 on preprocessed NHWC float images (see `preprocess`).

  Returns the 2048-d average-pool features ``(N, 2048)``, or with ``logits=True`` the pair
  (features, 1008 logits of ``fc``). Any input of at least 75 px runs (the network is
  convolutional up to the global average pool); FID and KID always use 299.
  """

  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array, logits: bool = False):
    p = dict(precision=self.precision)
    x = ConvBN(32, (3, 3), stride=2, name="Conv2d_1a_3x3", **p)(x)
    x = ConvBN(32, (3, 3), name="Conv2d_2a_3x3", **p)(x)
    x = ConvBN(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3", **p)(x)
    x = max_pool(x, 2)
    x = ConvBN(80, (1, 1), name="Conv2d_3b_1x1", **p)(x)
    x = ConvBN(192, (3, 3), name="Conv2d_4a_3x3", **p)(x)
    x = max_pool(x, 2)
    x = InceptionA(32, name="Mixed_5b", **p)(x)
    x = InceptionA(64, name="Mixed_5c", **p)(x)
    x = InceptionA(64, name="Mixed_5d", **p)(x)
    x = InceptionB(name="Mixed_6a", **p)(x)
    x = InceptionC(128, name="Mixed_6b", **p)(x)
    x = InceptionC(160, name="Mixed_6c", **p)(x)
    x = InceptionC(160, name="Mixed_6d", **p)(x)
    x = InceptionC(192, name="Mixed_6e", **p)(x)
    x = InceptionD(name="Mixed_7a", **p)(x)
    x = InceptionE("avg", name="Mixed_7b", **p)(x)
    x = InceptionE("max", name="Mixed_7c", **p)(x)
    features = jnp.mean(x, axis=(1, 2))
    # fc always runs so that init creates its parameters; jit drops it when unused.
    out = nn.Dense(NUM_CLASSES, precision=self.precision, name="fc")(features)
    return (features, out) if logits else features


# ---------------------------------------------------------------------------
# Preprocessing.


def tf_bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
  """(size_out, size_in) weights of TF1 ``resize_bilinear`` (align_corners=False, no half-pixel).

  Output pixel j samples input coordinate ``j * size_in / size_out``, clamped to the last
  pixel (grid_sample's 'border'), mixing its two neighbours linearly.
  """
  src = np.arange(size_out, dtype=np.float64) * (size_in / size_out)
  src = np.minimum(src, size_in - 1)
  lo = np.floor(src).astype(np.int64)
  hi = np.minimum(lo + 1, size_in - 1)
  frac = src - lo
  m = np.zeros((size_out, size_in), np.float64)
  rows = np.arange(size_out)
  np.add.at(m, (rows, lo), 1.0 - frac)
  np.add.at(m, (rows, hi), frac)
  return m


def preprocess(images: jax.Array, size: int = INPUT_SIZE, precision: Any = jax.lax.Precision.HIGHEST) -> jax.Array:
  """uint8 NHWC images (1 or 3 channels) -> float32 (N, size, size, 3) in [-1, 0.992], as NVIDIA's network.

  Resized with `tf_bilinear_matrix` on each axis (separable, exact as two matrix products),
  then ``(x - 128) / 128``. Grey images are repeated to 3 channels, as NVIDIA's metric code does.
  """
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"expected NHWC images with 1 or 3 channels, got shape {images.shape}")
  x = images.astype(jnp.float32)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  h, w = x.shape[1:3]
  if h != size:
    x = jnp.einsum("oh,nhwc->nowc", jnp.asarray(tf_bilinear_matrix(h, size), jnp.float32), x, precision=precision)
  if w != size:
    x = jnp.einsum("ow,nhwc->nhoc", jnp.asarray(tf_bilinear_matrix(w, size), jnp.float32), x, precision=precision)
  return (x - 128.0) / 128.0


def make_feature_fn(model: InceptionV3 | None = None) -> Callable[[Params, jax.Array], jax.Array]:
  """A jitted ``fn(params, uint8 NHWC images) -> float32 (N, 2048)`` pool features.

  ``params`` are passed in, not closed over, so the 95 MB of weights never become constants
  of the compiled program. One compilation per input shape.
  """
  model = model or InceptionV3()

  @jax.jit
  def features(params, images):
    return model.apply({"params": params}, preprocess(images, precision=model.precision))

  return features


# ---------------------------------------------------------------------------
# Weights.

# Our conv units per block type, with NVIDIA's name for each ("" = the block's own prefix).
_NVIDIA_A = {"branch1x1": "conv", "branch5x5_1": "tower.conv", "branch5x5_2": "tower.conv_1",
             "branch3x3dbl_1": "tower_1.conv", "branch3x3dbl_2": "tower_1.conv_1",
             "branch3x3dbl_3": "tower_1.conv_2", "branch_pool": "tower_2.conv"}
_NVIDIA_B = {"branch3x3": "conv", "branch3x3dbl_1": "tower.conv", "branch3x3dbl_2": "tower.conv_1",
             "branch3x3dbl_3": "tower.conv_2"}
_NVIDIA_C = {"branch1x1": "conv", "branch7x7_1": "tower.conv", "branch7x7_2": "tower.conv_1",
             "branch7x7_3": "tower.conv_2", "branch7x7dbl_1": "tower_1.conv",
             "branch7x7dbl_2": "tower_1.conv_1", "branch7x7dbl_3": "tower_1.conv_2",
             "branch7x7dbl_4": "tower_1.conv_3", "branch7x7dbl_5": "tower_1.conv_4",
             "branch_pool": "tower_2.conv"}
_NVIDIA_D = {"branch3x3_1": "tower.conv", "branch3x3_2": "tower.conv_1", "branch7x7x3_1": "tower_1.conv",
             "branch7x7x3_2": "tower_1.conv_1", "branch7x7x3_3": "tower_1.conv_2",
             "branch7x7x3_4": "tower_1.conv_3"}
_NVIDIA_E = {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
             "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv",
             "branch3x3dbl_2": "tower_1_conv_1", "branch3x3dbl_3a": "tower_1_mixed_conv",
             "branch3x3dbl_3b": "tower_1_mixed_conv_1", "branch_pool": "tower_2_conv"}
# (our block, NVIDIA's module under ``layers``, the block's conv units or None for a single conv).
_BLOCKS = (
    ("Conv2d_1a_3x3", "conv", None), ("Conv2d_2a_3x3", "conv_1", None), ("Conv2d_2b_3x3", "conv_2", None),
    ("Conv2d_3b_1x1", "conv_3", None), ("Conv2d_4a_3x3", "conv_4", None),
    ("Mixed_5b", "mixed", _NVIDIA_A), ("Mixed_5c", "mixed_1", _NVIDIA_A), ("Mixed_5d", "mixed_2", _NVIDIA_A),
    ("Mixed_6a", "mixed_3", _NVIDIA_B),
    ("Mixed_6b", "mixed_4", _NVIDIA_C), ("Mixed_6c", "mixed_5", _NVIDIA_C), ("Mixed_6d", "mixed_6", _NVIDIA_C),
    ("Mixed_6e", "mixed_7", _NVIDIA_C),
    ("Mixed_7a", "mixed_8", _NVIDIA_D), ("Mixed_7b", "mixed_9", _NVIDIA_E), ("Mixed_7c", "mixed_10", _NVIDIA_E),
)
# Per conv unit: our leaf -> the tensor's suffix in each format; None: the format has no such tensor.
_UNIT_LEAVES = {
    "kernel": ("conv.weight", "weight"),
    "scale": ("bn.weight", None),
    "bias": ("bn.bias", "beta"),
    "mean": ("bn.running_mean", "mean"),
    "var": ("bn.running_var", "var"),
}
# Tensors a file may hold that the network does not use: torch's batch-norm step counters.
_IGNORED_SUFFIXES = {"pytorch-fid": (".bn.num_batches_tracked",), "nvidia": ()}

FORMATS = ("pytorch-fid", "nvidia")


def conv_units() -> list[tuple[tuple[str, ...], str]]:
  """Every conv unit: (our path, e.g. ('Mixed_5b', 'branch1x1'), NVIDIA's dotted prefix)."""
  units = []
  for block, nv_block, branches in _BLOCKS:
    if branches is None:
      units.append(((block,), f"layers.{nv_block}"))
    else:
      units.extend(((block, ours), f"layers.{nv_block}.{theirs}") for ours, theirs in branches.items())
  return units


def weight_table(fmt: str) -> dict[str, tuple[str, ...]]:
  """The file tensor name -> our parameter path, for ``fmt`` in `FORMATS`.

  Leaves a format does not store (NVIDIA's batch-norm scale) are absent; `load_weights`
  fills them with the TF graph's constant.
  """
  if fmt not in FORMATS:
    raise ValueError(f"unknown Inception weight format {fmt!r}; choose from {FORMATS}")
  col = FORMATS.index(fmt)
  table = {}
  for path, nv_prefix in conv_units():
    prefix = ".".join(path) if fmt == "pytorch-fid" else nv_prefix
    for leaf, names in _UNIT_LEAVES.items():
      if names[col] is not None:
        table[f"{prefix}.{names[col]}"] = path + (leaf,)
  head = "fc" if fmt == "pytorch-fid" else "output"
  table[f"{head}.weight"] = ("fc", "kernel")
  table[f"{head}.bias"] = ("fc", "bias")
  return table


@functools.lru_cache(maxsize=None)
def param_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
  """Our parameter path -> shape, from an abstract init at 299 px (no compilation, no memory)."""
  abstract = jax.eval_shape(lambda: InceptionV3().init(jax.random.key(0), jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3))))
  flat = jax.tree_util.tree_flatten_with_path(abstract["params"])[0]
  return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def detect_format(names: Sequence[str]) -> str:
  """'pytorch-fid' or 'nvidia' from the tensor names of a file."""
  names = set(names)
  if "Conv2d_1a_3x3.conv.weight" in names:
    return "pytorch-fid"
  if "layers.conv.weight" in names:
    return "nvidia"
  raise InceptionWeightsError(
      "not an FID Inception weight file: it has neither pytorch-fid's 'Conv2d_1a_3x3.conv.weight' "
      f"nor NVIDIA's 'layers.conv.weight' (first tensors: {sorted(names)[:8]})")


def _to_ours(array: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
  """A torch tensor in our layout: conv OIHW -> HWIO, linear (out, in) -> (in, out)."""
  a = np.asarray(array, np.float32)
  if path[-1] == "kernel":
    a = a.transpose(2, 3, 1, 0) if a.ndim == 4 else a.T
  return np.ascontiguousarray(a)


def params_from_state_dict(state: dict[str, np.ndarray], fmt: str | None = None) -> Params:
  """Our parameter tree (nested dicts of float32 numpy arrays) from a file's tensors.

  Raises InceptionWeightsError listing every tensor that maps to nothing, every parameter no
  tensor provides, and every shape that does not match.
  """
  fmt = fmt or detect_format(list(state))
  table = weight_table(fmt)
  shapes = param_shapes()
  flat: dict[tuple[str, ...], np.ndarray] = {}
  unmapped, bad_shape = [], []
  for name, array in state.items():
    if name.endswith(_IGNORED_SUFFIXES[fmt]):
      continue
    path = table.get(name)
    if path is None:
      unmapped.append(name)
      continue
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.floating):
      bad_shape.append(f"{name}: not a float tensor ({type(array).__name__})")
      continue
    value = _to_ours(array, path)
    if value.shape != shapes[path]:
      bad_shape.append(f"{name}: shape {tuple(array.shape)}, expected {shapes[path]} in our layout")
      continue
    flat[path] = value
  if fmt == "nvidia":
    # The TF graph's batch norms have no scale; NVIDIA's port stores none.
    for path, shape in shapes.items():
      if path[-1] == "scale":
        flat[path] = np.ones(shape, np.float32)
  missing = [n for n in table if n not in state]
  if unmapped or missing or bad_shape:
    parts = [f"{fmt} Inception weights do not fit the network:"]
    if missing:
      parts.append(f"{len(missing)} missing tensor(s): {missing}")
    if unmapped:
      parts.append(f"{len(unmapped)} unexpected tensor(s): {unmapped}")
    if bad_shape:
      parts.append(f"{len(bad_shape)} wrong tensor(s): {bad_shape}")
    raise InceptionWeightsError("\n  ".join(parts))
  if set(flat) != set(shapes):  # the tables themselves are wrong: a bug here, not in the file
    raise RuntimeError(f"weight_table({fmt!r}) does not cover {sorted(set(shapes) ^ set(flat))}")
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: a cache key of device copies
class InceptionWeights:
  """Parameters read from a weight file, and what identifies them."""

  params: Params  # nested dicts of float32 numpy arrays, our layout
  fmt: str  # 'pytorch-fid' or 'nvidia'
  sha256: str  # of the file's bytes: the cache key of statistics computed with it
  path: str


def file_sha256(path: str) -> str:
  """Hex SHA-256 of a file, read in 1 MB blocks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """The tensors of an Inception weight file, either format, through the restricted unpickler.

  Raises InceptionWeightsError for a file that is missing, not a torch file, or asks for code
  (the `safe_pickle` error is chained).
  """
  try:
    container, obj = safe_pickle.load(path)
  except OSError as e:
    raise InceptionWeightsError(f"cannot read {path}: {e}") from e
  except (errors.UnsafePickleError, errors.SourceFormatError) as e:
    raise InceptionWeightsError(f"{path} is not a readable Inception weight file: {e}") from e
  if isinstance(obj, safe_pickle.ScriptObject):
    try:
      return safe_pickle.script_module_state_dict(obj)
    except errors.SourceFormatError as e:
      raise InceptionWeightsError(f"{path} is not a readable Inception weight file: {e}") from e
  if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
    return dict(obj)
  raise InceptionWeightsError(f"{path} ({container}) holds a {type(obj).__name__}, not a state dict or "
                              "a TorchScript module")


def load_weights(path: str) -> InceptionWeights:
  """Reads an Inception weight file (pytorch-fid's .pth or NVIDIA's TorchScript .pt).

  Cached per (real path, size, modification time): the evaluators of one run share one read.
  """
  real = os.path.realpath(os.path.expanduser(path))
  try:
    st = os.stat(real)
  except OSError as e:
    raise InceptionWeightsError(f"cannot read {path}: {e}") from e
  return _load_cached(real, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _load_cached(real: str, size: int, mtime_ns: int) -> InceptionWeights:
  del size, mtime_ns  # only part of the cache key
  state = read_state_dict(real)
  fmt = detect_format(list(state))
  return InceptionWeights(params_from_state_dict(state, fmt), fmt, file_sha256(real), real)
