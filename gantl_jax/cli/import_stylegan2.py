"""Import pretrained StyleGAN2 weights into this project's Orbax checkpoint layout.

Usage::

  python -m gantl_jax.cli.import_stylegan2 SOURCE OUT_DIR [--overwrite] [--w-avg-samples N]

SOURCE is one of

* a stylegan2-ada-pytorch network pickle (``network-snapshot-*.pkl``): a dict with
  'G', 'D', 'G_ema' persistent-class objects (format ``'ada-pytorch'``);
* a TensorFlow StyleGAN2 / stylegan2-ada pickle: a tuple (G, D, Gs) of
  ``dnnlib.tflib.network.Network`` objects (format ``'tf'``);
* a rosinality/stylegan2-pytorch ``.pt`` checkpoint: ``torch.save`` of a dict with
  'g_ema' (and optionally 'g', 'd', 'latent_avg', 'args') (format ``'rosinality'``).

The file is read by :mod:`gantl_jax.safe_pickle`, which never runs code from it
and never imports torch. Every source tensor is mapped by an explicit rule to one
parameter path of :mod:`gantl_jax.models.stylegan2` (or checked and dropped, for the
[1,3,3,1] FIR filters that model keeps as constants); anything left over on either side
fails the import with a report. The pure entry point is :func:`convert`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
from typing import Callable, Optional

import ml_collections
import numpy as np

from gantl_jax import defaults
from gantl_jax import errors
from gantl_jax import safe_pickle

FORMATS = ("ada-pytorch", "tf", "rosinality")


class ConversionError(ValueError):
  """The source cannot be imported; the message says what was found."""


# ---------------------------------------------------------------------------
# Layout transforms. Our layouts: dense (in, out); conv HWIO; const HWC.


def _ident(x):
  return x


def _dense_t(x):
  return x.T  # torch Linear [out, in] -> (in, out)


def _conv_oihw(x):
  return x.transpose(2, 3, 1, 0)  # torch [out, in, kh, kw] -> HWIO


def _conv_1oihw(x):
  return x[0].transpose(2, 3, 1, 0)  # rosinality [1, out, in, kh, kw] -> HWIO


def _const_chw(x):
  return x.transpose(1, 2, 0)  # [C, 4, 4] -> [4, 4, C]


def _const_1chw(x):
  return x[0].transpose(1, 2, 0)


def _flip_hw(x):
  # TF stores the up-sampling conv for conv2d_transpose: spatially flipped w.r.t. torch/ours.
  return x[::-1, ::-1]


def _plus_one(x):
  return x + 1  # TF stores the style (modulation) bias minus its initial 1


def _squeeze_noise(x):
  return x.reshape(x.shape[-2:])  # [1, 1, R, R] -> [R, R]


def _scalar(x):
  return x.reshape(())


def _flat(x):
  return x.reshape(-1)


# FIR filters: the model uses [1,3,3,1] as a constant; a source one is checked then dropped.
_FIR_1D = np.array([1.0, 3.0, 3.0, 1.0])
_FIR_2D = np.outer(_FIR_1D, _FIR_1D) / np.outer(_FIR_1D, _FIR_1D).sum()


def _fir_check(gain: float) -> Callable[[np.ndarray], bool]:
  def check(x):
    return x.shape == (4, 4) and np.allclose(x, _FIR_2D * gain, rtol=1e-6, atol=1e-7)
  return check


DROP = "drop"  # rule target for constants that are verified and not stored


# ---------------------------------------------------------------------------
# Name rules: (regex over the source name, fn(match) -> (collection, path, transform)
# or (DROP, description, check)). The first matching rule wins.


def _rules_ada_g():
  syn = r"synthesis\.b(\d+)"
  layer = syn + r"\.(conv0|conv1|torgb)"
  return [
      (r"mapping\.fc(\d+)\.weight", lambda m: ("params", f"mapping/fc{m[1]}/weight", _dense_t)),
      (r"mapping\.fc(\d+)\.bias", lambda m: ("params", f"mapping/fc{m[1]}/bias", _ident)),
      (r"mapping\.w_avg", lambda m: ("buffers", "mapping/w_avg", _ident)),
      (r"synthesis\.b4\.const", lambda m: ("params", "synthesis/b4/const", _const_chw)),
      (layer + r"\.weight", lambda m: ("params", f"synthesis/b{m[1]}/{m[2]}/weight", _conv_oihw)),
      (layer + r"\.(bias|noise_strength)", lambda m: ("params", f"synthesis/b{m[1]}/{m[2]}/{m[3]}", _ident)),
      (layer + r"\.affine\.weight", lambda m: ("params", f"synthesis/b{m[1]}/{m[2]}/affine/weight", _dense_t)),
      (layer + r"\.affine\.bias", lambda m: ("params", f"synthesis/b{m[1]}/{m[2]}/affine/bias", _ident)),
      (layer + r"\.noise_const", lambda m: ("buffers", f"synthesis/b{m[1]}/{m[2]}/noise_const", _ident)),
      (r"(.*\.)?resample_filter", lambda m: (DROP, "FIR [1,3,3,1]", _fir_check(1.0))),
  ]


def _rules_ada_d():
  return [
      (r"b(\d+)\.(fromrgb|conv0|conv1|skip|conv)\.weight", lambda m: ("params", f"b{m[1]}/{m[2]}/weight", _conv_oihw)),
      (r"b(\d+)\.(fromrgb|conv0|conv1|conv|fc|out)\.bias", lambda m: ("params", f"b{m[1]}/{m[2]}/bias", _ident)),
      (r"b4\.(fc|out)\.weight", lambda m: ("params", f"b4/{m[1]}/weight", _dense_t)),
      (r"(.*\.)?resample_filter", lambda m: (DROP, "FIR [1,3,3,1]", _fir_check(1.0))),
  ]


def _tf_noise_target(i: int) -> str:
  # TF noise{i}: 0 is the 4x4 conv; then (conv0, conv1) of each resolution from 8 up.
  if i == 0:
    return "synthesis/b4/conv1/noise_const"
  res = 2 ** ((i + 5) // 2)
  return f"synthesis/b{res}/{'conv0' if i % 2 else 'conv1'}/noise_const"


def _rules_tf_g():
  layer_names = {"Conv": "conv1", "Conv0_up": "conv0", "Conv1": "conv1", "ToRGB": "torgb"}
  layer = r"synthesis/(\d+)x\d+/(Conv|Conv0_up|Conv1|ToRGB)"

  def weight(m):
    flip = m[2] == "Conv0_up"
    return ("params", f"synthesis/b{m[1]}/{layer_names[m[2]]}/weight", _flip_hw if flip else _ident)

  return [
      (r"dlatent_avg", lambda m: ("buffers", "mapping/w_avg", _ident)),
      # StyleGAN2's TF G_main keeps a progressive-growing level; 0 means full resolution.
      (r"lod", lambda m: (DROP, "progressive-growing lod 0", lambda x: x.shape == () and float(x) == 0.0)),
      (r"mapping/Dense(\d+)/weight", lambda m: ("params", f"mapping/fc{m[1]}/weight", _ident)),
      (r"mapping/Dense(\d+)/bias", lambda m: ("params", f"mapping/fc{m[1]}/bias", _ident)),
      (r"synthesis/4x4/Const/const", lambda m: ("params", "synthesis/b4/const", _const_1chw)),
      (layer + r"/weight", weight),
      (layer + r"/(bias|noise_strength)", lambda m: ("params", f"synthesis/b{m[1]}/{layer_names[m[2]]}/{m[3]}", _ident)),
      (layer + r"/mod_weight", lambda m: ("params", f"synthesis/b{m[1]}/{layer_names[m[2]]}/affine/weight", _ident)),
      (layer + r"/mod_bias", lambda m: ("params", f"synthesis/b{m[1]}/{layer_names[m[2]]}/affine/bias", _plus_one)),
      (r"synthesis/noise(\d+)", lambda m: ("buffers", _tf_noise_target(int(m[1])), _squeeze_noise)),
  ]


def _rules_tf_d():
  names = {"FromRGB": "fromrgb", "Conv0": "conv0", "Conv1_down": "conv1", "Skip": "skip", "Conv": "conv"}
  return [
      (r"(\d+)x\d+/(FromRGB|Conv0|Conv1_down|Skip|Conv)/(weight|bias)",
       lambda m: ("params", f"b{m[1]}/{names[m[2]]}/{m[3]}", _ident)),
      (r"4x4/Dense0/(weight|bias)", lambda m: ("params", f"b4/fc/{m[1]}", _ident)),
      (r"Output/(weight|bias)", lambda m: ("params", f"b4/out/{m[1]}", _ident)),
  ]


def _ros_conv_target(j: int) -> str:
  # rosinality convs.{j}: pairs (up-sampling conv0, conv1) per resolution from 8 up.
  return f"synthesis/b{2 ** (3 + j // 2)}/{'conv1' if j % 2 else 'conv0'}"


def _ros_noise_target(i: int) -> str:
  if i == 0:
    return "synthesis/b4/conv1/noise_const"
  return _ros_conv_target(i - 1) + "/noise_const"


def _rules_ros_g():
  def styled(prefix_fn):
    return [
        (r"\.conv\.weight", lambda m: ("params", prefix_fn(m) + "/weight", _conv_1oihw)),
        (r"\.conv\.modulation\.weight", lambda m: ("params", prefix_fn(m) + "/affine/weight", _dense_t)),
        (r"\.conv\.modulation\.bias", lambda m: ("params", prefix_fn(m) + "/affine/bias", _ident)),
        (r"\.noise\.weight", lambda m: ("params", prefix_fn(m) + "/noise_strength", _scalar)),
        (r"\.activate\.bias", lambda m: ("params", prefix_fn(m) + "/bias", _ident)),
        (r"\.bias", lambda m: ("params", prefix_fn(m) + "/bias", _flat)),  # toRGB [1, 3, 1, 1]
    ]

  rules = [
      (r"style\.(\d+)\.weight", lambda m: ("params", f"mapping/fc{int(m[1]) - 1}/weight", _dense_t)),
      (r"style\.(\d+)\.bias", lambda m: ("params", f"mapping/fc{int(m[1]) - 1}/bias", _ident)),
      (r"input\.input", lambda m: ("params", "synthesis/b4/const", _const_1chw)),
      (r"noises\.noise_(\d+)", lambda m: ("buffers", _ros_noise_target(int(m[1])), _squeeze_noise)),
      # Up-sampling kernels are the FIR scaled by factor**2 = 4.
      (r"convs\.\d+\.conv\.blur\.kernel", lambda m: (DROP, "FIR [1,3,3,1] * 4", _fir_check(4.0))),
      (r"to_rgbs\.\d+\.upsample\.kernel", lambda m: (DROP, "FIR [1,3,3,1] * 4", _fir_check(4.0))),
  ]
  for head, fn in ((r"conv1", lambda m: "synthesis/b4/conv1"),
                   (r"to_rgb1", lambda m: "synthesis/b4/torgb"),
                   (r"convs\.(\d+)", lambda m: _ros_conv_target(int(m[1]))),
                   (r"to_rgbs\.(\d+)", lambda m: f"synthesis/b{2 ** (3 + int(m[1]))}/torgb")):
    rules += [(head + tail, make) for tail, make in styled(fn)]
  return rules


def _rules_ros_d(resolution: int):
  def res(j):
    return resolution // 2 ** (j - 1)
  return [
      (r"convs\.0\.0\.weight", lambda m: ("params", f"b{resolution}/fromrgb/weight", _conv_oihw)),
      (r"convs\.0\.1\.bias", lambda m: ("params", f"b{resolution}/fromrgb/bias", _ident)),
      (r"convs\.(\d+)\.conv1\.0\.weight", lambda m: ("params", f"b{res(int(m[1]))}/conv0/weight", _conv_oihw)),
      (r"convs\.(\d+)\.conv1\.1\.bias", lambda m: ("params", f"b{res(int(m[1]))}/conv0/bias", _ident)),
      (r"convs\.(\d+)\.conv2\.1\.weight", lambda m: ("params", f"b{res(int(m[1]))}/conv1/weight", _conv_oihw)),
      (r"convs\.(\d+)\.conv2\.2\.bias", lambda m: ("params", f"b{res(int(m[1]))}/conv1/bias", _ident)),
      (r"convs\.(\d+)\.skip\.1\.weight", lambda m: ("params", f"b{res(int(m[1]))}/skip/weight", _conv_oihw)),
      (r"convs\.\d+\.(conv2|skip)\.0\.kernel", lambda m: (DROP, "FIR [1,3,3,1]", _fir_check(1.0))),
      (r"final_conv\.0\.weight", lambda m: ("params", "b4/conv/weight", _conv_oihw)),
      (r"final_conv\.1\.bias", lambda m: ("params", "b4/conv/bias", _ident)),
      (r"final_linear\.0\.(weight)", lambda m: ("params", "b4/fc/weight", _dense_t)),
      (r"final_linear\.0\.(bias)", lambda m: ("params", "b4/fc/bias", _ident)),
      (r"final_linear\.1\.(weight)", lambda m: ("params", "b4/out/weight", _dense_t)),
      (r"final_linear\.1\.(bias)", lambda m: ("params", "b4/out/bias", _ident)),
  ]


# ---------------------------------------------------------------------------
# Mapping a flat {source name: array} onto the model's expected variables.


def model_config(hparams: dict, conv_impl: str = "xla") -> ml_collections.ConfigDict:
  """A ``config.model`` section for ``hparams`` (as :func:`convert` returns them), from which
  ``stylegan2.generator_from_config`` / ``discriminator_from_config`` build the networks."""
  model = defaults.get_config().model.to_dict()  # the keys hparams lack (compute dtype)
  return ml_collections.ConfigDict({**model, **hparams, "conv_impl": conv_impl})


def _expected_shapes(hparams: dict, which: str) -> dict[str, tuple]:
  """{'collection/path': shape} of our model's variables for these hyper-parameters."""
  import jax
  from gantl_jax.models import stylegan2 as sg2

  model = model_config(hparams)
  if which == "g":
    net = sg2.generator_from_config(model)
    shapes = jax.eval_shape(lambda: sg2.init_generator(net, jax.random.PRNGKey(0)))
  else:
    net = sg2.discriminator_from_config(model)
    shapes = jax.eval_shape(lambda: sg2.init_discriminator(net, jax.random.PRNGKey(0)))
  return {path: tuple(leaf.shape) for path, leaf in _flatten(shapes).items()}


