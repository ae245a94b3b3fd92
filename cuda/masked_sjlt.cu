// GraSS on CUDA: y = S (x[:, idx]) in one pass. The row-sketch kernel (sketch_rows.cuh)
// reads entry j of row b as x[b, idx[j]] straight into registers: the masked vector is
// never written to memory. Each thread reads its 4 indices once per tile and reuses them
// (and the hashed codes) for the R rows of its block.
#include "common.cuh"
#include "grass/args.h"
#include "grass/masked_sjlt.h"
#include "sketch.cuh"
#include "sketch_rows.cuh"

namespace grass {

void masked_sjlt_cuda(const void* x, DType dtype, int64_t B, int64_t p, const int64_t* idx,
                      int64_t kp, float* y, const SjltParams& params, bool deterministic,
                      void* stream) {
  detail::check_sketch_args(dtype, B, p, params, __func__);
  GRASS_CHECK(kp >= 0, "kp must be >= 0, got %lld", (long long)kp);
  GRASS_CHECK(kp == 0 || p >= 1, "idx has %lld entries but x has no columns (p = 0)", (long long)kp);
  if (B == 0) return;
  GRASS_CHECK(y != nullptr, "y must not be null");
  const cudaStream_t st = gpu::as_stream(stream);
  if (kp == 0) {  // no entries: y = 0
    GRASS_CUDA_CHECK(cudaMemsetAsync(y, 0, static_cast<size_t>(B * params.k) * sizeof(float), st));
    return;
  }
  GRASS_CHECK(x != nullptr && idx != nullptr, "x and idx must not be null");
  gpu::SketchArgs a = gpu::make_sketch_args(B, params);
  a.y = y;
  dispatch_float_dtype(dtype, [&](auto tag) {
    using Tag = decltype(tag);
    using S = typename Tag::storage;
    gpu::launch_sketch_rows(gpu::MaskedSource<Tag>{static_cast<const S*>(x), p, idx, kp}, kp, a,
                            deterministic, st, "masked_sjlt_cuda");
  });
}

}  // namespace grass
