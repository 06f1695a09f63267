#!/usr/bin/env bash
# The GPU check of proxynas_fast, for a lent GPU machine that has this repository only (python3 with a CUDA
# torch, nvcc, pytest; no venv, no DALI, no network, no ../shared, 600 s per command).
#
#   bash benchmarks/gpu_check.sh --prepare   # here, once: writes gpu-check-data/ (git-ignored, ~15 MB), which
#                                            # must travel with the repository to the GPU machine
#   bash benchmarks/gpu_check.sh             # on the GPU machine, from the repository root: ends within 480 s
#   bash benchmarks/gpu_check.sh --dry-run   # every step on this CPU at toy sizes (2-5 min; CI runs it)
#   bash benchmarks/gpu_check.sh --build-check  # the GPU run's build step, exactly, on a machine without a GPU
#                                            # (env and build only; nvcc for sm_90 takes ~15 min on 2 cores)
#
# Steps (the first failure stops the run; a summary screen is printed either way, and saved to $OUT/summary.txt):
#   env      python3, torch, a CUDA device, nvcc, the prepared data
#   build    the extension with its CUDA kernels (setup.py build_ext --inplace), then has_cuda_kernels() must hold
#   tests    the CUDA cases of the kernel, cell and search-step tests, with PROXYNAS_REQUIRE_CUDA=1: a CUDA case
#            fails instead of skipping when the kernels are missing
#   cell     fused vs reference network on the GPU in full float32 (TF32 off)
#   bench    reference / fused / fused + CUDA graph search steps with peak memory -> $OUT/search_step.{json,md}
#   search   a 2-epoch first-order DARTS search on the prepared 10% P1 CIFAR-10 proxy, eager ...
#   graphs   ... and with --cuda-graphs
# Environment: OUT (results, default ./gpu-results), PYTHON (default python3), GPU_CHECK_DATA (default
# ./gpu-check-data), GPU_CHECK_BUDGET (seconds for everything: 470, dry run 600, build check 3000),
# MAX_JOBS (parallel compiles of the build, default 16), GPU_CHECK_STEPS (run only these
# steps, e.g. "env search graphs"; the others are listed as skipped), PREPARE_COUNT (--prepare: number of proxy
# examples instead of 10%), SHARED (--prepare: the shared data folder, default ../shared).
set -uo pipefail

MODE=gpu
INTERNAL=()  # --internal-step MODE FUNCTION ARGS...: how `step` runs a function of this script under `timeout`
case "${1:-}" in
  "") ;;
  --prepare) MODE=prepare ;;
  --dry-run) MODE=dry ;;
  --build-check) MODE=buildcheck ;;
  --internal-step) MODE="$2"; shift 2; INTERNAL=("$@") ;;
  -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
  *) echo "gpu_check.sh: unknown argument '$1' (use --prepare, --dry-run, --build-check or nothing)" >&2; exit 2 ;;
esac

SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.." || exit 2
ROOT="$PWD"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif command -v python3 >/dev/null 2>&1; then PY=python3
else PY=python
fi
DATA="${GPU_CHECK_DATA:-$ROOT/gpu-check-data}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

if [ "$MODE" = prepare ]; then
  SHARED="${SHARED:-$ROOT/../shared}"
  if [ -n "${PREPARE_COUNT:-}" ]; then size=(--count "$PREPARE_COUNT"); else size=(--portion 0.1); fi
  exec "$PY" benchmarks/gpu_prepare.py --shared "$SHARED" --out "$DATA" "${size[@]}"
fi

if [ "$MODE" = gpu ] || [ "$MODE" = buildcheck ]; then  # nvcc off PATH: the usual install places
  if ! command -v nvcc >/dev/null 2>&1; then
    for d in "${CUDA_HOME:-}" /usr/local/cuda /usr/local/cuda-13.0; do
      if [ -n "$d" ] && [ -x "$d/bin/nvcc" ]; then export PATH="$d/bin:$PATH"; break; fi
    done
  fi
fi  # CUDA_HOME itself is found by setup.py (scripts/cuda_locator.py): a real toolkit, not nvcc's folder

