// Private helpers shared by the CUDA kernels: error checks, device limits, stream-ordered
// scratch memory, grid limits and element loads. Not installed; not part of the API.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "grass/check.h"
#include "grass/dtype.h"

namespace grass {
namespace gpu {

// ---- errors ---------------------------------------------------------------------------

[[noreturn]] inline void throw_cuda(cudaError_t err, const char* what, const char* func) {
  cudaGetLastError();  // clear a non-sticky error so the caller's next call starts clean
  throw Error(std::string("grass.") + func + ": " + what + " failed: " + cudaGetErrorName(err) +
              " (" + cudaGetErrorString(err) + ")");
}

inline void check_cuda(cudaError_t err, const char* what, const char* func) {
  if (err != cudaSuccess) throw_cuda(err, what, func);
}

// Checks a runtime call:  GRASS_CUDA_CHECK(cudaMemsetAsync(...));
#define GRASS_CUDA_CHECK(expr) ::grass::gpu::check_cuda((expr), #expr, __func__)

// Checks the launch just made (bad configuration, missing kernel image, ...). Errors from
// inside a kernel surface later, at the next synchronising call of the caller.
#define GRASS_CUDA_CHECK_LAUNCH(kernel_name) \
  ::grass::gpu::check_cuda(cudaGetLastError(), "launch of " kernel_name, __func__)

inline cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

// ---- device limits --------------------------------------------------------------------

struct DeviceLimits {
  int sms = 1;                    // streaming multiprocessors
  size_t smem_block_optin = 0;    // max shared memory per block after opting in
  size_t smem_sm = 0;             // shared memory per SM
  size_t smem_reserved = 0;       // per-block reservation by the system (sm_80+: 1 KiB)
  int max_threads_sm = 2048;
  int regs_sm = 65536;            // 32-bit registers per SM
};

// Limits of the current device, queried once per device and cached (a call costs a
// lookup), so that a multi-GPU process always sees the right device.
inline DeviceLimits device_limits(const char* func) {
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice", func);
  static std::mutex mu;
  static std::map<int, DeviceLimits> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(dev);
  if (it != cache.end()) return it->second;
  DeviceLimits d;
  int v = 0;
  check_cuda(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev), "device query", func);
  d.sms = v > 0 ? v : 1;
  check_cuda(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
             "device query", func);
  d.smem_block_optin = static_cast<size_t>(v);
  check_cuda(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev),
             "device query", func);
  d.smem_sm = static_cast<size_t>(v);
  check_cuda(cudaDeviceGetAttribute(&v, cudaDevAttrReservedSharedMemoryPerBlock, dev),
             "device query", func);
  d.smem_reserved = static_cast<size_t>(v);
  check_cuda(cudaDeviceGetAttribute(&v, cudaDevAttrMaxThreadsPerMultiProcessor, dev),
             "device query", func);
  d.max_threads_sm = v > 0 ? v : 2048;
  check_cuda(cudaDeviceGetAttribute(&v, cudaDevAttrMaxRegistersPerMultiprocessor, dev),
             "device query", func);
  d.regs_sm = v > 0 ? v : 65536;
  cache.emplace(dev, d);
  return d;
}

// What occupancy depends on: static shared memory (CUB temp storage and fixed tiles live
// there) and registers per thread. Queried once per kernel and cached.
struct KernelInfo {
  size_t static_smem = 0;
  int regs = 0;
};

template <typename Kernel>
KernelInfo kernel_info(Kernel kernel, const char* func) {
  static std::mutex mu;
  static std::map<const void*, KernelInfo> cache;
  const void* key = reinterpret_cast<const void*>(kernel);
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  cudaFuncAttributes attr{};
  check_cuda(cudaFuncGetAttributes(&attr, key), "cudaFuncGetAttributes", func);
  KernelInfo info;
  info.static_smem = attr.sharedSizeBytes;
  info.regs = attr.numRegs;
  cache.emplace(key, info);
  return info;
}

