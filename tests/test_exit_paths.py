"""What each way a run can stop keeps: the save in flight is committed on every exit path and the
message names the step that is kept; a damaged latest checkpoint is set aside and the run resumes
from the newest readable one; a damaged config.json is one line naming it; the stray errors of a
failed asynchronous save are dropped. In-process on the 8 simulated devices, with the config of
test_loop.py, so the programs compile once for both modules.
"""
import asyncio
import json
import logging
import os
import sys
import time
import types

import numpy as np
import pytest

from gantl_jax import config as config_lib
from gantl_jax.training import checkpoint
from gantl_jax.training import loop as train
from gantl_jax.training import parallel
from gantl_jax.training import runs
from test_loop import make_config  # the same programs as the loop's tests: compiled once for both
from gantl_jax import errors


@pytest.fixture
def slow_commit(monkeypatch):
  """Every asynchronous save commits one second after its arrays are written, so a save is still
  in flight when the next step fails (a real one on a slow disk)."""
  finalize = checkpoint.ocp.CheckpointManager._finalize

  def slow(self, *args, **kwargs):
    time.sleep(1.0)
    return finalize(self, *args, **kwargs)

  monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "_finalize", slow)


def fail_from_batch(monkeypatch, n, make):
  """parallel.place_batch returns ``make(batch)`` from its ``n``-th call on (step n)."""
  place, calls = parallel.place_batch, []

  def patched(batch, *args):
    calls.append(1)
    return place(make(batch) if len(calls) >= n else batch, *args)

  monkeypatch.setattr(parallel, "place_batch", patched)


def steps_on_disk(workdir):
  return sorted(os.listdir(workdir / "checkpoints"))


def test_divergence_after_a_save_commits_it_and_names_it(tmp_path, monkeypatch, slow_commit):
  """NaN reals from step 3: the step-2 save, still in flight, is committed and named."""
  fail_from_batch(monkeypatch, 3, lambda batch: batch * np.nan)
  workdir = tmp_path / "run"
  config = make_config(tmp_path, checkpoint__every_steps=1)
  with pytest.raises(errors.TrainingError, match=rf"diverged at step 3, phase D main \(d_loss=nan\); no "
                     rf"checkpoint of a non-finite state was written, the last good one \(step 2\) is in "
                     rf"{workdir}/checkpoints. Lower optim.g.lr / optim.d.lr or raise train.r1_gamma"):
    train.train_and_evaluate(config, str(workdir))
  assert steps_on_disk(workdir) == ["1", "2"]


def test_a_non_finite_state_gives_the_remedy_and_the_committed_step(tmp_path, monkeypatch, slow_commit):
  """The state turns non-finite while the fetched losses are still finite (caught by the save)."""
  finite = checkpoint.all_finite
  monkeypatch.setattr(checkpoint, "all_finite", lambda state: finite(state) & (state.step < 3))
  workdir = tmp_path / "run"
  config = make_config(tmp_path, checkpoint__every_steps=1)
  with pytest.raises(errors.TrainingError) as e:
    train.train_and_evaluate(config, str(workdir))
  assert str(e.value) == (
      f"training diverged: the state at step 3 holds NaN or infinite values and was not saved; the "
      f"last complete checkpoint, step 2, is kept in {workdir}/checkpoints. Lower optim.g.lr / "
      f"optim.d.lr or raise train.r1_gamma, then resume or start a new --workdir")
  assert steps_on_disk(workdir) == ["1", "2"]


@pytest.mark.parametrize("error", [KeyboardInterrupt, ValueError], ids=["second-ctrl-c", "error"])
def test_any_exception_mid_run_commits_the_save_in_flight(tmp_path, monkeypatch, slow_commit, caplog, error):
  """A second Ctrl-C or any error (a damaged evaluation cache, say) right after the step-5 save."""
  def stop(batch):
    raise error("stopped by the test")

  fail_from_batch(monkeypatch, 6, stop)
  workdir = tmp_path / "run"
  with caplog.at_level(logging.WARNING), pytest.raises(error, match="stopped by the test"):
    train.train_and_evaluate(make_config(tmp_path), str(workdir))
  assert steps_on_disk(workdir) == ["5"]
  assert (f"the run stopped at step 5 ({error.__name__}); the last complete checkpoint, step 5, is "
          f"kept in {workdir}/checkpoints") in caplog.text


