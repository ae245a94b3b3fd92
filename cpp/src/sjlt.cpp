// SJLT on the CPU: y[b] = S x[b], S never stored.
//
// Dense input (sjlt_block.h): rows are split over threads in blocks of 16. A block keeps
// an interleaved accumulator acc[k][16] (one 64-byte line per bucket, cache resident);
// per tile of columns the (bucket, sign) codes are hashed once (vectorised) and reused by
// the block's 16 rows; 16 x 16 tiles of x are transposed in registers so that a column
// of the block is one vector, added into its bucket's line with one FMA.
// CSR input: one row per iteration, a scalar scatter per non-zero; with enough non-zeros
// the codes of all columns are first hashed into a table (4 bytes each).
// Transpose: x[b, j] = sum_r sign * y[b, bucket] / sqrt(s), a gather, parallel over
// column tiles.
//
// Determinism: y[b] is written by one thread, in the order grass/detail/sum_order.h
// defines (columns ascending within each column range, replicas in order, each term
// rounded as (x * scale) then added with its sign; range partials added in order).
// Results are bitwise identical for any thread count and SIMD path, and identical to
// sjlt_csr_cpu on the same data with sorted indices, to masked_sjlt_cpu on the gathered
// columns and to a plain scalar loop.
#include "grass/sjlt.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "grass/args.h"
#include "grass/check.h"
#include "grass/hash.h"
#include "sjlt_block.h"

