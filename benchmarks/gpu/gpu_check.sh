#!/usr/bin/env bash
# One-lease GPU check of skd: build, op tests, kernel timings, a few training steps.
#
# For a GPU machine with no network whose python3 already has torch (CUDA), transformers, click,
# rich, pytest, pybind11, scikit-build-core, cmake, ninja and nvcc (the lent H100/H200 image).
# Stages, each under `timeout` and an overall deadline; a failed stage does not stop the next:
#   env        GPU, driver, versions (nvidia-smi, torch)
#   build      SKD_CUDA=on pip install --no-build-isolation --no-deps --no-index .  (this tree;
#              nvcc --threads=0 compiles the architectures in parallel)
#   tests      pytest tests/test_ops.py: every op against its reference, CPU and CUDA cases
#   kernels40  skd bench kernels --device cuda --rows 40  (V=256,000, bf16 + fp32) + copy GB/s
#   kernels320 the same at 320 rows (B=64 prompts x D=5 drafts)
#   distill    skd distill --method skd, tiny presets, task arith, 3 steps on the GPU
#   resume     benchmarks/gpu/resume_check.py: --deterministic run vs the same run resumed from step 2, bitwise
#   spec       skd bench speculative --device cuda --gamma 1,4 --prompts 16
# Output (at most 8 files, for the device tool's $OUT): summary.txt (the table printed last),
# summary.json, kernels_40.json, kernels_320.json, speculative.json, logs.tar.gz (every log).
#
# Usage: benchmarks/gpu/gpu_check.sh [--out DIR] [--deadline SECONDS] [--skip-build] [--cpu-smoke] [--dry-run]
#   --out DIR       output folder (default: $OUT if set, else benchmarks/results/gpu)
#   --deadline S    wall-clock budget for all stages (default 450 s; stay under 8 minutes)
#   --skip-build    use the skd already installed for $PYTHON (default: build and install it)
#   --cpu-smoke     no GPU needed: every stage on the CPU at tiny sizes, build skipped; checks
#                   this script and the report, measures nothing
#   --dry-run       print the stages and their commands, run nothing
# Environment: PYTHON (default python3), TORCH_CUDA_ARCH_LIST (default: skd's CMake choice).
# Exit code: 0 every stage passed; 1 a stage failed; 2 no CUDA GPU (or bad usage).
set -uo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO" || exit 2
PY=${PYTHON:-python3}
OUTDIR=${OUT:-}
DEADLINE_S=450
SKIP_BUILD=0
CPU_SMOKE=0
DRY_RUN=0
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUTDIR=${2:?--out needs a folder}; shift ;;
    --deadline) DEADLINE_S=${2:?--deadline needs seconds}; shift ;;
    --skip-build) SKIP_BUILD=1 ;;
    --cpu-smoke) CPU_SMOKE=1; SKIP_BUILD=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
