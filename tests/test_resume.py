"""Exact resume, proven with launch.py subprocesses: SIGKILL between checkpoints then restart ends
bit-identical to an uninterrupted run and logs each step once; SIGTERM and Ctrl-C leave a checkpoint
at the current step.

All subprocesses share one environment: one CPU device (conftest's simulated devices removed) and
conftest's persistent compilation cache, so the tiny model's programs compile once. The launches
start with this module and run beside the other tests (``background_jobs``, conftest.py).
"""
import functools
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITEMS = ("g", "g_ema", "d", "opt", "progress")
TOTAL_STEPS = 24  # batch 8: total_kimg 0.192
EVERY = 8


def env():
  e = dict(os.environ)
  e["XLA_FLAGS"] = e.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "").strip()
  e["JAX_PLATFORMS"] = "cpu"
  return e


def command(workdir, data_dir, *overrides):
  # Lazy regularisation stays on (R1 and path length every 4 steps): the resumed loop must pick
  # the same program variant for every step index as the uninterrupted one.
  return [sys.executable, os.path.join(ROOT, "launch.py"), "--config", os.path.join(ROOT, "configs/tiny.py"),
          "--workdir", str(workdir), f"--config.data.data_dir={data_dir}", "--config.train.log_every=1",
          f"--config.train.total_kimg={TOTAL_STEPS * 8 / 1000}", f"--config.checkpoint.every_steps={EVERY}",
          "--config.checkpoint.max_to_keep=5", *overrides]


def run(cmd, timeout=900):
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env())
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def steps_in(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def wait_for(predicate, proc, timeout=900):
  t0 = time.time()
  while not predicate():
    if proc.poll() is not None:
      raise AssertionError(f"the run ended (rc {proc.returncode}) before it was interrupted:\n"
                           f"{proc.stderr.read()[-3000:]}")
    if time.time() - t0 > timeout:
      proc.kill()
      raise AssertionError("timed out waiting for the run")
    time.sleep(0.02)


def read_checkpoint(workdir, step):
  """{item: {path: array}} of one step, read without a target (the saved structure)."""
  handlers = {k: ocp.PyTreeCheckpointHandler() for k in ITEMS}
  handlers["data"] = ocp.JsonCheckpointHandler()
  options = ocp.CheckpointManagerOptions(read_only=True, create=False)
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_handlers=handlers, options=options) as m:
    args = {k: ocp.args.PyTreeRestore() for k in ITEMS}
    args["data"] = ocp.args.JsonRestore()
    # Read without a target on purpose (the saved structure, not the loop's), so orbax takes the
    # shardings from the files and says so; the loop's own restores pass them.
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", message="Sharding info not provided when restoring")
      out = m.restore(step, args=ocp.args.Composite(**args))
  leaves = lambda tree: {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  flat = {k: leaves(out[k]) for k in ITEMS}
  flat["data"] = out["data"]
  return flat


def metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def background_jobs(tmp_path_factory):
  """Every launch of this module starts when the module does and runs beside its other tests
  (conftest.py), one after another: the uninterrupted run first (the others read its compiled
  programs from the shared cache). The tests wait for their launches and read the checkpoints."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  uninterrupted = str(tmp_path_factory.mktemp("uninterrupted"))
  killed = str(tmp_path_factory.mktemp("sigkill") / "killed")
  jobs = {"uninterrupted": lambda: (run(command(uninterrupted, data_dir)), uninterrupted)[1],
          "sigkill": lambda: _kill_then_restart(killed, data_dir)}
  for sig in (signal.SIGTERM, signal.SIGINT):
    jobs[sig.name] = functools.partial(_stop_by_signal, sig, str(tmp_path_factory.mktemp(sig.name) / "preempted"),
                                       data_dir)
  return jobs


def _kill_then_restart(workdir, data_dir):
  """SIGKILL between checkpoints, then the same command again; returns (workdir, the step of the
  last checkpoint before the kill, the last step logged before it)."""
  proc = subprocess.Popen(command(workdir, data_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, cwd=ROOT, env=env())
  wait_for(lambda: EVERY in steps_in(workdir), proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  last = steps_in(workdir)[-1]
  assert EVERY <= last < TOTAL_STEPS  # killed between checkpoints, before the end
  ran = max(m["step"] for m in metrics(workdir))
  restarted = run(command(workdir, data_dir))
  assert f"resumed from {workdir}/checkpoints at step {last}" in restarted.stderr
  return workdir, last, ran


def test_sigkill_between_checkpoints_then_restart_is_bit_identical(background):
  uninterrupted = background[(__name__, "uninterrupted")].wait()
  assert steps_in(uninterrupted)[-1] == TOTAL_STEPS
  workdir, last, ran = background[(__name__, "sigkill")].wait()
  assert steps_in(workdir)[-1] == TOTAL_STEPS

  expected, got = read_checkpoint(uninterrupted, TOTAL_STEPS), read_checkpoint(workdir, TOTAL_STEPS)
  assert got["data"] == expected["data"]
  for item in ITEMS:
    assert got[item].keys() == expected[item].keys()
    for p in expected[item]:
      np.testing.assert_array_equal(got[item][p], expected[item][p], err_msg=f"{item}/{p}")
  # The metrics of the re-run steps equal the uninterrupted run's too (also for steps that had
  # already run before the kill, from `last` to `ran`: they were recomputed the same way).
  ref = {m["step"]: m for m in metrics(uninterrupted)}
  # Each step is logged once: the records of the steps re-run after the kill were dropped.
  assert [m["step"] for m in metrics(workdir)] == list(range(1, TOTAL_STEPS + 1))
  after = [m for m in metrics(workdir)][-(TOTAL_STEPS - last):]
  assert [m["step"] for m in after] == list(range(last + 1, TOTAL_STEPS + 1)) and ran >= last
  for m in after:
    for k in ("g_loss", "d_loss", "r1_penalty", "pl_penalty", "pl_mean", "real_logits", "fake_logits"):
      assert m[k] == ref[m["step"]][k], (m["step"], k)


def _stop_by_signal(sig, workdir, data_dir):
  """A long run stopped by ``sig`` after 3 logged steps; returns (workdir, the last step logged)."""
  cmd = command(workdir, data_dir, "--config.train.total_kimg=8", "--config.checkpoint.every_steps=0")
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env())
  path = os.path.join(workdir, "metrics.jsonl")
  wait_for(lambda: os.path.exists(path) and len(open(path).readlines()) >= 3, proc)
  proc.send_signal(sig)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-3000:]
  assert "Traceback" not in stderr and "Exception in thread" not in stderr, stderr[-3000:]
  assert '"preempted": true' in stderr
  return workdir, metrics(workdir)[-1]["step"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_stop_signal_saves_the_current_step_and_exits_cleanly(sig, background):
  """SIGTERM (preemption) and a first Ctrl-C: checkpoint at the current step, exit status 0, and
  no traceback from the loop or Orbax's threads (``_stop_by_signal``)."""
  workdir, stopped = background[(__name__, sig.name)].wait()
  assert 3 <= stopped < 1000
  assert steps_in(workdir) == [stopped]  # every_steps=0: this is the SIGTERM checkpoint
  assert read_checkpoint(workdir, stopped)["progress"]["['step']"] == stopped
