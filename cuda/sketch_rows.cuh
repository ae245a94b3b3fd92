// The row-sketch kernel behind SJLT on dense input and GraSS (masked SJLT):
//
//   y[b] = S v[b],   v[b, j] = src(b, j) for entries j in [0, n_entries)
//
// where src reads x[b, j] (dense) or x[b, idx[j]] (masked). One block handles R rows and
// one chunk of entries; grid = (n_chunks, row groups). Per tile of NT * EPT entries, each
// thread owns EPT consecutive entries:
//
//  fast:          their codes are hashed once in registers and reused for the R rows; each
//                 value is added into the shared accumulator with a shared-memory atomic;
//  deterministic: the R rows' values are staged in shared memory, the codes sorted by
//                 bucket once per tile (SortedTile) and each bucket's run is added by one
//                 thread in ascending entry order. Rows are never split between blocks.
//                 A row's entries are summed in the segments of grass/detail/sum_order.h
//                 (ranges of range_width(k) entries; tiles never straddle one): each
//                 range's partial sum from +0, then folded into y in range order. So
//                 every y element is the CPU kernel's sum, bit for bit, for any p and any
//                 launch configuration.
//
// The accumulator is then flushed (plan.flush; deterministic: folded after each range).
// When k floats do not fit in shared memory the y rows themselves accumulate (kGlobalAcc;
// y is zeroed first); the deterministic mode then keeps a row's range partials in
// SketchArgs::partials when the row has several ranges.
#pragma once
#include <algorithm>
#include <type_traits>

#include "sketch.cuh"

namespace grass {
namespace gpu {

// x [B, p] rows, EPT = one 16-byte vector per thread. kVec: rows are 16-byte aligned (x
// aligned and p * element size a multiple of 16), so a thread's EPT entries are one load.
template <typename Tag, bool kVec>
struct DenseSource {
  using S = typename Tag::storage;
  static constexpr int kEPT = Vec16<Tag>::kN;
  struct Entries {
    int64_t e0;
  };
  const S* x;
  int64_t p;

  __device__ int64_t n_entries() const { return p; }
  __device__ Entries entries(int64_t e0, int) const { return Entries{e0}; }
  // The raw elements x[b, e0 + i] for i < n (zeros beyond), as loaded.
  struct Raw {
    std::conditional_t<kVec, uint4, S[kEPT]> r;
  };
  __device__ Raw load_raw(const Entries& e, int64_t b, int n) const {
    const S* row = x + b * p + e.e0;
    Raw raw;
    if constexpr (kVec) {
      // p % EPT == 0 and tiles are EPT-aligned: n is EPT or 0.
      raw.r = n == kEPT ? __ldg(reinterpret_cast<const uint4*>(row)) : make_uint4(0, 0, 0, 0);
    } else {
#pragma unroll
      for (int i = 0; i < kEPT; ++i) raw.r[i] = i < n ? __ldg(row + i) : S(0);
    }
    return raw;
  }
  __device__ static float value(const Raw& raw, int i) {
    if constexpr (kVec) return vec_elem(raw.r, i, Tag{});
    else return to_float(raw.r[i], Tag{});
  }
};

// GraSS: entry j of row b is x[b, idx[j]]; idx [kp] on the device, in range (caller checks).
template <typename Tag>
struct MaskedSource {
  using S = typename Tag::storage;
  static constexpr int kEPT = 4;
  struct Entries {
    int64_t src[kEPT];
  };
  const S* x;
  int64_t p;
  const int64_t* idx;
  int64_t kp;

