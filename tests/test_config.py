"""config.resolve's validation, the configs' layering, and parse_seeds."""
import glob
import importlib
import json
import os
import subprocess
import sys

import pytest
from ml_collections import config_dict

from configs import base, tiny
from gantl_jax import config as config_lib
from gantl_jax import errors
from gantl_jax.cli.generate import parse_seeds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                      if not p.endswith("__init__.py"))


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_config_resolves(name):
  module = importlib.import_module(f"configs.{name}")
  config_lib.resolve(module.get_config())


def test_parsing_configs_imports_no_library_code():
  """A config is plain data: loading every one (as launch.py's flag does) imports neither jax nor
  tensorflow_datasets, and of gantl_jax only its defaults (plain data too), so a bad flag fails in
  a fraction of a second."""
  code = f"""
import sys
sys.path.insert(0, {ROOT!r})
from ml_collections import config_flags
from absl import flags
holder = config_flags.DEFINE_config_file("config")
for name in {CONFIG_NAMES!r}:
  flags.FLAGS["config"].parser.parse({os.path.join(ROOT, "configs")!r} + f"/{{name}}.py").to_dict()
heavy = sorted(({{m.split(".")[0] for m in sys.modules}} & {{"jax", "tensorflow_datasets"}})
               | ({{m for m in sys.modules if m.startswith("gantl_jax")}} - {{"gantl_jax", "gantl_jax.defaults"}}))
print(len({CONFIG_NAMES!r}), heavy)
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == [str(len(CONFIG_NAMES)), "[]"], out.stdout


def test_data_defaults_are_documented_in_defaults():
  """Every data key has a default in gantl_jax/defaults.py (which configs/base.py hands on),
  documented on its line."""
  keys = set(base.get_config().data)
  assert keys == {"source", "domain", "num_images", "folder", "n_shot", "seed", "mirror_dataset",
                  "xflip", "data_dir", "prefetch", "num_workers", "idx_dir", "classes"}
  with open(os.path.join(ROOT, "gantl_jax", "defaults.py")) as f:
    lines = f.read().splitlines()
  for key in keys:
    assert any(line.strip().startswith(f"{key}=") and "#" in line for line in lines), key


def _with(key: str, value):
  """tiny's config with one dotted key set (placeholders accept None)."""
  c = tiny.get_config()
  section, leaf = key.rsplit(".", 1)
  node = c
  for part in section.split("."):
    node = node[part]
  node[leaf] = value
  return c


# (key, bad value, words the one-line message must hold besides the key)
BAD = [
    ("model.mbstd_group_size", 0, ">= 1"),
    ("model.mbstd_num_channels", -1, ">= 0"),
    ("model.img_channels", 2, "set it to 3 (RGB) or 1 (grayscale"),
    ("model.img_channels", 4, "set it to 3 (RGB) or 1 (grayscale"),
    ("model.z_dim", 0, ">= 1"),
    ("model.mapping_lr_mul", 0.0, "positive"),
    ("model.conv_clamp", -1.0, "positive or None"),
    ("model.compute_dtype", "float16", "'float32' or 'bfloat16'"),
    ("model.num_low_precision_res", -1, "integer >= 0"),
    ("train.variant_programs", "fused", "'auto', 'separate', 'merged'"),
    ("train.pl_batch_shrink", 0, ">= 1"),
    ("train.log_every", 0, ">= 1"),
    ("train.log_every", -5, ">= 1"),
    ("train.r1_interval", 0, ">= 1"),
    ("train.sample_every", -1, ">= 0"),
    ("train.sample_grid", (4,), "two positive integers"),
    ("train.sample_grid", (4, 0), "two positive integers"),
    ("train.pl_weight", -2.0, ">= 0"),
    ("train.pl_decay", 1.5, "[0, 1]"),
    ("train.w_avg_beta", float("nan"), "[0, 1]"),
    ("train.ema_rampup", -0.1, ">= 0"),
    ("train.total_kimg", 0.0, "positive"),
    ("train.style_mixing_prob", 1.1, "[0, 1]"),
    ("checkpoint.every_steps", -1, ">= 0"),
    ("checkpoint.max_to_keep", 0, ">= 1"),
    ("optim.g.lr", -0.002, ">= 0"),
    ("optim.d.lr", -1.0, ">= 0"),
    ("optim.g.beta1", 1.0, "[0, 1)"),
    ("optim.d.beta2", -0.5, "[0, 1)"),
    ("optim.g.eps", 0.0, "positive"),
    ("freeze.g", "([", "invalid regular expression '(['"),
    ("freeze.d", "^b16/,b8/(", "invalid regular expression 'b8/('"),
    ("freeze.g_lr_mults", "([=2", "invalid regular expression '(['"),
    ("freeze.d_lr_mults", "^b4/", "must look like 'regex=multiplier'"),
    ("freeze.d_lr_mults", "^b4/=fast", "is not a number"),
    ("freeze.g_lr_mults", "^mapping/=-0.1", "finite number >= 0"),
    ("freeze.g_lr_mults", "^mapping/=nan", "finite number >= 0"),
    ("freeze.preset", "freezeD", "unknown preset"),
    # The data section is checked by the data layer's own rules (DataError), at start, without tfds.
    ("data.source", "web", "'synthetic', 'folder' or 'idx'"),
    ("data.domain", "cartoon", "unknown synthetic domain"),
    ("data.num_images", 0, "> 0"),
    ("data.n_shot", -1, ">= 0"),
    ("data.prefetch", -1, ">= 0"),
    ("data.num_workers", -2, ">= 0"),
]


