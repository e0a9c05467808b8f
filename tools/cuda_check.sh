#!/usr/bin/env bash
# Builds mmattn's CUDA kernels against a CUDA build of torch and checks that every op has a CUDA
# (and CPU) kernel registered. Needs nvcc (CUDA_HOME), no GPU. Idempotent: the venv and the build
# folder are reused, so a second run only recompiles what changed.
#
# The extension is built OUT OF TREE: mmattn/_C*.so in the repository is the CPU build that the
# rest of the project uses and is never touched here.
#
#   MMATTN_CUDA_VENV   the venv with the CUDA torch (default: ~/.cache/mmattn/cuda-venv)
#   MMATTN_CUDA_BUILD  build folder (default: ~/.cache/mmattn/cuda-build)
#   CUDA_HOME          CUDA toolkit (default: /usr/local/cuda)
#   TORCH_CUDA_ARCH_LIST  GPU architectures to compile for (default: "8.0;9.0")
#   MAX_JOBS           parallel compile jobs (default: 2)
#   PYTHON             interpreter that creates the venv (default: python3.11, else python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$HOME/.cache/mmattn"
VENV="${MMATTN_CUDA_VENV:-$CACHE/cuda-venv}"
BUILD="${MMATTN_CUDA_BUILD:-$CACHE/cuda-build}"
TORCH_VERSION="2.14.1"
PY_CREATE="${PYTHON:-$(command -v python3.11 || command -v python3)}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
STEP="start"
TOTAL=4

trap 'echo "cuda-check: FAILED at step \"$STEP\" (see the output above)." >&2' ERR

step() {  # step N "description"
  STEP="$2"
  echo "[cuda-check] step $1/$TOTAL: $2"
}

step 1 "virtualenv with torch==$TORCH_VERSION (CUDA build) at $VENV"
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PY_CREATE" -m venv "$VENV"
  echo "      created with $("$VENV/bin/python" --version)"
else
  echo "      exists ($("$VENV/bin/python" --version))"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch; assert torch.__version__.startswith('$TORCH_VERSION')" \
    2>/dev/null; then
  echo "      installing torch==$TORCH_VERSION (about 5.5 GB)"
  t0=$SECONDS
  "$PY" -m pip install -q "torch==$TORCH_VERSION"
  echo "      installed in $((SECONDS - t0)) s"
fi
if ! "$PY" -c "import setuptools, wheel, ninja, numpy, sys
v = tuple(int(x) for x in setuptools.__version__.split('.')[:2])
sys.exit(not (77, 0) <= v < (81, 0))" 2>/dev/null; then
  "$PY" -m pip install -q "setuptools>=77,<81" wheel ninja numpy
fi
"$PY" -c "import torch; print('      torch', torch.__version__, '| CUDA', torch.version.cuda)"
"$PY" -c "import torch, sys; sys.exit(torch.version.cuda is None)" || {
  echo "      torch in $VENV has no CUDA support" >&2; false; }

step 2 "nvcc at $CUDA_HOME"
if [[ ! -x "$CUDA_HOME/bin/nvcc" ]]; then
  echo "      no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME)" >&2
  false
fi
"$CUDA_HOME/bin/nvcc" --version | tail -n 2 | sed 's/^/      /'

step 3 "build mmattn._C with FORCE_CUDA=1 out of tree in $BUILD"
mkdir -p "$BUILD/lib" "$BUILD/temp"
t0=$SECONDS
(cd "$ROOT" && PATH="$VENV/bin:$CUDA_HOME/bin:$PATH" FORCE_CUDA=1 \
  TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}" MAX_JOBS="${MAX_JOBS:-2}" \
  "$PY" setup.py -q build_ext --build-lib "$BUILD/lib" --build-temp "$BUILD/temp")
echo "      built in $((SECONDS - t0)) s"
shopt -s nullglob
libs=("$BUILD"/lib/mmattn/_C*.so)
if (( ${#libs[@]} != 1 )); then
  echo "      expected exactly one mmattn/_C*.so under $BUILD/lib, found ${#libs[@]}" >&2
  false
fi
echo "      ${libs[0]}"

step 4 "check that every op has CUDA and CPU kernels"
"$PY" "$ROOT/tools/check_cuda_ops.py" "${libs[0]}"
STEP="done"
echo "[cuda-check] passed"
