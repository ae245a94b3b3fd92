// FJLT on the CPU: y = (1/sqrt(k)) R H D x~, one row per OpenMP iteration.
//
// Each row is padded into a thread-local buffer of P floats, multiplied by the signs and
// transformed in place by an unnormalised fast Walsh-Hadamard transform (natural order),
// then the k sampled rows are read out. The transform is cache blocked:
//
//   1. for each block of kBlock floats (fits L1): load + sign the block, run all stages
//      with stride h < kBlock there while it is hot (the strides below the SIMD width in
//      registers, the rest as radix-4 passes);
//   2. the stages with stride h >= kBlock as radix-4 passes over the whole buffer
//      (P floats; 512 KiB at P = 2^17, which stays in L2).
//
// Every path (AVX-512, AVX2, scalar) performs the same additions in the same order per
// element, so results do not depend on the SIMD level, nor on the thread count (a row is
// produced by one thread).
#include "grass/fjlt.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "grass/args.h"
#include "grass/check.h"
#include "grass/hash.h"
#include "grass/mask.h"

namespace grass {

namespace {

// Stages with stride below kBlock run block by block: 4096 floats = 16 KiB, a third of a
// typical 48 KiB L1d, leaving room for the input row being streamed in.
constexpr int64_t kBlock = 4096;

// One radix-2 stage of stride h over x[0, n): (a, b) -> (a + b, a - b).
void fwht_radix2(float* x, int64_t n, int64_t h) {
  for (int64_t i = 0; i < n; i += 2 * h) {
    float* x0 = x + i;
    float* x1 = x + i + h;
#pragma omp simd
    for (int64_t j = 0; j < h; ++j) {
      float a = x0[j], b = x1[j];
      x0[j] = a + b;
      x1[j] = a - b;
    }
  }
}

// Two stages at once, strides h and 2h: one pass over memory instead of two.
// The arithmetic is exactly that of fwht_radix2(h) followed by fwht_radix2(2h).
void fwht_radix4(float* x, int64_t n, int64_t h) {
  for (int64_t i = 0; i < n; i += 4 * h) {
    float* x0 = x + i;
    float* x1 = x0 + h;
    float* x2 = x1 + h;
    float* x3 = x2 + h;
#pragma omp simd
    for (int64_t j = 0; j < h; ++j) {
      float a = x0[j], b = x1[j], c = x2[j], d = x3[j];
      float s0 = a + b, s1 = a - b, s2 = c + d, s3 = c - d;
      x0[j] = s0 + s2;
      x1[j] = s1 + s3;
      x2[j] = s0 - s2;
      x3[j] = s1 - s3;
    }
  }
}

// Stages with strides h in [h_begin, h_end) (powers of two) over x[0, n), as radix-4
// passes plus one radix-2 pass when the count is odd.
void fwht_stages(float* x, int64_t n, int64_t h_begin, int64_t h_end) {
  int64_t h = h_begin;
  for (; 4 * h <= h_end; h *= 4) fwht_radix4(x, n, h);
  if (h < h_end) fwht_radix2(x, n, h);
}

// The stages with stride h < kSmall over x[0, n), n a multiple of kSmall: the strides
// inside one SIMD register. Lane i gets x[i ^ h] + sign * x[i] with sign = -1 when bit h
// of i is set: x[i] + x[i+h] for the lower lane, x[i-h] - x[i] for the upper one, i.e.
// exactly the a + b, a - b of the radix-2 butterfly (an fma with a +-1 factor rounds once,
// like the plain add).
#if defined(__AVX512F__)
constexpr int64_t kSmall = 16;
void fwht_small(float* x, int64_t n) {
  const __m512 s1 = _mm512_setr_ps(1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1);
  const __m512 s2 = _mm512_setr_ps(1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1);
  const __m512 s4 = _mm512_setr_ps(1, 1, 1, 1, -1, -1, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1);
  const __m512 s8 = _mm512_setr_ps(1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1, -1);
  // The masked forms with a full mask are the plain permutes; unlike the unmasked
  // intrinsics they need no _mm512_undefined_ps, which GCC 12 flags as uninitialised.
  const __mmask16 all = 0xFFFF;
  for (int64_t i = 0; i < n; i += 16) {
    __m512 v = _mm512_loadu_ps(x + i);
    v = _mm512_fmadd_ps(v, s1, _mm512_mask_permute_ps(v, all, v, 0xB1));           // lane i ^ 1
    v = _mm512_fmadd_ps(v, s2, _mm512_mask_permute_ps(v, all, v, 0x4E));           // lane i ^ 2
    v = _mm512_fmadd_ps(v, s4, _mm512_mask_shuffle_f32x4(v, all, v, v, 0xB1));     // lane i ^ 4
    v = _mm512_fmadd_ps(v, s8, _mm512_mask_shuffle_f32x4(v, all, v, v, 0x4E));     // lane i ^ 8
    _mm512_storeu_ps(x + i, v);
  }
}
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int64_t kSmall = 8;
void fwht_small(float* x, int64_t n) {
  const __m256 s1 = _mm256_setr_ps(1, -1, 1, -1, 1, -1, 1, -1);
  const __m256 s2 = _mm256_setr_ps(1, 1, -1, -1, 1, 1, -1, -1);
  const __m256 s4 = _mm256_setr_ps(1, 1, 1, 1, -1, -1, -1, -1);
  for (int64_t i = 0; i < n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    v = _mm256_fmadd_ps(v, s1, _mm256_permute_ps(v, 0xB1));
    v = _mm256_fmadd_ps(v, s2, _mm256_permute_ps(v, 0x4E));
    v = _mm256_fmadd_ps(v, s4, _mm256_permute2f128_ps(v, v, 0x01));
    _mm256_storeu_ps(x + i, v);
  }
}
#else
constexpr int64_t kSmall = 4;
void fwht_small(float* x, int64_t n) {
  for (int64_t i = 0; i < n; i += 4) {
    float a = x[i], b = x[i + 1], c = x[i + 2], d = x[i + 3];
    float s0 = a + b, s1 = a - b, s2 = c + d, s3 = c - d;
    x[i] = s0 + s2;
    x[i + 1] = s1 + s3;
    x[i + 2] = s0 - s2;
    x[i + 3] = s1 - s3;
  }
}
#endif

// The whole transform of a block of n = 2^m floats already in cache.
void fwht_in_block(float* x, int64_t n) {
  if (n >= kSmall) {
    fwht_small(x, n);
    fwht_stages(x, n, kSmall, n);
  } else {
    fwht_stages(x, n, 1, n);  // tiny P: plain stages
  }
}

// 64-byte aligned float buffer owned by one thread.
struct AlignedBuffer {
  float* data;
  explicit AlignedBuffer(int64_t n)
      : data(static_cast<float*>(::operator new(static_cast<size_t>(n) * sizeof(float),
                                                std::align_val_t(64)))) {}
  ~AlignedBuffer() { ::operator delete(data, std::align_val_t(64)); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
};

}  // namespace

int64_t fjlt_padded_size(int64_t p) {
  GRASS_CHECK(p >= 0 && p <= (int64_t{1} << 62), "p must be in [0, 2^62], got %lld",
              (long long)p);
  int64_t P = 1;
  while (P < p) P <<= 1;
  return P;
}

void fjlt_signs(int64_t p, uint64_t seed, int8_t* signs /* [p] */) {
  GRASS_CHECK(p >= 0, "p must be >= 0, got %lld", (long long)p);
  // Sign of column j: the low bit of draw j on the sign stream, 1 meaning negative
  // (the same convention as SjltHash). CUDA computes the same inline.
  const uint64_t key = stream_key(seed, kStreamFjltSign);
  for (int64_t j = 0; j < p; ++j)
    signs[j] = (draw(key, static_cast<uint64_t>(j)) & 1u) ? int8_t{-1} : int8_t{1};
}

void fjlt_rows(int64_t p, int64_t k, uint64_t seed, int64_t* rows /* [k] */) {
  const int64_t P = fjlt_padded_size(p);
  GRASS_CHECK(k >= 1 && k <= P, "k must be in [1, P = %lld] (P = next power of two >= p = %lld), got %lld",
              (long long)P, (long long)p, (long long)k);
  // A mask of k rows out of P, on a seed of its own stream so that it is independent of
  // the signs and of a random mask drawn from the same user seed.
  random_mask_indices(P, k, stream_key(seed, kStreamFjltRows), rows);
}

void fjlt_cpu(const void* x /* [B, p] */, DType dtype, int64_t B, int64_t p,
              float* y /* [B, k] */, int64_t k, uint64_t seed) {
  detail::check_fjlt_args(dtype, B, p, k, __func__);
  const int64_t P = fjlt_padded_size(p);
  if (B == 0) return;
  GRASS_CHECK(y != nullptr, "y must not be null");
  GRASS_CHECK(p == 0 || x != nullptr, "x must not be null");

  // Per call, shared read-only: signs as floats [p] and the sampled rows [k].
  std::vector<float> sign(static_cast<size_t>(p));
  {
    std::vector<int8_t> s8(static_cast<size_t>(p));
    fjlt_signs(p, seed, s8.data());
    for (int64_t j = 0; j < p; ++j) sign[j] = static_cast<float>(s8[j]);
  }
  std::vector<int64_t> rows(static_cast<size_t>(k));
  fjlt_rows(p, k, seed, rows.data());
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(k)));
  const float* sgn = sign.data();
  const int64_t* row_idx = rows.data();
  const int64_t block = std::min(P, kBlock);

  dispatch_float_dtype(dtype, [&](auto tag) {
    using Storage = typename decltype(tag)::storage;
    const Storage* xs = static_cast<const Storage*>(x);
#pragma omp parallel
    {
      AlignedBuffer buf(P);  // this thread's padded row
      float* w = buf.data;
#pragma omp for schedule(dynamic, 1)
      for (int64_t b = 0; b < B; ++b) {
        const Storage* xb = xs + b * p;
        // Pass 1: per L1 block, load D x~ and run the strides below the block size.
        for (int64_t base = 0; base < P; base += block) {
          float* wb = w + base;
          const int64_t end = std::min(block, p - base);  // may be <= 0 in the padding
          int64_t j = 0;
          for (; j < end; ++j) wb[j] = load_as_float(xb, base + j, tag) * sgn[base + j];
          for (; j < block; ++j) wb[j] = 0.0f;
          fwht_in_block(wb, block);
        }
        // Pass 2: the strides >= block across the whole buffer.
        fwht_stages(w, P, block, P);
        float* yb = y + b * k;
        for (int64_t r = 0; r < k; ++r) yb[r] = w[row_idx[r]] * scale;
      }
    }
  });
}

}  // namespace grass
