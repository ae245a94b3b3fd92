// Host emulation of the CUDA subset grass's kernels use (run.sh): blocks run one after
// another, each CUDA thread is an OS thread, __syncthreads is a std::barrier, __shared__
// variables are function statics (one block at a time), dynamic shared memory starts as NaN
// garbage, and more than 48 KiB of it needs the cudaFuncSetAttribute opt-in, as on a GPU.
// Device memory is host memory. For verifying kernel logic only: no GPU timing or
// memory-ordering semantics.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 { unsigned x, y, z; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) float4 { float x, y, z, w; };
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return uint4{a, b, c, d}; }

namespace emu {
inline thread_local uint3 tid{0, 0, 0};
inline thread_local uint3 bid{0, 0, 0};
inline dim3 grid_dim, block_dim;
inline std::barrier<>* barrier = nullptr;
inline thread_local unsigned char* dyn = nullptr;
inline std::map<const void*, int> max_dyn;  // cudaFuncSetAttribute opt-ins
inline size_t launches = 0;
}  // namespace emu
#define threadIdx (::emu::tid)
#define blockIdx (::emu::bid)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)

inline void __syncthreads() { emu::barrier->arrive_and_wait(); }
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline int atomicMin(int* p, int v) {
  std::atomic_ref<int> a(*p);
  int old = a.load();
  while (v < old && !a.compare_exchange_weak(old, v)) {}
  return old;
}
template <typename T> inline T __ldg(const T* p) { return *p; }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a * b) >> 32); }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float __fmul_rn(float a, float b) { return a * b; }

typedef void* cudaStream_t;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9,
                   cudaErrorInsufficientDriver = 35, cudaErrorNoDevice = 100 };
inline cudaError_t emu_last_error = cudaSuccess;
inline const char* cudaGetErrorName(cudaError_t e) { return e == cudaSuccess ? "cudaSuccess" : "cudaErrorEmulated"; }
inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated error"; }
inline cudaError_t cudaGetLastError() { auto e = emu_last_error; emu_last_error = cudaSuccess; return e; }
namespace emu { inline int device = 0; }
inline cudaError_t cudaGetDevice(int* d) { *d = emu::device; return cudaSuccess; }
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount, cudaDevAttrMaxSharedMemoryPerBlockOptin,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor, cudaDevAttrReservedSharedMemoryPerBlock,
  cudaDevAttrMaxThreadsPerMultiProcessor, cudaDevAttrMaxRegistersPerMultiprocessor
};
namespace emu { inline int sms = 132; inline int optin = 232448; }
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
  switch (a) {
    case cudaDevAttrMultiProcessorCount: *v = emu::sms; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = emu::optin; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *v = 233472; break;
    case cudaDevAttrReservedSharedMemoryPerBlock: *v = 1024; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *v = 2048; break;
    case cudaDevAttrMaxRegistersPerMultiprocessor: *v = 65536; break;
  }
  return cudaSuccess;
}
struct cudaFuncAttributes { size_t sharedSizeBytes = 0; int numRegs = 64; };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* a, const void*) { a->sharedSizeBytes = 0; return cudaSuccess; }
inline cudaError_t cudaFuncSetAttribute(const void* f, cudaFuncAttribute, int v) {
  if (v > emu::optin) return cudaErrorInvalidValue;
  emu::max_dyn[f] = v; return cudaSuccess;
}
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) { std::memset(p, v, n); return cudaSuccess; }
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t) { std::memcpy(d, s, n); return cudaSuccess; }
inline cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t) {
  *p = std::malloc(n ? n : 1);
  std::memset(*p, 0xA5, n);  // garbage, like fresh device memory
  return cudaSuccess;
}
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t) { std::free(p); return cudaSuccess; }

namespace emu {
// Runs body() as grid x block threads, one block at a time. `fn` identifies the kernel for
// the opt-in check of dynamic shared memory above 48 KiB.
template <typename Body>
void launch(const void* fn, dim3 grid, dim3 block, size_t smem, Body body) {
  ++launches;
  if (grid.y > 65535 || grid.z > 65535 || grid.x == 0 || block.x == 0 || block.x > 1024 ||
      block.y != 1 || block.z != 1) {
    std::fprintf(stderr, "emu: bad launch config grid (%u,%u,%u) block %u\n", grid.x, grid.y, grid.z, block.x);
    emu_last_error = cudaErrorInvalidConfiguration; return;
  }
  if (smem > 48 * 1024) {
    auto it = max_dyn.find(fn);
    if (it == max_dyn.end() || (size_t)it->second < smem) {
      std::fprintf(stderr, "emu: %zu bytes dynamic smem without opt-in\n", smem);
      emu_last_error = cudaErrorInvalidConfiguration; return;
    }
  }
  grid_dim = grid; block_dim = block;
  std::vector<uint32_t> buf((smem + 3) / 4 + 4);
  for (auto& w : buf) w = 0x7fc0dead;  // NaN garbage: reading unwritten smem shows up
  unsigned char* dynp = reinterpret_cast<unsigned char*>(buf.data());
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::barrier<> bar(block.x);
        barrier = &bar;
        std::vector<std::thread> th;
        th.reserve(block.x);
        for (unsigned t = 0; t < block.x; ++t)
          th.emplace_back([&, t] {
            tid = uint3{t, 0, 0}; bid = uint3{bx, by, bz}; dyn = dynp;
            body();
            bar.arrive_and_drop();
          });
        for (auto& x : th) x.join();
      }
}
}  // namespace emu

// ---- what the benchmark harness needs (bench/cuda), timing by the host clock ----------
#include <chrono>
struct cudaDeviceProp {
  char name[256] = "emulated device";
  int major = 9, minor = 0, multiProcessorCount = 0;
  size_t totalGlobalMem = size_t{80} << 30;
};
inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
inline cudaError_t cudaRuntimeGetVersion(int* v) { *v = 0; return cudaSuccess; }  // emulated: no real runtime
inline cudaError_t cudaDriverGetVersion(int* v) { *v = 0; return cudaSuccess; }
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
  *p = cudaDeviceProp{}; p->multiProcessorCount = emu::sms; return cudaSuccess;
}
inline cudaError_t cudaMalloc(void** p, size_t n) { return cudaMallocAsync(p, n, nullptr); }
template <typename T>
cudaError_t cudaMalloc(T** p, size_t n) { return cudaMalloc(reinterpret_cast<void**>(p), n); }
inline cudaError_t cudaFree(void* p) { return cudaFreeAsync(p, nullptr); }
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind k) { return cudaMemcpyAsync(d, s, n, k, nullptr); }
inline cudaError_t cudaMemset(void* p, int v, size_t n) { return cudaMemsetAsync(p, v, n, nullptr); }
enum { cudaStreamNonBlocking = 1 };
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { *s = reinterpret_cast<void*>(1); return cudaSuccess; }
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
typedef std::chrono::steady_clock::time_point* cudaEvent_t;
inline cudaError_t cudaEventCreate(cudaEvent_t* e) { *e = new std::chrono::steady_clock::time_point(); return cudaSuccess; }
inline cudaError_t cudaEventDestroy(cudaEvent_t e) { delete e; return cudaSuccess; }
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) { *e = std::chrono::steady_clock::now(); return cudaSuccess; }
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  *ms = std::chrono::duration<float, std::milli>(*b - *a).count(); return cudaSuccess;
}