OUTDIR=${OUTDIR:-$REPO/benchmarks/results/gpu}
LOGS="$OUTDIR/logs"
T0=$(date +%s)
say() { printf '[%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }

# ---- sizes: the full ones on a GPU; tiny ones for --cpu-smoke --------------------------------
if [ "$CPU_SMOKE" = 1 ]; then
  DEV=cpu; ROWS_A=4; ROWS_B=8; VOCAB=4096; REPEATS=3; PROMPTS=4; NEW_TOKENS=16; DISTILL_B=4
else
  DEV=cuda; ROWS_A=40; ROWS_B=320; VOCAB=256000; REPEATS=20; PROMPTS=16; NEW_TOKENS=32; DISTILL_B=8
fi
SKD=("$PY" -m skd.cli.main)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/skd-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# Offline, and caches of this run only (tiny presets are built into SKD_CACHE on first use).
export HF_HUB_OFFLINE=1 SKD_CACHE="$WORK/cache" HF_HOME="$WORK/hf" PYTHONUNBUFFERED=1
export HF_HUB_DISABLE_PROGRESS_BARS=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# name | timeout s | command (bash -c string; $VARS expanded now)
STAGES=(
  "build|240|SKD_CUDA=on CUDAFLAGS=--threads=0 $PY -m pip install -v --no-build-isolation --no-deps --no-index -C build-dir=build/gpu-check ."
  "tests|180|SKD_REQUIRE_EXT=1 $PY -m pytest -q -p no:cacheprovider -o addopts= -rfEs --junitxml=$LOGS/pytest.xml tests/test_ops.py"
  "kernels40|90|${SKD[*]} bench kernels --device $DEV --rows $ROWS_A --vocab $VOCAB --dtype bfloat16 --dtype float32 --repeats $REPEATS --output $OUTDIR/kernels_40.json"
  "kernels320|120|${SKD[*]} bench kernels --device $DEV --rows $ROWS_B --vocab $VOCAB --dtype bfloat16 --dtype float32 --repeats $REPEATS --output $OUTDIR/kernels_320.json"
  "distill|150|${SKD[*]} distill --method skd --student tiny-student --teacher tiny-teacher --task arith --student-device $DEV --teacher-device $DEV --max-steps 3 --batch-size $DISTILL_B --max-new-tokens $NEW_TOKENS --eval-every 0 --save-every 0 --output-dir $WORK/distill && cp $WORK/distill/metrics.jsonl $LOGS/distill_metrics.jsonl && cp $WORK/distill/summary.json $LOGS/distill_summary.json"
  "resume|150|$PY benchmarks/gpu/resume_check.py --device $DEV --work $WORK/resume --batch $DISTILL_B --new-tokens $NEW_TOKENS"
  "spec|150|${SKD[*]} bench speculative --device $DEV --gamma 1,4 --prompts $PROMPTS --max-new-tokens $NEW_TOKENS --output $OUTDIR/speculative.json --plot $LOGS/speculative.png"
)

if [ "$DRY_RUN" = 1 ]; then
  echo "gpu_check (dry run): python $PY, device $DEV, output $OUTDIR, deadline ${DEADLINE_S}s"
  for s in "${STAGES[@]}"; do
    IFS='|' read -r name limit cmd <<<"$s"
    [ "$name" = build ] && [ "$SKIP_BUILD" = 1 ] && { echo "  build      skipped (--skip-build)"; continue; }
    printf '  %-10s <= %3ss  %s\n' "$name" "$limit" "$cmd"
  done
  echo "  report     $PY benchmarks/gpu/gpu_check_report.py $OUTDIR"
  exit 0
fi

# ---- env: is there a GPU at all? ------------------------------------------------------------
"$PY" -c 'import torch' 2>/dev/null || { echo "gpu_check: $PY cannot import torch; set PYTHON" >&2; exit 2; }
if [ "$CPU_SMOKE" = 0 ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: no CUDA GPU visible to $PY (torch.cuda.is_available() is False; torch" \
       "$("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)' 2>/dev/null))." >&2
  echo "gpu_check: run it on a GPU machine, or use --cpu-smoke to exercise the script here, --dry-run to list the stages." >&2
  exit 2
fi
# CMake finds nvcc on PATH (or through CUDACXX); the toolkit's usual home as a fallback.
if ! command -v nvcc >/dev/null && [ -z "${CUDACXX:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
rm -rf "$LOGS" "$OUTDIR"/{summary.txt,summary.json,kernels_40.json,kernels_320.json,speculative.json,logs.tar.gz}
mkdir -p "$LOGS"
: >"$LOGS/stages.tsv"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  host: $(hostname)  cpus: $(nproc)  mode: $([ "$CPU_SMOKE" = 1 ] && echo cpu-smoke || echo gpu)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu,utilization.gpu --format=csv
  command -v nvcc >/dev/null && nvcc --version | tail -2
  "$PY" - <<'PYEOF'
import platform, torch
print(f"python {platform.python_version()} ({__import__('sys').executable}); torch {torch.__version__} CUDA {torch.version.cuda}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"gpu {p.name}: sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB, "
          f"L2 {getattr(p, 'L2_cache_size', 0) / 2**20:.0f} MiB")
try:
    import transformers
    print(f"transformers {transformers.__version__}")
except ImportError as e:
    print(f"transformers missing: {e}")
PYEOF
} >"$LOGS/env.log" 2>&1
sed 's/^/  /' "$LOGS/env.log"
say "output folder $OUTDIR; deadline ${DEADLINE_S}s"

# ---- stages ---------------------------------------------------------------------------------
RESERVE_S=20  # kept for the report and the log archive
FAILED=0
run_stage() {  # name limit cmd
  local name=$1 limit=$2 cmd=$3 left t rc status
  left=$(( DEADLINE_S - ($(date +%s) - T0) - RESERVE_S ))
  t=$(( limit < left ? limit : left ))
  if [ "$t" -lt 15 ]; then
    printf '%s\t%s\t%s\t%s\n' "$name" skipped 0 "no time left" >>"$LOGS/stages.tsv"
    say "$name: SKIPPED (deadline)"; FAILED=1; return
  fi
  say "$name (limit ${t}s) ..."
  local start=$(date +%s)
  timeout --kill-after=10 "$t" bash -c "$cmd" >"$LOGS/$name.log" 2>&1
  rc=$?
  local took=$(( $(date +%s) - start ))
  if [ "$rc" = 0 ]; then status=ok; elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status=timeout; else status=failed; fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$took" "rc=$rc" >>"$LOGS/stages.tsv"
  if [ "$status" = ok ]; then
    say "$name: ok (${took}s)"
  else
    FAILED=1
    say "$name: ${status^^} (rc $rc, ${took}s); last lines of $name.log:"
    tail -8 "$LOGS/$name.log" | cut -c1-200 | sed 's/^/    | /'
  fi
}

for s in "${STAGES[@]}"; do
  IFS='|' read -r name limit cmd <<<"$s"
  if [ "$name" = build ]; then
    if [ "$SKIP_BUILD" = 1 ]; then
      printf 'build\tskipped\t0\t--skip-build\n' >>"$LOGS/stages.tsv"; say "build: skipped (--skip-build)"; continue
    fi
    run_stage "$name" "$limit" "$cmd"
    grep -o "skd: building CUDA kernels.*\|skd: building CPU kernels only.*" "$LOGS/build.log" | head -1 | sed 's/^/    /'
    continue
  fi
  run_stage "$name" "$limit" "$cmd"
done

# ---- report ---------------------------------------------------------------------------------
"$PY" -c 'import skd.core.ops as o; print("ops backend:", o.backend())' >>"$LOGS/env.log" 2>&1
"$PY" "$REPO/benchmarks/gpu/gpu_check_report.py" "$OUTDIR" >"$LOGS/report.log" 2>&1 || FAILED=1
echo
# The table last: the device tool's reply carries only the end of the output.
if [ -s "$OUTDIR/summary.txt" ]; then cat "$OUTDIR/summary.txt"; else cat "$LOGS/report.log"; fi
tar czf "$OUTDIR/logs.tar.gz" -C "$OUTDIR" logs 2>/dev/null
if [ -n "${OUT:-}" ] && [ "$OUTDIR" = "$OUT" ]; then rm -rf "$LOGS"; fi  # the device tool returns 8 files at most
echo "total $(( $(date +%s) - T0 ))s; files in $OUTDIR: $(cd "$OUTDIR" && ls | tr '\n' ' ')"
exit "$FAILED"
