// The counter-based hash behind every random choice in grass.
//
// No random matrix is ever stored: the (bucket, sign) of column j, replica r of an
// SJLT, a mask's draws and an FJLT's signs are all pure functions of (seed, counter).
// The same functions run on host and device, so CPU and CUDA agree bit for bit on S.
#pragma once
#include <cstdint>

#include "grass/dtype.h"  // GRASS_HD

namespace grass {

// splitmix64's finaliser: a bijection on 64 bits with full avalanche.
GRASS_HD uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Domain tags keep streams that share a user seed independent of one another.
enum : uint64_t {
  kStreamSjlt = 0x534a4c5400000001ULL,      // "SJLT"
  kStreamMask = 0x4d41534b00000002ULL,      // "MASK"
  kStreamFjltSign = 0x464a4c5400000003ULL,  // "FJLT" signs
  kStreamFjltRows = 0x464a4c5400000004ULL,  // "FJLT" sampled rows
};

// A key for one stream of one seed; computed once per call, outside hot loops.
GRASS_HD uint64_t stream_key(uint64_t seed, uint64_t stream) { return mix64(mix64(seed) ^ stream); }

// The counter-th 64-bit draw of the stream with this key.
GRASS_HD uint64_t draw(uint64_t key, uint64_t counter) {
  return mix64(key + (counter + 1) * 0x9e3779b97f4a7c15ULL);
}

// An SJLT with k rows and s non-zeros per column. Replica r of column j lands in the
// r-th of s contiguous bucket blocks, so a column's s buckets are always distinct:
// block r is [r*k/s, (r+1)*k/s). Entry value is sign / sqrt(s).
struct SjltHash {
  uint64_t key;  // stream_key(seed, kStreamSjlt)
  int64_t k;
  int64_t s;

  GRASS_HD SjltHash(uint64_t seed, int64_t k_, int64_t s_)
      : key(stream_key(seed, kStreamSjlt)), k(k_), s(s_) {}

  // Bucket in [0, k) and sign bit (1 means negative) of (column, replica).
  GRASS_HD void code(int64_t column, int64_t replica, int64_t* bucket, int* negative) const {
    uint64_t h = draw(key, static_cast<uint64_t>(column) * static_cast<uint64_t>(s) +
                               static_cast<uint64_t>(replica));
    int64_t lo = replica * k / s;
    uint64_t width = static_cast<uint64_t>((replica + 1) * k / s - lo);
    *bucket = lo + static_cast<int64_t>(((h >> 32) * width) >> 32);
    *negative = static_cast<int>(h & 1u);
  }
};

}  // namespace grass
