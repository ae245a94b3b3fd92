#!/usr/bin/env bash
# Developer install: editable, reusing the cached CMake build in build/. Python files are
# read from python/grass directly; rerun this after changing C++ or CUDA sources.
# A lock keeps two concurrent rebuilds from sharing one build directory.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
exec flock "${TMPDIR:-/tmp}/grass-dev-install.lock" \
  "$PY" -m pip install -q --no-build-isolation --no-deps -e .