  __device__ int64_t n_entries() const { return kp; }
  __device__ Entries entries(int64_t e0, int n) const {
    Entries e;
#pragma unroll
    for (int i = 0; i < kEPT; ++i) e.src[i] = i < n ? __ldg(idx + e0 + i) : 0;
    return e;
  }
  struct Raw {
    S r[kEPT];
  };
  __device__ Raw load_raw(const Entries& e, int64_t b, int n) const {
    const S* row = x + b * p;
    Raw raw;
#pragma unroll
    for (int i = 0; i < kEPT; ++i) raw.r[i] = i < n ? __ldg(row + e.src[i]) : S(0);
    return raw;
  }
  __device__ static float value(const Raw& raw, int i) { return to_float(raw.r[i], Tag{}); }
};

// Fast kernels: two or more resident blocks of 512 (four of 256) threads per SM, i.e. at
// most 64 registers. Deterministic kernels (sort state in registers): 128 registers.
template <int NT, bool kDet>
constexpr int kMinBlocks = kDet ? 512 / NT : 1024 / NT;

constexpr int kRowsMax = 8;  // rows per block (compile-time bound of R)
constexpr int kRowsUnroll = 4;  // rows whose loads are in flight together (fast mode)

template <class Src, int NT, bool kDet, bool kGlobalAcc>
__global__ void __launch_bounds__(NT, kMinBlocks<NT, kDet>) sketch_rows_kernel(Src src, SketchArgs a) {
  constexpr int EPT = Src::kEPT;
  constexpr int C = NT * EPT;  // entries per tile
  using Tile = SortedTile<NT, EPT>;
  using TileStorage = std::conditional_t<kDet, typename Tile::Storage, int>;
  __shared__ TileStorage tile_storage;
  extern __shared__ float4 dyn_smem4[];
  float* const dyn_smem = reinterpret_cast<float*>(dyn_smem4);

  const int64_t k = a.k;
  float* const acc = dyn_smem;                                   // [R, k] (shared acc)
  float* const vals = kGlobalAcc ? dyn_smem : dyn_smem + a.R * k;  // [R, C] (deterministic)
  const int64_t n_entries = src.n_entries();
  const int64_t c_begin = static_cast<int64_t>(blockIdx.x) * a.chunk;
  const int64_t c_end = min64(n_entries, c_begin + a.chunk);

  for (int64_t g = blockIdx.y; g < a.n_groups; g += gridDim.y) {
    const int64_t b0 = g * a.R;
    const int rows = static_cast<int>(min64(a.R, a.B - b0));
    // Where the rows' sums (deterministic: the current range's partial sums) accumulate:
    // shared memory, the block's rows of a.partials, or the y rows themselves.
    float* const part = !kGlobalAcc                    ? acc
                        : (kDet && a.partials != nullptr) ? a.partials + static_cast<int64_t>(blockIdx.y) * a.R * k
                                                          : a.y + b0 * k;
    const bool fold = kDet && part != a.y + b0 * k;  // deterministic: partials folded into y
    if (!kGlobalAcc || fold) zero_shared<NT>(part, rows * k);

    // Deterministic: one pass per range of the row (sum_order.h); fast: the whole chunk.
    for (int64_t s0 = c_begin, s1; s0 < c_end; s0 = s1) {
      s1 = kDet ? min64(c_end, s0 + a.width) : c_end;
      for (int64_t base = s0; base < s1; base += C) {
        const int64_t e0 = base + static_cast<int64_t>(threadIdx.x) * EPT;
        const int n = static_cast<int>(max64(0, min64(EPT, s1 - e0)));
        const typename Src::Entries ent = src.entries(e0, n);

        if constexpr (!kDet) {
          ReplicaCursor cur = replicas(a);
          for (int64_t rep = 0; rep < a.s; ++rep, cur.advance()) {
            const ReplicaBlock rb = cur.block();
            uint32_t code[EPT];
            for (int r0 = 0; r0 < rows; r0 += kRowsUnroll) {
              typename Src::Raw raw[kRowsUnroll];
#pragma unroll
              for (int q = 0; q < kRowsUnroll; ++q)
                if (r0 + q < rows) raw[q] = src.load_raw(ent, b0 + r0 + q, n);
              if (r0 == 0) {
                // Hashed after the first loads are issued, so it overlaps their latency.
#pragma unroll
                for (int i = 0; i < EPT; ++i) code[i] = sjlt_code(a.key, e0 + i, a.s, rep, rb);
              }
#pragma unroll
              for (int q = 0; q < kRowsUnroll; ++q) {
                if (r0 + q >= rows) break;
                float* dst = part + (r0 + q) * k;
#pragma unroll
                for (int i = 0; i < EPT; ++i)
                  if (i < n) atomicAdd(dst + (code[i] & kBucketMask),
                              signed_value(Src::value(raw[q], i), a.scale, code[i]));
              }
            }
          }
        } else {
          // Stage the tile's values of every row; the sort's barriers publish them.
          for (int r = 0; r < rows; ++r) {
            const typename Src::Raw raw = src.load_raw(ent, b0 + r, n);
#pragma unroll
            for (int i = 0; i < EPT; ++i) vals[r * C + threadIdx.x * EPT + i] = Src::value(raw, i);
          }
          ReplicaCursor cur = replicas(a);
          for (int64_t rep = 0; rep < a.s; ++rep, cur.advance()) {
            const ReplicaBlock rb = cur.block();
            uint32_t bucket[EPT], entry[EPT];
#pragma unroll
            for (int i = 0; i < EPT; ++i) {
              const uint32_t code = sjlt_code(a.key, e0 + i, a.s, rep, rb);
              bucket[i] = i < n ? (code & kBucketMask) : static_cast<uint32_t>(k);
              entry[i] = (threadIdx.x * EPT + i) | (code & kNegBit);
            }
            Tile::sort(tile_storage, bucket, entry, a.end_bit);
            for (int r = 0; r < rows; ++r)
              Tile::apply(tile_storage, vals + r * C, part + r * k, static_cast<uint32_t>(k), a.scale);
            __syncthreads();  // before the next sort or the next tile's staging
          }
        }
      }
      if constexpr (kDet) {
        if (fold) fold_rows<NT>(a, part, b0, rows, s0 == c_begin);
      }
    }
    if constexpr (!kDet && !kGlobalAcc) {
      __syncthreads();
      flush_rows<NT>(a, a.flush, acc, b0, rows);
      __syncthreads();
    }
  }
}

// Plans and launches sketch_rows_kernel for `src` (n_entries entries per row) on stream.
// Fast mode uses NT = 512 threads; the deterministic mode NT = 256 (its sorted tile lives in
// shared memory next to the staged values).
template <class Src>
void launch_sketch_rows(const Src& src, int64_t n_entries, SketchArgs a, bool deterministic,
                        cudaStream_t stream, const char* func) {
  constexpr int kFastThreads = 512;
  constexpr int kDetThreads = 256;
  const DeviceLimits dev = device_limits(func);
  auto run = [&](auto det_tag, auto nt_tag) {
    constexpr bool kDet = decltype(det_tag)::value;
    constexpr int NT = decltype(nt_tag)::value;
    constexpr int64_t C = static_cast<int64_t>(NT) * Src::kEPT;
    auto k_shared = sketch_rows_kernel<Src, NT, kDet, false>;
    auto k_global = sketch_rows_kernel<Src, NT, kDet, true>;
    const KernelInfo info = kernel_info(k_shared, func);
    const size_t per_row_extra = kDet ? static_cast<size_t>(C) * sizeof(float) : 0;
    const RowsPlan plan = plan_rows(dev, NT, info.regs, a.B, n_entries, a.k, kDet, C,
                                    per_row_extra, info.static_smem, kRowsMax);
    GRASS_CHECK_IN(func, plan.n_chunks <= kMaxGridX, "too many column chunks (%lld)",
                   (long long)plan.n_chunks);
    begin_output(a, plan, stream, func);
    unsigned groups_y = grid_yz(plan.n_groups);
    // Deterministic, y rows as accumulators, several ranges per row: the ranges' partial
    // sums go to device scratch (R rows per block), and y receives them in range order.
    const bool partials = kDet && plan.global_acc && detail::range_count(n_entries, a.k) > 1;
    const size_t block_partials = static_cast<size_t>(plan.R) * static_cast<size_t>(a.k) * sizeof(float);
    if (partials)
      groups_y = static_cast<unsigned>(std::min<size_t>(groups_y, std::max<size_t>(1, kPartialsBudget / block_partials)));
    const Scratch scratch(partials ? groups_y * block_partials : 0, stream, func);
    a.width = detail::range_width(a.k);
    a.partials = scratch.as<float>();
    auto kernel = plan.global_acc ? k_global : k_shared;
    allow_dynamic_smem(kernel, plan.dyn_smem, func);
    const dim3 grid(static_cast<unsigned>(plan.n_chunks), groups_y);
    kernel<<<grid, NT, plan.dyn_smem, stream>>>(src, a);
    check_cuda(cudaGetLastError(), "launch of sketch_rows_kernel", func);
  };
  if (deterministic)
    run(std::true_type{}, std::integral_constant<int, kDetThreads>{});
  else
    run(std::false_type{}, std::integral_constant<int, kFastThreads>{});
}

}  // namespace gpu
}  // namespace grass
