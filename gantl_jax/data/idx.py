"""Fashion-MNIST (or any MNIST-layout IDX set): reading, class selection, and a PNG export tool.

The files are the four of the MNIST layout in one directory, each gzipped or not:
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``. Debian's ``dataset-fashion-mnist`` installs them in
`DEFAULT_DIR`. The train and test files are one pool of images (train first): the
split that matters for transfer is by class, a source of some classes and a target of another.

A selection (`select`) is the images of some classes, in the order `shots.n_shot_order`
gives for the seed: the first ``n_shot`` are the training set, the following ones the held-out
set, so the two never share an image and the 10-shot set is inside the 100-shot one.
Images are resized with Lanczos from 28 px to the resolution, as folder images are.

    python -m gantl_jax.data.idx --classes 9 --shots 10 --held_out 100 --resolution 32 --out DIR

writes ``DIR/shots`` and ``DIR/held_out``: grayscale PNGs named ``<class>_<index>.png`` (the index
into the pooled train + test files).
"""
from __future__ import annotations

import argparse
import gzip
import os
import sys

import numpy as np
from PIL import Image

from gantl_jax.data.shots import n_shot_order
from gantl_jax.errors import DataError
from gantl_jax.resolutions import resolution_problem

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CLASS_NAMES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
               "bag", "ankle boot")
_GZIP_MAGIC = b"\x1f\x8b"
# The IDX type byte: only unsigned bytes are image data or labels here.
_UBYTE = 0x08


def read_idx(path: str) -> np.ndarray:
  """The array of an IDX file of unsigned bytes, gzipped or not (told by its first bytes).

  Raises DataError naming the file when it is not such a file or is shorter than its header says.
  """
  try:
    with open(path, "rb") as f:
      raw = f.read()
    if raw[:2] == _GZIP_MAGIC:
      raw = gzip.decompress(raw)
  except (OSError, EOFError) as e:
    raise DataError(f"cannot read IDX file {path}: {e}") from None
  if len(raw) < 4 or raw[:2] != b"\0\0":
    raise DataError(f"{path} is not an IDX file (it does not start with two zero bytes)")
  dtype, ndim = raw[2], raw[3]
  if dtype != _UBYTE:
    raise DataError(f"{path}: IDX data type 0x{dtype:02x} is not unsigned byte (0x08)")
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f"{path} is truncated: {len(raw)} bytes, shorter than its {ndim}-d header")
  shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
  size = int(np.prod(shape))
  if len(raw) - header != size:
    raise DataError(f"{path}: header says shape {shape} ({size} bytes of data) but the file holds "
                    f"{len(raw) - header}; the file is damaged, install or download it again")
  return np.frombuffer(raw, np.uint8, size, header).reshape(shape)


def find_files(idx_dir: str) -> dict[str, str]:
  """The four files' paths in ``idx_dir`` (the name or the name + '.gz'); DataError saying what
  to install or pass when the directory or a file is missing."""
  idx_dir = os.path.abspath(os.path.expanduser(idx_dir))
  how = (f"install Fashion-MNIST (apt-get install dataset-fashion-mnist, into {DEFAULT_DIR}) or pass "
         f"--config.data.idx_dir=DIR of the IDX files")
  if not os.path.isdir(idx_dir):
    raise DataError(f"data.idx_dir={idx_dir} is not a directory: {how}")
  paths = {}
  for key, name in FILES.items():
    found = [p for p in (os.path.join(idx_dir, name), os.path.join(idx_dir, name + ".gz")) if os.path.isfile(p)]
    if not found:
      raise DataError(f"data.idx_dir={idx_dir} has no {name} or {name}.gz: {how}")
    paths[key] = found[0]
  return paths


