"""Where the train step's time goes: a jax.profiler trace of N steps, summed by kernel kind.

    python benchmarks/profile_step.py --config configs/bench256.py --steps 16 --out_dir /tmp/prof \
        [--variant schedule|main|g_reg|g_reg+d_reg|...] [--trace_dir DIR] [--config.key=value ...]

Compiles the step's variants (``gantl_jax.cli.bench.compile_schedule``), runs each once to warm up,
then traces ``--steps`` steps (the real lazy-regularisation schedule, or one variant repeated)
with ``jax.profiler.trace(create_perfetto_trace=True)``. The trace's op events (GPU kernels on the
device's stream lines; XLA:CPU thunks on the host's XLA thread pools) are joined by their
``hlo_op`` to the compiled HLO (opcode, custom-call target, fusion kind, source op name) and
summed per kind:

    conv forward | conv weight-grad | conv data-grad | conv backward (XLA:CPU, either) |
    dense matmuls | slice / concat / pad / copy fusions | layout conversions | reductions |
    elementwise fusions | rng | other

Writes to ``--out_dir``: ``perfetto_trace.json.gz`` (open it in ui.perfetto.dev),
``summary.json`` (per kind, the top ops, the top JAX sources (HLO ``op_name``) and the time by
network, pass and model part (``source_part``): ms per step, share, calls per step) and
``summary.md`` (the kind table and the network x part x pass table), and prints both. The profiler's own folder (with the xplane.pb
that TensorBoard's profile plugin reads) is ``--trace_dir``, by default ``out_dir/trace``. ``busy`` is the union of the op intervals per
step (per device, or per host thread pool on CPU); on a GPU, wall minus busy is the time the
device waited (launch gaps, host syncs).
"""
from __future__ import annotations

import collections
import glob
import json
import os
import re
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from gantl_jax import config as config_lib  # noqa: E402
from gantl_jax.cli import bench  # noqa: E402
from gantl_jax.training import compilation  # noqa: E402
from gantl_jax.training import steps  # noqa: E402

KINDS = ("conv forward", "conv weight-grad", "conv data-grad", "conv backward (XLA:CPU, either)",
         "dense matmuls", "slice / concat / pad / copy fusions", "layout conversions", "reductions",
         "elementwise fusions", "rng", "other")

# (kind, what is searched, pattern), first match wins. 'kernel' is the GPU kernel's name (on CPU
# the thunk's, i.e. the HLO name); 'target' a custom call's target; 'opcode' the HLO opcode, or for
# a fusion the opcodes inside it; 'name' the HLO instruction's name (XLA names fusions after what
# they hold: 'slice_fusion', 'input_reduce_fusion', 'loop_add_fusion', 'cudnn-conv-bw-filter.3').
RULES = (
    ("layout conversions", "kernel", r"convertTensor|nchwToNhwc|nhwcToNchw|transpose_kernel"),
    ("conv weight-grad", "target", r"convBackwardFilter"),
    ("conv data-grad", "target", r"convBackwardInput"),
    ("conv forward", "target", r"cudnn\$conv"),
    ("conv weight-grad", "kernel", r"wgrad"),
    ("conv data-grad", "kernel", r"dgrad"),
    ("conv forward", "kernel", r"fprop"),
    ("conv weight-grad", "name", r"^cudnn-conv-bw-filter"),
    ("conv data-grad", "name", r"^cudnn-conv-bw-input"),
    ("conv forward", "name", r"^cudnn-conv"),
    ("dense matmuls", "target", r"gemm|matmul|cublas"),
    ("dense matmuls", "kernel", r"gemm|cutlass|cublas|matmul"),
    ("conv backward (XLA:CPU, either)", "backward_conv", r"."),
    ("conv forward", "opcode", r"^convolution$"),
    ("dense matmuls", "opcode", r"^dot$"),
    ("rng", "opcode", r"^(rng-bit-generator|rng)$|threefry"),
    ("rng", "name", r"threefry"),
    ("reductions", "opcode", r"^reduce(-window)?$"),
    ("reductions", "name", r"reduce"),
    ("slice / concat / pad / copy fusions", "opcode",
     r"^(slice|dynamic-slice|dynamic-update-slice|concatenate|pad|copy|transpose|reverse|gather|scatter)$"),
    ("slice / concat / pad / copy fusions", "name", r"slice|concatenate|pad|copy|transpose|reverse|gather"),
    ("elementwise fusions", "opcode", r"^fusion$"),
    ("elementwise fusions", "name", r"fusion"),
)

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+) = (?:\([^=]*?\)|\S+) (?P<opcode>[a-z][\w\-]*)\(")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?(?P<name>[\w.\-]+) .*\{\s*$")


