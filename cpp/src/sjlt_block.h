// Internal to grass_core: the blocked SJLT machinery shared by sjlt_cpu and masked_sjlt_cpu.
//
// A block of up to kLanes = 16 rows is sketched together. Its accumulator is interleaved,
// acc[o * 16 + i] = y[row i, bucket o], so one column's contribution to all 16 rows is a
// single 16-float line: acc[bucket] += sign * x[:, column] is one vector load, one FMA
// with a broadcast sign and one store, whatever the bucket. Columns therefore arrive
// transposed: float32 dense rows are transposed on the way in and scattered straight
// from registers (sketch_tiles_f32); other paths fill a small transposed tile
// xt[c * 16 + i] = x[row i, column c] (a register transpose for float16 / bfloat16 rows,
// plain loads for masked columns) and scatter from it (scatter_tile).
//
// Per output element the terms are added in the order grass/detail/sum_order.h defines
// (ascending columns within each column range, replicas in order, each term rounded as
// (x * scale) then added with its sign; the ranges' partial sums added in order): the
// same arithmetic as a scalar loop over the row, so every path (AVX-512 or portable,
// dense, CSR, masked, any thread count) and the deterministic CUDA kernels give bitwise
// the same result.
#pragma once
#include <omp.h>

#include <cstdint>
#include <cstring>
#include <new>

#include "grass/detail/sum_order.h"
#include "grass/dtype.h"
#include "grass/hash.h"
#include "scratch.h"

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#define GRASS_FUSED_F32 1  // sketch_tiles_f32 exists
#endif

namespace grass {
namespace detail {

constexpr int64_t kLanes = 16;      // rows per block = floats per accumulator line
constexpr int64_t kHashTile = 1024;  // columns whose codes are hashed at once (per replica)
constexpr int64_t kSubTile = 64;     // columns transposed at a time: 64 x 16 floats = 4 KiB
// A block costs the same whatever number of its 16 lanes hold rows: fewer rows than this
// are sketched one by one (sketch_row), which also spreads them over threads.
constexpr int64_t kMinBlockRows = 4;
// A block's interleaved accumulator takes 64 * k bytes; above this k all rows are sketched
// one by one straight into y (no accumulator), so memory stays O(k) per thread.
constexpr int64_t kMaxBlockK = int64_t{1} << 18;

// Column ranges (grass/detail/sum_order.h, shared with the CUDA kernels): a row's sum is
// taken range by range, each range's partial sum from +0, the partials added in range
// order. The ranges depend on k only, never on the thread count, so results stay bitwise
// reproducible while a small batch can spread its ranges over threads. Folding a partial
// costs 2 * 16 * k operations against at least 16 * 64 * k for the range itself (at most
// ~3%). For n below kMinRange (and k <= 2048) a row is a single range: the plain sum in
// column order.
static_assert(kRangeAlign % kHashTile == 0, "ranges must be whole hash tiles");

// Codes of columns [j0, j0 + n) for every replica, replica-major: bucket[r * n + c] and
// sign[r * n + c] in {+1.0f, -1.0f}. Bit for bit SjltHash::code, in a loop the compiler
// vectorises (64-bit multiplies with AVX-512DQ).
inline void hash_tile(const SjltHash& hash, int64_t j0, int64_t n, uint32_t* bucket, float* sign) {
  const uint64_t key = hash.key;
  const uint64_t s = static_cast<uint64_t>(hash.s);
  for (int64_t r = 0; r < hash.s; ++r) {
    const int64_t lo = r * hash.k / hash.s;
    const uint64_t width = static_cast<uint64_t>((r + 1) * hash.k / hash.s - lo);
    uint32_t* br = bucket + r * n;
    float* sr = sign + r * n;
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) {
      const uint64_t h = draw(key, static_cast<uint64_t>(j0 + c) * s + static_cast<uint64_t>(r));
      br[c] = static_cast<uint32_t>(lo + static_cast<int64_t>(((h >> 32) * width) >> 32));
      sr[c] = (h & 1u) ? -1.0f : 1.0f;
    }
  }
}

// Packed codes of columns [j0, j0 + n): code[c * s + r] = bucket | (negative << 31)
// (k < 2^31 leaves the top bit free). For kernels that look codes up by column.
inline void hash_packed(const SjltHash& hash, int64_t j0, int64_t n, uint32_t* code) {
  const uint64_t key = hash.key;
  const int64_t s = hash.s;
  for (int64_t r = 0; r < s; ++r) {
    const int64_t lo = r * hash.k / s;
    const uint64_t width = static_cast<uint64_t>((r + 1) * hash.k / s - lo);
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) {
      const uint64_t h = draw(key, static_cast<uint64_t>(j0 + c) * static_cast<uint64_t>(s) + static_cast<uint64_t>(r));
      code[c * s + r] = static_cast<uint32_t>(lo + static_cast<int64_t>(((h >> 32) * width) >> 32)) |
                        (static_cast<uint32_t>(h & 1u) << 31);
    }
  }
}

