// GraSS on the CPU: y[b] = S x[b, idx], the gather fused into the scatter.
//
// The blocked machinery of sjlt_cpu (sjlt_block.h) with a gathering loader: blocks of 16
// rows, codes of a tile of masked columns hashed once per block, the tile's columns
// gathered straight into the transposed layout and scatter-added into the block's
// interleaved accumulator. The masked [B, kp] matrix is never written to memory.
// Columns are added in ascending j with the same rounding as sjlt_cpu, so the result is
// bitwise equal to sjlt_cpu(mask_gather_cpu(x, idx)) for any thread count.
#include "grass/masked_sjlt.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "grass/args.h"
#include "grass/check.h"
#include "grass/hash.h"
#include "grass/mask.h"
#include "sjlt_block.h"

namespace grass {

namespace {
constexpr int64_t kDenseMask = 16;  // a mask keeping at least 1 column in 16 counts as dense
}  // namespace

void masked_sjlt_cpu(const void* x /* [B, p] */, DType dtype, int64_t B, int64_t p,
                     const int64_t* idx /* [kp] */, int64_t kp, float* y /* [B, k] */,
                     const SjltParams& params) {
  detail::check_sketch_args(dtype, B, p, params, __func__);
  GRASS_CHECK(kp >= 0, "kp must be >= 0, got %lld", (long long)kp);
  check_indices(idx, kp, p, "idx");
  if (B == 0) return;
  GRASS_CHECK(y != nullptr, "y must not be null");
  GRASS_CHECK(kp == 0 || x != nullptr, "x must not be null");

  using namespace detail;
  const int64_t k = params.k, s = params.s;
  const SjltHash hash(params.seed, k, s);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s)));

  // A dense mask (at least one kept column in kDenseMask, increasing indices) touches
  // nearly every cache line of x anyway: then a block reads x tile by tile like the dense
  // kernel and scatters the kept columns of each tile, instead of gathering every kept
  // element from 16 rows.
  bool dense_mask = false;
#if defined(__AVX512F__)
  dense_mask = kp * kDenseMask >= p && std::is_sorted(idx, idx + kp) &&
               std::adjacent_find(idx, idx + kp) == idx + kp;
#endif

  dispatch_float_dtype(dtype, [&](auto tag) {
    using Storage = typename decltype(tag)::storage;
    const Storage* xs = static_cast<const Storage*>(x);
    // Masked columns [j0, j1) of a block of rows: column j of S takes x[:, idx[j]].
    auto block = [&](int64_t b0, int64_t rows, int64_t j0, int64_t j1, float* acc, const TileBuffers& buf) {
      for (int64_t t0 = j0; t0 < j1; t0 += kHashTile) {
        const int64_t nh = std::min(kHashTile, j1 - t0);
        hash_tile(hash, t0, nh, buf.bucket, buf.sign);
#if defined(__AVX512F__)
        if (dense_mask && rows == kLanes) {
          // x's 16-column tiles holding kept columns t0 .. t0 + nh - 1, in order.
          const Storage* xb = xs + b0 * p;
          for (int64_t j = t0; j < t0 + nh;) {
            const int64_t c0 = idx[j] / kLanes * kLanes;
            if (c0 + kLanes <= p)
              transpose_tile16(xb + c0, p, scale, tag, buf.xt);
            else
              load_dense_tile(xb, p, rows, c0, p - c0, scale, tag, buf.xt);
            for (; j < t0 + nh && idx[j] < c0 + kLanes; ++j)
              scatter_tile(acc, buf.xt + (idx[j] - c0) * kLanes, 1, s, buf.bucket + (j - t0), buf.sign + (j - t0), nh);
          }
          continue;
        }
#endif
        for (int64_t c0 = 0; c0 < nh; c0 += kSubTile) {
          const int64_t nc = std::min(kSubTile, nh - c0);
          load_masked_tile(xs + b0 * p, p, rows, idx + t0 + c0, nc, scale, tag, buf.xt);
          scatter_tile(acc, buf.xt, nc, s, buf.bucket + c0, buf.sign + c0, nh);
        }
      }
    };
    auto row = [&](int64_t b, int64_t j0, int64_t j1, float* yrow, const TileBuffers& buf) {
      sketch_row_range(xs + b * p, j0, j1, [idx](int64_t j) { return idx[j]; }, hash, scale, tag, yrow, buf.bucket);
    };
    run_blocked(B, kp, k, s, y, block, row);
  });
}

}  // namespace grass
