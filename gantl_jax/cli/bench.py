"""Training-speed benchmark and FLOP counts of the train step, one JSON line out.

    python -m gantl_jax.cli.bench --config configs/bench32.py [--config.model.conv_impl=xla] [--steps 16]
    python -m gantl_jax.cli.bench --config configs/demo_anime.py --freeze_flops

It builds the state under ``jit``, compiles the train-step programs the lazy-regularisation
schedule needs (one per variant, or one merged program: ``train.variant_programs``), timing the
compiles in wall and in CPU seconds (the latter meaningful on a shared machine), warms each up
once, then times ``--steps`` steps that follow the real schedule (path length every
``pl_interval``, R1 every ``r1_interval``), blocking only at the end. Real images are uniform noise
in [-1, 1]: no data pipeline, so this is the model's speed. FLOPs come from XLA's cost analysis of
the compiled programs (of the lowered ones with XLA's own convolution gradients where the step
runs the custom backward, whose scan XLA would count once), weighted by how often the schedule
runs each variant; the device's own
matmul rate in the step's compute dtype is measured once (:func:`matmul_rate`) so that the step's
rate can be read as a fraction of it. Memory: the host's peak RSS and the device's peak bytes in
use (``null`` where the backend keeps no statistics, as on CPU). ``--freeze_flops`` prints
instead the FLOPs of one step with the config's freezing and with nothing frozen: frozen
parameters cost no weight-gradient FLOPs.

This module is the one place that compiles a step for counting (:func:`compile_step`,
:func:`flops`).
"""
from __future__ import annotations

import collections
import functools
import json
import os
import resource
import statistics
import time
from typing import Any, Callable, NamedTuple

from absl import app, flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gantl_jax import config as config_lib
from gantl_jax.models import ops
from gantl_jax.training import compilation
from gantl_jax.training import parallel
from gantl_jax.training import state as state_lib
from gantl_jax.training import steps


def cpu_seconds() -> float:
  """User + system CPU time of this process so far, all threads (``resource.getrusage``)."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def rss_mb() -> float | None:
  """This process's resident memory now, in MB (Linux ``/proc/self/statm``; None elsewhere)."""
  try:
    with open("/proc/self/statm") as f:
      return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20, 1)
  except (OSError, ValueError, IndexError):
    return None


def _significant(x: float, digits: int = 4) -> float:
  return float(f"{x:.{digits}g}")


def device_peak_mb(device=None) -> float | None:
  """Peak bytes in use on ``device`` (default: the first) in MB, or None where the backend keeps no
  memory statistics (CPU)."""
  stats = (device or jax.devices()[0]).memory_stats()
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return round(stats["peak_bytes_in_use"] / 2 ** 20, 1)


def matmul_rate(dtype, n: int | None = None, repeats: int = 10) -> float:
  """The default device's measured FLOP/s on an n x n by n x n ``jnp.dot`` in ``dtype`` at the
  default precision (TF32 for float32 on recent NVIDIA GPUs): the fastest of ``repeats`` timed
  calls after a warm-up (the chip's rate, as free of a shared machine's load as it gets). n
  defaults to 4096 on accelerators and 1024 on CPU. The operands are random normal numbers:
  zeros run faster on some chips."""
  n = n or (1024 if jax.default_backend() == "cpu" else 4096)
  a, b = (jax.random.normal(k, (n, n), jnp.float32).astype(dtype)
          for k in jax.random.split(jax.random.key(0), 2))
  dot = jax.jit(jnp.dot)
  jax.block_until_ready(dot(a, b))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(dot(a, b))
    times.append(time.perf_counter() - t0)
  return 2 * n ** 3 / min(times)