def _flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) or hasattr(v, "items"):
      out.update(_flatten(v, f"{prefix}{k}/"))
    else:
      out[prefix + k] = v
  return out


def _unflatten(flat: dict) -> dict:
  out: dict = {}
  for path, value in flat.items():
    node = out
    parts = path.split("/")
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = value
  return out


def map_tensors(source: dict, rules, expected: dict, net: str, report: dict) -> dict:
  """Apply name rules to ``source`` ({name: array}) and check against ``expected``.

  Returns the nested ``{'params': ..., ['buffers': ...]}`` variables. Records, in
  ``report``, the mapping, dropped constants, unmapped source tensors, unset
  targets and shape mismatches (the caller fails if any of the last three remain).
  """
  compiled = [(re.compile(p), fn) for p, fn in rules]
  flat: dict[str, np.ndarray] = {}
  for name, value in source.items():
    value = np.asarray(value)
    for pattern, fn in compiled:
      m = pattern.fullmatch(name)
      if m is None:
        continue
      collection, path, transform = fn(m)
      if collection == DROP:
        if transform(value):
          report["dropped"].append(f"{net}:{name} ({path})")
        else:
          report["errors"].append(f"{net}:{name} is not the {path} filter this model uses: {value.tolist()}")
        break
      key = f"{collection}/{path}"
      if key in flat:
        report["errors"].append(f"{net}:{name} maps to {key}, which another source tensor already set")
        break
      # np.array, not ascontiguousarray: the latter turns 0-d scalars into shape (1,).
      out = np.array(transform(value), dtype=np.float32, order="C")
      if key not in expected:
        report["unmapped_source"].append(f"{net}:{name} -> {key} (no such model variable)")
      elif out.shape != expected[key]:
        report["shape_mismatch"].append(
            f"{net}:{name} {tuple(value.shape)} -> {key} {out.shape}, model expects {expected[key]}")
      else:
        flat[key] = out
        report["mapping"].append(f"{net}:{name} -> {key}")
      break
    else:
      report["unmapped_source"].append(f"{net}:{name} {tuple(value.shape)}")
  for key in expected:
    if key not in flat:
      report["unset_target"].append(f"{net}:{key} {expected[key]}")
  return _unflatten(flat)


