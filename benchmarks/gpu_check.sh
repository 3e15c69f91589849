#!/usr/bin/env bash
# The GPU check: this project's train step at one config, several ways, in priority order, then a
# profile of the fastest way and the official stylegan2-ada-pytorch step at the same settings,
# all in one call so that every figure comes from one machine.
#
#   bash benchmarks/gpu_check.sh                      # configs/bench256.py, results in a temp dir
#   OUT=/tmp/check GPU_CHECK_CONFIG=configs/tiny.py GPU_CHECK_STEPS=4 bash benchmarks/gpu_check.sh
#
# Parts, in this order (names as in the JSON lines):
#   f32_merged, f32_separate  float32 (XLA's default precision), train.variant_programs merged / separate
#   bf16_low4                 bfloat16 in the 4 highest resolutions (the official mixed-precision rule)
#   f32_direct                float32 with model.conv_impl=direct
#   profile                   benchmarks/profile_step.py of the fastest of the parts above
#   official_<precision>      benchmarks/official_bench.py, one line per precision
# bf16_low4 and f32_direct take the variant_programs of the faster f32 line (merged if neither ran).
#
# Every part runs under its own `timeout` (GPU_CHECK_TIMEOUT_<PART>, seconds), cut further so that
# the whole script ends within GPU_CHECK_TOTAL_S; a part that does not start for lack of time, or
# fails, or is cut, still writes its line, and the parts after it run. Each part appends one JSON
# line to $OUT/gpu_check.jsonl: {"part", "status": ok | failed | timeout | skipped, "rc", "seconds",
# "args", "reason", "result"}, where result is the bench's (or the official bench's) own JSON line,
# or for the profile the summary's totals and kernel kinds. $OUT also gets logs.tar.gz (every part's
# stdout and stderr), profile/summary.{md,json}, profile/perfetto_trace.json.gz,
# profile_trace.tar.gz (the profiler's folder, where under 15 MiB) and gpu_check_summary.txt (the
# summary printed at the end): at most 7 files.
#
# Environment (defaults in brackets): PYTHON [python3], GPU_CHECK_CONFIG [configs/bench256.py],
# OUT [a new temp dir], GPU_CHECK_STEPS [16], GPU_CHECK_REPEATS [3], GPU_CHECK_PROFILE_STEPS [16],
# GPU_CHECK_ARGS (extra --config.* flags for every run of ours) [none], GPU_CHECK_PARTS
# (comma-separated names to run; the others write no line) [all], GPU_CHECK_TOTAL_S [400],
# GPU_CHECK_MIN_PART_S (no part starts with less left) [20], GPU_CHECK_OFFICIAL_SRC
# [.official/stylegan2-ada-pytorch], GPU_CHECK_OFFICIAL_PYTHON [$PYTHON], GPU_CHECK_OFFICIAL_DEVICE
# [cuda], GPU_CHECK_OFFICIAL_CONFIG [bench256],
# GPU_CHECK_OFFICIAL_PRECISIONS [mixed tf32 fp32], GPU_CHECK_OFFICIAL_STEPS [16],
# GPU_CHECK_OFFICIAL_REPEATS [2], GPU_CHECK_OFFICIAL_WARMUP [16], JAX_COMPILATION_CACHE_DIR
# [a folder in the work dir: the profile reuses the bench's compiled programs].
set -u
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
CONFIG=${GPU_CHECK_CONFIG:-configs/bench256.py}
OUT=${OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
STEPS=${GPU_CHECK_STEPS:-16}
REPEATS=${GPU_CHECK_REPEATS:-3}
PROFILE_STEPS=${GPU_CHECK_PROFILE_STEPS:-16}
EXTRA_ARGS=${GPU_CHECK_ARGS:-}
PARTS=${GPU_CHECK_PARTS:-all}
TOTAL_S=${GPU_CHECK_TOTAL_S:-400}
MIN_PART_S=${GPU_CHECK_MIN_PART_S:-20}
OFFICIAL_SRC=${GPU_CHECK_OFFICIAL_SRC:-.official/stylegan2-ada-pytorch}
OFFICIAL_PY=${GPU_CHECK_OFFICIAL_PYTHON:-$PY}
OFFICIAL_DEVICE=${GPU_CHECK_OFFICIAL_DEVICE:-cuda}
OFFICIAL_CONFIG=${GPU_CHECK_OFFICIAL_CONFIG:-bench256}
OFFICIAL_PRECISIONS=${GPU_CHECK_OFFICIAL_PRECISIONS:-mixed tf32 fp32}
OFFICIAL_STEPS=${GPU_CHECK_OFFICIAL_STEPS:-16}
OFFICIAL_REPEATS=${GPU_CHECK_OFFICIAL_REPEATS:-2}
OFFICIAL_WARMUP=${GPU_CHECK_OFFICIAL_WARMUP:-16}

WORK=$(mktemp -d /tmp/gpu_check_work.XXXXXX)
mkdir -p "$OUT" "$WORK/logs"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$WORK/jcache}
JSONL="$OUT/gpu_check.jsonl"
: > "$JSONL"
START=$SECONDS

