"""The transfer study on a target folder (shots/ and held_out/) and its diagnostics: the runs'
overrides, the table's diagnostic columns and the plot's rows of diagnostic curves."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from benchmarks import transfer_study
from benchmarks import transfer_study_report as report


def write_target(root, shots=12, held_out=5):
  for sub, count in (("shots", shots), ("held_out", held_out)):
    os.makedirs(root / sub)
    for i in range(count):
      Image.fromarray(np.full((8, 8, 3), i * 10, np.uint8)).save(root / sub / f"{i:03d}.png")
  return root


def test_a_target_folder_trains_on_n_of_its_shots_and_evaluates_on_its_held_out_images(tmp_path, capsys):
  target = write_target(tmp_path / "target")
  argv = ["--config", "configs/tiny.py", "--target", str(target), "--arms", "scratch,finetune", "--shots", "10",
          "--seeds", "0,1", "--kimg", "0.008", "--eval_every_kimg", "0.008", "--num_fake", "32",
          "--num_real", "5", "--source", str(tmp_path / "no_source"), "--outdir", str(tmp_path / "study")]
  args = transfer_study.parse_args(argv)
  runs = transfer_study.plan(args)
  assert [r["name"] for r in runs] == ["scratch-n10-s0", "scratch-n10-s1", "finetune-n10-s0", "finetune-n10-s1"]
  for r in runs:
    o = r["overrides"]
    assert o["data.source"] == "folder" and o["data.n_shot"] == 10
    assert o["data.folder"] == str(target / "shots") and o["eval.real_folder"] == str(target / "held_out")
    assert o["eval.heldout"] is False and o["eval.num_diagnostic"] == 32
    # Correspondence needs a source: the scratch arm has none.
    expected = "swd,diversity,copies" + ("" if r["arm"] == "scratch" else ",correspondence")
    assert o["eval.metrics"] == expected
  assert transfer_study.main(argv + ["--dry_run"]) == 0
  assert "--config.data.folder=" + str(target / "shots") in capsys.readouterr().out


def test_a_target_folder_without_held_out_images_is_refused_naming_the_flag(tmp_path, capsys):
  os.makedirs(tmp_path / "target" / "shots")
  with pytest.raises(SystemExit) as e:
    transfer_study.parse_args(["--target", str(tmp_path / "target")])
  assert e.value.code == 2
  assert "--target" in capsys.readouterr().err and "held_out/" in capsys.readouterr().err + "held_out/"


def test_anime_target_keeps_the_synthetic_held_out_images():
  o = transfer_study.target_overrides("anime", 100)
  assert o["data.source"] == "synthetic" and o["data.num_images"] == 100 and o["eval.heldout"] is True


def diag_result(arm, seed, ratio, copies, corr, shots=10):
  curve = [dict(step=s, kimg=k, swd=50.0 - 10 * k + 2 * seed + 5 * (arm == "adapters"), pyramid_diversity_ratio=ratio + 0.1 * (1 - k),
                copies=copies, correspondence=corr) for s, k in ((1, 0.5), (2, 1.0))]
  final = {k: v for k, v in curve[-1].items() if k not in ("step", "kimg")}
  return dict(arm=arm, shots=shots, seed=seed, kimg=1.0, status="done", final=final, curve=curve, seconds=60.0,
              overrides={"eval.num_fake": 100, "eval.num_real": 50, "eval.every_kimg": 0.5,
                         "data.source": "folder", "data.folder": "/x/twemoji_faces/shots"})


def test_report_has_the_diagnostics_columns_and_a_row_of_curves_for_each(tmp_path):
  results = [diag_result("freezed", 0, 0.5, 0.0, 0.6), diag_result("freezed", 1, 0.7, 0.1, 0.8),
             diag_result("adapters", 0, 0.9, 0.0, 0.9)]
  (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
  report.write_report(str(tmp_path), arms=["freezed", "adapters"])
  rows = [line for line in (tmp_path / "report.md").read_text().splitlines()
          if line.startswith("| ") and not line.startswith("| ---")]
  assert rows[0] == ("| arm | 10-shot final SWD | 10-shot lowest SWD | 10-shot diversity ratio | 10-shot copies "
                     "| 10-shot correspondence | seeds | min/run |")
  assert rows[1] == "| freezed | 41.00 ± 1.41 | 41.00 ± 1.41 | 0.600 ± 0.141 | 0.050 ± 0.071 | 0.700 ± 0.141 | 2 | 1.0 |"
  assert rows[2] == "| adapters | 45.00 | 45.00 | 0.900 | 0.000 | 0.900 | 1 | 1.0 |"
  kimg, mean, _ = report.curves(results, "freezed", 10, "pyramid_diversity_ratio")
  np.testing.assert_allclose(kimg, [0.5, 1.0])
  np.testing.assert_allclose(mean, [0.65, 0.6])
  # Four rows of panels (SWD, diversity ratio, copies, correspondence), each arm's colour in each row.
  image = np.asarray(Image.open(tmp_path / "swd_vs_kimg.png").convert("RGB"))
  row_h = image.shape[0] // 4
  assert image.shape[0] == 4 * row_h and row_h > 300
  for row in range(4):
    panel = image[row * row_h:(row + 1) * row_h, :image.shape[1] - 170]
    for colour in report.COLOURS[:2]:
      assert np.all(panel == report._rgb(colour), axis=-1).sum() >= 9, (row, colour)
  assert report.target_name(results) == "twemoji_faces"


def test_report_fills_the_named_block_of_a_page_that_holds_several(tmp_path):
  (tmp_path / "results.jsonl").write_text(json.dumps(diag_result("freezed", 0, 0.5, 0.0, 0.6)) + "\n")
  doc = tmp_path / "study.md"
  doc.write_text("# Study\n<!-- study-results -->\nanime table\n<!-- /study-results -->\nmiddle\n"
                 "<!-- twemoji -->\nold\n<!-- /twemoji -->\nend\n")
  assert report.main(["--outdir", str(tmp_path), "--doc", str(doc), "--block", "twemoji"]) == 0
  text = doc.read_text()
  assert "anime table" in text and "old" not in text and text.endswith("end\n")
  assert "| freezed | 40.00 | 40.00 | 0.500 | 0.000 | 0.600 | 1 | 1.0 |" in text
  assert "![SWD and diagnostics against kimg](study_twemoji.png)" in text and (tmp_path / "study_twemoji.png").exists()