def flops(compiled) -> float:
  """XLA's FLOP estimate of one compiled (or lowered) program (the API returns a dict or a list of
  dicts)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))


def compile_step(config: ml_collections.ConfigDict, step_flags: steps.StepFlags = steps.StepFlags(),
                 nets: state_lib.Networks | None = None):
  """The train step of a resolved ``config`` with ``step_flags``, compiled for one device from
  abstract shapes (nothing is allocated)."""
  nets = nets or state_lib.build_networks(config)
  m = config.model
  abstract_state = jax.eval_shape(lambda: state_lib.init_state(nets, 0))
  batch = jax.ShapeDtypeStruct((config.train.batch_size, m.resolution, m.resolution, m.img_channels), jnp.float32)
  step = functools.partial(steps.make_train_step(config, nets), flags=step_flags)
  return jax.jit(step).lower(abstract_state, batch).compile()


def _flop_counting_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` itself, or where it runs the custom convolution backward, a copy with XLA's own
  gradients: the same math, but the custom weight gradient is a scan, whose body XLA's cost
  analysis counts once (bench32: 104.6 GFLOP per step counted this way, 107.0 from the custom
  backward before it had a scan)."""
  if ops.resolve_conv_impl(config.model.conv_impl) != "custom":
    return config
  counting = config.copy_and_resolve_references()
  counting.model.conv_impl = "xla"
  return counting


def freeze_flops(config: ml_collections.ConfigDict) -> dict:
  """FLOPs of one plain step with the config's freezing and with nothing frozen."""
  config = _flop_counting_config(config)
  unfrozen = ml_collections.ConfigDict(config.to_dict())
  unfrozen.freeze.update(preset="none", g="", d="")
  frozen, everything = flops(compile_step(config)), flops(compile_step(unfrozen))
  return dict(preset=config.freeze.preset, resolution=config.model.resolution,
              batch_size=config.train.batch_size, flops_frozen=frozen, flops_unfrozen=everything,
              ratio=frozen / everything)


class Schedule(NamedTuple):
  """The train step of a config compiled for ``plan``, the flags of ``num_steps`` scheduled steps:
  ``programs[flags](state, real)`` runs one step; the compiled programs, and each compile's wall
  and CPU seconds, by name (``compilation.variant_name`` of the program key); XLA's FLOP count
  per variant."""
  state: Any
  real: jax.Array
  plan: list[steps.StepFlags]
  programs: dict[steps.StepFlags, Callable]
  compiled: dict[str, Any]
  compile_s: dict[str, float]
  compile_cpu_s: dict[str, float]
  flops: dict[steps.StepFlags, float]


def _one_device_step(config, nets, variant_programs: str | None = None):
  """The loop's own train step (``parallel.make_step``, ``jit`` on a mesh of the first device:
  the bench times one device) and that mesh; ``variant_programs`` overrides the config's."""
  if variant_programs is not None:
    config = config.copy_and_resolve_references()
    config.train.variant_programs = variant_programs
  mesh = parallel.make_mesh(jax.devices()[:1])
  return parallel.make_step(config, nets, "jit", mesh), mesh


