"""What a transfer did, in one figure and one table: ``launch.py --mode compare --workdir RUN``.

For a run trained from ``transfer.source``, it draws the same latents through the source G-EMA,
the run's G-EMA and their Toonify layer blend (``blend.py``: the run's blocks up to
``--blend_resolution`` and the source's above), and shows them above a few of the target images:

    source | transferred | blend | target shots     (rows, one column per seed)

written as ``RUN/comparison.png`` (labelled and upscaled so that 32 px samples can be seen). The
table, ``RUN/comparison.json`` and printed, holds SWD x 10^3 against target images of the source
and of the transfer (how far the transfer moved towards the target), the images the run showed D,
and its training wall time. The SWD references are held-out images: those of ``--real_folder`` or
the run's ``eval.real_folder``, else of the synthetic domain (indices from
``data.checks.HELD_OUT_START``, never in a training set); a folder run with neither is measured
against its training images, and the table says so.
"""
from __future__ import annotations

import json
import os
import time
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from gantl_jax import images as image_io
from gantl_jax.cli import blend
from gantl_jax.cli import generate
from gantl_jax.data import checks, pipeline, synthetic
from gantl_jax.errors import ConfigError
from gantl_jax.metrics import correspondence, distances, diversity, memorisation, swd
from gantl_jax.resolutions import block_resolutions
from gantl_jax.training import jsonl
from gantl_jax.training import runs

_LABEL_WIDTH = 128
NUM_DIAGNOSTIC = 1000  # samples of the diversity, copies and correspondence rows (CDC's protocol)
_ROW_LABELS = ("source", "transferred", "blend", "target shots")


def target_images(config, num: int, held_out: bool, real_folder: str = "") -> tuple[np.ndarray, str]:
  """uint8 NHWC target images and what they are: ``num`` training images, or with ``held_out``
  ``num`` images the run never trained on: of ``real_folder`` (else the run's
  ``eval.real_folder``), or of its synthetic domain; fewer than a prepared set holds are chosen
  by ``eval.seed`` as the evaluators choose them (`pipeline.take_images`). A folder run with no
  held-out folder falls back to its training images, and the description says so."""
  d, res, channels = config.data, config.model.resolution, config.model.img_channels
  real_folder = real_folder or (config.eval.real_folder if held_out else "")
  if held_out and real_folder:
    prepared = pipeline.prepare_folder(real_folder, data_config=d, resolution=res,
                                       key="--real_folder", channels=channels, verbose=False)
    images = pipeline.take_images(prepared, num, seed=int(config.eval.seed))
    return images, f"{len(images)} held-out images of {real_folder}"
  if d.source == "synthetic":
    start = checks.HELD_OUT_START if held_out else 0
    count = num if held_out else min(num, int(d.num_images))
    pixels = pipeline.to_channels(
        synthetic.render(d.domain, np.arange(start, start + count), resolution=res, seed=int(d.seed)), channels)
    return pixels, (f"{count} held-out '{d.domain}' images" if held_out else "training images")
  prepared = pipeline.prepare(d, resolution=res, channels=channels, verbose=False)
  images = pipeline.take_images(prepared, num, seed=int(config.eval.seed))
  return images, f"the {len(images)} training images (not held out: give --real_folder)"


def _swd(fakes: np.ndarray, reals: np.ndarray, seed: int = 0) -> float:
  return float(swd.swd_of_images(reals, fakes, seed=seed)["swd_avg"])