def _new_report(fmt: str) -> dict:
  return dict(format=fmt, source_hparams={}, notes=[], mapping=[], dropped=[], errors=[],
              unmapped_source=[], unset_target=[], shape_mismatch=[])


def _fail_if_incomplete(report: dict):
  problems = []
  for key in ("errors", "unmapped_source", "unset_target", "shape_mismatch"):
    if report[key]:
      lines = "\n    ".join(report[key][:40])
      more = f"\n    ... and {len(report[key]) - 40} more" if len(report[key]) > 40 else ""
      problems.append(f"  {key} ({len(report[key])}):\n    {lines}{more}")
  if problems:
    raise ConversionError(
        f"cannot import this {report['format']} source completely:\n" + "\n".join(problems))


# ---------------------------------------------------------------------------
# Format detection.


def describe(obj) -> str:
  """A short human description of an unpickled object, for error messages."""
  if isinstance(obj, safe_pickle.PersistentObject):
    return f"persistent object {obj.class_name!r}"
  if isinstance(obj, safe_pickle.TFNetwork):
    return f"TF Network {obj.state.get('name')!r}"
  if isinstance(obj, np.ndarray):
    return f"array {obj.dtype}{list(obj.shape)}"
  if isinstance(obj, dict):
    keys = list(obj.keys())
    shown = ", ".join(repr(k) for k in keys[:8]) + (", ..." if len(keys) > 8 else "")
    return f"dict with keys [{shown}]"
  if isinstance(obj, (tuple, list)):
    inner = ", ".join(describe(x) for x in obj[:4]) + (", ..." if len(obj) > 4 else "")
    return f"{type(obj).__name__} of {len(obj)} ({inner})"
  return type(obj).__name__


