"""From a prepared tfds split to batches of float32 images in [-1, 1], NHWC.

The stream is pure index arithmetic, no framework: for epoch e the examples
are visited in `permutation_e = default_rng([seed, e]).permutation(N)`; the
stream position k (counting examples over all epochs) maps to example
`permutation_{k // N}[k % N]`. Global batch s is positions
[s * global_batch, (s + 1) * global_batch) and host p of P takes the
contiguous slice p * local : (p + 1) * local of it. So:

  * the global batch at step s is the same set of examples for any number of
    hosts, and hosts' shares are disjoint and cover it;
  * the random x-flip of an example is a function of (seed, k), not of the host;
  * the whole position is one integer, `step`: `get_state()` is
    `{'step': s, ...}`, and an iterator built from it continues exactly.

A background thread decodes up to `prefetch` batches ahead, each batch's
PNGs decoded by a small thread pool (PIL releases the GIL).

Images come out with the `channels` given to `prepare` (`model.img_channels`),
whatever the stored dataset holds (`to_channels`): a grayscale image is repeated
to RGB, an RGB image becomes its ITU-R 601-2 luma with PIL's integer weights and
rounding, so it equals PIL's convert('L') bit for bit.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import queue
import threading
import weakref
from typing import Any

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from gantl_jax.data import builders, checks
from gantl_jax.errors import DataError

_SPLIT = "train"
# PIL's convert('L') of RGB: L = (19595 R + 38470 G + 7471 B + 2**15) >> 16, i.e. the ITU-R 601-2
# weights 0.299, 0.587, 0.114 in 16-bit fixed point (they sum to 2**16), rounded half up.
_LUMA_WEIGHTS = np.array([19595, 38470, 7471], np.uint32)


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
  """A uint8 (..., H, W, 1 or 3) image with ``channels`` (1 or 3) channels: grey is repeated to
  RGB, RGB becomes its luma exactly as PIL's convert('L') computes it; unchanged if it has them."""
  have = image.shape[-1]
  if have == channels:
    return image
  if have == 1 and channels == 3:
    return np.repeat(image, 3, axis=-1)
  if have == 3 and channels == 1:
    luma = (image.astype(np.uint32) @ _LUMA_WEIGHTS + (1 << 15)) >> 16
    return luma.astype(np.uint8)[..., None]
  raise DataError(f"cannot convert {have}-channel images to {channels} channels (1 or 3 only)")


@dataclasses.dataclass
class ImageSource:
  """Random access to uint8 (res, res, channels) images; index >= N is the mirror of index - N."""

  source: Any  # the tfds array_record data source, items {'image', 'file'}
  size: int
  mirror: bool = False
  channels: int = 3  # of the images returned; the stored ones are converted (`to_channels`)

  def __len__(self) -> int:
    return 2 * self.size if self.mirror else self.size

  def __getitem__(self, index: int) -> np.ndarray:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} images")
    image = to_channels(self.source[index % self.size]["image"], self.channels)
    return image[:, ::-1] if index >= self.size else image


@dataclasses.dataclass
class PreparedData:
  """A prepared dataset: `data_source[i]` is uint8 (res, res, channels)."""

  name: str
  resolution: int
  num_examples: int
  data_source: ImageSource
  report: dict
  info: tfds.core.DatasetInfo
  data_path: str
  # Iterator defaults from the data config: xflip, prefetch, num_workers.
  options: dict = dataclasses.field(default_factory=dict)


def subset_indices(count: int, num: int, seed: int | None = None) -> np.ndarray:
  """Indices of ``num`` of ``count`` images: all of them when ``num >= count``; else the first
  ``num`` with ``seed=None``, or a uniform choice without replacement by
  ``np.random.default_rng(seed)``, in index order. A seeded choice matters when the order has a
  structure, as a folder's file names do (``<class>_<index>.png`` sorts class by class)."""
  if num >= count:
    return np.arange(count)
  if seed is None:
    return np.arange(max(0, num))
  return np.sort(np.random.default_rng(seed).choice(count, num, replace=False))


def take_images(prepared: PreparedData, num: int, seed: int | None = None) -> np.ndarray:
  """uint8 NHWC: ``num`` of the prepared images (never their mirrors) chosen by `subset_indices`."""
  return np.stack([prepared.data_source[i] for i in subset_indices(prepared.num_examples, num, seed)])


