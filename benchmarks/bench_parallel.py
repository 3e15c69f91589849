"""Data-parallel train-step throughput: images/s of the parallel tests' step per driver and device count.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/bench_parallel.py \\
        [--runs jit:1 jit:2 jit:4 jit:8 pmap:8] [--steps 8] [--repeats 3]

The config, global batch (16) and real images are those of ``tests/parallel_common.py``: R1
and path length every step, so every step runs the one program with all four phases. Each
driver is compiled and warmed up by one step, then ``--steps`` steps are timed ``--repeats``
times, blocking only at the end of a repeat. Prints one JSON line with the median images/s of
each driver. On a CPU the simulated devices share the same cores, so this measures the cost of
splitting the batch (and of the collectives), not a speed-up.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The repository root holds configs/ and gantl_jax/; tests/ holds the parallel tests' config.
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]

import jax  # noqa: E402

import parallel_common as common  # noqa: E402
from gantl_jax import config as config_lib  # noqa: E402
from gantl_jax.training import parallel  # noqa: E402
from gantl_jax.training import state as state_lib  # noqa: E402


def bench(mode: str, num_devices: int, steps: int, repeats: int) -> dict:
  devices = jax.devices()[:num_devices]
  config = config_lib.resolve(common.test_config(), num_devices=num_devices)
  nets = state_lib.build_networks(config)
  mesh = parallel.make_mesh(devices)
  step = parallel.make_step(config, nets, mode, mesh)
  state = parallel.create_state(nets, config.seed, mode, mesh)
  # Placed once: host-to-device copies of the batch are not what this measures.
  batches = [parallel.place_batch(b, mode, mesh) for b in common.global_batches(steps)]
  t = time.perf_counter()
  state, _ = step(state, batches[0], 0)
  jax.block_until_ready(state)
  first_step_s = time.perf_counter() - t
  rates, i = [], 1
  for _ in range(repeats):
    t = time.perf_counter()
    for b in batches:
      state, _ = step(state, b, i)
      i += 1
    jax.block_until_ready(state)
    rates.append(steps * common.GLOBAL_BATCH / (time.perf_counter() - t))
  return dict(mode=mode, devices=num_devices, images_per_s=round(statistics.median(rates), 1),
              all_images_per_s=[round(r, 1) for r in rates], first_step_s=round(first_step_s, 2))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--runs", nargs="+", default=["jit:1", "jit:2", "jit:4", "jit:8", "pmap:8"],
                      help="mode:devices; pmap needs all devices (set the device count by XLA_FLAGS)")
  parser.add_argument("--steps", type=int, default=8, help="timed steps per repeat")
  parser.add_argument("--repeats", type=int, default=3, help="timing repeats; the median is reported")
  args = parser.parse_args()
  results = []
  for run in args.runs:
    mode, n = run.split(":")
    if mode == "pmap" and int(n) != jax.device_count():
      parser.error(f"{run}: pmap runs over all {jax.device_count()} devices")
    results.append(bench(mode, int(n), args.steps, args.repeats))
  print(json.dumps(dict(bench="parallel_step", global_batch=common.GLOBAL_BATCH, steps=args.steps,
                        repeats=args.repeats, backend=jax.default_backend(), cpus=os.cpu_count(),
                        runs=results)))


if __name__ == "__main__":
  main()
