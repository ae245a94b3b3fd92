// Fused FactGraSS: mask both factors of a linear layer's gradient, rebuild their
// Kronecker product and SJLT it to k, without a [B, k_in * k_out] intermediate.
//
//   z[b, o' * k_in + i'] = sum_t g[b, t, idx_out[o']] * a~[b, t, idx_in[i']]
//   y[b] = S z[b],   S the SJLT of params with p' = k_in * k_out columns
//
// a~ is a with a ones column appended when shape.bias (index d_in selects it), so
// idx_in indexes [0, d_in') and idx_out indexes [0, d_out). Equal to
// sjlt(kron(a~[:, :, idx_in], g[:, :, idx_out])) with the same params.
#pragma once
#include <cstdint>

#include "grass/dtype.h"
#include "grass/kron.h"
#include "grass/sjlt.h"

namespace grass {

void factgrass_cpu(const void* a /* [B, T, d_in] */, const void* g /* [B, T, d_out] */,
                   DType dtype, const KronShape& shape, const int64_t* idx_in /* [k_in] */,
                   int64_t k_in, const int64_t* idx_out /* [k_out] */, int64_t k_out,
                   float* y /* [B, k] */, const SjltParams& params);

#if defined(GRASS_WITH_CUDA)
void factgrass_cuda(const void* a, const void* g, DType dtype, const KronShape& shape,
                    const int64_t* idx_in, int64_t k_in, const int64_t* idx_out, int64_t k_out,
                    float* y, const SjltParams& params, bool deterministic, void* stream);
#endif

}  // namespace grass
