#!/usr/bin/env bash
# Creates ./.venv (or $PROXYNAS_VENV), installs torch + DALI + test tools, and builds proxynas_fast with its
# native extension. CUDA kernels are compiled whenever nvcc is found (FORCE_CUDA=1), even without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PROXYNAS_VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC" numpy scipy pillow tqdm matplotlib ninja mpmath \
  pytest pytest-benchmark
# DALI is optional at run time (a PIL pipeline replaces it), but installed here so its path is tested.
"$VENV/bin/python" -m pip install -q nvidia-dali-cuda130 || echo "warning: DALI not installed; the PIL loader will be used"

if [ -z "${CUDA_HOME:-}" ]; then
  for d in /usr/local/cuda-13.0 /usr/local/cuda; do
    if [ -x "$d/bin/nvcc" ]; then export CUDA_HOME=$d; break; fi
  done
fi
if [ -n "${CUDA_HOME:-}" ] && [ -z "${PROXYNAS_SKIP_CUDA:-}" ]; then
  export FORCE_CUDA=${FORCE_CUDA:-1}
  export PATH="$CUDA_HOME/bin:$PATH"
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
"$VENV/bin/python" -m pip install -q --no-build-isolation -e . 
"$VENV/bin/python" - <<'PY'
from proxynas_fast import extension
print(f"proxynas_fast installed: CPU kernels {extension.has_cpu_kernels()}, "
      f"CUDA kernels compiled {extension.built_with_cuda()}, usable {extension.has_cuda_kernels()}")
if not extension.has_cpu_kernels():
    raise SystemExit(f"the native extension failed to load: {extension.import_error()}")
PY
