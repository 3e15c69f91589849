"""--seeds and --grid of the sampling modes: a count too large for one call is a one-line error,
found before any list of seeds is made."""
import os
import subprocess
import sys
import time

import pytest

from gantl_jax.cli import generate
from gantl_jax.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_largest_call_passes():
  assert len(generate.parse_seeds("0-9999")) == 10_000
  assert generate.parse_grid("100x100") == (100, 100)


@pytest.mark.parametrize("text", ["0-4294967295", "0-10000", "5,0-9999", "0-5000,0-5000"])
def test_too_many_seeds_name_the_flag(text):
  t0 = time.time()
  with pytest.raises(ConfigError) as e:
    generate.parse_seeds(text)
  assert time.time() - t0 < 1
  assert str(e.value) == (f"--seeds={text!r} holds more than the 10,000 seeds of one call (all its images "
                          f"are held in memory); split it into several calls, e.g. --seeds=0-9999")


def test_too_large_grid_names_the_flag():
  with pytest.raises(ConfigError, match=r"^--grid='100000x100000': 10,000,000,000 images, more than the 10,000"):
    generate.parse_grid("100000x100000")


@pytest.mark.parametrize("mode", ["generate", "interpolate"])
def test_launch_says_it_in_one_line(mode, tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), "--mode", mode,
                         "--workdir", str(tmp_path / "run"), "--seeds", "0-4294967295"],
                        env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines() == [
      "error: --seeds='0-4294967295' holds more than the 10,000 seeds of one call (all its images are "
      "held in memory); split it into several calls, e.g. --seeds=0-9999"]