def _labelled(grid: np.ndarray, labels: tuple[str, ...], cell: int, scale: int) -> np.ndarray:
  """Upscales a grid of rows of ``cell``-px images by ``scale`` (nearest) and writes each row's
  label in a white margin on its left."""
  big = image_io.to_pil(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
  canvas = Image.new("RGB", (big.width + _LABEL_WIDTH, big.height), "white")
  canvas.paste(big, (_LABEL_WIDTH, 0))
  draw = ImageDraw.Draw(canvas)
  for row, label in enumerate(labels):
    draw.text((6, row * cell * scale + cell * scale // 2 - 6), label, fill="black")
  return np.asarray(canvas)


def _training_seconds(workdir: str, batch_size: int) -> Optional[float]:
  """The run's training wall time from its metrics records: each logged interval's images over
  its images/s (the first interval's time includes compiling the step)."""
  records = jsonl.read(os.path.join(workdir, "metrics.jsonl"))
  if not records:
    return None
  steps = [0] + [r["step"] for r in records]
  return sum((b - a) * batch_size / max(r["images_per_s"], 1e-9) for a, b, r in zip(steps, steps[1:], records))


def compare(workdir: str, blend_resolution: int = 0, seeds: str = "0-7", num_eval: int = 2000,
            outdir: str = "", real_folder: str = "") -> dict:
  """Writes ``comparison.png`` and ``comparison.json`` for the transfer run in ``workdir`` (into
  ``outdir``, default the run directory) and returns the table. ``blend_resolution`` 0 takes
  every block but the last from the run; SWD is measured against ``real_folder`` (default: see
  `target_images`)."""
  t0 = time.time()
  seed_list = generate.parse_seeds(seeds)
  run = runs.load_network(workdir)
  if run.config is None or not run.config.transfer.source:
    raise ConfigError(f"--workdir {workdir}: not a transfer run (its config has no transfer.source); "
                      f"compare needs a run trained from a source")
  config = run.config
  source = runs.load_network(config.transfer.source, flag="transfer.source of the run")
  blend.check_parents(run, source)
  res = config.model.resolution
  blocks = block_resolutions(res)
  blend_resolution = blend_resolution or blocks[-2]  # Toonify: the target's structure, the source's finest texture
  weights = blend.high_weights(res, blend_resolution)
  blended = run._replace(variables=blend.blend_variables(run.variables, source.variables, weights))

  rows = [generate.seed_images(net, seed_list) for net in (source, run, blended)]
  shots, _ = target_images(config, len(seed_list), held_out=False)
  shots = np.concatenate([shots, np.full((len(seed_list) - len(shots),) + shots.shape[1:], 255, np.uint8)])
  grid = image_io.make_grid(np.concatenate(rows + [shots]), len(seed_list))
  labels = _ROW_LABELS[:2] + (f"blend (b4-b{blend_resolution})",) + _ROW_LABELS[3:]
  out_dir = os.path.abspath(os.path.expanduser(outdir or run.home))
  os.makedirs(out_dir, exist_ok=True)
  scale = max(1, 128 // res)
  image_io.save_png(_labelled(grid, labels, res, scale), os.path.join(out_dir, "comparison.png"))

  eval_seeds = list(range(num_eval))
  reals, reals_are = target_images(config, num_eval, held_out=True, real_folder=real_folder)
  held_out = bool(real_folder or config.eval.real_folder or config.data.source == "synthetic")
  source_samples, run_samples = (generate.seed_images(net, eval_seeds) for net in (source, run))
  table = dict(
      swd_source_vs_target=_swd(source_samples, reals),
      swd_transfer_vs_target=_swd(run_samples, reals),
      swd_reference=f"SWD x 10^3 (mean of levels), {num_eval} samples vs {reals_are}",
      **_diagnostics(config, source_samples[:NUM_DIAGNOSTIC], run_samples[:NUM_DIAGNOSTIC],
                     reals[:NUM_DIAGNOSTIC] if held_out else None),
      kimg=run.step * config.train.batch_size / 1000,
      training_seconds=_training_seconds(run.home, config.train.batch_size),
      source=config.transfer.source, step=run.step, blend_resolution=blend_resolution,
      compare_seconds=round(time.time() - t0, 1))
  with open(os.path.join(out_dir, "comparison.json"), "w") as f:
    json.dump(table, f, indent=1)
  print(format_table(table))
  print(f"wrote comparison.png (rows: {', '.join(labels)}) and comparison.json to {out_dir}")
  return table


def _diagnostics(config, source_samples: np.ndarray, run_samples: np.ndarray,
                 held_out: Optional[np.ndarray]) -> dict:
  """Diversity, copies and correspondence of the transfer (pyramid distance; see
  `metrics.samples`): copies and the diversity ratio need held-out reals."""
  distance = distances.pyramid_distance()
  train, _ = target_images(config, 1 << 20, held_out=False)
  embedded = distances.embed_sets(distance, samples=run_samples, train=train, heldout=held_out)
  out = diversity.diversity_of_embeddings(distance, embedded)
  out.update(correspondence.correspondence(distance, source_samples, run_samples))
  if held_out is not None:
    out.update(memorisation.memorisation_of_embeddings(distance, embedded))
  keys = ("pyramid_intra_cluster", "pyramid_diversity_ratio", "pyramid_copies", "pyramid_correspondence")
  return {f"transfer_{k.removeprefix('pyramid_')}": out[k] for k in keys if k in out}


def _optional(value: Optional[float]) -> str:
  return "n/a (no held-out images)" if value is None else f"{value:.3f}"


def format_table(table: dict) -> str:
  """The comparison as a small markdown table."""
  secs = table.get("training_seconds")
  rows = [("SWD x10^3, source vs target", f"{table['swd_source_vs_target']:.2f}"),
          ("SWD x10^3, transfer vs target", f"{table['swd_transfer_vs_target']:.2f}"),
          ("diversity (intra-cluster, pyramid)", f"{table['transfer_intra_cluster']:.4f}"),
          ("diversity ratio to held-out reals", _optional(table.get("transfer_diversity_ratio"))),
          ("copies (nearer a shot than any held-out real)", _optional(table.get("transfer_copies"))),
          ("correspondence with the source (Spearman)", f"{table['transfer_correspondence']:.3f}"),
          ("images shown (kimg)", f"{table['kimg']:.1f}"),
          ("training wall time", f"{secs / 60:.1f} min" if secs else "n/a")]
  lines = ["| | |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
  return "\n".join(lines) + f"\n\n{table['swd_reference']}"