def prepare(data_config: ml_collections.ConfigDict, *, resolution: int, channels: int = 3,
            verbose: bool = True) -> PreparedData:
  """Builds the tfds dataset once (reused when already prepared) and opens it.

  `data_config` is the `data` section of a run config (keys and defaults:
  `gantl_jax/defaults.py`); `channels` is `model.img_channels` (1 or 3): folder and synthetic images
  are stored with that many channels. Raises DataError naming the key, file or folder at fault.
  """
  c = data_config
  checks.check_config(c)
  data_dir = str(c.data_dir)
  if c.source == "synthetic":
    make = lambda: builders.synthetic_builder(c.domain, count=int(c.num_images), resolution=resolution, seed=int(c.seed),
                                              data_dir=data_dir, channels=channels)
  elif c.source == "idx":
    make = lambda: builders.idx_builder(c.idx_dir, classes=c.classes, resolution=resolution, n_shot=int(c.n_shot),
                                        seed=int(c.seed), data_dir=data_dir)
  else:
    if not c.folder:
      raise DataError("data.folder is required when data.source == 'folder'")
    make = lambda: builders.folder_builder(c.folder, resolution=resolution, n_shot=int(c.n_shot), seed=int(c.seed),
                                           data_dir=data_dir, channels=channels)
  return _open(*builders.prepare_builder(make, verbose=verbose), c, resolution, channels)


def prepare_held_out(data_config: ml_collections.ConfigDict, *, resolution: int, num: int,
                     channels: int = 3, verbose: bool = True) -> PreparedData:
  """``num`` held-out images of ``data_config``'s data, none of them in its training set: of a
  synthetic domain, images ``checks.HELD_OUT_START`` on of its ``seed``; of an IDX set, up to
  ``num`` images of ``data.classes`` outside the n-shot set (`idx.select`). Prepared (once) and
  opened like a dataset with ``channels``; DataError for a folder source, which has no held-out
  images."""
  c = data_config
  checks.check_config(c)
  if c.source == "synthetic":
    make = lambda: builders.synthetic_builder(c.domain, count=int(num), resolution=resolution, seed=int(c.seed),
                                              start=checks.HELD_OUT_START, data_dir=str(c.data_dir),
                                              channels=channels)
  elif c.source == "idx":
    make = lambda: builders.idx_builder(c.idx_dir, classes=c.classes, resolution=resolution, n_shot=int(c.n_shot),
                                        seed=int(c.seed), held_out=int(num), data_dir=str(c.data_dir))
  else:
    raise DataError(f"held-out images need data.source='synthetic' or 'idx' (a folder has none), got {c.source!r}")
  held_out = ml_collections.ConfigDict(dict(c.to_dict(), mirror_dataset=False))
  return _open(*builders.prepare_builder(make, verbose=verbose), held_out, resolution, channels)


def prepare_folder(folder: str, *, data_config: ml_collections.ConfigDict, resolution: int,
                   key: str, channels: int = 3, verbose: bool = True) -> PreparedData:
  """Every image of ``folder`` (a folder of held-out images, given by the config key ``key``),
  prepared once and opened like a training folder with the storage options of ``data_config``;
  DataError naming ``key`` when the folder cannot be read."""
  c = ml_collections.ConfigDict(dict(data_config.to_dict(), source="folder", folder=folder,
                                     n_shot=0, mirror_dataset=False))
  try:
    return prepare(c, resolution=resolution, channels=channels, verbose=verbose)
  except DataError as e:
    raise DataError(f"{key}: {e}") from None


def _open(builder, report: dict, c: ml_collections.ConfigDict, resolution: int, channels: int) -> PreparedData:
  """The prepared ``builder`` as a `PreparedData` of ``channels``-channel images (``c``: the data
  config's read options)."""
  source = builder.as_data_source()[_SPLIT]
  images = ImageSource(source, len(source), bool(c.mirror_dataset), channels)
  return PreparedData(
      name=f"{builder.name}/{builder.builder_config.name}",
      resolution=resolution,
      num_examples=len(images),
      data_source=images,
      report=report,
      info=builder.info,
      data_path=str(builder.data_path),
      options=dict(xflip=bool(c.xflip), prefetch=int(c.prefetch), num_workers=int(c.num_workers)),
  )


