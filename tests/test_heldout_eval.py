"""Evaluation against a folder of held-out images (``eval.real_folder``, ``--real_folder``):
prepared like a training folder, it gives the same numbers as the same images held out another
way, every record says which images it was measured against, and ``--mode eval`` refuses config
overrides it would ignore."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import tiny
from gantl_jax import errors
from gantl_jax import images as image_io
from gantl_jax import metrics
from gantl_jax.cli import evaluate
from gantl_jax.data import checks, synthetic
from gantl_jax.errors import DataError
from gantl_jax.training import loop as train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_REAL = 48


def _config(tmp, **eval_overrides):
  c = tiny.get_config()
  c.model.update(mbstd_group_size=1)
  c.train.update(total_kimg=0.04, log_every=1, pl_batch_shrink=1)
  c.checkpoint.update(every_steps=5)
  c.data.update(data_dir=str(tmp / "tfds"))
  c.eval.update(dict(dict(every_kimg=0.04, metrics="swd", num_fake=32, num_real=NUM_REAL, batch_size=16),
                     **eval_overrides))
  return c


@pytest.fixture(scope="module")
def held_out_folder(tmp_path_factory):
  """The first NUM_REAL held-out images of the tiny config's synthetic domain, as PNG files
  named in their order."""
  c = tiny.get_config()
  folder = tmp_path_factory.mktemp("held_out")
  pixels = synthetic.render(c.data.domain, range(checks.HELD_OUT_START, checks.HELD_OUT_START + NUM_REAL),
                            resolution=c.model.resolution, seed=c.data.seed)
  for i, image in enumerate(pixels):
    image_io.save_png(image, str(folder / f"{i:04d}.png"))
  return str(folder)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, held_out_folder):
  """One run evaluated against the synthetic held-out set, one against the same images as a folder."""
  tmp = tmp_path_factory.mktemp("runs")
  train.train_and_evaluate(_config(tmp, heldout=True), str(tmp / "heldout"))
  train.train_and_evaluate(_config(tmp, real_folder=held_out_folder), str(tmp / "folder"))
  return tmp


def _evals(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "eval.jsonl"))]


def test_a_folder_of_the_held_out_images_gives_the_held_out_value(runs, held_out_folder):
  (by_domain,), (by_folder,) = _evals(runs / "heldout"), _evals(runs / "folder")
  assert by_folder["swd"] == by_domain["swd"]  # the same pixels in the same order: the same number
  assert by_folder["reals"] == f"{NUM_REAL} held-out images of eval.real_folder={held_out_folder}"
  assert by_domain["reals"].startswith(f"{NUM_REAL} held-out '{tiny.get_config().data.domain}' images")


def test_offline_eval_takes_a_folder_and_says_so(runs, held_out_folder):
  default = evaluate.evaluate_workdir(str(runs / "heldout"))
  assert default["swd"] == _evals(runs / "heldout")[0]["swd"]
  record = evaluate.evaluate_workdir(str(runs / "heldout"), real_folder=held_out_folder)
  assert record["swd"] == default["swd"] and record["reals"].endswith(f"eval.real_folder={held_out_folder}")
  assert _evals(runs / "heldout")[-1] == record


def test_offline_eval_of_the_training_images_is_labelled_as_such(runs, tmp_path):
  """The training images are another reference: another value, and the record says which."""
  workdir = runs / "heldout"
  config = json.load(open(workdir / "config.json"))
  config["eval"]["heldout"] = False
  (tmp_path / "run").mkdir()
  os.symlink(workdir / "checkpoints", tmp_path / "run" / "checkpoints")
  (tmp_path / "run" / "config.json").write_text(json.dumps(config))
  record = evaluate.evaluate_workdir(str(tmp_path / "run"))
  domain = config["data"]["domain"]
  assert record["reals"].startswith(f"{NUM_REAL} training images (synthetic '{domain}'; not held out")
  assert record["swd"] != _evals(workdir)[0]["swd"]


def test_a_missing_real_folder_names_the_key(runs, tmp_path):
  with pytest.raises(DataError, match=r"^eval.real_folder: image folder does not exist: .*/nope$"):
    evaluate.evaluate_workdir(str(runs / "heldout"), real_folder=str(tmp_path / "nope"))


def test_eval_mode_refuses_config_overrides_it_would_ignore(tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--mode", "eval", "--workdir",
                         str(tmp_path / "run"), "--config", os.path.join(ROOT, "configs", "tiny.py"),
                         "--config.data.folder=/somewhere"], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.splitlines() == [
      "error: --config.data.folder: --mode eval reads the run's own config from --workdir, so this "
      "override would be ignored; only parallel.*, train.compile_cache_dir* apply here. Use the mode's "
      "own flags instead (--helpfull lists them; eval and compare measure against held-out images "
      "given as --real_folder)"]


def test_sample_evaluators_in_training_and_offline(runs, held_out_folder, tmp_path):
  """A transfer run whose G is wholly frozen keeps the source's G-EMA: its samples correspond to
  the source's one for one (correlation 1), and the evaluators run in training and offline."""
  c = _config(tmp_path, real_folder=held_out_folder, metrics="swd,diversity,copies,correspondence",
              num_diagnostic=24)
  c.transfer.update(source=str(runs / "heldout" / "checkpoints"))
  c.freeze.update(g=".*")
  c.checkpoint.keep_best = "diversity"
  train.train_and_evaluate(c, str(tmp_path / "run"))
  (record,) = _evals(tmp_path / "run")
  assert record["correspondence"] == pytest.approx(1.0, abs=1e-6)
  assert record["diversity"] == record["pyramid_intra_cluster"] > 0
  assert 0 <= record["copies"] <= 1 and record["pyramid_diversity_ratio"] > 0
  offline = evaluate.evaluate_workdir(str(tmp_path / "run"))
  for key in ("diversity", "copies", "correspondence", "pyramid_diversity_ratio"):
    assert offline[key] == pytest.approx(record[key], rel=1e-6), key