// y[bucket] += sign * v for a packed code, the sign applied by flipping v's sign bit:
// the same value as the blocked path's fma(v, +-1, acc).
inline void scatter_one(float* y, uint32_t code, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  bits ^= code & 0x80000000u;
  float sv;
  std::memcpy(&sv, &bits, 4);
  y[code & 0x7fffffffu] += sv;
}

// Rows that do not fill a block: one row alone. Adds S x into y[0, k) for the columns
// column(j), j in [j0, j1) of the row (j0 a multiple of kHashTile), with the blocked
// path's order and rounding. `code` is scratch for kHashTile * s packed codes.
template <typename Tag, typename ColumnOf>
inline void sketch_row_range(const typename Tag::storage* row, int64_t j0, int64_t j1, ColumnOf column,
                             const SjltHash& hash, float scale, Tag tag, float* y, uint32_t* code) {
  const int64_t s = hash.s;
  for (int64_t t0 = j0; t0 < j1; t0 += kHashTile) {
    const int64_t nh = j1 - t0 < kHashTile ? j1 - t0 : kHashTile;
    hash_packed(hash, t0, nh, code);
    for (int64_t c = 0; c < nh; ++c) {
      const float v = load_as_float(row, column(t0 + c), tag) * scale;
      for (int64_t r = 0; r < s; ++r) scatter_one(y, code[c * s + r], v);
    }
  }
}

// acc[bucket * 16 + i] += sign * xt[c * 16 + i] for columns c < n and replicas r < s,
// codes from hash_tile (replica-major, row length `ld`).
inline void scatter_tile(float* acc, const float* xt, int64_t n, int64_t s, const uint32_t* bucket,
                         const float* sign, int64_t ld) {
#if defined(__AVX512F__)
  if (s == 1) {
    // A repeated bucket is still added in column order: each store precedes the next
    // load of the same line in program order (store-to-load forwarding handles it).
    for (int64_t c = 0; c < n; ++c) {
      float* line = acc + static_cast<int64_t>(bucket[c]) * kLanes;
      const __m512 v = _mm512_load_ps(xt + c * kLanes);
      _mm512_store_ps(line, _mm512_fmadd_ps(v, _mm512_set1_ps(sign[c]), _mm512_load_ps(line)));
    }
    return;
  }
  for (int64_t c = 0; c < n; ++c) {
    const __m512 v = _mm512_load_ps(xt + c * kLanes);
    for (int64_t r = 0; r < s; ++r) {
      float* line = acc + static_cast<int64_t>(bucket[r * ld + c]) * kLanes;
      _mm512_store_ps(line, _mm512_fmadd_ps(v, _mm512_set1_ps(sign[r * ld + c]), _mm512_load_ps(line)));
    }
  }
#else
  for (int64_t c = 0; c < n; ++c) {
    const float* v = xt + c * kLanes;
    for (int64_t r = 0; r < s; ++r) {
      float* line = acc + static_cast<int64_t>(bucket[r * ld + c]) * kLanes;
      const float sg = sign[r * ld + c];
      // sg is +-1, so sg * v is exact: the same value with or without FMA contraction.
#pragma omp simd
      for (int64_t i = 0; i < kLanes; ++i) line[i] += sg * v[i];
    }
  }
#endif
}