class DataIterator:
  """Infinite iterator of this host's float32 batches with a restorable position.

  Use `make_iterator`. `get_state()` describes the next batch `next()` will
  return (prefetched batches are not counted as consumed).
  """

  def __init__(self, prepared: PreparedData, *, global_batch: int, process_index: int, process_count: int,
               seed: int, xflip: bool, prefetch: int, num_workers: int):
    if global_batch <= 0 or global_batch % process_count:
      raise ValueError(f"global_batch {global_batch} must be a positive multiple of process_count {process_count}")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    self.prepared = prepared
    self.global_batch = global_batch
    self.local_batch = global_batch // process_count
    self.process_index = process_index
    self.process_count = process_count
    self.seed = seed
    self.xflip = xflip
    self.prefetch = prefetch
    self._n = prepared.num_examples
    self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    self._pool = concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) if num_workers > 1 else None
    self._step = 0
    self._thread = None
    self._queue: queue.Queue | None = None
    self._stop = threading.Event()

  # -- index arithmetic ---------------------------------------------------

  def _epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
    # Only the last few epochs are kept: a batch spans at most a few when N < global_batch.
    if e not in self._epochs:
      rng = np.random.default_rng([self.seed, e])
      perm = rng.permutation(self._n)
      flip = rng.random(self._n) < 0.5 if self.xflip else np.zeros(self._n, bool)
      if len(self._epochs) > 4:
        self._epochs.pop(min(self._epochs))
      self._epochs[e] = (perm, flip)
    return self._epochs[e]

  def indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(example indices, flip flags) of this host's share of global batch `step`."""
    start = step * self.global_batch + self.process_index * self.local_batch
    pos = np.arange(start, start + self.local_batch, dtype=np.int64)
    idx = np.empty(self.local_batch, np.int64)
    flip = np.empty(self.local_batch, bool)
    epochs = pos // self._n
    for e in np.unique(epochs):
      m = epochs == e
      perm, fl = self._epoch(int(e))
      off = pos[m] % self._n
      idx[m], flip[m] = perm[off], fl[off]
    return idx, flip

  def _load(self, step: int) -> np.ndarray:
    idx, flip = self.indices(step)
    src = self.prepared.data_source
    images = list(self._pool.map(src.__getitem__, idx)) if self._pool else [src[i] for i in idx]
    batch = np.stack(images)
    batch[flip] = batch[flip, :, ::-1]
    out = batch.astype(np.float32)
    out *= 1.0 / 127.5
    out -= 1.0
    return out

  # -- prefetching --------------------------------------------------------

  @staticmethod
  def _worker(load_ref: weakref.WeakMethod, start: int, q: queue.Queue, stop: threading.Event) -> None:
    # Holds the iterator only weakly, so dropping the iterator ends the thread.
    step = start
    while not stop.is_set():
      load = load_ref()
      if load is None:
        return
      try:
        item = (step, load(step))
      except Exception as e:  # surface in the consumer thread, not as a silent hang
        item = (step, e)
      del load
      while not stop.is_set():
        try:
          q.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      step += 1

  def _stop_worker(self) -> None:
    if self._thread is not None:
      self._stop.set()
      self._thread.join()
      self._thread, self._queue = None, None

  def __iter__(self):
    return self

  def __next__(self) -> np.ndarray:
    if self.prefetch <= 0:
      batch = self._load(self._step)
    else:
      if self._thread is None:
        self._stop = threading.Event()
        self._queue = queue.Queue(self.prefetch)
        self._thread = threading.Thread(target=self._worker, args=(weakref.WeakMethod(self._load), self._step, self._queue, self._stop), daemon=True)
        self._thread.start()
      step, batch = self._queue.get()
      assert step == self._step, (step, self._step)
      if isinstance(batch, Exception):
        self._stop_worker()
        raise batch
    self._step += 1
    return batch

  # -- state --------------------------------------------------------------

  def get_state(self) -> dict:
    """Small JSON-serialisable position: restoring it continues the stream exactly."""
    return {
        "step": self._step,
        "seed": self.seed,
        "global_batch": self.global_batch,
        "num_examples": self._n,
        "xflip": self.xflip,
    }

  def set_state(self, state: dict) -> None:
    """Moves to a position from `get_state()`, also one saved with another process_count."""
    for key in ("seed", "global_batch", "num_examples", "xflip"):
      if key in state and state[key] != getattr(self, key if key != "num_examples" else "_n"):
        raise DataError(
            f"data iterator state has {key}={state[key]!r} but this run has "
            f"{getattr(self, key if key != 'num_examples' else '_n')!r}: the stream would not continue exactly"
        )
    self._stop_worker()
    self._step = int(state["step"])

  def close(self) -> None:
    """Stops the prefetch thread and the decode pool."""
    self._stop_worker()
    if self._pool is not None:
      self._pool.shutdown(wait=True)
      self._pool = None

  def __del__(self):
    try:
      self._stop.set()
    except Exception:
      pass


def make_iterator(prepared: PreparedData, *, global_batch: int, process_index: int = 0, process_count: int = 1,
                  seed: int = 0, state: dict | None = None, xflip: bool | None = None,
                  prefetch: int | None = None, num_workers: int | None = None) -> DataIterator:
  """This host's iterator of float32 (global_batch // process_count, res, res, C) in [-1, 1],
  C the channels of ``prepared``.

  `seed` sets the shuffle order and flips; `state` (from `get_state()`)
  resumes a stream. xflip / prefetch / num_workers default to the data
  config given to `prepare`.
  """
  opts = dict(xflip=True, prefetch=2, num_workers=4) | prepared.options
  for key, value in dict(xflip=xflip, prefetch=prefetch, num_workers=num_workers).items():
    if value is not None:
      opts[key] = value
  it = DataIterator(prepared, global_batch=global_batch, process_index=process_index,
                    process_count=process_count, seed=seed, **opts)
  if state is not None:
    it.set_state(state)
  return it