def hlo_index(hlo_text: str) -> dict[str, dict]:
  """Instruction name -> {'opcode', 'target', 'op_name', 'fused_opcodes'} from compiled HLO text
  (``compiled.as_text()``); for a fusion, fused_opcodes are the opcodes of the computation it
  calls."""
  index, computations, current = {}, collections.defaultdict(set), None
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if m:
      info = dict(opcode=m["opcode"], target="", op_name="", calls="")
      for key, pattern in (("target", r'custom_call_target="([^"]+)"'), ("op_name", r'op_name="([^"]+)"'),
                           ("calls", r"calls=%?([\w.\-]+)")):
        found = re.search(pattern, line)
        if found:
          info[key] = found.group(1)
      index[m["name"]] = info
      if current:
        computations[current].add(m["opcode"])
      continue
    c = _COMPUTATION.match(line)
    if c and "=" not in line.split("{")[0]:
      current = c["name"]
  for info in index.values():
    info["fused_opcodes"] = sorted(computations.get(info.pop("calls"), ())) if info["opcode"] == "fusion" else []
  return index

# What the model code an op comes from does, from the named scopes of gantl_jax/models (innermost
# wins): the part names of the breakdown table.
PARTS = {"conv_input_grad": "conv input-grad", "conv_weight_grad": "conv weight-grad", "conv": "conv",
         "fir": "FIR filter", "conv_up2": "resampling phases", "conv_down2": "resampling phases",
         "modulate": "modulation", "demodulate": "demodulation", "noise": "noise",
         "bias_act": "bias + activation"}
PASSES = ("forward", "backward", "regularizers")


def source_part(op_name: str) -> tuple[str, str, str]:
  """(network, pass, part) of an op from its HLO ``op_name`` (the traced JAX call path): the
  network is G, D or 'rest' (losses, optimizer, EMA); the pass is 'regularizers' inside the lazy
  R1 / path-length branch (a merged program's ``lax.cond``) or under a second differentiation
  (separate programs), 'backward' under a transpose, else 'forward'; the part is from PARTS."""
  network = ("G" if "Generator" in op_name else "D" if "Discriminator" in op_name else "rest")
  pass_ = ("regularizers" if "cond/branch" in op_name or op_name.count("jvp(") >= 2
           else "backward" if "transpose(" in op_name else "forward")
  # A scope at the top of a differentiated function is wrapped in JAX's transformation names:
  # "transpose(jvp(conv))".
  scopes = [re.sub(r"^(?:[\w.]+\()+([^()]*)\)+$", r"\1", c) for c in op_name.split("/")]
  part = next((PARTS[c] for c in reversed(scopes) if c in PARTS), "other")
  return network, pass_, part


