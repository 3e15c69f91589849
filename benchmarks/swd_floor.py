"""SWD between two folders of real images: a source's floor, the value a generator that drew its
training images exactly would score against the held-out ones.

    python benchmarks/swd_floor.py --a runs/data/noto_faces_people --b runs/data/noto_tones_held_out

Both folders are prepared as the loop prepares a training folder (``pipeline.prepare_folder``:
same resize and alpha handling, cached under ``--data_dir``), and each set's SWD descriptors are
drawn with the same seed, as in ``launch.py --mode eval``. Prints SWD x10^3 per Laplacian level and
their mean, and the mean pairwise pyramid distance of each set (``metrics.distances``).
``--mirror_b`` mirrors the second set left to right first: what SWD makes of a generator that
draws the domain facing the other way.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gantl_jax import defaults  # noqa: E402
from gantl_jax.data import pipeline  # noqa: E402
from gantl_jax.metrics import distances, diversity, swd  # noqa: E402


def folder_images(folder: str, resolution: int, num: int, data_dir: str, key: str) -> np.ndarray:
  """Up to ``num`` uint8 NHWC images of ``folder`` as training would read them, chosen as the
  evaluators choose them (by the default ``eval.seed``) when the folder has more."""
  data_config = defaults.get_config().data
  data_config.data_dir = data_dir
  prepared = pipeline.prepare_folder(folder, data_config=data_config, resolution=resolution, key=key, verbose=False)
  return pipeline.take_images(prepared, num, seed=int(defaults.get_config().eval.seed))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--a", required=True, help="a folder of images (e.g. the source's training images)")
  p.add_argument("--b", required=True, help="a folder of other images of the domain (held out)")
  p.add_argument("--resolution", type=int, default=32)
  p.add_argument("--num", type=int, default=2000, help="at most this many images of each folder")
  p.add_argument("--mirror_b", action="store_true", help="mirror --b's images left to right")
  p.add_argument("--data_dir", default=os.path.expanduser("~/tensorflow_datasets/gantl_jax"))
  args = p.parse_args(argv)
  a = folder_images(args.a, args.resolution, args.num, args.data_dir, "--a")
  b = folder_images(args.b, args.resolution, args.num, args.data_dir, "--b")
  if args.mirror_b:
    b = np.ascontiguousarray(b[:, :, ::-1])
  values = swd.swd_of_images(a, b)
  print(f"{len(a)} images of {args.a} against {len(b)} of {args.b}" + (", mirrored" if args.mirror_b else ""))
  for key, value in values.items():
    print(f"  {key:10s} {value:8.2f}")
  pyramid = distances.pyramid_distance()
  for name, images in (("a", a), ("b", b)):
    within = distances.pairwise(pyramid, distances.embed(pyramid, images))
    print(f"  mean pairwise pyramid distance of --{name}: {diversity.mean_pairwise_distance(within):.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
