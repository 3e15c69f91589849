"""benchmarks/gpu_check.sh on CPU: every part writes one well-formed JSON line, so that the one GPU
call cannot fail on a typo.

The full run (marked slow) uses configs/tiny.py shrunk to 8 px: compile is what costs, six
programs at XLA's optimisation level 0, 73 CPU seconds, 112 s on the 2-core box at load average 3-6,
56 s with the test session's compilation cache warm; it starts with this module and runs
beside the other tests (``background_jobs``, conftest.py). The failure paths run in seconds.
Part 5 (the official PyTorch step) is skipped with its reason here: torch is not in this
environment, nor the official source. Timeouts are generous: no assertion depends on the box's
speed.
"""
import json
import os
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
BENCH_PARTS = ("f32_merged", "f32_separate", "bf16_low4", "f32_direct")
OFFICIAL_PARTS = ("official_mixed", "official_tf32", "official_fp32")
KEYS = {"part", "status", "rc", "seconds", "args", "reason", "result"}


def run_check(out_dir, **env):
  """Runs the script with the tiny config into ``out_dir``; returns (its JSON lines, stdout)."""
  full_env = dict(os.environ, OUT=str(out_dir), PYTHON=sys.executable, GPU_CHECK_CONFIG="configs/tiny.py",
                  # One device and XLA's fastest compile (conftest's 8 simulated devices would
                  # split the batch).
                  XLA_FLAGS="--xla_backend_optimization_level=0", JAX_PLATFORMS="cpu",
                  GPU_CHECK_STEPS="4", GPU_CHECK_REPEATS="1", GPU_CHECK_PROFILE_STEPS="4",
                  GPU_CHECK_TOTAL_S="3000",
                  **{f"GPU_CHECK_TIMEOUT_{p.upper()}": "900" for p in BENCH_PARTS + ("profile",)})
  full_env.update(env)
  proc = subprocess.run(["bash", SCRIPT], env=full_env, capture_output=True, text=True, timeout=3600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(out_dir, "gpu_check.jsonl")) as f:
    lines = [json.loads(line) for line in f]
  for line in lines:
    assert set(line) == KEYS, line
  return lines, proc.stdout


def background_jobs(tmp_path_factory):
  """The full run starts with this module and runs beside the other tests (conftest.py): its
  parts compile in their own processes."""
  out = tmp_path_factory.mktemp("gpu_check")
  # A folder that looks like the official source, so that the torch check is what decides.
  official = tmp_path_factory.mktemp("official")
  os.makedirs(official / "training")
  (official / "training" / "networks.py").write_text("")

  def full():
    lines, stdout = run_check(out, GPU_CHECK_OFFICIAL_SRC=str(official),
                              GPU_CHECK_ARGS="--config.model.resolution=8 --config.model.channel_base=64 "
                                             "--config.model.channel_max=16")
    return out, lines, stdout
  return {"full": full}


@pytest.fixture(scope="module")
def full_run(background):
  out, lines, stdout = background[(__name__, "full")].wait()
  return out, {line["part"]: line for line in lines}, [line["part"] for line in lines], stdout


@pytest.mark.slow
def test_every_part_writes_its_line_in_order(full_run):
  _, _, order, _ = full_run
  assert order == list(BENCH_PARTS) + ["profile"] + list(OFFICIAL_PARTS)


@pytest.mark.slow
def test_bench_parts_run_what_they_name(full_run):
  _, parts, _, _ = full_run
  for name in BENCH_PARTS:
    line = parts[name]
    assert (line["status"], line["rc"], line["reason"]) == ("ok", 0, ""), line
    r = line["result"]
    assert r["images_per_s"] > 0 and r["resolution"] == 8 and r["steps"] == 4 and r["backend"] == "cpu"
  assert parts["f32_merged"]["result"]["variant_programs"] == "merged"
  assert parts["f32_separate"]["result"]["variant_programs"] == "separate"
  assert len(parts["f32_separate"]["result"]["compile_s_per_variant"]) == 2  # main, g_reg+d_reg
  bf16, direct = parts["bf16_low4"]["result"], parts["f32_direct"]["result"]
  assert (bf16["compute_dtype"], bf16["num_low_precision_res"], bf16["conv_impl"]) == ("bfloat16", 4, "custom")
  assert (direct["compute_dtype"], direct["conv_impl"]) == ("float32", "direct")
  # Parts 2 and 3 take the variant programs of the faster float32 line.
  faster = max(("f32_merged", "f32_separate"), key=lambda p: parts[p]["result"]["images_per_s"])
  expected = parts[faster]["result"]["variant_programs"]
  assert bf16["variant_programs"] == direct["variant_programs"] == expected