// y[i * ldy + o] = acc[o * 16 + i] for rows i < rows and buckets o < k.
inline void store_rows(const float* acc, int64_t k, int64_t rows, float* y, int64_t ldy) {
  for (int64_t i = 0; i < rows; ++i) {
    float* yi = y + i * ldy;
    for (int64_t o = 0; o < k; ++o) yi[o] = acc[o * kLanes + i];
  }
}

#if defined(__AVX512F__)
// The zero-masking forms with a full mask are the plain instructions; unlike the unmasked
// intrinsics they need no _mm512_undefined_ps, which GCC 12 flags as uninitialised.
constexpr __mmask16 kAll16 = 0xFFFF;
constexpr __mmask8 kAll8 = 0xFF;

// Transposes a 16 x 16 float tile held in registers, r[i] = row i, and stores column c
// to out + c * 16. (Stores straight from the last shuffle stage: an array of results
// written back and then copied out ends up as a spill and a memcpy.)
inline void transpose16_store(const __m512 r[16], float* out) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_maskz_unpacklo_ps(kAll16, r[i], r[i + 1]);
    t[i + 1] = _mm512_maskz_unpackhi_ps(kAll16, r[i], r[i + 1]);
  }
  // u[4g + m]: in 128-bit lane L, rows 4g..4g+3 of column 4L + m.
  __m512 u[16];
  for (int g = 0; g < 4; ++g) {
    const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 2]);
    const __m512d c = _mm512_castps_pd(t[4 * g + 1]), d = _mm512_castps_pd(t[4 * g + 3]);
    u[4 * g + 0] = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(kAll8, a, b));
    u[4 * g + 1] = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(kAll8, a, b));
    u[4 * g + 2] = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(kAll8, c, d));
    u[4 * g + 3] = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(kAll8, c, d));
  }
  for (int m = 0; m < 4; ++m) {
    const __m512 v0 = _mm512_maskz_shuffle_f32x4(kAll16, u[m], u[4 + m], 0x88);
    const __m512 w0 = _mm512_maskz_shuffle_f32x4(kAll16, u[m], u[4 + m], 0xdd);
    const __m512 v1 = _mm512_maskz_shuffle_f32x4(kAll16, u[8 + m], u[12 + m], 0x88);
    const __m512 w1 = _mm512_maskz_shuffle_f32x4(kAll16, u[8 + m], u[12 + m], 0xdd);
    _mm512_store_ps(out + m * kLanes, _mm512_maskz_shuffle_f32x4(kAll16, v0, v1, 0x88));
    _mm512_store_ps(out + (8 + m) * kLanes, _mm512_maskz_shuffle_f32x4(kAll16, v0, v1, 0xdd));
    _mm512_store_ps(out + (4 + m) * kLanes, _mm512_maskz_shuffle_f32x4(kAll16, w0, w1, 0x88));
    _mm512_store_ps(out + (12 + m) * kLanes, _mm512_maskz_shuffle_f32x4(kAll16, w0, w1, 0xdd));
  }
}

