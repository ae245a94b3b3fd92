// Device-side building blocks of every SJLT-style kernel (SJLT dense/CSR, GraSS, FactGraSS):
//
//  * SJLT codes computed in registers from grass/hash.h (no code table in memory);
//  * a per-block accumulator of R output rows of k floats, in shared memory (or, when k
//    does not fit, the output rows themselves in global memory);
//  * the deterministic scatter of a tile: a stable block radix sort by bucket, then each
//    bucket's run of entries is added by one thread in sorted order;
//  * the flush of an accumulator into y (store, or atomic add when blocks share a row), and
//    the deterministic mode's fold of a segment's partial sums into y, in the summation
//    order of grass/detail/sum_order.h (shared with the CPU kernels);
//  * the launch plan: rows per block, column chunks per row, shared memory.
#pragma once
#include <cub/block/block_radix_sort.cuh>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common.cuh"
#include "grass/detail/sum_order.h"
#include "grass/hash.h"
#include "grass/sjlt.h"

namespace grass {
namespace gpu {

// ---- codes ----------------------------------------------------------------------------

// A packed code: bucket (< k < 2^31) in the low 31 bits, bit 31 set when the sign is -1.
constexpr uint32_t kNegBit = 0x80000000u;
constexpr uint32_t kBucketMask = 0x7fffffffu;

// The bucket block of replica r: [lo, lo + width), as in SjltHash::code.
struct ReplicaBlock {
  uint32_t lo;
  uint32_t width;
};

// Walks the replicas' bucket blocks r = 0, 1, ..., s - 1 without dividing on the device:
// lo_r = floor(r * k / s) is kept as quotient and remainder and advanced by k = kq * s + kr
// (kq, kr computed on the host), with at most one carry per step.
struct ReplicaCursor {
  int64_t lo = 0, rem = 0;  // r * k = lo * s + rem
  int64_t s, kq, kr;
  GRASS_HD ReplicaCursor(int64_t s_, int64_t kq_, int64_t kr_) : s(s_), kq(kq_), kr(kr_) {}
  GRASS_HD int64_t next_lo() const { return lo + kq + (rem + kr >= s ? 1 : 0); }
  GRASS_HD ReplicaBlock block() const {
    return ReplicaBlock{static_cast<uint32_t>(lo), static_cast<uint32_t>(next_lo() - lo)};
  }
  GRASS_HD void advance() {
    lo += kq;
    rem += kr;
    if (rem >= s) {
      rem -= s;
      ++lo;
    }
  }
};

// Packed code of (column, replica): bit-for-bit SjltHash(seed, k, s).code(column, replica),
// with the two 64-bit divisions of code() replaced by ReplicaCursor and the bucket's
// multiply-high done in 32 bits: ((h >> 32) * width) >> 32 == umulhi(h >> 32, width).
GRASS_HD uint32_t sjlt_code(uint64_t key, int64_t column, int64_t s, int64_t replica,
                            ReplicaBlock rb) {
  const uint64_t h = draw(key, static_cast<uint64_t>(column) * static_cast<uint64_t>(s) +
                                   static_cast<uint64_t>(replica));
#if defined(__CUDA_ARCH__)
  const uint32_t off = __umulhi(static_cast<uint32_t>(h >> 32), rb.width);
#else
  const uint32_t off = static_cast<uint32_t>(((h >> 32) * static_cast<uint64_t>(rb.width)) >> 32);
#endif
  return (rb.lo + off) | (static_cast<uint32_t>(h & 1u) << 31);
}

// value * scale with the code's sign: the same expression as the CPU kernels. The
// product is rounded on its own (__fmul_rn is never contracted into an FMA with the add
// that follows), as on the CPU.
__device__ __forceinline__ float signed_value(float x, float scale, uint32_t code) {
  const float v = __fmul_rn(x, scale);
  return (code & kNegBit) ? -v : v;
}

// ---- what the kernels share -----------------------------------------------------------

// How a block's accumulator reaches y.
enum class Flush : int {
  kNone = 0,    // the accumulator is y itself (global accumulator)
  kStore = 1,   // the block owns its output rows: plain stores
  kAtomic = 2,  // several blocks share a row (fast mode only): atomic adds into zeroed y
};

// Parameters every sketching kernel needs, passed by value.
struct SketchArgs {
  int64_t B = 0;           // rows of y
  int64_t k = 0;           // columns of y
  int64_t s = 1;           // replicas per column
  int64_t kq = 0, kr = 0;  // k / s and k % s (ReplicaCursor)
  uint64_t key = 0;        // stream_key(seed, kStreamSjlt)
  float scale = 1.0f;      // 1 / sqrt(s)
  int end_bit = 1;         // bits that hold any bucket and the sentinel k (deterministic sort)
  int R = 1;               // rows per block
  int64_t n_groups = 1;    // ceil(B / R)
  int64_t chunk = 0;       // entries (columns) per chunk, a multiple of the tile
  Flush flush = Flush::kStore;
  bool vec_flush = false;  // y rows are 16-byte aligned: float4 flush
  float* y = nullptr;      // [B, k]
  // Deterministic mode (grass/detail/sum_order.h): entries per segment of a dense or
  // masked row (range_width(k)); for CSR rows range_width(k) when p exceeds it, else 0
  // (one segment).
  int64_t width = 0;
  // Deterministic mode with a global accumulator and several segments per row: the
  // segments' partial sums, R rows of k floats per block (gridDim.y blocks); else null.
  float* partials = nullptr;
};

// Device memory for partial sums (SketchArgs::partials) at most: blocks along y are
// capped so that their partial rows fit (the kernels loop over row groups).
constexpr size_t kPartialsBudget = size_t{256} << 20;

inline SketchArgs make_sketch_args(int64_t B, const SjltParams& params) {
  SketchArgs a;
  a.B = B;
  a.k = params.k;
  a.s = params.s;
  a.kq = params.k / params.s;
  a.kr = params.k % params.s;
  a.key = stream_key(params.seed, kStreamSjlt);
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(params.s)));
  int bits = 0;
  while ((int64_t{1} << bits) <= params.k) ++bits;  // k itself is the sort sentinel
  a.end_bit = bits;
  return a;
}

