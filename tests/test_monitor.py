"""What a user sees while a run trains: the status line, the progress bar (only on a terminal, from
the resumed kimg), TensorBoard event files read back with TensorBoard's own reader (scalars, eval
metrics, sample grids; a resumed run hides what it redoes), and the persistent compilation cache
(a second launch reads the train step from it)."""
import io
import json
import logging
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from configs import base
from configs import tiny
from gantl_jax.training import compilation
from gantl_jax.training import loop as train
from gantl_jax.training import monitor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = dict(step=400, kimg=6.4, g_loss=1.234, d_loss=0.98, r1_penalty=0.0123, pl_penalty=None,
              ema_beta=0.99, images_per_s=41.25, sec_per_kimg=24.24)


class Terminal(io.StringIO):
  def isatty(self):
    return True


def test_status_line_names_every_loss_and_what_the_backend_reports():
  assert monitor.status_line(RECORD) == "step 400  kimg 6.40  g 1.234  d 0.98  r1 0.0123  pl -  41.2 img/s"
  line = monitor.status_line({**RECORD, "aug_p": 0.125, "cdc_loss": 3.5, "ewc_penalty": 0.25,
                              "device_memory_gib": 1.5, "peak_device_memory_gib": 3.25})
  assert line == ("step 400  kimg 6.40  g 1.234  d 0.98  r1 0.0123  pl -  aug_p 0.125  cdc_loss 3.5  "
                  "ewc_penalty 0.25  mem 1.50 GiB (peak 3.25)  41.2 img/s")
  assert monitor.device_memory() == {}  # CPU: memory_stats() is None, so no memory is shown


def _monitor(tmp_path, stream, start_step=0):
  return monitor.Monitor(str(tmp_path), enabled=True, total_kimg=1.6, kimg_per_step=0.008,
                         start_step=start_step, tensorboard=False, stream=stream)


def test_progress_bar_is_off_when_not_a_terminal(tmp_path, caplog):
  stream = io.StringIO()
  m = _monitor(tmp_path, stream)
  m.start_bar()
  m.advance(50)
  with caplog.at_level(logging.INFO):
    m.log({**RECORD, "step": 50, "kimg": 0.4})
  m.close()
  assert not m.bar_on and stream.getvalue() == ""
  assert "step 50  kimg 0.40  g 1.234" in caplog.text  # the status line is logged instead


def test_progress_bar_on_a_terminal_starts_at_the_resumed_kimg(tmp_path):
  stream = Terminal()
  m = _monitor(tmp_path, stream, start_step=50)
  m.start_bar()
  assert m.bar_on and "25%" in stream.getvalue() and "0.40/1.60 kimg" in stream.getvalue()
  m.advance(100)
  m.log({**RECORD, "step": 100, "kimg": 0.8, "sec_per_kimg": 100.0})
  m.close()
  out = stream.getvalue()
  # The status line is written above the bar; the bar shows the rate and the ETA of the rest.
  assert "step 100  kimg 0.80  g 1.234" in out
  assert "0.80/1.60 kimg" in out and "100 s/kimg, 41.2 img/s, ETA 0:01:20" in out


def test_cache_dir_settings(monkeypatch, tmp_path):
  # The module's view of the environment, not the process's: the background jobs (conftest.py)
  # start their processes with the process's environment at any time.
  environ = {"JAX_COMPILATION_CACHE_DIR": "/somewhere/jax"}
  monkeypatch.setattr(compilation, "os", types.SimpleNamespace(environ=environ, path=os.path))
  assert compilation.cache_dir("auto") == "/somewhere/jax"  # JAX's own variable is respected
  environ.clear()
  environ["XDG_CACHE_HOME"] = str(tmp_path)
  assert compilation.cache_dir("auto") == str(tmp_path / "gantl_jax" / "jax_cache")
  assert compilation.cache_dir("") is None
  assert compilation.cache_dir("~/c") == os.path.expanduser("~/c")


def test_step_variants_are_the_programs_the_schedule_runs():
  c = base.get_config()  # path length every 4 steps, R1 every 16
  c.train.r1_gamma = 10.0  # (base's -1 means 'auto', resolved at start)
  # Merged programs: one per value of the static flags (CDC's anchor), the lazy regularisers by
  # lax.cond inside ('auto' on CPU).
  assert {compilation.variant_name(f): i for f, i in compilation.step_variants(c, 0, 1000).items()} == {"merged": 0}
  c.fewshot.cdc_anchor_interval = 3
  assert {compilation.variant_name(f): i for f, i in compilation.step_variants(c, 0, 1000).items()} == {
      "anchor+merged": 0, "merged": 1}
  c.fewshot.cdc_anchor_interval = 0
  c.train.variant_programs = "separate"
  assert {compilation.variant_name(f): i for f, i in compilation.step_variants(c, 0, 1000).items()} == {
      "g_reg+d_reg": 0, "main": 1, "g_reg": 4}
  assert [compilation.variant_name(f) for f in compilation.step_variants(c, 17, 20)] == ["main"]
  c.fewshot.cdc_anchor_interval = 3  # CDC's anchor steps are a lazy phase too
  assert {compilation.variant_name(f): i for f, i in compilation.step_variants(c, 0, 1000).items()} == {
      "g_reg+d_reg+anchor": 0, "main": 1, "anchor": 3, "g_reg": 4, "g_reg+anchor": 12,
      "g_reg+d_reg": 16}
  c.fewshot.cdc_anchor_interval = 0
  c.train.update(pl_weight=0.0, r1_gamma=0.0)
  assert [compilation.variant_name(f) for f in compilation.step_variants(c, 0, 1000)] == ["main"]


