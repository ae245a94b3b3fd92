// Tuning knobs of the CUDA launch plans, for benchmarks only (bench/cuda/bench_cuda.cu
// --plan). Not part of the umbrella header: applications never need it, and nothing in
// grass reads these from the environment.
#pragma once
#include <cstdint>

namespace grass {

struct CudaPlanOverride {
  int rows = 0;         // rows of B per block of the sketch kernels (0: the planner's choice)
  int64_t chunks = 0;   // chunks per row in fast mode (0: the planner's choice)
  bool verbose = false;  // print every plan to stderr
};

// Applies to every later launch in this process (CUDA builds; a no-op otherwise).
void set_cuda_plan_override(const CudaPlanOverride& override);

}  // namespace grass
