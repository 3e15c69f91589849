"""tfds builders: a folder of images, or a synthetic demo domain.

Both are `tfds.core.GeneratorBasedBuilder`s written to `array_record` files and
read back with `builder.as_data_source()` (random access, no TensorFlow). Each
example is `{'image': uint8 (res, res, C), 'file': str}` stored as PNG, so
reading decodes a small PNG, never the original file again. C is the
`channels` the builder was made with: 3 (RGB) or 1 (grayscale, for
`model.img_channels=1`).

Folder images go through one path, `load_image`:
  * EXIF orientation is applied, then the mode becomes RGB: grayscale, palette,
    CMYK (PIL's plain conversion, no ICC profile) and 16-bit (scaled, not
    clipped) are converted; images with alpha (RGBA, LA, transparent palette)
    are composited on WHITE, so transparent backgrounds don't turn black.
    With channels=1 that RGB image is then converted to its ITU-R 601-2 luma
    (PIL's convert('L'): L = (19595 R + 38470 G + 7471 B + 2**15) >> 16).
  * The centre square of side min(width, height) is cropped and resized to
    `resolution` with Lanczos. Images smaller than that are upscaled (listed
    under `upscaled` in the report), not skipped: few-shot sets are often small.
  * Unreadable files (corrupt, truncated, not an image despite the extension)
    are skipped and listed with the reason under `skipped` in the report.
  * Missing folder, empty folder, no valid image left, or fewer valid images
    than `n_shot`: `DataError` naming the folder.

Every option lands in the builder config name (a hash of the folder path,
resolution, n_shot, seed and the file list with sizes and mtimes; for the
synthetic domains, of the renderer's source; a grayscale preparation's name
ends in `_c1` and its hash includes the channel count), so changed inputs never
reuse a stale prepared dataset, and an RGB preparation is never read as a
grayscale one. tfds writes into `incomplete.*` and renames when done;
on top of that `prepare_builder` only trusts a prepared folder whose
`prepare_report.json` (written inside the temporary folder, before the rename)
says complete and matches the example count; anything else is deleted and
prepared again. Preparation holds a per-config lock (`preparation_lock`), under
which the `incomplete.*` folders of killed preparations are deleted.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import warnings
from typing import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageOps

from gantl_jax.data import idx
from gantl_jax.data import synthetic
from gantl_jax.data.shots import n_shot_order
from gantl_jax.errors import DataError
from gantl_jax.resolutions import resolution_problem

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
REPORT_NAME = "prepare_report.json"
# In a config's folder, next to its version folders; tfds ignores names that are not versions.
LOCK_NAME = ".prepare.lock"
_SPLIT = "train"
# Files decoded concurrently while preparing; PIL releases the GIL while decoding.
_DECODE_THREADS = 4
_BLOCK = 64


# ---------------------------------------------------------------------------
# Files and images.


def list_images(folder: str) -> tuple[list[str], int]:
  """Returns (sorted image paths relative to `folder`, number of other files).

  Recursive; hidden files and folders are ignored. Raises DataError if the
  folder is missing, not a folder, or holds no file with an image extension.
  """
  folder = os.path.abspath(os.path.expanduser(folder))
  if not os.path.exists(folder):
    raise DataError(f"image folder does not exist: {folder}")
  if not os.path.isdir(folder):
    raise DataError(f"image folder is not a directory: {folder}")
  images, others = [], 0
  for root, dirs, files in os.walk(folder, followlinks=True):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in files:
      if name.startswith("."):
        continue
      if name.lower().endswith(IMAGE_EXTENSIONS):
        images.append(os.path.relpath(os.path.join(root, name), folder))
      else:
        others += 1
  if not images:
    raise DataError(
        f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in folder {folder}"
        + (f" ({others} other files ignored)" if others else " (it is empty)")
    )
  return sorted(images), others


def to_rgb(img: Image.Image) -> tuple[Image.Image, str | None]:
  """Converts any PIL mode to RGB; returns (image, original mode if converted)."""
  mode = img.mode
  if mode == "RGB":
    return img, None
  if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
    # 16-bit / 32-bit grayscale: PIL's convert('L') clips at 255, so rescale by the type's range.
    a = np.asarray(img, np.float64)
    top = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
    if mode == "F" and a.max() <= 1.0:
      top = 1.0
    a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(a, "L").convert("RGB"), mode
  if mode == "P" and "transparency" in img.info or mode in ("RGBA", "LA", "PA", "La", "RGBa"):
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB"), mode
  return img.convert("RGB"), mode


def center_crop_resize(img: Image.Image, resolution: int) -> tuple[np.ndarray, bool]:
  """Crops the centre square and resizes it; returns (uint8 array, upscaled?)."""
  w, h = img.size
  side = min(w, h)
  left, top = (w - side) // 2, (h - side) // 2
  img = img.crop((left, top, left + side, top + side))
  if side != resolution:
    img = img.resize((resolution, resolution), Image.LANCZOS, reducing_gap=3.0 if side > resolution else None)
  return np.asarray(img, np.uint8), side < resolution


@dataclasses.dataclass
class LoadedImage:
  file: str
  image: np.ndarray | None = None
  error: str | None = None
  converted_from: str | None = None
  upscaled: bool = False


def load_image(folder: str, file: str, resolution: int, channels: int = 3) -> LoadedImage:
  """Reads one file into uint8 (resolution, resolution, channels), channels 3 (RGB) or 1 (the
  luma of the RGB image, as PIL's convert('L')); errors are returned, not raised."""
  path = os.path.join(folder, file)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # PIL's palette/EXIF chatter; failures still raise
      with Image.open(path) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
        mode = img.mode
        img, _ = to_rgb(img)
        if channels == 1:
          img = img.convert("L")
        if mode == ("L" if channels == 1 else "RGB"):
          mode = None  # stored as it was read
        array, upscaled = center_crop_resize(img, resolution)
  except Image.DecompressionBombError as e:
    return LoadedImage(file, error=f"too large: {e}")
  except Image.UnidentifiedImageError:
    return LoadedImage(file, error="not a readable image")
  except (OSError, ValueError, SyntaxError, EOFError) as e:
    return LoadedImage(file, error=f"corrupt or truncated: {e}")
  if channels == 1:
    array = array[..., None]
  if array.shape != (resolution, resolution, channels):
    return LoadedImage(file, error=f"unexpected decoded shape {array.shape}")
  return LoadedImage(file, array, converted_from=mode, upscaled=upscaled)


def _load_many(folder: str, files: list[str], resolution: int, channels: int) -> Iterator[LoadedImage]:
  # Bounded window of concurrent decodes, results in input order.
  with concurrent.futures.ThreadPoolExecutor(_DECODE_THREADS) as pool:
    for start in range(0, len(files), _BLOCK):
      yield from pool.map(lambda f: load_image(folder, f, resolution, channels), files[start : start + _BLOCK])


# ---------------------------------------------------------------------------
# Builders.


def _features(resolution: int, channels: int = 3) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict(
      {
          "image": tfds.features.Image(shape=(resolution, resolution, channels), encoding_format="png"),
          "file": tfds.features.Text(),
      }
  )


def _hash(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def _pil_image(array: np.ndarray) -> Image.Image:
  """A uint8 (H, W, 1) or (H, W, 3) array as the PIL image tfds encodes ('L' or 'RGB')."""
  return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def _check_channels(channels: int) -> None:
  if channels not in (1, 3):
    raise DataError(f"image channels must be 1 (grayscale) or 3 (RGB), got {channels}")


def _channels_suffix(channels: int) -> str:
  # RGB names carry no suffix, so datasets prepared before grayscale existed are reused.
  return "" if channels == 3 else f"_c{channels}"


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
  folder: str = ""
  resolution: int = 0
  n_shot: int = 0
  seed: int = 0
  # Kept out of the repr: tfds logs the config, and a folder may hold 70k files.
  files: tuple = dataclasses.field(default=(), repr=False)
  other_files: int = 0
  fingerprint: str = ""
  channels: int = 3


class GantlFolder(tfds.core.GeneratorBasedBuilder):
  """Images from a flat or nested folder (no class sub-folders needed)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Centre crop, Lanczos resize, RGB, alpha on white."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"Images of {self.builder_config.folder}",
        features=_features(self.builder_config.resolution, self.builder_config.channels),
        disable_shuffling=True,  # example i is report['files'][i]
    )

  def _split_generators(self, dl_manager):
    return {_SPLIT: self._generate_examples()}

  def _generate_examples(self):
    cfg: FolderConfig = self.builder_config
    report = _new_report(self, source="folder", folder=cfg.folder, n_shot=cfg.n_shot, seed=cfg.seed)
    report.update(num_candidates=len(cfg.files), ignored_other_files=cfg.other_files, channels=cfg.channels)
    files = list(cfg.files)
    if cfg.n_shot:
      files = [files[i] for i in n_shot_order(len(files), cfg.seed)]
    kept = []
    for loaded in _load_many(cfg.folder, files, cfg.resolution, cfg.channels):
      if loaded.error:
        report["skipped"].append({"file": loaded.file, "reason": loaded.error})
        continue
      if loaded.converted_from:
        report["converted"].append({"file": loaded.file, "mode": loaded.converted_from})
      if loaded.upscaled:
        report["upscaled"].append(loaded.file)
      yield len(kept), {"image": _pil_image(loaded.image), "file": loaded.file}
      kept.append(loaded.file)
      if cfg.n_shot and len(kept) == cfg.n_shot:
        break
    report["files"] = kept
    report["num_examples"] = len(kept)
    if not kept:
      raise DataError(
          f"no valid image left in folder {cfg.folder}: all {len(files)} image files were skipped "
          f"(first: {report['skipped'][0]['file']}: {report['skipped'][0]['reason']})"
      )
    if cfg.n_shot and len(kept) < cfg.n_shot:
      raise DataError(f"data.n_shot={cfg.n_shot} but folder {cfg.folder} has only {len(kept)} valid "
                      f"images ({len(report['skipped'])} of its {len(files)} image files are unreadable); "
                      f"set data.n_shot to at most {len(kept)} (0 = all) or add images")

  def _download_and_prepare(self, dl_manager, download_config=None):
    super()._download_and_prepare(dl_manager, download_config)
    _write_report(self)


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
  domain: str = "photo"
  count: int = 0
  resolution: int = 0
  seed: int = 0
  start: int = 0  # the first image's index (checks.HELD_OUT_START for a held-out set)
  channels: int = 3  # 1: the RGB rendering converted to luma (PIL's convert('L'))


class GantlSynthetic(tfds.core.GeneratorBasedBuilder):
  """A built-in procedural face domain (see `synthetic.py`)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "photo and anime domains."}

  def _info(self) -> tfds.core.DatasetInfo:
    cfg: SyntheticConfig = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"Synthetic '{cfg.domain}' faces, seed {cfg.seed}",
        features=_features(cfg.resolution, cfg.channels),
        disable_shuffling=True,  # example i is synthetic image i
    )

  def _split_generators(self, dl_manager):
    return {_SPLIT: self._generate_examples()}

  def _generate_examples(self):
    cfg: SyntheticConfig = self.builder_config
    report = _new_report(self, source="synthetic", domain=cfg.domain, count=cfg.count, seed=cfg.seed,
                         start=cfg.start, channels=cfg.channels)
    for first in range(0, cfg.count, 256):
      idx = np.arange(first, min(first + 256, cfg.count))
      images = synthetic.render(cfg.domain, cfg.start + idx, resolution=cfg.resolution, seed=cfg.seed)
      for i, im in zip(idx, images):
        image = Image.fromarray(im)
        yield int(i), {"image": image.convert("L") if cfg.channels == 1 else image,
                       "file": f"{cfg.domain}/{cfg.start + int(i):06d}"}
    report["num_examples"] = cfg.count

  def _download_and_prepare(self, dl_manager, download_config=None):
    super()._download_and_prepare(dl_manager, download_config)
    _write_report(self)


