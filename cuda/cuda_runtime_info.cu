// cuda_runtime_status() for CUDA builds: asks the (statically linked) runtime.
#include <cuda_runtime.h>

#include <string>

#include "grass/build_info.h"

namespace grass {

CudaStatus cuda_runtime_status() {
  CudaStatus status;
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    // Without any NVIDIA driver the runtime answers "insufficient driver" too, which reads
    // as if a newer driver would help; name the likely cause first.
    if (err == cudaErrorInsufficientDriver || err == cudaErrorNoDevice)
      status.reason = "no usable NVIDIA driver or GPU on this machine (the CUDA runtime says: ";
    else
      status.reason = "the CUDA runtime could not count devices (it says: ";
    status.reason += std::string(cudaGetErrorString(err)) + ")";
    cudaGetLastError();  // clear the sticky error so later calls are not affected
    return status;
  }
  if (count == 0) {
    status.reason = "no CUDA device is visible";
    return status;
  }
  status.available = true;
  status.device_count = count;
  return status;
}

namespace detail {
void cuda_versions(int* runtime, int* driver) {
  *runtime = 0;
  *driver = 0;
  if (cudaRuntimeGetVersion(runtime) != cudaSuccess) *runtime = 0;
  if (cudaDriverGetVersion(driver) != cudaSuccess) *driver = 0;  // 0 when no driver is installed
  cudaGetLastError();
}
}  // namespace detail

}  // namespace grass
