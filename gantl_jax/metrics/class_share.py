"""Class share: which class the samples look like, by their nearest labelled real images.

SWD and the pyramid diagnostics compare patch statistics and layouts; none of them says whether
a sample shows the target's kind of object. On a labelled dataset (Fashion-MNIST's ten classes,
emoji categories) that question has an answer: give each sample the majority label of its ``k``
nearest labelled reference images (by a `distances.Distance`, the weight-free pyramid distance
by default; ties go to the label of the nearest image among the tied labels), and report the
share of samples given each label. Each reference is also compared mirrored left to right, with
its label: training flips its images at random (``data.xflip``), so samples come in both
orientations, while a dataset's own images may all face one way (every Fashion-MNIST shoe points
left; a mirrored boot is nearer a bag than any unmirrored boot). ``class_share`` is the share
given the target's label: 1 when every sample looks like the target class, near the source's
share of it when the transfer did not move the samples.

What the classifier is worth is measured, not assumed (`benchmarks/class_share_check.py`, on
labelled images it was not given): on Fashion-MNIST at 32 px, with 3,000 reference images (about
300 a class) and ``k`` = 5, it labels 96.8% of 190 test ankle boots 'ankle boot' (96.3% of them
mirrored) and 2.1% of the 1,810 test images of the other classes the same; 79.7% of all 2,000 get
their own label (shirts, coats and pullovers are the ones it confuses). docs/metrics.md has the
command.

The reference folder holds images named ``<label>_<anything>.<ext>``: the label is the file
name up to its first underscore, as `gantl_jax.data.idx` writes them (``9_00167.png``).
"""
from __future__ import annotations

import os

import numpy as np

from gantl_jax.metrics import distances as dist_lib

DEFAULT_K = 5


def label_of(file: str) -> str:
  """The label of a reference image file: its base name up to the first underscore; ValueError
  naming the file when it has none."""
  name = os.path.basename(file)
  label, sep, _ = name.partition("_")
  if not sep or not label:
    raise ValueError(f"{file}: a labelled reference image is named <label>_<anything> (e.g. 9_00167.png)")
  return label


def nearest_labels(to_reference: np.ndarray, labels, k: int = DEFAULT_K) -> np.ndarray:
  """The label of each row of an (N, K) distance matrix by majority among its ``k`` nearest
  references (``labels``: K of them); a tie goes to the tied label whose image is nearest."""
  to_reference = np.asarray(to_reference)
  labels = np.asarray(labels)
  if to_reference.ndim != 2 or to_reference.shape[1] != len(labels) or not len(labels):
    raise ValueError(f"expected an (N, K) distance matrix and K labels, got {to_reference.shape} and {len(labels)}")
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  k = min(k, len(labels))
  order = np.argsort(to_reference, axis=1, kind="stable")[:, :k]
  out = []
  for row in labels[order]:
    names, first, counts = np.unique(row, return_index=True, return_counts=True)
    tied = counts == counts.max()
    out.append(names[tied][np.argmin(first[tied])])
  return np.asarray(out)


def shares(predicted: np.ndarray, all_labels) -> dict[str, float]:
  """{label: fraction of ``predicted`` equal to it} for every label of ``all_labels``."""
  predicted = np.asarray(predicted)
  return {str(label): float(np.mean(predicted == label)) for label in sorted(set(all_labels))}


def label_images(distance: dist_lib.Distance, images, references, labels, k: int = DEFAULT_K) -> np.ndarray:
  """The label of each uint8 NHWC image by its ``k`` nearest ``references`` and their mirror
  images (each with its label of ``labels``)."""
  references = dist_lib.check_images(references, "reference images")
  embedded = dist_lib.embed_sets(distance, images=images, references=np.concatenate([references, references[:, :, ::-1]]))
  to_reference = dist_lib.pairwise(distance, embedded["images"], embedded["references"])
  return nearest_labels(to_reference, list(labels) * 2, k)


def class_share(distance: dist_lib.Distance, samples, references, labels, target: str,
                k: int = DEFAULT_K) -> dict[str, float]:
  """``class_share`` (the share of uint8 NHWC ``samples`` whose nearest labelled ``references``
  give them the label ``target``) and ``class_share_<label>`` for every label of ``labels``."""
  labels = [str(label) for label in labels]
  if str(target) not in labels:
    raise ValueError(f"target label {target!r} is not among the reference labels {sorted(set(labels))}")
  per_label = shares(label_images(distance, samples, references, labels, k), labels)
  out = {f"class_share_{label}": value for label, value in per_label.items()}
  out["class_share"] = per_label[str(target)]
  return out
