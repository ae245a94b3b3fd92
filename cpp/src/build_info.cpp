#include "grass/build_info.h"

#include <omp.h>

#include "cpu_dispatch.h"

#if __has_include("grass_build_note.h")  // written by cpp/CMakeLists.txt (cmake/grass_cuda.cmake)
#include "grass_build_note.h"
#else
#define GRASS_CUDA_BUILD_NOTE "not recorded by this build"
#endif

namespace grass {

BuildInfo build_info() {
  BuildInfo info;
  info.version = GRASS_VERSION;
#if defined(GRASS_WITH_CUDA)
  info.cuda_compiled = true;
  detail::cuda_versions(&info.cuda_runtime_version, &info.cuda_driver_version);
#endif
  info.cuda_build_note = GRASS_CUDA_BUILD_NOTE;
  info.openmp_max_threads = omp_get_max_threads();
  const detail::CpuLevelChoice& cpu = detail::cpu_level_choice();
  info.cpu_levels = cpu.compiled;
  info.cpu_level = cpu.chosen;
  info.cpu_level_error = cpu.error;
  if (cpu.chosen == "avx512") {
    info.simd = "avx512f";
  } else if (cpu.chosen == "avx2") {
    info.simd = "avx2";
  } else if (cpu.chosen == "native") {
    info.simd = "native";
  } else if (cpu.chosen == "baseline") {
#if defined(__x86_64__) || defined(__i386__)
    info.simd = "sse4.2";
#elif defined(__ARM_NEON)
    info.simd = "neon";
#else
    info.simd = "none";
#endif
  } else {
    info.simd = "none";
  }
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
  status.reason = std::string("grass was built without CUDA kernels: ") + GRASS_CUDA_BUILD_NOTE;
  return status;
}
#endif

}  // namespace grass
