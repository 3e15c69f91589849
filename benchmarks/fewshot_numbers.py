"""Per-method numbers of a transfer study's runs: speed relative to fine-tuning, when D's
real/fake gap saturates, and SWD.

    python benchmarks/fewshot_numbers.py --outdir runs/transfer_study

For each finished run (status 'done' in ``OUTDIR/results.jsonl``; its directory
``runs/<arm>-n<shots>-s<seed>``) it reads metrics.jsonl and eval.jsonl and prints one markdown row
per (arm, shots), over the seeds found:

* ``s/kimg vs finetune``: the median seconds per kimg of the logged intervals (the first one,
  which includes compiling, left out), divided by the ``finetune`` arm's on the same target.
  Timings taken while the machine was shared are only rough ratios.
* ``D gap saturates at kimg``: D's gap is mean real logit - mean fake logit of each logged
  interval; smoothed over 3 intervals, it "saturates" at the first kimg where it reaches 90 % of
  its largest value in the run (D has then separated the shots from the fakes as far as it will).
* ``final SWD`` and ``lowest SWD``: from eval.jsonl (SWD x10^3 against the held-out images).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gantl_jax.training import jsonl  # noqa: E402

_RUN = re.compile(r"^(?P<arm>.+)-n(?P<shots>\d+)-s(?P<seed>\d+)$")


def run_numbers(workdir: str) -> dict | None:
  """The numbers of one finished run, or None when it has no metrics yet."""
  metrics = jsonl.read(os.path.join(workdir, "metrics.jsonl"))
  evals = jsonl.read(os.path.join(workdir, "eval.jsonl"))
  if len(metrics) < 2 or not evals:
    return None
  gaps = [m["real_logits"] - m["fake_logits"] for m in metrics]
  smooth = [statistics.fmean(gaps[max(0, i - 2):i + 1]) for i in range(len(gaps))]
  top = max(smooth)
  saturated = next(m["kimg"] for m, g in zip(metrics, smooth) if g >= 0.9 * top)
  return dict(sec_per_kimg=statistics.median(m["sec_per_kimg"] for m in metrics[1:]),
              gap_kimg=saturated, final_gap=gaps[-1],
              final_swd=evals[-1]["swd"], lowest_swd=min(e["swd"] for e in evals))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--outdir", default="runs/transfer_study", help="the transfer study's --outdir")
  args = parser.parse_args()
  done = {os.path.basename(r["workdir"]) for r in jsonl.read(os.path.join(args.outdir, "results.jsonl"))
          if r.get("status") == "done"}  # a run still going has a partial curve
  found = collections.defaultdict(list)
  for name in sorted(done):
    m = _RUN.match(name)
    numbers = run_numbers(os.path.join(args.outdir, "runs", name)) if m else None
    if numbers:
      found[(m["arm"], int(m["shots"]))].append(numbers)
  mean = lambda rows, k: statistics.fmean(r[k] for r in rows)
  print("| arm | shots | seeds | s/kimg | s/kimg vs finetune | D gap saturates at kimg | final D gap | final SWD | lowest SWD |")
  print("|---|---|---|---|---|---|---|---|---|")
  for (arm, shots), rows in sorted(found.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    base = found.get(("finetune", shots))
    ratio = f"{mean(rows, 'sec_per_kimg') / mean(base, 'sec_per_kimg'):.2f}" if base else "n/a"
    print(f"| {arm} | {shots} | {len(rows)} | {mean(rows, 'sec_per_kimg'):.1f} | {ratio} | "
          f"{mean(rows, 'gap_kimg'):.1f} | {mean(rows, 'final_gap'):.2f} | {mean(rows, 'final_swd'):.2f} | "
          f"{mean(rows, 'lowest_swd'):.2f} |")


if __name__ == "__main__":
  main()