@pytest.mark.slow
# Orbax's failed restore of the damaged step leaves its per-shard read coroutines unfinished; the
# garbage collector closes them later and Python reports each as an unraisable exception.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_run_resumes_before_it(tmp_path, caplog):
  workdir = tmp_path / "run"
  train.train_and_evaluate(make_config(tmp_path), str(workdir))
  assert steps_on_disk(workdir) == ["10", "5"]
  data_dir = workdir / "checkpoints" / "10" / "g" / "ocdbt.process_0" / "d"
  for name in os.listdir(data_dir):  # truncated, as by a full disk or a failed copy
    with open(data_dir / name, "r+b") as f:
      f.truncate(16)
  with caplog.at_level(logging.WARNING):
    summary = train.train_and_evaluate(make_config(tmp_path, train__total_kimg=0.096), str(workdir))
  assert summary["step"] == 12
  assert (f"checkpoint step 10 in {workdir}/checkpoints cannot be read (" in caplog.text
          and f"); resuming from step 5, the newest readable one; the damaged step is kept as "
              f"{workdir}/checkpoints/10.unreadable" in caplog.text)
  assert steps_on_disk(workdir) == ["10", "10.unreadable", "12"]
  assert len(os.listdir(data_dir.parent.parent.parent.parent / "10.unreadable" / "g" / "ocdbt.process_0" / "d"))


def test_no_readable_checkpoint_is_one_line_naming_each_step(tmp_path):
  workdir = tmp_path / "run"
  train.train_and_evaluate(make_config(tmp_path, train__total_kimg=0.04), str(workdir))
  (workdir / "checkpoints" / "5" / "progress" / "_METADATA").write_text("")
  with pytest.raises(errors.CheckpointError, match=rf"^no checkpoint in {workdir}/checkpoints can be "
                     rf"read \(step 5: [^\n]+\); restore the directory from a backup, or move it aside"):
    train.train_and_evaluate(make_config(tmp_path, train__total_kimg=0.04), str(workdir))
  assert steps_on_disk(workdir) == ["5"]


@pytest.mark.parametrize("text", ["", '{"model": {"resolution": 16', "[]"], ids=["empty", "truncated", "list"])
def test_a_damaged_config_json_is_one_line_naming_it(tmp_path, text):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(text)
  path = workdir / "config.json"
  want = rf"^{path} is not (valid JSON \(.* at line 1 column \d+\)|a JSON object); delete it: the config stored"
  with pytest.raises(errors.ConfigError, match=want):  # resuming the run
    train.check_workdir(str(workdir), config_lib.resolve(make_config(tmp_path)))
  with pytest.raises(errors.ConfigError, match=want):  # --mode generate and the other modes
    runs.load_g_ema(str(workdir))


def test_config_json_is_replaced_whole_or_not_at_all(tmp_path):
  path = tmp_path / "config.json"
  path.write_text('{"old": 1}')
  with pytest.raises(TypeError):  # the write fails half-way
    train._write_atomically(str(path), 12345)
  assert path.read_text() == '{"old": 1}' and os.listdir(tmp_path) == ["config.json"]
  train._write_atomically(str(path), '{"new": 2}')
  assert json.loads(path.read_text()) == {"new": 2} and os.listdir(tmp_path) == ["config.json"]


def closed_loop_error():
  """The RuntimeError that a callback into a closed asyncio loop raises, with its traceback."""
  loop = asyncio.new_event_loop()
  loop.close()
  try:
    loop.call_soon_threadsafe(print)
  except RuntimeError as e:
    return e
  raise AssertionError("a closed loop accepted a callback")


def test_stray_callbacks_of_a_failed_save_are_dropped_and_nothing_else(monkeypatch):
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
  checkpoint.ignore_closed_loop_callbacks()
  checkpoint.ignore_closed_loop_callbacks()  # installed once however often it is called
  stray = closed_loop_error()
  other = ValueError("another unraisable error")
  for e in (stray, other):
    sys.unraisablehook(types.SimpleNamespace(exc_type=type(e), exc_value=e, exc_traceback=e.__traceback__,
                                             err_msg=None, object=None))
  assert seen == [other]
  sys.unraisablehook(types.SimpleNamespace(exc_type=RuntimeError, exc_value=RuntimeError("Event loop is closed"),
                                           exc_traceback=None, err_msg=None, object=None))
  assert len(seen) == 2  # the same text from elsewhere is kept
