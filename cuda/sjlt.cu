// SJLT on CUDA: dense rows, CSR rows and the transpose. Design: docs/cuda.md.
//
// Dense rows run the shared row-sketch kernel (sketch_rows.cuh). CSR rows have their own
// kernel: a block sketches one part of one row (rows are split into at most G parts of
// equal length, decided on the device from indptr), so the cost is O(nnz * s) whatever the
// row lengths. The transpose is a gather, one thread per (column, group of rows): it needs
// no atomics and is deterministic.
#include <algorithm>

#include "common.cuh"
#include "grass/args.h"
#include "grass/sjlt.h"
#include "sketch.cuh"
#include "sketch_rows.cuh"

namespace grass {

namespace {

using gpu::kBucketMask;
using gpu::kNegBit;
using gpu::max64;
using gpu::min64;

// ---- CSR ------------------------------------------------------------------------------

constexpr int kCsrEPT = 4;            // non-zeros per thread per tile
constexpr int64_t kCsrMaxParts = 64;  // blocks per row at most

// Row b is split into parts = clamp(ceil(len / min_part), 1, G) parts of equal length;
// block (c, b) sketches part c. A row in one part is stored; a row in several parts is
// added atomically into zeroed y (fast mode; the deterministic mode always uses G = 1).
//
// Deterministic mode: the row's non-zeros are summed in the segments of
// grass/detail/sum_order.h (CsrSegments, as sjlt_csr_cpu does), each segment's partial
// sum from +0, folded into y in segment order. When a.width > 0 (p above one column
// range), each tile is cut at the first non-zero outside the current segment (a
// block-wide minimum); when that non-zero is the tile's first, the partial is folded and
// its segment begins. Every thread keeps the same copy of the segment state.
template <typename Tag, int NT, bool kDet, bool kGlobalAcc>
__global__ void __launch_bounds__(NT, gpu::kMinBlocks<NT, kDet>)
    sjlt_csr_kernel(const int64_t* __restrict__ indptr, const int64_t* __restrict__ indices,
                    const typename Tag::storage* __restrict__ values, int64_t G, int64_t min_part,
                    gpu::SketchArgs a) {
  constexpr int EPT = kCsrEPT;
  constexpr int C = NT * EPT;
  using Tile = gpu::SortedTile<NT, EPT>;
  using TileStorage = std::conditional_t<kDet, typename Tile::Storage, int>;
  __shared__ TileStorage tile_storage;
  extern __shared__ float4 dyn_smem4[];
  float* const dyn_smem = reinterpret_cast<float*>(dyn_smem4);
  const int64_t k = a.k;
  float* const acc = dyn_smem;                               // [k]
  float* const vals = kGlobalAcc ? dyn_smem : dyn_smem + k;  // [C] (deterministic)

  // Deterministic, several segments: each tile's first entry outside the current segment,
  // as an offset (C: none), a block-wide minimum. Two slots, used by alternate tiles, so
  // one barrier per tile suffices: after reading slot i, thread 0 resets slot i ^ 1, which
  // every thread read before that barrier; and each tile passes a barrier after the reset
  // (its sort, or its fold) before the next tile's atomicMin on slot i ^ 1.
  __shared__ int tile_cut[2];
  const bool segmented = kDet && a.width > 0;
  if (segmented && threadIdx.x == 0) tile_cut[0] = tile_cut[1] = C;  // zero_shared syncs
  int slot = 0;

  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y) {
    const int64_t start = indptr[b];
    const int64_t len = max64(0, indptr[b + 1] - start);
    const int64_t parts = max64(1, min64(G, (len + min_part - 1) / min_part));
    const int64_t c = blockIdx.x;
    if (c >= parts) continue;  // uniform over the block
    const int64_t lo = start + len * c / parts;
    const int64_t hi = start + len * (c + 1) / parts;
    // Where the sums (deterministic: the current segment's partial sums) accumulate.
    float* const dst = !kGlobalAcc ? acc
                       : (kDet && a.partials != nullptr) ? a.partials + static_cast<int64_t>(blockIdx.y) * k
                                                         : a.y + b * k;
    const bool fold = kDet && dst != a.y + b * k;  // deterministic: partials folded into y
    if (!kGlobalAcc || fold) gpu::zero_shared<NT>(dst, k);
    detail::CsrSegments seg(segmented ? a.width : 1);
    bool first_fold = true;

    for (int64_t base = lo; base < hi;) {
      int64_t end = min64(hi, base + C);
      const int64_t e0 = base + static_cast<int64_t>(threadIdx.x) * EPT;
      int n = static_cast<int>(max64(0, min64(EPT, end - e0)));
      int64_t col[EPT];
      float v[EPT];
#pragma unroll
      for (int i = 0; i < EPT; ++i) col[i] = i < n ? __ldg(indices + e0 + i) : 0;
      if (segmented) {
        // The tile ends at its first non-zero outside the current segment.
        int mine = C;
#pragma unroll
        for (int i = EPT - 1; i >= 0; --i)
          if (i < n && !seg.holds(col[i])) mine = static_cast<int>(threadIdx.x) * EPT + i;
        if (mine < C) atomicMin(&tile_cut[slot], mine);
        __syncthreads();
        const int cut = tile_cut[slot];
        if (threadIdx.x == 0) tile_cut[slot ^ 1] = C;
        slot ^= 1;
        if (cut == 0) {   // the non-zero at base begins the next segment (uniform)
          if (fold) gpu::fold_rows<NT>(a, dst, b, 1, first_fold);
          first_fold = false;
          seg.restart(__ldg(indices + base));
          continue;
        }
        end = min64(end, base + cut);
        n = static_cast<int>(max64(0, min64(EPT, end - e0)));
      }
#pragma unroll
      for (int i = 0; i < EPT; ++i) v[i] = i < n ? gpu::to_float(__ldg(values + e0 + i), Tag{}) : 0.0f;
      if constexpr (!kDet) {
        gpu::ReplicaCursor cur = gpu::replicas(a);
        for (int64_t rep = 0; rep < a.s; ++rep, cur.advance()) {
          const gpu::ReplicaBlock rb = cur.block();
#pragma unroll
          for (int i = 0; i < EPT; ++i) {
            if (i < n) {
              const uint32_t code = gpu::sjlt_code(a.key, col[i], a.s, rep, rb);
              atomicAdd(dst + (code & kBucketMask), gpu::signed_value(v[i], a.scale, code));
            }
          }
        }
      } else {
#pragma unroll
        for (int i = 0; i < EPT; ++i) vals[threadIdx.x * EPT + i] = v[i];
        gpu::ReplicaCursor cur = gpu::replicas(a);
        for (int64_t rep = 0; rep < a.s; ++rep, cur.advance()) {
          const gpu::ReplicaBlock rb = cur.block();
          uint32_t bucket[EPT], entry[EPT];
#pragma unroll
          for (int i = 0; i < EPT; ++i) {
            const uint32_t code = gpu::sjlt_code(a.key, col[i], a.s, rep, rb);
            bucket[i] = i < n ? (code & kBucketMask) : static_cast<uint32_t>(k);
            entry[i] = (threadIdx.x * EPT + i) | (code & kNegBit);
          }
          Tile::sort(tile_storage, bucket, entry, a.end_bit);
          Tile::apply(tile_storage, vals, dst, static_cast<uint32_t>(k), a.scale);
          __syncthreads();
        }
      }
      base = end;
    }
    if (fold) {
      gpu::fold_rows<NT>(a, dst, b, 1, first_fold);
    } else if constexpr (!kGlobalAcc) {
      __syncthreads();
      gpu::flush_rows<NT>(a, parts == 1 ? gpu::Flush::kStore : gpu::Flush::kAtomic, acc, b, 1);
      __syncthreads();
    }
  }
}

template <typename Tag>
void launch_csr(const int64_t* indptr, const int64_t* indices, const void* values, int64_t p,
                gpu::SketchArgs a, bool deterministic, cudaStream_t stream, const char* func) {
  using S = typename Tag::storage;
  const gpu::DeviceLimits dev = gpu::device_limits(func);
  auto run = [&](auto det_tag, auto nt_tag) {
    constexpr bool kDet = decltype(det_tag)::value;
    constexpr int NT = decltype(nt_tag)::value;
    constexpr int64_t C = static_cast<int64_t>(NT) * kCsrEPT;
    auto k_shared = sjlt_csr_kernel<Tag, NT, kDet, false>;
    auto k_global = sjlt_csr_kernel<Tag, NT, kDet, true>;
    const gpu::KernelInfo info = gpu::kernel_info(k_shared, func);
    const size_t static_bytes = info.static_smem;
    const size_t extra = kDet ? static_cast<size_t>(C) * sizeof(float) : 0;
    const size_t acc_bytes = static_cast<size_t>(a.k) * sizeof(float);
    const size_t budget =
        dev.smem_block_optin > static_bytes ? dev.smem_block_optin - static_bytes : 0;
    const bool global_acc = acc_bytes + extra > budget;
    const size_t dyn = global_acc ? extra : acc_bytes + extra;
    // Parts per row: enough blocks for about two waves, each part long enough that its
    // flush (k floats) costs at most half of its reads. Deterministic: one block per row.
    int64_t G = 1;
    int64_t min_part = C;
    if (!kDet) {
      const int resident = gpu::resident_blocks(dev, NT, dyn + static_bytes, info.regs);
      const int64_t target = 2 * static_cast<int64_t>(dev.sms) * resident;
      if (!global_acc) min_part = std::max<int64_t>(C, 2 * a.k);
      G = std::max<int64_t>(1, std::min<int64_t>({kCsrMaxParts, target / std::max<int64_t>(a.B, 1),
                                                   gpu::ceil_div(std::max<int64_t>(p, 1), min_part)}));
    }
    a.flush = global_acc ? gpu::Flush::kNone : (G == 1 ? gpu::Flush::kStore : gpu::Flush::kAtomic);
    a.vec_flush = a.k % 4 == 0 && gpu::aligned16(a.y);
    if (global_acc || G > 1)
      gpu::check_cuda(cudaMemsetAsync(a.y, 0, static_cast<size_t>(a.B * a.k) * sizeof(float), stream),
                      "cudaMemsetAsync(y)", func);
    // Deterministic mode, p above one column range: rows have several segments
    // (sum_order.h). With y rows as accumulators their partial sums go to device scratch,
    // one row of k floats per block.
    const int64_t width = detail::range_width(a.k);
    a.width = kDet && p > width ? width : 0;
    unsigned rows_y = gpu::grid_yz(a.B);
    const bool partials = a.width > 0 && global_acc;
    if (partials)
      rows_y = static_cast<unsigned>(std::min<size_t>(rows_y, std::max<size_t>(1, gpu::kPartialsBudget / acc_bytes)));
    const gpu::Scratch scratch(partials ? rows_y * acc_bytes : 0, stream, func);
    a.partials = scratch.as<float>();
    auto kernel = global_acc ? k_global : k_shared;
    gpu::allow_dynamic_smem(kernel, dyn, func);
    const dim3 grid(static_cast<unsigned>(G), rows_y);
    kernel<<<grid, NT, dyn, stream>>>(indptr, indices, static_cast<const S*>(values), G, min_part, a);
    gpu::check_cuda(cudaGetLastError(), "launch of sjlt_csr_kernel", func);
  };
  if (deterministic)
    run(std::true_type{}, std::integral_constant<int, 256>{});
  else
    run(std::false_type{}, std::integral_constant<int, 256>{});
}

// ---- transpose ------------------------------------------------------------------------

constexpr int kTransposeThreads = 256;
constexpr int kTransposeRows = 8;  // rows per thread: one column's codes serve 8 rows

// x[b, j] = (sum_r sign(j, r) * y[b, bucket(j, r)]) / sqrt(s); thread per (column, 8 rows).
// The same additions in the same order as sjlt_transpose_cpu, so the results are equal.
__global__ void __launch_bounds__(kTransposeThreads)
    sjlt_transpose_kernel(const float* __restrict__ y, int64_t p, float* __restrict__ x,
                          gpu::SketchArgs a) {
  const int64_t k = a.k;
  const int64_t n_groups = (a.B + kTransposeRows - 1) / kTransposeRows;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kTransposeThreads;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * kTransposeThreads + threadIdx.x; j < p;
       j += stride) {
    for (int64_t g = blockIdx.y; g < n_groups; g += gridDim.y) {
      const int64_t b0 = g * kTransposeRows;
      const int rows = static_cast<int>(min64(kTransposeRows, a.B - b0));
      float acc[kTransposeRows];
#pragma unroll
      for (int r = 0; r < kTransposeRows; ++r) acc[r] = 0.0f;
      gpu::ReplicaCursor cur = gpu::replicas(a);
      for (int64_t rep = 0; rep < a.s; ++rep, cur.advance()) {
        const uint32_t code = gpu::sjlt_code(a.key, j, a.s, rep, cur.block());
        const float* col = y + b0 * k + (code & kBucketMask);
#pragma unroll
        for (int r = 0; r < kTransposeRows; ++r) {
          if (r < rows) {
            const float v = __ldg(col + r * k);
            acc[r] += (code & kNegBit) ? -v : v;
          }
        }
      }
#pragma unroll
      for (int r = 0; r < kTransposeRows; ++r)
        if (r < rows) x[(b0 + r) * p + j] = acc[r] * a.scale;  // scaled once, as on the CPU
    }
  }
}

}  // namespace