def classify(kernel: str, hlo_name: str, info: dict | None) -> str:
  """The kind (one of KINDS) of one op event: GPU kernel (or CPU thunk) name, its hlo_op, and
  what :func:`hlo_index` knows of that instruction."""
  info = info or {}
  opcode = info.get("opcode", "")
  fused = info.get("fused_opcodes", [])
  # A fusion is what it holds: a fused reduce is a reduction, fused slices/pads are data movement.
  if opcode == "fusion" and fused:
    for kind in ("convolution", "dot", "reduce"):
      if kind in fused:
        opcode = kind
        break
    else:
      moving = {"slice", "dynamic-slice", "dynamic-update-slice", "concatenate", "pad", "copy",
                "transpose", "reverse", "gather", "scatter"}
      if moving & set(fused) and not (set(fused) - moving - {"parameter", "bitcast", "broadcast",
                                                               "reshape", "constant", "tuple",
                                                               "get-tuple-element"}):
        opcode = "copy"
  fields = dict(kernel=kernel, target=info.get("target", ""), opcode=opcode, name=hlo_name,
                # XLA:CPU runs the gradient of a conv as an HLO convolution whose source op is
                # the transpose of the forward one.
                backward_conv="x" if opcode == "convolution" and "transpose(" in info.get("op_name", "") else "")
  for kind, field, pattern in RULES:
    if fields[field] and re.search(pattern, fields[field]):
      return kind
  return "other"


def _hlo_stats(stats: dict) -> tuple:
  """(hlo_op, hlo_module, program_id) of an event, from its own stats or, where the profiler
  left them in an annotation string ('name:#hlo_op=fusion.3,hlo_module=jit_f,program_id=7#'),
  from that; None where absent."""
  op, module, program = stats.get("hlo_op"), stats.get("hlo_module"), stats.get("program_id")
  if op is None:
    for value in stats.values():
      if isinstance(value, str) and "hlo_op=" in value:
        found = {k: re.search(rf"{k}=([^,#]+)", value) for k in ("hlo_op", "hlo_module", "program_id")}
        op, module, program = (found[k].group(1) if found[k] else None
                               for k in ("hlo_op", "hlo_module", "program_id"))
        break
  return op, module, program


def op_events(profile, module: str) -> list[tuple]:
  """(device or thread pool, program id, kernel, hlo_op, start_ns, duration_ns) of the op events
  of the HLO module named ``module``, by start time: every kernel on a device plane's stream
  lines (but those another module's), XLA:CPU thunks on the host's XLA thread pools. Of nested
  events on one line (a while loop and its body), only the innermost count."""
  out = []
  for plane in profile.planes:
    on_device = plane.name.startswith("/device:")
    if not on_device and plane.name != "/host:CPU":
      continue
    for line in plane.lines:
      if on_device and not line.name.startswith("Stream"):
        continue  # derived lines ('XLA Ops', 'XLA Modules', 'Steps') repeat the streams' events
      if not on_device and not line.name.startswith("tf_XLA"):
        continue
      where = plane.name if on_device else "/host:CPU XLA threads"
      events = []
      for e in line.events:
        op, event_module, program = _hlo_stats(dict(e.stats))
        if (op is None and not on_device) or (event_module is not None and str(event_module) != module):
          continue
        events.append((e.start_ns, e.duration_ns, e.name, "" if op is None else str(op), program))
      events.sort()
      for i, (start, dur, name, op, program) in enumerate(events):
        nxt = events[i + 1] if i + 1 < len(events) else None
        if nxt and nxt[0] + nxt[1] <= start + dur:
          continue  # holds the next event: an outer (control-flow) op
        out.append((where, program, name, op, start, dur))
  return sorted(out, key=lambda e: e[4])


def _union_ns(intervals) -> float:
  total, end = 0.0, float("-inf")
  for start, dur in sorted(intervals):
    if start + dur > end:
      total += start + dur - max(start, end)
      end = start + dur
  return total


