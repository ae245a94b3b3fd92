// FJLT on CUDA: y = (1/sqrt(k)) R H D x~. Design: docs/cuda.md.
//
// The Walsh-Hadamard transform of P = 2^m points is m radix-2 stages; stage h maps
// (a, b) = (v[i], v[i + h]) to (a + b, a - b). Stages run in ascending h with exactly that
// arithmetic, as on the CPU, so CUDA and CPU agree bit for bit.
//
//  * P <= kTile (8192 floats, 32 KiB): one block per row transforms the row in shared
//    memory and writes the k sampled rows (fjlt_small_kernel).
//  * Larger P: the padded, signed rows go to a scratch buffer (stream-ordered allocation)
//    in passes. A pass runs a range of stages [lo, hi) on tiles of kTile floats held in
//    shared memory: the first pass (lo = 0) works on contiguous blocks of kTile points
//    and reads x; later passes take, for 2^(hi-lo) indices m spaced 2^lo apart, W >= 32
//    consecutive low indices each, so global accesses stay coalesced. Then a gather
//    writes the k sampled rows. Rows are processed in batches so scratch stays bounded.
//
// The sampled rows come from grass::fjlt_rows on the host (the same draw as the CPU) and
// are copied to the device once per call with a stream-ordered copy.
#include <algorithm>
#include <cmath>
#include <vector>

#include "common.cuh"
#include "grass/args.h"
#include "grass/fjlt.h"
#include "grass/hash.h"

namespace grass {

namespace {

constexpr int kThreads = 512;
constexpr int kLogTile = 13;
constexpr int kTile = 1 << kLogTile;  // floats per shared-memory tile (32 KiB)
constexpr int kLogMinW = 5;           // later passes move >= 32 consecutive floats per index
constexpr size_t kMaxScratchBytes = size_t{256} << 20;
constexpr const char* kFunc = "fjlt_cuda";  // the API name errors report

// D: the sign of column j, drawn as in fjlt_signs (low bit set means -1).
__device__ __forceinline__ float fjlt_sign(uint64_t key, int64_t j) {
  return (draw(key, static_cast<uint64_t>(j)) & 1u) ? -1.0f : 1.0f;
}

// Stages s = 0 .. log_g - 1 over a shared tile laid out [G = 2^log_g][W = 2^log_w]; stage s
// pairs rows m and m + 2^s of the G dimension (all W columns alike). Ends synchronised.
__device__ void fwht_tile(float* sm, int log_g, int log_w) {
  if (log_g == 0) return;                     // a single point: nothing to do
  const int half = 1 << (log_g + log_w - 1);  // butterflies per stage
  const int wmask = (1 << log_w) - 1;
  for (int s = 0; s < log_g; ++s) {
    for (int q = threadIdx.x; q < half; q += kThreads) {
      const int w = q & wmask;
      const int mm = q >> log_w;
      const int m = ((mm >> s) << (s + 1)) | (mm & ((1 << s) - 1));  // bit s of m is 0
      const int i0 = (m << log_w) | w;
      const int i1 = i0 + (1 << (s + log_w));
      const float a = sm[i0], b = sm[i1];
      sm[i0] = a + b;
      sm[i1] = a - b;
    }
    __syncthreads();
  }
}

// P = 2^log_p <= kTile: block per row, the whole transform in shared memory.
template <typename Tag>
__global__ void __launch_bounds__(kThreads)
    fjlt_small_kernel(const typename Tag::storage* __restrict__ x, int64_t B, int64_t p, int log_p,
                      uint64_t sign_key, const int64_t* __restrict__ rows, int64_t k, float scale,
                      float* __restrict__ y) {
  __shared__ float sm[kTile];
  const int P = 1 << log_p;
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    const typename Tag::storage* xb = x + b * p;
    for (int i = threadIdx.x; i < P; i += kThreads)
      sm[i] = i < p ? gpu::to_float(xb[i], Tag{}) * fjlt_sign(sign_key, i) : 0.0f;
    __syncthreads();
    fwht_tile(sm, log_p, 0);
    float* yb = y + b * k;
    for (int64_t r = threadIdx.x; r < k; r += kThreads) yb[r] = sm[rows[r]] * scale;
    __syncthreads();  // before the next row overwrites the tile
  }
}

// One pass of stages [lo, hi) over rows [0, B) of w [B, P] (in place). kFromX: the first
// pass (lo = 0), which reads x, applies the signs and the zero padding instead of reading w.
template <typename Tag, bool kFromX>
__global__ void __launch_bounds__(kThreads)
    fjlt_pass_kernel(const typename Tag::storage* __restrict__ x, int64_t p, float* w, int64_t B,
                     int log_p, int lo, int hi, uint64_t sign_key) {
  __shared__ float sm[kTile];
  const int log_g = hi - lo;
  const int log_w = kLogTile - log_g;  // <= lo, so a tile's W low indices are consecutive
  const int64_t P = int64_t{1} << log_p;
  const int64_t n_tiles = P >> kLogTile;
  const int64_t tiles_per_hi = int64_t{1} << (lo - log_w);
  const int wmask = (1 << log_w) - 1;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    float* wb = w + b * P;
    const typename Tag::storage* xb = x + b * p;
    for (int64_t tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
      const int64_t hi_part = tile / tiles_per_hi;
      const int64_t l0 = (tile % tiles_per_hi) << log_w;
      const int64_t base = (hi_part << hi) + l0;
      for (int e = threadIdx.x; e < kTile; e += kThreads) {
        const int64_t j = base + (static_cast<int64_t>(e >> log_w) << lo) + (e & wmask);
        if constexpr (kFromX)
          sm[e] = j < p ? gpu::to_float(xb[j], Tag{}) * fjlt_sign(sign_key, j) : 0.0f;
        else
          sm[e] = wb[j];
      }
      __syncthreads();
      fwht_tile(sm, log_g, log_w);
      for (int e = threadIdx.x; e < kTile; e += kThreads) {
        const int64_t j = base + (static_cast<int64_t>(e >> log_w) << lo) + (e & wmask);
        wb[j] = sm[e];
      }
      __syncthreads();
    }
  }
}