def compile_schedule(config, num_steps: int, compiler_options: dict | None = None) -> Schedule:
  """Builds the state of a resolved ``config`` and compiles (timed, tracing included) the
  train-step programs its first ``num_steps`` steps need, the state donated: one per variant, or
  with merged variants (``train.variant_programs``) one per value of the static flags. Real
  images are uniform noise in [-1, 1].

  ``compiler_options`` (XLA debug options, e.g. ``{'xla_backend_optimization_level': 1}``) are
  passed to every compile."""
  nets = state_lib.build_networks(config)
  step, mesh = _one_device_step(config, nets)
  state = parallel.create_state(nets, config.seed, "jit", mesh)
  m, t = config.model, config.train
  real = parallel.place_batch(np.random.default_rng(0).uniform(
      -1, 1, (t.batch_size, m.resolution, m.resolution, m.img_channels)).astype(np.float32), "jit", mesh)
  merged = steps.merged_variants(t)
  plan = [steps.schedule(i, config) for i in range(num_steps)]
  first_index = {}  # a step of each variant, to lower and run that variant's program with
  for i, variant in enumerate(plan):
    first_index.setdefault(variant, i)
  variants = sorted(first_index, reverse=True)
  keys = {v: steps.program_key(v, merged) for v in variants}
  programs, compiled, compile_s, compile_cpu_s, step_flops = {}, {}, {}, {}, {}
  for variant in variants:
    name = compilation.variant_name(keys[variant])
    if name not in compiled:
      t0, c0 = time.perf_counter(), cpu_seconds()
      compiled[name] = step.lower(state, real, first_index[variant]).compile(compiler_options)
      compile_s[name], compile_cpu_s[name] = time.perf_counter() - t0, cpu_seconds() - c0
    args = (None, *step.flag_args(first_index[variant]))  # no frozen networks; the merged flags
    programs[variant] = lambda s, r, c=compiled[name], a=args: c(s, r, *a)
    step_flops[variant] = flops(compiled[name])
  compilation.release_free_heap()  # as the loop does after compiling (the lowering below is the bench's own)
  counting = _flop_counting_config(config)
  if counting is not config:  # each variant's lowered (unoptimised) program, counted in full
    separate, _ = _one_device_step(counting, state_lib.build_networks(counting), "separate")
    step_flops = {v: flops(separate.lower(state, real, first_index[v])) for v in variants}
  elif merged:
    # XLA counts a conditional at its largest branch, so a merged program counts as its fullest
    # variant; each variant gets that count scaled by its share in the lowered (unoptimised)
    # programs' counts of the separate variants, which agrees with compiling each to ~1%.
    separate, _ = _one_device_step(config, nets, "separate")
    lowered = {v: flops(separate.lower(state, real, first_index[v])) for v in variants}
    for v in variants:
      step_flops[v] *= lowered[v] / max(lowered[u] for u in variants if keys[u] == keys[v])
  compilation.release_free_heap()
  return Schedule(state, real, plan, programs, compiled, compile_s, compile_cpu_s, step_flops)


def run_plan(schedule: Schedule, state, plan=None):
  """Runs the steps of ``plan`` (default: the schedule's) from ``state``, blocking at the end
  only; returns the final (state, metrics)."""
  metrics = None
  for variant in schedule.plan if plan is None else plan:
    state, metrics = schedule.programs[variant](state, schedule.real)
  return jax.block_until_ready((state, metrics))


LOSSES = ("g_loss", "d_loss", "pl_penalty", "r1_penalty")


def train_losses(config, images: np.ndarray, num_steps: int) -> tuple[dict[str, np.ndarray], Any]:
  """The losses of ``num_steps`` train steps of a resolved ``config`` from its seed, on batches
  taken in turn from ``images`` (float [-1, 1], NHWC, at least one batch): ({name: [num_steps]},
  final state). Losses are NaN where a lazy phase did not run; ``'finite_params'`` is 1 where every
  parameter of G, G-EMA and D was finite after the step. For comparing precisions on identical
  data and latents."""
  nets = state_lib.build_networks(config)
  step, mesh = _one_device_step(config, nets)
  state = parallel.create_state(nets, config.seed, "jit", mesh)
  finite = jax.jit(lambda s: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(
      [state_lib.network(s, n).params for n in state_lib.NETWORKS])])))
  b = config.train.batch_size
  out = {name: [] for name in LOSSES + ("finite_params",)}
  for i in range(num_steps):
    start = (i * b) % (len(images) - b + 1)
    state, metrics = step(state, parallel.place_batch(np.asarray(images[start:start + b], np.float32),
                                                      "jit", mesh), i)
    metrics = jax.device_get(metrics)
    for name in LOSSES:
      out[name].append(float(metrics[name]))
    out["finite_params"].append(float(finite(state)))
  return {k: np.asarray(v) for k, v in out.items()}, state


