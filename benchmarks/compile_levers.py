"""Compile time of the train step under "levers" (XLA options, merged variants), and their step time.

    python benchmarks/compile_levers.py --config configs/bench32.py \
        --levers default,opt1,opt0,merged [--rounds 3] [--steps 16] [--config.key=value ...]

One process: the step's variants are traced and lowered once (timed), then every lever compiles
them (timed in wall and in CPU seconds: ``resource.getrusage`` of the process, all threads, which
a shared machine inflates much less than wall time). Levers with different XLA options are
different compiles, so each is cold. Then ``--rounds`` rounds time ``--steps`` scheduled steps of
every lever in turn, the state flowing from one to the next, so that a change in the machine's
load falls on all levers alike; a lever must not slow the step. One JSON line per lever, with its
medians and ratios to the first lever.

Levers: a name of ``LEVERS`` (XLA debug options for every compile); ``merged`` compiles one program
for all variants, the lazy phases as ``lax.cond`` on traced flags (``steps.StepFlags`` of arrays);
``merged+NAME`` both.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from gantl_jax import bench  # noqa: E402
from gantl_jax import config as config_lib  # noqa: E402
from gantl_jax import state as state_lib  # noqa: E402
from gantl_jax import steps  # noqa: E402

# XLA debug options of each lever, passed to every compile.
LEVERS = {
    "default": {},
    "opt0": {"xla_backend_optimization_level": 0},
    "opt1": {"xla_backend_optimization_level": 1},
    "no_expensive_llvm": {"xla_llvm_disable_expensive_passes": True},
    "codegen_split1": {"xla_cpu_parallel_codegen_split_count": 1},
}


def _timed(fn):
  t0, c0 = time.perf_counter(), bench.cpu_seconds()
  out = fn()
  return out, time.perf_counter() - t0, bench.cpu_seconds() - c0


def main(argv):
  del argv
  config = config_lib.resolve(_CONFIG.value, jax.device_count())
  m, t = config.model, config.train
  nets = state_lib.build_networks(config)
  state = jax.jit(lambda: state_lib.init_state(nets, config.seed))()
  real = jnp.asarray(np.random.default_rng(0).uniform(
      -1, 1, (t.batch_size, m.resolution, m.resolution, m.img_channels)), jnp.float32)
  train_step = steps.make_train_step(config, nets)
  plan = [steps.schedule(i, t) for i in range(_STEPS.value)]
  variants = sorted(set(plan), reverse=True)

  separate = jax.jit(train_step, static_argnames=("flags",), donate_argnums=0)
  lowered, lower_s, lower_cpu_s = {}, 0.0, 0.0
  for v in variants:
    lowered[v], wall, cpu = _timed(lambda v=v: separate.lower(state, real, flags=v))
    lower_s, lower_cpu_s = lower_s + wall, lower_cpu_s + cpu
  traced_flags = lambda v: steps.StepFlags(*(jnp.asarray(x) for x in v))
  merged = jax.jit(lambda s, r, f: train_step(s, r, flags=f), donate_argnums=0)
  merged_lowered, merged_lower_s, merged_lower_cpu_s = _timed(lambda: merged.lower(state, real, traced_flags(variants[0])))

  levers = _LEVERS.value.split(",")
  runs, records = {}, {}
  for name in levers:
    parts = name.split("+")
    is_merged = "merged" in parts
    options = LEVERS[next((p for p in parts if p != "merged"), "default")]
    if is_merged:
      program, wall, cpu = _timed(lambda: merged_lowered.compile(options))
      runs[name] = lambda s, program=program: _run(plan, lambda v, s: program(s, real, traced_flags(v)), s)
      records[name] = dict(lower_s=merged_lower_s, lower_cpu_s=merged_lower_cpu_s, compile_s_per_variant={"merged": wall},
                           compile_cpu_s_per_variant={"merged": cpu})
    else:
      programs, walls, cpus = {}, {}, {}
      for v in variants:
        programs[v], walls[bench.variant_name(v)], cpus[bench.variant_name(v)] = _timed(
            lambda v=v: lowered[v].compile(options))
      runs[name] = lambda s, programs=programs: _run(plan, lambda v, s: programs[v](s, real), s)
      records[name] = dict(lower_s=lower_s, lower_cpu_s=lower_cpu_s, compile_s_per_variant=walls,
                           compile_cpu_s_per_variant=cpus)
    records[name].update(lever=name, compiler_options=options)
    print(f"compiled {name}: {records[name]}", file=sys.stderr, flush=True)

  for name in levers:  # warm-up
    state = runs[name](state)
  step_s = {name: [] for name in levers}
  for _ in range(_ROUNDS.value):
    for name in levers:
      t0 = time.perf_counter()
      state = runs[name](state)
      step_s[name].append((time.perf_counter() - t0) / len(plan))

  first = levers[0]
  total = lambda r: r["lower_cpu_s"] + sum(r["compile_cpu_s_per_variant"].values())
  for name in levers:
    r = records[name]
    r.update(config=os.path.splitext(os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])))[0],
             steps=len(plan), rounds=_ROUNDS.value,
             compile_s=round(sum(r["compile_s_per_variant"].values()), 1),
             compile_cpu_s=round(sum(r["compile_cpu_s_per_variant"].values()), 1),
             lower_and_compile_cpu_s=round(total(r), 1),
             step_ms_median=round(1000 * statistics.median(step_s[name]), 1),
             step_ms_all=[round(1000 * x, 1) for x in step_s[name]],
             compile_cpu_ratio=round(total(r) / total(records[first]), 3),
             step_ratio=round(statistics.median([a / b for a, b in zip(step_s[name], step_s[first])]), 3),
             load_avg_1m=round(os.getloadavg()[0], 2))
    for key in ("lower_s", "lower_cpu_s"):
      r[key] = round(r[key], 1)
    for key in ("compile_s_per_variant", "compile_cpu_s_per_variant"):
      r[key] = {k: round(x, 1) for k, x in r[key].items()}
    print(json.dumps(r), flush=True)


def _run(plan, call, state):
  metrics = None
  for v in plan:
    state, metrics = call(v, state)
  jax.block_until_ready((state, metrics))
  return state


if __name__ == "__main__":
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file (configs/*.py).")
  _LEVERS = flags.DEFINE_string("levers", "default,opt1,merged", f"Comma-separated: 'merged', a name of "
                                f"{sorted(LEVERS)}, or 'merged+NAME'. The first is the reference.")
  _ROUNDS = flags.DEFINE_integer("rounds", 3, "Timing rounds (each runs every lever's --steps steps).")
  _STEPS = flags.DEFINE_integer("steps", 16, "Scheduled steps per timing.")
  flags.mark_flags_as_required(["config"])
  app.run(main)
