"""Input pipeline throughput: images/s of `make_iterator` on a prepared synthetic domain.

    python benchmarks/bench_data.py [--resolutions 64 256] [--num_images 512]
        [--batch 32] [--steps 16] [--repeats 3] [--data_dir DIR]

Prepares the synthetic `photo` domain once per resolution (reused on later
runs), then times `steps` batches after one warm-up batch, `repeats` times,
and prints one JSON line per resolution with the median images/s. Also
reports the renderer's own speed at that resolution, for reference.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

# The data section's defaults live in configs/, which is not an installed package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import base  # noqa: E402
from gantl_jax import data  # noqa: E402
from gantl_jax.data import synthetic  # noqa: E402


def bench(resolution: int, args) -> dict:
  c = base.get_config().data
  c.source, c.domain, c.num_images, c.data_dir = "synthetic", "photo", args.num_images, args.data_dir
  c.prefetch, c.num_workers = args.prefetch, args.num_workers
  t = time.perf_counter()
  prepared = data.prepare(c, resolution=resolution, verbose=False)
  prepare_s = time.perf_counter() - t
  rates = []
  for r in range(args.repeats):
    it = data.make_iterator(prepared, global_batch=args.batch, seed=r)
    next(it)  # warm-up: starts the prefetch thread
    t = time.perf_counter()
    for _ in range(args.steps):
      next(it)
    rates.append(args.steps * args.batch / (time.perf_counter() - t))
    it.close()
  t = time.perf_counter()
  synthetic.render("photo", range(args.batch), resolution=resolution, seed=123)
  render_rate = args.batch / (time.perf_counter() - t)
  return dict(
      bench="data_pipeline", resolution=resolution, images_per_s=round(statistics.median(rates), 1),
      all_images_per_s=[round(x, 1) for x in rates], global_batch=args.batch, steps=args.steps,
      prefetch=args.prefetch, num_workers=args.num_workers, num_examples=prepared.num_examples,
      prepare_s=round(prepare_s, 2), reused=prepared.report["reused"],
      synthetic_render_images_per_s=round(render_rate, 1), cpus=os.cpu_count(),
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 256])
  parser.add_argument("--num_images", type=int, default=512)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--prefetch", type=int, default=2)
  parser.add_argument("--num_workers", type=int, default=4)
  parser.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "gantl_jax_bench_data"))
  args = parser.parse_args()
  for res in args.resolutions:
    print(json.dumps(bench(res, args)), flush=True)


if __name__ == "__main__":
  main()
