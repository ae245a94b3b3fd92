// Fused FactGraSS on CUDA: y[b] = S z[b], z[b] = vec(G'_b^T A'_b), never writing z.
// Design: docs/cuda.md.
//
// z is cut into 64 x 64 tiles (64 rows o' by 64 columns i'; column o' * k_in + i' of S).
// A block owns a group of R samples and a chunk of tiles. Per tile it reads the tile's
// mask indices once, then per sample computes the tile like kron_cuda (the masked factor
// columns gathered into shared memory 16 steps of t at a time, a 4 x 4 register tile per
// thread, sums over t in ascending order) and scatters it into the sample's accumulator:
//
//  fast:          the replica-0 codes of the thread's 16 entries are hashed once per tile
//                 and reused for the R samples; shared-memory atomics;
//  deterministic: the tile is staged in shared memory and added through SortedTile (stable
//                 sort by bucket, one thread per bucket run, fixed order); one block per
//                 sample group owns its rows, so no atomics anywhere.
//
// The accumulator rows live in shared memory (or in y when k floats do not fit) and are
// flushed as in the other sketch kernels (sketch.cuh).
#include <algorithm>
#include <type_traits>

#include "common.cuh"
#include "kron_tile.cuh"
#include "grass/args.h"
#include "grass/factgrass.h"
#include "sketch.cuh"