@dataclasses.dataclass(eq=False)
class IdxConfig(tfds.core.BuilderConfig):
  idx_dir: str = ""
  classes: tuple = ()
  resolution: int = 0
  n_shot: int = 0
  seed: int = 0
  held_out: int = 0  # > 0: this many images of the classes outside the n-shot set (idx.select)


class GantlIdx(tfds.core.GeneratorBasedBuilder):
  """Images of some classes of an MNIST-layout IDX set such as Fashion-MNIST (see `idx.py`),
  stored grayscale: (res, res, 1)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Class selection, seeded n-shot and held-out sets, Lanczos resize, grayscale."}

  def _info(self) -> tfds.core.DatasetInfo:
    cfg: IdxConfig = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"Classes {cfg.classes or 'all'} of the IDX files in {cfg.idx_dir}",
        features=_features(cfg.resolution, channels=1),
        disable_shuffling=True,  # example i is report['files'][i]
    )

  def _split_generators(self, dl_manager):
    return {_SPLIT: self._generate_examples()}

  def _generate_examples(self):
    cfg: IdxConfig = self.builder_config
    report = _new_report(self, source="idx", idx_dir=cfg.idx_dir, classes=list(cfg.classes), n_shot=cfg.n_shot,
                         seed=cfg.seed, held_out=cfg.held_out)
    report["crop"] = "whole image, Lanczos resize"
    images, labels = idx.load(cfg.idx_dir)
    chosen = idx.select(labels, cfg.classes, n_shot=cfg.n_shot, seed=cfg.seed, held_out=cfg.held_out,
                        idx_dir=cfg.idx_dir)
    for k, i in enumerate(chosen):
      image = Image.fromarray(idx.resize(images[i], cfg.resolution)[:, :, 0], "L")
      yield k, {"image": image, "file": f"{labels[i]}_{i:05d}"}
    report["files"] = [f"{labels[i]}_{i:05d}" for i in chosen]
    report["num_examples"] = len(chosen)

  def _download_and_prepare(self, dl_manager, download_config=None):
    super()._download_and_prepare(dl_manager, download_config)
    _write_report(self)


def _new_report(builder, **fields) -> dict:
  cfg = builder.builder_config
  builder._gantl_report = dict(
      complete=False,
      builder=builder.name,
      config=cfg.name,
      resolution=cfg.resolution,
      **fields,
      num_examples=0,
      files=[],
      skipped=[],
      converted=[],
      upscaled=[],
      crop="centre square of side min(width, height), Lanczos resize (upscaled if smaller)",
      alpha="composited on white",
  )
  return builder._gantl_report


def _write_report(builder) -> None:
  # Runs while builder.data_dir is still tfds' temporary folder, so the
  # report appears together with the data in the final rename.
  report = builder._gantl_report
  report["complete"] = True
  with open(os.path.join(os.fspath(builder.data_dir), REPORT_NAME), "w") as f:
    json.dump(report, f, indent=1)


# ---------------------------------------------------------------------------
# Construction and preparation.


def _safe(name: str) -> str:
  out = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
  return out[:32] or "root"


def folder_builder(folder: str, *, resolution: int, n_shot: int = 0, seed: int = 0, data_dir: str,
                   channels: int = 3) -> GantlFolder:
  """A `GantlFolder` builder of `channels`-channel images whose config name fingerprints every
  input.

  Lists the folder (raising DataError when missing/empty) and hashes the
  path, options and each file's size and mtime.
  """
  _check_resolution(resolution)
  _check_channels(channels)
  if n_shot < 0:
    raise DataError(f"data.n_shot must be >= 0 (0 = all images), got {n_shot}")
  folder = os.path.abspath(os.path.expanduser(folder))
  files, others = list_images(folder)
  if n_shot > len(files):
    raise DataError(f"data.n_shot={n_shot} but folder {folder} has only {len(files)} image files; "
                    f"set data.n_shot to at most {len(files)} (0 = all) or add images")
  stats = []
  for f in files:
    st = os.stat(os.path.join(folder, f))
    stats.append([f, st.st_size, st.st_mtime_ns])
  # The seed only matters for a subset: without one, keep one prepared copy per folder.
  seed = seed if n_shot else 0
  inputs = dict(v=str(GantlFolder.VERSION), folder=folder, res=resolution, n_shot=n_shot, seed=seed, files=stats)
  fp = _hash(inputs if channels == 3 else dict(inputs, channels=channels))
  name = f"{_safe(os.path.basename(folder))}_r{resolution}_n{n_shot}_s{seed}{_channels_suffix(channels)}_{fp}"
  cfg = FolderConfig(
      name=name, folder=folder, resolution=resolution, n_shot=n_shot, seed=seed,
      files=tuple(files), other_files=others, fingerprint=fp, channels=channels,
  )
  return GantlFolder(config=cfg, data_dir=os.path.expanduser(data_dir), file_format="array_record")


def synthetic_builder(domain: str, *, count: int, resolution: int, seed: int = 0, start: int = 0,
                      data_dir: str, channels: int = 3) -> GantlSynthetic:
  """A `GantlSynthetic` builder of images start..start+count-1 with `channels` channels; its name
  includes a hash of the renderer source."""
  _check_resolution(resolution)
  _check_channels(channels)
  synthetic.domain_id(domain)
  if count <= 0:
    raise DataError(f"synthetic num_images must be > 0, got {count}")
  with open(synthetic.__file__, "rb") as f:
    code = hashlib.sha256(f.read()).hexdigest()[:12]
  name = f"{domain}_r{resolution}_n{count}_s{seed}{f'_from{start}' if start else ''}{_channels_suffix(channels)}_{code}"
  cfg = SyntheticConfig(name=name, domain=domain, count=count, resolution=resolution, seed=seed, start=start,
                        channels=channels)
  return GantlSynthetic(config=cfg, data_dir=os.path.expanduser(data_dir), file_format="array_record")


def idx_builder(idx_dir: str, *, classes: str = "", resolution: int, n_shot: int = 0, seed: int = 0,
                held_out: int = 0, data_dir: str) -> GantlIdx:
  """A `GantlIdx` builder of the n-shot set (``held_out`` = 0) or of ``held_out`` other images
  of ``classes`` (see `idx.select`); its name fingerprints the options and the IDX files' sizes
  and mtimes. DataError when the files are missing or an option cannot work."""
  _check_resolution(resolution)
  if n_shot < 0:
    raise DataError(f"data.n_shot must be >= 0 (0 = all images), got {n_shot}")
  idx_dir = os.path.abspath(os.path.expanduser(idx_dir))
  parsed = idx.parse_classes(classes)
  stats = []
  for key, path in sorted(idx.find_files(idx_dir).items()):
    st = os.stat(path)
    stats.append([os.path.basename(path), st.st_size, st.st_mtime_ns])
  seed = seed if n_shot else 0
  fp = _hash(dict(v=str(GantlIdx.VERSION), dir=idx_dir, classes=parsed, res=resolution, n_shot=n_shot,
                  seed=seed, held_out=held_out, files=stats))
  tag = "-".join(map(str, parsed)) or "all"
  name = f"{_safe(os.path.basename(idx_dir))}_c{tag}_r{resolution}_n{n_shot}_s{seed}" \
         f"{f'_heldout{held_out}' if held_out else ''}_{fp}"
  cfg = IdxConfig(name=name, idx_dir=idx_dir, classes=parsed, resolution=resolution, n_shot=n_shot, seed=seed,
                  held_out=held_out)
  return GantlIdx(config=cfg, data_dir=os.path.expanduser(data_dir), file_format="array_record")


def _check_resolution(resolution: int) -> None:
  problem = resolution_problem(resolution)
  if problem:
    raise DataError(f"resolution {problem}")


def read_report(builder) -> dict | None:
  """The report of a prepared builder, or None if missing/incomplete/inconsistent."""
  path = os.path.join(os.fspath(builder.data_path), REPORT_NAME)
  try:
    with open(path) as f:
      report = json.load(f)
    n = builder.info.splits[_SPLIT].num_examples
  except (OSError, ValueError, KeyError):
    return None
  if not report.get("complete") or report.get("config") != builder.builder_config.name:
    return None
  if report.get("num_examples") != n or n <= 0:
    return None
  shards = [p for p in os.listdir(os.fspath(builder.data_path)) if ".array_record-" in p]
  if not shards:
    return None
  return report


@contextlib.contextmanager
def preparation_lock(builder: tfds.core.DatasetBuilder, *, verbose: bool = True) -> Iterator[None]:
  """Holds an exclusive lock on the builder config's folder (``LOCK_NAME`` in it) while its
  dataset is checked and prepared; a second process preparing the same config waits for it.

  flock: the kernel releases the lock of a process that dies, however it dies, so whoever holds
  the lock knows that every ``incomplete.*`` folder of the config is a dead preparation's.
  """
  folder = os.fspath(builder.data_path.parent)
  os.makedirs(folder, exist_ok=True)
  fd = os.open(os.path.join(folder, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      if verbose:
        print(f"waiting for another process that is preparing {folder}", flush=True)
      fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)  # releases the flock


def remove_stale_incomplete(builder: tfds.core.DatasetBuilder) -> list[str]:
  """Deletes tfds' temporary folders (``incomplete.XXXXXX_<version>``) of the builder's config and
  version; returns their paths. Only safe under `preparation_lock`."""
  folder, version = os.path.split(os.fspath(builder.data_path))
  stale = sorted(os.path.join(folder, name) for name in os.listdir(folder)
                 if name.startswith(tfds.core.constants.INCOMPLETE_PREFIX) and name.endswith(f"_{version}"))
  for path in stale:
    shutil.rmtree(path, ignore_errors=True)
  return stale


def prepare_builder(make_builder: Callable[[], tfds.core.DatasetBuilder], *, verbose: bool = True):
  """Prepares (once) and returns (builder, report).

  Runs under `preparation_lock`: a concurrent preparation of the same dataset is waited for and
  its result reused, and the temporary folders of one that was killed are deleted first.
  `make_builder` is called again after a distrusted prepared folder has been deleted, because a
  tfds builder reads its info at construction.
  """
  builder = make_builder()
  prepared_before = os.path.isdir(os.fspath(builder.data_path))
  with preparation_lock(builder, verbose=verbose):
    if not prepared_before and os.path.isdir(os.fspath(builder.data_path)):
      # Prepared by the process waited for: a builder made before has the info of no data.
      builder = make_builder()
    stale = remove_stale_incomplete(builder)
    if stale and verbose:
      print(f"removed {len(stale)} unfinished preparation folder(s) of a killed run: {', '.join(stale)}")
    return _prepare_locked(builder, make_builder, verbose)


def _prepare_locked(builder, make_builder, verbose: bool):
  path = os.fspath(builder.data_path)
  if os.path.isdir(path):
    report = read_report(builder)
    if report is not None:
      report["reused"] = True
      return builder, report
    warnings.warn(f"discarding incomplete prepared dataset at {path}; preparing it again")
    shutil.rmtree(path)
    builder = make_builder()
  try:
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(try_download_gcs=False),
    )
  except DataError:
    raise
  except Exception as e:  # a library error while writing: name what we were preparing
    raise DataError(f"preparing {builder.name}/{builder.builder_config.name} in {path} failed: {e!r}") from e
  report = read_report(builder)
  if report is None:
    raise DataError(f"prepared dataset at {path} failed its completeness check")
  report["reused"] = False
  if verbose:
    print(summarize(report, path))
  return builder, report


def summarize(report: dict, path: str = "") -> str:
  """A short human summary of a prepare report."""
  lines = [f"prepared {report['builder']}/{report['config']}: {report['num_examples']} images at {report['resolution']}px"]
  skipped = report.get("skipped") or []
  if skipped:
    lines.append(f"  skipped {len(skipped)} unreadable image files:")
    # Whole reasons, one file a line: a cut reason ("36 bytes not ") hides what is wrong.
    lines += [f"    {s['file']}: {' '.join(s['reason'].split())}" for s in skipped[:10]]
    if len(skipped) > 10:
      lines.append(f"    and {len(skipped) - 10} more (all in the report)")
  if report.get("upscaled"):
    lines.append(f"  upscaled {len(report['upscaled'])} smaller than {report['resolution']}px: {', '.join(report['upscaled'][:10])}")
  if report.get("converted"):
    modes = sorted({c["mode"] for c in report["converted"]})
    target = "grayscale (L)" if report.get("channels") == 1 else "RGB"
    lines.append(f"  converted {len(report['converted'])} to {target} from {', '.join(modes)}")
  if report.get("ignored_other_files"):
    lines.append(f"  ignored {report['ignored_other_files']} files without an image extension")
  if path:
    lines.append(f"  report: {os.path.join(path, REPORT_NAME)}")
  return "\n".join(lines)
