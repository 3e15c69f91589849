"""LPIPS-VGG (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric"), version 0.1 with the 'vgg' network, as the ``lpips`` package computes it, in JAX.

For two images x, y (uint8 NHWC, at least 16 px, 1 or 3 channels; grey is repeated to RGB):

  1. scale to [-1, 1] (``x / 127.5 - 1``), then the package's ScalingLayer:
     ``(x - shift) / scale`` with shift (-0.030, -0.088, -0.188), scale (0.458, 0.448, 0.450);
  2. VGG16's convolutional part (3x3 convolutions, padding 1, ReLU; 2x2 max pools of stride 2),
     taking the activations after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 (layers l = 0..4);
  3. each activation divided, at every pixel, by its L2 norm over channels (+ 1e-10);
  4. ``LPIPS(x, y) = sum_l mean over pixels of sum_c w_lc (f_l(x) - f_l(y))_c^2``, with the
     learned non-negative channel weights w_l (the package's 1x1 'lin' convolutions).

Since w >= 0 this is a squared Euclidean distance between embeddings
``e_l(x) = f_l(x) * sqrt(w_l) / sqrt(H_l W_l)``, concatenated over layers: `lpips_distance`
is a `distances.Distance` with ``squared=True`` and the pairwise machinery of `distances` serves
it unchanged. An embedding holds ``sum_l C_l H_l W_l`` values: 124,928 at 32 px (500 kB in
float32; 1000 samples: 500 MB), 499,712 at 64 px (2 MB an image).

Weights come from files the user provides, nothing downloaded; a torch ``.pth`` is read by
``inception.read_state_dict`` (the restricted unpickler: no torch, nothing executed), an
``.npz`` by numpy without pickle. One file or several (their tensors are merged; a name in two
files is refused), together holding:

  * VGG16's convolutions under torchvision's names, ``features.{i}.weight`` (O, I, 3, 3) and
    ``features.{i}.bias`` for i in 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28 (torchvision's
    ``vgg16`` ImageNet state dict; its ``classifier.*`` tensors are ignored), or under the
    ``lpips`` package's module names ``net.slice{k}.{i}.weight`` / ``.bias``;
  * the lin weights ``lin{l}.model.1.weight`` (1, C_l, 1, 1), l = 0..4 (the package's
    ``weights/v0.1/vgg.pth``; a full ``LPIPS`` module state dict also has them as
    ``lins.{l}.model.1.weight``, which must then agree, and ``scaling_layer.*``, ignored).

So torchvision's ``vgg16-397923af.pth`` plus lpips' ``vgg.pth`` (two files), or
``torch.save(lpips.LPIPS(net='vgg').state_dict())`` (one), or one ``.npz`` with the names above.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gantl_jax import errors
from gantl_jax.errors import LPIPSWeightsError
from gantl_jax.metrics import distances as dist_lib
from gantl_jax.metrics import inception

# torchvision's vgg16().features: the index of each convolution, its output channels, and
# whether a max pool comes before it.
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
CONV_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
POOL_BEFORE = (5, 10, 17, 24)
# The convolutions whose ReLU outputs LPIPS compares: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
TAP_AFTER = (2, 7, 14, 21, 28)
LAYER_CHANNELS = (64, 128, 256, 512, 512)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10
MIN_RESOLUTION = 16

Params = Any


def vgg16_taps(params: Params, x: jax.Array, precision=jax.lax.Precision.HIGHEST) -> list[jax.Array]:
  """The five ReLU activations LPIPS compares, of NHWC float images already scaled (step 1)."""
  taps = []
  for index in CONV_INDICES:
    if index in POOL_BEFORE:
      x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    conv = params["features"][str(index)]
    x = jax.lax.conv_general_dilated(x, conv["kernel"], (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)
    x = jax.nn.relu(x + conv["bias"])
    if index in TAP_AFTER:
      taps.append(x)
  return taps


def preprocess(images: jax.Array) -> jax.Array:
  """uint8 NHWC (1 or 3 channels) -> float32 RGB after the [-1, 1] scaling and the ScalingLayer."""
  x = images.astype(jnp.float32)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  x = x / 127.5 - 1.0
  return (x - jnp.asarray(SHIFT, jnp.float32)) / jnp.asarray(SCALE, jnp.float32)


def embed(params: Params, images: jax.Array) -> jax.Array:
  """float32 (N, dim) embeddings whose squared L2 differences are the LPIPS distances."""
  parts = []
  for f, w in zip(vgg16_taps(params, preprocess(images)), params["lin"]):
    f = f / (jnp.sqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True)) + NORM_EPS)
    f = f * (jnp.sqrt(w) / np.sqrt(f.shape[1] * f.shape[2]))
    parts.append(f.reshape(f.shape[0], -1))
  return jnp.concatenate(parts, axis=1)


_embed_jit = jax.jit(embed)


# ---------------------------------------------------------------------------
# Weights.


def _canonical_name(name: str) -> str | None:
  """A tensor's name in torchvision / lpips-file form; None for tensors LPIPS does not use."""
  if name.startswith(("classifier.", "scaling_layer.")):
    return None
  m = re.fullmatch(r"net\.slice\d\.(\d+)\.(weight|bias)", name)
  if m:
    return f"features.{m.group(1)}.{m.group(2)}"
  m = re.fullmatch(r"lins\.(\d)\.model\.1\.weight", name)
  if m:
    return f"lin{m.group(1)}.model.1.weight"
  return name


