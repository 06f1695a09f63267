#!/usr/bin/env bash
# Creates ./.venv (or $PROXYNAS_VENV), installs torch, the dependencies listed in pyproject.toml (runtime, test and
# build; the one list), DALI, and builds proxynas_fast with its native extension. The torch version installed is
# pyproject.toml's [tool.proxynas_fast] torch. CUDA kernels are compiled where torch sees a CUDA device, or with
# FORCE_CUDA=1 (CI, the GPU check); elsewhere the CPU kernels only.
#
# Run it again and it skips what is installed and up to date: the packages when the wanted torch (that build: the
# CPU one with a .../whl/cpu TORCH_INDEX_URL, else a CUDA one) and the other dependencies import, the extension
# when a stamp of its sources, the build settings and the torch version matches the one written after the last
# good build (build/install-stamp). PROXYNAS_REBUILD=1 forces the build;
# PROXYNAS_CHECK_ONLY=1 only says what is up to date and what would be installed or built, and changes nothing.
# The build prints one line per compiled file; its full output is in build/install-build.log.
#
# CPU-only install (a 1.3 GB venv instead of 6.3 GB; no CUDA kernels, no DALI):
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu PROXYNAS_SKIP_DALI=1 bash scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PROXYNAS_VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==$("$PY" scripts/project_deps.py torch .)}
STAMP=build/install-stamp
BUILD_LOG=build/install-build.log
mapfile -t DEPS < <("$PY" scripts/project_deps.py deps .)
[ "${#DEPS[@]}" -gt 0 ] && [ "$TORCH_SPEC" != "torch==" ] || { echo "error: scripts/install.sh: cannot read the dependencies from pyproject.toml" >&2; exit 2; }
# The torch build asked for: an index of torch's own builds (.../whl/cpu, .../whl/cu130) gives its wheels a local
# version (2.14.1+cpu), which an exact version without one gets appended, so that pip replaces another build of
# the same version (it takes 2.14.1+cu130 to satisfy torch==2.14.1, but not torch==2.14.1+cpu).
TORCH_WANT=$TORCH_SPEC
variant=${TORCH_INDEX_URL:-}
variant=${variant%/}
variant=${variant##*/}
if [[ "$TORCH_SPEC" == *==* && "$TORCH_SPEC" != *+* && "$variant" =~ ^(cpu|cu[0-9]+|rocm[0-9.]+|xpu)$ ]]; then
  TORCH_WANT="$TORCH_SPEC+$variant"
fi

if [ ! -x "$VENV/bin/python" ]; then
  if [ -n "${PROXYNAS_CHECK_ONLY:-}" ]; then
    echo "$VENV: missing, would create it, install $TORCH_WANT ${DEPS[*]} (and DALI unless PROXYNAS_SKIP_DALI)"
    echo "extension: not installed, would build"
    exit 0
  fi
  echo "creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

# ---- packages: skipped when the wanted torch and every dependency are there ----
have_packages() {
  "$VPY" - "$TORCH_WANT" "${DEPS[@]}" <<'PY'
import re, sys
from importlib.metadata import PackageNotFoundError, version
spec, deps = sys.argv[1], [re.split(r"[\s<>=!~;\[]", d, 1)[0] for d in sys.argv[2:]]
name, _, wanted = spec.partition("==")
wanted = wanted.strip()
try:
    # The full version, local part included: the CPU build 2.14.1+cpu is not the CUDA build 2.14.1+cu130. A
    # version without a local part asks for PyPI's build, a CUDA one: any build of it but a CPU one is that.
    have = version(name.strip())
    base, _, local = have.partition("+")
    if wanted and not (have == wanted if "+" in wanted else base == wanted and not local.startswith("cpu")):
        sys.exit(2)
except PackageNotFoundError:
    sys.exit(2)
try:
    all(version(d) for d in deps)
except PackageNotFoundError:
    sys.exit(1)
PY
}  # exit status 0: all there, 1: torch is but another package is not, 2: not the torch asked for
installed_torch=$("$VPY" -c "from importlib.metadata import version; print(version('torch'))" 2>/dev/null || true)
have=0
have_packages || have=$?
if [ "$have" -eq 0 ]; then
  echo "packages: already installed ($TORCH_WANT and ${#DEPS[@]} others), skipping"
elif [ -n "${PROXYNAS_CHECK_ONLY:-}" ]; then
  if [ "$have" -eq 2 ] && [ -n "$installed_torch" ]; then echo "packages: would replace torch $installed_torch"; fi
  echo "packages: would install $TORCH_WANT ${DEPS[*]}"
else
  if [ "$have" -eq 2 ] && [ -n "$installed_torch" ]; then  # pip would keep another build of the same version
    echo "packages: replacing torch $installed_torch"
    "$VPY" -m pip uninstall -q -y torch
  fi
  echo "packages: installing $TORCH_WANT ${DEPS[*]}"
  "$VPY" -m pip install -q --upgrade pip setuptools wheel
  "$VPY" -m pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple} \
    "$TORCH_WANT" "${DEPS[@]}"
