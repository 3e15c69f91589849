"""Sliced Wasserstein distance: time, memory and values on the synthetic domains.

    python benchmarks/bench_swd.py [--resolutions 32 64] [--num_images 1000 5000]
        [--max_descriptors 131072] [--batch 250] [--anime] [--memory]

For each resolution and count N, feeds `photo` images 0..N-1 and N..2N-1
(two disjoint sets of one distribution) to two accumulators and compares
them; with --anime, also `anime` images 0..N-1 against the first set. Prints
one JSON line per comparison: seconds to add N images (rendering excluded),
seconds of `compute_swd`, the bytes one accumulator holds, and the SWD
values. With --memory, also the peak of numpy/Python allocations while adding
and computing (tracemalloc, which slows Python code down: take times from a
run without it). --max_descriptors 0 keeps every descriptor.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time
import tracemalloc

from gantl_jax.data import synthetic
from gantl_jax.metrics import swd


def fill(domain: str, start: int, n: int, resolution: int, args) -> tuple[swd.SWDAccumulator, float]:
  """An accumulator of images start..start+n-1 of `domain`, and the seconds spent in `add`."""
  acc = swd.SWDAccumulator(max_descriptors=args.max_descriptors or None)
  seconds = 0.0
  for first in range(start, start + n, args.batch):
    images = synthetic.render(domain, range(first, min(first + args.batch, start + n)), resolution=resolution)
    t = time.perf_counter()
    acc.add(images)
    seconds += time.perf_counter() - t
  return acc, seconds


def bench(resolution: int, n: int, args) -> list[dict]:
  if args.memory:
    tracemalloc.start()
  photo, add_s = fill("photo", 0, n, resolution, args)
  pairs = [("photo", fill("photo", n, n, resolution, args)[0])]
  if args.anime:
    pairs.append(("anime", fill("anime", 0, n, resolution, args)[0]))
  rows = []
  for name, other in pairs:
    t = time.perf_counter()
    values = swd.compute_swd(photo, other)
    rows.append(dict(
        bench="swd", resolution=resolution, num_images=n, pair=f"photo_vs_{name}",
        add_s=round(add_s, 2), add_images_per_s=round(n / add_s, 1), compute_s=round(time.perf_counter() - t, 2),
        kept_per_level=photo.num_kept, accumulator_mb=round(photo.nbytes / 2**20, 1),
        **{k: round(v, 3) for k, v in values.items()}))
  if args.memory:
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    for row in rows:  # one peak for the whole block: 2 or 3 accumulators alive at once
      row.update(traced_peak_mb=round(peak / 2**20, 1), accumulators_alive=len(pairs) + 1)
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
  parser.add_argument("--num_images", type=int, nargs="+", default=[1000, 5000])
  parser.add_argument("--max_descriptors", type=int, default=swd.DEFAULT_MAX_DESCRIPTORS)
  parser.add_argument("--batch", type=int, default=250)
  parser.add_argument("--anime", action="store_true", help="also compare photo against anime")
  parser.add_argument("--memory", action="store_true", help="trace the peak of allocations (slower)")
  args = parser.parse_args()
  for resolution in args.resolutions:
    for n in args.num_images:
      for row in bench(resolution, n, args):
        print(json.dumps(dict(row, max_descriptors=args.max_descriptors, cpus=os.cpu_count())), flush=True)
  print(json.dumps(dict(max_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))))


if __name__ == "__main__":
  main()
