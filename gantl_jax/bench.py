"""Training-speed benchmark: the real train step on synthetic images, one JSON line out.

    python -m gantl_jax.bench --config configs/bench32.py [--config.model.conv_impl=xla] [--steps 16]

It builds the state under ``jit``, compiles every train-step variant the lazy-regularisation
schedule needs (timing the compiles), warms each up once, then times ``--steps`` steps that follow
the real schedule (path length every ``pl_interval``, R1 every ``r1_interval``), blocking only at
the end. Real images are uniform noise in [-1, 1]: no data pipeline, so this is the model's speed.
FLOPs come from XLA's cost analysis of each compiled variant, weighted by how often the schedule
runs it.
"""
from __future__ import annotations

import collections
import json
import os
import resource
import statistics
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from gantl_jax import config as config_lib
from gantl_jax import state as state_lib
from gantl_jax import steps
from gantl_jax.models import ops

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file (configs/*.py).")
_STEPS = flags.DEFINE_integer("steps", 16, "Timed steps per repeat (a multiple of r1_interval keeps "
                              "the regularisation mix exact).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timing repeats; the median is reported.")


def _flops(compiled) -> float:
  """XLA's FLOP estimate of one compiled program (the API returns a dict or a list of dicts)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))


def bench(config, num_steps: int, repeats: int) -> dict:
  """Compiles, warms up and times the train step of a resolved ``config``; returns the record."""
  nets = state_lib.build_networks(config)
  state = jax.jit(lambda: state_lib.init_state(nets, config.seed))()
  m, t = config.model, config.train
  real = jnp.asarray(np.random.default_rng(0).uniform(
      -1, 1, (t.batch_size, m.resolution, m.resolution, m.img_channels)), jnp.float32)
  step_fn = jax.jit(steps.make_train_step(config, nets), static_argnames=("do_g_reg", "do_d_reg"),
                    donate_argnums=0)

  plan = [steps.schedule(i, t) for i in range(num_steps)]
  counts = collections.Counter(plan)
  compiled, compile_s, flops = {}, {}, {}
  for variant in sorted(counts, reverse=True):
    g_reg, d_reg = variant
    t0 = time.perf_counter()
    compiled[variant] = step_fn.lower(state, real, do_g_reg=g_reg, do_d_reg=d_reg).compile()
    compile_s[variant] = time.perf_counter() - t0
    flops[variant] = _flops(compiled[variant])

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
  flops_per_step = sum(flops[v] * c for v, c in counts.items()) / num_steps
  return dict(
      config=os.path.splitext(os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])))[0],
      resolution=m.resolution, batch=t.batch_size, steps=num_steps, repeats=repeats,
      images_per_s=round(images_per_s, 2), sec_per_kimg=round(1000 / images_per_s, 1),
      step_ms_median=round(1000 * sec / num_steps, 1),
      step_ms_all=[round(1000 * x / num_steps, 1) for x in times],
      compile_s=round(sum(compile_s.values()), 1),
      compile_s_per_variant={f"g_reg={g:d},d_reg={d:d}": round(s, 1) for (g, d), s in compile_s.items()},
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
  print(json.dumps(bench(config, _STEPS.value, _REPEATS.value)), flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