wanted() { [[ "$PARTS" == all || ",$PARTS," == *",$1,"* ]]; }

budget() {  # budget PART DEFAULT: the part's timeout, cut to what is left of GPU_CHECK_TOTAL_S
  local var="GPU_CHECK_TIMEOUT_${1^^}" left=$((TOTAL_S - (SECONDS - START)))
  local own=${!var:-$2}
  echo $((own < left ? own : left))
}

# record PART STATUS RC SECONDS ARGS REASON RESULT_FILE: appends the part's JSON line; the result is
# the last line of RESULT_FILE where it is a JSON object.
record() {
  PART="$1" STATUS="$2" RC="$3" SECS="$4" ARGS="$5" REASON="$6" RESULT_FILE="$7" "$PY" - >> "$JSONL" <<'EOF'
import json, os
result = None
path = os.environ["RESULT_FILE"]
if path and os.path.exists(path):
  lines = [l for l in open(path, errors="replace").read().splitlines() if l.strip()]
  try:
    result = json.loads(lines[-1]) if lines else None
  except ValueError:
    result = None
  result = result if isinstance(result, dict) else None
print(json.dumps(dict(part=os.environ["PART"], status=os.environ["STATUS"], rc=int(os.environ["RC"]),
                      seconds=int(os.environ["SECS"]), args=os.environ["ARGS"].split(),
                      reason=os.environ["REASON"], result=result)))
EOF
  tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs 2>/dev/null
  echo "[gpu_check] $1: $2 (rc $3, $4 s) $6" >&2
}

# run_part PART DEFAULT_TIMEOUT ARGS -- COMMAND...: runs COMMAND under its timeout, its stdout to
# logs/PART.out (the JSON line) and stderr to logs/PART.log, and records the outcome.
run_part() {
  local part=$1 own=$2 args=$3 t rc t0 reason=""
  shift 4
  wanted "$part" || return 0
  t=$(budget "$part" "$own")
  if ((t < MIN_PART_S || t < 1)); then
    record "$part" skipped 0 0 "$args" "not started: $((t > 0 ? t : 0)) s left of GPU_CHECK_TOTAL_S=$TOTAL_S" ""
    return 0
  fi
  t0=$SECONDS
  timeout -k 10 "$t" "$@" > "$WORK/logs/$part.out" 2> "$WORK/logs/$part.log"
  rc=$?
  local status=ok
  if ((rc == 124 || rc == 137)); then
    status=timeout reason="cut by its timeout of $t s"
  elif ((rc != 0)); then
    status=failed reason="exit $rc: $(grep -v '^\s*$' "$WORK/logs/$part.log" | tail -1 | cut -c1-300)"
  elif ! tail -1 "$WORK/logs/$part.out" | grep -q '^{'; then
    status=failed reason="no JSON line on stdout"
  fi
  record "$part" "$status" "$rc" $((SECONDS - t0)) "$args" "$reason" "$WORK/logs/$part.out"
}

