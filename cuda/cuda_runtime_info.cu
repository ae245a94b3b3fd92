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
    status.reason = std::string("CUDA runtime reports: ") + cudaGetErrorString(err);
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

}  // namespace grass
