// The summation order of the SJLT sketches (dense SJLT, CSR SJLT, GraSS): one definition
// followed by the CPU kernels (cpp/src/sjlt_block.h, cpp/src/sjlt.cpp) and by the
// deterministic CUDA kernels (cuda/sketch_rows.cuh, cuda/sjlt.cu), so that the two give
// the same float32 result bit for bit. Internal: not part of the API.
//
// y[b, o] is a sum of terms +-(v * scale), one per (entry, replica) whose code has bucket
// o, each rounded as (v * scale) then added with its sign. The entries of a row (columns
// for dense SJLT, mask entries for GraSS, stored non-zeros for CSR) are cut into
// consecutive segments. Each segment's partial sum starts from +0 and adds its terms in
// entry order (replicas in order); y starts from +0 and adds the segments' partial sums
// in segment order:
//
//   y = (((+0 + P_0) + P_1) + ...),   P_i = (((+0 + t_1) + t_2) + ...)
//
// Segments: dense rows and GraSS cut their n entries into ranges of range_width(k)
// entries, [0, w), [w, 2w), ... (the last one shorter); CSR rows cut their non-zeros with
// CsrSegments. The cut depends on k and the data only: never on threads, blocks, tiles
// or other launch parameters. (A partial sum is never -0, so "+0 + P_0" is P_0 itself.)
#pragma once
#include <cstdint>

#include "grass/dtype.h"  // GRASS_HD

namespace grass {
namespace detail {

// Ranges are at least kMinRange entries, at least 64 * k (so folding a partial costs at
// most a few percent of the range's own work) and whole multiples of kRangeAlign (the
// CPU hashes codes kRangeAlign columns at a time; CUDA tiles stay 16-byte aligned).
constexpr int64_t kMinRange = int64_t{1} << 17;
constexpr int64_t kRangeAlign = 1024;

GRASS_HD int64_t range_width(int64_t k) {
  const int64_t w = kMinRange > 64 * k ? kMinRange : 64 * k;
  return (w + kRangeAlign - 1) / kRangeAlign * kRangeAlign;
}

// Ranges of a row of n entries (at least 1: an empty row is one empty range).
GRASS_HD int64_t range_count(int64_t n, int64_t k) {
  const int64_t w = range_width(k);
  return n > w ? (n + w - 1) / w : 1;
}

// CSR segments: the non-zeros of a row, in storage order, with column indices j in
// [0, p). While the row is in order, a segment is a maximal run of non-zeros in one
// column range [r * w, (r + 1) * w), w = range_width(k), so a row with sorted indices
// has the dense row's ranges (empty ranges add +0: no effect). The first non-zero whose
// range lies below its predecessor's ("a step back") starts the last segment: it holds
// every remaining non-zero, so an unsorted row costs at most one fold per range.
// Rows with p <= w are a single segment (every column is in range 0).
//
// Usage, per row: CsrSegments seg(w); then for each non-zero j in storage order:
//   if (!seg.holds(j)) { fold the partial sum; seg.restart(j); }   add j's terms.
class CsrSegments {
 public:
  GRASS_HD explicit CsrSegments(int64_t width) : width_(width), lo_(0), hi_(width), in_order_(true) {}
  // Whether column j belongs to the current segment (two compares while in order).
  GRASS_HD bool holds(int64_t j) const { return !in_order_ || (j >= lo_ && j < hi_); }
  // Starts the segment of column j (0 <= j, and holds(j) was false).
  GRASS_HD void restart(int64_t j) {
    const int64_t lo = j / width_ * width_;
    if (lo < lo_) in_order_ = false;
    lo_ = lo;
    hi_ = lo + width_;
  }
  GRASS_HD bool in_order() const { return in_order_; }

 private:
  int64_t width_, lo_, hi_;
  bool in_order_;
};

}  // namespace detail
}  // namespace grass
