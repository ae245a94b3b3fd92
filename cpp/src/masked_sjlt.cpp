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

#include "grass/check.h"
#include "grass/hash.h"
#include "grass/mask.h"
#include "sjlt_block.h"

namespace grass {

void masked_sjlt_cpu(const void* x /* [B, p] */, DType dtype, int64_t B, int64_t p,
                     const int64_t* idx /* [kp] */, int64_t kp, float* y /* [B, k] */,
                     const SjltParams& params) {
  GRASS_CHECK(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16,
              "dtype must be float32, float16 or bfloat16, got %s", dtype_name(dtype));
  check_sjlt_params(params);
  GRASS_CHECK(B >= 0, "B must be >= 0, got %lld", (long long)B);
  GRASS_CHECK(p >= 0, "p must be >= 0, got %lld", (long long)p);
  GRASS_CHECK(kp >= 0, "kp must be >= 0, got %lld", (long long)kp);
  check_indices(idx, kp, p, "idx");
  if (B == 0) return;
  GRASS_CHECK(y != nullptr, "y must not be null");
  GRASS_CHECK(kp == 0 || x != nullptr, "x must not be null");

  using namespace detail;
  const int64_t k = params.k, s = params.s;
  const SjltHash hash(params.seed, k, s);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s)));
  // Large k: every row alone, straight into y (an accumulator would take 64 * k bytes).
  const bool blocks = k <= kMaxBlockK;
  const int64_t full = blocks ? B / kLanes : 0, rem = B - full * kLanes;
  const bool rem_as_block = blocks && rem >= kMinBlockRows;
  const int64_t items = full + (rem_as_block ? 1 : rem);
  const BlockScratch layout(k, s, blocks);
  PerThread<float> scratch(layout.total);

  dispatch_float_dtype(dtype, [&](auto tag) {
    using Storage = typename decltype(tag)::storage;
    const Storage* xs = static_cast<const Storage*>(x);
#pragma omp parallel num_threads(scratch.threads)
    {
      float* mine = scratch.mine();
      float* acc = mine + layout.acc;
      float* xt = mine + layout.xt;
      uint32_t* bucket = reinterpret_cast<uint32_t*>(mine + layout.bucket);
      float* sign = mine + layout.sign;
#pragma omp for schedule(dynamic, 1)
      for (int64_t item = 0; item < items; ++item) {
        if (item >= full && !rem_as_block) {
          const int64_t b = full * kLanes + (item - full);
          sketch_row(xs + b * p, kp, [idx](int64_t j) { return idx[j]; }, hash, scale, tag, y + b * k, bucket);
          continue;
        }
        const int64_t b0 = item * kLanes;
        const int64_t rows = std::min(kLanes, B - b0);
        std::memset(acc, 0, static_cast<size_t>(k * kLanes) * sizeof(float));
        for (int64_t j0 = 0; j0 < kp; j0 += kHashTile) {
          const int64_t nh = std::min(kHashTile, kp - j0);
          hash_tile(hash, j0, nh, bucket, sign);  // column j of S is masked column j
          for (int64_t c0 = 0; c0 < nh; c0 += kSubTile) {
            const int64_t n = std::min(kSubTile, nh - c0);
            load_masked_tile(xs + b0 * p, p, rows, idx + j0 + c0, n, scale, tag, xt);
            scatter_tile(acc, xt, n, s, bucket + c0, sign + c0, nh);
          }
        }
        store_rows(acc, k, rows, y + b0 * k, k);
      }
    }
  });
}

}  // namespace grass
