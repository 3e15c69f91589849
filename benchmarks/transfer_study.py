"""The transfer study: few-shot transfer methods against each other at equal kimg, measured here.

    python benchmarks/transfer_study.py                  # the grid: 8 arms x 10 / 100 shots x 3 seeds
    python benchmarks/transfer_study.py --quick          # a smoke run: 2 arms, 1 seed, 0.256 kimg
    python benchmarks/transfer_study.py --arms freezed,freezed_ada --shots 10 --seeds 0 --kimg 4
    python benchmarks/transfer_study.py --config configs/twemoji_faces.py --target targets/twemoji_faces \
        --shots 10 --num_real 108 --outdir runs/study_twemoji       # a real target folder
    python benchmarks/transfer_study_report.py --outdir runs/transfer_study --doc docs/transfer_study.md

Each run is an ordinary training launch, ``launch.py --config configs/demo_anime.py`` (or the
project's preset of the arm's method, e.g. ``configs/fewshot_cdc.py``) with the overrides of its
arm (`ARMS`) and of the study (`study_overrides`), in its own workdir: the loop does the
training, the evaluation and the resuming. The target (``--target``) is the synthetic ``anime``
domain with ``data.num_images`` = 10 or 100 and ``data.seed`` 0: image i of a synthetic domain depends
only on (data seed, i), so the 10 shots are the first 10 of the 100. Or it is a folder with
``shots/`` and ``held_out/`` (as ``targets/twemoji_faces``): each run trains on ``data.n_shot`` of
the shots and is measured against the held-out folder (``eval.real_folder``). The source is the config's
``transfer.source`` (the demo's shipped ``photo`` model, ``pretrained/photo32``) or ``--source``. Every
``--eval_every_kimg`` (and at the end) the loop measures ``--metrics`` on ``--num_fake`` G-EMA
samples against ``--num_real`` held-out images (for anime, ``eval.heldout``: images 1,000,000 on of
the data seed, which no training set holds; one set for both target sizes, prepared once and its
SWD descriptors cached beside it): SWD and the few-shot diagnostics (diversity and its ratio to
the held-out reals', copies, correspondence with the source; ``gantl_jax/metrics/samples.py``),
which draw the curves against kimg. With ``--inception_weights``,
each finished run's last G-EMA is also measured offline (``launch.py --mode eval``) for KID and
FID on ``--kid_num_fake`` samples against the same held-out images (Inception features of the
reals cached once).

Under ``--outdir``: ``runs/<arm>-n<shots>-s<seed>/`` (the workdirs), ``logs/<run>.log`` (each
launch's output), ``results.jsonl`` (one record per finished run: curve, final values, seconds),
``sessions.jsonl`` (one record per invocation of this script: wall time, runs done, skipped,
failed), and at the end ``report.md`` and ``swd_vs_kimg.png`` (`transfer_study_report`).

Unattended and resumable: a run that has a record in ``results.jsonl`` is skipped; an interrupted
one is launched again and resumes from its checkpoint (written at every evaluation). Ctrl-C or
SIGTERM makes the running launch save a checkpoint and stop, and the study stops after it. A run
that fails (diverges) is recorded as failed and the study goes on; a launch refused for its
config (status 2) stops the study, since every run would be refused alike. Every run's config is
built and checked before the first launch.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import signal
import subprocess
import sys
import time
from typing import Any, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import ml_collections  # noqa: E402

from benchmarks import transfer_study_report as report  # noqa: E402
from gantl_jax import config as config_lib  # noqa: E402
from gantl_jax import errors  # noqa: E402
from gantl_jax.training import jsonl  # noqa: E402

# arm -> (its config file, or None for --config, configs/demo_anime.py: FreezeD + ADA, d_blocks=2;
# the overrides on top of it). The few-shot methods' arms are the project's presets for them.
ARMS: dict[str, tuple[Optional[str], dict[str, Any]]] = {
    "scratch": (None, {"transfer.source": "", "freeze.preset": "none", "augment.kind": "none"}),
    "finetune": (None, {"freeze.preset": "none", "augment.kind": "none"}),
    "freezed": (None, {"freeze.preset": "freezed", "augment.kind": "none"}),
    "freezed_ada": (None, {"freeze.preset": "freezed", "augment.kind": "ada"}),
    "freezed_diffaug": (None, {"freeze.preset": "freezed", "augment.kind": "diffaug"}),
    "freezed_cdc": ("configs/fewshot_cdc.py", {"freeze.preset": "freezed", "augment.kind": "none"}),
    "adapters": ("configs/fewshot_adapter.py", {}),
    "affine": (None, {"freeze.preset": "affine", "augment.kind": "none"}),
    "ewc": ("configs/fewshot_ewc.py", {}),  # not in the default grid: --arms ...,ewc
    # _r1: R1 at gamma 1 instead of the auto value (0.0064 at 32 px and batch 32), a smoother D.
    # _nf: G's noise strengths frozen at the source's. Fine-tuned on 10 shots, G raises them (b32
    # conv0 70-fold in 4 kimg), which draws the per-pixel speckle seen as checkerboard artifacts.
    "freezed_r1": (None, {"freeze.preset": "freezed", "augment.kind": "none", "train.r1_gamma": 1.0}),
    "freezed_nf": (None, {"freeze.preset": "freezed,noise", "augment.kind": "none"}),
    # _noflip: no random x-flips of the training images (data.xflip). A target whose images all
    # face one way (every Fashion-MNIST shoe points left) is otherwise learnt facing both ways.
    "freezed_nf_noflip": (None, {"freeze.preset": "freezed,noise", "augment.kind": "none", "data.xflip": False}),
    "freezed_cdc_r1": ("configs/fewshot_cdc.py", {"freeze.preset": "freezed", "augment.kind": "none",
                                                  "train.r1_gamma": 1.0}),
    "freezed_cdc_r1_nf": ("configs/fewshot_cdc.py", {"freeze.preset": "freezed,noise", "augment.kind": "none",
                                                     "train.r1_gamma": 1.0}),
}
DEFAULT_ARMS = [a for a in ARMS if a != "ewc" and not a.endswith(("_r1", "_nf", "_noflip"))]
DATA_SEED = 0  # the training shots: images 0..shots-1 of this seed; held out: 1,000,000 on

# The evaluators of every run (the scratch arm has no source, so no correspondence).
METRICS = "swd,diversity,copies,correspondence"
FULL = dict(config="configs/demo_anime.py", arms=",".join(DEFAULT_ARMS), shots="10,100", seeds="0,1,2", kimg=6.0,
            eval_every_kimg=1.0, num_fake=1000, num_real=5000, kid_num_fake=1000, outdir="runs/transfer_study",
            target="anime", metrics=METRICS)
QUICK = dict(FULL, arms="scratch,finetune", shots="10", seeds="0", kimg=0.256, eval_every_kimg=0.128,
             num_fake=256, num_real=512, kid_num_fake=256, outdir="runs/transfer_study_quick")


# ---------------------------------------------------------------------------
# The grid and each run's config.


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help=f"smoke run; defaults {_defaults_text(QUICK)}")
  p.add_argument("--config", help=f"run config of the arms that name none (default {FULL['config']})")
  p.add_argument("--outdir", help="where the runs, logs and results go (default runs/transfer_study, "
                 "runs/transfer_study_quick with --quick)")
  p.add_argument("--arms", help=f"comma-separated arms of {', '.join(ARMS)} (default: all but ewc and the _r1 / _nf arms)")
  p.add_argument("--shots", help="comma-separated target set sizes (default 10,100)")
  p.add_argument("--seeds", help="comma-separated training seeds (default 0,1,2)")
  p.add_argument("--kimg", type=float, help="thousands of images shown to D per run (default 6)")
  p.add_argument("--eval_every_kimg", type=float, help="kimg between SWD evaluations (default 1)")
  p.add_argument("--num_fake", type=int, help="G-EMA samples per SWD evaluation (default 1000)")
  p.add_argument("--num_real", type=int, help="held-out real images (default 5000)")
  p.add_argument("--source", help="transfer source (default: the config's transfer.source)")
  p.add_argument("--target", help="'anime' (the synthetic domain, default) or a folder holding shots/ "
                 "(the training images; --shots takes the first n of them by data.seed) and held_out/ "
                 "(the evaluation images), e.g. targets/twemoji_faces")
  p.add_argument("--metrics", help=f"evaluators of every evaluation (default {METRICS})")
  p.add_argument("--inception_weights", default="", help="FID Inception weights: adds KID/FID of "
                 "each run's final G-EMA (pytorch-fid's .pth or NVIDIA's .pt)")
  p.add_argument("--kid_num_fake", type=int, help="samples for the final KID/FID (default 1000)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="a config override for every run (repeatable), e.g. --set data.data_dir=/data")
  p.add_argument("--dry_run", action="store_true", help="check every run's config, print the launches, stop")
  args = p.parse_args(argv)
  for key, value in (QUICK if args.quick else FULL).items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  args.arms = _split(args.arms, str)
  unknown = [a for a in args.arms if a not in ARMS]
  if unknown:
    p.error(f"--arms: unknown {unknown}; choose from {', '.join(ARMS)}")
  args.shots, args.seeds = _split(args.shots, int), _split(args.seeds, int)
  # Paths as given here (relative to this directory, else to the repository: the launches run there).
  args.config_path = _path(args.config)
  if args.target != "anime":
    args.target = _path(args.target)
    for sub in ("shots", "held_out"):
      if not os.path.isdir(os.path.join(args.target, sub)):
        p.error(f"--target {args.target}: no {sub}/ folder in it; give 'anime' or a folder with shots/ and held_out/")
  if args.source and os.path.exists(args.source):
    args.source = os.path.abspath(args.source)
  if not (args.kimg > 0 and args.eval_every_kimg > 0 and args.num_fake > 0 and args.num_real > 0):
    p.error("--kimg, --eval_every_kimg, --num_fake and --num_real must be positive")
  return args


def _defaults_text(defaults: dict) -> str:
  return ", ".join(f"--{k} {v}" for k, v in defaults.items() if k != "config")


def _path(path: str) -> str:
  """A config file as given (relative to here), else relative to the repository, absolute."""
  return os.path.abspath(path if os.path.exists(path) else os.path.join(REPO, path))


def _split(text: str, kind) -> list:
  return [kind(x.strip()) for x in str(text).split(",") if x.strip()]


def run_name(arm: str, shots: int, seed: int) -> str:
  return f"{arm}-n{shots}-s{seed}"


def load_config(path: str) -> ml_collections.ConfigDict:
  """``get_config()`` of a config file."""
  spec = importlib.util.spec_from_file_location("study_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def parse_set(config: ml_collections.ConfigDict, items: list[str]) -> dict[str, Any]:
  """``--set KEY=VALUE`` items as typed overrides (the key's type in ``config``)."""
  out = {}
  for item in items:
    key, sep, text = item.partition("=")
    if not sep:
      raise errors.ConfigError(f"--set {item}: expected KEY=VALUE")
    *parents, leaf = key.split(".")
    node = config
    try:
      for part in parents:
        node = node[part]
      kind = node.get_type(leaf)
    except (KeyError, AttributeError):
      raise errors.ConfigError(f"--set {item}: the config has no key {key}") from None
    if kind is bool:
      out[key] = text.lower() in ("1", "true", "yes")
    elif kind in (int, float):
      out[key] = kind(text)
    else:
      out[key] = text
  return out


def study_overrides(arm: str, shots: int, seed: int, args, batch_size: int) -> dict[str, Any]:
  """Every override of one run, in the order applied: the study's, --source, the arm's, --set."""
  steps_per_eval = max(1, round(args.eval_every_kimg * 1000 / batch_size))
  metrics = [m for m in _split(args.metrics, str) if not (m == "correspondence" and _has_no_source(arm))]
  o: dict[str, Any] = {"seed": seed, **target_overrides(args.target, shots),
      "train.total_kimg": args.kimg, "train.sample_every": 0,
      "eval.every_kimg": args.eval_every_kimg, "eval.metrics": ",".join(metrics), "eval.num_fake": args.num_fake,
      "eval.num_real": args.num_real, "eval.num_diagnostic": args.num_fake,
      # A checkpoint at every evaluation: an interrupted run loses at most one interval.
      "checkpoint.every_steps": steps_per_eval, "checkpoint.max_to_keep": 1, "checkpoint.keep_best": "",
  }
  if args.source is not None:
    o["transfer.source"] = args.source
  o.update(ARMS[arm][1])
  o.update(args.overrides)
  return o


def target_overrides(target: str, shots: int) -> dict[str, Any]:
  """The data and held-out overrides of a target: the synthetic anime domain (``shots`` images of
  data seed `DATA_SEED`, held out: images 1,000,000 on), or a target folder's ``shots/`` (its first
  ``shots`` images in data.seed's order) against its ``held_out/``."""
  if target == "anime":
    return {"data.source": "synthetic", "data.domain": "anime", "data.num_images": shots,
            "data.seed": DATA_SEED, "eval.heldout": True, "eval.real_folder": ""}
  return {"data.source": "folder", "data.folder": os.path.join(target, "shots"), "data.n_shot": shots,
          "data.seed": DATA_SEED, "eval.heldout": False, "eval.real_folder": os.path.join(target, "held_out")}


def _has_no_source(arm: str) -> bool:
  return ARMS[arm][1].get("transfer.source") == ""


def build_config(base: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """``base`` with ``overrides``, resolved and checked as a launch would (ConfigError otherwise)."""
  config = ml_collections.ConfigDict(base.to_dict())
  for key, value in overrides.items():
    try:
      config.update_from_flattened_dict({key: value})
    except (KeyError, AttributeError, TypeError) as e:
      raise errors.ConfigError(f"override {key}={value!r}: {e}") from None
  return config_lib.resolve(config)


def override_flags(overrides: dict[str, Any]) -> list[str]:
  """``--config.KEY=VALUE`` flags of launch.py."""
  def text(v):
    return str(v).lower() if isinstance(v, bool) else str(v)
  return [f"--config.{k}={text(v)}" for k, v in overrides.items()]


def plan(args) -> list[dict]:
  """Every run of the grid (shots, then arm, then seed) with its overrides and launch flags;
  each config is built and checked here, before anything is launched."""
  paths = {arm: _path(ARMS[arm][0]) if ARMS[arm][0] else args.config_path for arm in args.arms}
  bases = {path: load_config(path) for path in set(paths.values())}
  args.overrides = parse_set(bases[args.config_path] if args.config_path in bases else load_config(args.config_path),
                             args.set)
  runs = []
  for shots in args.shots:
    for arm in args.arms:
      base = bases[paths[arm]]
      for seed in args.seeds:
        overrides = study_overrides(arm, shots, seed, args, base.train.batch_size)
        try:
          config = build_config(base, overrides)
        except (errors.ConfigError, ValueError) as e:
          raise errors.ConfigError(f"arm {arm} ({shots} shots, seed {seed}): {e}") from None
        name = run_name(arm, shots, seed)
        runs.append(dict(name=name, arm=arm, shots=shots, seed=seed, kimg=args.kimg, config=paths[arm],
                         total_steps=config_lib.num_steps(config), overrides=overrides,
                         workdir=os.path.join(args.outdir, "runs", name)))
  return runs


# ---------------------------------------------------------------------------
# Files.


# What a run's curve keeps of each evaluation: where, SWD, and the headline values and pyramid-
# distance details of the diagnostics (diversity, its ratio to held-out reals, copies, correspondence,
# the class share and the share of each label).
CURVE_KEYS = ("kimg", "step", "swd", "diversity", "copies", "correspondence", "pyramid_", "class_share")


def result_key(record: dict) -> tuple:
  return record["arm"], record["shots"], record["seed"], record["kimg"]


def collect(run: dict) -> Optional[dict]:
  """The result of a run from its workdir, or None while it has not reached its last step.

  The curve is the loop's evaluations (one per step: a step evaluated twice, as a finished run
  launched again re-evaluates its last step, keeps the later value); KID / FID come from the
  offline evaluation of the last step.
  """
  evals = report.read_jsonl(os.path.join(run["workdir"], "eval.jsonl"))
  by_step = {r["step"]: r for r in evals if not r.get("offline") and "swd" in r}
  final = by_step.get(run["total_steps"])
  if final is None:
    return None
  curve = [{k: v for k, v in by_step[s].items() if k.startswith(CURVE_KEYS)} for s in sorted(by_step)]
  values = {k: v for k, v in final.items() if k.startswith(CURVE_KEYS[2:])}
  for r in evals:
    if r.get("offline") and r["step"] == run["total_steps"]:
      values.update({k: r[k] for k in ("kid", "fid") if k in r})
  speeds = [r["sec_per_kimg"] for r in report.read_jsonl(os.path.join(run["workdir"], "metrics.jsonl"))[1:]
            if r.get("sec_per_kimg")]
  return dict(final=values, curve=curve,
              sec_per_kimg=round(sorted(speeds)[len(speeds) // 2], 2) if speeds else None,
              eval_seconds=round(sum(by_step[s].get("seconds", 0.0) for s in by_step), 1))


# ---------------------------------------------------------------------------
# Launching.


class Launcher:
  """Runs launch.py in a child process of its own session, its output appended to a log.

  The first Ctrl-C or SIGTERM to the study is passed on to the running launch as SIGTERM (it
  saves a checkpoint and exits) and stops the study after it; a second Ctrl-C is passed on as
  SIGINT, which stops the launch at once, as a second Ctrl-C does to a launch in a terminal.
  """

  def __init__(self, env: dict[str, str]):
    self.env = env
    self.child: Optional[subprocess.Popen] = None
    self.stop_requested = False
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGINT, signal.SIGTERM):
      self._previous[sig] = signal.signal(sig, self._on_signal)
    return self

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)

  def _on_signal(self, signum, frame):
    again = self.stop_requested
    self.stop_requested = True
    if self.child is not None and self.child.poll() is None:
      self.child.send_signal(signal.SIGINT if again and signum == signal.SIGINT else signal.SIGTERM)
    print(f"{signal.Signals(signum).name}: stopping after the running launch has saved its checkpoint",
          file=sys.stderr, flush=True)

  def run(self, argv: list[str], log_path: str) -> int:
    """Exit status of ``python launch.py argv`` (its output appended to ``log_path``)."""
    with open(log_path, "a") as log:
      log.write(f"\n# {datetime.datetime.now().isoformat(timespec='seconds')}: launch.py {' '.join(argv)}\n")
      log.flush()
      # Its own session: a Ctrl-C in the terminal reaches only the study, which passes it on once.
      self.child = subprocess.Popen([sys.executable, os.path.join(REPO, "launch.py"), *argv],
                                    stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO,
                                    start_new_session=True)
      try:
        return self.child.wait()
      finally:
        self.child = None


def last_error(log_path: str) -> str:
  """The last 'error: ...' line of a launch log (or its last line)."""
  with open(log_path, errors="replace") as f:
    lines = [line.strip() for line in f if line.strip()]
  errors = [line for line in lines if line.startswith("error:")]
  return (errors or lines or ["(no output)"])[-1]


def child_env() -> dict[str, str]:
  """The launches' environment: this one, with the repository importable. (Launches share the
  persistent compilation cache of ``train.compile_cache_dir``, so the runs of one arm compile
  their programs once.)"""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH", "")]))
  return env


def run_one(run: dict, args, launcher: Launcher) -> tuple[str, Optional[dict]]:
  """Trains (or resumes) one run, then its offline KID / FID; returns (status, result record):
  'done', 'failed' (the launch failed: diverged, say) or 'stopped' (by a signal; no record)."""
  log_path = os.path.join(args.outdir, "logs", f"{run['name']}.log")
  workdir = os.path.abspath(run["workdir"])
  t0 = time.time()
  resumed = os.path.isdir(os.path.join(workdir, "checkpoints"))
  rc = launcher.run(["--config", run["config"], "--workdir", workdir, *override_flags(run["overrides"])],
                    log_path)
  if rc != 0 and not launcher.stop_requested:
    if rc == 2:  # refused at start: a problem of the setup, which every other run would share
      raise errors.ConfigError(f"{run['name']} was refused: {last_error(log_path)} (log {log_path})")
    return "failed", _record(run, args, t0, resumed, status="failed", error=last_error(log_path))
  if collect(run) is None:  # stopped before its last step
    return "stopped", None
  if args.inception_weights and not _has_final_kid(run):
    rc = launcher.run(["--mode", "eval", "--workdir", workdir, "--metrics", "kid,fid", "--num_fake",
                       str(args.kid_num_fake), "--inception_weights", args.inception_weights], log_path)
    if launcher.stop_requested:
      return "stopped", None
    if rc != 0:
      raise errors.ConfigError(f"KID/FID of {run['name']} failed: {last_error(log_path)} (log {log_path})")
  return "done", _record(run, args, t0, resumed, status="done", **collect(run))


def _has_final_kid(run: dict) -> bool:
  return any(r.get("offline") and r["step"] == run["total_steps"] and "kid" in r
             for r in report.read_jsonl(os.path.join(run["workdir"], "eval.jsonl")))


def _record(run: dict, args, t0: float, resumed: bool, **fields) -> dict:
  return dict(arm=run["arm"], shots=run["shots"], seed=run["seed"], kimg=run["kimg"],
              workdir=os.path.relpath(run["workdir"], args.outdir), overrides=run["overrides"],
              seconds=round(time.time() - t0, 1), resumed=resumed, **fields)


def main(argv: Optional[list[str]] = None) -> int:
  args = parse_args(argv)
  try:
    runs = plan(args)
  except (errors.ConfigError, ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  results_path = os.path.join(args.outdir, "results.jsonl")
  if args.dry_run:
    for run in runs:
      print(f"{run['name']}: launch.py --config {os.path.relpath(run['config'], REPO)} --workdir {run['workdir']} "
            f"{' '.join(override_flags(run['overrides']))}")
    return 0
  os.makedirs(os.path.join(args.outdir, "logs"), exist_ok=True)
  finished = {result_key(r) for r in report.read_jsonl(results_path)}
  todo = [r for r in runs if result_key(r) not in finished]
  print(f"transfer study in {args.outdir}: {len(runs)} runs ({len(args.arms)} arms x {len(args.shots)} "
        f"targets x {len(args.seeds)} seeds, {args.kimg:g} kimg each), {len(runs) - len(todo)} finished "
        f"before, {len(todo)} to run", flush=True)
  t_start = time.time()
  done, failed, outcome = 0, 0, "complete"
  try:
    with Launcher(child_env()) as launcher:
      for i, run in enumerate(todo):
        if launcher.stop_requested:
          outcome = "stopped"
          break
        t_run = time.time()
        status, record = run_one(run, args, launcher)
        if status == "stopped":
          outcome = "stopped"
          print(f"stopped during {run['name']}; run the same command again to resume", flush=True)
          break
        jsonl.append(results_path, record)
        done += status == "done"
        failed += status == "failed"
        elapsed = time.time() - t_start
        left = len(todo) - i - 1
        final = record.get("final", {})
        what = f"swd {final['swd']:.2f}" if "swd" in final else record.get("error", "")
        print(f"[{i + 1}/{len(todo)}] {run['name']}: {status} in {report.duration(time.time() - t_run)} ({what}); "
              f"{report.duration(elapsed)} so far, about {report.duration(elapsed / (i + 1) * left)} left", flush=True)
  except errors.ConfigError as e:
    outcome = "error"
    print(f"error: {e}", file=sys.stderr)
  finally:
    seconds = time.time() - t_start
    jsonl.append(os.path.join(args.outdir, "sessions.jsonl"), dict(
        started=datetime.datetime.fromtimestamp(t_start).isoformat(timespec="seconds"),
        seconds=round(seconds, 1), runs=len(runs), skipped=len(runs) - len(todo), done=done, failed=failed,
        outcome=outcome, argv=sys.argv[1:] if argv is None else list(argv)))
  total = sum(s["seconds"] for s in report.read_jsonl(os.path.join(args.outdir, "sessions.jsonl")))
  print(f"this launch: {done} runs done, {failed} failed, {len(runs) - len(todo)} skipped in "
        f"{report.duration(seconds)}; the study so far: {report.duration(total)} over all launches", flush=True)
  if outcome == "error":
    return 2
  written = report.write_report(args.outdir, arms=list(ARMS), kimg=args.kimg)
  print(f"report: {', '.join(written)}", flush=True)
  return 1 if failed or outcome == "stopped" else 0


if __name__ == "__main__":
  sys.exit(main())