namespace grass {

namespace {

using gpu::kBucketMask;
using gpu::kNegBit;

constexpr int kThreads = 256;
constexpr int kTO = 64;                    // tile rows o'
constexpr int kTI = 64;                    // tile columns i'
constexpr int kTileEntries = kTO * kTI;    // 4096
constexpr int kIPT = kTileEntries / kThreads;  // 16 entries per thread (4 x 4)
constexpr int kTK = 16;                    // steps of t staged at once
constexpr int kRowsMax = 8;

using DetTile = gpu::SortedTile<kThreads, kIPT>;

struct FactArgs {
  int64_t T, d_in, d_out, k_in, k_out;
  const int64_t* idx_in;   // [k_in], values in [0, d_in'] (d_in: the bias ones column)
  const int64_t* idx_out;  // [k_out]
  int64_t tiles_i;         // tiles along i'
  int64_t n_tiles;         // tiles of z
};

constexpr size_t round16(size_t n) { return (n + 15) / 16 * 16; }
// Deterministic mode's block-wide dynamic shared memory: the sorted tile, then z's tile.
constexpr size_t kDetStorageBytes = round16(sizeof(typename DetTile::Storage));
constexpr size_t kDetExtraBytes = kDetStorageBytes + kTileEntries * sizeof(float);

// z tile of sample b: z[m][n] = sum_t g[b, t, s_out[ty*4+m]] * a~[b, t, s_in[tx*4+n]].
template <typename Tag>
__device__ void z_tile(const typename Tag::storage* __restrict__ a,
                       const typename Tag::storage* __restrict__ g, int64_t b, const FactArgs& f,
                       const int64_t* s_in, const int64_t* s_out, float (*As)[kTI],
                       float (*Gs)[kTO], float (&z)[4][4]) {
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
#pragma unroll
  for (int m = 0; m < 4; ++m)
#pragma unroll
    for (int n = 0; n < 4; ++n) z[m][n] = 0.0f;
  for (int64_t t0 = 0; t0 < f.T; t0 += kTK) {
    const int tk = static_cast<int>(gpu::min64(kTK, f.T - t0));
    for (int e = threadIdx.x; e < kTK * kTI; e += kThreads) {
      const int t = e / kTI, c = e % kTI;
      const int64_t row = b * f.T + t0 + t;
      float av = 0.0f, gv = 0.0f;
      if (t < tk) {
        const int64_t si = s_in[c], so = s_out[c];
        if (si >= 0) av = si == f.d_in ? 1.0f : gpu::to_float(a[row * f.d_in + si], Tag{});
        if (so >= 0) gv = gpu::to_float(g[row * f.d_out + so], Tag{});
      }
      As[t][c] = av;
      Gs[t][c] = gv;
    }
    __syncthreads();
    gpu::accumulate_tile_4x4(As, Gs, tk, tx, ty, z);
    __syncthreads();  // As/Gs (and the tile's indices) are free again after this
  }
}

template <typename Tag, bool kDet, bool kGlobalAcc>
__global__ void __launch_bounds__(kThreads, kDet ? 1 : 3)
    factgrass_kernel(const typename Tag::storage* __restrict__ a,
                     const typename Tag::storage* __restrict__ g, FactArgs f, gpu::SketchArgs sa) {
  __shared__ __align__(16) float As[kTK][kTI];
  __shared__ __align__(16) float Gs[kTK][kTO];
  __shared__ int64_t s_in[kTI];   // a~ column of each tile column (-1 past k_in)
  __shared__ int64_t s_out[kTO];  // g column of each tile row (-1 past k_out)
  __shared__ uint32_t s_code[kDet ? 1 : kIPT][kThreads];  // fast mode: replica-0 codes
  extern __shared__ float4 dyn_smem4[];
  unsigned char* const dyn = reinterpret_cast<unsigned char*>(dyn_smem4);
  // Dynamic layout: [sorted tile storage, z tile] (deterministic), then the accumulator.
  typename DetTile::Storage& tile_storage = *reinterpret_cast<typename DetTile::Storage*>(dyn);
  float* const zt = reinterpret_cast<float*>(dyn + kDetStorageBytes);
  float* const acc = reinterpret_cast<float*>(dyn + (kDet ? kDetExtraBytes : 0));

  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int64_t k = sa.k;
  const int64_t chunk_tiles = sa.chunk / kTileEntries;
  const int64_t tile_begin = static_cast<int64_t>(blockIdx.x) * chunk_tiles;
  const int64_t tile_end = gpu::min64(f.n_tiles, tile_begin + chunk_tiles);

  for (int64_t grp = blockIdx.y; grp < sa.n_groups; grp += gridDim.y) {
    const int64_t b0 = grp * sa.R;
    const int rows = static_cast<int>(gpu::min64(sa.R, sa.B - b0));
    if constexpr (!kGlobalAcc) gpu::zero_shared<kThreads>(acc, rows * k);

    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
      const int64_t o0 = (tile / f.tiles_i) * kTO;
      const int64_t i0 = (tile % f.tiles_i) * kTI;
      if (threadIdx.x < kTI) {
        const int64_t i = i0 + threadIdx.x;
        s_in[threadIdx.x] = i < f.k_in ? __ldg(f.idx_in + i) : -1;
      } else if (threadIdx.x < kTI + kTO) {
        const int64_t o = o0 + threadIdx.x - kTI;
        s_out[threadIdx.x - kTI] = o < f.k_out ? __ldg(f.idx_out + o) : -1;
      }
      __syncthreads();

      // The thread's entries (o0 + ty*4 + m, i0 + tx*4 + n): column of S and validity.
      // Fast mode: their replica-0 codes, hashed once for all samples, in the thread's own
      // shared-memory slots (registers are taken by the z tile).
      if constexpr (!kDet) {
        const gpu::ReplicaBlock rb = gpu::replicas(sa).block();
#pragma unroll
        for (int m = 0; m < 4; ++m)
#pragma unroll
          for (int n = 0; n < 4; ++n)
            s_code[m * 4 + n][threadIdx.x] =
                gpu::sjlt_code(sa.key, (o0 + ty * 4 + m) * f.k_in + i0 + tx * 4 + n, sa.s, 0, rb);
      }
      const bool o_ok[4] = {o0 + ty * 4 + 0 < f.k_out, o0 + ty * 4 + 1 < f.k_out,
                            o0 + ty * 4 + 2 < f.k_out, o0 + ty * 4 + 3 < f.k_out};
      const bool i_ok[4] = {i0 + tx * 4 + 0 < f.k_in, i0 + tx * 4 + 1 < f.k_in,
                            i0 + tx * 4 + 2 < f.k_in, i0 + tx * 4 + 3 < f.k_in};

      for (int r = 0; r < rows; ++r) {
        float z[4][4];
        z_tile<Tag>(a, g, b0 + r, f, s_in, s_out, As, Gs, z);
        float* const dst = kGlobalAcc ? sa.y + (b0 + r) * k : acc + r * k;
        if constexpr (!kDet) {
#pragma unroll
          for (int m = 0; m < 4; ++m)
#pragma unroll
            for (int n = 0; n < 4; ++n)
              if (o_ok[m] && i_ok[n]) {
                const uint32_t c = s_code[m * 4 + n][threadIdx.x];
                atomicAdd(dst + (c & kBucketMask), gpu::signed_value(z[m][n], sa.scale, c));
              }
          gpu::ReplicaCursor cur = gpu::replicas(sa);
          cur.advance();
          for (int64_t rep = 1; rep < sa.s; ++rep, cur.advance()) {
            const gpu::ReplicaBlock rb = cur.block();
#pragma unroll
            for (int m = 0; m < 4; ++m)
#pragma unroll
              for (int n = 0; n < 4; ++n)
                if (o_ok[m] && i_ok[n]) {
                  const uint32_t c = gpu::sjlt_code(
                      sa.key, (o0 + ty * 4 + m) * f.k_in + i0 + tx * 4 + n, sa.s, rep, rb);
                  atomicAdd(dst + (c & kBucketMask), gpu::signed_value(z[m][n], sa.scale, c));
                }
          }
        } else {
#pragma unroll
          for (int m = 0; m < 4; ++m)
#pragma unroll
            for (int n = 0; n < 4; ++n) zt[(ty * 4 + m) * kTI + tx * 4 + n] = z[m][n];
          gpu::ReplicaCursor cur = gpu::replicas(sa);
          for (int64_t rep = 0; rep < sa.s; ++rep, cur.advance()) {
            const gpu::ReplicaBlock rb = cur.block();
            uint32_t bucket[kIPT], entry[kIPT];
#pragma unroll
            for (int m = 0; m < 4; ++m)
#pragma unroll
              for (int n = 0; n < 4; ++n) {
                const uint32_t c = gpu::sjlt_code(
                    sa.key, (o0 + ty * 4 + m) * f.k_in + i0 + tx * 4 + n, sa.s, rep, rb);
                bucket[m * 4 + n] = (o_ok[m] && i_ok[n]) ? (c & kBucketMask) : static_cast<uint32_t>(k);
                entry[m * 4 + n] = static_cast<uint32_t>((ty * 4 + m) * kTI + tx * 4 + n) | (c & kNegBit);
              }
            DetTile::sort(tile_storage, bucket, entry, sa.end_bit);  // barrier: zt visible
            DetTile::apply(tile_storage, zt, dst, static_cast<uint32_t>(k), sa.scale);
            __syncthreads();
          }
        }
      }
      __syncthreads();  // all samples done before the next tile's indices are written
    }
    if constexpr (!kGlobalAcc) {
      __syncthreads();
      gpu::flush_rows<kThreads>(sa, sa.flush, acc, b0, rows);
      __syncthreads();
    }
  }
}

template <typename Tag>
void launch_factgrass(const void* a, const void* g, const FactArgs& f, int64_t B,
                      gpu::SketchArgs sa, bool deterministic, cudaStream_t stream) {
  using S = typename Tag::storage;
  const char* func = "factgrass_cuda";
  const gpu::DeviceLimits dev = gpu::device_limits(func);
  auto run = [&](auto det_tag) {
    constexpr bool kDet = decltype(det_tag)::value;
    auto k_shared = factgrass_kernel<Tag, kDet, false>;
    auto k_global = factgrass_kernel<Tag, kDet, true>;
    const gpu::KernelInfo info = gpu::kernel_info(k_shared, func);
    const size_t fixed = info.static_smem + (kDet ? kDetExtraBytes : 0);
    GRASS_CHECK_IN(func, fixed <= dev.smem_block_optin,
                "the deterministic mode needs %zu bytes of shared memory per block, the device "
                "offers %zu", fixed, dev.smem_block_optin);
    gpu::RowsPlan plan = gpu::plan_rows(dev, kThreads, info.regs, B, f.n_tiles * kTileEntries,
                                        sa.k, kDet, kTileEntries, 0, fixed, kRowsMax);
    plan.dyn_smem += kDet ? kDetExtraBytes : 0;
    GRASS_CHECK_IN(func, plan.n_chunks <= gpu::kMaxGridX, "too many tile chunks (%lld)",
                   (long long)plan.n_chunks);
    gpu::begin_output(sa, plan, stream, func);
    auto kernel = plan.global_acc ? k_global : k_shared;
    gpu::allow_dynamic_smem(kernel, plan.dyn_smem, func);
    const dim3 grid(static_cast<unsigned>(plan.n_chunks), gpu::grid_yz(plan.n_groups));
    kernel<<<grid, kThreads, plan.dyn_smem, stream>>>(static_cast<const S*>(a), static_cast<const S*>(g),
                                                      f, sa);
    gpu::check_cuda(cudaGetLastError(), "launch of factgrass_kernel", func);
  };
  if (deterministic) run(std::true_type{});
  else run(std::false_type{});
}

}  // namespace