void sjlt_cuda(const void* x, DType dtype, int64_t B, int64_t p, float* y,
               const SjltParams& params, bool deterministic, void* stream) {
  detail::check_sketch_args(dtype, B, p, params, __func__);
  if (B == 0) return;
  GRASS_CHECK(y != nullptr, "y must not be null");
  const cudaStream_t st = gpu::as_stream(stream);
  if (p == 0) {  // S has no columns: y = 0
    GRASS_CUDA_CHECK(cudaMemsetAsync(y, 0, static_cast<size_t>(B * params.k) * sizeof(float), st));
    return;
  }
  GRASS_CHECK(x != nullptr, "x must not be null");
  gpu::SketchArgs a = gpu::make_sketch_args(B, params);
  a.y = y;
  dispatch_float_dtype(dtype, [&](auto tag) {
    using Tag = decltype(tag);
    using S = typename Tag::storage;
    const bool vec = gpu::aligned16(x) && (p * static_cast<int64_t>(sizeof(S))) % 16 == 0;
    if (vec)
      gpu::launch_sketch_rows(gpu::DenseSource<Tag, true>{static_cast<const S*>(x), p}, p, a,
                              deterministic, st, "sjlt_cuda");
    else
      gpu::launch_sketch_rows(gpu::DenseSource<Tag, false>{static_cast<const S*>(x), p}, p, a,
                              deterministic, st, "sjlt_cuda");
  });
}

