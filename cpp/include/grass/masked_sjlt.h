// GraSS: y = S (x[:, idx]) in one pass; the masked vector is never written to memory.
// S is the SJLT of SjltParams with p' = kp columns: column j of S takes x[b, idx[j]].
// Equal to sjlt(mask_gather(x, idx)) with the same params.
#pragma once
#include <cstdint>

#include "grass/dtype.h"
#include "grass/sjlt.h"

namespace grass {

void masked_sjlt_cpu(const void* x /* [B, p] */, DType dtype, int64_t B, int64_t p,
                     const int64_t* idx /* [kp] */, int64_t kp, float* y /* [B, k] */,
                     const SjltParams& params);

#if defined(GRASS_WITH_CUDA)
// As sjlt_cuda: deterministic=true equals masked_sjlt_cpu bit for bit.
void masked_sjlt_cuda(const void* x, DType dtype, int64_t B, int64_t p, const int64_t* idx,
                      int64_t kp, float* y, const SjltParams& params, bool deterministic,
                      void* stream);
#endif

}  // namespace grass
