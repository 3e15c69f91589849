"""How well the class-share metric's nearest-image classifier labels real images it was not given.

    python benchmarks/class_share_check.py --reference DIR/shots --test DIR/held_out --target 9

Both folders hold labelled images (``<label>_*.png``, as ``python -m gantl_jax.data.idx`` writes
them). Each test image is labelled exactly as ``eval.metrics=class_share`` labels a sample (the
same reader, distance and ``k``), and the script prints each label's recall, the accuracy, and for
``--target`` the share of test images of the target (as they are and mirrored) and of the other
labels that get its label: the metric's ceiling and floor on real images.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from gantl_jax.metrics import class_share, distances, samples


def check(reference: str, test: str, target: str, *, resolution: int = 32, channels: int = 3,
          k: int = class_share.DEFAULT_K) -> dict:
  """Recall per label, accuracy and the target's ceiling and floor (see the module docstring)."""
  ref_images, ref_labels = samples.labelled_images(reference, resolution, channels)
  test_images, test_labels = samples.labelled_images(test, resolution, channels)
  predicted = class_share.label_images(distances.pyramid_distance(), test_images, ref_images, ref_labels, k)
  mirrored = class_share.label_images(distances.pyramid_distance(), test_images[:, :, ::-1], ref_images, ref_labels, k)
  truth = np.asarray(test_labels)
  out = {"k": k, "references": len(ref_labels), "tests": len(truth),
         "accuracy": float(np.mean(predicted == truth)),
         "recall": {label: float(np.mean(predicted[truth == label] == label)) for label in sorted(set(test_labels))}}
  if target:
    out["target_given_target"] = float(np.mean(predicted[truth == target] == target))
    out["target_given_target_mirrored"] = float(np.mean(mirrored[truth == target] == target))
    out["others_given_target"] = float(np.mean(predicted[truth != target] == target))
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--reference", required=True, help="labelled images the classifier compares with")
  p.add_argument("--test", required=True, help="other labelled images to label")
  p.add_argument("--target", default="", help="the label whose ceiling and floor to print")
  p.add_argument("--resolution", type=int, default=32)
  p.add_argument("--channels", type=int, default=3, help="as the samples: 3 for an RGB model, 1 for grayscale")
  p.add_argument("--k", type=int, default=class_share.DEFAULT_K)
  args = p.parse_args(argv)
  try:
    result = check(args.reference, args.test, args.target, resolution=args.resolution, channels=args.channels, k=args.k)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(result, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