def summarize(events: list[tuple], indexes: dict, num_steps: int, wall_s: float) -> dict:
  """Per-kind and per-op time per step of ``num_steps`` traced steps. ``events`` come from
  :func:`op_events`; ``indexes`` maps a program id to the :func:`hlo_index` of that program
  (key None: the index for events of any other program)."""
  per_kind = collections.Counter()
  per_op = collections.defaultdict(lambda: dict(ns=0.0, calls=0, kind="", kernel="", hlo_op=""))
  # The JAX source of each op (its HLO op_name: the traced call path), to say which part of the
  # model a kind of kernel comes from.
  per_source = collections.Counter()
  per_part = collections.Counter()
  busy = collections.defaultdict(list)
  without_hlo_op = 0.0
  for where, program, kernel, op, start, dur in events:
    without_hlo_op += dur if not op else 0.0
    info = indexes.get(program, indexes.get(None, {})).get(op)
    kind = classify(kernel, op, info)
    per_kind[kind] += dur
    row = per_op[(kernel, op, kind)]
    row.update(kind=kind, kernel=kernel, hlo_op=op)
    row["ns"] += dur
    row["calls"] += 1
    op_name = (info or {}).get("op_name", "")
    per_source[(kind, op_name or "?")] += dur
    per_part[source_part(op_name)] += dur
    busy[where].append((start, dur))
  total = sum(per_kind.values()) or 1.0
  ms = lambda ns: round(ns / 1e6 / num_steps, 3)
  top = sorted(per_op.values(), key=lambda r: -r["ns"])[:40]
  return dict(
      steps=num_steps, wall_ms_per_step=round(1000 * wall_s / num_steps, 3),
      op_ms_per_step=ms(sum(per_kind.values())),
      # Kernels the trace names no HLO op for (classified by their kernel name alone).
      ms_per_step_without_hlo_op=ms(without_hlo_op),
      busy_ms_per_step={k: ms(_union_ns(v)) for k, v in busy.items()},
      kinds={k: dict(ms_per_step=ms(per_kind[k]), share=round(per_kind[k] / total, 4))
             for k in KINDS if per_kind[k]},
      top_ops=[dict(kind=r["kind"], kernel=r["kernel"][:160], hlo_op=r["hlo_op"], ms_per_step=ms(r["ns"]),
                    calls_per_step=round(r["calls"] / num_steps, 2)) for r in top],
      top_sources=[dict(kind=kind, op_name=name, ms_per_step=ms(ns))
                   for (kind, name), ns in per_source.most_common(60)],
      by_part=[dict(network=n, pass_=p, part=part, ms_per_step=ms(ns))
               for (n, p, part), ns in per_part.most_common()],
  )


def table(summary: dict) -> str:
  """The per-kind summary as a markdown table."""
  lines = ["| kernel kind | ms/step | share |", "|---|---|---|"]
  for kind, v in sorted(summary["kinds"].items(), key=lambda kv: -kv[1]["ms_per_step"]):
    lines.append(f"| {kind} | {v['ms_per_step']:.2f} | {100 * v['share']:.1f} % |")
  lines.append(f"| all ops | {summary['op_ms_per_step']:.2f} | |")
  for where, ms_busy in summary["busy_ms_per_step"].items():
    # On CPU, time outside this union is mostly work the trace does not name: XLA:CPU runs its
    # Eigen matmuls and convolutions asynchronously, and their events cover only the launch.
    lines.append(f"| ops' union on {where} | {ms_busy:.2f} | |")
  lines.append(f"| wall | {summary['wall_ms_per_step']:.2f} | |")
  # What the model does in that time: ms/step per network and part, one column per pass.
  cells = collections.defaultdict(lambda: dict.fromkeys(PASSES, 0.0))
  for r in summary["by_part"]:
    cells[(r["network"], r["part"])][r["pass_"]] += r["ms_per_step"]
  lines += ["", "| network | part | " + " | ".join(PASSES) + " | all |", "|---|---|" + "---|" * (len(PASSES) + 1)]
  for (network, part), ms in sorted(cells.items(), key=lambda kv: -sum(kv[1].values())):
    lines.append(f"| {network} | {part} | " + " | ".join(f"{ms[p]:.2f}" for p in PASSES)
                 + f" | {sum(ms.values()):.2f} |")
  return "\n".join(lines)


