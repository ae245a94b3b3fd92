// Mask gather on CUDA: out[b, j] = x[b, idx[j]], a byte gather for any element size.
// Thread per (column j, rows of a grid-stride loop): idx[j] is read once per thread and
// reused for every row it visits; reads of x follow the (usually sorted) indices, writes of
// out are coalesced.
#include <algorithm>

#include "common.cuh"
#include "grass/mask.h"

namespace grass {

namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    mask_gather_kernel(const T* __restrict__ x, int64_t B, int64_t p, const int64_t* __restrict__ idx,
                       int64_t kp, T* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; j < kp; j += stride) {
    const int64_t src = __ldg(idx + j);
    for (int64_t b = blockIdx.y; b < B; b += gridDim.y) out[b * kp + j] = __ldg(x + b * p + src);
  }
}

}  // namespace

void mask_gather_cuda(const void* x, DType dtype, int64_t B, int64_t p, const int64_t* idx,
                      int64_t kp, void* out, void* stream) {
  GRASS_CHECK(B >= 0, "B must be >= 0, got %lld", (long long)B);
  GRASS_CHECK(p >= 0, "p must be >= 0, got %lld", (long long)p);
  GRASS_CHECK(kp >= 0, "kp must be >= 0, got %lld", (long long)kp);
  GRASS_CHECK(kp == 0 || p >= 1, "idx has %lld entries but x has no columns (p = 0)", (long long)kp);
  if (B == 0 || kp == 0) return;
  GRASS_CHECK(x != nullptr && idx != nullptr && out != nullptr, "x, idx and out must not be null");
  const dim3 grid(gpu::grid_x(std::min<int64_t>(gpu::ceil_div(kp, kThreads), 1 << 16)),
                  gpu::grid_yz(std::min<int64_t>(B, 1024)));
  const cudaStream_t st = gpu::as_stream(stream);
  switch (dtype_size(dtype)) {
    case 2:
      mask_gather_kernel<<<grid, kThreads, 0, st>>>(static_cast<const uint16_t*>(x), B, p, idx, kp,
                                                    static_cast<uint16_t*>(out));
      break;
    case 4:
      mask_gather_kernel<<<grid, kThreads, 0, st>>>(static_cast<const uint32_t*>(x), B, p, idx, kp,
                                                    static_cast<uint32_t*>(out));
      break;
    case 8:
      mask_gather_kernel<<<grid, kThreads, 0, st>>>(static_cast<const uint64_t*>(x), B, p, idx, kp,
                                                    static_cast<uint64_t*>(out));
      break;
    default:
      GRASS_CHECK(false, "unsupported dtype %s", dtype_name(dtype));
  }
  GRASS_CUDA_CHECK_LAUNCH("mask_gather_kernel");
}

}  // namespace grass
