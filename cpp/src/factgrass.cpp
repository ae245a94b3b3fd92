// Fused FactGraSS on the CPU: y[b] = S z[b] with z[b] = vec(G'_b^T A'_b), never forming
// the [B, k_in * k_out] matrix z.
//
// Per sample, the masked factors are gathered into thread-local buffers A' [T, k_in] and
// G' [T, rows], then z is formed NR output rows o' at a time (an [NR, k_in] tile, with
// the same register-blocked kernel and summation order as kron_cpu) and immediately
// scattered into y[b] with the SJLT codes of columns o' * k_in + i'.
//
// Batches with at least one block of kLanes (16) samples per thread take the lane path
// instead: the block's masked factors are gathered lane-interleaved, z is formed 16
// samples at a time (one vector per column), and scattered into an interleaved
// accumulator acc[k][16], so each code is loaded once per block and each add is one
// vector op (the per-sample scatter was bound by one scalar read-modify-write per column).
// It computes every lane's sums in the same order as the per-sample path: bitwise equal.
//
// The (bucket, sign) codes depend only on the column, so they are hashed once per call
// and shared read-only by all threads, which amortises the hashing over the batch.
// Memory: 4 bytes per (column, replica), i.e. 4 * k_in * k_out * s bytes, capped at
// kCodeBudget codes (16 MiB): larger problems run in tiles of output rows o', each tile's
// codes hashed once and the factors re-gathered per tile (a cost of T * k_in per sample
// and tile, small next to the T * k_in * rows products of the tile).
//
// Determinism: y[b] is owned by one thread per tile and receives its columns in
// ascending order (o' then i', replicas in order), so the result is bitwise reproducible
// for any thread count. It is one plain sum in column order, which is also sjlt_cpu's
// order on z while z fits one of its column ranges (k_in * k_out <= max(2^17, 64 k),
// sjlt_block.h); beyond that sjlt_cpu adds range partials, so the two agree to rounding.
#include "grass/factgrass.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <omp.h>

#include "grass/args.h"
#include "grass/check.h"
#include "grass/hash.h"
#include "grass/mask.h"
#include "kron_tile.h"

