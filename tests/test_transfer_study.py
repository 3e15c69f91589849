"""The transfer study (benchmarks/transfer_study.py, transfer_study_report.py) and the held-out
real images its evaluations use (eval.heldout).

The end-to-end test runs the study's --quick grid (scratch and fine-tune, one seed) on a tiny
source through real launches, then runs it again to prove that finished runs are skipped. Its
tiny config is test_loop's (batch 8 over the 8 simulated devices), so its programs come from the
shared compilation cache.
"""
import contextlib
import io
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from benchmarks import fewshot_numbers
from benchmarks import fewshot_step_time
from benchmarks import transfer_study
from benchmarks import transfer_study_report as report
from configs import tiny
from gantl_jax import config as config_lib
from gantl_jax import errors
from gantl_jax import metrics
from gantl_jax.cli import compare
from gantl_jax.data import pipeline
from gantl_jax.errors import DataError
from gantl_jax.training import jsonl
from gantl_jax.training import loop as train


# test_loop's tiny config: one example per device.
TINY = {"model.mbstd_group_size": 1, "train.pl_batch_shrink": 1, "train.log_every": 1}


def tiny_config(data_dir, **overrides):
  c = tiny.get_config()
  c.update_from_flattened_dict({**TINY, "data.data_dir": str(data_dir), **overrides})
  return c


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A 1-step tiny source on the synthetic photo domain."""
  root = tmp_path_factory.mktemp("study")
  train.train_and_evaluate(tiny_config(root / "tfds", **{"data.domain": "photo", "train.total_kimg": 0.008}),
                           str(root / "source"))
  return root


def study_args(root):
  return ["--quick", "--config", "configs/tiny.py", "--source", str(root / "source"), "--outdir",
          str(root / "study"), "--kimg", "0.008", "--eval_every_kimg", "0.008", "--num_fake", "32",
          "--num_real", "64", "--set", f"data.data_dir={root / 'tfds'}",
          *[f"--set={k}={v}" for k, v in TINY.items()]]


@pytest.mark.slow
def test_quick_study_runs_the_grid_reports_and_skips_finished_runs(source, capsys):
  out = source / "study"
  assert transfer_study.main(study_args(source)) == 0
  results = report.read_jsonl(str(out / "results.jsonl"))
  assert [(r["arm"], r["shots"], r["seed"], r["status"]) for r in results] == [
      ("scratch", 10, 0, "done"), ("finetune", 10, 0, "done")]
  for r in results:
    # One step, evaluated: the curve's last point is the final value.
    assert [p["step"] for p in r["curve"]] == [1] and r["curve"][-1]["swd"] == r["final"]["swd"] > 0
    assert r["overrides"]["eval.heldout"] is True
    assert r["overrides"]["data.num_images"] == 10 and r["overrides"]["data.seed"] == transfer_study.DATA_SEED
  # Only the transfer arm started from the source.
  assert (out / "runs" / "finetune-n10-s0" / "transfer_report.json").exists()
  assert not (out / "runs" / "scratch-n10-s0" / "transfer_report.json").exists()
  # The report: one row per arm, and the plot.
  text = (out / "report.md").read_text()
  assert "| scratch | " in text and "| finetune | " in text and "10-shot final SWD" in text
  # Each arm's point is drawn in its colour inside the panel (left of the legend).
  panel = np.asarray(Image.open(out / "swd_vs_kimg.png").convert("RGB"))[:, :PANEL_RIGHT + 4]
  for colour in report.COLOURS[:2]:
    assert np.all(panel == report._rgb(colour), axis=-1).sum() >= 9, colour
  # The held-out descriptors were cached beside the held-out dataset, once for both runs.
  cached = [f for _, _, files in os.walk(source / "tfds") for f in files if f.startswith("swd_s123_")]
  assert cached == ["swd_s123_m131072_v1_n64.npz"]
  capsys.readouterr()
  # Again: both runs are finished, nothing is launched, the results stay.
  assert transfer_study.main(study_args(source)) == 0
  assert "2 finished before, 0 to run" in capsys.readouterr().out
  assert report.read_jsonl(str(out / "results.jsonl")) == results
  sessions = report.read_jsonl(str(out / "sessions.jsonl"))
  assert [(s["done"], s["skipped"], s["outcome"]) for s in sessions] == [(2, 0, "complete"), (0, 2, "complete")]


def test_heldout_images_are_other_images_of_the_domain(tmp_path):
  config = config_lib.resolve(tiny_config(tmp_path, **{"data.num_images": 10, "eval.heldout": True,
                                                        "eval.num_real": 200}))
  prepared = pipeline.prepare(config.data, resolution=16, verbose=False)
  heldout = metrics.prepare_reals(config, prepared, verbose=False)
  assert heldout.num_examples == 200 and heldout.report["start"] == 1_000_000
  # They are the images compare.py takes as held out, rendered directly.
  np.testing.assert_array_equal(np.stack([heldout.data_source[i] for i in range(3)]),
                                compare.target_images(config, 3, held_out=True)[0])
  shots = {prepared.data_source[i].tobytes() for i in range(10)}
  assert not shots & {heldout.data_source[i].tobytes() for i in range(200)}
  # The 10 shots are the first images of the 100-shot set of the same data seed.
  hundred = pipeline.prepare(config_lib.resolve(tiny_config(tmp_path, **{"data.num_images": 100})).data,
                             resolution=16, verbose=False)
  assert shots == {hundred.data_source[i].tobytes() for i in range(10)}
  assert metrics.prepare_reals(tiny_config(tmp_path), prepared) is prepared  # False: the training images
  with pytest.raises(errors.ConfigError, match="eval.heldout=True needs held-out images"):
    config_lib.resolve(tiny_config(tmp_path, **{"eval.heldout": True, "data.source": "folder", "data.folder": "/x"}))
  with pytest.raises(DataError, match=r"data.num_images must be > 0 and at most 1000000"):
    config_lib.resolve(tiny_config(tmp_path, **{"data.num_images": 1_000_001}))


# The plot's first panel spans pixel columns 64 to 544 (kimg 0 to the longest curve's end).
PANEL_RIGHT = 544


def colour_row(image, colour, x):
  """The mean row of the pixels of exactly ``colour`` ('#rrggbb') within 2 columns of ``x``: the
  centre of the point drawn there (the line through it passes the same rows)."""
  rows, _ = np.nonzero(np.all(image[:, x - 2:x + 3] == report._rgb(colour), axis=-1))
  assert rows.size, (colour, x)
  return float(rows.mean())


def result(arm, shots, seed, swd, kid=None, kimg=1.0, status="done"):
  curve = [{"step": 1, "kimg": 0.5, "swd": swd + 10}, {"step": 2, "kimg": 1.0, "swd": swd}]
  final = {"swd": swd, **({"kid": kid} if kid is not None else {})}
  return dict(arm=arm, shots=shots, seed=seed, kimg=kimg, status=status, final=final, curve=curve, seconds=120.0,
              overrides={"eval.num_fake": 1000, "eval.num_real": 5000, "eval.every_kimg": 0.5})


def test_report_table_plot_and_doc_block(tmp_path):
  results = [result("freezed", 10, s, v, kid=k) for s, v, k in [(0, 20.0, 0.010), (1, 22.0, 0.012), (2, 24.0, 0.014)]]
  results += [result("scratch", 10, 0, 90.0), result("scratch", 10, 1, 0.0, status="failed"),
              result("freezed", 10, 0, 5.0, kimg=0.5)]  # another length: left out
  (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
  (tmp_path / "sessions.jsonl").write_text('{"seconds": 7200}\n{"seconds": 1800}\n')
  doc = tmp_path / "study.md"
  doc.write_text(f"# Study\n\nbefore\n{report.BEGIN}\nold table\n{report.END}\nafter\n")
  report.write_report(str(tmp_path), arms=["scratch", "freezed"], doc=str(doc))
  text = doc.read_text()
  assert text.startswith("# Study\n\nbefore\n") and text.endswith("after\n") and "old table" not in text
  rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
  assert rows[0] == ("| arm | 10-shot final SWD | 10-shot lowest SWD | 10-shot KID x10³ | seeds | min/run |")
  # Arms in the given order; mean ± std (ddof 1) over seeds; KID x 10^3; failed runs counted.
  assert rows[1] == "| scratch | 90.00 | 90.00 |  | 1 (1 failed) | 2.0 |"
  assert rows[2] == "| freezed | 22.00 ± 2.00 | 22.00 ± 2.00 | 12.00 ± 2.00 | 3 | 2.0 |"
  assert "Study wall time 2.50 h over 2 session(s)" in text
  assert Image.open(tmp_path / "study_swd.png").size == Image.open(tmp_path / "swd_vs_kimg.png").size
  mean_curve = report.curves(report.select_kimg(report.read_jsonl(str(tmp_path / "results.jsonl"))), "freezed", 10)
  np.testing.assert_allclose(mean_curve[1], [32.0, 22.0])
  np.testing.assert_allclose(mean_curve[2], [2.0, 2.0])
  # The curves' points sit where a linear SWD axis puts them: scratch 100 and 90, freezed 32 and
  # 22 at kimg 0.5 and 1 (pixel columns 304 and 544). Pixels per SWD unit, from four pairs:
  image = np.asarray(Image.open(tmp_path / "study_swd.png").convert("RGB"))
  y = {(arm, x): colour_row(image, report.COLOURS[i], x) for i, arm in enumerate(["scratch", "freezed"])
       for x in (304, PANEL_RIGHT)}
  per_unit = [(y["freezed", 304] - y["scratch", 304]) / (100 - 32),
              (y["freezed", PANEL_RIGHT] - y["scratch", PANEL_RIGHT]) / (90 - 22),
              (y["freezed", PANEL_RIGHT] - y["freezed", 304]) / (32 - 22),
              (y["scratch", PANEL_RIGHT] - y["scratch", 304]) / (100 - 90)]
  assert per_unit[0] > 2, y  # higher SWD higher up, over most of the 360 px panel
  assert per_unit[1:] == pytest.approx([per_unit[0]] * 3, rel=0.05), (per_unit, y)


def test_fewshot_numbers_speed_ratio_gap_saturation_and_swd(tmp_path):
  gaps = {"finetune": [1.0, 2.0, 4.0, 5.0, 5.0, 5.0], "freezed": [1.0, 1.0, 1.0, 2.0, 3.0, 6.0]}
  for arm, secs in (("finetune", 10.0), ("freezed", 7.5), ("affine", 5.0)):
    run = tmp_path / "runs" / f"{arm}-n10-s0"
    run.mkdir(parents=True)
    if arm != "affine":  # affine is still running: no results line, left out
      jsonl.append(str(tmp_path / "results.jsonl"), dict(workdir=f"runs/{arm}-n10-s0", status="done"))
    gaps.setdefault(arm, [1.0, 2.0])
    for i, gap in enumerate(gaps[arm]):
      jsonl.append(str(run / "metrics.jsonl"), dict(step=i + 1, kimg=i + 1.0, real_logits=gap / 2,
                                                    fake_logits=-gap / 2, sec_per_kimg=99.0 if i == 0 else secs))
    for kimg, swd in ((1.0, 50.0), (6.0, 40.0 if arm == "finetune" else 45.0)):
      jsonl.append(str(run / "eval.jsonl"), dict(step=int(kimg), kimg=kimg, swd=swd))
  numbers = fewshot_numbers.run_numbers(str(tmp_path / "runs" / "freezed-n10-s0"))
  # Smoothed over 3 intervals: 1, 1, 1, 1.33, 2, 3.67 -> 90 % of the top is reached at kimg 6 only.
  assert numbers == dict(sec_per_kimg=7.5, gap_kimg=6.0, final_gap=6.0, final_swd=45.0, lowest_swd=45.0)
  # finetune: 1, 1.5, 2.33, 3.67, 4.67, 5 -> 4.67 >= 4.5 at kimg 5.
  assert fewshot_numbers.run_numbers(str(tmp_path / "runs" / "finetune-n10-s0"))["gap_kimg"] == 5.0
  sys.argv = ["fewshot_numbers", "--outdir", str(tmp_path)]
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    fewshot_numbers.main()
  assert "| freezed | 10 | 1 | 7.5 | 0.75 | 6.0 | 6.00 | 45.00 | 45.00 |" in out.getvalue()
  assert "affine" not in out.getvalue()


def test_fewshot_step_time_runs_exact_steps_and_keeps_each_launchs_later_intervals(tmp_path):
  base = transfer_study.load_config(transfer_study._path("configs/demo_anime.py"))
  for arm in ("finetune", "freezed_cdc", "ewc"):
    for steps in (24, 48, 72):  # 72 * 32 / 1000 = 2.304 would give 73 steps by ceil in floats
      overrides = fewshot_step_time.arm_overrides(arm, steps, base.train.batch_size)
      config = transfer_study.build_config(base, overrides)
      assert config_lib.num_steps(config) == steps
      assert (config.eval.every_kimg, config.train.log_every, config.data.num_images) == (0.0, 8, 10)
  # Two launches of 24 steps: each one's first interval (after its start) is left out.
  for step in range(8, 49, 8):
    jsonl.append(str(tmp_path / "metrics.jsonl"), dict(step=step, sec_per_kimg=float(step)))
  assert fewshot_step_time.launch_intervals(str(tmp_path), 0, 24) == [16.0, 24.0]
  assert fewshot_step_time.launch_intervals(str(tmp_path), 24, 48) == [40.0, 48.0]
