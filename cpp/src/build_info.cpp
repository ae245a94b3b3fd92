#include "grass/build_info.h"

#include <omp.h>

namespace grass {

BuildInfo build_info() {
  BuildInfo info;
  info.version = GRASS_VERSION;
#if defined(GRASS_WITH_CUDA)
  info.cuda_compiled = true;
#endif
  info.openmp_max_threads = omp_get_max_threads();
#if defined(__AVX512F__)
  info.simd = "avx512f";
#elif defined(__AVX2__)
  info.simd = "avx2";
#elif defined(__SSE2__)
  info.simd = "sse2";
#elif defined(__ARM_NEON)
  info.simd = "neon";
#else
  info.simd = "none";
#endif
#if defined(__clang__)
  info.compiler = "clang " __clang_version__;
#elif defined(__GNUC__)
  info.compiler = "gcc " __VERSION__;
#else
  info.compiler = "unknown";
#endif
  return info;
}

#if !defined(GRASS_WITH_CUDA)
CudaStatus cuda_runtime_status() {
  CudaStatus status;
  status.reason = "grass was built without CUDA kernels (no CUDA compiler at build time, or GRASS_ENABLE_CUDA=OFF)";
  return status;
}
#endif

}  // namespace grass
