// GraSS on the CPU: y[b] = S x[b, idx], the gather fused into the scatter.
//
// The same loop structure as sjlt_cpu with column j read from x[b, idx[j]]: blocks of
// rows per thread, codes of a tile of masked columns hashed once per block. Columns are
// added in ascending j, replicas in order, with the same scaling and sign flip as
// sjlt_cpu, so the result is bitwise equal to sjlt_cpu(mask_gather_cpu(x, idx)).
#include "grass/masked_sjlt.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "grass/check.h"
#include "grass/hash.h"
#include "grass/mask.h"

namespace grass {

namespace {

constexpr int64_t kRowBlock = 8;
constexpr int64_t kColTile = 4096;
constexpr uint32_t kNegBit = 0x80000000u;

}  // namespace

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

  const int64_t k = params.k, s = params.s;
  const SjltHash hash(params.seed, k, s);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s)));
  const int64_t tile = std::max<int64_t>(1, kColTile / s);
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
        for (int64_t j0 = 0; j0 < kp; j0 += tile) {
          const int64_t nc = std::min(tile, kp - j0);
          for (int64_t c = 0; c < nc; ++c)
            for (int64_t r = 0; r < s; ++r) {
              int64_t bucket;
              int neg;
              hash.code(j0 + c, r, &bucket, &neg);
              codes[c * s + r] = static_cast<uint32_t>(bucket) | (neg ? kNegBit : 0u);
            }
          const int64_t* id = idx + j0;
          for (int64_t i = 0; i < nb; ++i) {
            const Storage* xb = xs + (b0 + i) * p;
            float* yb = y + (b0 + i) * k;
            for (int64_t c = 0; c < nc; ++c) {
              const float v = load_as_float(xb, id[c], tag);
              if (v == 0.0f) continue;
              const float sv = v * scale;
              for (int64_t r = 0; r < s; ++r) {
                const uint32_t code = codes[c * s + r];
                uint32_t bits;
                std::memcpy(&bits, &sv, 4);
                bits ^= code & kNegBit;
                float signed_v;
                std::memcpy(&signed_v, &bits, 4);
                yb[code & ~kNegBit] += signed_v;
              }
            }
          }
        }
      }
    }
  });
}

}  // namespace grass
