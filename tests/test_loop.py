"""The training loop's contract with its workdir, run in-process on the 8 simulated devices:
divergence stops the run and never reaches a checkpoint, a failed start writes nothing, save
failures are one line, logs hold whole lines once each after a resume, one launch per workdir,
evaluation during training, and a transfer run end to end.

All runs share one tiny config (batch 8 over 8 devices), so its programs compile once.
"""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from configs import tiny
from gantl_jax import config as config_lib
from gantl_jax import errors
from gantl_jax import metrics as metrics_lib
from gantl_jax.cli import evaluate
from gantl_jax.data import synthetic
from gantl_jax.errors import DataError
from gantl_jax.training import checkpoint
from gantl_jax.training import jsonl
from gantl_jax.training import loop as train
from gantl_jax.training import parallel
from gantl_jax.training import state as state_lib


def make_config(tmp_path, **overrides):
  c = tiny.get_config()
  # One example per device: groups of one for minibatch stddev and path length.
  c.model.update(mbstd_group_size=1)
  c.train.update(total_kimg=0.08, log_every=1, pl_batch_shrink=1)
  c.checkpoint.update(every_steps=5, max_to_keep=2)
  c.data.update(data_dir=str(tmp_path.parent / "tfds"))
  for key, value in overrides.items():
    section, name = key.split("__")
    c[section][name] = value
  return c


def records(path):
  return [json.loads(line) for line in open(path)]


@pytest.fixture
def nan_reals(monkeypatch):
  """Real images that turn to NaN from the first step: D's main loss diverges there. (A huge
  learning rate would do it too, but it is baked into the programs, which would then compile
  again for these tests.)"""
  place = parallel.place_batch
  monkeypatch.setattr(parallel, "place_batch", lambda batch, *a: place(batch * np.nan, *a))


def test_divergence_stops_with_the_step_and_phase_and_saves_no_nan(tmp_path, nan_reals):
  with pytest.raises(errors.TrainingError, match=r"diverged at step 1, phase D main \(d_loss=nan\); no "
                     r"checkpoint of a non-finite state was written, none was written before"):
    train.train_and_evaluate(make_config(tmp_path), str(tmp_path / "run"))
  assert checkpoint.committed_steps(str(tmp_path / "run" / "checkpoints")) == []
  assert records(tmp_path / "run" / "metrics.jsonl")[0]["d_loss"] is None


def test_divergence_between_log_lines_is_caught_by_the_checkpoint(tmp_path, nan_reals):
  """Metrics are fetched every 100 steps here: the save at step 1 finds the NaN state first."""
  config = make_config(tmp_path, train__log_every=100, checkpoint__every_steps=1)
  with pytest.raises(errors.TrainingError, match=r"diverged at step 1, phase D main"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert checkpoint.committed_steps(str(tmp_path / "run" / "checkpoints")) == []


def test_failed_starts_write_nothing_then_the_fix_transfers(tmp_path):
  """A missing source, a source that does not fit and an empty image folder each fail before
  anything is written; the command the error suggests then runs in the same workdir, through the
  successful transfer branch."""
  workdir = tmp_path / "run"
  with pytest.raises(errors.TransferError, match="does not exist"):
    train.train_and_evaluate(make_config(tmp_path, transfer__source=str(tmp_path / "nope")), str(workdir))
  assert not workdir.exists()

  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError):
    train.train_and_evaluate(make_config(tmp_path, data__source="folder", data__folder=str(tmp_path / "empty")),
                             str(workdir))
  assert not workdir.exists()

  # An 8 px source: the 16 px target's b16 blocks have no counterpart.
  src_config = config_lib.resolve(make_config(tmp_path, model__resolution=8))
  nets = state_lib.build_networks(src_config)
  src = jax.tree.map(np.asarray, jax.jit(lambda: state_lib.init_state(nets, 7))())
  checkpoint.save_networks(str(tmp_path / "src"), g=src.g.variables, g_ema=src.g_ema.variables,
                           d=src.d.variables, meta={"model": config_lib.model_hparams(src_config)})
  with pytest.raises(errors.TransferError, match="on_mismatch=init"):
    train.train_and_evaluate(make_config(tmp_path, transfer__source=str(tmp_path / "src")), str(workdir))
  assert not workdir.exists()

  config = make_config(tmp_path, transfer__source=str(tmp_path / "src"), transfer__on_mismatch="init",
                       train__total_kimg=0.016)
  summary = train.train_and_evaluate(config, str(workdir))
  assert summary["step"] == 2
  report = json.loads((workdir / "transfer_report.json").read_text())
  assert report["networks"]["g"]["restored"] and report["networks"]["g"]["kept_at_init"]
  assert "params/mapping/fc0/weight" in report["networks"]["g"]["restored"]
  assert checkpoint.committed_steps(str(workdir / "checkpoints")) == [2]


def test_unwritable_checkpoint_directory_fails_at_start(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "checkpoints").write_text("not a directory")
  with pytest.raises(errors.ConfigError, match="cannot write the checkpoint directory .*/run/checkpoints"):
    train.train_and_evaluate(make_config(tmp_path), str(workdir))
  assert sorted(os.listdir(workdir)) == [".lock", "checkpoints"]