namespace grass {

namespace {

constexpr int64_t kColTile = 4096;             // columns per tile of sjlt_transpose_cpu
constexpr int64_t kMaxCodeTable = int64_t{1} << 24;  // codes (4 bytes each) sjlt_csr_cpu may table

// A (column, replica) code packed in 32 bits: bucket in the low 31 bits (k < 2^31),
// sign bit (1 = negative) on top, in the same position as a float's sign bit.
constexpr uint32_t kNegBit = 0x80000000u;

inline uint32_t packed_code(const SjltHash& hash, int64_t column, int64_t replica) {
  int64_t bucket;
  int neg;
  hash.code(column, replica, &bucket, &neg);
  return static_cast<uint32_t>(bucket) | (neg ? kNegBit : 0u);
}

// Non-zeros [e, e_end) of a CSR row scatter-added into yb; returns the position of the
// first column index outside [0, p), or INT64_MAX. `codes` is the table of packed codes
// of every column (replica-major within a column) or null to hash on the fly. Arguments
// by value: the hot loop then keeps them in registers.
template <typename Tag>
int64_t csr_add(float* yb, const int64_t* indices, const typename Tag::storage* values, int64_t e, int64_t e_end,
                int64_t p, const uint32_t* codes, const SjltHash hash, float scale, Tag tag) {
  const int64_t s = hash.s;
  if (codes && s == 1) {
    for (; e < e_end; ++e) {
      const int64_t j = indices[e];
      if (static_cast<uint64_t>(j) >= static_cast<uint64_t>(p)) return e;
      detail::scatter_one(yb, codes[j], load_as_float(values, e, tag));
    }
  } else if (codes) {
    for (; e < e_end; ++e) {
      const int64_t j = indices[e];
      if (static_cast<uint64_t>(j) >= static_cast<uint64_t>(p)) return e;
      const float sv = load_as_float(values, e, tag) * scale;
      for (int64_t r = 0; r < s; ++r) detail::scatter_one(yb, codes[j * s + r], sv);
    }
  } else {
    for (; e < e_end; ++e) {
      const int64_t j = indices[e];
      if (static_cast<uint64_t>(j) >= static_cast<uint64_t>(p)) return e;
      const float sv = load_as_float(values, e, tag) * scale;
      for (int64_t r = 0; r < s; ++r) detail::scatter_one(yb, packed_code(hash, j, r), sv);
    }
  }
  return INT64_MAX;
}

// One CSR row into yb [k], cut into segments as grass/detail/sum_order.h defines
// (CsrSegments, shared with the CUDA kernel): each segment's non-zeros are summed into
// `partial` from +0 and folded into yb in segment order, so sorted rows give the dense
// result bit for bit, and an unsorted row folds at most once per range.
template <typename Tag>
int64_t csr_row(float* yb, float* partial, const int64_t* indices, const typename Tag::storage* values, int64_t e,
                int64_t e_end, int64_t p, int64_t width, const uint32_t* codes, const SjltHash hash, float scale,
                Tag tag) {
  const int64_t k = hash.k;
  std::memset(yb, 0, static_cast<size_t>(k) * sizeof(float));
  // One segment (every valid column is in range 0): summed straight into yb.
  if (p <= width) return csr_add(yb, indices, values, e, e_end, p, codes, hash, scale, tag);
  std::memset(partial, 0, static_cast<size_t>(k) * sizeof(float));
  detail::CsrSegments seg(width);
  while (e < e_end) {
    // The rest of the current segment.
    int64_t run = e;
    if (seg.in_order()) {
      while (run < e_end && seg.holds(indices[run])) ++run;
    } else {
      run = e_end;
    }
    const int64_t bad = csr_add(partial, indices, values, e, run, p, codes, hash, scale, tag);
    if (bad != INT64_MAX) return bad;
    e = run;
    if (e < e_end) {  // indices[e] starts the next segment
      const int64_t j = indices[e];
      if (static_cast<uint64_t>(j) >= static_cast<uint64_t>(p)) return e;
      detail::add_into(yb, partial, k);
      std::memset(partial, 0, static_cast<size_t>(k) * sizeof(float));
      seg.restart(j);
    }
  }
  detail::add_into(yb, partial, k);
  return INT64_MAX;
}

}  // namespace

void check_sjlt_params(const SjltParams& params) {
  GRASS_CHECK(params.k >= 1 && params.k <= INT32_MAX, "k must be in [1, 2^31 - 1], got %lld",
              (long long)params.k);
  GRASS_CHECK(params.s >= 1 && params.s <= params.k, "s must be in [1, k = %lld], got %lld",
              (long long)params.k, (long long)params.s);
}

void sjlt_codes(int64_t column_begin, int64_t count, const SjltParams& params,
                int64_t* bucket /* [count, s] */, int8_t* sign /* [count, s] */) {
  check_sjlt_params(params);
  GRASS_CHECK(column_begin >= 0, "column_begin must be >= 0, got %lld", (long long)column_begin);
  GRASS_CHECK(count >= 0, "count must be >= 0, got %lld", (long long)count);
  if (count == 0) return;
  GRASS_CHECK(bucket != nullptr && sign != nullptr, "bucket and sign must not be null");
  const SjltHash hash(params.seed, params.k, params.s);
  const int64_t s = params.s;
#pragma omp parallel for schedule(static) if (count * s > 65536)
  for (int64_t c = 0; c < count; ++c) {
    for (int64_t r = 0; r < s; ++r) {
      int64_t bk;
      int neg;
      hash.code(column_begin + c, r, &bk, &neg);
      bucket[c * s + r] = bk;
      sign[c * s + r] = neg ? int8_t{-1} : int8_t{1};
    }
  }
}

void sjlt_cpu(const void* x /* [B, p] */, DType dtype, int64_t B, int64_t p,
              float* y /* [B, k] */, const SjltParams& params) {
  detail::check_sketch_args(dtype, B, p, params, __func__);
  if (B == 0) return;
  GRASS_CHECK(y != nullptr, "y must not be null");
  GRASS_CHECK(p == 0 || x != nullptr, "x must not be null");

  using namespace detail;
  const int64_t k = params.k, s = params.s;
  const SjltHash hash(params.seed, k, s);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s)));

  dispatch_float_dtype(dtype, [&](auto tag) {
    using Tag = decltype(tag);
    using Storage = typename Tag::storage;
    const Storage* xs = static_cast<const Storage*>(x);
    // Columns [j0, j1) of a block of rows into its interleaved accumulator.
    auto block = [&](int64_t b0, int64_t rows, int64_t j0, int64_t j1, float* acc, const TileBuffers& buf) {
      const Storage* xb = xs + b0 * p;
      for (int64_t t0 = j0; t0 < j1; t0 += kHashTile) {
        const int64_t nh = std::min(kHashTile, j1 - t0);
        hash_tile(hash, t0, nh, buf.bucket, buf.sign);
        int64_t c0 = 0;
#if defined(GRASS_FUSED_F32)
        if constexpr (std::is_same<Tag, F32Tag>::value) {
          if (rows == kLanes) {
            c0 = nh / kLanes * kLanes;
            if (s == 1)
              sketch_tiles_f32<true>(xb + t0, p, c0, scale, acc, buf.bucket, buf.sign, s, nh);
            else
              sketch_tiles_f32<false>(xb + t0, p, c0, scale, acc, buf.bucket, buf.sign, s, nh);
          }
        }
#endif
        for (; c0 < nh; c0 += kSubTile) {
          const int64_t nc = std::min(kSubTile, nh - c0);
          load_dense_tile(xb, p, rows, t0 + c0, nc, scale, tag, buf.xt);
          scatter_tile(acc, buf.xt, nc, s, buf.bucket + c0, buf.sign + c0, nh);
        }
      }
    };
    auto row = [&](int64_t b, int64_t j0, int64_t j1, float* yrow, const TileBuffers& buf) {
      sketch_row_range(xs + b * p, j0, j1, [](int64_t j) { return j; }, hash, scale, tag, yrow, buf.bucket);
    };
    run_blocked(B, p, k, s, y, block, row);
  });
}