@pytest.mark.parametrize("key,value,words", BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_bad_value_fails_with_one_line_naming_the_key(key, value, words):
  error = errors.DataError if key.startswith("data.") else errors.ConfigError
  with pytest.raises(error) as e:
    config_lib.resolve(_with(key, value))
  message = str(e.value)
  assert key in message and words in message and "\n" not in message, message


@pytest.mark.parametrize("key,value", [
    ("optim.g.lr", 0.0),                 # holds G fixed: legitimate
    ("optim.d.beta1", 0.0),
    ("checkpoint.max_to_keep", None),    # keeps every checkpoint
    ("checkpoint.every_steps", 0),       # only at the end
    ("train.sample_every", 0),           # only at the end
    ("train.ema_rampup", None),
    ("train.ema_rampup", 0.0),
    ("train.pl_weight", 0.0),
    ("model.mbstd_num_channels", 0),
    ("freeze.g_lr_mults", "^mapping/=0.1,torgb=2,b4=0"),
    ("freeze.d", "^b16/,^b8/conv\\d"),
    ("data.source", "folder"),           # the folder itself is checked where it is read
])
def test_legitimate_values_pass(key, value):
  config_lib.resolve(_with(key, value))


def test_placeholder_folder_is_left_to_prepare():
  c = _with("data.source", "folder")
  c.data.folder = config_dict.placeholder(str)
  config_lib.resolve(c)


@pytest.mark.parametrize("text,want", [("0-3,7", [0, 1, 2, 3, 7]), (" 1, 5 ,9 ", [1, 5, 9]),
                                       ("4", [4]), ("2-2", [2]), ("0-1,", [0, 1])])
def test_parse_seeds(text, want):
  assert parse_seeds(text) == want


@pytest.mark.parametrize("text,words", [("abc", "is not a seed or a range"), ("5-1", "runs backwards"),
                                        ("-1", "is not a seed"), ("1-2-3", "is not a seed"),
                                        ("", "holds no seed"), ("1.5", "is not a seed"),
                                        ("4294967296", "not below 2**32")])
def test_parse_seeds_errors_name_the_flag_and_the_form(text, words):
  with pytest.raises(errors.ConfigError) as e:
    parse_seeds(text)
  message = str(e.value)
  assert message.startswith("--seeds=") and words in message and "'0-15'" in message, message


def test_per_device_checks_wait_for_the_device_count():
  """Before the backend starts the device count is unknown (None): a batch that some device count
  cannot split passes, and the count given later decides, naming itself and the fix."""
  c = tiny.get_config()  # group 4
  c.train.batch_size = 6
  config_lib.resolve(c, num_devices=None)
  with pytest.raises(errors.ConfigError) as e:
    config_lib.resolve(c, num_devices=1)
  assert str(e.value) == ("model.mbstd_group_size=4 must divide the per-device batch 6 "
                          "(train.batch_size=6 over 1 device): minibatch-stddev groups never span "
                          "devices; use a train.batch_size that is a multiple of 4, or a "
                          "model.mbstd_group_size that divides 6")


def test_upgrade_fills_missing_keys_with_the_value_older_runs_had():
  """An older run's config gets the keys it lacks: the value runs had before the key where that
  differs from today's default, else the default. Its own values and unknown keys stay."""
  old = base.get_config().to_dict()
  del old["fewshot"], old["model"]["compute_dtype"], old["train"]["variant_programs"]
  old["model"]["resolution"] = 64
  old["retired_section"] = {"knob": 1}
  new = config_lib.upgrade(old)
  defaults = base.get_config().to_dict()
  assert new["fewshot"] == defaults["fewshot"]
  assert new["model"]["compute_dtype"] == "float32"
  assert new["train"]["variant_programs"] == "separate" != defaults["train"]["variant_programs"]
  assert new["model"]["resolution"] == 64 and new["retired_section"] == {"knob": 1}
  assert set(config_lib.VALUES_BEFORE_THE_KEY) <= {f"{s}.{k}" for s in defaults
                                                   if isinstance(defaults[s], dict) for k in defaults[s]}
  assert config_lib.upgrade(defaults) == defaults


def test_resume_check_compares_the_upgraded_old_config(tmp_path):
  """A workdir whose config.json predates some keys holds the same run when the new config has
  their old values, and another run when a key that was there differs."""
  from gantl_jax.training import loop  # pylint: disable=import-outside-toplevel
  config = config_lib.resolve(tiny.get_config())
  old = json.loads(config_lib.to_json(config))
  del old["augment"], old["fewshot"], old["model"]["num_low_precision_res"]
  (tmp_path / "config.json").write_text(json.dumps(old))
  loop.check_workdir(str(tmp_path), config)
  config.model.num_low_precision_res = 2
  with pytest.raises(errors.ConfigError, match=r"model.num_low_precision_res: 0 -> 2"):
    loop.check_workdir(str(tmp_path), config)
