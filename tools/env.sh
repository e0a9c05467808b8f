#!/usr/bin/env bash
# Creates (or refreshes) mmattn's development environment. Idempotent: every step checks whether it
# is already done and skips itself, so a second run with nothing changed takes seconds.
#
#   MMATTN_VENV   where the virtualenv lives (default: ~/.cache/mmattn/venv)
#   MMATTN_CACHE  where built wheels are kept (default: ~/.cache/mmattn)
#   PYTHON        the interpreter that creates the venv (default: python3.11, else python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${MMATTN_CACHE:-$HOME/.cache/mmattn}"
VENV="${MMATTN_VENV:-$CACHE/venv}"
WHEELS="$CACHE/wheels"
PY_CREATE="${PYTHON:-$(command -v python3.11 || command -v python3)}"
export PIP_CONSTRAINT="$ROOT/requirements/constraints.txt"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch and torchvision from this machine's local wheel store. mmpretrain imports torchvision,
# and no torchvision exists for the CPU-only torch 2.13.0 build here (PyPI's torchvision wheels
# link against CUDA torch), so the stack uses torch 2.14.1 + torchvision 0.29.1 (CUDA 13.0
# builds, which run on the CPU too). Keep in sync with requirements/constraints.txt.
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
STEP="start"
TOTAL=6

trap 'echo "make env: FAILED at step \"$STEP\" (see the output above)." >&2' ERR

step() {  # step N "description"
  STEP="$2"
  echo "[env] step $1/$TOTAL: $2"
}

hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

step 1 "virtualenv at $VENV"
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PY_CREATE" -m venv "$VENV"
  echo "      created with $("$VENV/bin/python" --version)"
else
  echo "      exists ($("$VENV/bin/python" --version))"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip)
mkdir -p "$WHEELS"

step 2 "build tools (requirements/build.txt)"
stamp="$VENV/.mmattn-build-$(hash_of "$ROOT/requirements/build.txt")"
if [[ ! -f "$stamp" ]]; then
  "${PIP[@]}" install -q -r "$ROOT/requirements/build.txt"
  touch "$stamp"
else
  echo "      up to date"
fi

step 3 "torch==$TORCH_VERSION, torchvision==$TORCHVISION_VERSION"
if ! "$PY" -c "import sys, torch, torchvision; v = lambda m: m.__version__.split('+')[0]; \
sys.exit(v(torch) != '$TORCH_VERSION' or v(torchvision) != '$TORCHVISION_VERSION')" 2>/dev/null; then
  echo "      installing (several GB from the local wheel store; a few minutes)"
  "${PIP[@]}" install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi
"$PY" -c "import torch, torchvision; print('      torch', torch.__version__, '| torchvision', torchvision.__version__)"

WHEELS="$WHEELS/torch-$TORCH_VERSION"  # mmcv's ops are built against one torch ABI
mkdir -p "$WHEELS"
step 4 "mmcv 2.1.0 with compiled ops (wheel cached in $WHEELS)"
mmcv_stamp="$VENV/.mmattn-mmcv-torch$TORCH_VERSION"  # which torch the installed mmcv was built for
if [[ ! -f "$mmcv_stamp" ]] || \
   ! "$PY" -c "import mmcv, sys; from mmcv.ops import nms; sys.exit(mmcv.__version__ != '2.1.0')" 2>/dev/null; then
  shopt -s nullglob
  wheels=("$WHEELS"/mmcv-2.1.0-*.whl)
  if (( ${#wheels[@]} == 0 )); then
    echo "      no cached wheel: building mmcv from source (about 12 minutes on 2 cores)"
    src=$(mktemp -d)
    "${PIP[@]}" download -q --no-deps --no-binary mmcv --no-build-isolation -d "$src" mmcv==2.1.0
    tar xzf "$src"/mmcv-2.1.0.tar.gz -C "$src"
    # torch 2.14's headers need C++20; mmcv 2.1.0's setup.py hard-codes -std=c++17
    sed -i "s/'-std=c++17'/'-std=c++20'/g" "$src/mmcv-2.1.0/setup.py"
    MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-2}" "${PIP[@]}" wheel -q --no-cache-dir \
      --no-build-isolation --no-deps "$src/mmcv-2.1.0" -w "$WHEELS"
    rm -rf "$src"
    wheels=("$WHEELS"/mmcv-2.1.0-*.whl)
  else
    echo "      reusing ${wheels[0]}"
  fi
  "${PIP[@]}" install -q --force-reinstall --no-deps "${wheels[0]}"
  "${PIP[@]}" install -q "${wheels[0]}"  # and mmcv's own requirements (opencv, addict, yapf, ...)
  rm -f "$VENV"/.mmattn-mmcv-torch*
  touch "$mmcv_stamp"
fi
"$PY" -c "import mmcv; from mmcv.ops import nms; print('      mmcv', mmcv.__version__, 'with ops')"

step 5 "OpenMMLab stack, test and deployment tools (requirements/runtime.txt, tests.txt, deploy.txt)"
stamp="$VENV/.mmattn-reqs-$(hash_of "$ROOT/requirements/runtime.txt" "$ROOT/requirements/tests.txt" "$ROOT/requirements/deploy.txt" "$ROOT/requirements/constraints.txt")"
if [[ ! -f "$stamp" ]]; then
  "${PIP[@]}" install -q -r "$ROOT/requirements/runtime.txt" -r "$ROOT/requirements/tests.txt"
  touch "$stamp"
else
  echo "      up to date"
fi

step 6 "mmattn (editable, compiles mmattn._C)"
src_hash=$(cd "$ROOT" && find setup.py mmattn/ops/csrc -type f | sort | xargs cat | sha256sum | cut -c1-16)
root_hash=$(echo "$ROOT" | sha256sum | cut -c1-8)  # the editable install points at one checkout
stamp="$VENV/.mmattn-ext-$src_hash-$root_hash-torch$TORCH_VERSION-${MMATTN_WITH_OPS:-1}"
ext_ok="import sys, mmattn, mmattn.ops as o
sys.exit(not mmattn.__file__.startswith('$ROOT/') or
         (not o.has_compiled_ops() and '${MMATTN_WITH_OPS:-1}' != '0'))"
if [[ ! -f "$stamp" ]] || ! (cd /tmp && "$PY" -c "$ext_ok" 2>/dev/null); then
  rm -f "$VENV"/.mmattn-ext-*
  log="$VENV/mmattn-build.log"
  echo "      compiling (log: $log)"
  if ! (cd "$ROOT" && MAX_JOBS="${MAX_JOBS:-2}" "${PIP[@]}" install --no-build-isolation --no-deps \
        -e . >"$log" 2>&1); then
    grep -E "error|Error" "$log" | head -40 >&2 || true
    tail -20 "$log" >&2
    false
  fi
  touch "$stamp"
else
  echo "      up to date"
fi
(cd /tmp && "$PY" -c "$ext_ok" && "$PY" -c "import mmattn, mmattn.ops as o; print('      mmattn', mmattn.__version__, '| compiled ops:', o.has_compiled_ops())")
STEP="done"
echo "[env] ready: $VENV"
