// Masks: keep k' chosen coordinates out of p. Random masks are drawn from a seed;
// learned (selective) masks arrive as index arrays and use the same gather.
#pragma once
#include <cstdint>

#include "grass/dtype.h"

namespace grass {

// k distinct indices of [0, p), sorted ascending, drawn uniformly from seed
// (Floyd's algorithm on the kStreamMask stream: O(k log k) time, O(k) memory; every
// k-subset is equally likely and the result depends on (p, k, seed) only).
// Throws unless 1 <= k <= p.
void random_mask_indices(int64_t p, int64_t k, uint64_t seed, int64_t* out /* [k] */);

// Throws grass::Error naming `what` unless every idx[j] is in [0, p).
void check_indices(const int64_t* idx, int64_t n, int64_t p, const char* what);

// out[b, j] = x[b, idx[j]]; out has x's element type (any DType: it is a byte gather).
void mask_gather_cpu(const void* x /* [B, p] */, DType dtype, int64_t B, int64_t p,
                     const int64_t* idx /* [kp] */, int64_t kp, void* out /* [B, kp] */);

#if defined(GRASS_WITH_CUDA)
// idx lives on the device; the caller checks its range (check_indices on a host copy, or
// trusts indices from random_mask_indices).
void mask_gather_cuda(const void* x, DType dtype, int64_t B, int64_t p, const int64_t* idx,
                      int64_t kp, void* out, void* stream);
#endif

}  // namespace grass