// 16 consecutive elements as floats.
inline __m512 load16(const float* p, F32Tag) { return _mm512_loadu_ps(p); }
inline __m512 load16(const uint16_t* p, F16Tag) {
  return _mm512_maskz_cvtph_ps(kAll16, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512 load16(const uint16_t* p, BF16Tag) {
  const __m512i w = _mm512_maskz_cvtepu16_epi32(kAll16, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll16, w, 16));
}
#endif

#if defined(__AVX512F__)
// One 16 x 16 tile: rows base + i * ld, 16 columns each, transposed into xt[16][16] and
// scaled. Kept out of line so that the caller's loop does not hoist 16 row pointers (with
// the transpose's 32 vector registers, they would be spilled). The rows are prefetched
// kPrefetchBytes ahead: 16 concurrent streams are more than the hardware prefetcher keeps
// up with. Non-temporal prefetches: the input is read once, and kept out of L2 it does
// not evict the accumulator living there (6-10% faster from DRAM than into L1 and L2).
constexpr int64_t kPrefetchBytes = 512;
template <typename Tag>
__attribute__((noinline)) void transpose_tile16(const typename Tag::storage* base, int64_t ld, float scale, Tag tag,
                                                float* xt) {
  using Storage = typename Tag::storage;
  constexpr int64_t ahead = kPrefetchBytes / static_cast<int64_t>(sizeof(Storage));
  __m512 r[16];
  for (int i = 0; i < 16; ++i) _mm_prefetch(reinterpret_cast<const char*>(base + i * ld + ahead), _MM_HINT_NTA);
  for (int i = 0; i < 16; ++i) r[i] = load16(base + i * ld, tag);
  if (scale != 1.0f) {  // elementwise, so before the transpose: the same roundings
    const __m512 vs = _mm512_set1_ps(scale);
    for (int i = 0; i < 16; ++i) r[i] = _mm512_mul_ps(r[i], vs);
  }
  transpose16_store(r, xt);
}

// The fused float32 path for a full block: columns [0, n) (n a multiple of 16) of 16 rows
// at base (row stride ld) are loaded, transposed and scatter-added into acc without
// passing through memory. The transpose is done mostly by the loads: for column group L
// (columns 4L..4L+3 of a 16-column step), w[g] gathers the 128-bit pieces of rows g,
// g+4, g+8, g+12 into its four lanes (one load and three masked broadcasts); a 4 x 4
// transpose inside each lane (8 shuffles per group, 32 per 16 x 16 tile instead of 64)
// then leaves column 4L+m of all 16 rows in one vector. Rows are prefetched
// kPrefetchBytes ahead. Specialised for s = 1 and for scale = 1 (also s = 1).
template <bool kSingle>
__attribute__((noinline)) void sketch_tiles_f32(const float* base, int64_t ld, int64_t n, float scale, float* acc,
                                                const uint32_t* bucket, const float* sign, int64_t s,
                                                int64_t code_ld) {
  constexpr int64_t ahead = kPrefetchBytes / 4;
  const __m512 vs = _mm512_set1_ps(scale);
  const float* rows[4] = {base, base + ld, base + 2 * ld, base + 3 * ld};
  const int64_t l4 = 4 * ld, l8 = 8 * ld, l12 = 12 * ld;
  for (int64_t c0 = 0; c0 < n; c0 += kLanes) {
    for (int g = 0; g < 4; ++g) {
      const char* r = reinterpret_cast<const char*>(rows[g] + c0 + ahead);
      _mm_prefetch(r, _MM_HINT_NTA);
      _mm_prefetch(r + 4 * l4, _MM_HINT_NTA);
      _mm_prefetch(r + 4 * l8, _MM_HINT_NTA);
      _mm_prefetch(r + 4 * l12, _MM_HINT_NTA);
    }
    for (int L = 0; L < 4; ++L) {
      __m512 w[4];
      for (int g = 0; g < 4; ++g) {
        const float* r0 = rows[g] + c0 + 4 * L;
        __m512 v = _mm512_castps128_ps512(_mm_loadu_ps(r0));
        v = _mm512_mask_broadcast_f32x4(v, 0x00F0, _mm_loadu_ps(r0 + l4));
        v = _mm512_mask_broadcast_f32x4(v, 0x0F00, _mm_loadu_ps(r0 + l8));
        v = _mm512_mask_broadcast_f32x4(v, 0xF000, _mm_loadu_ps(r0 + l12));
        w[g] = kSingle ? v : _mm512_mul_ps(v, vs);  // s = 1 means scale = 1
      }
      const __m512d t0 = _mm512_castps_pd(_mm512_maskz_unpacklo_ps(kAll16, w[0], w[1]));
      const __m512d t1 = _mm512_castps_pd(_mm512_maskz_unpackhi_ps(kAll16, w[0], w[1]));
      const __m512d t2 = _mm512_castps_pd(_mm512_maskz_unpacklo_ps(kAll16, w[2], w[3]));
      const __m512d t3 = _mm512_castps_pd(_mm512_maskz_unpackhi_ps(kAll16, w[2], w[3]));
      const __m512 col[4] = {_mm512_castpd_ps(_mm512_maskz_unpacklo_pd(kAll8, t0, t2)),
                             _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(kAll8, t0, t2)),
                             _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(kAll8, t1, t3)),
                             _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(kAll8, t1, t3))};
      for (int m = 0; m < 4; ++m) {
        const int64_t c = c0 + 4 * L + m;
        if (kSingle) {
          float* line = acc + static_cast<int64_t>(bucket[c]) * kLanes;
          _mm512_store_ps(line, _mm512_fmadd_ps(col[m], _mm512_set1_ps(sign[c]), _mm512_load_ps(line)));
        } else {
          for (int64_t r = 0; r < s; ++r) {
            float* line = acc + static_cast<int64_t>(bucket[r * code_ld + c]) * kLanes;
            _mm512_store_ps(line,
                            _mm512_fmadd_ps(col[m], _mm512_set1_ps(sign[r * code_ld + c]), _mm512_load_ps(line)));
          }
        }
      }
    }
  }
}
#endif

