// Internal to grass_core: scratch memory for kernels.
//
// Per-thread buffers are allocated before a parallel region, never inside one: an
// exception (std::bad_alloc) cannot leave an OpenMP region and would end the program,
// whereas outside it reaches the caller (and Python) as an ordinary error.
#pragma once
#include <omp.h>

#include <cstddef>
#include <cstdint>
#include <new>

namespace grass {
namespace detail {

// 64-byte aligned array of n T (uninitialised).
template <typename T>
struct Scratch {
  T* data = nullptr;
  explicit Scratch(int64_t n)
      : data(static_cast<T*>(::operator new(static_cast<size_t>(n > 0 ? n : 1) * sizeof(T), std::align_val_t(64)))) {}
  ~Scratch() { ::operator delete(data, std::align_val_t(64)); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// `per_thread` T for each of `threads` threads, in one allocation; run the region with
// num_threads(threads) and take mine() inside it.
template <typename T>
struct PerThread {
  int threads;
  int64_t stride;  // per_thread rounded up to 64 bytes
  Scratch<T> all;
  explicit PerThread(int64_t per_thread)
      : threads(omp_get_max_threads()),
        stride((per_thread * static_cast<int64_t>(sizeof(T)) + 63) / 64 * 64 / static_cast<int64_t>(sizeof(T))),
        all(stride * threads) {}
  T* mine() const { return all.data + stride * omp_get_thread_num(); }
};

}  // namespace detail
}  // namespace grass
