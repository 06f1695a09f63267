#!/usr/bin/env bash
# One-shot check on a lent GPU machine (finishes in < 8 minutes on an H100):
#   1. build the extension with its CUDA kernels against this machine's torch,
#   2. run the CUDA tests of the fused kernels and cells,
#   3. time reference / fused / fused + CUDA graph search steps (CIFAR batch 64, ImageNet 224 px batch 64)
#      with peak memory,
#   4. write search_step.{json,md} (device name included) to $OUT (default ./gpu-results);
#   5. if `python -m proxynas_fast.search` exists, a short first-order DARTS search on a 10% P1 proxy of the
#      CIFAR-10 JPEGs, eager and with --cuda-graphs, recording the time per epoch.
# Usage: bash benchmarks/gpu_check.sh   (from the repository root)
set -uo pipefail
OUT="${OUT:-./gpu-results}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
log() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$OUT/gpu_check.log"; }

log "device: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo unknown)"
log "1. build"
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}" \
  timeout 300 "$PY" -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1
build_rc=$?
log "build rc=$build_rc"
"$PY" -c "from proxynas_fast import extension as e; print('cuda kernels:', e.has_cuda_kernels(), e.import_error())" \
  2>&1 | tee -a "$OUT/gpu_check.log"

log "2. CUDA tests"
timeout 150 "$PY" -m pytest -q tests/test_fused_kernels.py tests/test_fused_cell.py tests/test_search_steps.py -k cuda -p no:cacheprovider >"$OUT/tests.log" 2>&1
log "kernel tests rc=$? ($(tail -1 "$OUT/tests.log"))"
timeout 120 "$PY" - >"$OUT/cell_cuda.log" 2>&1 <<'PYEOF'
# fused vs reference network on the GPU, float32, one forward/backward
import copy, torch
from proxynas_fast.darts.model_search import Network
torch.manual_seed(0)
ref = Network(C=8, num_classes=10, layers=5, criterion=None, backend="reference").cuda()
fus = copy.deepcopy(ref); fus.backend = "fused"
x = torch.randn(8, 3, 32, 32, device="cuda"); y = torch.randint(0, 10, (8,), device="cuda")
for m in (ref, fus):
    torch.nn.functional.cross_entropy(m(x), y).backward()
diff_out = (ref(x) - fus(x)).abs().max().item()
diff_alpha = max((a.grad - b.grad).abs().max().item() for a, b in zip(ref.arch_parameters(), fus.arch_parameters()))
diff_w = max((a.grad - b.grad).abs().max().item() for a, b in zip(ref.parameters(), fus.parameters()))
print(f"max |logits diff| {diff_out:.2e}, |alpha grad diff| {diff_alpha:.2e}, |weight grad diff| {diff_w:.2e}")
assert diff_out < 1e-3 and diff_alpha < 1e-3 and diff_w < 1e-2
print("fused cell on CUDA matches the reference")
PYEOF
log "cell check rc=$? ($(tail -1 "$OUT/cell_cuda.log"))"

log "3. timings"
timeout 240 "$PY" benchmarks/gpu_bench.py --out "$OUT" --steps 10 >"$OUT/bench.log" 2>&1
log "bench rc=$?"
cat "$OUT/search_step.md" 2>/dev/null | tee -a "$OUT/gpu_check.log"

log "5. proxy search (if available)"
if "$PY" -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('proxynas_fast.search') else 1)"; then
  DATA=""; ENTROPY=""
  for root in ../shared shared /work/shared; do
    if [ -d "$root/data/cifar10-jpeg" ] && [ -f "$root/reference/entropy/cifar10_resnet20_index_entropy_class.txt" ]; then
      DATA="$root/data/cifar10-jpeg"; ENTROPY="$root/reference/entropy/cifar10_resnet20_index_entropy_class.txt"; break
    fi
  done
  if [ -n "$DATA" ]; then
    start=$(date +%s)
    timeout 150 "$PY" -m proxynas_fast.search --dataset cifar10 --data-dir "$DATA" --no-download \
      --entropy-file "$ENTROPY" --selection p1 --portion 0.1 --strategy darts --epochs 3 \
      --backend fused --device cuda --out "$OUT/search" >"$OUT/search.log" 2>&1
    rc=$?
    log "search rc=$rc, $(( $(date +%s) - start )) s for 3 epochs (per-epoch times in search.log)"
    start=$(date +%s)
    timeout 120 "$PY" -m proxynas_fast.search --dataset cifar10 --data-dir "$DATA" --no-download \
      --entropy-file "$ENTROPY" --selection p1 --portion 0.1 --strategy darts --epochs 3 \
      --backend fused --device cuda --cuda-graphs --out "$OUT/search-graphs" >"$OUT/search-graphs.log" 2>&1
    rc=$?
    log "search --cuda-graphs rc=$rc, $(( $(date +%s) - start )) s for 3 epochs (per-epoch times in search-graphs.log)"
  else
    log "no CIFAR-10 JPEG folder found; search skipped"
  fi
else
  log "python -m proxynas_fast.search not available; search skipped"
fi
log "done"