void factgrass_cuda(const void* a, const void* g, DType dtype, const KronShape& shape,
                    const int64_t* idx_in, int64_t k_in, const int64_t* idx_out, int64_t k_out,
                    float* y, const SjltParams& params, bool deterministic, void* stream) {
  detail::check_factgrass_args(dtype, shape, k_in, k_out, params, __func__);
  const int64_t B = shape.B, T = shape.T, d_in = shape.d_in, d_out = shape.d_out;
  if (B == 0) return;
  // idx_in / idx_out live on the device: the caller checks their range (grass.ops does).
  GRASS_CHECK(a != nullptr && g != nullptr && y != nullptr, "a, g and y must not be null");
  GRASS_CHECK(idx_in != nullptr && idx_out != nullptr, "idx_in and idx_out must not be null");
  FactArgs f;
  f.T = T;
  f.d_in = d_in;
  f.d_out = d_out;
  f.k_in = k_in;
  f.k_out = k_out;
  f.idx_in = idx_in;
  f.idx_out = idx_out;
  f.tiles_i = gpu::ceil_div(k_in, kTI);
  f.n_tiles = f.tiles_i * gpu::ceil_div(k_out, kTO);
  gpu::SketchArgs sa = gpu::make_sketch_args(B, params);
  sa.y = y;
  dispatch_float_dtype(dtype, [&](auto tag) {
    launch_factgrass<decltype(tag)>(a, g, f, B, sa, deterministic, gpu::as_stream(stream));
  });
}

}  // namespace grass