def bench(config, num_steps: int, repeats: int, name: str = "", compiler_options: dict | None = None) -> dict:
  """Compiles, warms up and times the train step of a resolved ``config``; returns the record.
  ``compiler_options``: see :func:`compile_schedule`."""
  load_at_start = os.getloadavg()[0]
  m, t = config.model, config.train
  sched = compile_schedule(config, num_steps, compiler_options)
  # Warm-up: each variant once (first-run allocations, thread pools).
  state, _ = run_plan(sched, sched.state, list(sched.programs))

  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    state, _ = run_plan(sched, state)
    times.append(time.perf_counter() - t0)
  sec = statistics.median(times)
  rss_after_steps = rss_mb()  # before matmul_rate's operands are allocated

  images_per_s = num_steps * t.batch_size / sec
  counts = collections.Counter(sched.plan)
  flops_per_step = sum(sched.flops[v] * c for v, c in counts.items()) / num_steps
  flop_per_s = flops_per_step * num_steps / sec
  peak_matmul = matmul_rate(jnp.dtype(m.compute_dtype))
  return dict(
      config=name,
      resolution=m.resolution, batch=t.batch_size, steps=num_steps, repeats=repeats,
      images_per_s=round(images_per_s, 2), sec_per_kimg=round(1000 / images_per_s, 1),
      step_ms_median=round(1000 * sec / num_steps, 1),
      step_ms_all=[round(1000 * x / num_steps, 1) for x in times],
      compute_dtype=m.compute_dtype, num_low_precision_res=m.num_low_precision_res,
      compile_s=round(sum(sched.compile_s.values()), 1),
      compile_s_per_variant={k: round(s, 1) for k, s in sched.compile_s.items()},
      compile_cpu_s=round(sum(sched.compile_cpu_s.values()), 1),
      compile_cpu_s_per_variant={k: round(s, 1) for k, s in sched.compile_cpu_s.items()},
      variant_programs="merged" if steps.merged_variants(t) else "separate",
      peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      rss_after_steps_mb=rss_after_steps,
      device_peak_mb=device_peak_mb(),
      # Significant digits, not decimals: the tiny test configs run at well under
      # 1 GFLOP/s, where a fixed 0.1 would round away the ratio below.
      gflop_per_step=_significant(flops_per_step / 1e9),
      gflop_per_s=_significant(flop_per_s / 1e9),
      matmul_gflop_per_s=_significant(peak_matmul / 1e9),
      fraction_of_matmul=_significant(flop_per_s / peak_matmul),
      compiler_options=compiler_options or {},
      conv_impl=ops.resolve_conv_impl(m.conv_impl), devices=jax.device_count(),
      backend=jax.default_backend(), jax=jax.__version__,
      load_avg_1m_start=round(load_at_start, 2), load_avg_1m=round(os.getloadavg()[0], 2),
  )


def main(argv):
  del argv
  config = config_lib.resolve(_CONFIG.value, jax.device_count())
  if _FREEZE_FLOPS.value:
    record = freeze_flops(config)
  else:
    name = os.path.splitext(os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])))[0]
    record = bench(config, _STEPS.value, _REPEATS.value, name, json.loads(_COMPILER_OPTIONS.value))
  print(json.dumps(record), flush=True)


if __name__ == "__main__":
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file (configs/*.py).")
  _STEPS = flags.DEFINE_integer("steps", 16, "Timed steps per repeat (a multiple of r1_interval "
                                "keeps the regularisation mix exact).")
  _REPEATS = flags.DEFINE_integer("repeats", 3, "Timing repeats; the median is reported.")
  _FREEZE_FLOPS = flags.DEFINE_bool("freeze_flops", False, "Print the FLOPs of one step with the "
                                    "config's freezing and with nothing frozen, instead of timing.")
  _COMPILER_OPTIONS = flags.DEFINE_string(
      "compiler_options", "{}", "XLA options for every variant's compile, as JSON, e.g. "
      "'{\"xla_backend_optimization_level\": 1}' (for measuring compile-time levers).")
  flags.mark_flags_as_required(["config"])
  app.run(main)
