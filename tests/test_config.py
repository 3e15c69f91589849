"""The configs' layering: plain data that every config resolves from."""
import glob
import importlib
import os
import subprocess
import sys

import pytest

from configs import base
from gantl_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                      if not p.endswith("__init__.py"))


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_config_resolves(name):
  module = importlib.import_module(f"configs.{name}")
  config_lib.resolve(module.get_config())


def test_parsing_configs_imports_no_library_code():
  """A config is plain data: loading every one (as launch.py's flag does) imports neither
  gantl_jax nor jax nor tensorflow_datasets, so a bad flag fails in a fraction of a second."""
  code = f"""
import sys
sys.path.insert(0, {ROOT!r})
from ml_collections import config_flags
from absl import flags
holder = config_flags.DEFINE_config_file("config")
for name in {CONFIG_NAMES!r}:
  flags.FLAGS["config"].parser.parse({os.path.join(ROOT, "configs")!r} + f"/{{name}}.py").to_dict()
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {{"gantl_jax", "jax", "tensorflow_datasets"}})
print(len({CONFIG_NAMES!r}), heavy)
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == [str(len(CONFIG_NAMES)), "[]"], out.stdout


def test_data_defaults_are_documented_in_base():
  """Every data key has a default in configs/base.py (the section moved out of the library)."""
  keys = set(base.get_config().data)
  assert keys == {"source", "domain", "num_images", "folder", "n_shot", "seed", "mirror_dataset",
                  "xflip", "data_dir", "prefetch", "num_workers"}
  with open(os.path.join(ROOT, "configs", "base.py")) as f:
    lines = f.read().splitlines()
  for key in keys:
    assert any(line.strip().startswith(f"{key}=") and "#" in line for line in lines), key
