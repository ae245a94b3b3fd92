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

// The copy probe: every thread memcpy's its contiguous slice of src into dst (glibc's
// memcpy: non-temporal stores at these sizes, the fastest copy this machine does).
// GB/s is (bytes read + bytes written) / time, i.e. 2 * bytes / t.
struct CopyProbe {
  size_t bytes;
  Buffer<unsigned char> src, dst;
  explicit CopyProbe(size_t n) : bytes(n), src(n), dst(n) {
#pragma omp parallel
    {
      // First touch: each thread owns the pages of its slice, as in the copy itself.
      const int nt = omp_get_num_threads(), t = omp_get_thread_num();
      const size_t lo = bytes * t / nt, hi = bytes * (t + 1) / nt;
      std::memset(src.data + lo, 1, hi - lo);
      std::memset(dst.data + lo, 0, hi - lo);
    }
  }
  void run() {
#pragma omp parallel
    {
      const int nt = omp_get_num_threads(), t = omp_get_thread_num();
      const size_t lo = bytes * t / nt, hi = bytes * (t + 1) / nt;
      std::memcpy(dst.data + lo, src.data + lo, hi - lo);
    }
  }
  double seconds_once() {
    const double t0 = now_seconds();
    run();
    return now_seconds() - t0;
  }
  double gbs(double sec) const { return 2.0 * static_cast<double>(bytes) / sec / 1e9; }
};

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0.0 : (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]));
}

// A kernel timed against the copy probe: each repetition runs one copy and then the
// kernel, so both see the same machine (others' jobs come and go); the ratio is taken per
// pair and its median reported.
struct Paired {
  double seconds;     // median kernel time
  double copy_gbs;    // median copy probe GB/s over the same repetitions
  double ratio;       // median of (kernel GB/s) / (copy GB/s), pair by pair
  double best_ratio;  // fastest kernel run over fastest copy run: the least disturbed pair
};
template <typename Fn>
Paired time_against_copy(Fn&& fn, double kernel_bytes, CopyProbe& probe, int reps) {
  fn();  // warm-up
  probe.run();
  std::vector<double> tk, gc, ratio;
  for (int r = 0; r < std::max(reps, 1); ++r) {
    const double tc = probe.seconds_once();
    const double t0 = now_seconds();
    fn();
    const double t = now_seconds() - t0;
    tk.push_back(t);
    gc.push_back(probe.gbs(tc));
    ratio.push_back(kernel_bytes / t / 1e9 / probe.gbs(tc));
  }
  const double best_kernel = *std::min_element(tk.begin(), tk.end());
  const double best_copy = *std::max_element(gc.begin(), gc.end());
  return {median(tk), median(gc), median(ratio), kernel_bytes / best_kernel / 1e9 / best_copy};
}

inline double copy_bandwidth_gbs(CopyProbe& probe, int reps) {
  probe.run();
  std::vector<double> g;
  for (int r = 0; r < std::max(reps, 1); ++r) g.push_back(probe.gbs(probe.seconds_once()));
  return median(g);
}

// A read-only probe: every thread sums its slice of a float array (four accumulators, so
// loads, not additions, set the pace). GB/s = bytes read / time. A sketch reads far more
// than it writes, so this is the ceiling it can approach; printed for orientation.
inline double read_bandwidth_gbs(const float* x, size_t n, int reps) {
  volatile float sink = 0.0f;
  auto once = [&] {
    float total = 0.0f;
#pragma omp parallel reduction(+ : total)
    {
      const int nt = omp_get_num_threads(), t = omp_get_thread_num();
      const size_t lo = n * t / nt, hi = n * (t + 1) / nt;
      float a[64] = {};
      size_t i = lo;
      for (; i + 64 <= hi; i += 64)
#pragma omp simd
        for (int j = 0; j < 64; ++j) a[j] += x[i + j];
      for (; i < hi; ++i) a[0] += x[i];
      for (int j = 0; j < 64; ++j) total += a[j];
    }
    sink = total;
  };
  const double sec = median_seconds(once, reps, 2);
  (void)sink;
  return static_cast<double>(n) * sizeof(float) / sec / 1e9;
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
