// Masks on the CPU: random index sets (Floyd's algorithm) and the gather.
#include "grass/mask.h"

#include <algorithm>
#include <cstring>
#include <unordered_set>
#include <vector>

#include "grass/check.h"
#include "grass/hash.h"

namespace grass {

namespace {

// A uniform draw in [0, n) from 64 random bits: the high half of the 128-bit product
// (bias below n / 2^64, far under any test's resolution).
inline uint64_t below(uint64_t bits, uint64_t n) {
#if defined(__SIZEOF_INT128__)
  return static_cast<uint64_t>((static_cast<unsigned __int128>(bits) * n) >> 64);
#else
  // Portable 64 x 64 -> high 64 bits.
  const uint64_t a_lo = bits & 0xffffffffu, a_hi = bits >> 32;
  const uint64_t b_lo = n & 0xffffffffu, b_hi = n >> 32;
  const uint64_t lo_lo = a_lo * b_lo, hi_lo = a_hi * b_lo, lo_hi = a_lo * b_hi, hi_hi = a_hi * b_hi;
  const uint64_t cross = (lo_lo >> 32) + (hi_lo & 0xffffffffu) + lo_hi;
  return hi_hi + (hi_lo >> 32) + (cross >> 32);
#endif
}

// Floyd's algorithm: for i = 0..k-1, with j = p - k + i, draw t uniform in [0, j] and take
// t unless it was taken already, then j (which cannot have been). Every k-subset comes
// out with the same probability. `Taken` is a bitmap for dense masks, a hash set for
// sparse ones; both give the same subset.
template <typename Taken>
void floyd(int64_t p, int64_t k, uint64_t key, Taken& taken, int64_t* out) {
  for (int64_t i = 0; i < k; ++i) {
    const int64_t j = p - k + i;
    const int64_t t =
        static_cast<int64_t>(below(draw(key, static_cast<uint64_t>(i)), static_cast<uint64_t>(j) + 1));
    const int64_t pick = taken.insert(t) ? t : (taken.insert(j), j);
    out[i] = pick;
  }
}

struct BitmapSet {
  std::vector<uint64_t> words;
  explicit BitmapSet(int64_t p) : words(static_cast<size_t>((p + 63) / 64), 0) {}
  bool insert(int64_t v) {  // true if v was not present
    uint64_t& w = words[static_cast<size_t>(v >> 6)];
    const uint64_t bit = uint64_t{1} << (v & 63);
    const bool fresh = (w & bit) == 0;
    w |= bit;
    return fresh;
  }
};

struct HashSet {
  std::unordered_set<int64_t> set;
  explicit HashSet(int64_t k) { set.reserve(static_cast<size_t>(k) * 2); }
  bool insert(int64_t v) { return set.insert(v).second; }
};

}  // namespace

void random_mask_indices(int64_t p, int64_t k, uint64_t seed, int64_t* out /* [k] */) {
  GRASS_CHECK(p >= 1, "p must be >= 1, got %lld", (long long)p);
  GRASS_CHECK(k >= 1 && k <= p, "k must be in [1, p = %lld], got %lld", (long long)p, (long long)k);
  GRASS_CHECK(out != nullptr, "out must not be null");
  const uint64_t key = stream_key(seed, kStreamMask);
  // A bitmap costs p / 8 bytes: use it while that is at most 16 bytes per kept index.
  if (p / 8 <= 16 * k) {
    BitmapSet taken(p);
    floyd(p, k, key, taken, out);
  } else {
    HashSet taken(k);
    floyd(p, k, key, taken, out);
  }
  std::sort(out, out + k);
}

void check_indices(const int64_t* idx, int64_t n, int64_t p, const char* what) {
  const char* name = what ? what : "indices";
  GRASS_CHECK(n >= 0, "%s: length must be >= 0, got %lld", name, (long long)n);
  if (n == 0) return;
  GRASS_CHECK(idx != nullptr, "%s must not be null (length %lld)", name, (long long)n);
  int64_t bad = n;  // the first bad position
#pragma omp parallel for schedule(static) reduction(min : bad) if (n > 65536)
  for (int64_t j = 0; j < n; ++j)
    if (idx[j] < 0 || idx[j] >= p) bad = std::min(bad, j);
  GRASS_CHECK(bad == n, "%s must hold indices in [0, %lld), got %s[%lld] = %lld", name, (long long)p,
              name, (long long)bad, (long long)(bad == n ? 0 : idx[bad]));
}

void mask_gather_cpu(const void* x /* [B, p] */, DType dtype, int64_t B, int64_t p,
                     const int64_t* idx /* [kp] */, int64_t kp, void* out /* [B, kp] */) {
  GRASS_CHECK(B >= 0, "B must be >= 0, got %lld", (long long)B);
  GRASS_CHECK(p >= 0, "p must be >= 0, got %lld", (long long)p);
  GRASS_CHECK(kp >= 0, "kp must be >= 0, got %lld", (long long)kp);
  GRASS_CHECK(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16 ||
                  dtype == DType::F64,
              "dtype must be float32, float16, bfloat16 or float64, got %s (code %d)",
              dtype_name(dtype), static_cast<int>(dtype));
  const int64_t size = dtype_size(dtype);
  check_indices(idx, kp, p, "idx");
  if (B == 0 || kp == 0) return;
  GRASS_CHECK(x != nullptr && out != nullptr, "x and out must not be null");
  // Typed copies of the element width: the gather moves bits, never converts.
  auto gather = [&](auto zero) {
    using T = decltype(zero);
    const T* xs = static_cast<const T*>(x);
    T* os = static_cast<T*>(out);
#pragma omp parallel for schedule(static) if (B * kp > 65536)
    for (int64_t b = 0; b < B; ++b) {
      const T* xb = xs + b * p;
      T* ob = os + b * kp;
      // The kept columns are irregularly spaced, which the hardware prefetchers cannot
      // follow: ask for the line of column j + kAhead while copying column j.
      constexpr int64_t kAhead = 32;
      const int64_t head = kp > kAhead ? kp - kAhead : 0;
      for (int64_t j = 0; j < head; ++j) {
        __builtin_prefetch(xb + idx[j + kAhead], 0, 0);
        ob[j] = xb[idx[j]];
      }
      for (int64_t j = head; j < kp; ++j) ob[j] = xb[idx[j]];
    }
  };
  switch (size) {
    case 2: gather(uint16_t{}); break;
    case 4: gather(uint32_t{}); break;
    default: gather(uint64_t{}); break;
  }
}

}  // namespace grass
