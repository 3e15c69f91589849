"""launch.py's answer to a bad command line: one `error: ...` line, exit status 2, nothing written."""
import functools
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")


def _launch(tmp_path, *args):
  workdir = tmp_path / "run"
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--workdir", str(workdir), *args],
                        capture_output=True, text=True, timeout=300, cwd=tmp_path)
  return proc, workdir


CASES = {
    "unknown_key": (["--config", TINY, "--config.train.bach_size=8"],
                    "error: --config.train.bach_size: the config has no key train.bach_size; "
                    "did you mean train.batch_size?"),
    "unknown_section": (["--config", TINY, "--config.trian.batch_size=8"],
                        "error: --config.trian.batch_size: the config has no key trian; "
                        "did you mean train.batch_size?"),
    "key_below_a_value": (["--config", TINY, "--config.train.batch_size.x=1"],
                          "error: --config.train.batch_size.x: train.batch_size is a value (8), not a section"),
    "bad_type": (["--config", TINY, "--config.train.batch_size=abc"],
                 "error: --config.train.batch_size=abc: train.batch_size must be of type int "
                 "(invalid literal for int() with base 10: 'abc')"),
    "missing_config_file": (["--config", "nope/missing.py"],
                            "error: --config nope/missing.py: [Errno 2] No such file or directory: "
                            "'nope/missing.py'"),
    "missing_config_file_with_override": (["--config", "nope/missing.py", "--config.train.batch_size=8"],
                                          "error: --config nope/missing.py: [Errno 2] No such file or "
                                          "directory: 'nope/missing.py'"),
    "seeds_not_a_number": (["--mode", "generate", "--seeds", "abc"],
                           "error: --seeds='abc': 'abc' is not a seed or a range; give comma-separated "
                           "seeds or ranges LO-HI with 0 <= LO <= HI < 2**32, e.g. '0-15' or '1,5,9'"),
    "seeds_backwards": (["--mode", "generate", "--seeds", "5-1"],
                        "error: --seeds='5-1': the range '5-1' runs backwards; give comma-separated "
                        "seeds or ranges LO-HI with 0 <= LO <= HI < 2**32, e.g. '0-15' or '1,5,9'"),
    "grid_not_columns_x_rows": (["--mode", "generate", "--grid", "4"],
                                "error: --grid='4': give COLUMNSxROWS with both at least 1, e.g. '4x2' "
                                "(4 columns, 2 rows of consecutive seeds from the first of --seeds)"),
    "blend_without_parent": (["--mode", "blend", "--blend_resolution", "8"],
                             "error: --mode blend needs --blend_with (the other generator) and "
                             "--blend_resolution (the last block resolution from --workdir)"),
    "bad_freeze_regex": (["--config", TINY, "--config.freeze.g=(["],
                         "error: freeze.g: invalid regular expression '([' (unterminated character set "
                         "at position 1); give comma-separated Python regular expressions"),
    "log_every_zero": (["--config", TINY, "--config.train.log_every=0"],
                       "error: train.log_every must be >= 1, got 0"),
    "max_to_keep_zero": (["--config", TINY, "--config.checkpoint.max_to_keep=0"],
                         "error: checkpoint.max_to_keep must be >= 1 (or None to keep every checkpoint), got 0"),
}


def background_jobs(tmp_path_factory):
  """The launches of every case start with this module and run beside the other tests
  (conftest.py), one after another; each case's test reads its launch's outcome."""
  folders = {case: tmp_path_factory.mktemp(case) for case in sorted(CASES)}
  return {case: functools.partial(_launch, folders[case], *CASES[case][0]) for case in folders}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_command_line_is_one_line_and_status_2(background, case):
  _, want = CASES[case]
  proc, workdir = background[(__name__, case)].wait()
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stderr.splitlines() == [want]
  assert not workdir.exists()  # failed before writing anything


def test_per_device_batch_is_checked_with_the_real_device_count(tmp_path):
  """The device count is known only once the backend runs; the message must use it, not 1."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": " ".join(flags + ["--xla_force_host_platform_device_count=4"])}
  workdir = tmp_path / "run"
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--workdir", str(workdir),
                         "--config", TINY, "--config.train.batch_size=6"],
                        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stderr.splitlines() == [
      "error: train.batch_size=6 is not divisible by the 4 devices; use a multiple of 4 (for example 8)"]
  assert not workdir.exists()


@pytest.mark.parametrize("flag", ["--help", "--helpfull"])
def test_help_exits_0_and_lists_the_modes(tmp_path, flag):
  """Asking for help is no error: the usage on stdout, exit status 0, nothing written."""
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), flag],
                        capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "--mode: <train|generate|interpolate|blend|export|compare|eval>" in proc.stdout
  assert "--workdir" in proc.stdout and not list(tmp_path.iterdir())
