"""Training-speed benchmark and FLOP counts of the train step, one JSON line out.

    python -m gantl_jax.bench --config configs/bench32.py [--config.model.conv_impl=xla] [--steps 16]
    python -m gantl_jax.bench --config configs/demo_anime.py --freeze_flops

It builds the state under ``jit``, compiles every train-step variant the lazy-regularisation
schedule needs (timing the compiles), warms each up once, then times ``--steps`` steps that follow
the real schedule (path length every ``pl_interval``, R1 every ``r1_interval``), blocking only at
the end. Real images are uniform noise in [-1, 1]: no data pipeline, so this is the model's speed.
FLOPs come from XLA's cost analysis of each compiled variant, weighted by how often the schedule
runs it. ``--freeze_flops`` prints instead the FLOPs of one step with the config's freezing and
with nothing frozen: frozen parameters cost no weight-gradient FLOPs.

This module is the one place that compiles a step for counting (:func:`compile_step`,
:func:`flops`).
"""
from __future__ import annotations

import collections
import functools
import json
import os
import resource
import statistics
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gantl_jax import config as config_lib
from gantl_jax import state as state_lib
from gantl_jax import steps
from gantl_jax.models import ops


def flops(compiled) -> float:
  """XLA's FLOP estimate of one compiled program (the API returns a dict or a list of dicts)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))


def compile_step(config: ml_collections.ConfigDict, step_flags: steps.StepFlags = steps.StepFlags(),
                 nets: state_lib.Networks | None = None):
  """The train step of a resolved ``config`` with ``step_flags``, compiled for one device from
  abstract shapes (nothing is allocated)."""
  nets = nets or state_lib.build_networks(config)
  m = config.model
  abstract_state = jax.eval_shape(lambda: state_lib.init_state(nets, 0))
  batch = jax.ShapeDtypeStruct((config.train.batch_size, m.resolution, m.resolution, m.img_channels), jnp.float32)
  step = functools.partial(steps.make_train_step(config, nets), flags=step_flags)
  return jax.jit(step).lower(abstract_state, batch).compile()


def freeze_flops(config: ml_collections.ConfigDict) -> dict:
  """FLOPs of one plain step with the config's freezing and with nothing frozen."""
  unfrozen = ml_collections.ConfigDict(config.to_dict())
  unfrozen.freeze.update(preset="none", g="", d="")
  frozen, everything = flops(compile_step(config)), flops(compile_step(unfrozen))
  return dict(preset=config.freeze.preset, resolution=config.model.resolution,
              batch_size=config.train.batch_size, flops_frozen=frozen, flops_unfrozen=everything,
              ratio=frozen / everything)


def bench(config, num_steps: int, repeats: int, name: str = "") -> dict:
  """Compiles, warms up and times the train step of a resolved ``config``; returns the record."""
  nets = state_lib.build_networks(config)
  state = jax.jit(lambda: state_lib.init_state(nets, config.seed))()
  m, t = config.model, config.train
  real = jnp.asarray(np.random.default_rng(0).uniform(
      -1, 1, (t.batch_size, m.resolution, m.resolution, m.img_channels)), jnp.float32)
  step_fn = jax.jit(steps.make_train_step(config, nets), static_argnames=("flags",), donate_argnums=0)

  plan = [steps.schedule(i, config) for i in range(num_steps)]
  counts = collections.Counter(plan)
  compiled, compile_s, step_flops = {}, {}, {}
  for variant in sorted(counts, reverse=True):
    t0 = time.perf_counter()
    compiled[variant] = step_fn.lower(state, real, flags=variant).compile()
    compile_s[variant] = time.perf_counter() - t0
    step_flops[variant] = flops(compiled[variant])

  # Warm-up: each variant once (first-run allocations, thread pools).
  for variant in compiled:
    state, _ = compiled[variant](state, real)
  jax.block_until_ready(state)

  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for variant in plan:
      state, metrics = compiled[variant](state, real)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  sec = statistics.median(times)

  images_per_s = num_steps * t.batch_size / sec
  flops_per_step = sum(step_flops[v] * c for v, c in counts.items()) / num_steps
  return dict(
      config=name,
      resolution=m.resolution, batch=t.batch_size, steps=num_steps, repeats=repeats,
      images_per_s=round(images_per_s, 2), sec_per_kimg=round(1000 / images_per_s, 1),
      step_ms_median=round(1000 * sec / num_steps, 1),
      step_ms_all=[round(1000 * x / num_steps, 1) for x in times],
      compile_s=round(sum(compile_s.values()), 1),
      compile_s_per_variant={",".join(f"{k}={int(v)}" for k, v in f._asdict().items()): round(s, 1)
                             for f, s in compile_s.items()},
      peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      gflop_per_step=round(flops_per_step / 1e9, 2),
      gflop_per_s=round(flops_per_step * num_steps / sec / 1e9, 1),
      conv_impl=ops.resolve_conv_impl(m.conv_impl), devices=jax.device_count(),
      backend=jax.default_backend(), jax=jax.__version__,
      load_avg_1m=round(os.getloadavg()[0], 2),
  )


def main(argv):
  del argv
  config = config_lib.resolve(_CONFIG.value, jax.device_count())
  if _FREEZE_FLOPS.value:
    record = freeze_flops(config)
  else:
    name = os.path.splitext(os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])))[0]
    record = bench(config, _STEPS.value, _REPEATS.value, name)
  print(json.dumps(record), flush=True)


if __name__ == "__main__":
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file (configs/*.py).")
  _STEPS = flags.DEFINE_integer("steps", 16, "Timed steps per repeat (a multiple of r1_interval "
                                "keeps the regularisation mix exact).")
  _REPEATS = flags.DEFINE_integer("repeats", 3, "Timing repeats; the median is reported.")
  _FREEZE_FLOPS = flags.DEFINE_bool("freeze_flops", False, "Print the FLOPs of one step with the "
                                    "config's freezing and with nothing frozen, instead of timing.")
  flags.mark_flags_as_required(["config"])
  app.run(main)