def test_sample_evaluators_say_what_they_lack(tmp_path):
  from gantl_jax import config as config_lib
  with pytest.raises(errors.ConfigError, match="'copies' compares samples with held-out reals"):
    config_lib.resolve(_config(tmp_path, metrics="copies"))
  with pytest.raises(errors.ConfigError, match="'correspondence' .* needs a transfer run"):
    config_lib.resolve(_config(tmp_path, metrics="correspondence"))
  (tmp_path / "vgg.npz").write_bytes(b"not weights")
  bad = _config(tmp_path, metrics="diversity", lpips_weights=str(tmp_path / "vgg.npz"))
  with pytest.raises(errors.ConfigError, match=r"^eval.lpips_weights='.*vgg.npz': "):
    metrics.get_evaluators(bad.eval)


def test_offline_class_share_from_a_labelled_folder(runs, held_out_folder, tmp_path):
  """``--mode eval`` with a labelled folder (the domain's held-out images and flat grey frames):
  the shares of the two labels are measured on the run's samples and add up to 1."""
  folder = tmp_path / "labelled"
  folder.mkdir()
  for i, name in enumerate(sorted(os.listdir(held_out_folder))[:8]):
    os.symlink(os.path.join(held_out_folder, name), folder / f"domain_{i}.png")
    image_io.save_png(np.full((16, 16, 3), 40 * (i % 4), np.uint8), str(folder / f"grey_{i}.png"))
  record = evaluate.evaluate_workdir(str(runs / "heldout"), metrics="class_share", label_folder=str(folder),
                                     target_label="domain")
  assert record["class_share"] == record["class_share_domain"]
  assert record["class_share_domain"] + record["class_share_grey"] == pytest.approx(1.0)
  assert _evals(runs / "heldout")[-1] == record
