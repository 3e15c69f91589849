"""The speed tools: the bench's JSON record, the matmul-rate probe and the step profiler
(benchmarks/profile_step.py) on CPU. No speed is asserted: the rates must follow from the times
the record reports, and the FLOP counts lie in the range measured for the config."""
import ctypes
import ctypes.util
import json
import types

import jax
import jax.numpy as jnp
import pytest

from configs import tiny
from gantl_jax import config as config_lib
from gantl_jax.cli import bench
from gantl_jax.models import ops
from gantl_jax.training import compilation



def small_config():
  """8 px, no lazy regularisers: one step variant, seconds to compile."""
  c = tiny.get_config()
  c.model.update(resolution=8, z_dim=16, w_dim=16, channel_base=64, channel_max=16)
  c.train.update(batch_size=4, r1_gamma=0.0, pl_weight=0.0)
  return config_lib.resolve(c)


def load_profile_step():
  """benchmarks/profile_step.py, imported only by the tests that use it (it defines absl flags)."""
  from benchmarks import profile_step  # pylint: disable=import-outside-toplevel
  return profile_step


@pytest.fixture(scope="module")
def record():
  return bench.bench(small_config(), num_steps=2, repeats=1, name="small")


def test_bench_record_has_the_speed_fields(record):
  line = json.loads(json.dumps(record))  # what the bench prints
  assert line["compute_dtype"] == "float32" and line["num_low_precision_res"] == 0
  # On CPU train.variant_programs 'auto' compiles one merged program.
  assert line["variant_programs"] == "merged"
  assert list(line["compile_s_per_variant"]) == list(line["compile_cpu_s_per_variant"]) == ["merged"]
  assert line["device_peak_mb"] is None  # CPU keeps no device memory statistics
  assert line["peak_rss_mb"] > 0 and line["gflop_per_step"] > 0 and line["gflop_per_s"] > 0
  assert 0 < line["rss_after_steps_mb"] <= line["peak_rss_mb"]
  assert line["matmul_gflop_per_s"] > 0
  assert line["fraction_of_matmul"] == pytest.approx(line["gflop_per_s"] / line["matmul_gflop_per_s"], rel=2e-3)
  assert line["backend"] == "cpu" and line["load_avg_1m_start"] >= 0
  # The rates follow from the one repeat's time, as printed (rounded to 0.1 ms and 0.1 s).
  step_ms = line["step_ms_median"]
  assert line["step_ms_all"] == [step_ms] and 0 < step_ms < 60_000
  rounding = 0.05 / step_ms + 1e-3
  assert line["images_per_s"] == pytest.approx(line["batch"] * 1000 / step_ms, rel=rounding)
  assert line["sec_per_kimg"] == pytest.approx(1000 / line["images_per_s"], abs=0.051)  # 0.1 s rounding
  assert line["gflop_per_s"] == pytest.approx(line["gflop_per_step"] * 1000 / step_ms, rel=rounding + 1e-2)
  # XLA's count for this config's step (jax 0.10.2: 0.01063), with room for another XLA's.
  assert 0.0085 < line["gflop_per_step"] < 0.013


def test_flop_count_sees_through_the_chunked_weight_gradient(monkeypatch):
  # The custom weight gradient in chunks is a scan, whose body XLA's cost analysis counts once:
  # counting the compiled program made bench32's 107 GFLOP per step read 89.
  whole = bench.compile_schedule(small_config(), 1).flops
  monkeypatch.setattr(ops, "WEIGHT_GRAD_CHUNK_ELEMENTS", 1)  # one sample per chunk
  chunked = bench.compile_schedule(small_config(), 1).flops
  assert list(whole.values()) == pytest.approx(list(chunked.values()), rel=1e-6)
  assert all(f > 0 for f in whole.values())


def test_matmul_rate_in_bf16():
  # 2-core CPU: far from 0 and from an accelerator's rate.
  assert 1e8 < bench.matmul_rate(jnp.bfloat16, n=128, repeats=2) < 1e13


def test_matmul_rate_is_the_flops_over_the_fastest_call(monkeypatch):
  ticks = iter([0.0, 3.0, 10.0, 10.5, 20.0, 22.0])  # three calls: 3 s, 0.5 s, 2 s
  monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
  assert bench.matmul_rate(jnp.float32, n=64, repeats=3) == 2 * 64 ** 3 / 0.5


def test_profile_step_on_cpu(tmp_path):
  profile_step = load_profile_step()
  summary = profile_step.profile(small_config(), 2, str(tmp_path))
  assert summary["plan"] == {"main": 2}
  assert {"conv forward", "dense matmuls"} <= set(summary["kinds"]), summary["kinds"]
  assert set(summary["kinds"]) <= set(profile_step.KINDS)
  assert summary["op_ms_per_step"] > 0 and summary["top_ops"]
  shares = sum(v["share"] for v in summary["kinds"].values())
  assert shares == pytest.approx(1.0, abs=0.01)
  for name in ("summary.json", "summary.md", "perfetto_trace.json.gz"):
    assert (tmp_path / name).exists(), name
  assert list(tmp_path.glob("trace/**/*.xplane.pb"))
  assert "| conv forward |" in (tmp_path / "summary.md").read_text()
  assert "| ops' union on /host:CPU XLA threads |" in (tmp_path / "summary.md").read_text()
  # What the model does (which part names survive depends on how XLA fused the ops; the
  # classification itself is test_source_part's).
  parts = {r["part"] for r in summary["by_part"]}
  assert "conv" in parts and parts <= set(profile_step.PARTS.values()) | {"other"}, parts
  assert {r["pass_"] for r in summary["by_part"]} <= set(profile_step.PASSES)
  assert sum(r["ms_per_step"] for r in summary["by_part"]) == pytest.approx(summary["op_ms_per_step"], rel=0.01)
  assert "| network | part | forward | backward | regularizers | all |" in (tmp_path / "summary.md").read_text()