def load(idx_dir: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (N, H, W), labels uint8 (N,)) of the train then the test files of ``idx_dir``."""
  p = find_files(idx_dir)
  images, labels = [], []
  for part in ("train", "test"):
    x, y = read_idx(p[f"{part}_images"]), read_idx(p[f"{part}_labels"])
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
      raise DataError(f"{p[f'{part}_images']} (shape {x.shape}) and {p[f'{part}_labels']} (shape {y.shape}) "
                      f"are not N images and N labels")
    images.append(x)
    labels.append(y)
  if images[0].shape[1:] != images[1].shape[1:]:
    raise DataError(f"train images are {images[0].shape[1:]} but test images {images[1].shape[1:]} in {idx_dir}")
  return np.concatenate(images), np.concatenate(labels)


def parse_classes(classes: str) -> tuple[int, ...]:
  """'0,1,8' -> (0, 1, 8); '' -> () meaning every class. DataError naming data.classes otherwise."""
  parts = [p.strip() for p in str(classes).split(",") if p.strip()]
  try:
    values = tuple(int(p) for p in parts)
  except ValueError:
    raise DataError(f"data.classes must be comma-separated class numbers such as '0,1,2' (or '' for all), "
                    f"got {classes!r}") from None
  if any(v < 0 or v > 255 for v in values) or len(set(values)) != len(values):
    raise DataError(f"data.classes must be distinct class numbers in 0..255, got {classes!r}")
  return tuple(sorted(values))


def class_indices(labels: np.ndarray, classes: tuple[int, ...], idx_dir: str) -> np.ndarray:
  """Indices (ascending) of the images of ``classes`` (all if empty); DataError for a class with none."""
  if not classes:
    return np.arange(len(labels))
  missing = [c for c in classes if not np.any(labels == c)]
  if missing:
    present = ",".join(str(c) for c in np.unique(labels))
    raise DataError(f"data.classes: class {missing[0]} has no image in {idx_dir} (its classes: {present})")
  return np.flatnonzero(np.isin(labels, classes))


def select(labels: np.ndarray, classes: tuple[int, ...], *, n_shot: int, seed: int, held_out: int,
           idx_dir: str) -> np.ndarray:
  """Indices of the chosen images: the n-shot training set (all the classes' images when
  ``n_shot`` is 0), or with ``held_out`` > 0 that many of the classes' other images.

  The classes' images are ordered by `shots.n_shot_order(count, seed)`; the training set is
  its first ``n_shot``, the held-out set the next ``held_out`` (fewer if the classes have fewer).
  """
  pool = class_indices(labels, classes, idx_dir)
  what = f"class(es) {','.join(map(str, classes)) or 'all'} of {idx_dir}"
  if n_shot > len(pool):
    raise DataError(f"data.n_shot={n_shot} but {what} have only {len(pool)} images; "
                    f"set data.n_shot to at most {len(pool)} (0 = all)")
  order = pool[n_shot_order(len(pool), seed)]
  if not held_out:
    return order[:n_shot] if n_shot else pool
  if not n_shot:
    raise DataError(f"held-out images of an IDX set need data.n_shot > 0: with data.n_shot=0 every image "
                    f"of {what} is a training image")
  rest = order[n_shot:n_shot + held_out]
  if not len(rest):
    raise DataError(f"no held-out images: data.n_shot={n_shot} takes all {len(pool)} images of {what}")
  return rest


def resize(image: np.ndarray, resolution: int) -> np.ndarray:
  """A uint8 (H, W) image as uint8 (resolution, resolution, 1): Lanczos, as folder images."""
  img = Image.fromarray(image, "L")
  if img.size != (resolution, resolution):
    img = img.resize((resolution, resolution), Image.LANCZOS)
  return np.asarray(img, np.uint8)[:, :, None]


def export(idx_dir: str, classes: str, *, shots: int, held_out: int, resolution: int, seed: int,
           out: str) -> dict[str, int]:
  """Writes the n-shot set to ``out/shots`` and the held-out set to ``out/held_out`` as PNGs;
  returns the image counts written."""
  problem = resolution_problem(resolution)
  if problem:
    raise DataError(f"--resolution {problem}")
  images, labels = load(idx_dir)
  parsed = parse_classes(classes)
  counts = {}
  for sub, indices in (("shots", select(labels, parsed, n_shot=shots, seed=seed, held_out=0, idx_dir=idx_dir)),
                       ("held_out", select(labels, parsed, n_shot=shots, seed=seed, held_out=held_out,
                                           idx_dir=idx_dir) if held_out else [])):
    if not len(indices):
      continue
    folder = os.path.join(out, sub)
    os.makedirs(folder, exist_ok=True)
    for i in indices:
      Image.fromarray(resize(images[i], resolution)[:, :, 0], "L").save(
          os.path.join(folder, f"{labels[i]}_{i:05d}.png"), optimize=True)
    counts[sub] = len(indices)
  return counts


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description="Write an IDX (Fashion-MNIST) class selection as PNG folders.")
  p.add_argument("--idx_dir", default=DEFAULT_DIR)
  p.add_argument("--classes", required=True, help="comma-separated class numbers, e.g. 9")
  p.add_argument("--shots", type=int, required=True, help="images written to OUT/shots")
  p.add_argument("--held_out", type=int, default=0, help="further images of the classes written to OUT/held_out")
  p.add_argument("--resolution", type=int, default=32)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", required=True)
  a = p.parse_args(argv)
  try:
    counts = export(a.idx_dir, a.classes, shots=a.shots, held_out=a.held_out, resolution=a.resolution,
                    seed=a.seed, out=a.out)
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {', '.join(f'{n} images to {os.path.join(a.out, k)}' for k, n in counts.items())}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
