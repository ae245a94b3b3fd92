#!/usr/bin/env bash
# Runs the CUDA kernels of cuda/ on the CPU under a small emulated CUDA runtime and compares
# every result with the CPU kernels (check_kernels.cpp). A verification aid for machines
# without a GPU: it executes the real kernel code (indexing, barriers, plans, flushes,
# shared-memory opt-ins), not GPU timing or memory ordering. See docs/cuda.md.
#
#   cuda/emulation/run.sh          quick cases (about 2.5 minutes on 2 cores, build included)
#   cuda/emulation/run.sh --full   adds larger cases (opt-in shared memory, P = 2^19, more
#                                  rows past one column range)
#   cuda/emulation/run.sh --bench  runs `bench_cuda --quick` instead (checks the harness
#                                  end to end; the times are the emulator's, meaningless)
#
# Needs python3 and a C++20 compiler with <barrier> (g++ >= 11 or clang >= 15).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/build/cuda-emulation"
mkdir -p "$out/src" "$out/obj"
python3 "$here/transform.py" "$root/cuda" "$out/src"
python3 "$here/transform.py" "$root/bench/cuda" "$out/src"
CXX=${CXX:-g++}
flags=(-std=c++20 -O1 -pthread -fopenmp -Wno-unknown-pragmas -I"$here/include" -I"$out/src"
       -I"$root/cpp/include" -DGRASS_WITH_CUDA=1 '-DGRASS_VERSION="emulated"')
pids=()
for f in cuda_runtime_info sketch sjlt mask masked_sjlt fjlt kron factgrass; do
  "$CXX" "${flags[@]}" -c "$out/src/$f.emu.cpp" -o "$out/obj/cuda_$f.o" & pids+=($!)
done
for f in build_info cpu_dispatch sjlt mask masked_sjlt fjlt kron factgrass; do
  "$CXX" "${flags[@]}" -O2 -c "$root/cpp/src/$f.cpp" -o "$out/obj/cpu_$f.o" & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
if [[ "${1:-}" == "--bench" ]]; then
  # A 2-SM emulated device keeps the benchmark's grids small.
  echo 'namespace emu { struct SmallDevice { SmallDevice(); } small_device; }
        #include <cuda_runtime.h>
        emu::SmallDevice::SmallDevice() { emu::sms = 2; }' > "$out/src/small_device.cpp"
  "$CXX" "${flags[@]}" -c "$out/src/small_device.cpp" -o "$out/obj/small_device.o"
  "$CXX" "${flags[@]}" -c "$out/src/bench_cuda.emu.cpp" -o "$out/obj/bench_cuda.o"
  "$CXX" "${flags[@]}" "$out"/obj/{cuda_,cpu_}*.o "$out/obj/small_device.o" "$out/obj/bench_cuda.o" \
    -o "$out/bench_cuda"
  exec "$out/bench_cuda" --quick
fi
"$CXX" "${flags[@]}" -c "$here/check_kernels.cpp" -o "$out/obj/check_kernels.o"
"$CXX" "${flags[@]}" "$out"/obj/{cuda_,cpu_}*.o "$out/obj/check_kernels.o" -o "$out/check_kernels"
if [[ "${1:-}" == "--full" ]]; then exec "$out/check_kernels" --full; else exec "$out/check_kernels"; fi
