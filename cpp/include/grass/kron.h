// Kronecker reconstruction of a linear layer's per-sample gradient.
//
// For inputs a [B, T, d_in] and output gradients g [B, T, d_out] the weight gradient
// of sample b is sum_t g[b,t] a[b,t]^T, a [d_out, d_in'] matrix laid out like
// torch's Linear.weight; we write it flattened row-major:
//
//   out[b, o * d_in' + i] = sum_t g[b, t, o] * a~[b, t, i]
//
// with a~ = a, d_in' = d_in, or with bias=true a~ = [a, 1], d_in' = d_in + 1, so that
// column d_in of each output row is the bias gradient.
#pragma once
#include <cstdint>

#include "grass/dtype.h"

namespace grass {

struct KronShape {
  int64_t B = 0, T = 1, d_in = 0, d_out = 0;
  bool bias = false;
  int64_t d_in_aug() const { return d_in + (bias ? 1 : 0); }
};

// a and g share one dtype (float32, float16 or bfloat16); out is float32.
void kron_cpu(const void* a /* [B, T, d_in] */, const void* g /* [B, T, d_out] */, DType dtype,
              const KronShape& shape, float* out /* [B, d_out * d_in'] */);

#if defined(GRASS_WITH_CUDA)
void kron_cuda(const void* a, const void* g, DType dtype, const KronShape& shape, float* out,
               void* stream);
#endif

}  // namespace grass