#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
// The AVX2 twin of the fused float32 path above, same arithmetic and order: 8-float
// registers, so a column of the 16-row block is two registers (rows 0-7 and 8-15) and
// an accumulator line two loads, two FMAs and two stores. The transpose works the same
// way with two 128-bit lanes: w[g] = [rows g, g+4] of a column group (a load and an
// insert), then a 4 x 4 transpose inside each lane.
constexpr int64_t kPrefetchBytes = 512;
template <bool kSingle>
__attribute__((noinline)) void sketch_tiles_f32(const float* base, int64_t ld, int64_t n, float scale, float* acc,
                                                const uint32_t* bucket, const float* sign, int64_t s,
                                                int64_t code_ld) {
  constexpr int64_t ahead = kPrefetchBytes / 4;
  const __m256 vs = _mm256_set1_ps(scale);
  const int64_t l4 = 4 * ld;
  for (int64_t c0 = 0; c0 < n; c0 += kLanes) {
    for (int i = 0; i < 16; ++i)
      _mm_prefetch(reinterpret_cast<const char*>(base + i * ld + c0 + ahead), _MM_HINT_NTA);
    for (int L = 0; L < 4; ++L) {
      __m256 col[2][4];  // [rows 0-7 | rows 8-15][column 4L + m]
      for (int half = 0; half < 2; ++half) {
        __m256 w[4];
        for (int g = 0; g < 4; ++g) {
          const float* r0 = base + (8 * half + g) * ld + c0 + 4 * L;
          const __m256 v = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(r0)), _mm_loadu_ps(r0 + l4), 1);
          w[g] = kSingle ? v : _mm256_mul_ps(v, vs);
        }
        const __m256d t0 = _mm256_castps_pd(_mm256_unpacklo_ps(w[0], w[1]));
        const __m256d t1 = _mm256_castps_pd(_mm256_unpackhi_ps(w[0], w[1]));
        const __m256d t2 = _mm256_castps_pd(_mm256_unpacklo_ps(w[2], w[3]));
        const __m256d t3 = _mm256_castps_pd(_mm256_unpackhi_ps(w[2], w[3]));
        col[half][0] = _mm256_castpd_ps(_mm256_unpacklo_pd(t0, t2));
        col[half][1] = _mm256_castpd_ps(_mm256_unpackhi_pd(t0, t2));
        col[half][2] = _mm256_castpd_ps(_mm256_unpacklo_pd(t1, t3));
        col[half][3] = _mm256_castpd_ps(_mm256_unpackhi_pd(t1, t3));
      }
      for (int m = 0; m < 4; ++m) {
        const int64_t c = c0 + 4 * L + m;
        for (int64_t r = 0; r < (kSingle ? 1 : s); ++r) {
          float* line = acc + static_cast<int64_t>(bucket[r * code_ld + c]) * kLanes;
          const __m256 sg = _mm256_set1_ps(sign[r * code_ld + c]);
          _mm256_store_ps(line, _mm256_fmadd_ps(col[0][m], sg, _mm256_load_ps(line)));
          _mm256_store_ps(line + 8, _mm256_fmadd_ps(col[1][m], sg, _mm256_load_ps(line + 8)));
        }
      }
    }
  }
}
#endif

// xt[c * 16 + i] = x[row i, j0 + c] * scale for c < n (n <= kSubTile), rows i < rows
// (the rest of the 16 lanes zero); rows start at x + i * ld.
template <typename Tag>
inline void load_dense_tile(const typename Tag::storage* x, int64_t ld, int64_t rows, int64_t j0, int64_t n,
                            float scale, Tag tag, float* xt) {
  int64_t c = 0;
#if defined(__AVX512F__)
  if (rows == kLanes)
    for (; c + 16 <= n; c += 16) transpose_tile16(x + j0 + c, ld, scale, tag, xt + c * kLanes);
#endif
  for (; c < n; ++c) {
    float* col = xt + c * kLanes;
    for (int64_t i = 0; i < rows; ++i) col[i] = load_as_float(x + i * ld, j0 + c, tag) * scale;
    for (int64_t i = rows; i < kLanes; ++i) col[i] = 0.0f;
  }
}