fi
# DALI is optional at run time (a PIL pipeline replaces it), but installed here so its path is tested.
if [ -n "${PROXYNAS_SKIP_DALI:-}" ]; then
  echo "DALI: skipped (PROXYNAS_SKIP_DALI); the PIL loader will be used"
elif "$VPY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('nvidia.dali') is None)" 2>/dev/null; then
  echo "DALI: already installed, skipping"
elif [ -n "${PROXYNAS_CHECK_ONLY:-}" ]; then
  echo "DALI: would install nvidia-dali-cuda130"
else
  echo "DALI: installing nvidia-dali-cuda130"
  "$VPY" -m pip install -q nvidia-dali-cuda130 || echo "warning: DALI not installed; the PIL loader will be used"
fi

# CUDA kernels where they can run: a CUDA device visible to torch, or FORCE_CUDA=1 (setup.py decides the same way,
# and finds the toolkit itself). PROXYNAS_SKIP_CUDA=1 skips them.
cuda_kernels=0
if [ -z "${PROXYNAS_SKIP_CUDA:-}" ]; then
  if [ "${FORCE_CUDA:-0}" = 1 ] || "$VPY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null
  then cuda_kernels=1; fi
fi
kernels="CPU kernels only (no CUDA device visible; FORCE_CUDA=1 builds the CUDA kernels too)"
if [ "$cuda_kernels" = 1 ]; then kernels="CPU and CUDA kernels (nvcc: the slow part, up to 15 min)"; fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

# ---- the extension: skipped when the stamp of what it was built from is unchanged ----
extension_loads() {
  "$VPY" -c "import sys
from importlib.metadata import version
import proxynas_fast.extension as e
version('proxynas_fast')
sys.exit(0 if e.has_cpu_kernels() else 1)" 2>/dev/null
}
want=$("$VPY" scripts/build_stamp.py .)
if [ -z "${PROXYNAS_REBUILD:-}" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && extension_loads; then
  echo "extension: up to date (sources, settings and torch unchanged since the last build), skipping the build"
elif [ -n "${PROXYNAS_CHECK_ONLY:-}" ]; then
  echo "extension: out of date (or not installed), would build $kernels"
  exit 0
else
  echo "extension: building proxynas_fast._C with $kernels, $MAX_JOBS jobs; full log in $BUILD_LOG"
  mkdir -p build
  rm -f "$STAMP"
  start=$(date +%s)
  set +e
  "$VPY" -m pip install -v --no-build-isolation -e . < /dev/null 2>&1 | tee "$BUILD_LOG" \
    | awk -f scripts/build_progress.awk
  status=${PIPESTATUS[0]}
  set -e
  if [ "$status" -ne 0 ]; then
    echo "error: the build failed (pip exit $status); the end of $BUILD_LOG:" >&2
    tail -n 40 "$BUILD_LOG" >&2
    exit 1
  fi
  echo "extension: built in $(( $(date +%s) - start )) s"
  echo "$want" > "$STAMP"
fi
"$VPY" - <<'PY'
from proxynas_fast import extension
print(f"proxynas_fast installed: CPU kernels {extension.has_cpu_kernels()}, "
      f"CUDA kernels compiled {extension.built_with_cuda()}, usable {extension.has_cuda_kernels()}")
if not extension.has_cpu_kernels():
    raise SystemExit(f"the native extension failed to load: {extension.import_error()}")
PY
