"""Does bfloat16 train like float32? Loss curves of the same run in each precision.

    python benchmarks/bf16_stability.py --config configs/tiny.py --steps 200 \
        --precisions float32,bfloat16:0,bfloat16:1,float32@1 [--window 20] [--config.key=value ...]

Runs ``--steps`` train steps of the config on the same fixed images (the synthetic ``anime``
domain at the model's resolution, ``--images`` of them, batches in turn) once per precision,
``DTYPE[:N][@SEED]``: ``float32`` or ``bfloat16``, N = ``model.num_low_precision_res``, SEED the
run's seed (default the config's), with ``gantl_jax.cli.bench.train_losses``. The first is the
reference. A GAN's trajectory is chaotic: after some steps any perturbation (bf16 rounding, or
another seed) makes the curves differ step by step, so the same run with another seed
(``float32@1``) gives the band that window means of a healthy bf16 run should stay within.
Prints one JSON line per other precision: per loss, the mean and the largest |difference| from
the reference of the per-step values and of their ``--window``-step means, both runs' overall
means, and whether every loss and parameter stayed finite.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from gantl_jax import config as config_lib  # noqa: E402
from gantl_jax.cli import bench  # noqa: E402
from gantl_jax.data import synthetic  # noqa: E402


def fixed_images(resolution: int, count: int) -> np.ndarray:
  """``count`` synthetic anime faces as float32 in [-1, 1]."""
  return synthetic.render("anime", range(count), resolution=resolution).astype(np.float32) / 127.5 - 1


def compare(reference: dict, other: dict, window: int) -> dict:
  """Per loss: how far ``other``'s curve is from ``reference``'s, step by step and in windows."""
  out = {}
  for name in bench.LOSSES:
    ran = np.isfinite(reference[name]) | np.isfinite(other[name])
    a, b = reference[name][ran], other[name][ran]
    w = min(window, len(a))
    wa, wb = (x[:len(x) // w * w].reshape(-1, w).mean(1) for x in (a, b))
    out[name] = dict(mean_abs_diff=float(np.mean(np.abs(a - b))), max_abs_diff=float(np.max(np.abs(a - b))),
                     window_max_abs_diff=float(np.max(np.abs(wa - wb))),
                     mean_reference=float(np.mean(a)), mean_other=float(np.mean(b)))
  return out


def main(argv):
  del argv
  base = config_lib.resolve(_CONFIG.value, jax.device_count())
  images = fixed_images(base.model.resolution, _IMAGES.value)
  curves = {}
  precisions = _PRECISIONS.value.split(",")
  for precision in precisions:
    spec, _, seed = precision.partition("@")
    dtype, _, low = spec.partition(":")
    config = config_lib.resolve(_CONFIG.value, jax.device_count())
    config.model.update(compute_dtype=dtype, num_low_precision_res=int(low or 0))
    config.seed = int(seed) if seed else config.seed
    curves[precision], _ = bench.train_losses(config, images, _STEPS.value)
  reference = curves.pop(precisions[0])
  for precision, curve in curves.items():
    finite = bool(np.all(curve["finite_params"] == 1)) and all(
        np.all(np.isfinite(curve[n]) == np.isfinite(reference[n])) for n in bench.LOSSES)
    print(json.dumps(dict(precision=precision, reference=precisions[0], steps=_STEPS.value, window=_WINDOW.value, all_finite=finite,
                          resolution=base.model.resolution, batch=base.train.batch_size,
                          losses=compare(reference, curve, _WINDOW.value))), flush=True)


if __name__ == "__main__":
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file (configs/*.py).")
  _STEPS = flags.DEFINE_integer("steps", 200, "Train steps per precision.")
  _IMAGES = flags.DEFINE_integer("images", 64, "Fixed training images (synthetic anime faces).")
  _WINDOW = flags.DEFINE_integer("window", 20, "Steps per window mean.")
  _PRECISIONS = flags.DEFINE_string("precisions", "float32,bfloat16:0,bfloat16:1",
                                    "Comma-separated DTYPE[:N][@SEED]; the first is the reference.")
  flags.mark_flags_as_required(["config"])
  app.run(main)
