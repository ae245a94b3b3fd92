// Plain references and input generators shared by the SJLT-family tests.
//
// The reference builds S explicitly from sjlt_codes (bucket, sign) and applies it in
// double, so it shares nothing with the kernels' loops but the published codes.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "grass/dtype.h"
#include "grass/sjlt.h"

namespace grass_test {

// S as explicit entries: for column j, replicas r: (bucket, value) with value = +-1/sqrt(s).
struct ExplicitS {
  int64_t p = 0, k = 0, s = 0;
  std::vector<int64_t> bucket;  // [p, s]
  std::vector<double> value;    // [p, s]
};

inline ExplicitS explicit_sjlt(int64_t p, const grass::SjltParams& params) {
  ExplicitS S;
  S.p = p;
  S.k = params.k;
  S.s = params.s;
  S.bucket.resize(p * params.s);
  std::vector<int8_t> sign(p * params.s);
  grass::sjlt_codes(0, p, params, S.bucket.data(), sign.data());
  S.value.resize(p * params.s);
  for (int64_t e = 0; e < p * params.s; ++e)
    S.value[e] = sign[e] / std::sqrt(static_cast<double>(params.s));
  return S;
}

// y_ref [B, k] = S x in double, and mag [B, k] = |S| |x| (the scale of the rounding error),
// and terms [B, k] the number of non-zero terms added into each output.
struct Reference {
  std::vector<double> y, mag;
  std::vector<int64_t> terms;
};

inline Reference apply_explicit(const ExplicitS& S, const std::vector<float>& x, int64_t B) {
  Reference ref;
  ref.y.assign(B * S.k, 0.0);
  ref.mag.assign(B * S.k, 0.0);
  ref.terms.assign(B * S.k, 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < S.p; ++j) {
      const double v = x[b * S.p + j];
      if (v == 0.0) continue;
      for (int64_t r = 0; r < S.s; ++r) {
        const int64_t o = b * S.k + S.bucket[j * S.s + r];
        ref.y[o] += S.value[j * S.s + r] * v;
        ref.mag[o] += std::fabs(S.value[j * S.s + r] * v);
        ref.terms[o] += 1;
      }
    }
  return ref;
}

// Counts outputs farther from the reference than float32 summation allows: n terms
// added one by one in float32 err by at most about n * 2^-24 * sum |term| (plus one
// rounding of each term's scaling), so tol = (n + 2) * 2^-24 * mag.
inline int count_mismatches(const std::vector<float>& y, const Reference& ref, const char* what) {
  int bad = 0;
  for (size_t e = 0; e < y.size(); ++e) {
    const double tol = (ref.terms[e] + 2) * std::ldexp(1.0, -24) * ref.mag[e];
    if (!(std::fabs(y[e] - ref.y[e]) <= tol)) {
      if (bad < 5)
        std::printf("  %s: output %zu is %.9g, reference %.9g (tol %.3g)\n", what, e, y[e], ref.y[e], tol);
      ++bad;
    }
  }
  return bad;
}

// Random inputs as float32 values plus 16-bit patterns that decode to the same values.
// Decoders independent of dtype.h: bfloat16 is the top half of a float; float16 normals
// are (1 + m / 1024) * 2^(e - 15) and subnormals m * 2^-24.
inline float bf16_value(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float f16_value(uint16_t h) {
  const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  const double v = e == 0 ? std::ldexp(static_cast<double>(m), -24) : std::ldexp(1.0 + m / 1024.0, e - 15);
  return static_cast<float>((h & 0x8000) ? -v : v);
}

struct Input {
  grass::DType dtype = grass::DType::F32;
  std::vector<float> f32;        // the values
  std::vector<uint16_t> bits;    // the same values as float16 / bfloat16 (when dtype says so)
  const void* data() const {
    return dtype == grass::DType::F32 ? static_cast<const void*>(f32.data()) : bits.data();
  }
};

// n values, a fraction `zeros` of them exactly zero. Float16 values include subnormals.
inline Input random_input(int64_t n, uint64_t seed, grass::DType dtype, double zeros = 0.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  Input in;
  in.dtype = dtype;
  in.f32.resize(n);
  if (dtype != grass::DType::F32) in.bits.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    const bool zero = unit(rng) < zeros;
    if (dtype == grass::DType::F32) {
      in.f32[i] = zero ? 0.0f : normal(rng);
    } else if (dtype == grass::DType::BF16) {
      float v = zero ? 0.0f : normal(rng);
      uint32_t u;
      std::memcpy(&u, &v, 4);
      in.bits[i] = static_cast<uint16_t>(u >> 16);
      in.f32[i] = bf16_value(in.bits[i]);
    } else {
      const uint16_t sign = (rng() & 1) ? 0x8000 : 0;
      // Mostly normals with |v| in [2^-4, 2^3), one in 16 a subnormal.
      const uint16_t e = (rng() % 16 == 0) ? 0 : static_cast<uint16_t>(11 + rng() % 7);
      const uint16_t m = static_cast<uint16_t>(rng() & 0x3ff);
      in.bits[i] = zero ? 0 : static_cast<uint16_t>(sign | (e << 10) | m);
      in.f32[i] = f16_value(in.bits[i]);
    }
  }
  return in;
}

inline grass::SjltParams sjlt_params(int64_t k, int64_t s, uint64_t seed) {
  grass::SjltParams p;
  p.k = k;
  p.s = s;
  p.seed = seed;
  return p;
}

inline bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace grass_test
