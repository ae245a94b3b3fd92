// Kronecker reconstruction on the CPU: per sample a small GEMM out_b = G_b^T A~_b,
// [d_out, T] x [T, d_in'] -> [d_out, d_in'].
//
// Work items are (sample, chunk of kOChunk output rows), so that a small batch still
// spreads over the threads. Within an item, a register-blocked micro-kernel computes a
// [NR rows x 32 columns] tile of the output across all of t, reading each a~[t, i] once
// for NR rows. Every output element is the sum over t in ascending order starting from 0,
// computed by one thread, so results are bitwise reproducible for any thread count (and
// factgrass_cpu, which forms the same sums the same way, matches this kernel).
#include "grass/kron.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "grass/args.h"
#include "grass/check.h"
#include "kron_tile.h"

namespace grass {

namespace {

constexpr int64_t kOChunk = 64;  // output rows per work item
constexpr int64_t kITile = 256;  // input columns per panel: a [T, 256] panel stays in L2
using detail::kKronNR;
using detail::kKronVW;
using detail::kron_micro;  // kron_tile.h, shared with factgrass_cpu

// Rows [0, rows) of one item: out[o, i] for i < d_in from A [T, d_in] and G [T, ldg].
void kron_rows(const float* A, int64_t d_in, const float* G, int64_t ldg, int64_t T,
               int64_t rows, float* out, int64_t ldo) {
  for (int64_t i0 = 0; i0 < d_in; i0 += kITile) {
    const int64_t i_end = std::min(d_in, i0 + kITile);
    int64_t o = 0;
    for (; o + kKronNR <= rows; o += kKronNR)
      for (int64_t i = i0; i < i_end; i += kKronVW)
        kron_micro<kKronNR>(A + i, d_in, G + o, ldg, T, std::min<int64_t>(kKronVW, i_end - i),
                            out + o * ldo + i, ldo);
    for (; o < rows; ++o)
      for (int64_t i = i0; i < i_end; i += kKronVW)
        kron_micro<1>(A + i, d_in, G + o, ldg, T, std::min<int64_t>(kKronVW, i_end - i),
                      out + o * ldo + i, ldo);
  }
}

}  // namespace

void kron_cpu(const void* a /* [B, T, d_in] */, const void* g /* [B, T, d_out] */, DType dtype,
              const KronShape& shape, float* out /* [B, d_out * d_in'] */) {
  detail::check_kron_args(dtype, shape, __func__);
  const int64_t B = shape.B, T = shape.T, d_in = shape.d_in, d_out = shape.d_out;
  const int64_t d_aug = shape.d_in_aug();
  if (B == 0) return;
  GRASS_CHECK(a != nullptr && g != nullptr && out != nullptr, "a, g and out must not be null");

  const int64_t n_chunks = (d_out + kOChunk - 1) / kOChunk;
  const int64_t n_items = B * n_chunks;
  const int64_t out_stride = d_out * d_aug;

  dispatch_float_dtype(dtype, [&](auto tag) {
    using Storage = typename decltype(tag)::storage;
    constexpr bool kIsF32 = std::is_same_v<decltype(tag), F32Tag>;
    const Storage* as = static_cast<const Storage*>(a);
    const Storage* gs = static_cast<const Storage*>(g);
#pragma omp parallel
    {
      // Thread-local float copies: a[b] (only when it is not float32 already; reused
      // while this thread's consecutive items stay on one sample) and g[b, :, chunk].
      std::vector<float> a_buf(kIsF32 ? 0 : static_cast<size_t>(T * d_in));
      std::vector<float> g_buf(static_cast<size_t>(T * std::min(kOChunk, d_out)));
      int64_t cached_b = -1;
      // Static, contiguous item ranges: a thread's items share samples, and the a[b]
      // conversion is paid once per sample and thread.
#pragma omp for schedule(static)
      for (int64_t item = 0; item < n_items; ++item) {
        const int64_t b = item / n_chunks;
        const int64_t o0 = (item % n_chunks) * kOChunk;
        const int64_t rows = std::min(kOChunk, d_out - o0);
        const float* A;
        if constexpr (kIsF32) {
          A = as + b * T * d_in;
        } else {
          if (cached_b != b) {
            const Storage* ab = as + b * T * d_in;
            for (int64_t e = 0; e < T * d_in; ++e) a_buf[e] = load_as_float(ab, e, tag);
            cached_b = b;
          }
          A = a_buf.data();
        }
        // g_buf [T, rows]: this chunk's output-gradient columns.
        const Storage* gb = gs + b * T * d_out;
        for (int64_t t = 0; t < T; ++t)
          for (int64_t q = 0; q < rows; ++q)
            g_buf[t * rows + q] = load_as_float(gb, t * d_out + o0 + q, tag);
        float* ob = out + b * out_stride + o0 * d_aug;
        kron_rows(A, d_in, g_buf.data(), rows, T, rows, ob, d_aug);
        if (shape.bias) {
          // The ones column: sum_t g[t, o] * 1, same order and rounding as a data column.
          for (int64_t q = 0; q < rows; ++q) {
            float s = 0.0f;
            for (int64_t t = 0; t < T; ++t) s += g_buf[t * rows + q];
            ob[q * d_aug + d_in] = s;
          }
        }
      }
    }
  });
}

}  // namespace grass
