"""Kernel-modulation adapters of G's synthesis convolutions (``fewshot.adapter='kernel_modulation'``),
in the spirit of AdAM (Zhao et al. 2022, "Few-shot image generation via adaptation-aware kernel
modulation").

Every 3x3 synthesis convolution ``synthesis/b{R}/conv{0,1}`` gets two adapter leaves beside its
source kernel ``weight`` (HWIO, ``[3, 3, in, out]``): ``adapter_u`` ``[out]`` and ``adapter_v``
``[in]``. The model runs with the merged kernel

    W' = W * (1 + v u^T)        one factor per (input, output) channel pair, the same for all 9 taps

while W itself is frozen (:func:`frozen_patterns`, turned into optax labels by ``optim``), so a
layer trains ``in + out`` numbers instead of ``9 * in * out``.

Initialisation: ``u = 0`` and ``v ~ N(0, 1)``. Then W' = W * 1 = W exactly, so the adapted G is
the source bit for bit, and the first step already moves the model: dL/du_o, the sum over taps
and inputs i of (dL/dW' * W)[., ., i, o] * v_i, is non-zero, while dL/dv (proportional to u) is
zero until u has moved. (With both at zero neither would ever get a gradient; AdAM starts both
at 1e-7 noise, which is close to the source but not equal to it.)

Which layers are modulated (``fewshot.adapter_fisher_quantile = q``): with q = 0 all of them. With
q > 0, the layers whose mean Fisher information (``fisher.g_fisher``, on the source) lies above the
q-quantile of the layers' means keep their source kernel and are modulated; the others are
fine-tuned normally (their adapter leaves stay frozen at u = 0, i.e. no modulation). This is
AdAM's direction: important kernels are preserved and modulated, unimportant ones re-learned.
AdAM decides per output filter from the Fisher of the modulation parameters, probed on the target
data after a short adaptation; here the unit is a layer and the Fisher is that of the source
kernels on source samples, the same estimate EWC uses, so one Fisher serves both.

The leaves live in the ordinary G params tree (trained, EMA-averaged and checkpointed with G); the
Flax model never sees them: :func:`merge` turns adapted params into the plain params it takes, and
is the identity on params without adapters. Export a plain G with :func:`merge_variables`.
"""
from __future__ import annotations

import re
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from gantl_jax import errors
from gantl_jax.models import stylegan2

KINDS = ("none", "kernel_modulation")
U, V = "adapter_u", "adapter_v"
# The modulated layers: G's 3x3 synthesis convolutions (not toRGB, not the style affines).
_LAYER = re.compile(r"^synthesis/b\d+/conv[01]$")


def kind(config) -> str:
  """``config.fewshot.adapter``: 'none' or one of the adapter kinds."""
  return config.fewshot.adapter


def enabled(config) -> bool:
  """Whether G's params carry adapters (method 'adapters' of ``methods.py``: the step merges them
  into the kernels before every use of G)."""
  return kind(config) != "none"


def _flat(tree: Any) -> dict[str, Any]:
  return traverse_util.flatten_dict(tree, sep="/")


def _unflat(flat: dict[str, Any]) -> Any:
  return traverse_util.unflatten_dict(flat, sep="/")


def is_adapter_path(path: str) -> bool:
  """Whether a '/'-joined parameter path (with or without a leading 'params/') is an adapter leaf."""
  return path.rsplit("/", 1)[-1] in (U, V)


def conv_layers(g_params: Any) -> list[str]:
  """The layers that can carry an adapter, e.g. ``['synthesis/b4/conv1', 'synthesis/b8/conv0', ...]``,
  in the order of the params tree (sorted paths)."""
  return sorted(p.rsplit("/", 1)[0] for p in _flat(g_params)
                if p.endswith("/weight") and _LAYER.match(p.rsplit("/", 1)[0]))


def init(g_params: Any, key: jax.Array) -> Any:
  """``g_params`` with ``adapter_u = 0`` and ``adapter_v ~ N(0, 1)`` added to every conv layer
  (works on arrays and on ``jax.ShapeDtypeStruct`` trees under ``jax.eval_shape``)."""
  flat = dict(_flat(g_params))
  for i, layer in enumerate(conv_layers(g_params)):
    _, _, c_in, c_out = flat[f"{layer}/weight"].shape
    flat[f"{layer}/{U}"] = jnp.zeros((c_out,), jnp.float32)
    flat[f"{layer}/{V}"] = jax.random.normal(jax.random.fold_in(key, i), (c_in,), jnp.float32)
  return _unflat(flat)


def merge(g_params: Any) -> Any:
  """The plain params the Generator takes: each kernel with adapters becomes ``W * (1 + v u^T)``
  and the adapter leaves are dropped. Params without adapters come back unchanged."""
  flat = _flat(g_params)
  if not any(is_adapter_path(p) for p in flat):
    return g_params
  out = {p: x for p, x in flat.items() if not is_adapter_path(p)}
  for p, u in flat.items():
    if p.endswith("/" + U):
      layer = p[:-len(U) - 1]
      v = flat[f"{layer}/{V}"]
      out[f"{layer}/weight"] = flat[f"{layer}/weight"] * (1.0 + v[:, None] * u[None, :])
  return _unflat(out)


