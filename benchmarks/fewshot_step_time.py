"""Train-step time of each few-shot method relative to fine-tuning all layers, measured by
interleaving the methods so that a shared machine's load falls on all of them alike.

    python benchmarks/fewshot_step_time.py [--arms finetune,freezed,...] [--rounds 3] [--steps 24]
        [--outdir runs/fewshot_step_time]

Each arm of the transfer study (`benchmarks/transfer_study.py`: its config file and overrides, the
10-shot anime target, seed 0; the step does not depend on the number of shots) trains in its own
workdir. Round r launches every arm in turn for ``--steps`` more steps, resuming its workdir (the
run length grows with the round), with ``train.log_every=8``, no evaluation and no samples. The
loop logs the seconds per kimg of each 8 steps; the first interval of every launch (it holds the
first step after the start) is left out. Launches read their compiled programs from the persistent
compilation cache, so compiling is not timed, and a transfer study run before makes the first
round fast too.

Prints one JSON line per arm and a markdown table: the median s/kimg over the kept intervals, and
the median over rounds of the arm's median s/kimg divided by ``finetune``'s in the same round.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import transfer_study as study  # noqa: E402
from gantl_jax.training import jsonl  # noqa: E402

LOG_EVERY = 8


def arm_overrides(arm: str, total_steps: int, batch_size: int) -> dict:
  """The study's overrides of ``arm`` (10 shots, seed 0) for a run of ``total_steps`` steps, with
  fine-grained timing and nothing else in the loop."""
  args = types.SimpleNamespace(eval_every_kimg=1.0, kimg=0.0, num_fake=0, num_real=0, source=None,
                               overrides={}, target="anime", metrics="")
  o = study.study_overrides(arm, 10, 0, args, batch_size)
  # Half an image short of the steps, so that num_steps' ceil gives exactly total_steps.
  o.update({"train.total_kimg": (total_steps * batch_size - 0.5) / 1000, "train.log_every": LOG_EVERY,
            "eval.every_kimg": 0.0, "eval.metrics": "",
            "checkpoint.every_steps": 1_000_000, "checkpoint.max_to_keep": 1})
  for key in ("eval.num_fake", "eval.num_real", "eval.num_diagnostic"):
    o.pop(key)
  return o


def launch_intervals(workdir: str, first_step: int, last_step: int) -> list[float]:
  """The s/kimg of the logged intervals of the launch that ran steps first_step+1..last_step,
  without its first interval."""
  records = [r for r in jsonl.read(os.path.join(workdir, "metrics.jsonl")) if first_step < r["step"] <= last_step]
  return [r["sec_per_kimg"] for r in records[1:]]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--arms", default=",".join(study.ARMS), help=f"comma-separated arms of {', '.join(study.ARMS)} "
                 "(default: all; finetune, the reference, is always timed)")
  p.add_argument("--rounds", type=int, default=3, help="launches per arm, interleaved (default 3)")
  p.add_argument("--steps", type=int, default=24, help=f"steps per launch, a multiple of {LOG_EVERY} (default 24)")
  p.add_argument("--config", default="configs/demo_anime.py", help="config of the arms that name none")
  p.add_argument("--outdir", default="runs/fewshot_step_time", help="the arms' workdirs and logs")
  args = p.parse_args(argv)
  arms = [a for a in args.arms.split(",") if a]
  unknown = [a for a in arms if a not in study.ARMS]
  if unknown:
    p.error(f"--arms: unknown {unknown}; choose from {', '.join(study.ARMS)}")
  if args.steps < 2 * LOG_EVERY or args.steps % LOG_EVERY:
    p.error(f"--steps must be a multiple of {LOG_EVERY} and at least {2 * LOG_EVERY}, got {args.steps}")
  if "finetune" not in arms:
    arms.insert(0, "finetune")
  os.makedirs(os.path.join(args.outdir, "logs"), exist_ok=True)
  config_path = study._path(args.config)
  paths = {arm: study._path(study.ARMS[arm][0]) if study.ARMS[arm][0] else config_path for arm in arms}
  batch_sizes = {arm: study.load_config(path).train.batch_size for arm, path in paths.items()}
  per_round: dict[str, list[list[float]]] = {arm: [] for arm in arms}
  with study.Launcher(study.child_env()) as launcher:
    for r in range(args.rounds):
      for arm in arms:
        path = paths[arm]
        first, last = r * args.steps, (r + 1) * args.steps
        overrides = arm_overrides(arm, last, batch_sizes[arm])
        workdir = os.path.abspath(os.path.join(args.outdir, arm))
        log_path = os.path.join(args.outdir, "logs", f"{arm}.log")
        rc = launcher.run(["--config", path, "--workdir", workdir, *study.override_flags(overrides)], log_path)
        if launcher.stop_requested:
          return 1
        if rc != 0:
          print(f"error: {arm} failed: {study.last_error(log_path)} (log {log_path})", file=sys.stderr)
          return 1
        per_round[arm].append(launch_intervals(workdir, first, last))
        print(f"round {r + 1}/{args.rounds} {arm}: s/kimg {per_round[arm][-1]}", file=sys.stderr, flush=True)

  rows = []
  for arm in arms:
    ratios = [statistics.median(a) / statistics.median(f) for a, f in zip(per_round[arm], per_round["finetune"])]
    record = dict(arm=arm, sec_per_kimg=round(statistics.median(x for xs in per_round[arm] for x in xs), 2),
                  ratio_to_finetune=round(statistics.median(ratios), 3),
                  ratio_per_round=[round(x, 3) for x in ratios], rounds=args.rounds, steps=args.steps,
                  load_avg_1m=round(os.getloadavg()[0], 2))
    print(json.dumps(record), flush=True)
    rows.append(record)
  print("\n| arm | s/kimg | step time vs finetune (per round) |\n|---|---|---|")
  for row in rows:
    print(f"| {row['arm']} | {row['sec_per_kimg']} | {row['ratio_to_finetune']:.2f} "
          f"({', '.join(f'{x:.2f}' for x in row['ratio_per_round'])}) |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
