// What this build of grass contains, and whether CUDA can run here and now.
#pragma once
#include <string>

namespace grass {

struct BuildInfo {
  std::string version;
  bool cuda_compiled = false;  // CUDA kernels built into this library
  int openmp_max_threads = 1;
  std::string simd;            // the chosen level's instruction set: "avx512f", "avx2", "sse4.2", "neon", "native", "none"
  std::string compiler;
  // CPU levels of the kernels (docs/portability.md): those compiled in, best last
  // ("baseline,avx2,avx512" with run-time dispatch; one of "native", "baseline" otherwise),
  // the one the kernels run at (chosen from the CPU, or forced by GRASS_CPU_CAPABILITY), and
  // why none can run when cpu_level is "" (the kernels then throw cpu_level_error).
  std::string cpu_levels;
  std::string cpu_level;
  std::string cpu_level_error;
  // CUDA: what the build decided and why ("nvcc 12.6 (...), matching torch 2.7.0 (CUDA
  // 12.6); architectures ..." or why it built CPU-only), and the versions of the CUDA
  // runtime linked in and of the driver found now (1000 * major + 10 * minor; 0: none).
  std::string cuda_build_note;
  int cuda_runtime_version = 0;
  int cuda_driver_version = 0;
};

BuildInfo build_info();

struct CudaStatus {
  bool available = false;
  int device_count = 0;
  std::string reason;  // why not, when unavailable ("" when available)
};

// Never throws: without a driver or device this reports why.
CudaStatus cuda_runtime_status();

#if defined(GRASS_WITH_CUDA)
namespace detail {
// The linked CUDA runtime's version and the installed driver's (0 without a driver).
void cuda_versions(int* runtime, int* driver);
}  // namespace detail
#endif

}  // namespace grass