@pytest.mark.slow
def test_profile_is_of_the_fastest_part(full_run):
  out, parts, _, _ = full_run
  fastest = max(BENCH_PARTS, key=lambda p: parts[p]["result"]["images_per_s"])
  line = parts["profile"]
  assert line["status"] == "ok" and line["args"] == parts[fastest]["args"], line
  r = line["result"]
  assert r["profiled"] == fastest and r["wall_ms_per_step"] > 0 and r["op_ms_per_step"] > 0
  assert sum(k["share"] for k in r["kinds"].values()) == pytest.approx(1, abs=0.01)
  assert sum(r["plan"].values()) == 4
  for name in ("summary.md", "summary.json", "perfetto_trace.json.gz"):
    assert os.path.getsize(out / "profile" / name) > 0


@pytest.mark.slow
def test_official_parts_say_why_they_were_skipped(full_run):
  _, parts, _, _ = full_run
  for name in OFFICIAL_PARTS:
    line = parts[name]
    assert line["status"] == "skipped" and line["result"] is None, line
    assert line["reason"] in ("torch cannot be imported by " + sys.executable, "torch sees no CUDA device")


@pytest.mark.slow
def test_what_comes_back_fits_the_device_call(full_run):
  out, parts, _, stdout = full_run
  files = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs]
  assert len(files) <= 8 and max(os.path.getsize(f) for f in files) < 16 * 2 ** 20
  with tarfile.open(out / "logs.tar.gz") as tar:
    names = set(tar.getnames())
  for name in BENCH_PARTS + ("profile",):
    assert {f"logs/{name}.out", f"logs/{name}.log"} <= names
  summary = stdout.splitlines()
  assert [s.split()[0] for s in summary] == list(parts)  # one line per part, no ratio without the official
  assert open(out / "gpu_check_summary.txt").read() == stdout


def test_failed_cut_and_unstarted_parts_write_their_lines(tmp_path):
  # A bad override fails every bench part; the ones after a failure still run.
  lines, _ = run_check(tmp_path / "failed", GPU_CHECK_PARTS="f32_merged,bf16_low4,profile",
                       GPU_CHECK_ARGS="--config.model.no_such_key=1")
  assert [(l["part"], l["status"]) for l in lines] == [
      ("f32_merged", "failed"), ("bf16_low4", "failed"), ("profile", "skipped")]
  assert lines[0]["rc"] != 0 and "no_such_key" in lines[0]["reason"], lines[0]
  assert lines[2]["reason"] == "no bench part ended ok"
  # A part cut by its timeout: no bench compiles and runs in 1 s.
  lines, _ = run_check(tmp_path / "cut", GPU_CHECK_PARTS="f32_merged", GPU_CHECK_TIMEOUT_F32_MERGED="1",
                       GPU_CHECK_MIN_PART_S="1")
  assert [(l["part"], l["status"], l["rc"]) for l in lines] == [("f32_merged", "timeout", 124)]
  assert lines[0]["reason"] == "cut by its timeout of 1 s"
  # No time left: nothing starts.
  lines, _ = run_check(tmp_path / "none", GPU_CHECK_PARTS="f32_separate,official_fp32", GPU_CHECK_TOTAL_S="0",
                       GPU_CHECK_OFFICIAL_SRC=str(tmp_path / "absent"))
  assert [(l["part"], l["status"]) for l in lines] == [("f32_separate", "skipped"), ("official_fp32", "skipped")]
  assert lines[0]["reason"].startswith("not started: 0 s left")
  assert lines[1]["reason"].startswith("no official source at " + str(tmp_path / "absent"))