def merge_variables(g_vars: Any) -> Any:
  """G variables (``{'params', 'buffers'}``) with the adapters merged into plain kernels: what an
  export writes, loadable by a run without adapters. Plain variables come back unchanged."""
  return {**g_vars, "params": merge(g_vars["params"])}


def layer_importance(g_fisher: Any, layers: list[str]) -> dict[str, float]:
  """Mean Fisher information of each layer's kernel (``g_fisher`` in G's plain params layout)."""
  flat = _flat(g_fisher)
  return {layer: float(np.mean(np.asarray(flat[f"{layer}/weight"]))) for layer in layers}


def adapted_layers(fewshot, g_params: Any, g_fisher: Optional[Any] = None) -> list[str]:
  """The conv layers that are modulated (their source kernel frozen): all of them when
  ``fewshot.adapter_fisher_quantile`` is 0, else those whose mean Fisher is above that quantile
  of the layers' means. Without ``g_fisher`` (a build that needs only shapes, e.g. for sampling
  or export) every layer counts as adapted; the training loop always passes the run's Fisher."""
  layers = conv_layers(g_params)
  q = fewshot.adapter_fisher_quantile
  if not q or g_fisher is None:
    return layers
  importance = layer_importance(g_fisher, layers)
  threshold = np.quantile(np.asarray(list(importance.values())), q)
  return [layer for layer in layers if importance[layer] > threshold]


def frozen_patterns(config, g_params: Any, g_fisher: Optional[Any] = None) -> tuple[str, ...]:
  """Regexes (as ``freeze.g``) of what the adapters freeze: the source kernels of the adapted
  layers, and the adapter leaves of the layers that are fine-tuned instead. Empty without
  adapters."""
  if kind(config) == "none":
    return ()
  adapted = set(adapted_layers(config.fewshot, g_params, g_fisher))
  return tuple(f"^{layer}/weight$" if layer in adapted else f"^{layer}/adapter_[uv]$"
               for layer in conv_layers(g_params))


def report(config, g_params: Any, trainable: list[str], g_fisher: Optional[Any] = None) -> dict:
  """What the adapters do in a run, for ``transfer_report.json``: the modulated and fine-tuned
  layers (with their mean Fisher when it was used) and the trainable adapter values.
  ``trainable`` are G's trainable parameter paths (freezing and adapters applied)."""
  f = config.fewshot
  layers = conv_layers(g_params)
  adapted = adapted_layers(f, g_params, g_fisher)
  use_fisher = g_fisher is not None and f.adapter_fisher_quantile
  importance = layer_importance(g_fisher, layers) if use_fisher else {}
  flat = _flat(g_params)
  adapter_paths = [p for p in trainable if is_adapter_path(p)]
  return dict(kind=f.adapter, fisher_quantile=f.adapter_fisher_quantile,
              modulated=adapted, fine_tuned=[layer for layer in layers if layer not in adapted],
              importance=importance, trainable_adapter_leaves=len(adapter_paths),
              trainable_adapter_count=int(sum(np.prod(flat[p].shape, dtype=np.int64) for p in adapter_paths)))


def init_g_variables(generator: stylegan2.Generator, key: jax.Array, with_adapters: bool) -> dict[str, Any]:
  """Fresh G variables ``{'params', 'buffers'}``, with the adapter leaves when ``with_adapters``
  (``Networks.g_adapters``): at init the adapted G is the plain one, bit for bit."""
  g_vars = stylegan2.init_generator(generator, key)
  if with_adapters:
    g_vars = {**g_vars, "params": init(g_vars["params"], jax.random.fold_in(key, 1))}
  return g_vars


def check_config(config) -> None:
  """Raises ConfigError naming the adapter key of ``config.fewshot`` that cannot work."""
  f = config.fewshot
  if f.adapter not in KINDS:
    raise errors.ConfigError(f"fewshot.adapter must be one of {', '.join(map(repr, KINDS))}, "
                             f"got {f.adapter!r}")
  if not 0 <= f.adapter_fisher_quantile < 1:
    raise errors.ConfigError(f"fewshot.adapter_fisher_quantile must be in [0, 1) (0 adapts every "
                             f"conv layer), got {f.adapter_fisher_quantile}")
  if f.adapter_fisher_quantile != 0 and f.adapter == "none":
    raise errors.ConfigError(
        f"fewshot.adapter_fisher_quantile={f.adapter_fisher_quantile} chooses the layers of the "
        f"adapters; set fewshot.adapter='kernel_modulation' too, or the quantile to 0")
  if f.adapter != "none" and config.transfer.source == "":
    raise errors.ConfigError("fewshot.adapter adapts a pretrained generator, but transfer.source is "
                             "'' (from scratch); set --config.transfer.source to a source checkpoint")