def profile(config, num_steps: int, out_dir: str, variant: str = "schedule", trace_dir: str = "") -> dict:
  """Traces ``num_steps`` steps of a resolved ``config`` and returns the summary, also written to
  ``out_dir`` (summary.json, summary.md, perfetto_trace.json.gz); the profiler's folder is
  ``trace_dir`` (default ``out_dir/trace``)."""
  sched = bench.compile_schedule(config, num_steps)
  if variant == "schedule":
    plan = sched.plan
  else:
    wanted = [f for f in sched.programs if compilation.variant_name(f) == variant]
    if not wanted:
      names = [compilation.variant_name(f) for f in sched.programs]
      raise ValueError(f"--variant {variant!r} is not one the first {num_steps} steps use ({names}); "
                       f"pass one of them or 'schedule'")
    plan = wanted * num_steps
  state, _ = bench.run_plan(sched, sched.state, list(sched.programs))  # warm-up
  trace_dir = trace_dir or os.path.join(out_dir, "trace")
  shutil.rmtree(trace_dir, ignore_errors=True)
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    t0 = time.perf_counter()
    bench.run_plan(sched, state, plan)
    wall_s = time.perf_counter() - t0
  xspace = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
  shutil.copy(os.path.join(os.path.dirname(xspace), "perfetto_trace.json.gz"), out_dir)
  data = jax.profiler.ProfileData.from_file(xspace)

  # Every program is the same jitted function, so its events carry the same module name; they
  # differ in program id. Program ids, in the order they first run, are the plan's programs in
  # the order they first appear. With one program, or without program ids, one index of every
  # program serves.
  merged = steps.merged_variants(config.train)
  names = list(dict.fromkeys(compilation.variant_name(steps.program_key(v, merged)) for v in plan))
  texts = {name: c.as_text() for name, c in sched.compiled.items()}
  module = re.match(r"HloModule\s+([\w.\-]+)", next(iter(texts.values()))).group(1)
  events = op_events(data, module)
  programs = list(dict.fromkeys(e[1] for e in events))
  if len(names) > 1 and None not in programs and len(programs) == len(names):
    indexes = {p: hlo_index(texts[name]) for p, name in zip(programs, names)}
  else:
    indexes = {None: hlo_index("\n".join(texts.values()))}
  summary = summarize(events, indexes, len(plan), wall_s)
  variants = list(dict.fromkeys(plan))
  summary.update(variant=variant, plan={compilation.variant_name(v): plan.count(v) for v in variants},
                 backend=jax.default_backend(), device=str(jax.devices()[0].device_kind),
                 compute_dtype=config.model.compute_dtype,
                 num_low_precision_res=config.model.num_low_precision_res,
                 resolution=config.model.resolution, batch=config.train.batch_size,
                 compile_s={k: round(s, 1) for k, s in sched.compile_s.items()})
  with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  with open(os.path.join(out_dir, "summary.md"), "w") as f:
    f.write(table(summary) + "\n")
  return summary


def main(argv):
  del argv
  config = config_lib.resolve(_CONFIG.value, jax.device_count())
  os.makedirs(_OUT_DIR.value, exist_ok=True)
  summary = profile(config, _STEPS.value, _OUT_DIR.value, _VARIANT.value, _TRACE_DIR.value)
  print(table(summary))
  print(json.dumps({k: summary[k] for k in ("wall_ms_per_step", "op_ms_per_step", "busy_ms_per_step",
                                            "plan", "device")}))


if __name__ == "__main__":
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file (configs/*.py).")
  _STEPS = flags.DEFINE_integer("steps", 16, "Traced steps.")
  _OUT_DIR = flags.DEFINE_string("out_dir", None, "Where the trace and the summary go.")
  _VARIANT = flags.DEFINE_string("variant", "schedule", "'schedule' (the real lazy-regularisation "
                                 "mix) or one variant repeated, e.g. 'main' or 'g_reg+d_reg'.")
  _TRACE_DIR = flags.DEFINE_string("trace_dir", "", "The profiler's folder (default: out_dir/trace).")
  flags.mark_flags_as_required(["config", "out_dir"])
  app.run(main)