def test_a_failed_save_stops_the_run_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
  calls = []
  real_save = checkpoint.ocp.CheckpointManager.save

  def failing_save(self, step, *args, **kwargs):
    calls.append(step)
    if step == 10:
      raise ValueError("RESOURCE_EXHAUSTED: Error writing ...: No space left on device [os_error_code='28']")
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "save", failing_save)
  with pytest.raises(errors.CheckpointError) as e:
    train.train_and_evaluate(make_config(tmp_path), str(tmp_path / "run"))
  assert str(e.value).count("\n") == 0
  assert "No space left on device" in str(e.value) and "step 5, is kept" in str(e.value)
  assert checkpoint.committed_steps(str(tmp_path / "run" / "checkpoints")) == [5]


def test_resume_drops_records_past_the_checkpoint_and_a_torn_line(tmp_path):
  """As after kill -9 at step 7 (checkpoints at 5): steps 6-7 and half a line are in the logs."""
  workdir = tmp_path / "run"
  config = make_config(tmp_path)
  train.train_and_evaluate(config, str(workdir))
  shutil.rmtree(workdir / "checkpoints" / "10")
  metrics = workdir / "metrics.jsonl"
  lines = metrics.read_text().splitlines(keepends=True)
  metrics.write_text("".join(lines[:7]) + lines[7][:20])
  train.train_and_evaluate(config, str(workdir))
  assert [r["step"] for r in records(metrics)] == list(range(1, 11))


def test_log_lines_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
  path = str(tmp_path / "m.jsonl")
  jsonl.append(path, {"step": 1})

  def short_write(fd, data):
    os.lseek(fd, 0, os.SEEK_END)
    real_write(fd, data[:5])
    raise OSError(28, "No space left on device")

  real_write = os.write
  monkeypatch.setattr(jsonl.os, "write", short_write)
  with pytest.raises(errors.LogError, match="cannot append to .*m.jsonl: No space left on device"):
    jsonl.append(path, {"step": 2})
  monkeypatch.undo()
  assert open(path).read() == '{"step": 1}\n'


def test_a_second_launch_on_a_workdir_in_use_is_refused(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  with train.workdir_lock(str(workdir)):
    with pytest.raises(errors.ConfigError, match=rf"workdir {workdir} is in use by another launch \(pid {os.getpid()}"):
      train.train_and_evaluate(make_config(tmp_path), str(workdir))
  assert sorted(os.listdir(workdir)) == [".lock"]


def test_resume_without_config_json_compares_the_checkpoint_config(tmp_path):
  workdir = tmp_path / "run"
  train.train_and_evaluate(make_config(tmp_path, train__total_kimg=0.016), str(workdir))
  os.remove(workdir / "config.json")
  with pytest.raises(errors.ConfigError, match=r"holds another run \(the latest checkpoint in .* differs "
                     r"in model.z_dim: 32 -> 16\)"):
    train.train_and_evaluate(make_config(tmp_path, model__z_dim=16, train__total_kimg=0.016), str(workdir))
  assert not (workdir / "config.json").exists()


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
  (tmp_path / "run").write_text("")
  with pytest.raises(errors.ConfigError, match="--workdir .*/run is a file, not a directory"):
    train.train_and_evaluate(make_config(tmp_path), str(tmp_path / "run"))


def test_evaluators_run_on_schedule_and_keep_the_best_checkpoint(tmp_path):
  workdir = tmp_path / "run"
  config = make_config(tmp_path, eval__every_kimg=0.04, eval__metrics="swd", eval__num_fake=64,
                       eval__num_real=64, eval__batch_size=32, checkpoint__keep_best="swd")
  train.train_and_evaluate(config, str(workdir))
  evals = records(workdir / "eval.jsonl")
  assert [r["step"] for r in evals] == [5, 10]
  assert all(r["swd"] == r["swd_r16"] for r in evals), evals  # at 16 px, the one Laplacian level
  # The same evaluator on images of the data: exactly 0 for the training images themselves, and
  # small for other images of the domain (measured 24.8); a G of 10 steps is much further away
  # (measured 236 and 231 at steps 5 and 10).
  reals = synthetic.render("anime", range(64), resolution=16)
  eval_config = config_lib.resolve(config).eval
  swd_of = lambda fakes: metrics_lib.evaluate_swd(iter([fakes]), iter([reals]), eval_config)["swd"]
  assert swd_of(reals) == 0.0
  near = swd_of(synthetic.render("anime", range(1000, 1064), resolution=16))
  assert all(3 * near < r["swd"] < 1000 for r in evals), (near, evals)
  best = min(evals, key=lambda r: r["swd"])["step"]
  assert checkpoint.committed_steps(str(workdir / "best")) == [best]
  # Offline evaluation (launch.py --mode eval) of a step gives the value training logged for it.
  record = evaluate.evaluate_workdir(str(workdir), step=5)
  assert record["offline"] and record["swd"] == pytest.approx(evals[0]["swd"], rel=1e-6)
  assert records(workdir / "eval.jsonl")[-1] == record


def test_evaluation_settings_are_checked_before_anything_is_written(tmp_path):
  with pytest.raises(errors.ConfigError, match=r"eval.metrics: unknown metric\(s\) \['fid2'\]"):
    train.train_and_evaluate(make_config(tmp_path, eval__metrics="fid2", eval__every_kimg=1.0), str(tmp_path / "a"))
  with pytest.raises(errors.ConfigError, match="checkpoint.keep_best='swd' is not among eval.metrics"):
    train.train_and_evaluate(make_config(tmp_path, checkpoint__keep_best="swd"), str(tmp_path / "b"))
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
