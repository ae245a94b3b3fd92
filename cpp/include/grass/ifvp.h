// Batched Cholesky iFVP for a block-diagonal (per-layer) empirical Fisher.
//
// Columns of the compressed gradient matrix G [N, K] are split into consecutive
// blocks of sizes block_sizes[0..L), sum = K. Block l's Fisher is F_l = G_l^T G_l
// (unnormalised: the caller divides by N when it wants the mean). Matrices are
// float64, packed one after another: block l is a dense row-major [k_l, k_l] matrix
// starting at offset sum_{m<l} k_m^2 (see ifvp_packed_size). No LAPACK is needed.
#pragma once
#include <cstdint>

#include "grass/dtype.h"

namespace grass {

// Throws unless every block size is >= 1; returns sum_l k_l^2.
int64_t ifvp_packed_size(const int64_t* block_sizes, int64_t num_blocks);

// F_l += G_l^T G_l for every block (full symmetric result). G is float32 or float64.
// Call once per chunk of rows to accumulate over a dataset.
void fisher_accumulate_cpu(const void* G /* [N, K] */, DType dtype, int64_t N, int64_t K,
                           const int64_t* block_sizes, int64_t num_blocks, double* F /* packed */);

// In place: F_l + damping[l] * I = L_l L_l^T; the lower triangle of each block then
// holds L_l and the strict upper triangle is zeroed. Only the lower triangle of F is read
// (F is symmetric, as fisher_accumulate_cpu leaves it). damping[l] must be finite and
// >= 0. Throws naming the block and the pivot if one is not positive definite (raise
// damping); F is then left as it came (its lower triangle restored from the upper).
void cholesky_factor_cpu(double* F /* packed */, const int64_t* block_sizes, int64_t num_blocks,
                         const double* damping /* [L] */);

// X[:, block l] = (L_l L_l^T)^{-1} V[:, block l] for all M rows of V. V and X share a
// dtype, float32 or float64; work is in float64. X may alias V.
void cholesky_solve_cpu(const double* L /* packed */, const int64_t* block_sizes,
                        int64_t num_blocks, const void* V /* [M, K] */, DType dtype, int64_t M,
                        int64_t K, void* X /* [M, K] */);

}  // namespace grass