# best_of PART...: "PART ARGS" of the ok line with the most images/s among PARTs (nothing if none).
best_of() {
  PARTS_WANTED="$*" "$PY" - "$JSONL" <<'EOF'
import json, os, sys
wanted = os.environ["PARTS_WANTED"].split()
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ok = [l for l in lines if l["part"] in wanted and l["status"] == "ok" and l["result"]]
if ok:
  best = max(ok, key=lambda l: l["result"]["images_per_s"])
  print(best["part"], *best["args"])
EOF
}

BENCH=("$PY" -m gantl_jax.cli.bench --config "$CONFIG" --steps "$STEPS" --repeats "$REPEATS")

echo "[gpu_check] config $CONFIG, out $OUT, work $WORK, budget $TOTAL_S s" >&2

# 1. float32 at XLA's default precision, the lazy-regularisation variants merged and separate.
# The first part compiles cold; the later ones find XLA's GPU autotuning of the convolutions they
# share in JAX_COMPILATION_CACHE_DIR (jax_persistent_cache_enable_xla_caches), hence the shorter timeouts.
args="--config.train.variant_programs=merged"
run_part f32_merged 150 "$args" -- "${BENCH[@]}" $args $EXTRA_ARGS
args="--config.train.variant_programs=separate"
run_part f32_separate 100 "$args" -- "${BENCH[@]}" $args $EXTRA_ARGS
programs_arg=$(best_of f32_merged f32_separate | cut -d' ' -f2)
programs_arg=${programs_arg:---config.train.variant_programs=merged}

# 2. bfloat16 in the 4 highest resolutions; 3. float32 with XLA's strided / dilated resampling convs.
args="--config.model.compute_dtype=bfloat16 --config.model.num_low_precision_res=4 $programs_arg"
run_part bf16_low4 90 "$args" -- "${BENCH[@]}" $args $EXTRA_ARGS
args="--config.model.conv_impl=direct $programs_arg"
run_part f32_direct 90 "$args" -- "${BENCH[@]}" $args $EXTRA_ARGS

# 4. A trace of the fastest of the above.
if wanted profile; then
  read -r fastest fastest_args <<< "$(best_of f32_merged f32_separate bf16_low4 f32_direct)"
  if [[ -z "${fastest:-}" ]]; then
    record profile skipped 0 0 "" "no bench part ended ok" ""
  else
    rm -rf "$OUT/profile" "$WORK/trace"
    mkdir -p "$OUT/profile"
    run_part profile 60 "$fastest_args" -- "$PY" benchmarks/profile_step.py --config "$CONFIG" \
      --steps "$PROFILE_STEPS" --out_dir "$OUT/profile" --trace_dir "$WORK/trace" $fastest_args $EXTRA_ARGS
    # The part's result: the summary's totals and kinds, and which part was profiled.
    if [[ -f "$OUT/profile/summary.json" ]]; then
      FASTEST="$fastest" "$PY" - "$OUT/profile/summary.json" "$JSONL" <<'EOF'
import json, os, sys
summary = json.load(open(sys.argv[1]))
lines = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
keys = ("wall_ms_per_step", "op_ms_per_step", "busy_ms_per_step", "kinds", "plan", "device",
        "compute_dtype", "num_low_precision_res", "compile_s")
lines[-1]["result"] = dict(profiled=os.environ["FASTEST"], **{k: summary.get(k) for k in keys})
with open(sys.argv[2], "w") as f:
  f.writelines(json.dumps(l) + "\n" for l in lines)
