// Element types the kernels read, and scalar conversions usable on host and device.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define GRASS_HD __host__ __device__ __forceinline__
#else
#define GRASS_HD inline
#endif

namespace grass {

// Inputs may be any of these; kernels accumulate in float32 (float64 for F64).
enum class DType : int { F32 = 0, F16 = 1, BF16 = 2, F64 = 3 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    case DType::F64: return "float64";
  }
  return "unknown";
}

inline int64_t dtype_size(DType t) { return t == DType::F64 ? 8 : (t == DType::F32 ? 4 : 2); }

// bfloat16 -> float32: the top 16 bits of a float.
GRASS_HD float bf16_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
#if defined(__CUDA_ARCH__)
  f = __uint_as_float(u);
#else
  std::memcpy(&f, &u, 4);
#endif
  return f;
}

// IEEE half -> float32, exact for normals, subnormals, inf and nan.
GRASS_HD float f16_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (man << 13);  // inf / nan
  } else if (exp != 0) {
    u = sign | ((exp + 112u) << 23) | (man << 13);  // normal: rebias 15 -> 127
  } else if (man == 0) {
    u = sign;  // signed zero
  } else {
    // Subnormal: shift the mantissa up until its leading 1 is the implicit bit.
    uint32_t e = 113u;
    while ((man & 0x400u) == 0) { man <<= 1; --e; }
    u = sign | (e << 23) | ((man & 0x3ffu) << 13);
  }
  float f;
#if defined(__CUDA_ARCH__)
  f = __uint_as_float(u);
#else
  std::memcpy(&f, &u, 4);
#endif
  return f;
}

// Load element i of a typed buffer as float. T is the storage type tag below.
struct F32Tag { using storage = float; };
struct F16Tag { using storage = uint16_t; };
struct BF16Tag { using storage = uint16_t; };

GRASS_HD float load_as_float(const float* p, int64_t i, F32Tag) { return p[i]; }
GRASS_HD float load_as_float(const uint16_t* p, int64_t i, F16Tag) { return f16_to_float(p[i]); }
GRASS_HD float load_as_float(const uint16_t* p, int64_t i, BF16Tag) { return bf16_to_float(p[i]); }

// Calls fn(Tag{}) for a float-family DType (F32, F16, BF16); F64 is rejected by the caller.
template <typename Fn>
inline void dispatch_float_dtype(DType t, Fn&& fn) {
  switch (t) {
    case DType::F32: fn(F32Tag{}); return;
    case DType::F16: fn(F16Tag{}); return;
    case DType::BF16: fn(BF16Tag{}); return;
    default: return;
  }
}

}  // namespace grass