OUT="${OUT:-$ROOT/gpu-results}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export OUT GPU_CHECK_DATA="$DATA" PYTHON="$PY"
case "$MODE" in
  dry) BUDGET="${GPU_CHECK_BUDGET:-600}" ;;
  buildcheck) BUDGET="${GPU_CHECK_BUDGET:-3000}" ;;
  *) BUDGET="${GPU_CHECK_BUDGET:-470}" ;;
esac
START=$(date +%s)
SUMMARY=()
FAILED=""

summary() {
  {
    echo "==================== gpu_check ($MODE) summary ===================="
    echo "python: $PY, out: $OUT, data: $DATA, budget ${BUDGET}s, used $(( $(date +%s) - START ))s"
    printf '%s\n' "${SUMMARY[@]}"
    [ -f "$OUT/search_step.md" ] && cat "$OUT/search_step.md"
    if [ -n "$FAILED" ]; then echo "RESULT: FAILED at step '$FAILED' (log: $OUT/$FAILED.log)"; else echo "RESULT: OK"; fi
  } | tee "$OUT/summary.txt"
}

# step NAME LIMIT_S COMMAND...: run with the smaller of LIMIT_S and what is left of the budget; stop on failure.
step() {
  local name="$1" limit="$2"; shift 2
  if [ -n "${GPU_CHECK_STEPS:-}" ] && [[ " $GPU_CHECK_STEPS " != *" $name "* ]]; then
    SUMMARY+=("$(printf '%-8s skip  (not in GPU_CHECK_STEPS)' "$name")"); return 0
  fi
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if [ "$left" -lt 5 ]; then
    SUMMARY+=("$(printf '%-8s FAIL  out of the %ss time budget' "$name" "$BUDGET")")
    FAILED="$name"; summary; exit 1
  fi
  [ "$limit" -gt "$left" ] && limit="$left"
  # The per-step limits are the GPU run's; on a shared CPU (the dry run) only the whole budget bounds a step.
  [ "$MODE" = dry ] && limit="$left"
  local t0=$(date +%s)
  if [ "$(type -t "$1")" = function ]; then
    timeout "$limit" bash "$SELF" --internal-step "$MODE" "$@" >"$OUT/$name.log" 2>&1
  else
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  fi
  local rc=$? dt=$(( $(date +%s) - t0 ))
  local last; last="$(grep -v '^\s*$' "$OUT/$name.log" | tail -1 | cut -c1-110)"
  if [ "$rc" -eq 0 ]; then
    SUMMARY+=("$(printf '%-8s ok    %4ss  %s' "$name" "$dt" "$last")")
  else
    [ "$rc" -eq 124 ] && last="timed out after ${limit}s; $last"
    SUMMARY+=("$(printf '%-8s FAIL  %4ss  rc=%s  %s' "$name" "$dt" "$rc" "$last")")
    FAILED="$name"; summary; exit 1
  fi
}

check_env() {
  "$PY" - "$MODE" "$DATA" <<'PYEOF'
import shutil, sys
from pathlib import Path
import torch
mode, data = sys.argv[1], Path(sys.argv[2])
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda})")
problems = []
if mode in ("gpu", "buildcheck"):
    if torch.version.cuda is None:
        problems.append("torch is a CPU build")
    if shutil.which("nvcc") is None:
        problems.append("nvcc is not on PATH (set CUDA_HOME or PATH)")
if mode == "buildcheck":
    print("build check: no GPU needed; nvcc:", shutil.which("nvcc"))
    for p in problems:
        print("gpu_check env:", p)
    sys.exit(1 if problems else 0)
if mode == "gpu":
    if not torch.cuda.is_available():
        problems.append("no CUDA device is available to torch")
    else:
        print("device:", torch.cuda.get_device_name())
for f in ("entropy.txt", "cifar-10-batches-py/data_batch_1"):
    if not (data / f).is_file():
        problems.append(f"{data / f} is missing: run `bash benchmarks/gpu_check.sh --prepare` where the shared "
                        "data is, and take gpu-check-data/ along")
for p in problems:
    print("gpu_check env:", p)
sys.exit(1 if problems else 0)
PYEOF
}