def expected_shapes() -> dict[str, tuple[int, ...]]:
  """Every tensor LPIPS-VGG needs, by canonical name, with its torch shape."""
  shapes, cin = {}, 3
  for index, cout in zip(CONV_INDICES, CONV_CHANNELS):
    shapes[f"features.{index}.weight"] = (cout, cin, 3, 3)
    shapes[f"features.{index}.bias"] = (cout,)
    cin = cout
  for layer, c in enumerate(LAYER_CHANNELS):
    shapes[f"lin{layer}.model.1.weight"] = (1, c, 1, 1)
  return shapes


def read_tensors(path: str) -> dict[str, np.ndarray]:
  """The tensors of one weight file: an ``.npz`` (no pickle) or a torch state dict."""
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
      raise LPIPSWeightsError(f"cannot read LPIPS weights {path}: {e}") from e
  try:
    return inception.read_state_dict(path)
  except errors.InceptionWeightsError as e:
    raise LPIPSWeightsError(f"cannot read LPIPS weights {path}: {e.__cause__ or e}") from e


def params_from_state_dict(state: dict[str, np.ndarray]) -> Params:
  """Our parameters (numpy float32: conv kernels HWIO, lin weights (C,)) from torch-named tensors.

  Raises LPIPSWeightsError listing the missing, unexpected and wrong tensors.
  """
  shapes = expected_shapes()
  found: dict[str, np.ndarray] = {}
  unexpected, wrong, wrong_names = [], [], set()
  for name, value in state.items():
    canonical = _canonical_name(name)
    if canonical is None:
      continue
    if canonical not in shapes:
      unexpected.append(name)
      continue
    problem = None
    if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating):
      problem = f"not a float tensor ({type(value).__name__})"
    elif value.shape != shapes[canonical]:
      problem = f"shape {value.shape}, expected {shapes[canonical]}"
    elif canonical in found and not np.array_equal(found[canonical], value):
      problem = f"differs from another copy of {canonical}"
    elif canonical.startswith("lin") and (value < 0).any():
      problem = "negative weights (LPIPS's lin weights are non-negative)"
    if problem:
      wrong.append(f"{name}: {problem}")
      wrong_names.add(canonical)
    else:
      found[canonical] = np.asarray(value, np.float32)
  missing = [n for n in shapes if n not in found and n not in wrong_names]
  if missing or unexpected or wrong:
    parts = ["the files do not hold LPIPS-VGG weights:"]
    if missing:
      parts.append(f"{len(missing)} missing tensor(s): {missing}")
    if unexpected:
      parts.append(f"{len(unexpected)} unexpected tensor(s): {unexpected}")
    if wrong:
      parts.append(f"{len(wrong)} wrong tensor(s): {wrong}")
    raise LPIPSWeightsError("; ".join(parts))
  features = {str(i): {"kernel": np.ascontiguousarray(found[f"features.{i}.weight"].transpose(2, 3, 1, 0)),
                       "bias": found[f"features.{i}.bias"]} for i in CONV_INDICES}
  lin = [found[f"lin{layer}.model.1.weight"].reshape(-1) for layer in range(len(LAYER_CHANNELS))]
  return {"features": features, "lin": lin}


@dataclasses.dataclass(frozen=True, eq=False)
class LPIPSWeights:
  """Parameters read from weight files, and what identifies them."""

  params: Params
  sha256: str  # of the files' digests in order: a cache key of anything computed with them
  paths: tuple[str, ...]


def load_weights(paths: str | Sequence[str]) -> LPIPSWeights:
  """Reads LPIPS-VGG weights from one file or several (a sequence, or one comma-separated string)."""
  if isinstance(paths, str):
    paths = [p.strip() for p in paths.split(",") if p.strip()]
  if not paths:
    raise LPIPSWeightsError("no LPIPS weight file given")
  state: dict[str, np.ndarray] = {}
  for path in paths:
    tensors = read_tensors(path)
    twice = sorted(set(tensors) & set(state))
    if twice:
      raise LPIPSWeightsError(f"{path} repeats tensor(s) of an earlier file: {twice[:8]}")
    state.update(tensors)
  digest = hashlib.sha256("".join(inception.file_sha256(p) for p in paths).encode()).hexdigest()
  return LPIPSWeights(params_from_state_dict(state), digest, tuple(paths))


def lpips_distance(weights: LPIPSWeights, batch_size: int = 64) -> dist_lib.Distance:
  """LPIPS-VGG as a `distances.Distance` (squared L2 of `embed`), jitted, weights on the device."""
  params = jax.device_put(weights.params)

  def embed_batch(images: np.ndarray) -> np.ndarray:
    if min(images.shape[1:3]) < MIN_RESOLUTION:
      raise ValueError(f"LPIPS-VGG needs images of at least {MIN_RESOLUTION} px (4 max pools), "
                       f"got {images.shape[1]}x{images.shape[2]}")
    return np.asarray(_embed_jit(params, jnp.asarray(images)))

  return dist_lib.Distance("lpips", embed_batch, squared=True, batch_size=batch_size)