void sjlt_csr_cuda(const int64_t* indptr, const int64_t* indices, const void* values, DType dtype,
                   int64_t B, int64_t p, float* y, const SjltParams& params, bool deterministic,
                   void* stream) {
  detail::check_sketch_args(dtype, B, p, params, __func__);
  if (B == 0) return;
  GRASS_CHECK(y != nullptr && indptr != nullptr, "y and indptr must not be null");
  gpu::SketchArgs a = gpu::make_sketch_args(B, params);
  a.y = y;
  dispatch_float_dtype(dtype, [&](auto tag) {
    launch_csr<decltype(tag)>(indptr, indices, values, p, a, deterministic, gpu::as_stream(stream),
                              "sjlt_csr_cuda");
  });
}

void sjlt_transpose_cuda(const float* y, int64_t B, int64_t p, float* x, const SjltParams& params,
                         void* stream) {
  check_sjlt_params(params);
  GRASS_CHECK(B >= 0, "B must be >= 0, got %lld", (long long)B);
  GRASS_CHECK(p >= 0, "p must be >= 0, got %lld", (long long)p);
  if (B == 0 || p == 0) return;
  GRASS_CHECK(y != nullptr && x != nullptr, "y and x must not be null");
  gpu::SketchArgs a = gpu::make_sketch_args(B, params);
  const int64_t n_groups = gpu::ceil_div(B, kTransposeRows);
  const dim3 grid(gpu::grid_x(std::min<int64_t>(gpu::ceil_div(p, kTransposeThreads), 1 << 20)),
                  gpu::grid_yz(n_groups));
  sjlt_transpose_kernel<<<grid, kTransposeThreads, 0, gpu::as_stream(stream)>>>(y, p, x, a);
  GRASS_CUDA_CHECK_LAUNCH("sjlt_transpose_kernel");
}

}  // namespace grass