check_kernels() {
  "$PY" - "$MODE" <<'PYEOF'
import sys
from proxynas_fast import extension as e
mode = sys.argv[1]
ok = {"gpu": e.has_cuda_kernels(), "buildcheck": e.built_with_cuda()}.get(mode, e.has_cpu_kernels())
print(f"extension: cpu kernels {e.has_cpu_kernels()}, cuda kernels built {e.built_with_cuda()}, "
      f"usable {e.has_cuda_kernels()}, import error {e.import_error()}")
sys.exit(0 if ok else 1)
PYEOF
}

build() {
  if [ "$MODE" = gpu ] || [ "$MODE" = buildcheck ]; then
    local temp=()  # the build check keeps one object folder per torch, so that checking two torches in turn
    # recompiles only what changed (the GPU run uses setup.py's default, build/temp.*)
    [ "$MODE" = buildcheck ] && temp=(--build-temp "build/temp-buildcheck-$("$PY" -c 'import torch; print(torch.__version__)')")
    FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}" \
      "$PY" setup.py build_ext --inplace "${temp[@]}" || { echo "build failed"; return 1; }
  else  # the dry run keeps the installed extension; it runs setup.py's source discovery and options only
    "$PY" setup.py --name || { echo "setup.py failed"; return 1; }
  fi
  # A fresh interpreter: `_C` must import from the repository and say it holds CUDA kernels (build check), run on
  # the device (GPU run) or at least load (dry run).
  check_kernels
}

PROXY_COUNT=$( (grep -c . "$DATA/entropy.txt" 2>/dev/null) || true)
PROXY_COUNT="${PROXY_COUNT:-0}"
if [ "$MODE" = gpu ]; then
  DEVICE=cuda; TEST_ENV=(env PROXYNAS_REQUIRE_CUDA=1)
  CELL_ARGS=(); BENCH_ARGS=(--steps 10); SEARCH_ARGS=(--epochs 2)
else
  DEVICE=cpu; TEST_ENV=(env)
  CELL_ARGS=(--channels 4 --layers 3 --batch 2); BENCH_ARGS=(--toy --steps 1 --shapes cifar)
  SEARCH_ARGS=(--epochs 1 --batch-size 8 --layers 3 --init-channels 4)
  # The toy search: one step of 8 weight + 8 architecture examples (the drawings and the model dominate its time).
  [ "$PROXY_COUNT" -gt 16 ] && PROXY_COUNT=16
fi
search() {
  "$PY" -m proxynas_fast.search --dataset cifar10 --data-dir "$DATA" --no-download \
    --entropy-file "$DATA/entropy.txt" --selection p1 --count "$PROXY_COUNT" --strategy darts \
    --backend fused --device "$DEVICE" --no-progress "${SEARCH_ARGS[@]}" "$@"
}
graphs() {
  if [ "$MODE" = gpu ]; then
    rm -rf "$OUT/search-graphs"
    search --cuda-graphs --out "$OUT/search-graphs"
  else  # CUDA graphs need CUDA: the dry run checks that the option is there
    "$PY" -m proxynas_fast.search --help | grep -q -- "--cuda-graphs" && echo "--cuda-graphs is an option of search"
  fi
}

if [ "${#INTERNAL[@]}" -gt 0 ]; then
  "${INTERNAL[@]}"
  exit $?
fi

step env 60 check_env
if [ "$MODE" = buildcheck ]; then
  step build "$BUDGET" build
  summary
  exit 0
fi
step build 240 build
step tests 150 "${TEST_ENV[@]}" "$PY" -m pytest -q -p no:cacheprovider -x -k cuda \
  tests/test_ops.py tests/test_fused_kernels.py tests/test_entropy_histogram.py tests/test_fused_cell.py \
  tests/test_search_steps.py
step cell 60 "$PY" benchmarks/gpu_cell_check.py --device "$DEVICE" "${CELL_ARGS[@]}"
step bench 150 "$PY" benchmarks/gpu_bench.py --out "$OUT" --device "$DEVICE" "${BENCH_ARGS[@]}"
rm -rf "$OUT/search"  # a second run into the same OUT starts a new search (the folder would ask for --resume)
step search 90 search --out "$OUT/search"
step graphs 90 graphs
summary
