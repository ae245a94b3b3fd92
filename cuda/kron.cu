// Kronecker reconstruction on CUDA: per sample the [d_out, d_in'] matrix G_b^T A~_b, a
// batched GEMM with inner dimension T. Design: docs/cuda.md.
//
// A block computes a 64 x 64 tile of one sample's output (rows o, columns i) with 256
// threads, each holding a 4 x 4 register tile; a~ and g are staged through shared memory
// 16 steps of t at a time (converted to float, the bias column as ones). Every output is
// sum_t g[t, o] * a~[t, i] accumulated from 0 in ascending t, like the CPU kernel.
#include <algorithm>

#include "common.cuh"
#include "kron_tile.cuh"
#include "grass/args.h"
#include "grass/kron.h"

namespace grass {

namespace {

constexpr int kThreads = 256;
constexpr int kTileO = 64;  // output rows o per block
constexpr int kTileI = 64;  // output columns i per block
constexpr int kTK = 16;     // steps of t staged at once

template <typename Tag>
__global__ void __launch_bounds__(kThreads)
    kron_kernel(const typename Tag::storage* __restrict__ a, const typename Tag::storage* __restrict__ g,
                int64_t B, int64_t T, int64_t d_in, int64_t d_out, int64_t d_aug,
                float* __restrict__ out) {
  __shared__ __align__(16) float As[kTK][kTileI];  // a~[t0 + t, i0 + c]
  __shared__ __align__(16) float Gs[kTK][kTileO];  // g[t0 + t, o0 + c]
  const int tx = threadIdx.x & 15;  // columns tx*4 .. tx*4+3 of the tile
  const int ty = threadIdx.x >> 4;  // rows ty*4 .. ty*4+3
  const int64_t tiles_i = (d_aug + kTileI - 1) / kTileI;
  const int64_t tiles_o = (d_out + kTileO - 1) / kTileO;
  for (int64_t b = blockIdx.z; b < B; b += gridDim.z) {
    for (int64_t ot = blockIdx.y; ot < tiles_o; ot += gridDim.y) {
      for (int64_t it = blockIdx.x; it < tiles_i; it += gridDim.x) {
        const int64_t o0 = ot * kTileO, i0 = it * kTileI;
        float acc[4][4];
#pragma unroll
        for (int m = 0; m < 4; ++m)
#pragma unroll
          for (int n = 0; n < 4; ++n) acc[m][n] = 0.0f;
        for (int64_t t0 = 0; t0 < T; t0 += kTK) {
          const int tk = static_cast<int>(gpu::min64(kTK, T - t0));
          for (int e = threadIdx.x; e < kTK * kTileI; e += kThreads) {
            const int t = e / kTileI, c = e % kTileI;
            const int64_t row = (b * T + t0 + t);
            const int64_t i = i0 + c, o = o0 + c;
            float av = 0.0f, gv = 0.0f;
            if (t < tk) {
              if (i < d_in) av = gpu::to_float(a[row * d_in + i], Tag{});
              else if (i == d_in && d_aug > d_in) av = 1.0f;  // bias column
              if (o < d_out) gv = gpu::to_float(g[row * d_out + o], Tag{});
            }
            As[t][c] = av;
            Gs[t][c] = gv;
          }
          __syncthreads();
          gpu::accumulate_tile_4x4(As, Gs, tk, tx, ty, acc);
          __syncthreads();
        }
#pragma unroll
        for (int m = 0; m < 4; ++m) {
          const int64_t o = o0 + ty * 4 + m;
          if (o >= d_out) continue;
          float* row = out + (b * d_out + o) * d_aug;
#pragma unroll
          for (int n = 0; n < 4; ++n) {
            const int64_t i = i0 + tx * 4 + n;
            if (i < d_aug) row[i] = acc[m][n];
          }
        }
      }
    }
  }
}

}  // namespace

void kron_cuda(const void* a, const void* g, DType dtype, const KronShape& shape, float* out,
               void* stream) {
  detail::check_kron_args(dtype, shape, __func__);
  const int64_t B = shape.B, T = shape.T, d_in = shape.d_in, d_out = shape.d_out;
  const int64_t d_aug = shape.d_in_aug();
  if (B == 0) return;
  GRASS_CHECK(a != nullptr && g != nullptr && out != nullptr, "a, g and out must not be null");
  const dim3 grid(gpu::grid_x(gpu::ceil_div(d_aug, kTileI)), gpu::grid_yz(gpu::ceil_div(d_out, kTileO)),
                  gpu::grid_yz(B));
  const cudaStream_t st = gpu::as_stream(stream);
  dispatch_float_dtype(dtype, [&](auto tag) {
    using Tag = decltype(tag);
    using S = typename Tag::storage;
    kron_kernel<Tag><<<grid, kThreads, 0, st>>>(static_cast<const S*>(a), static_cast<const S*>(g), B,
                                                T, d_in, d_out, d_aug, out);
  });
  GRASS_CUDA_CHECK_LAUNCH("kron_kernel");
}

}  // namespace grass