def detect_format(obj) -> str:
  """Which StyleGAN2 format an unpickled object is; raises ConversionError if none."""
  if isinstance(obj, dict) and isinstance(obj.get("G_ema"), safe_pickle.PersistentObject):
    return "ada-pytorch"
  if (isinstance(obj, tuple) and len(obj) == 3
      and all(isinstance(x, safe_pickle.TFNetwork) for x in obj)):
    return "tf"
  if isinstance(obj, dict) and isinstance(obj.get("g_ema"), dict):
    return "rosinality"
  raise ConversionError(
      "not a StyleGAN2 network file: expected a stylegan2-ada-pytorch pickle (dict with "
      "'G', 'D', 'G_ema'), a TF StyleGAN2 pickle (tuple of 3 Networks) or a rosinality .pt "
      f"(dict with 'g_ema'); found {describe(obj)}")


def read_source(path: str):
  """Safely read ``path``; returns ``(fmt, tree)``. Raises ConversionError naming ``path`` for a file
  that cannot be read or asks for anything the restricted unpickler refuses."""
  try:
    _, tree = safe_pickle.load(path)
  except errors.SourceFormatError as e:
    raise ConversionError(f"cannot read {path}: {e}") from e
  except errors.UnsafePickleError as e:
    raise ConversionError(f"cannot import {path}: {e}") from e
  except OSError as e:  # missing, a directory, unreadable
    raise ConversionError(f"cannot read {path}: {e.strerror or e}") from e
  return detect_format(tree), tree


# ---------------------------------------------------------------------------
# Hyper-parameters per format.


def _check_stylegan3(g_sd: dict):
  sg3 = [k for k in g_sd if k.startswith("synthesis.input.") or re.match(r"synthesis\.L\d+_", k)]
  if sg3:
    raise ConversionError(
        "this is a StyleGAN3 generator (found " + ", ".join(sorted(sg3)[:3])
        + ", ...): only StyleGAN2 networks can be imported")


