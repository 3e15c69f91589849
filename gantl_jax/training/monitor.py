"""What a user sees while a run trains: a progress bar over the run's kimg (tqdm), one status
line every ``train.log_every`` steps, and TensorBoard event files in the workdir (tensorboardX).

Nothing here reads from the device: the bar moves with the loop's host-side step counter, and
rates, losses and the ETA come from the records the loop has already fetched at its log steps.
"""
from __future__ import annotations

import datetime
import importlib.util
import math
import sys
from typing import Any, Mapping, Optional, TextIO

import jax
import numpy as np
import tensorboardX
import tqdm
from absl import logging

# Metrics the status line names in this order, with their short names; any other metric whose
# name ends in one of LOSS_SUFFIXES (few-shot losses such as cdc_loss, ewc_penalty) follows them.
STATUS_METRICS = {"g_loss": "g", "d_loss": "d", "r1_penalty": "r1", "pl_penalty": "pl", "aug_p": "aug_p"}
LOSS_SUFFIXES = ("_loss", "_penalty")
GIB = 2 ** 30


def device_memory() -> dict[str, float]:
  """Memory in use and its peak on the first local device, in GiB, where the backend reports it
  (GPU, TPU); empty on CPU, whose ``memory_stats()`` is None."""
  stats = jax.local_devices()[0].memory_stats() or {}
  out = {}
  if "bytes_in_use" in stats:
    out["device_memory_gib"] = stats["bytes_in_use"] / GIB
  if "peak_bytes_in_use" in stats:
    out["peak_device_memory_gib"] = stats["peak_bytes_in_use"] / GIB
  return out


def _fmt(value: Optional[float]) -> str:
  return "-" if value is None else f"{value:.4g}"


def status_line(record: Mapping[str, Any]) -> str:
  """One line of a metrics record: step, kimg, the losses and penalties (G, D, R1, path length,
  then any others the record has), augmentation p if on, device memory if known, images/s."""
  parts = [f"step {record['step']}", f"kimg {record['kimg']:.2f}"]
  parts += [f"{short} {_fmt(record[name])}" for name, short in STATUS_METRICS.items() if name in record]
  parts += [f"{name} {_fmt(value)}" for name, value in record.items()
            if name.endswith(LOSS_SUFFIXES) and name not in STATUS_METRICS]
  if "device_memory_gib" in record:
    peak = record.get("peak_device_memory_gib")
    parts.append(f"mem {record['device_memory_gib']:.2f} GiB" + (f" (peak {peak:.2f})" if peak is not None else ""))
  parts.append(f"{record['images_per_s']:.1f} img/s")
  return "  ".join(parts)


def watch_line(workdir: str, tensorboard: bool = True) -> str:
  """Where the run writes, and the command that shows it live."""
  if not tensorboard:
    return f"workdir {workdir}"
  install = "" if importlib.util.find_spec("tensorboard") else " (pip install tensorboard)"
  return f"workdir {workdir}; watch it with: tensorboard --logdir {workdir}{install}"


def _progress_text(record: Mapping[str, Any], remaining_kimg: float) -> str:
  eta = datetime.timedelta(seconds=round(remaining_kimg * record["sec_per_kimg"]))
  return f"{record['sec_per_kimg']:.3g} s/kimg, {record['images_per_s']:.1f} img/s, ETA {eta}"


class Monitor:
  """Process 0's view of a run: progress bar, status lines and TensorBoard writer. With
  ``enabled=False`` (other processes) it shows and writes nothing.

  The bar is drawn only when ``stream`` (stderr) is a terminal; the status lines then go through
  tqdm so that they do not break the bar, and through absl logging otherwise.
  """

  def __init__(self, workdir: str, *, enabled: bool, total_kimg: float, kimg_per_step: float,
               start_step: int, tensorboard: bool, stream: Optional[TextIO] = None):
    self.enabled = enabled
    self._stream = stream if stream is not None else sys.stderr
    self._total_kimg = total_kimg
    self._kimg_per_step = kimg_per_step
    self._start_kimg = start_step * kimg_per_step
    self._bar: Optional[tqdm.tqdm] = None
    self._writer = None
    self._last_image_step: dict[str, int] = {}
    if enabled and tensorboard:
      # A resumed run starts a new event file with TensorBoard's restart marker: TensorBoard hides
      # what an interrupted run wrote past the checkpoint it resumes from (as jsonl.trim does for
      # metrics.jsonl). A fresh start (step 0) hides everything of an earlier failed attempt.
      # tensorboardX names the file by the second it opens it: the start step in the name keeps two
      # launches within one second from writing over each other.
      self._writer = tensorboardX.SummaryWriter(
          workdir, purge_step=start_step + 1 if start_step else 0, flush_secs=30,
          filename_suffix=f".step{start_step:09d}")

  def start_bar(self) -> None:
    """Shows the bar (after compiling, so its clock measures training), from the resumed kimg."""
    if not self.enabled:
      return
    self._bar = tqdm.tqdm(
        total=self._total_kimg, initial=self._start_kimg, file=self._stream, disable=None,
        dynamic_ncols=True, leave=True, desc="train",
        bar_format="{desc} {percentage:3.0f}%|{bar}| {n:.2f}/{total:.2f} kimg [{elapsed}{postfix}]")

  @property
  def bar_on(self) -> bool:
    return self._bar is not None and not self._bar.disable

  def write(self, line: str) -> None:
    """A message line: above the bar when it is on, else logged."""
    if not self.enabled:
      return
    if self.bar_on:
      tqdm.tqdm.write(line, file=self._stream)
    else:
      logging.info("%s", line)

  def advance(self, step: int) -> None:
    """Moves the bar to ``step`` (the host's count of dispatched steps; no device sync)."""
    if self.bar_on:
      self._bar.update(step * self._kimg_per_step - self._bar.n)

  def log(self, record: Mapping[str, Any]) -> None:
    """A fetched metrics record (``step``, ``kimg``, ``images_per_s``, ``sec_per_kimg`` and the
    metrics): the status line, the bar's rate and ETA, and every number as a TensorBoard scalar."""
    if not self.enabled:
      return
    self.write(status_line(record))
    if self.bar_on:
      self._bar.set_postfix_str(_progress_text(record, self._total_kimg - record["kimg"]), refresh=False)
    self._scalars("train", record)

  def log_eval(self, step: int, values: Mapping[str, float]) -> None:
    """Evaluation metrics at ``step``: a line and TensorBoard scalars under eval/."""
    if not self.enabled:
      return
    self.write(f"eval at step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
    self._scalars("eval", {"step": step, **values})

  def _scalars(self, prefix: str, record: Mapping[str, Any]) -> None:
    if self._writer is None:
      return
    for name, value in record.items():
      if name != "step" and isinstance(value, (int, float)) and math.isfinite(value):
        self._writer.add_scalar(f"{prefix}/{name}", value, record["step"])
    self._writer.flush()

  def image(self, tag: str, step: int, grid: np.ndarray) -> None:
    """A uint8 HWC image (a sample grid) for TensorBoard at ``step``, once per tag and step."""
    if self._writer is None or self._last_image_step.get(tag) == step:
      return
    self._last_image_step[tag] = step
    self._writer.add_image(tag, grid, step, dataformats="HWC")
    self._writer.flush()

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    if self._writer is not None:
      self._writer.close()