void sjlt_csr_cpu(const int64_t* indptr /* [B + 1] */, const int64_t* indices /* [nnz] */,
                  const void* values /* [nnz] */, DType dtype, int64_t B, int64_t p,
                  float* y /* [B, k] */, const SjltParams& params) {
  detail::check_sketch_args(dtype, B, p, params, __func__);
  if (B == 0) return;
  GRASS_CHECK(indptr != nullptr, "indptr must not be null");
  GRASS_CHECK(y != nullptr, "y must not be null");
  GRASS_CHECK(indptr[0] == 0, "indptr[0] must be 0, got %lld", (long long)indptr[0]);
  for (int64_t b = 0; b < B; ++b)
    GRASS_CHECK(indptr[b + 1] >= indptr[b],
                "indptr must be non-decreasing, got indptr[%lld] = %lld > indptr[%lld] = %lld",
                (long long)b, (long long)indptr[b], (long long)(b + 1), (long long)indptr[b + 1]);
  const int64_t nnz = indptr[B];
  GRASS_CHECK(nnz == 0 || (indices != nullptr && values != nullptr),
              "indices and values must not be null when nnz = %lld > 0", (long long)nnz);
  const int64_t k = params.k, s = params.s;
  const SjltHash hash(params.seed, k, s);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s)));
  // With many non-zeros per column, hash every column once (vectorised, in parallel) into
  // a table of packed codes; with few, or a huge p, hash each non-zero as it comes.
  const bool use_table = p <= kMaxCodeTable / s && nnz >= p / 4;
  std::vector<uint32_t> table(use_table ? static_cast<size_t>(p * s) : 0);
  if (use_table) {
    const int64_t tiles = (p + detail::kHashTile - 1) / detail::kHashTile;
    uint32_t* t = table.data();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < tiles; ++i) {
      const int64_t j0 = i * detail::kHashTile;
      detail::hash_packed(hash, j0, std::min(detail::kHashTile, p - j0), t + j0 * s);
    }
  }
  const uint32_t* codes = use_table ? table.data() : nullptr;
  // Column indices are checked as they are used (a separate pass would read them twice);
  // a row stops at its first bad index, and the first bad one overall is reported.
  const int64_t width = detail::range_width(k);
  detail::PerThread<float> scratch(p > width ? k : 1);  // a row's partial sums
  int64_t first_bad = INT64_MAX;
  dispatch_float_dtype(dtype, [&](auto tag) {
    using Storage = typename decltype(tag)::storage;
    const Storage* vs = static_cast<const Storage*>(values);
    // Rows have different lengths: dynamic chunks balance them.
#pragma omp parallel num_threads(scratch.threads) reduction(min : first_bad)
    {
      float* partial = scratch.mine();
#pragma omp for schedule(dynamic, 4)
      for (int64_t b = 0; b < B; ++b)
        first_bad = std::min(first_bad, csr_row(y + b * k, partial, indices, vs, indptr[b], indptr[b + 1], p, width,
                                                codes, hash, scale, tag));
    }
  });
  if (first_bad != INT64_MAX) {
    // y holds partial sums: make that impossible to mistake for a result.
    std::fill(y, y + B * k, std::nanf(""));
    GRASS_CHECK(false, "indices must be in [0, p = %lld), got indices[%lld] = %lld (y was filled with NaN)",
                (long long)p, (long long)first_bad, (long long)indices[first_bad]);
  }
}

void sjlt_transpose_cpu(const float* y /* [B, k] */, int64_t B, int64_t p, float* x /* [B, p] */,
                        const SjltParams& params) {
  check_sjlt_params(params);
  GRASS_CHECK(B >= 0, "B must be >= 0, got %lld", (long long)B);
  GRASS_CHECK(p >= 0, "p must be >= 0, got %lld", (long long)p);
  if (B == 0 || p == 0) return;
  GRASS_CHECK(y != nullptr && x != nullptr, "y and x must not be null");
  const int64_t k = params.k, s = params.s;
  const SjltHash hash(params.seed, k, s);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s)));
  const int64_t tile = std::max<int64_t>(1, kColTile / s);
  const int64_t tiles = (p + tile - 1) / tile;
  // Parallel over column tiles: every x element is one gather of s terms.
  detail::PerThread<uint32_t> scratch(tile * s);
#pragma omp parallel num_threads(scratch.threads)
  {
    uint32_t* codes = scratch.mine();
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t j0 = t * tile;
      const int64_t nc = std::min(tile, p - j0);
      detail::hash_packed(hash, j0, nc, codes);
      for (int64_t b = 0; b < B; ++b) {
        const float* yb = y + b * k;
        float* xb = x + b * p + j0;
        for (int64_t c = 0; c < nc; ++c) {
          float acc = 0.0f;
          for (int64_t r = 0; r < s; ++r) {
            const uint32_t code = codes[c * s + r];
            const float v = yb[code & ~kNegBit];
            acc += (code & kNegBit) ? -v : v;
          }
          xb[c] = acc * scale;
        }
      }
    }
  }
}

}  // namespace grass
