// SJLT on the CPU: y[b] = S x[b], S never stored.
//
// Dense input: rows are split over threads in blocks of kRowBlock rows; for each tile of
// kColTile columns the (bucket, sign) codes are hashed once into a thread-local buffer
// and reused by every row of the block, then each row scatter-adds its signed values
// into its own k floats (cache resident). Zeros are skipped (adding +-0 to a sum that
// started at +0 never changes it, so skipping is bitwise neutral).
//
// Determinism: y[b] is written by one thread and receives its columns in ascending
// order (replicas in order), so results are bitwise identical for any thread count, and
// identical to sjlt_csr_cpu on the same data with sorted indices, to masked_sjlt_cpu on
// the gathered columns and to factgrass_cpu's scatter.
#include "grass/sjlt.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "grass/check.h"
#include "grass/hash.h"

namespace grass {

namespace {

constexpr int64_t kRowBlock = 8;     // rows sharing one tile of codes
constexpr int64_t kColTile = 4096;   // columns per tile: 16 KiB of codes at s = 1

// A (column, replica) code packed in 32 bits: bucket in the low 31 bits (k < 2^31),
// sign bit (1 = negative) on top, in the same position as a float's sign bit.
constexpr uint32_t kNegBit = 0x80000000u;

inline uint32_t packed_code(const SjltHash& hash, int64_t column, int64_t replica) {
  int64_t bucket;
  int neg;
  hash.code(column, replica, &bucket, &neg);
  return static_cast<uint32_t>(bucket) | (neg ? kNegBit : 0u);
}

// y[bucket] += sign * v, the sign applied by flipping v's sign bit (exact).
inline void scatter_one(float* y, uint32_t code, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  bits ^= code & kNegBit;
  float sv;
  std::memcpy(&sv, &bits, 4);
  y[code & ~kNegBit] += sv;
}

void check_dtype(DType dtype) {
  GRASS_CHECK(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16,
              "dtype must be float32, float16 or bfloat16, got %s", dtype_name(dtype));
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
  check_dtype(dtype);
  check_sjlt_params(params);
  GRASS_CHECK(B >= 0, "B must be >= 0, got %lld", (long long)B);
  GRASS_CHECK(p >= 0, "p must be >= 0, got %lld", (long long)p);
  if (B == 0) return;
  GRASS_CHECK(y != nullptr, "y must not be null");
  GRASS_CHECK(p == 0 || x != nullptr, "x must not be null");

  const int64_t k = params.k, s = params.s;
  const SjltHash hash(params.seed, k, s);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s)));
  const int64_t tile = std::max<int64_t>(1, kColTile / s);  // columns per tile
  const int64_t row_blocks = (B + kRowBlock - 1) / kRowBlock;

  dispatch_float_dtype(dtype, [&](auto tag) {
    using Storage = typename decltype(tag)::storage;
    const Storage* xs = static_cast<const Storage*>(x);
#pragma omp parallel
    {
      std::vector<uint32_t> codes(static_cast<size_t>(tile * s));
#pragma omp for schedule(static)
      for (int64_t rb = 0; rb < row_blocks; ++rb) {
        const int64_t b0 = rb * kRowBlock;
        const int64_t nb = std::min(kRowBlock, B - b0);
        for (int64_t i = 0; i < nb; ++i) std::fill(y + (b0 + i) * k, y + (b0 + i + 1) * k, 0.0f);
        for (int64_t j0 = 0; j0 < p; j0 += tile) {
          const int64_t nc = std::min(tile, p - j0);
          for (int64_t c = 0; c < nc; ++c)
            for (int64_t r = 0; r < s; ++r) codes[c * s + r] = packed_code(hash, j0 + c, r);
          for (int64_t i = 0; i < nb; ++i) {
            const Storage* xb = xs + (b0 + i) * p + j0;
            float* yb = y + (b0 + i) * k;
            for (int64_t c = 0; c < nc; ++c) {
              const float v = load_as_float(xb, c, tag);
              if (v == 0.0f) continue;
              const float sv = v * scale;
              for (int64_t r = 0; r < s; ++r) scatter_one(yb, codes[c * s + r], sv);
            }
          }
        }
      }
    }
  });
}

void sjlt_csr_cpu(const int64_t* indptr /* [B + 1] */, const int64_t* indices /* [nnz] */,
                  const void* values /* [nnz] */, DType dtype, int64_t B, int64_t p,
                  float* y /* [B, k] */, const SjltParams& params) {
  check_dtype(dtype);
  check_sjlt_params(params);
  GRASS_CHECK(B >= 0, "B must be >= 0, got %lld", (long long)B);
  GRASS_CHECK(p >= 0, "p must be >= 0, got %lld", (long long)p);
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
  // Checked up front (O(nnz), cheap next to the sketch) so bad input writes nothing.
  {
    int64_t bad = -1;
#pragma omp parallel for schedule(static) reduction(max : bad) if (nnz > 65536)
    for (int64_t e = 0; e < nnz; ++e)
      if (indices[e] < 0 || indices[e] >= p) bad = std::max(bad, e);
    GRASS_CHECK(bad < 0, "indices must be in [0, p = %lld), got indices[%lld] = %lld", (long long)p,
                (long long)bad, (long long)(bad < 0 ? 0 : indices[bad]));
  }

  const int64_t k = params.k, s = params.s;
  const SjltHash hash(params.seed, k, s);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s)));
  dispatch_float_dtype(dtype, [&](auto tag) {
    using Storage = typename decltype(tag)::storage;
    const Storage* vs = static_cast<const Storage*>(values);
    // Rows have different lengths: dynamic chunks balance them.
#pragma omp parallel for schedule(dynamic, 4)
    for (int64_t b = 0; b < B; ++b) {
      float* yb = y + b * k;
      std::fill(yb, yb + k, 0.0f);
      for (int64_t e = indptr[b]; e < indptr[b + 1]; ++e) {
        const float v = load_as_float(vs, e, tag);
        if (v == 0.0f) continue;
        const float sv = v * scale;
        for (int64_t r = 0; r < s; ++r) scatter_one(yb, packed_code(hash, indices[e], r), sv);
      }
    }
  });
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
#pragma omp parallel
  {
    std::vector<uint32_t> codes(static_cast<size_t>(tile * s));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t j0 = t * tile;
      const int64_t nc = std::min(tile, p - j0);
      for (int64_t c = 0; c < nc; ++c)
        for (int64_t r = 0; r < s; ++r) codes[c * s + r] = packed_code(hash, j0 + c, r);
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