// Dynamic shared memory above the default 48 KiB needs an explicit opt-in per kernel and
// device; the largest value set so far is remembered, so the runtime is asked once.
template <typename Kernel>
void allow_dynamic_smem(Kernel kernel, size_t bytes, const char* func) {
  if (bytes <= 48 * 1024) return;
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice", func);
  const void* key = reinterpret_cast<const void*>(kernel);
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, size_t> done;
  std::lock_guard<std::mutex> lock(mu);
  size_t& have = done[{key, dev}];
  if (have >= bytes) return;
  check_cuda(cudaFuncSetAttribute(key, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(bytes)),
             "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)", func);
  have = bytes;
}

// Blocks of `threads` threads using `smem` bytes (static + dynamic) and `regs` registers
// per thread that fit on one SM at once (registers are allocated per warp in units of 256).
inline int resident_blocks(const DeviceLimits& d, int threads, size_t smem, int regs) {
  int n = d.max_threads_sm / threads;
  const size_t per_block = smem + d.smem_reserved;
  if (per_block > 0) n = std::min(n, static_cast<int>(d.smem_sm / per_block));
  if (regs > 0) {
    const int warps = (threads + 31) / 32;
    const int per_warp = (regs * 32 + 255) / 256 * 256;
    n = std::min(n, d.regs_sm / (warps * per_warp));
  }
  return n > 0 ? n : 1;
}

// ---- grids ----------------------------------------------------------------------------

constexpr int64_t kMaxGridYZ = 65535;           // gridDim.y and gridDim.z limit
constexpr int64_t kMaxGridX = 2147483647;       // gridDim.x limit

// A grid extent for n work items along y or z; kernels loop `for (i = blockIdx.y; i < n;
// i += gridDim.y)` so any n works.
inline unsigned grid_yz(int64_t n) {
  return static_cast<unsigned>(n < 1 ? 1 : (n < kMaxGridYZ ? n : kMaxGridYZ));
}
inline unsigned grid_x(int64_t n) {
  return static_cast<unsigned>(n < 1 ? 1 : (n < kMaxGridX ? n : kMaxGridX));
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// 64-bit min/max usable on host and device.
GRASS_HD int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
GRASS_HD int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// ---- stream-ordered scratch -----------------------------------------------------------

// Device memory from the stream-ordered allocator: allocated on `stream`, released on
// `stream` when this object dies, i.e. after every kernel enqueued before that point. An
// exception thrown after a launch therefore still frees the memory safely.
class Scratch {
 public:
  Scratch(size_t bytes, cudaStream_t stream, const char* func) : stream_(stream) {
    if (bytes > 0) check_cuda(cudaMallocAsync(&ptr_, bytes, stream), "cudaMallocAsync", func);
  }
  ~Scratch() {
    if (ptr_ != nullptr) cudaFreeAsync(ptr_, stream_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

// ---- element loads --------------------------------------------------------------------

// Storage -> float on the device; the same values as dtype.h's load_as_float (half and
// bfloat16 widen exactly), but with the hardware conversion for half.
__device__ __forceinline__ float to_float(float v, F32Tag) { return v; }
__device__ __forceinline__ float to_float(uint16_t v, F16Tag) {
  return __half2float(__ushort_as_half(v));
}
__device__ __forceinline__ float to_float(uint16_t v, BF16Tag) {
  return __uint_as_float(static_cast<uint32_t>(v) << 16);
}

// Elements of a 16-byte vector: 4 float32 or 8 half/bfloat16.
template <typename Tag>
struct Vec16 {
  using S = typename Tag::storage;
  static constexpr int kN = 16 / static_cast<int>(sizeof(S));
};

// Unpacks element i (compile-time after unrolling) of a 16-byte vector.
template <typename Tag>
__device__ __forceinline__ float vec_elem(const uint4& v, int i, Tag tag) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
  if constexpr (sizeof(typename Tag::storage) == 4) {
    return __uint_as_float(w[i]);
  } else {
    const uint32_t word = w[i >> 1];
    const uint16_t h = static_cast<uint16_t>((i & 1) ? (word >> 16) : (word & 0xffffu));
    return to_float(h, tag);
  }
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace gpu
}  // namespace grass
