// What this build of grass contains, and whether CUDA can run here and now.
#pragma once
#include <string>

namespace grass {

struct BuildInfo {
  std::string version;
  bool cuda_compiled = false;  // CUDA kernels built into this library
  int openmp_max_threads = 1;
  std::string simd;            // e.g. "avx512f", "avx2", "sse2", "neon", "none"
  std::string compiler;
};

BuildInfo build_info();

struct CudaStatus {
  bool available = false;
  int device_count = 0;
  std::string reason;  // why not, when unavailable ("" when available)
};

// Never throws: without a driver or device this reports why.
CudaStatus cuda_runtime_status();

}  // namespace grass