namespace grass {

namespace {

constexpr int64_t kCodeBudget = int64_t{1} << 22;  // codes per tile (4 bytes each)
// Lane path: kLanes samples share each code, with an interleaved accumulator acc[k][kLanes]
// (64 k bytes per thread, so only up to kMaxLaneK).
constexpr int64_t kLanes = 16;
constexpr int64_t kMaxLaneK = int64_t{1} << 16;
using detail::kKronNR;
using detail::kKronVW;
using detail::kron_micro;  // kron_tile.h: kron_cpu's kernel, so a masked kron then sjlt gives this z

// Forms NR rows of z from A' [T, k_in] and G' (columns q0.. of [T, ldg]) into z [NR, k_in].
template <int NR>
void z_rows(const float* A, int64_t k_in, const float* G, int64_t ldg, int64_t T, float* z) {
  for (int64_t i = 0; i < k_in; i += kKronVW)
    kron_micro<NR>(A + i, k_in, G, ldg, T, std::min<int64_t>(kKronVW, k_in - i), z + i, k_in);
}

// Packed code of one (column, replica): bucket in the low 31 bits (k < 2^31), sign bit
// (1 = negative) on top.
constexpr uint32_t kNegBit = 0x80000000u;

// One tile of output rows for the kLanes samples b0 .. b0 + kLanes - 1 (those < B): the
// same sums as the per-sample path, lane by lane (z over t from +0 in ascending t, then
// scaled, then added to y column by column in ascending order), so the two paths agree
// bitwise; but each code is loaded once for kLanes samples and each add is one vector op.
// first_tile: start y from zero, else continue from the y of the previous tiles.
template <class Storage, class Tag>
void lane_block(const Storage* as, const Storage* gs, Tag tag, const KronShape& shape,
                const int64_t* idx_in, int64_t k_in, const int64_t* idx_out_tile, int64_t rows,
                bool first_tile, const uint32_t* codes, int64_t s, float scale, int64_t k,
                int64_t b0, float* a_l, float* g_l, float* acc, float* y) {
  const int64_t T = shape.T, d_in = shape.d_in, d_out = shape.d_out;
  const int64_t nb = std::min<int64_t>(kLanes, shape.B - b0);
  if (nb < kLanes) {  // idle lanes compute zeros and are never stored
    std::fill(a_l, a_l + T * k_in * kLanes, 0.0f);
    std::fill(g_l, g_l + T * rows * kLanes, 0.0f);
  }
  for (int64_t l = 0; l < nb; ++l) {
    const Storage* ab = as + (b0 + l) * T * d_in;
    const Storage* gb = gs + (b0 + l) * T * d_out;
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t i = 0; i < k_in; ++i) {
        const int64_t src = idx_in[i];
        a_l[(t * k_in + i) * kLanes + l] = src == d_in ? 1.0f : load_as_float(ab, t * d_in + src, tag);
      }
      for (int64_t q = 0; q < rows; ++q)
        g_l[(t * rows + q) * kLanes + l] = load_as_float(gb, t * d_out + idx_out_tile[q], tag);
    }
  }
  if (first_tile) {
    std::fill(acc, acc + k * kLanes, 0.0f);
  } else {
    for (int64_t l = 0; l < nb; ++l)
      for (int64_t j = 0; j < k; ++j) acc[j * kLanes + l] = y[(b0 + l) * k + j];
  }
  for (int64_t q = 0; q < rows; ++q) {
    for (int64_t i = 0; i < k_in; ++i) {
      alignas(64) float v[kLanes];
      for (int l = 0; l < kLanes; ++l) v[l] = 0.0f;
      for (int64_t t = 0; t < T; ++t) {
        const float* gq = g_l + (t * rows + q) * kLanes;
        const float* ai = a_l + (t * k_in + i) * kLanes;
#pragma omp simd
        for (int l = 0; l < kLanes; ++l) v[l] += gq[l] * ai[l];
      }
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) v[l] *= scale;
      const uint32_t* c = codes + (q * k_in + i) * s;
      for (int64_t r = 0; r < s; ++r) {
        float* dst = acc + static_cast<int64_t>(c[r] & ~kNegBit) * kLanes;
        if (c[r] & kNegBit) {
#pragma omp simd
          for (int l = 0; l < kLanes; ++l) dst[l] += -v[l];
        } else {
#pragma omp simd
          for (int l = 0; l < kLanes; ++l) dst[l] += v[l];
        }
      }
    }
  }
  for (int64_t l = 0; l < nb; ++l)
    for (int64_t j = 0; j < k; ++j) y[(b0 + l) * k + j] = acc[j * kLanes + l];
}

}  // namespace

