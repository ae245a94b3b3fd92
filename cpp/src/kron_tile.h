// Internal to grass_core: the register-blocked micro-kernel shared by kron_cpu and
// factgrass_cpu.
//
// Both form entries sum_t G[t, q] * A[t, i] of a per-sample Kronecker product. They use
// this one kernel so that every entry is the same expression, summed over t in ascending
// order from +0: a masked kron_cpu followed by sjlt_cpu then gives factgrass_cpu's z
// bitwise, which the tests rely on.
#pragma once
#include <cstdint>

namespace grass {
namespace detail {

constexpr int kKronVW = 32;  // columns per micro-tile (two AVX-512 registers)
constexpr int kKronNR = 4;   // output rows per micro-tile

// out[q, i] = sum_t G[t, q] * A[t, i] for q < NR, i < w (w <= kKronVW).
// A: [T, lda] panel; G: [T, ldg] rows of g for these NR outputs; out: NR rows, stride ldo.
template <int NR>
inline void kron_micro(const float* A, int64_t lda, const float* G, int64_t ldg, int64_t T, int64_t w,
                       float* out, int64_t ldo) {
  float acc[NR][kKronVW];
  for (int q = 0; q < NR; ++q)
    for (int i = 0; i < kKronVW; ++i) acc[q][i] = 0.0f;
  // Two copies of the loop: with the compile-time width a full tile is whole registers
  // (a generic lambda over the width measured 2-3% slower).
  if (w == kKronVW) {
    for (int64_t t = 0; t < T; ++t) {
      const float* at = A + t * lda;
      const float* gt = G + t * ldg;
      for (int q = 0; q < NR; ++q) {
        const float gq = gt[q];
#pragma omp simd
        for (int i = 0; i < kKronVW; ++i) acc[q][i] += gq * at[i];
      }
    }
  } else {
    for (int64_t t = 0; t < T; ++t) {
      const float* at = A + t * lda;
      const float* gt = G + t * ldg;
      for (int q = 0; q < NR; ++q) {
        const float gq = gt[q];
#pragma omp simd
        for (int64_t i = 0; i < w; ++i) acc[q][i] += gq * at[i];
      }
    }
  }
  for (int q = 0; q < NR; ++q)
    for (int64_t i = 0; i < w; ++i) out[q * ldo + i] = acc[q][i];
}

}  // namespace detail
}  // namespace grass
