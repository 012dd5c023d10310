#!/usr/bin/env bash
# Compile-and-link check of skd's CUDA kernels on a machine WITHOUT a GPU (not part of CI).
#
# In a throwaway virtual environment: installs a CUDA build of torch (default 2.14.1, ~5.5 GB
# with its nvidia wheels), the build tools, then `SKD_CUDA=on pip install --no-build-isolation
# --no-deps .` from this checkout, and verifies that the build log says the CUDA kernels were
# built, `import skd._C` works, `skd._C.cuda_built()` is True, every torch.ops.skd op has a CUDA
# (and CPU) kernel registered, and the module holds SASS for the expected architectures. Then
# runs tests/test_ops.py there on the CPU (CUDA cases skip without a GPU). Importing a CUDA torch
# on a machine with no GPU works; nothing here launches a kernel.
#
# Usage: benchmarks/gpu/cuda_build_check.sh [--keep] [--dir DIR] [--torch VERSION] [--no-tests]
#   --keep      keep the environment and build folder (printed at the end); default: removed
#   --dir DIR   work folder (default: a new folder under ${TMPDIR:-/tmp}); needs >= 15 GB free
#   --torch V   torch version to install (default 2.14.1; it must be a CUDA build)
#   --no-tests  skip tests/test_ops.py
# Exit code: 0 all checks passed, 1 a check failed, 2 bad usage / missing prerequisite.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
TORCH_VERSION=2.14.1
KEEP=0
RUN_TESTS=1
WORK=""
MIN_FREE_GB=15

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) KEEP=1 ;;
    --no-tests) RUN_TESTS=0 ;;
    --dir) WORK=${2:?--dir needs a folder}; shift ;;
    --torch) TORCH_VERSION=${2:?--torch needs a version}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "cuda_build_check: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