def _loop_config(tmp_path):
  # The same config as test_loop's runs (and its evaluation), so the programs compile once.
  c = tiny.get_config()
  c.model.update(mbstd_group_size=1)
  c.train.update(total_kimg=0.08, log_every=1, pl_batch_shrink=1)
  c.checkpoint.update(every_steps=5, max_to_keep=2)
  c.data.update(data_dir=str(tmp_path.parent / "tfds"))
  c.eval.update(every_kimg=0.04, metrics="swd", num_fake=64, num_real=64, batch_size=32)
  return c


def _events(workdir):
  acc = event_accumulator.EventAccumulator(
      str(workdir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0})
  acc.Reload()
  return acc


def test_tensorboard_holds_every_scalar_eval_metric_and_sample_grid(tmp_path):
  workdir = tmp_path / "run"
  train.train_and_evaluate(_loop_config(tmp_path), str(workdir))
  acc = _events(workdir)
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert {t for t in acc.Tags()["scalars"] if t.startswith("train/")} == {f"train/{k}" for k in records[0] if k != "step"}
  for name in ("g_loss", "d_loss", "r1_penalty", "pl_penalty", "kimg", "images_per_s", "real_logits"):
    events = acc.Scalars(f"train/{name}")  # float32 values
    assert [e.step for e in events] == [r["step"] for r in records if r[name] is not None], name
    assert [e.value for e in events] == pytest.approx([r[name] for r in records if r[name] is not None], rel=1e-6)
  assert [e.step for e in acc.Scalars("train/g_loss")] == list(range(1, 11))
  evals = [json.loads(line) for line in open(workdir / "eval.jsonl")]
  assert [e.step for e in acc.Scalars("eval/swd")] == [r["step"] for r in evals] == [5, 10]
  assert [e.value for e in acc.Scalars("eval/swd")] == pytest.approx([r["swd"] for r in evals], rel=1e-6)
  samples = acc.Images("samples")
  assert [i.step for i in samples] == [0, 10]
  final = np.asarray(Image.open(io.BytesIO(samples[-1].encoded_image_string)))
  np.testing.assert_array_equal(final, np.asarray(Image.open(workdir / "samples_final.png")))
  assert [(i.step, i.width, i.height) for i in acc.Images("reals")] == [(0, 4 * 16, 2 * 16)]


def test_a_resumed_run_hides_the_events_it_writes_again(tmp_path):
  """As after a kill at step 10 with the last checkpoint at 5: the resumed run logs steps 6-10
  again, into a new event file; TensorBoard shows each step once, with the resumed run's values."""
  def run(start_step, value):
    m = monitor.Monitor(str(tmp_path), enabled=True, total_kimg=0.08, kimg_per_step=0.008,
                        start_step=start_step, tensorboard=True, stream=io.StringIO())
    for step in range(start_step + 1, 11):
      m.log({**RECORD, "step": step, "kimg": step * 0.008, "g_loss": value})
    m.image("samples", 10, np.full((16, 32, 3), value, np.uint8))
    m.close()

  run(0, 1.0)
  run(5, 2.0)
  acc = _events(tmp_path)
  assert [(e.step, e.value) for e in acc.Scalars("train/g_loss")] == [(s, 1.0) for s in range(1, 6)] + [
      (s, 2.0) for s in range(6, 11)]
  assert [i.step for i in acc.Images("samples")] == [10]
  assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2


def _launch(workdir, data_dir, hash_seed):
  """launch.py on one CPU device, sharing conftest's compilation cache through JAX's own variable."""
  env = dict(os.environ, PYTHONHASHSEED=str(hash_seed))
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
  # Regularisers off: one step variant. FreezeD: two optimizer groups (frozen, lr=1), whose order
  # once followed the string hashing of the process.
  cmd = [sys.executable, os.path.join(ROOT, "launch.py"), "--config", os.path.join(ROOT, "configs/tiny.py"),
         "--workdir", str(workdir), "--config.train.total_kimg=0.016", "--config.train.log_every=1",
         f"--config.data.data_dir={data_dir}", "--config.train.r1_gamma=0", "--config.train.pl_weight=0",
         "--config.freeze.preset=freezed"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  done = [line for line in proc.stderr.splitlines() if "] done: " in line][-1]
  return proc.stderr, json.loads(done.split("] done: ", 1)[1])


def background_jobs(tmp_path_factory):
  """The two launches start with this module and run beside the other tests (conftest.py);
  ``test_a_second_launch_reads_the_train_step_from_the_compilation_cache`` waits for them."""
  tmp_path = tmp_path_factory.mktemp("second_launch")
  return {"second_launch": lambda: _second_launch(tmp_path)}


def test_a_second_launch_reads_the_train_step_from_the_compilation_cache(background):
  background[(__name__, "second_launch")].wait()


def _second_launch(tmp_path):
  cache = os.environ["JAX_COMPILATION_CACHE_DIR"]
  first_err, first = _launch(tmp_path / "a", tmp_path / "tfds", hash_seed=0)
  assert f"watch it with: tensorboard --logdir {tmp_path / 'a'}" in first_err
  assert f"later launches read them from the cache in {cache}" in first_err
  # A fresh process (with another string-hash seed: seeds 0 and 1 order {'frozen', 'lr=1'}
  # differently), another workdir, the same config: every program comes from the cache (JAX's
  # cache-hit events, counted by gantl_jax.training.compilation); nothing is compiled and written.
  second_err, second = _launch(tmp_path / "b", tmp_path / "tfds", hash_seed=1)
  assert "compiled in" in second_err and "(1 of 1 read from the cache)" in second_err
  assert second["compile_cache"]["writes"] == 0
  assert second["compile_cache"]["hits"] >= 2  # the train step and the sample grid's generator, at least