GRASS_HD ReplicaCursor replicas(const SketchArgs& a) { return ReplicaCursor(a.s, a.kq, a.kr); }

// Zeroes acc[0, n) (shared memory), then syncs.
template <int NT>
__device__ __forceinline__ void zero_shared(float* acc, int64_t n) {
  for (int64_t i = threadIdx.x; i < n; i += NT) acc[i] = 0.0f;
  __syncthreads();
}

// Writes rows [b0, b0 + rows) of the block's shared accumulator [rows, k] into y with
// `mode` (kStore or kAtomic). Callers sync before (the accumulator is complete) and after
// (before it is zeroed again). The loops stay rolled: unrolled, they would raise the
// register count of the kernels past their bounds (spills).
template <int NT>
__device__ __forceinline__ void flush_rows(const SketchArgs& a, Flush mode, const float* acc,
                                           int64_t b0, int rows) {
  const int64_t k = a.k;
  float* out = a.y;
  const bool atomic = mode == Flush::kAtomic;
#pragma unroll 1
  for (int r = 0; r < rows; ++r) {
    const float* src = acc + static_cast<int64_t>(r) * k;
    float* dst = out + (b0 + r) * k;
    if (a.vec_flush) {  // k % 4 == 0 and y 16-byte aligned, so every row is
      const float4* src4 = reinterpret_cast<const float4*>(src);
      float4* dst4 = reinterpret_cast<float4*>(dst);
#pragma unroll 1
      for (int64_t i = threadIdx.x; i < k / 4; i += NT) {
        const float4 v = src4[i];
        if (atomic) {
          if (v.x == 0.0f && v.y == 0.0f && v.z == 0.0f && v.w == 0.0f) continue;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
          atomicAdd(dst4 + i, v);  // one vector reduction (sm_90)
#else
          atomicAdd(&dst4[i].x, v.x);
          atomicAdd(&dst4[i].y, v.y);
          atomicAdd(&dst4[i].z, v.z);
          atomicAdd(&dst4[i].w, v.w);
#endif
        } else {
          dst4[i] = v;
        }
      }
    } else {
#pragma unroll 1
      for (int64_t i = threadIdx.x; i < k; i += NT) {
        const float v = src[i];
        if (atomic) {
          if (v != 0.0f) atomicAdd(dst + i, v);
        } else {
          dst[i] = v;
        }
      }
    }
  }
}

// Deterministic mode, end of a segment: y rows [b0, b0 + rows) = part (first segment:
// +0 + P is P itself) or y + part (later ones), in segment order as on the CPU; part
// [rows, k] (shared memory, or the block's rows of SketchArgs::partials) is zeroed for
// the next segment. Each element is read and written by one thread. Syncs before and
// after.
template <int NT>
__device__ __forceinline__ void fold_rows(const SketchArgs& a, float* part, int64_t b0, int rows,
                                          bool first) {
  const int64_t k = a.k;
  __syncthreads();
#pragma unroll 1
  for (int r = 0; r < rows; ++r) {
    float* src = part + static_cast<int64_t>(r) * k;
    float* dst = a.y + (b0 + r) * k;
#pragma unroll 1
    for (int64_t i = threadIdx.x; i < k; i += NT) {
      dst[i] = first ? src[i] : dst[i] + src[i];
      src[i] = 0.0f;
    }
  }
  __syncthreads();
}

