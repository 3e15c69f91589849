"""Compile time of the train step under "levers" (XLA options, merged variants), and their step time.

    python benchmarks/compile_levers.py --config configs/bench32.py \
        --levers separate,opt1,merged,merged+opt1 [--rounds 3] [--steps 16] [--config.key=value ...]

One process. Every lever builds its state and compiles the step's programs with
``gantl_jax.cli.bench.compile_schedule`` (tracing, lowering and compiling; timed in wall and in CPU
seconds: ``resource.getrusage`` of the process, all threads, which a shared machine inflates much
less than wall time). Each lever traces anew and compiles with other options or another program,
so each compile is cold. Then ``--rounds`` rounds time ``--steps`` scheduled steps of every lever
in turn, so that a change in the machine's load falls on all levers alike: a lever must not slow
the step. One JSON line per lever, with medians and ratios to the first lever.

A lever is ``+``-joined parts: ``separate`` or ``merged`` (``train.variant_programs``; default
separate) and a name of ``OPTIONS`` (XLA debug options for every compile).
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
from ml_collections import config_flags  # noqa: E402

from gantl_jax import config as config_lib  # noqa: E402
from gantl_jax.cli import bench  # noqa: E402

OPTIONS = {
    "opt0": {"xla_backend_optimization_level": 0},
    "opt1": {"xla_backend_optimization_level": 1},
    "no_expensive_llvm": {"xla_llvm_disable_expensive_passes": True},
    "codegen_split1": {"xla_cpu_parallel_codegen_split_count": 1},
    # Step-time levers of XLA:CPU (the profile's copies and elementwise glue).
    "concurrency": {"xla_cpu_enable_concurrency_optimized_scheduler": True},
    "vec512": {"xla_cpu_prefer_vector_width": 512},
    "fastmath": {"xla_cpu_enable_fast_math": True},
}


def main(argv):
  del argv
  levers = _LEVERS.value.split(",")
  schedules, records = {}, {}
  for name in levers:
    parts = name.split("+")
    config = config_lib.resolve(_CONFIG.value, jax.device_count())
    config.train.variant_programs = "merged" if "merged" in parts else "separate"
    options = {}
    for part in parts:
      if part not in ("merged", "separate"):
        options.update(OPTIONS[part])
    sched = schedules[name] = bench.compile_schedule(config, _STEPS.value, options)
    records[name] = dict(lever=name, compiler_options=options,
                         compile_s_per_variant={k: round(v, 1) for k, v in sched.compile_s.items()},
                         compile_cpu_s_per_variant={k: round(v, 1) for k, v in sched.compile_cpu_s.items()},
                         compile_s=round(sum(sched.compile_s.values()), 1),
                         compile_cpu_s=round(sum(sched.compile_cpu_s.values()), 1))
    print(json.dumps(records[name]), file=sys.stderr, flush=True)

  states = {}
  for name in levers:  # warm-up, each variant once
    states[name], _ = bench.run_plan(schedules[name], schedules[name].state, list(schedules[name].programs))
  step_s = {name: [] for name in levers}
  for _ in range(_ROUNDS.value):
    for name in levers:
      t0 = time.perf_counter()
      states[name], _ = bench.run_plan(schedules[name], states[name])
      step_s[name].append((time.perf_counter() - t0) / _STEPS.value)

  first = levers[0]
  config_name = os.path.splitext(os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])))[0]
  for name in levers:
    r = records[name]
    r.update(config=config_name, steps=_STEPS.value, rounds=_ROUNDS.value,
             step_ms_median=round(1000 * statistics.median(step_s[name]), 1),
             step_ms_all=[round(1000 * x, 1) for x in step_s[name]],
             compile_cpu_ratio=round(r["compile_cpu_s"] / records[first]["compile_cpu_s"], 3),
             step_ratio=round(statistics.median([a / b for a, b in zip(step_s[name], step_s[first])]), 3),
             load_avg_1m=round(os.getloadavg()[0], 2))
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file (configs/*.py).")
  _LEVERS = flags.DEFINE_string("levers", "separate,merged", "Comma-separated levers, each "
                                f"'+'-joined parts: separate | merged, and {sorted(OPTIONS)}. The first is the reference.")
  _ROUNDS = flags.DEFINE_integer("rounds", 3, "Timing rounds (each runs every lever's --steps steps).")
  _STEPS = flags.DEFINE_integer("steps", 16, "Scheduled steps per timing.")
  flags.mark_flags_as_required(["config"])
  app.run(main)
