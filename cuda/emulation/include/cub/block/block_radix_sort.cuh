// Emulated cub::BlockRadixSort: a stable sort of (key bits [begin, end), value) pairs held in
// blocked arrangement, done by thread 0 between barriers.
#pragma once
#include <cuda_runtime.h>
#include <algorithm>
#include <numeric>
namespace cub {
template <typename KeyT, int NT, int IPT, typename ValueT>
class BlockRadixSort {
 public:
  struct TempStorage { KeyT keys[NT * IPT]; ValueT vals[NT * IPT]; int order[NT * IPT]; };
  explicit BlockRadixSort(TempStorage& s) : s_(s) {}
  void Sort(KeyT (&k)[IPT], ValueT (&v)[IPT], int begin_bit, int end_bit) {
    const unsigned t = threadIdx.x;
    for (int i = 0; i < IPT; ++i) { s_.keys[t * IPT + i] = k[i]; s_.vals[t * IPT + i] = v[i]; }
    __syncthreads();
    if (t == 0) {
      auto bits = [&](KeyT x) { return (x >> begin_bit) & ((KeyT(1) << (end_bit - begin_bit)) - 1); };
      std::iota(s_.order, s_.order + NT * IPT, 0);
      std::stable_sort(s_.order, s_.order + NT * IPT, [&](int a, int b) { return bits(s_.keys[a]) < bits(s_.keys[b]); });
    }
    __syncthreads();
    for (int i = 0; i < IPT; ++i) { k[i] = s_.keys[s_.order[t * IPT + i]]; v[i] = s_.vals[s_.order[t * IPT + i]]; }
    __syncthreads();
  }
 private:
  TempStorage& s_;
};
}  // namespace cub
