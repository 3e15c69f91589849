"""The transfer study's results as a markdown table and plots of SWD and the diagnostics against kimg.

    python benchmarks/transfer_study_report.py --outdir runs/transfer_study [--doc docs/transfer_study.md]

Reads ``<outdir>/results.jsonl`` and ``sessions.jsonl`` (written by ``transfer_study.py``) and
writes ``<outdir>/report.md`` and ``<outdir>/swd_vs_kimg.png``. With ``--doc``, the table also
replaces the block between the ``<!-- study-results -->`` and ``<!-- /study-results -->`` lines
of that markdown file, and the plot goes beside it (``<doc name>_swd.png``); ``--block NAME`` fills
the ``<!-- NAME -->`` block instead, its plot ``<doc name>_NAME.png``.

Per arm and target size: the mean ± standard deviation over seeds (ddof 1; one seed: the value
alone) of the final SWD, of each run's lowest SWD on its curve, of the final KID and of the final
diagnostics (diversity ratio, copies, correspondence) when the runs have them; then the seeds
finished (and failed) and the mean wall minutes of a run (launch, compile, training and
evaluations). The plot shows, per target size (columns) and measure (rows: SWD, then each
diagnostic), the mean over seeds at each evaluation with a band of ± one standard deviation. Drawn
with Pillow: matplotlib is not a dependency.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BLOCK = "study-results"  # the default block; --block names another, so one page holds several studies


def markers(block: str = BLOCK) -> tuple[str, str]:
  """The lines that open and close a results block of a markdown file."""
  return f"<!-- {block} -->", f"<!-- /{block} -->"


BEGIN, END = markers()
# The diagnostics' final values in the table and their curves in the plot, when the runs have them:
# (key of the eval record, label). The diversity ratio is the samples' mean pairwise distance over
# the held-out reals'; copies, correspondence and the class share as in gantl_jax.metrics.samples.
DIAGNOSTICS = (("pyramid_diversity_ratio", "diversity ratio"), ("copies", "copies"),
               ("correspondence", "correspondence"), ("class_share", "class share"))
# Distinct colours for up to 10 arms (Tableau 10).
COLOURS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac"]


def read_jsonl(path: str) -> list[dict]:
  """The whole lines of a JSON-lines file ([] when it is missing); a torn last line is skipped."""
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except ValueError:
        pass
  return out


def mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
  """'m ± s' over seeds (ddof 1), 'm' for one value, '' for none."""
  v = np.asarray(values, np.float64) * scale
  if not len(v):
    return ""
  if len(v) == 1:
    return f"{v[0]:.{digits}f}"
  return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def ordered_arms(results: list[dict], arms: Optional[Sequence[str]]) -> list[str]:
  seen = list(dict.fromkeys(r["arm"] for r in results))
  return [a for a in (arms or []) if a in seen] + [a for a in seen if a not in (arms or [])]


def table(results: list[dict], arms: Optional[Sequence[str]] = None) -> str:
  """The markdown table of the finished runs (see the module docstring)."""
  done = [r for r in results if r.get("status") == "done"]
  shots = sorted({r["shots"] for r in results})
  has_kid = any("kid" in r["final"] for r in done)
  diagnostics = [(key, label) for key, label in DIAGNOSTICS if any(key in r["final"] for r in done)]
  header = ["arm"]
  for n in shots:
    header += [f"{n}-shot final SWD", f"{n}-shot lowest SWD"] + ([f"{n}-shot KID x10³"] if has_kid else [])
    header += [f"{n}-shot {label}" for _, label in diagnostics]
  header += ["seeds", "min/run"]
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  for arm in ordered_arms(results, arms):
    row = [arm]
    seeds = set()
    for n in shots:
      runs = [r for r in done if r["arm"] == arm and r["shots"] == n]
      seeds |= {r["seed"] for r in runs}
      row += [mean_std([r["final"]["swd"] for r in runs]),
              mean_std([min(p["swd"] for p in r["curve"]) for r in runs])]
      if has_kid:
        row.append(mean_std([r["final"]["kid"] for r in runs if "kid" in r["final"]], 1e3))
      row += [mean_std([r["final"][key] for r in runs if key in r["final"]], digits=3) for key, _ in diagnostics]
    failed = [r for r in results if r["arm"] == arm and r.get("status") != "done"]
    minutes = [r["seconds"] / 60 for r in done if r["arm"] == arm]
    row.append(f"{len(seeds)}" + (f" ({len(failed)} failed)" if failed else ""))
    row.append(f"{np.mean(minutes):.1f}" if minutes else "")
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def summary(results: list[dict], sessions: list[dict]) -> str:
  """One paragraph: what was run and how long it took."""
  done = [r for r in results if r.get("status") == "done"]
  if not results:
    return "No finished runs yet."
  kimg = sorted({r["kimg"] for r in results})
  o = results[0].get("overrides", {})
  seconds = sum(s.get("seconds", 0.0) for s in sessions)
  text = (f"{len(done)} runs finished ({len(results) - len(done)} failed) at "
          f"{', '.join(f'{k:g}' for k in kimg)} kimg each. SWD x10³ of {o.get('eval.num_fake', '?')} G-EMA "
          f"samples against {o.get('eval.num_real', '?')} held-out images, every "
          f"{o.get('eval.every_kimg', '?')} kimg; final = at the last step, lowest = the minimum of each "
          f"run's curve. Study wall time {duration(seconds)} over {len(sessions)} session(s)")
  if done:
    text += f"; {duration(np.mean([r['seconds'] for r in done]))} per run on average"
  return text + "."


def duration(seconds: float) -> str:
  """Seconds as minutes, or hours from one hour on."""
  return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def curves(results: list[dict], arm: str, shots: int,
           key: str = "swd") -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """(kimg, mean, std) of the ``key`` values over the seeds of one arm and target size, at the
  evaluations all its seeds have (with that value)."""
  runs = [r for r in results if r.get("status") == "done" and r["arm"] == arm and r["shots"] == shots]
  if not runs:
    return None
  steps = sorted(set.intersection(*({p["step"] for p in r["curve"] if key in p} for r in runs)))
  if not steps:
    return None
  values = np.array([[next(p[key] for p in r["curve"] if p["step"] == s) for s in steps] for r in runs])
  kimg = np.array([next(p["kimg"] for p in runs[0]["curve"] if p["step"] == s) for s in steps])
  std = values.std(0, ddof=1) if len(runs) > 1 else np.zeros(len(steps))
  return kimg, values.mean(0), std


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
  span = max(hi - lo, 1e-9)
  step = 10 ** np.floor(np.log10(span / count))
  for mult in (1, 2, 5, 10):
    if span / (step * mult) <= count:
      step *= mult
      break
  first = np.ceil(lo / step) * step
  return [float(t) for t in np.arange(first, hi + step * 1e-6, step)]


def target_name(results: list[dict]) -> str:
  """The target of the runs, as the panels name it: the synthetic domain, or the target folder."""
  o = results[0].get("overrides", {}) if results else {}
  if o.get("data.source", "synthetic") == "synthetic":
    return o.get("data.domain", "anime")
  return os.path.basename(os.path.dirname(os.path.normpath(o.get("data.folder", "target/shots"))))


def plot(results: list[dict], path: str, arms: Optional[Sequence[str]] = None) -> None:
  """Against kimg, one column of panels per target size and one row per measure (SWD, then each
  diagnostic the runs have), one colour per arm (mean ± std over seeds)."""
  done = [r for r in results if r.get("status") == "done"]
  shots = sorted({r["shots"] for r in done})
  arm_list = ordered_arms(done, arms)
  rows = [("swd", "SWD x10^3 (held-out)")] + [
      (key, label) for key, label in DIAGNOSTICS if any(key in p for r in done for p in r["curve"])]
  panel_w, panel_h, margin_l, margin_b, margin_t, legend_w = 480, 360, 64, 48, 36, 170
  row_h = margin_t + panel_h + margin_b
  width, height = margin_l + len(shots) * (panel_w + margin_l) + legend_w, row_h * len(rows)
  image = Image.new("RGB", (width, height), "white")
  font = ImageFont.load_default(size=13)
  draw = ImageDraw.Draw(image)
  if not done:
    draw.text((20, 20), "no finished runs", fill="black", font=font)
    image.save(path)
    return
  for row, (key, label) in enumerate(rows):
    data = {(a, n): curves(done, a, n, key) for a in arm_list for n in shots}
    present = [c for c in data.values() if c is not None]
    if not present:
      continue
    y_lo = min(float((m - s).min()) for _, m, s in present)
    y_hi = max(float((m + s).max()) for _, m, s in present)
    if y_hi - y_lo < 1e-6:  # a flat measure (no copies anywhere): a unit range around it
      y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    y_lo, y_hi = max(0.0, y_lo - 0.05 * (y_hi - y_lo)), y_hi + 0.05 * (y_hi - y_lo)
    x_hi = max(float(k.max()) for k, _, _ in present)
    for p, n in enumerate(shots):
      _panel(image, font, data, arm_list, n, box=(margin_l + p * (panel_w + margin_l), row * row_h + margin_t,
                                                 panel_w, panel_h), x_hi=x_hi, y_range=(y_lo, y_hi),
             title=f"{n}-shot {target_name(done)}: {label} against kimg")
  draw = ImageDraw.Draw(image)
  legend_left = width - legend_w + 10
  for i, arm in enumerate(arm_list):
    y = margin_t + 10 + 20 * i
    draw.line([(legend_left, y), (legend_left + 24, y)], fill=COLOURS[i % len(COLOURS)], width=3)
    draw.text((legend_left + 30, y), arm, fill="black", font=font, anchor="lm")
  image.save(path)


def _panel(image, font, data, arm_list, shots, box, x_hi, y_range, title) -> None:
  """One panel: axes, ticks, title and each arm's mean curve with its ± std band."""
  left, top, panel_w, panel_h = box
  bottom, right = top + panel_h, left + panel_w
  y_lo, y_hi = y_range
  draw = ImageDraw.Draw(image)

  def to_px(x, y):
    return (left + x / x_hi * panel_w, bottom - (y - y_lo) / (y_hi - y_lo) * panel_h)

  for t in _nice_ticks(y_lo, y_hi, 6):
    _, y = to_px(0, t)
    draw.line([(left, y), (right, y)], fill="#e6e6e6")
    draw.text((left - 6, y), f"{t:g}", fill="black", font=font, anchor="rm")
  for t in _nice_ticks(0, x_hi):
    x, _ = to_px(t, y_lo)
    draw.line([(x, top), (x, bottom)], fill="#e6e6e6")
    draw.text((x, bottom + 6), f"{t:g}", fill="black", font=font, anchor="mt")
  draw.rectangle([left, top, right, bottom], outline="black")
  draw.text(((left + right) / 2, top - 8), title, fill="black", font=font, anchor="md")
  draw.text(((left + right) / 2, bottom + 26), "kimg", fill="black", font=font, anchor="mt")
  for i, arm in enumerate(arm_list):
    c = data[(arm, shots)]
    if c is None:
      continue
    kimg, mean, std = c
    colour = COLOURS[i % len(COLOURS)]
    if std.any():
      band = Image.new("RGBA", image.size, (0, 0, 0, 0))
      polygon = [to_px(x, y) for x, y in zip(kimg, mean + std)] + \
                [to_px(x, y) for x, y in zip(kimg[::-1], (mean - std)[::-1])]
      ImageDraw.Draw(band).polygon(polygon, fill=_rgb(colour) + (48,))
      image.paste(band, (0, 0), band)
      draw = ImageDraw.Draw(image)
    points = [to_px(x, y) for x, y in zip(kimg, mean)]
    if len(points) > 1:
      draw.line(points, fill=colour, width=2)
    for x, y in points:
      draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=colour)