EOF
    fi
    # What comes back is at most 8 files of 16 MiB each.
    if [[ -f "$OUT/profile/perfetto_trace.json.gz" ]] && (($(stat -c %s "$OUT/profile/perfetto_trace.json.gz") > 15 * 2**20)); then
      mv "$OUT/profile/perfetto_trace.json.gz" "$WORK/"
    fi
    if [[ -d "$WORK/trace" ]]; then
      tar -czf "$WORK/profile_trace.tar.gz" -C "$WORK" trace
      (($(stat -c %s "$WORK/profile_trace.tar.gz") <= 15 * 2**20)) && mv "$WORK/profile_trace.tar.gz" "$OUT/"
    fi
  fi
fi

# 5. The official stylegan2-ada-pytorch step at the same settings, where torch and its source are here.
official_missing=""
if [[ ! -f "$OFFICIAL_SRC/training/networks.py" ]]; then
  official_missing="no official source at $OFFICIAL_SRC (carry a stylegan2-ada-pytorch checkout there)"
elif ! torch_cuda=$(timeout 60 "$OFFICIAL_PY" -c "import torch; print(torch.cuda.is_available())" 2>/dev/null); then
  official_missing="torch cannot be imported by $OFFICIAL_PY"
elif [[ "$OFFICIAL_DEVICE" == cuda && "$torch_cuda" != True ]]; then
  official_missing="torch sees no CUDA device"
fi
# The official CUDA kernels are built (where ninja and nvcc are here) on first use into a folder of
# this run, so that a build cut by a timeout leaves no lock behind for a later run.
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$WORK/torch_extensions}
for precision in $OFFICIAL_PRECISIONS; do
  part="official_$precision"
  wanted "$part" || continue
  if [[ -n "$official_missing" ]]; then
    record "$part" skipped 0 0 "" "$official_missing" ""
    continue
  fi
  run_part "$part" 60 "--precision $precision" -- "$OFFICIAL_PY" benchmarks/official_bench.py --official_src "$OFFICIAL_SRC" \
    --config "$OFFICIAL_CONFIG" --device "$OFFICIAL_DEVICE" --precision "$precision" --steps "$OFFICIAL_STEPS" \
    --repeats "$OFFICIAL_REPEATS" --warmup_steps "$OFFICIAL_WARMUP"
done

# Summary: one line per part, and ours against each official line.
"$PY" - "$JSONL" <<'EOF' | tee "$OUT/gpu_check_summary.txt"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for l in lines:
  r = l["result"] or {}
  if l["part"] == "profile" and r:
    what = f"{r.get('profiled')}: wall {r.get('wall_ms_per_step')} ms/step, ops {r.get('op_ms_per_step')} ms/step"
  elif "images_per_s" in r:
    what = (f"{r['images_per_s']} images/s, {r['step_ms_median']} ms/step"
            + (f", compile {r['compile_s']} s" if "compile_s" in r else "")
            + (f", device peak {r['device_peak_mb']} MB" if r.get("device_peak_mb") is not None else ""))
  else:
    what = ""
  print(f"{l['part']:<16} {l['status']:<8} {l['seconds']:>4} s  {what}{'  ' + l['reason'] if l['reason'] else ''}")
ours = [l for l in lines if not l["part"].startswith("official") and l["status"] == "ok"
        and l["result"] and "images_per_s" in l["result"]]
theirs = [l for l in lines if l["part"].startswith("official") and l["status"] == "ok" and l["result"]]
if ours and theirs:
  best = max(ours, key=lambda l: l["result"]["images_per_s"])
  for t in theirs:
    a, b = best["result"]["images_per_s"], t["result"]["images_per_s"]
    same = all(best["result"][k] == t["result"][k] for k in ("resolution", "batch"))
    print(f"ratio ours/official: {best['part']} {a} / {t['part']} {b} images/s = {a / b:.2f}"
          + ("" if same else " (not comparable: resolution or batch differ)"))
EOF
echo "[gpu_check] $((SECONDS - START)) s; results in $OUT" >&2
