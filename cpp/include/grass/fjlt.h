// FJLT (subsampled randomized Hadamard transform), O(P log P) per row:
//
//   y = (1/sqrt(k)) * R H D x~
//
// x~ is x zero-padded to P = the next power of two >= p; D = diag(signs), the signs
// drawn on the kStreamFjltSign stream; H the unnormalised Walsh-Hadamard matrix
// (entries +-1, natural/Sylvester order: H[i][j] = (-1)^popcount(i & j));
// R keeps the k rows random_mask_indices(P, k, seed') with seed' derived from seed on
// the kStreamFjltRows stream. Then E||y||^2 = ||x||^2.
#pragma once
#include <cstdint>

#include "grass/dtype.h"

namespace grass {

int64_t fjlt_padded_size(int64_t p);  // next power of two >= p

// The explicit parameters, for reference implementations: signs[j] in {+1, -1} for
// j < p, and the k sorted sampled rows of H in [0, P).
void fjlt_signs(int64_t p, uint64_t seed, int8_t* signs /* [p] */);
void fjlt_rows(int64_t p, int64_t k, uint64_t seed, int64_t* rows /* [k] */);

// Throws unless 1 <= k <= fjlt_padded_size(p).
void fjlt_cpu(const void* x /* [B, p] */, DType dtype, int64_t B, int64_t p,
              float* y /* [B, k] */, int64_t k, uint64_t seed);

#if defined(GRASS_WITH_CUDA)
void fjlt_cuda(const void* x, DType dtype, int64_t B, int64_t p, float* y, int64_t k,
               uint64_t seed, void* stream);
#endif

}  // namespace grass