// xt[c * 16 + i] = x[row i, idx[c]] * scale for c < n (n <= kSubTile), rows i < rows
// (the rest of the 16 lanes zero); rows start at x + i * ld. Plain loads, column by
// column: faster here than one 16-lane hardware gather per column, or two 8-lane gathers
// per row and a transpose (docs/cpu-kernels.md).
template <typename Tag>
inline void load_masked_tile(const typename Tag::storage* x, int64_t ld, int64_t rows, const int64_t* idx,
                             int64_t n, float scale, Tag tag, float* xt) {
  for (int64_t c = 0; c < n; ++c) {
    float* col = xt + c * kLanes;
    const int64_t j = idx[c];
    for (int64_t i = 0; i < rows; ++i) col[i] = load_as_float(x + i * ld, j, tag) * scale;
    for (int64_t i = rows; i < kLanes; ++i) col[i] = 0.0f;
  }
}

// ---- The driver shared by sjlt_cpu and masked_sjlt_cpu --------------------------------

// Per-thread tile buffers: one transposed sub-tile and a hash tile's codes (bucket and
// sign for blocks; packed codes, in `bucket`, for single rows).
struct TileBuffers {
  float* xt;         // [64, 16]
  uint32_t* bucket;  // [s, 1024]
  float* sign;       // [s, 1024]
};
inline int64_t tile_buffer_floats(int64_t s) { return kSubTile * kLanes + 2 * kHashTile * s; }
inline TileBuffers tile_buffers(float* base, int64_t s) {
  return {base, reinterpret_cast<uint32_t*>(base + kSubTile * kLanes), base + kSubTile * kLanes + kHashTile * s};
}

inline void add_into(float* dst, const float* src, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
}

// Partial sums in flight when (group, range) pairs run in parallel: 64 MiB of floats.
constexpr int64_t kSlotBudget = int64_t{1} << 24;