def _rgb(colour: str) -> tuple[int, int, int]:
  return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


def select_kimg(results: list[dict], kimg: Optional[float] = None) -> list[dict]:
  """The results of runs of ``kimg`` (default: the length most runs have, the longer on a tie):
  arms are compared at equal kimg only."""
  if kimg is None and results:
    counts = {}
    for r in results:
      counts[r["kimg"]] = counts.get(r["kimg"], 0) + 1
    kimg = max(counts, key=lambda k: (counts[k], k))
  return [r for r in results if r["kimg"] == kimg]


def write_report(outdir: str, arms: Optional[Sequence[str]] = None, doc: Optional[str] = None,
                 kimg: Optional[float] = None, block: str = BLOCK) -> list[str]:
  """Writes report.md and swd_vs_kimg.png into ``outdir`` (and fills ``doc``) from the results of
  runs of ``kimg`` (see `select_kimg`); returns the paths written."""
  results = select_kimg(read_jsonl(os.path.join(outdir, "results.jsonl")), kimg)
  sessions = read_jsonl(os.path.join(outdir, "sessions.jsonl"))
  plot_path = os.path.join(outdir, "swd_vs_kimg.png")
  plot(results, plot_path, arms)
  body = f"{summary(results, sessions)}\n\n{table(results, arms)}\n"
  report_path = os.path.join(outdir, "report.md")
  with open(report_path, "w") as f:
    f.write(f"# Transfer study: {outdir}\n\n{body}\n![SWD against kimg](swd_vs_kimg.png)\n")
  written = [report_path, plot_path]
  if doc:
    begin, end = markers(block)
    doc_plot = os.path.splitext(doc)[0] + ("_swd.png" if block == BLOCK else f"_{block}.png")
    plot(results, doc_plot, arms)
    with open(doc) as f:
      text = f.read()
    if begin not in text or end not in text:
      raise ValueError(f"{doc} has no '{begin}' ... '{end}' block to fill")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    filled = f"{begin}\n{body}\n![SWD and diagnostics against kimg]({os.path.basename(doc_plot)})\n{end}"
    with open(doc, "w") as f:
      f.write(head + filled + tail)
    written += [doc, doc_plot]
  return written


def main(argv: Optional[list[str]] = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--outdir", default="runs/transfer_study", help="the study's --outdir")
  p.add_argument("--doc", default="", help="also fill this markdown file's results block")
  p.add_argument("--kimg", type=float, help="report the runs of this length (default: the most common)")
  p.add_argument("--block", default=BLOCK, help="the results block of --doc to fill: the lines "
                 "'<!-- BLOCK -->' ... '<!-- /BLOCK -->' (default %(default)s)")
  args = p.parse_args(argv)
  if not os.path.exists(os.path.join(args.outdir, "results.jsonl")):
    print(f"error: no results.jsonl in {args.outdir}; run benchmarks/transfer_study.py first", file=sys.stderr)
    return 2
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from benchmarks.transfer_study import ARMS  # pylint: disable=import-outside-toplevel  # the table's row order
  for path in write_report(args.outdir, list(ARMS), args.doc or None, args.kimg, args.block):
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