T0=$(date +%s)
FAILED=()
say() { printf '[%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
fail() { say "FAIL: $*"; FAILED+=("$*"); }
die() { say "ERROR: $*"; exit 2; }

# ---- prerequisites: nvcc, Python, disk --------------------------------------------------------
NVCC=$(command -v nvcc || true)
[ -z "$NVCC" ] && [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ] && NVCC="$CUDA_HOME/bin/nvcc"
[ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ] && NVCC=/usr/local/cuda/bin/nvcc
[ -n "$NVCC" ] || die "no nvcc found (PATH, \$CUDA_HOME/bin, /usr/local/cuda/bin): install the CUDA toolkit"
NVCC_VERSION=$("$NVCC" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')
PY=${PYTHON:-python3}
"$PY" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null || die "$PY must be Python >= 3.10"

if [ -z "$WORK" ]; then
  PARENT=${TMPDIR:-/tmp}
else
  PARENT=$(dirname "$WORK")
fi
FREE_KB=$(df -Pk "$PARENT" | awk 'NR == 2 {print $4}')
FREE_GB=$(( FREE_KB / 1024 / 1024 ))
if [ "$FREE_GB" -lt "$MIN_FREE_GB" ]; then
  die "only ${FREE_GB} GB free under $PARENT; the CUDA torch needs ~6 GB installed plus room to unpack: free ${MIN_FREE_GB} GB or pass --dir"
fi
if [ -z "$WORK" ]; then
  WORK=$(mktemp -d "$PARENT/skd-cuda-check.XXXXXX")
else
  mkdir -p "$WORK"
fi
cleanup() {
  if [ "$KEEP" = 1 ]; then
    say "kept $WORK (venv $WORK/venv, build $WORK/build, logs $WORK/logs)"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
LOGS="$WORK/logs"
mkdir -p "$LOGS"
say "repo $REPO; work folder $WORK (${FREE_GB} GB free); nvcc $NVCC_VERSION ($NVCC)"

# ---- environment ---------------------------------------------------------------------------
VPY="$WORK/venv/bin/python"
[ -x "$VPY" ] || "$PY" -m venv "$WORK/venv" || die "cannot create a venv with $PY"
pipi() { PIP_NO_CACHE_DIR=1 "$VPY" -m pip --disable-pip-version-check -q install "$@"; }

t=$(date +%s)
say "installing torch==$TORCH_VERSION (CUDA build with nvidia wheels, ~5.5 GB) ..."
pipi "torch==$TORCH_VERSION" >"$LOGS/pip_torch.log" 2>&1 || { tail -20 "$LOGS/pip_torch.log"; die "pip install torch==$TORCH_VERSION failed (log above)"; }
TORCH_INSTALL_S=$(( $(date +%s) - t ))
pipi "scikit-build-core>=0.10" "pybind11>=2.12" cmake ninja numpy >"$LOGS/pip_tools.log" 2>&1 \
  || { tail -20 "$LOGS/pip_tools.log"; die "pip install of the build tools failed"; }
read -r TORCH_FULL TORCH_CUDA < <("$VPY" -c 'import torch; print(torch.__version__, torch.version.cuda or "none")')
VENV_GB=$(du -s --block-size=1G "$WORK/venv" | cut -f1)
say "torch $TORCH_FULL (CUDA $TORCH_CUDA) installed in ${TORCH_INSTALL_S}s; venv ${VENV_GB} GB"
[ "$TORCH_CUDA" != none ] || die "torch $TORCH_FULL is a CPU build; pass a CUDA build with --torch"

# torch's CUDA runtime and nvcc must share the major version (libcudart.so.N is loaded once per
# process); a different minor works through CUDA's minor-version compatibility.
if [ "${TORCH_CUDA%%.*}" != "${NVCC_VERSION%%.*}" ]; then
  die "torch is built with CUDA $TORCH_CUDA but nvcc is $NVCC_VERSION: the major versions must match"
elif [ "$TORCH_CUDA" != "$NVCC_VERSION" ]; then
  say "note: torch CUDA $TORCH_CUDA vs nvcc $NVCC_VERSION: same major, relying on minor-version compatibility"
fi

# ---- build -----------------------------------------------------------------------------------
# A build folder of its own (pyproject's build/{wheel_tag} is the CPU dev build's); ptxas -v puts
# each kernel's registers / spills into the log.
t=$(date +%s)
say "building skd with SKD_CUDA=on (nvcc: three architectures; a few minutes on 2 cores) ..."
(
  cd "$REPO" &&
  PATH="$(dirname "$NVCC"):$WORK/venv/bin:$PATH" SKD_CUDA=on CUDAFLAGS="${CUDAFLAGS:-} -Xptxas=-v" \
    PIP_NO_CACHE_DIR=1 "$VPY" -m pip --disable-pip-version-check install -v --no-build-isolation --no-deps \
    -C "build-dir=$WORK/build" .
) >"$LOGS/build.log" 2>&1
BUILD_RC=$?
BUILD_S=$(( $(date +%s) - t ))
if [ "$BUILD_RC" != 0 ]; then
  grep -nE "error|Error|FATAL" "$LOGS/build.log" | head -40
  tail -30 "$LOGS/build.log"
  fail "SKD_CUDA=on build failed after ${BUILD_S}s (rc $BUILD_RC)"
else
  say "build finished in ${BUILD_S}s"
fi
if grep -q "skd: building CUDA kernels" "$LOGS/build.log"; then
  say "build log: $(grep -o 'skd: building CUDA kernels.*' "$LOGS/build.log" | head -1)"
else
  fail "the build log does not say 'skd: building CUDA kernels'"
fi
WARNINGS=$(grep -ciE "warning" "$LOGS/build.log" || true)
say "build log: $WARNINGS line(s) mentioning a warning"
grep -E "ptxas info *: (Compiling entry|Function properties|Used)|spill stores" "$LOGS/build.log" \
  | sed 's/^ *//' >"$LOGS/ptxas.txt" || true
if grep -E "[1-9][0-9]* bytes spill" "$LOGS/ptxas.txt" >/dev/null; then
  say "note: ptxas reports register spills (see $LOGS/ptxas.txt)"
fi

# ---- verification (outside the repo, so the installed package is imported) -------------------
if [ "$BUILD_RC" = 0 ]; then
  (cd "$WORK" && "$VPY" - <<'EOF') 2>&1 | tee "$LOGS/verify.log"
import torch

import skd._C as C
from skd.core import ops

print(f"torch {torch.__version__} (CUDA {torch.version.cuda}); cuda available: {torch.cuda.is_available()}")
print(f"skd._C at {C.__file__}")
ok = True
print(f"skd._C.cuda_built() = {C.cuda_built()}")
ok &= C.cuda_built()
print(f"ops.backend() = {ops.backend()}")
ok &= ops.backend() == "cuda"
for op in ("topk_rank_accept", "accept_prefix", "splice", "speculative_accept"):
    keys = {k: torch._C._dispatch_has_kernel_for_dispatch_key(f"skd::{op}", k) for k in ("CPU", "CUDA")}
    print(f"skd::{op}: kernels registered {keys}")
    ok &= all(keys.values())
# CPU path of the CUDA build, against the reference (no GPU needed).
x = torch.randn(8, 1000, dtype=torch.bfloat16)
t = x.float().argmax(1)
same = torch.equal(torch.ops.skd.topk_rank_accept(x, t, 5), ops.reference.topk_rank_accept(x, t, 5))
print(f"CPU topk_rank_accept == reference: {same}")
ok &= same
print("VERIFY OK" if ok else "VERIFY FAILED")
EOF
  grep -q "^VERIFY OK" "$LOGS/verify.log" || fail "import / registration checks (see above)"

  SO=$(find "$WORK/venv/lib" -path '*site-packages/skd/_C*.so' | head -1)
  # cuobjdump: the toolkit's, else the copy triton ships.
  CUOBJDUMP=$(command -v cuobjdump || true)
  [ -z "$CUOBJDUMP" ] && [ -x "$(dirname "$NVCC")/cuobjdump" ] && CUOBJDUMP="$(dirname "$NVCC")/cuobjdump"
  [ -z "$CUOBJDUMP" ] && CUOBJDUMP=$(find "$WORK/venv/lib" -name cuobjdump -type f -perm -u+x 2>/dev/null | head -1)
  if [ -n "$SO" ] && [ -n "$CUOBJDUMP" ]; then
    ELF=$("$CUOBJDUMP" --list-elf "$SO" 2>&1 | grep -o 'sm_[0-9a-z]*' | sort -u | tr '\n' ' ')
    PTX=$("$CUOBJDUMP" --list-ptx "$SO" 2>&1 | grep -o 'sm_[0-9a-z]*' | sort -u | tr '\n' ' ')
    say "module $(basename "$SO") ($(du -h "$SO" | cut -f1)): SASS for ${ELF:-none}; PTX for ${PTX:-none}"
    case "$ELF" in *sm_90*) ;; *) fail "no sm_90 (Hopper) machine code in $SO" ;; esac
  else
    say "note: cuobjdump not found; the embedded architectures were not listed"
  fi
  ldd "$SO" 2>/dev/null | grep -E "cudart|c10_cuda|torch_cuda|not found" | sed 's/^[[:space:]]*/  ldd: /'
  if ldd "$SO" 2>/dev/null | grep -q "not found"; then
    say "note: ldd lists unresolved libraries; torch loads them before skd._C, so the import above is what counts"
  fi
fi

# ---- tests on the CPU ------------------------------------------------------------------------
if [ "$BUILD_RC" = 0 ] && [ "$RUN_TESTS" = 1 ]; then
  pipi pytest click rich >"$LOGS/pip_test.log" 2>&1 || fail "pip install pytest click rich"
  t=$(date +%s)
  say "running tests/test_ops.py on the CPU (CUDA cases skip: no GPU) ..."
  (cd "$REPO" && SKD_REQUIRE_EXT=1 "$VPY" -m pytest -q -p no:cacheprovider tests/test_ops.py) \
    >"$LOGS/pytest.log" 2>&1
  PYTEST_RC=$?
  say "pytest (${PYTEST_RC}) in $(( $(date +%s) - t ))s: $(tail -1 "$LOGS/pytest.log")"
  [ "$PYTEST_RC" = 0 ] || { grep -E "^(FAILED|ERROR)" "$LOGS/pytest.log" | head -20; fail "tests/test_ops.py"; }
fi

# ---- summary -------------------------------------------------------------------------------
echo
echo "== cuda_build_check: $(date -u +%Y-%m-%dT%H:%MZ), $(( $(date +%s) - T0 ))s in all"
echo "   nvcc $NVCC_VERSION · torch $TORCH_FULL (CUDA $TORCH_CUDA, install ${TORCH_INSTALL_S}s, venv ${VENV_GB} GB) · build ${BUILD_S}s"
if [ -s "$LOGS/ptxas.txt" ]; then
  echo "   ptxas -v per kernel: registers, spill bytes (store/load), static shared memory"
  "$PY" - "$LOGS/ptxas.txt" <<'PYEOF'
import re
import sys

# Template argument right after "<kernel>_kernelI" in the mangled name -> dtype.
VARIANT = {"NS0_6Scan16ILs31744": "fp16", "NS0_6Scan16ILs32640": "bf16", "NS0_7ScanF32": "fp32",
           "N3c104Half": "fp16", "N3c108BFloat16": "bf16", "d": "fp64", "f": "fp32", "a": "int8", "h": "uint8"}
rows, cur, arch = {}, None, None
for line in open(sys.argv[1]):
    m = re.search(r"Compiling entry function '(\S+)' for '(sm_\w+)'", line)
    if m:
        name, arch = m.groups()
        m2 = re.search(r"(topk_rank_accept|accept_prefix|splice|speculative_accept)_kernel(I(\w+?)E)?", name)
        variant = next((v for k, v in VARIANT.items() if m2.group(3) and m2.group(3).startswith(k)), "")
        cur = m2.group(1) + (f"[{variant}]" if variant else "")
        rows.setdefault(cur, {})[arch] = ["?", "?", "0"]
        continue
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m and cur:
        rows[cur][arch][1] = f"{m.group(1)}/{m.group(2)}"
    m = re.search(r"Used (\d+) registers", line)
    if m and cur:
        rows[cur][arch][0] = m.group(1)
    m = re.search(r"(\d+) bytes smem", line)
    if m and cur:
        rows[cur][arch][2] = m.group(1)
archs = sorted({a for r in rows.values() for a in r})
print("     " + f"{'kernel':<26}" + "".join(f"{a:>18}" for a in archs))
for k in sorted(rows):
    cells = [rows[k].get(a) for a in archs]
    print("     " + f"{k:<26}" + "".join(f"{(f'{c[0]} reg {c[1]} {c[2]}B' if c else '-'):>18}" for c in cells))
PYEOF
fi
if [ "$KEEP" = 1 ]; then echo "   logs: $LOGS"; fi
if [ ${#FAILED[@]} -eq 0 ]; then
  echo "== PASS"
  exit 0
fi
echo "== FAIL (${#FAILED[@]}): ${FAILED[*]}"
[ "$KEEP" = 1 ] || { echo "   build log tail:"; tail -40 "$LOGS/build.log"; }
exit 1