# HLO op_names as the bench32 step's compiled program carries them.
@pytest.mark.parametrize("op_name,want", [
    ("jit(<lambda>)/jvp(Discriminator)/b32/conv0/conv/conv_general_dilated", ("D", "forward", "conv")),
    ("jit(<lambda>)/transpose(jvp(Discriminator))/b32/conv0/conv/conv_weight_grad/slice",
     ("D", "backward", "conv weight-grad")),
    ("jit(<lambda>)/transpose(jvp(Discriminator))/b32/conv1/conv_down2/fir/pad", ("D", "backward", "FIR filter")),
    ("jit(<lambda>)/transpose(jvp(Generator.synthesize))/synthesis/b32/conv0/conv_up2/unstack",
     ("G", "backward", "resampling phases")),
    ("jit(<lambda>)/cond/branch_1_fun/jvp(jvp(Generator.synthesize))/synthesis/b32/conv1/conv/conv_general_dilated",
     ("G", "regularizers", "conv")),
    # Separate programs: the regulariser is a second differentiation, with no cond around it.
    ("jit(step)/transpose(jvp(transpose(jvp(jvp(Discriminator)))))/b16/conv0/conv/conv_input_grad/x",
     ("D", "regularizers", "conv input-grad")),
    ("jit(<lambda>)/transpose(jvp(conv_down2))/conv/conv_weight_grad/slice", ("rest", "backward", "conv weight-grad")),
    ("jit(<lambda>)/transpose(jvp(conv))/conv_input_grad/rev", ("rest", "backward", "conv input-grad")),
    ("jit(<lambda>)/transpose(jvp(bias_act))/mul", ("rest", "backward", "bias + activation")),
    ("jit(<lambda>)/add", ("rest", "forward", "other")),
    ("", ("rest", "forward", "other")),
])
def test_source_part(op_name, want):
  assert load_profile_step().source_part(op_name) == want


# GPU kernel and HLO names as an H100 trace shows them (issue 14's profile): the kinds their
# table reports.
@pytest.mark.parametrize("kernel,hlo_op,info,kind", [
    ("sm80_xmma_fprop_implicit_gemm_indexed_tf32f32_tf32f32_f32_nhwckrsc_nchw", "cudnn-conv.454",
     dict(opcode="custom-call", target="__cudnn$convForward"), "conv forward"),
    ("sm90_xmma_wgrad_implicit_gemm_tf32", "cudnn-conv-bw-filter.12",
     dict(opcode="custom-call", target="__cudnn$convBackwardFilter"), "conv weight-grad"),
    ("sm90_xmma_dgrad_implicit_gemm_tf32", "cudnn-conv-bw-input.3",
     dict(opcode="custom-call", target="__cudnn$convBackwardInput"), "conv data-grad"),
    ("cudnn::cask::convertTensor_kernel", "cudnn-conv.454", dict(opcode="custom-call", target="__cudnn$convForward"),
     "layout conversions"),
    ("sm90_xmma_gemm_f32f32_tf32f32", "cublas-gemm.7", dict(opcode="custom-call", target="__cublas$gemm"),
     "dense matmuls"),
    ("slice_fusion_3", "slice_fusion.3", dict(opcode="fusion", fused_opcodes=["parameter", "slice"]),
     "slice / concat / pad / copy fusions"),
    ("input_reduce_fusion", "input_reduce_fusion", dict(opcode="fusion", fused_opcodes=["add", "reduce"]),
     "reductions"),
    ("loop_add_fusion_1", "loop_add_fusion.1", dict(opcode="fusion", fused_opcodes=["add", "multiply"]),
     "elementwise fusions"),
    ("conv_general_dilated.3", "conv_general_dilated.3",
     dict(opcode="convolution", op_name="jit(step)/transpose(jvp(conv_general_dilated))"),
     "conv backward (XLA:CPU, either)"),
    ("dot_general.2", "dot_general.2", dict(opcode="dot"), "dense matmuls"),
])
def test_kernel_kinds(kernel, hlo_op, info, kind):
  profile_step = load_profile_step()
  assert profile_step.classify(kernel, hlo_op, info) == kind


def test_hlo_index_reads_compiled_text():
  profile_step = load_profile_step()

  def f(x, w):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jnp.tanh(y) * 2.0)

  x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
  index = profile_step.hlo_index(jax.jit(f).lower(x, w).compile().as_text())
  opcodes = {v["opcode"] for v in index.values()}
  assert "parameter" in opcodes and ({"convolution", "fusion"} & opcodes), opcodes
  fused = [v for v in index.values() if v["opcode"] == "fusion"]
  assert all(v["fused_opcodes"] for v in fused)


def test_release_free_heap_returns_scattered_free_pages():
  # What compiling leaves behind: freed blocks between live ones, which glibc keeps mapped.
  # 100 MB of 4 KB blocks, touched; every 16th stays allocated, so the heap cannot shrink.
  libc = ctypes.CDLL(ctypes.util.find_library("c"))
  if not hasattr(libc, "malloc_trim"):
    pytest.skip("not glibc")
  libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
  libc.free.argtypes = [ctypes.c_void_p]
  blocks = [libc.malloc(4000) for _ in range(25_000)]
  for b in blocks:
    ctypes.memset(b, 1, 4000)
  for i, b in enumerate(blocks):
    if i % 16:
      libc.free(b)
  before = bench.rss_mb()
  assert compilation.release_free_heap()
  after = bench.rss_mb()
  for b in blocks[::16]:
    libc.free(b)
  assert before - after > 50, (before, after)  # ~94 MB of the 100 are free pages
