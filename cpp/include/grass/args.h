// Argument checks shared by the CPU and CUDA twins of an op (sjlt_cpu / sjlt_cuda, ...),
// so that both reject the same inputs with the same messages. Host code only; used by
// grass_core's sources, not part of the umbrella header.
//
// `func` is the API function being checked: messages read "grass.<func>: ...".
#pragma once
#include <cstdint>

#include "grass/check.h"
#include "grass/dtype.h"
#include "grass/fjlt.h"
#include "grass/kron.h"
#include "grass/sjlt.h"

namespace grass {
namespace detail {

inline void check_float_dtype(DType dtype, const char* func) {
  GRASS_CHECK_IN(func, dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16,
                 "dtype must be float32, float16 or bfloat16, got %s", dtype_name(dtype));
}

// A sketch of B rows of p columns (sjlt, sjlt_csr, masked_sjlt).
inline void check_sketch_args(DType dtype, int64_t B, int64_t p, const SjltParams& params, const char* func) {
  check_float_dtype(dtype, func);
  check_sjlt_params(params);
  GRASS_CHECK_IN(func, B >= 0, "B must be >= 0, got %lld", (long long)B);
  GRASS_CHECK_IN(func, p >= 0, "p must be >= 0, got %lld", (long long)p);
}

inline void check_fjlt_args(DType dtype, int64_t B, int64_t p, int64_t k, const char* func) {
  check_float_dtype(dtype, func);
  GRASS_CHECK_IN(func, B >= 0, "B must be >= 0, got %lld", (long long)B);
  GRASS_CHECK_IN(func, p >= 0, "p must be >= 0, got %lld", (long long)p);
  const int64_t P = fjlt_padded_size(p);
  GRASS_CHECK_IN(func, k >= 1 && k <= P,
                 "k must be in [1, P = %lld] (P = next power of two >= p = %lld), got %lld", (long long)P,
                 (long long)p, (long long)k);
}

// The factors of a linear layer's gradient (kron, factgrass).
inline void check_kron_shape(DType dtype, const KronShape& shape, const char* func) {
  check_float_dtype(dtype, func);
  GRASS_CHECK_IN(func, shape.B >= 0, "shape.B must be >= 0, got %lld", (long long)shape.B);
  GRASS_CHECK_IN(func, shape.T >= 1, "shape.T must be >= 1, got %lld", (long long)shape.T);
  GRASS_CHECK_IN(func, shape.d_in >= 1, "shape.d_in must be >= 1, got %lld", (long long)shape.d_in);
  GRASS_CHECK_IN(func, shape.d_out >= 1, "shape.d_out must be >= 1, got %lld", (long long)shape.d_out);
}

// kron writes [B, d_out * d_in'].
inline void check_kron_args(DType dtype, const KronShape& shape, const char* func) {
  check_kron_shape(dtype, shape, func);
  const int64_t d_out = shape.d_out, d_aug = shape.d_in_aug();
  GRASS_CHECK_IN(func, d_out <= INT64_MAX / d_aug,
                 "d_out * d_in' overflows int64 (d_out = %lld, d_in' = %lld)", (long long)d_out,
                 (long long)d_aug);
}

// factgrass sketches the k_in * k_out masked entries of the product.
inline void check_factgrass_args(DType dtype, const KronShape& shape, int64_t k_in, int64_t k_out,
                                 const SjltParams& params, const char* func) {
  check_kron_shape(dtype, shape, func);
  GRASS_CHECK_IN(func, k_in >= 1, "k_in must be >= 1, got %lld", (long long)k_in);
  GRASS_CHECK_IN(func, k_out >= 1, "k_out must be >= 1, got %lld", (long long)k_out);
  GRASS_CHECK_IN(func, k_out <= INT64_MAX / k_in,
                 "k_in * k_out overflows int64 (k_in = %lld, k_out = %lld)", (long long)k_in,
                 (long long)k_out);
  check_sjlt_params(params);
}

}  // namespace detail
}  // namespace grass
