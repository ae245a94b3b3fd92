// Shared pieces of the C++ benchmarks: timing by median, a copy-bandwidth probe taken in
// the same process (so kernel GB/s can be read as a fraction of what this machine moves
// right now), and a tiny argument parser.
//
// GB/s everywhere counts bytes read + bytes written (10^9 bytes per second), for the copy
// probe and for the kernels alike.
#pragma once
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

namespace grass_bench {

inline double now_seconds() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

// Median wall time of `reps` calls of fn after `warmup` untimed calls.
template <typename Fn>
double median_seconds(Fn&& fn, int reps, int warmup = 1) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> t(static_cast<size_t>(std::max(reps, 1)));
  for (auto& v : t) {
    const double t0 = now_seconds();
    fn();
    v = now_seconds() - t0;
  }
  std::sort(t.begin(), t.end());
  const size_t n = t.size();
  return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

// A 64-byte aligned buffer of T, touched once (first touch by the threads that use it).
template <typename T>
struct Buffer {
  T* data = nullptr;
  size_t n = 0;
  explicit Buffer(size_t count) : n(count) {
    data = static_cast<T*>(::operator new(std::max<size_t>(count, 1) * sizeof(T), std::align_val_t(64)));
  }
  ~Buffer() { ::operator delete(data, std::align_val_t(64)); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  size_t bytes() const { return n * sizeof(T); }
};

// The copy probe: every thread memcpy's its contiguous slice of src into dst. Returns
// GB/s as (bytes read + bytes written) / median time, i.e. 2 * bytes / t.
inline double copy_bandwidth_gbs(size_t bytes, int reps) {
  Buffer<unsigned char> src(bytes), dst(bytes);
#pragma omp parallel
  {
    // First touch: each thread owns the pages of its slice, as in the copy itself.
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const size_t lo = bytes * t / nt, hi = bytes * (t + 1) / nt;
    std::memset(src.data + lo, 1, hi - lo);
    std::memset(dst.data + lo, 0, hi - lo);
  }
  const double sec = median_seconds(
      [&] {
#pragma omp parallel
        {
          const int nt = omp_get_num_threads(), t = omp_get_thread_num();
          const size_t lo = bytes * t / nt, hi = bytes * (t + 1) / nt;
          std::memcpy(dst.data + lo, src.data + lo, hi - lo);
        }
      },
      reps, 2);
  return 2.0 * static_cast<double>(bytes) / sec / 1e9;
}

// --flag and --name value arguments.
struct Args {
  int argc;
  char** argv;
  bool has(const char* flag) const {
    for (int i = 1; i < argc; ++i)
      if (std::strcmp(argv[i], flag) == 0) return true;
    return false;
  }
  long long get(const char* name, long long fallback) const {
    for (int i = 1; i + 1 < argc; ++i)
      if (std::strcmp(argv[i], name) == 0) return std::atoll(argv[i + 1]);
    return fallback;
  }
  std::string get_str(const char* name, const std::string& fallback) const {
    for (int i = 1; i + 1 < argc; ++i)
      if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
    return fallback;
  }
};

// Comma-separated integers ("32,64,128").
inline std::vector<long long> parse_list(const std::string& s) {
  std::vector<long long> out;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t end = s.find(',', pos);
    if (end == std::string::npos) end = s.size();
    if (end > pos) out.push_back(std::atoll(s.substr(pos, end - pos).c_str()));
    pos = end + 1;
  }
  return out;
}

}  // namespace grass_bench