// y[b, r] = w[b, rows[r]] * scale.
__global__ void __launch_bounds__(256)
    fjlt_gather_kernel(const float* __restrict__ w, int64_t B, int64_t P,
                       const int64_t* __restrict__ rows, int64_t k, float scale,
                       float* __restrict__ y) {
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y)
    for (int64_t r = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x; r < k;
         r += static_cast<int64_t>(gridDim.x) * 256)
      y[b * k + r] = w[b * P + rows[r]] * scale;
}

template <typename Tag>
void launch_fjlt(const void* x_, int64_t B, int64_t p, float* y, int64_t k, uint64_t seed,
                 cudaStream_t stream) {
  using S = typename Tag::storage;
  const S* x = static_cast<const S*>(x_);
  const int64_t P = fjlt_padded_size(p);
  int log_p = 0;
  while ((int64_t{1} << log_p) < P) ++log_p;
  const uint64_t sign_key = stream_key(seed, kStreamFjltSign);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(k)));

  // The sampled rows, drawn on the host exactly as fjlt_cpu does, copied stream-ordered.
  // (From pageable memory the copy returns once the data is staged, so `host_rows` may die.)
  std::vector<int64_t> host_rows(static_cast<size_t>(k));
  fjlt_rows(p, k, seed, host_rows.data());
  gpu::Scratch rows(static_cast<size_t>(k) * sizeof(int64_t), stream, kFunc);
  gpu::check_cuda(cudaMemcpyAsync(rows.as<int64_t>(), host_rows.data(),
                                  static_cast<size_t>(k) * sizeof(int64_t), cudaMemcpyHostToDevice,
                                  stream),
                  "cudaMemcpyAsync(rows)", kFunc);

  if (P <= kTile) {
    fjlt_small_kernel<Tag><<<gpu::grid_x(std::min<int64_t>(B, 1 << 20)), kThreads, 0, stream>>>(
        x, B, p, log_p, sign_key, rows.as<int64_t>(), k, scale, y);
    gpu::check_cuda(cudaGetLastError(), "launch of fjlt_small_kernel", kFunc);
    return;
  }

  const int64_t batch = std::max<int64_t>(
      1, std::min<int64_t>(B, static_cast<int64_t>(kMaxScratchBytes / (static_cast<size_t>(P) * sizeof(float)))));
  gpu::Scratch w(static_cast<size_t>(batch * P) * sizeof(float), stream, kFunc);
  const int64_t n_tiles = P >> kLogTile;
  for (int64_t b0 = 0; b0 < B; b0 += batch) {
    const int64_t nb = std::min(batch, B - b0);
    const dim3 grid(gpu::grid_x(std::min<int64_t>(n_tiles, 1 << 16)), gpu::grid_yz(nb));
    fjlt_pass_kernel<Tag, true><<<grid, kThreads, 0, stream>>>(x + b0 * p, p, w.as<float>(), nb,
                                                                log_p, 0, kLogTile, sign_key);
    gpu::check_cuda(cudaGetLastError(), "launch of fjlt_pass_kernel", kFunc);
    for (int lo = kLogTile; lo < log_p;) {
      const int hi = std::min(log_p, lo + kLogTile - kLogMinW);
      fjlt_pass_kernel<Tag, false><<<grid, kThreads, 0, stream>>>(x, p, w.as<float>(), nb, log_p,
                                                                   lo, hi, sign_key);
      gpu::check_cuda(cudaGetLastError(), "launch of fjlt_pass_kernel", kFunc);
      lo = hi;
    }
    const dim3 ggrid(gpu::grid_x(std::min<int64_t>(gpu::ceil_div(k, 256), 1 << 16)), gpu::grid_yz(nb));
    fjlt_gather_kernel<<<ggrid, 256, 0, stream>>>(w.as<float>(), nb, P, rows.as<int64_t>(), k,
                                                  scale, y + b0 * k);
    gpu::check_cuda(cudaGetLastError(), "launch of fjlt_gather_kernel", kFunc);
  }
}

}  // namespace

void fjlt_cuda(const void* x, DType dtype, int64_t B, int64_t p, float* y, int64_t k,
               uint64_t seed, void* stream) {
  detail::check_fjlt_args(dtype, B, p, k, __func__);
  if (B == 0) return;
  GRASS_CHECK(y != nullptr, "y must not be null");
  GRASS_CHECK(p == 0 || x != nullptr, "x must not be null");
  dispatch_float_dtype(dtype, [&](auto tag) {
    launch_fjlt<decltype(tag)>(x, B, p, y, k, seed, gpu::as_stream(stream));
  });
}

}  // namespace grass
