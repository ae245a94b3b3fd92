#pragma once
#include "grass/dtype.h"
struct __half { uint16_t x; };
inline __half __ushort_as_half(uint16_t v) { return __half{v}; }
inline float __half2float(__half h) { return grass::f16_to_float(h.x); }