void factgrass_cpu(const void* a /* [B, T, d_in] */, const void* g /* [B, T, d_out] */,
                   DType dtype, const KronShape& shape, const int64_t* idx_in /* [k_in] */,
                   int64_t k_in, const int64_t* idx_out /* [k_out] */, int64_t k_out,
                   float* y /* [B, k] */, const SjltParams& params) {
  detail::check_factgrass_args(dtype, shape, k_in, k_out, params, __func__);
  const int64_t B = shape.B, T = shape.T, d_in = shape.d_in, d_out = shape.d_out;
  const int64_t d_aug = shape.d_in_aug();
  GRASS_CHECK(idx_in != nullptr && idx_out != nullptr, "idx_in and idx_out must not be null");
  // idx_in may name d_in, the ones column, only with bias: check_indices against d_in'.
  check_indices(idx_in, k_in, d_aug, "idx_in");
  check_indices(idx_out, k_out, d_out, "idx_out");
  if (B == 0) return;
  GRASS_CHECK(a != nullptr && g != nullptr && y != nullptr, "a, g and y must not be null");

  const int64_t k = params.k, s = params.s;
  const SjltHash hash(params.seed, k, s);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s)));
  // Output rows o' per tile, so that a tile's codes stay within kCodeBudget.
  const int64_t tile_rows = std::max<int64_t>(1, std::min(k_out, kCodeBudget / (k_in * s)));
  std::vector<uint32_t> codes(static_cast<size_t>(tile_rows * k_in * s));  // [tile cols, s]
  uint32_t* code_ptr = codes.data();
  // Lane path when every thread gets at least one block of kLanes samples; small batches
  // (a few long sequences) keep the per-sample path, which spreads samples over threads.
  const int64_t blocks = (B + kLanes - 1) / kLanes;
  const bool lane_path = k <= kMaxLaneK && blocks >= omp_get_max_threads();

  dispatch_float_dtype(dtype, [&](auto tag) {
    using Storage = typename decltype(tag)::storage;
    const Storage* as = static_cast<const Storage*>(a);
    const Storage* gs = static_cast<const Storage*>(g);
#pragma omp parallel
    {
      std::vector<float> a_buf, g_buf, z_buf, acc_buf;
      if (lane_path) {
        a_buf.resize(static_cast<size_t>(T * k_in * kLanes));       // A' [T, k_in, lanes]
        g_buf.resize(static_cast<size_t>(T * tile_rows * kLanes));  // G' [T, rows, lanes]
        acc_buf.resize(static_cast<size_t>(k * kLanes));            // y [k, lanes]
      } else {
        a_buf.resize(static_cast<size_t>(T * k_in));        // A' [T, k_in]
        g_buf.resize(static_cast<size_t>(T * tile_rows));   // G' [T, rows]
        z_buf.resize(static_cast<size_t>(kKronNR * k_in));  // z tile [NR, k_in]
      }
      for (int64_t o_begin = 0; o_begin < k_out; o_begin += tile_rows) {
        const int64_t rows = std::min(tile_rows, k_out - o_begin);
        const int64_t cols = rows * k_in;
        const int64_t col0 = o_begin * k_in;
        // Hash this tile's codes once (in parallel); the loop's barrier publishes them.
#pragma omp for schedule(static)
        for (int64_t c = 0; c < cols; ++c) {
          for (int64_t r = 0; r < s; ++r) {
            int64_t bucket;
            int neg;
            hash.code(col0 + c, r, &bucket, &neg);
            code_ptr[c * s + r] = static_cast<uint32_t>(bucket) | (neg ? kNegBit : 0u);
          }
        }
        if (lane_path) {
#pragma omp for schedule(static)
          for (int64_t block = 0; block < blocks; ++block)
            lane_block(as, gs, tag, shape, idx_in, k_in, idx_out + o_begin, rows, o_begin == 0,
                       code_ptr, s, scale, k, block * kLanes, a_buf.data(), g_buf.data(),
                       acc_buf.data(), y);
          continue;
        }
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; ++b) {
          float* yb = y + b * k;
          if (o_begin == 0) std::fill(yb, yb + k, 0.0f);
          const Storage* ab = as + b * T * d_in;
          const Storage* gb = gs + b * T * d_out;
          for (int64_t t = 0; t < T; ++t) {
            float* at = a_buf.data() + t * k_in;
            for (int64_t i = 0; i < k_in; ++i) {
              const int64_t src = idx_in[i];
              at[i] = src == d_in ? 1.0f : load_as_float(ab, t * d_in + src, tag);
            }
            float* gt = g_buf.data() + t * rows;
            for (int64_t q = 0; q < rows; ++q)
              gt[q] = load_as_float(gb, t * d_out + idx_out[o_begin + q], tag);
          }
          for (int64_t o = 0; o < rows;) {
            const int nr = rows - o >= kKronNR ? kKronNR : 1;
            if (nr == kKronNR)
              z_rows<kKronNR>(a_buf.data(), k_in, g_buf.data() + o, rows, T, z_buf.data());
            else
              z_rows<1>(a_buf.data(), k_in, g_buf.data() + o, rows, T, z_buf.data());
            // Scatter the nr rows of z: column (o_begin + o + q) * k_in + i of S.
            const uint32_t* cq = code_ptr + o * k_in * s;
            const int64_t n = nr * k_in;
            for (int64_t e = 0; e < n; ++e) {
              const float v = z_buf[e] * scale;
              for (int64_t r = 0; r < s; ++r) {
                const uint32_t c = cq[e * s + r];
                float& dst = yb[c & ~kNegBit];
                dst += (c & kNegBit) ? -v : v;
              }
            }
            o += nr;
          }
        }
      }
    }
  });
}

}  // namespace grass