def _infer_channels(channels: dict[int, int]) -> tuple[int, int]:
  """channel_base, channel_max reproducing {resolution: channels} via min(base // r, max)."""
  cmax = max(channels.values())
  below = {r: c for r, c in channels.items() if c < cmax}
  if below:
    r = max(below)
    base = below[r] * r
  else:
    base = cmax * max(channels)
  for r, c in channels.items():
    if min(base // r, cmax) != c:
      raise ConversionError(f"channel counts {channels} follow no min(base // res, max) schedule")
  return base, cmax


def _hparams_ada(G, D, report) -> dict:
  gk = G.state.get("_init_kwargs") or {}
  dk = D.state.get("_init_kwargs") or {}
  if not gk or not dk:
    raise ConversionError("ada-pytorch networks without init_kwargs: cannot read hyper-parameters")
  mk = dict(gk.get("mapping_kwargs") or {})
  sk = dict(gk.get("synthesis_kwargs") or {})
  ek = dict(dk.get("epilogue_kwargs") or {})
  bk = dict(dk.get("block_kwargs") or {})
  report["source_hparams"] = dict(G=gk, D=dk)
  if gk.get("c_dim", 0) or dk.get("c_dim", 0):
    raise ConversionError(f"conditional network (c_dim={gk.get('c_dim')}): not supported")
  checks = [
      ("G synthesis architecture", sk.get("architecture", "skip"), "skip"),
      ("D architecture", dk.get("architecture", "resnet"), "resnet"),
      ("G activation", sk.get("activation", "lrelu"), "lrelu"),
      ("G mapping activation", mk.get("activation", "lrelu"), "lrelu"),
      ("D activation", bk.get("activation", "lrelu"), "lrelu"),
      ("G resample_filter", list(sk.get("resample_filter", [1, 3, 3, 1])), [1, 3, 3, 1]),
      ("D resample_filter", list(bk.get("resample_filter", [1, 3, 3, 1])), [1, 3, 3, 1]),
      ("G use_noise", sk.get("use_noise", True), True),
      ("G mapping layer_features", mk.get("layer_features"), None),
  ]
  for what, got, want in checks:
    if got != want:
      raise ConversionError(f"{what} is {got!r}; this model supports only {want!r}")
  g_clamp, d_clamp = sk.get("conv_clamp"), dk.get("conv_clamp")
  if g_clamp != d_clamp:
    raise ConversionError(f"G conv_clamp={g_clamp} and D conv_clamp={d_clamp} differ; the model has one")
  g_ch = (sk.get("channel_base", 32768), sk.get("channel_max", 512))
  d_ch = (dk.get("channel_base", 32768), dk.get("channel_max", 512))
  if g_ch != d_ch:
    report["notes"].append(f"G channel_base/max {g_ch} differ from D's {d_ch}: using G's")
  group = ek.get("mbstd_group_size", 4)
  if group is None:
    report["notes"].append("D mbstd_group_size=None (whole minibatch) in the source: set to 4")
    group = 4
  fp16 = (sk.get("num_fp16_res", 0), dk.get("num_fp16_res", 0))
  if any(fp16):
    report["notes"].append(f"source ran {fp16} (G, D) highest resolutions in fp16; imported as fp32")
  return dict(
      resolution=gk["img_resolution"], img_channels=gk.get("img_channels", 3),
      z_dim=gk["z_dim"], w_dim=gk["w_dim"], mapping_layers=mk.get("num_layers", 8),
      mapping_lr_mul=float(mk.get("lr_multiplier", 0.01)),
      channel_base=g_ch[0], channel_max=g_ch[1],
      conv_clamp=None if g_clamp is None else float(g_clamp),
      mbstd_group_size=group, mbstd_num_channels=ek.get("mbstd_num_channels", 1))


# TF static kwargs that do not change the weights or the forward pass we reproduce.
_TF_IGNORED = {"truncation_psi", "truncation_cutoff", "truncation_psi_val", "truncation_cutoff_val",
               "dlatent_avg_beta", "style_mixing_prob", "structure", "randomize_noise", "dtype",
               "fused_modconv", "is_template_graph", "components", "is_training", "is_validation",
               "return_dlatents", "mapping_func", "synthesis_func", "num_fp16_res", "use_spectral_norm",
               "augment_strength", "freeze_layers", "func_name"}


def _hparams_tf(tf_G, tf_D, report) -> dict:
  for net in (tf_G, tf_D):
    if net.state.get("version", 0) < 4:
      raise ConversionError(f"TF Network version {net.state.get('version')} is older than StyleGAN2 (4)")
  gk = dict(tf_G.state.get("static_kwargs") or {})
  dk = dict(tf_D.state.get("static_kwargs") or {})
  report["source_hparams"] = dict(G=gk, D=dk)
  known = {"latent_size", "label_size", "dlatent_size", "resolution", "num_channels", "mapping_layers",
           "mapping_lrmul", "fmap_base", "fmap_max", "fmap_min", "fmap_decay", "conv_clamp",
           "architecture", "nonlinearity", "mapping_nonlinearity", "resample_kernel", "use_noise",
           "mapping_fmaps", "label_fmaps", "normalize_latents", "mbstd_group_size",
           "mbstd_num_features", "dlatent_broadcast", "fmap_const"} | _TF_IGNORED
  for name, kw in (("G", gk), ("D", dk)):
    unknown = sorted(set(kw) - known)
    if unknown:
      raise ConversionError(f"TF {name} has static kwargs this importer does not know: {unknown}")

  def get(kw, key, default):
    v = kw.get(key, default)
    return default if v is None else v

  checks = [
      ("G architecture", get(gk, "architecture", "skip"), "skip"),
      ("D architecture", get(dk, "architecture", "resnet"), "resnet"),
      ("G nonlinearity", get(gk, "nonlinearity", "lrelu"), "lrelu"),
      ("G mapping_nonlinearity", get(gk, "mapping_nonlinearity", "lrelu"), "lrelu"),
      ("D nonlinearity", get(dk, "nonlinearity", "lrelu"), "lrelu"),
      ("G resample_kernel", list(get(gk, "resample_kernel", [1, 3, 3, 1])), [1, 3, 3, 1]),
      ("D resample_kernel", list(get(dk, "resample_kernel", [1, 3, 3, 1])), [1, 3, 3, 1]),
      ("G use_noise", get(gk, "use_noise", True), True),
      ("G normalize_latents", get(gk, "normalize_latents", True), True),
      ("G label_size", get(gk, "label_size", 0), 0),
      ("D label_size", get(dk, "label_size", 0), 0),
      ("G fmap_decay", get(gk, "fmap_decay", 1), 1),
      ("D fmap_decay", get(dk, "fmap_decay", 1), 1),
      ("G fmap_min", get(gk, "fmap_min", 1), 1),
      ("D fmap_min", get(dk, "fmap_min", 1), 1),
      ("G mapping_fmaps", gk.get("mapping_fmaps"), None),
      ("G fmap_const", gk.get("fmap_const"), None),
  ]
  for what, got, want in checks:
    if got != want:
      raise ConversionError(f"{what} is {got!r}; this model supports only {want!r}")
  g_clamp, d_clamp = gk.get("conv_clamp"), dk.get("conv_clamp")
  if g_clamp != d_clamp:
    raise ConversionError(f"G conv_clamp={g_clamp} and D conv_clamp={d_clamp} differ; the model has one")
  group = dk.get("mbstd_group_size")
  if group is None:
    report["notes"].append("D mbstd_group_size not recorded in the source: set to 4 (StyleGAN2's default)")
    group = 4
  if gk.get("num_fp16_res") or dk.get("num_fp16_res"):
    report["notes"].append("source used fp16 layers; imported as fp32")
  g_base = get(gk, "fmap_base", 16384) * 2
  d_base = get(dk, "fmap_base", 16384) * 2
  if (g_base, get(gk, "fmap_max", 512)) != (d_base, get(dk, "fmap_max", 512)):
    report["notes"].append("G and D fmap_base/fmap_max differ: using G's")
  return dict(
      resolution=get(gk, "resolution", 1024), img_channels=get(gk, "num_channels", 3),
      z_dim=get(gk, "latent_size", 512), w_dim=get(gk, "dlatent_size", 512),
      mapping_layers=get(gk, "mapping_layers", 8), mapping_lr_mul=float(get(gk, "mapping_lrmul", 0.01)),
      channel_base=g_base, channel_max=get(gk, "fmap_max", 512),
      conv_clamp=None if g_clamp is None else float(g_clamp),
      mbstd_group_size=group, mbstd_num_channels=get(dk, "mbstd_num_features", 1))


def _hparams_ros(g_sd: dict, args: dict, report) -> dict:
  # rosinality's .pt carries no architecture description: read it off the shapes.
  report["source_hparams"] = dict(args=args)
  style = sorted(int(m[1]) for k in g_sd if (m := re.fullmatch(r"style\.(\d+)\.weight", k)))
  if not style or "input.input" not in g_sd:
    raise ConversionError("rosinality 'g_ema' lacks style.*.weight / input.input")
  w_dim, z_dim = g_sd[f"style.{style[0]}.weight"].shape[::-1]
  channels = {4: g_sd["input.input"].shape[1]}
  j = 0
  while f"convs.{j}.conv.weight" in g_sd:
    channels[2 ** (3 + j // 2)] = g_sd[f"convs.{j}.conv.weight"].shape[1]
    j += 2
  resolution = max(channels)
  base, cmax = _infer_channels(channels)
  multiplier = args.get("channel_multiplier")
  if cmax == 512 and multiplier and min(channels.values()) == 512:
    base = 16384 * int(multiplier)  # all levels at the cap: rosinality's schedule fixes the base
  if "to_rgb1.conv.weight" in g_sd:
    img_channels = g_sd["to_rgb1.conv.weight"].shape[1]
  else:
    img_channels = 3
  lr_mul = float(args.get("lr_mlp", 0.01))
  if "lr_mlp" not in args:
    report["notes"].append("mapping lr multiplier not recorded in the source: assumed 0.01 (rosinality default)")
  return dict(
      resolution=resolution, img_channels=img_channels, z_dim=int(z_dim), w_dim=int(w_dim),
      mapping_layers=len(style), mapping_lr_mul=lr_mul, channel_base=base, channel_max=cmax,
      conv_clamp=None, mbstd_group_size=4, mbstd_num_channels=1)


# ---------------------------------------------------------------------------
# Per-format source tensors.


def _tf_params(net: "safe_pickle.TFNetwork", prefix: str = "") -> dict:
  out = {}
  for name, value in net.state.get("variables") or []:
    out[prefix + name] = value
  for name, comp in (net.state.get("components") or {}).items():
    if not isinstance(comp, safe_pickle.TFNetwork):
      raise ConversionError(f"TF component {name} is {describe(comp)}, not a Network")
    out.update(_tf_params(comp, prefix + name + "/"))
  return out


def _ros_state(tree: dict, key: str) -> Optional[dict]:
  sd = tree.get(key)
  if sd is None:
    return None
  if not isinstance(sd, dict) or not all(isinstance(v, np.ndarray) for v in sd.values()):
    raise ConversionError(f"rosinality {key!r} is not a state dict of tensors: {describe(sd)}")
  return sd


def mapping_w_avg(g_params: dict, hparams: dict, num_samples: int = 10000, seed: int = 0) -> np.ndarray:
  """Mean of w over ``num_samples`` random z, computed with numpy (rosinality files without
  'latent_avg'). The same estimate rosinality's ``mean_latent`` makes."""
  rng = np.random.default_rng(seed)
  z = rng.standard_normal((num_samples, hparams["z_dim"])).astype(np.float64)
  x = z / np.sqrt(np.mean(z ** 2, axis=1, keepdims=True) + 1e-8)
  lr = hparams["mapping_lr_mul"]
  for i in range(hparams["mapping_layers"]):
    w = g_params["mapping"][f"fc{i}"]["weight"].astype(np.float64)
    b = g_params["mapping"][f"fc{i}"]["bias"].astype(np.float64)
    x = x @ (w * (lr / math.sqrt(w.shape[0]))) + b * lr
    x = np.where(x >= 0, x, 0.2 * x) * math.sqrt(2.0)
  return x.mean(axis=0).astype(np.float32)


def convert(source_tree, fmt: str, w_avg_samples: int = 0):
  """Convert an unpickled StyleGAN2 source to this project's variables.

  Args:
    source_tree: what :func:`safe_pickle.load` returned for the file.
    fmt: one of FORMATS (see :func:`detect_format`).
    w_avg_samples: for rosinality files without 'latent_avg', estimate w_avg from this
      many samples of the mapping network (0: fail instead).

  Returns:
    ``(model_hparams, g_vars, g_ema_vars, d_vars, report)``: ``model_hparams`` holds the
    ``config.model`` keys (``mbstd_grouping`` is 'strided', the originals' grouping);
    ``g_vars``/``g_ema_vars`` are ``{'params', 'buffers'}`` and ``d_vars`` is ``{'params'}``
    (None when the source has no discriminator), all nested dicts of float32 numpy arrays;
    ``report`` lists every mapping, dropped constant and note.

  Raises:
    ConversionError: unsupported network, or any source tensor unmapped or any model
      variable unset (the message lists them).
  """
  if fmt not in FORMATS:
    raise ConversionError(f"unknown format {fmt!r}; expected one of {FORMATS}")
  report = _new_report(fmt)
  if fmt == "ada-pytorch":
    for key in ("G", "D", "G_ema"):
      if not isinstance(source_tree.get(key), safe_pickle.PersistentObject):
        raise ConversionError(f"ada-pytorch pickle lacks network {key!r}: {describe(source_tree)}")
    g_sd = safe_pickle.module_state_dict(source_tree["G"])
    ge_sd = safe_pickle.module_state_dict(source_tree["G_ema"])
    d_sd = safe_pickle.module_state_dict(source_tree["D"])
    _check_stylegan3(ge_sd)
    hp = _hparams_ada(source_tree["G"], source_tree["D"], report)
    g_rules, d_rules = _rules_ada_g(), _rules_ada_d()
    ignored = sorted(set(source_tree) - {"G", "D", "G_ema"})
    if ignored:
      report["notes"].append(f"ignored pickle entries: {ignored}")
  elif fmt == "tf":
    tf_G, tf_D, tf_Gs = source_tree
    hp = _hparams_tf(tf_G, tf_D, report)
    g_sd, ge_sd, d_sd = _tf_params(tf_G), _tf_params(tf_Gs), _tf_params(tf_D)
    g_rules, d_rules = _rules_tf_g(), _rules_tf_d()
  else:
    ge_sd = _ros_state(source_tree, "g_ema")
    g_sd = _ros_state(source_tree, "g")
    d_sd = _ros_state(source_tree, "d")
    args = source_tree.get("args")
    args = dict(args.state) if isinstance(args, safe_pickle.Namespace) else dict(args or {})
    hp = _hparams_ros(ge_sd, args, report)
    g_rules, d_rules = _rules_ros_g(), _rules_ros_d(hp["resolution"])
    ignored = sorted(set(source_tree) - {"g", "g_ema", "d", "latent_avg", "args"})
    if ignored:
      report["notes"].append(f"ignored checkpoint entries: {ignored}")
    latent_avg = source_tree.get("latent_avg")
    if g_sd is None:
      report["notes"].append("no 'g' in the source: G is a copy of G_ema")

  # All three originals group minibatch-stddev samples with a stride within each GPU's batch
  # (sample i in group i mod N/G); only that grouping reproduces their D logits on a batch
  # larger than the group.
  hp["mbstd_grouping"] = "strided"
  report["notes"].append(
      "model.mbstd_grouping='strided': D's minibatch-stddev groups are strided within each "
      "device's batch, as in the original code, so D reproduces its logits on any batch size; "
      "'contiguous' (this project's default) makes them independent of the device count instead")
  g_expected = _expected_shapes(hp, "g")
  d_expected = _expected_shapes(hp, "d")
  if fmt == "rosinality":
    # w_avg is not part of rosinality's generator state dict but a separate entry.
    g_exp_no_avg = {k: v for k, v in g_expected.items() if k != "buffers/mapping/w_avg"}
    g_ema = map_tensors(ge_sd, g_rules, g_exp_no_avg, "g_ema", report)
    g = map_tensors(g_sd, g_rules, g_exp_no_avg, "g", report) if g_sd is not None else None
    if latent_avg is not None:
      latent_avg = np.asarray(latent_avg, np.float32).reshape(-1)
      if latent_avg.shape != (hp["w_dim"],):
        report["shape_mismatch"].append(f"latent_avg {latent_avg.shape}, model expects ({hp['w_dim']},)")
      report["mapping"].append("latent_avg -> buffers/mapping/w_avg")
    elif w_avg_samples > 0 and not report["unset_target"]:
      latent_avg = mapping_w_avg(g_ema["params"], hp, w_avg_samples)
      report["notes"].append(f"no 'latent_avg' in the source: w_avg estimated from {w_avg_samples} samples")
    else:
      report["unset_target"].append(
          "latent_avg: the source has no 'latent_avg' (pass --w-avg-samples N to estimate w_avg)")
    for vars_ in (g_ema, g):
      if vars_ is not None and latent_avg is not None:
        vars_.setdefault("buffers", {}).setdefault("mapping", {})["w_avg"] = latent_avg.copy()
    if g is None:
      g = _copy_tree(g_ema)
    d = map_tensors(d_sd, d_rules, d_expected, "d", report) if d_sd is not None else None
    if d_sd is None:
      report["notes"].append("no 'd' in the source: no discriminator imported")
  else:
    g = map_tensors(g_sd, g_rules, g_expected, "G", report)
    g_ema = map_tensors(ge_sd, g_rules, g_expected, "G_ema", report)
    d = map_tensors(d_sd, d_rules, d_expected, "D", report)
  _fail_if_incomplete(report)
  return hp, g, g_ema, d, report


def _copy_tree(tree):
  return {k: _copy_tree(v) if isinstance(v, dict) else np.array(v) for k, v in tree.items()}


# ---------------------------------------------------------------------------
# Writing the checkpoint.


class OutputError(ValueError):
  """OUT_DIR cannot be written (exists as a file, holds other things); the message says what to do."""


class UsageError(ValueError):
  """A command-line path is unusable; the one-line message names it and says what to do."""


# What an Orbax CheckpointManager directory holds at its top level: step directories (and the
# temporary directories of steps being written).
_STEP_ENTRY = re.compile(r"\d+(\.orbax-checkpoint-tmp.*)?")


def check_out_dir(out_dir: str, overwrite: bool) -> None:
  """Raises :class:`OutputError` unless ``out_dir`` may receive a new import.

  It must be missing or an empty directory; with ``overwrite`` it may also be a checkpoint
  directory (nothing but step directories), which is then replaced. Anything else is refused,
  so that a mistyped path never deletes unrelated files.
  """
  if not os.path.lexists(out_dir):
    return
  if not os.path.isdir(out_dir) or os.path.islink(out_dir):
    raise OutputError(f"OUT_DIR {out_dir} exists and is not a directory: give a new directory "
                      "name for the checkpoint")
  entries = sorted(os.listdir(out_dir))
  if not entries:
    return
  if not overwrite:
    more = f" and {len(entries) - 1} more" if len(entries) > 1 else ""
    raise OutputError(f"OUT_DIR {out_dir} is not empty (it holds {entries[0]!r}{more}): choose a "
                      "new directory, or pass --overwrite to replace the checkpoint in it")
  others = [e for e in entries if not _STEP_ENTRY.fullmatch(e)]
  if others:
    raise OutputError(f"OUT_DIR {out_dir} holds {others[0]!r}, which is not a checkpoint step: "
                      "--overwrite replaces only checkpoint directories; choose a new directory")


def _meta(hparams: dict, report: dict) -> dict:
  return _jsonable(dict(model=hparams, source=dict(
      format=report["format"], hparams=report["source_hparams"], notes=report["notes"],
      dropped=report["dropped"])))


def save_checkpoint(out_dir: str, hparams: dict, g, g_ema, d, report: dict,
                    overwrite: bool = False) -> str:
  """Writes items g, g_ema, d (pytrees) and meta (JSON: 'model' hyper-parameters, 'source'
  details) as step 0 of an Orbax checkpoint in ``out_dir``, with
  ``gantl_jax.training.checkpoint.save_networks``: the layout of a training run's checkpoint, so either
  can be a transfer source.

  The checkpoint is written to a temporary sibling of ``out_dir``, checked, and only then moved
  into place (replacing an old checkpoint there when ``overwrite``), so a failed import leaves
  ``out_dir`` as it was. Returns the absolute path of ``out_dir``.

  Raises:
    OutputError: ``out_dir`` may not be written (see :func:`check_out_dir`), or the written
      checkpoint is not the new one.
  """
  from gantl_jax.training import checkpoint

  out_dir = os.path.abspath(out_dir)
  check_out_dir(out_dir, overwrite)
  parent, name = os.path.split(out_dir)
  os.makedirs(parent, exist_ok=True)
  meta = _meta(hparams, report)
  # A private sibling holds the new checkpoint until it is checked, and then the old one until
  # the new one is in place; renames within one directory never copy.
  holder = tempfile.mkdtemp(prefix=f".{name}.import-", dir=parent)
  try:
    new = os.path.join(holder, "new")
    try:  # it refuses to report a save that Orbax skipped
      checkpoint.save_networks(new, g=g, g_ema=g_ema, d=d, meta=meta, step=0)
    except errors.CheckpointError as e:
      raise OutputError(str(e)) from None
    if not os.path.lexists(out_dir):
      os.rename(new, out_dir)
    else:
      # Directories cannot be exchanged atomically: move the old one aside, back on failure.
      old = os.path.join(holder, "old")
      os.rename(out_dir, old)
      try:
        os.rename(new, out_dir)
      except BaseException:
        os.rename(old, out_dir)
        raise
  finally:
    shutil.rmtree(holder, ignore_errors=True)
  return out_dir


def _jsonable(x):
  return json.loads(json.dumps(x, default=lambda o: o.tolist() if hasattr(o, "tolist") else repr(o)))


def _check_cli_paths(args) -> None:
  """One-line UsageError for paths that cannot work, before anything is read or written."""
  source = args.source
  if not os.path.exists(source):
    raise UsageError(f"SOURCE {source} does not exist: give the path of a network file "
                     "(.pkl or .pt)")
  if os.path.isdir(source):
    raise UsageError(f"SOURCE {source} is a directory: give the network file in it "
                     "(.pkl or .pt), not the directory")
  if args.report:
    report_dir = os.path.dirname(os.path.abspath(args.report))
    if os.path.isdir(args.report) or not os.path.isdir(report_dir):
      raise UsageError(f"--report {args.report} is a directory or its directory does not exist: "
                       "give a file path in an existing directory")
  try:
    check_out_dir(args.out_dir, args.overwrite)
  except OutputError as e:
    raise UsageError(str(e)) from e
  out = os.path.abspath(args.out_dir)
  if os.path.isdir(out) and os.path.commonpath([out, os.path.abspath(source)]) == out:
    # --overwrite would delete it with the old checkpoint.
    raise UsageError(f"SOURCE {source} is inside OUT_DIR {args.out_dir}: write the checkpoint "
                     "to another directory")


def main(argv=None) -> int:
  """CLI: read SOURCE safely, convert, write the Orbax checkpoint to OUT_DIR.

  Returns 0 on success, 1 when the source cannot be imported, 2 for unusable paths; every
  error is one line on stderr.
  """
  parser = argparse.ArgumentParser(
      prog="python -m gantl_jax.cli.import_stylegan2",
      description="Import pretrained StyleGAN2 weights (stylegan2-ada-pytorch .pkl, TF StyleGAN2 "
                  ".pkl or rosinality .pt) into an Orbax checkpoint, without running code from the file.")
  parser.add_argument("source", help="network file to import")
  parser.add_argument("out_dir", help="checkpoint directory to create (missing or empty)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace the checkpoint in a non-empty OUT_DIR (only once the new one is written)")
  parser.add_argument("--w-avg-samples", type=int, default=0,
                      help="estimate w_avg from N mapping samples when a rosinality file has no latent_avg")
  parser.add_argument("--report", help="also write the full mapping report as JSON here")
  args = parser.parse_args(argv)
  try:
    _check_cli_paths(args)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    fmt, tree = read_source(args.source)
    hp, g, g_ema, d, report = convert(tree, fmt, args.w_avg_samples)
    out = save_checkpoint(args.out_dir, hp, g, g_ema, d, report, overwrite=args.overwrite)
    if args.report:
      with open(args.report, "w") as f:
        json.dump(_jsonable(report), f, indent=1)
  except (ConversionError, OutputError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except OSError as e:
    print(f"error: {e.filename or args.out_dir}: {e.strerror or e}", file=sys.stderr)
    return 1
  print(f"format: {fmt}\nmodel: {json.dumps(hp)}")
  print(f"mapped {len(report['mapping'])} tensors, dropped {len(report['dropped'])} FIR constants")
  for note in report["notes"]:
    print(f"note: {note}")
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
