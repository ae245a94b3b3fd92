// SJLT: a sparse Johnson-Lindenstrauss sketch y = S x, S of shape [k, p].
//
// Column j of S has s non-zeros, at the buckets SjltHash(seed, k, s).code(j, r) for
// r in [0, s), each worth +-1/sqrt(s). Nothing of S is stored; memory is O(1) in p.
// All arrays are C-contiguous row-major; all sizes and indices are 64-bit.
// Outputs are float32 and overwritten (never accumulated into).
#pragma once
#include <cstdint>

#include "grass/dtype.h"

namespace grass {

struct SjltParams {
  int64_t k = 0;       // output dimension, 1 <= k <= 2^31 - 1
  int64_t s = 1;       // non-zeros per column, 1 <= s <= k
  uint64_t seed = 0;
};

// Throws grass::Error unless 1 <= k < 2^31 and 1 <= s <= k.
void check_sjlt_params(const SjltParams& params);

// The explicit S, column by column, for columns [column_begin, column_begin + count):
// bucket[c * s + r] in [0, k) and sign[c * s + r] in {+1, -1}. For tests and users
// who want to build S as a sparse matrix.
void sjlt_codes(int64_t column_begin, int64_t count, const SjltParams& params,
                int64_t* bucket /* [count, s] */, int8_t* sign /* [count, s] */);

// ---- CPU (OpenMP) ----

// y[b] = S x[b] for each row b. x is float32, float16 or bfloat16. Every output element
// sums its terms in float32 in a fixed order (ascending columns within ranges of
// max(2^17, 64 k) columns, the ranges' partial sums in order; docs/cpu-kernels.md), so
// results are bitwise identical across runs and thread counts, and equal to sjlt_csr_cpu
// on the same non-zeros (sorted indices) and to float32 input holding the same values.
// Scratch: about 64 * k bytes per thread (k <= 2^18), 4 * k above.
void sjlt_cpu(const void* x /* [B, p] */, DType dtype, int64_t B, int64_t p,
              float* y /* [B, k] */, const SjltParams& params);

// The same for a CSR matrix; costs O(nnz * s). indptr[0] must be 0, indptr is
// non-decreasing, every column index is in [0, p). Duplicate indices add up. indptr is
// checked before anything is written; column indices are checked as they are read, and a
// bad one throws after filling y with NaN (never a partial sum that looks like a result).
void sjlt_csr_cpu(const int64_t* indptr /* [B + 1] */, const int64_t* indices /* [nnz] */,
                  const void* values /* [nnz] */, DType dtype, int64_t B, int64_t p,
                  float* y /* [B, k] */, const SjltParams& params);

// x[b] = S^T y[b] for each row b.
void sjlt_transpose_cpu(const float* y /* [B, k] */, int64_t B, int64_t p,
                        float* x /* [B, p] */, const SjltParams& params);

// ---- CUDA (compiled when GRASS_WITH_CUDA) ----
// Same functions, device pointers, launched on `stream` (a cudaStream_t; nullptr is the
// legacy default stream). The fast path adds with atomics, so float results may vary
// in the last bits between runs; deterministic=true picks an order-fixed path (and may be
// slower) that adds in the order of grass/detail/sum_order.h, as the CPU kernels do: its
// results equal sjlt_cpu / sjlt_csr_cpu bit for bit for every p and launch configuration
// (docs/cuda.md). The CSR arrays live on the device.
#if defined(GRASS_WITH_CUDA)
void sjlt_cuda(const void* x, DType dtype, int64_t B, int64_t p, float* y,
               const SjltParams& params, bool deterministic, void* stream);
void sjlt_csr_cuda(const int64_t* indptr, const int64_t* indices, const void* values, DType dtype,
                   int64_t B, int64_t p, float* y, const SjltParams& params, bool deterministic,
                   void* stream);
void sjlt_transpose_cuda(const float* y, int64_t B, int64_t p, float* x, const SjltParams& params,
                         void* stream);
#endif

}  // namespace grass