// Sketches B rows of n columns into y [B, k], given
//   block(b0, rows, j0, j1, acc, buf): adds columns [j0, j1) of rows b0 .. b0 + rows - 1
//     into the interleaved accumulator acc [k, 16];
//   row(b, j0, j1, yrow, buf): adds columns [j0, j1) of row b into yrow [k].
// Rows form groups: blocks of 16 (and a last partial block of at least kMinBlockRows), or
// single rows (fewer leftovers, or every row when k > kMaxBlockK). Each row's columns
// form ranges (range_width); every output adds its ranges' partial sums in range order,
// whichever thread computed them. Groups are spread over threads; when they are fewer
// than the threads and rows have several ranges, (group, range) pairs are spread instead,
// in waves whose partial sums fit kSlotBudget.
template <typename Block, typename Row>
void run_blocked(int64_t B, int64_t n, int64_t k, int64_t s, float* y, Block block, Row row) {
  const bool blocks_allowed = k <= kMaxBlockK;
  const int64_t full = blocks_allowed ? B / kLanes : 0, rem = B - full * kLanes;
  const bool rem_as_block = blocks_allowed && rem >= kMinBlockRows;
  const int64_t num_blocks = full + (rem_as_block ? 1 : 0);
  const int64_t groups = num_blocks + (rem_as_block ? 0 : rem);
  const int64_t width = range_width(k);
  const int64_t ranges = range_count(n, k);
  const int64_t line = kLanes * k;                    // a block's accumulator, in floats
  const int64_t slot = num_blocks > 0 ? line : k;     // room for any group's partial sums
  const int threads = omp_get_max_threads();
  auto range_end = [&](int64_t r) { return (r + 1) * width < n ? (r + 1) * width : n; };
  // Group g: a block at row g * 16 (g < num_blocks), else the single row after the blocks.
  auto block_rows = [&](int64_t g) { return B - g * kLanes < kLanes ? B - g * kLanes : kLanes; };
  auto single_row = [&](int64_t g) { return num_blocks * kLanes + (g - num_blocks); };

  if (ranges == 1 || groups >= threads) {
    // Each group by one thread, its ranges folded in order.
    const int64_t tiles = tile_buffer_floats(s);
    const int64_t total_floats = num_blocks > 0 ? line : 0;
    PerThread<float> scratch(tiles + total_floats + (ranges > 1 ? slot : 0));
#pragma omp parallel num_threads(scratch.threads)
    {
      float* mine = scratch.mine();
      const TileBuffers buf = tile_buffers(mine, s);
      float* total = mine + tiles;
      float* partial = total + total_floats;
#pragma omp for schedule(dynamic, 1)
      for (int64_t g = 0; g < groups; ++g) {
        const bool is_block = g < num_blocks;
        const int64_t size = is_block ? line : k;
        float* out = is_block ? total : y + single_row(g) * k;
        std::memset(out, 0, static_cast<size_t>(size) * sizeof(float));
        for (int64_t r = 0; r < ranges; ++r) {
          float* dst = ranges == 1 ? out : partial;
          if (ranges > 1) std::memset(dst, 0, static_cast<size_t>(size) * sizeof(float));
          if (is_block)
            block(g * kLanes, block_rows(g), r * width, range_end(r), dst, buf);
          else
            row(single_row(g), r * width, range_end(r), dst, buf);
          if (ranges > 1) add_into(out, dst, size);
        }
        if (is_block) store_rows(total, k, block_rows(g), y + g * kLanes * k, k);
      }
    }
    return;
  }

  // Few groups, several ranges: (group, range) pairs in parallel, folded in order.
  const int64_t wave = kSlotBudget / (groups * slot) < 1 ? 1
                       : (kSlotBudget / (groups * slot) < ranges ? kSlotBudget / (groups * slot) : ranges);
  Scratch<float> totals(num_blocks * line);
  Scratch<float> slots(groups * wave * slot);
  PerThread<float> scratch(tile_buffer_floats(s));
  constexpr int64_t kChunk = 4096;  // floats per fold work item
  const int64_t chunks = (slot + kChunk - 1) / kChunk;
#pragma omp parallel num_threads(scratch.threads)
  {
    const TileBuffers buf = tile_buffers(scratch.mine(), s);
#pragma omp for schedule(static)
    for (int64_t g = 0; g < groups; ++g) {
      float* out = g < num_blocks ? totals.data + g * line : y + single_row(g) * k;
      std::memset(out, 0, static_cast<size_t>(g < num_blocks ? line : k) * sizeof(float));
    }
    for (int64_t r0 = 0; r0 < ranges; r0 += wave) {
      const int64_t nr = ranges - r0 < wave ? ranges - r0 : wave;
#pragma omp for schedule(dynamic, 1)
      for (int64_t item = 0; item < groups * nr; ++item) {
        const int64_t g = item / nr, r = r0 + item % nr;
        float* dst = slots.data + item * slot;
        std::memset(dst, 0, static_cast<size_t>(g < num_blocks ? line : k) * sizeof(float));
        if (g < num_blocks)
          block(g * kLanes, block_rows(g), r * width, range_end(r), dst, buf);
        else
          row(single_row(g), r * width, range_end(r), dst, buf);
      }
      // (the loop's barrier: every partial of this wave is in)
#pragma omp for schedule(static)
      for (int64_t item = 0; item < groups * chunks; ++item) {
        const int64_t g = item / chunks, e0 = item % chunks * kChunk;
        const int64_t size = g < num_blocks ? line : k;
        if (e0 >= size) continue;
        const int64_t ne = size - e0 < kChunk ? size - e0 : kChunk;
        float* out = (g < num_blocks ? totals.data + g * line : y + single_row(g) * k) + e0;
        for (int64_t q = 0; q < nr; ++q) add_into(out, slots.data + (g * nr + q) * slot + e0, ne);
      }
    }
#pragma omp for schedule(static)
    for (int64_t g = 0; g < num_blocks; ++g) store_rows(totals.data + g * line, k, block_rows(g), y + g * kLanes * k, k);
  }
}

}  // namespace detail
}  // namespace grass