// ---- deterministic scatter ------------------------------------------------------------

// A tile of NT * IPT entries (bucket code, local entry id) sorted by bucket with CUB's
// stable block radix sort. apply() then adds each bucket's run, in sorted order, into
// acc[bucket]: one thread per run, so there are no races and no atomics, and every float
// addition happens in an order fixed by the data layout alone. Within a run, entries keep
// their tile order (stable sort), so each bucket receives its entries in ascending local id.
template <int NT, int IPT>
struct SortedTile {
  static constexpr int kC = NT * IPT;
  using Sort = cub::BlockRadixSort<uint32_t, NT, IPT, uint32_t>;
  struct Storage {
    typename Sort::TempStorage sort;
    uint32_t bucket[kC];  // sorted buckets; the sentinel k marks an empty slot
    uint32_t entry[kC];   // local entry id | kNegBit
  };

  // bucket[i] / entry[i]: this thread's items in blocked order (item i of thread t is local
  // entry t * IPT + i). Ends with a barrier: the sorted arrays are then visible to all.
  __device__ static void sort(Storage& st, uint32_t (&bucket)[IPT], uint32_t (&entry)[IPT],
                              int end_bit) {
    Sort(st.sort).Sort(bucket, entry, 0, end_bit);
#pragma unroll
    for (int i = 0; i < IPT; ++i) {
      st.bucket[threadIdx.x * IPT + i] = bucket[i];
      st.entry[threadIdx.x * IPT + i] = entry[i];
    }
    __syncthreads();
  }

  // acc[b] += sum of +-vals[entry] * scale over the run of bucket b, left to right.
  // The caller syncs before the tile's arrays or vals change.
  __device__ static void apply(const Storage& st, const float* vals, float* acc, uint32_t k,
                               float scale) {
    for (int pos = threadIdx.x; pos < kC; pos += NT) {
      const uint32_t b = st.bucket[pos];
      if (b >= k) continue;                          // sentinels sort last
      if (pos > 0 && st.bucket[pos - 1] == b) continue;  // not the head of its run
      float sum = acc[b];
      for (int q = pos; q < kC && st.bucket[q] == b; ++q) {
        const uint32_t e = st.entry[q];
        sum += signed_value(vals[e & kBucketMask], scale, e);
      }
      acc[b] = sum;
    }
  }
};

// ---- launch plans ---------------------------------------------------------------------

// How a batch of rows is cut into blocks: each block holds R rows and one chunk of the
// columns (entries); the grid is (n_chunks, n_groups).
struct RowsPlan {
  int R = 1;
  int64_t n_groups = 1;
  int64_t n_chunks = 1;
  int64_t chunk = 0;        // entries per chunk (multiple of the tile)
  bool global_acc = false;  // k too large for shared memory: accumulate into y directly
  size_t dyn_smem = 0;      // dynamic shared memory per block
  Flush flush = Flush::kStore;
};

// Shared-memory budget of one block's accumulator rows, so that two or more blocks share an
// SM (latency hiding); a single row may use up to the opt-in maximum.
constexpr size_t kPreferredAccBytes = 96 * 1024;

// threads, regs: block size and registers per thread. n_entries: columns (entries) per row. tile: entries per block
// iteration. per_row_extra: dynamic bytes per row beyond the k accumulator floats (the
// deterministic mode stages the tile's values). static_bytes: the kernel's static shared
// memory. max_rows: the kernel's compile-time row limit.
//
// Deterministic plans never split a row: one block owns each output row and adds its
// entries in the order of grass/detail/sum_order.h (range partials folded in order), so
// the result is independent of the device and the plan, and equal to the CPU kernel's
// (same additions in the same order). Parallelism then comes from rows
// alone (R is lowered so that there are about as many blocks as SMs when B allows).
RowsPlan plan_rows(const DeviceLimits& dev, int threads, int regs, int64_t B, int64_t n_entries,
                   int64_t k, bool deterministic, int64_t tile, size_t per_row_extra,
                   size_t static_bytes, int max_rows);

// Chunks per row in [1, max_chunks] whose block count best fills whole waves of `slots`
// resident blocks, among the counts within a factor 2 of max_chunks (ties: more chunks).
int64_t wave_fit_chunks(int64_t groups, int64_t max_chunks, int64_t slots);

// Host side of a plan: copies it into the kernel arguments and zeroes y when blocks add
// into it (atomic flush or global accumulator).
void begin_output(SketchArgs& a, const RowsPlan& plan, cudaStream_t stream, const char* func);

}  // namespace gpu
}  // namespace grass
