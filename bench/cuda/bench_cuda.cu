// CUDA benchmark of the grass kernels: SJLT (dense and CSR), GraSS, FJLT and FactGraSS,
// next to a device-to-device copy probe measured in the same run, so that GB/s figures
// read as a fraction of what this device really moves.
//
//   bench_cuda            the issue's shapes: p = 131072, B = 128, k = 32 .. 16384
//   bench_cuda --quick    tiny shapes, a few repetitions (checks the harness runs)
//
// Times are CUDA-event times of back-to-back calls on one stream (warm-up first), median
// over repetitions. GB/s counts the bytes a kernel must read plus write. Two in-run
// baselines make the ratios meaningful on any device:
//  * "atomic/elem": our own one-global-atomicAdd-per-input-element SJLT kernel (the design
//    of the published `sjlt` 0.1.7 package, not its code);
//  * "unfused": FactGraSS as mask_gather + mask_gather + kron + sjlt of the materialised
//    [B, k_in * k_out] product.
// Exit status 77 (the conventional "skipped") when no CUDA device can be used.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "grass/grass.h"
#include "grass/tuning.h"

namespace {

#define CUDA_OK(expr)                                                                   \
  do {                                                                                  \
    cudaError_t err_ = (expr);                                                          \
    if (err_ != cudaSuccess) {                                                          \
      std::fprintf(stderr, "bench_cuda: %s failed: %s\n", #expr, cudaGetErrorString(err_)); \
      std::exit(1);                                                                     \
    }                                                                                   \
  } while (0)

struct Options {
  bool quick = false;
  int reps = 20;
};

// Device buffer owned for the whole run.
template <typename T>
struct DeviceArray {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceArray(size_t count) : n(count) { CUDA_OK(cudaMalloc(&ptr, std::max<size_t>(1, n) * sizeof(T))); }
  ~DeviceArray() { cudaFree(ptr); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  void upload(const std::vector<T>& h) { CUDA_OK(cudaMemcpy(ptr, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice)); }
};

// Deterministic pseudo-random floats in [-1, 1), cheap enough for 10^8 values.
std::vector<float> host_uniform(size_t n, uint64_t seed) {
  std::vector<float> v(n);
  uint64_t z = seed * 0x9e3779b97f4a7c15ULL + 1;
  for (size_t i = 0; i < n; ++i) {
    z = z * 6364136223846793005ULL + 1442695040888963407ULL;
    v[i] = static_cast<float>(static_cast<int32_t>(z >> 32)) * (1.0f / 2147483648.0f);
  }
  return v;
}

std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    uint32_t u;
    std::memcpy(&u, &v[i], 4);
    h[i] = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);  // round to nearest even
  }
  return h;
}

// Median milliseconds per call of fn(): `reps` timed batches of `batch` calls each.
double time_ms(const std::function<void()>& fn, cudaStream_t stream, int reps, int batch = 5) {
  for (int i = 0; i < 3; ++i) fn();  // warm-up: module load, shared-memory opt-in, caches
  CUDA_OK(cudaStreamSynchronize(stream));
  cudaEvent_t start, stop;
  CUDA_OK(cudaEventCreate(&start));
  CUDA_OK(cudaEventCreate(&stop));
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    CUDA_OK(cudaEventRecord(start, stream));
    for (int i = 0; i < batch; ++i) fn();
    CUDA_OK(cudaEventRecord(stop, stream));
    CUDA_OK(cudaEventSynchronize(stop));
    float t = 0;
    CUDA_OK(cudaEventElapsedTime(&t, start, stop));
    ms.push_back(static_cast<double>(t) / batch);
  }
  CUDA_OK(cudaGetLastError());
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

double gbps(double bytes, double ms) { return bytes / (ms * 1e-3) / 1e9; }

int g_sms = 1;  // SMs of the device, for grid sizes

// The baseline: one global atomicAdd per (row, column), codes hashed per element.
__global__ void sjlt_atomic_per_element(const float* __restrict__ x, int64_t B, int64_t p,
                                        float* __restrict__ y, int64_t k, uint64_t key) {
  const int64_t n = B * p;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = e / p, j = e % p;
    const uint64_t h = grass::draw(key, static_cast<uint64_t>(j));
    const int64_t bucket = static_cast<int64_t>(((h >> 32) * static_cast<uint64_t>(k)) >> 32);
    const float v = x[e];
    atomicAdd(y + b * k + bucket, (h & 1u) ? -v : v);
  }
}

void print_device(cudaStream_t stream, const Options& opt, double* copy_gbps) {
  int dev = 0;
  CUDA_OK(cudaGetDevice(&dev));
  cudaDeviceProp prop{};
  CUDA_OK(cudaGetDeviceProperties(&prop, dev));
  g_sms = prop.multiProcessorCount;
  std::printf("device: %s (sm_%d%d, %d SMs, %.1f GiB)\n", prop.name, prop.major, prop.minor,
              prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0);
  const size_t bytes = opt.quick ? (size_t{16} << 20) : (size_t{512} << 20);
  DeviceArray<unsigned char> a(bytes), b(bytes);
  CUDA_OK(cudaMemset(a.ptr, 1, bytes));
  const double ms = time_ms([&] { CUDA_OK(cudaMemcpyAsync(b.ptr, a.ptr, bytes, cudaMemcpyDeviceToDevice, stream)); },
                            stream, opt.reps, 2);
  *copy_gbps = gbps(2.0 * static_cast<double>(bytes), ms);
  std::printf("copy probe: cudaMemcpyAsync device-to-device of %zu MiB: %.3f ms, %.0f GB/s (read + write)\n\n",
              bytes >> 20, ms, *copy_gbps);
}

void bench_sjlt(cudaStream_t stream, const Options& opt, double copy) {
  const int64_t B = opt.quick ? 8 : 128, p = opt.quick ? 4099 : 131072;
  const std::vector<int64_t> ks = opt.quick ? std::vector<int64_t>{32, 1024}
                                            : std::vector<int64_t>{32, 128, 512, 1024, 2048, 4096, 8192, 16384};
  const auto hx = host_uniform(static_cast<size_t>(B * p), 1);
  DeviceArray<float> x(hx.size());
  x.upload(hx);
  DeviceArray<uint16_t> xb(hx.size());
  xb.upload(to_bf16(hx));
  DeviceArray<float> y(static_cast<size_t>(B) * ks.back());
  void* st = stream;

  std::printf("SJLT, dense input, B = %lld, p = %lld, s = 1 (GB/s: bytes of x read + y written)\n",
              (long long)B, (long long)p);
  std::printf("%7s | %9s %7s %6s | %9s %7s | %9s %7s | %9s %9s\n", "k", "f32 ms", "GB/s", "%copy",
              "bf16 ms", "GB/s", "det ms", "GB/s", "atomic/el", "speedup");
  for (int64_t k : ks) {
    grass::SjltParams prm;
    prm.k = k;
    prm.seed = 7;
    const double bytes32 = 4.0 * B * p + 4.0 * B * k, bytes16 = 2.0 * B * p + 4.0 * B * k;
    const double t32 = time_ms([&] { grass::sjlt_cuda(x.ptr, grass::DType::F32, B, p, y.ptr, prm, false, st); }, stream, opt.reps);
    const double t16 = time_ms([&] { grass::sjlt_cuda(xb.ptr, grass::DType::BF16, B, p, y.ptr, prm, false, st); }, stream, opt.reps);
    const double tdet = time_ms([&] { grass::sjlt_cuda(x.ptr, grass::DType::F32, B, p, y.ptr, prm, true, st); }, stream, opt.reps);
    const uint64_t key = grass::stream_key(prm.seed, grass::kStreamSjlt);
    const double tat = time_ms([&] {
      CUDA_OK(cudaMemsetAsync(y.ptr, 0, sizeof(float) * B * k, stream));
      sjlt_atomic_per_element<<<8 * g_sms, 1024, 0, stream>>>(x.ptr, B, p, y.ptr, k, key);
    }, stream, opt.reps);
    std::printf("%7lld | %9.4f %7.0f %5.0f%% | %9.4f %7.0f | %9.4f %7.0f | %9.4f %8.1fx\n", (long long)k, t32,
                gbps(bytes32, t32), 100.0 * gbps(bytes32, t32) / copy, t16, gbps(bytes16, t16), tdet,
                gbps(bytes32, tdet), tat, tat / t32);
  }
  std::printf("\n");
}

void bench_sparse(cudaStream_t stream, const Options& opt) {
  const int64_t B = opt.quick ? 8 : 128, p = opt.quick ? 4099 : 131072, k = opt.quick ? 64 : 4096;
  grass::SjltParams prm;
  prm.k = k;
  prm.seed = 7;
  DeviceArray<float> y(static_cast<size_t>(B * k));
  void* st = stream;
  std::printf("SJLT, CSR input, B = %lld, p = %lld, k = %lld (GB/s: CSR bytes read + y written)\n",
              (long long)B, (long long)p, (long long)k);
  std::printf("%8s %12s | %9s %7s | %9s %7s\n", "sparsity", "nnz", "fast ms", "GB/s", "det ms", "GB/s");
  for (double sparsity : {0.0, 0.3, 0.6, 0.9}) {
    std::vector<int64_t> indptr{0}, indices;
    const auto u = host_uniform(static_cast<size_t>(B * p), 3);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < p; ++j)
        if (0.5 * (u[b * p + j] + 1.0) >= sparsity) indices.push_back(j);
      indptr.push_back(static_cast<int64_t>(indices.size()));
    }
    const auto vals = host_uniform(indices.size(), 4);
    DeviceArray<int64_t> d_indptr(indptr.size()), d_indices(indices.size());
    DeviceArray<float> d_vals(vals.size());
    d_indptr.upload(indptr);
    d_indices.upload(indices);
    d_vals.upload(vals);
    const double nnz = static_cast<double>(indices.size());
    const double bytes = nnz * 12.0 + 8.0 * (B + 1) + 4.0 * B * k;
    const double tf = time_ms([&] { grass::sjlt_csr_cuda(d_indptr.ptr, d_indices.ptr, d_vals.ptr, grass::DType::F32, B, p, y.ptr, prm, false, st); }, stream, opt.reps);
    const double td = time_ms([&] { grass::sjlt_csr_cuda(d_indptr.ptr, d_indices.ptr, d_vals.ptr, grass::DType::F32, B, p, y.ptr, prm, true, st); }, stream, opt.reps);
    std::printf("%8.1f %12.0f | %9.4f %7.0f | %9.4f %7.0f\n", sparsity, nnz, tf, gbps(bytes, tf), td, gbps(bytes, td));
  }
  std::printf("\n");
}

void bench_grass_fjlt(cudaStream_t stream, const Options& opt) {
  const int64_t B = opt.quick ? 8 : 128, p = opt.quick ? 4099 : 131072;
  const int64_t kp = p / 4;  // the mask keeps a quarter of the coordinates
  const std::vector<int64_t> ks = opt.quick ? std::vector<int64_t>{32, 1024}
                                            : std::vector<int64_t>{32, 128, 512, 2048, 4096, 8192, 16384};
  const auto hx = host_uniform(static_cast<size_t>(B * p), 5);
  DeviceArray<float> x(hx.size());
  x.upload(hx);
  std::vector<int64_t> hidx(static_cast<size_t>(kp));
  grass::random_mask_indices(p, kp, 11, hidx.data());
  DeviceArray<int64_t> idx(hidx.size());
  idx.upload(hidx);
  DeviceArray<float> y(static_cast<size_t>(B) * ks.back());
  void* st = stream;
  std::printf("GraSS (mask to k' = %lld, then SJLT) and FJLT, B = %lld, p = %lld, float32\n",
              (long long)kp, (long long)B, (long long)p);
  std::printf("(GraSS GB/s: masked bytes of x read + y written; FJLT GB/s: x read + y written)\n");
  std::printf("%7s | %9s %7s | %9s %7s\n", "k", "GraSS ms", "GB/s", "FJLT ms", "GB/s");
  for (int64_t k : ks) {
    grass::SjltParams prm;
    prm.k = k;
    prm.seed = 7;
    const double tg = time_ms([&] { grass::masked_sjlt_cuda(x.ptr, grass::DType::F32, B, p, idx.ptr, kp, y.ptr, prm, false, st); }, stream, opt.reps);
    const double tf = time_ms([&] { grass::fjlt_cuda(x.ptr, grass::DType::F32, B, p, y.ptr, k, 7, st); }, stream, opt.reps);
    std::printf("%7lld | %9.4f %7.0f | %9.4f %7.0f\n", (long long)k, tg, gbps(4.0 * B * kp + 4.0 * B * k, tg), tf,
                gbps(4.0 * B * p + 4.0 * B * k, tf));
  }
  std::printf("\n");
}

void bench_factgrass(cudaStream_t stream, const Options& opt) {
  struct Shape { int64_t B, T, d_in, d_out, k_in, k_out, k; };
  const std::vector<Shape> shapes =
      opt.quick ? std::vector<Shape>{{4, 3, 40, 30, 16, 8, 64}}
                : std::vector<Shape>{{128, 1, 1024, 1024, 64, 64, 4096},
                                     {128, 1, 4096, 4096, 128, 128, 4096},
                                     {64, 128, 1024, 1024, 64, 64, 4096},
                                     {32, 512, 768, 3072, 64, 64, 4096},
                                     {32, 512, 768, 3072, 128, 128, 8192}};
  void* st = stream;
  std::printf("FactGraSS, float32, bias: fused vs unfused (mask_gather x2 + kron + sjlt, [B, k_in*k_out] materialised)\n");
  std::printf("%5s %5s %6s %6s %5s %5s %6s | %9s %9s %9s %8s\n", "B", "T", "d_in", "d_out", "k_in",
              "k_out", "k", "fused ms", "det ms", "unfused", "speedup");
  for (const Shape& s : shapes) {
    grass::KronShape ks;
    ks.B = s.B;
    ks.T = s.T;
    ks.d_in = s.d_in;
    ks.d_out = s.d_out;
    ks.bias = true;
    DeviceArray<float> a(static_cast<size_t>(s.B * s.T * s.d_in)), g(static_cast<size_t>(s.B * s.T * s.d_out));
    a.upload(host_uniform(a.n, 6));
    g.upload(host_uniform(g.n, 7));
    std::vector<int64_t> hi(static_cast<size_t>(s.k_in)), ho(static_cast<size_t>(s.k_out));
    grass::random_mask_indices(s.d_in + 1, s.k_in, 1, hi.data());
    grass::random_mask_indices(s.d_out, s.k_out, 2, ho.data());
    // For the unfused path the masked factors are gathered as [B*T, k] matrices, so the
    // bias column (index d_in) is dropped from idx_in there and kron adds it back.
    std::vector<int64_t> hi_nobias;
    for (int64_t v : hi)
      if (v < s.d_in) hi_nobias.push_back(v);
    const bool has_bias = static_cast<int64_t>(hi_nobias.size()) < s.k_in;
    DeviceArray<int64_t> di(hi.size()), dout(ho.size()), di_nb(hi_nobias.size());
    di.upload(hi);
    dout.upload(ho);
    di_nb.upload(hi_nobias);
    grass::SjltParams prm;
    prm.k = s.k;
    prm.seed = 7;
    DeviceArray<float> y(static_cast<size_t>(s.B * s.k));
    const int64_t kin_nb = static_cast<int64_t>(hi_nobias.size());
    DeviceArray<float> am(static_cast<size_t>(s.B * s.T * std::max<int64_t>(kin_nb, 1))), gm(static_cast<size_t>(s.B * s.T * s.k_out));
    const int64_t zcols = s.k_out * (kin_nb + (has_bias ? 1 : 0));
    DeviceArray<float> z(static_cast<size_t>(s.B * zcols));
    const double tf = time_ms([&] {
      grass::factgrass_cuda(a.ptr, g.ptr, grass::DType::F32, ks, di.ptr, s.k_in, dout.ptr, s.k_out, y.ptr, prm, false, st);
    }, stream, opt.reps);
    const double td = time_ms([&] {
      grass::factgrass_cuda(a.ptr, g.ptr, grass::DType::F32, ks, di.ptr, s.k_in, dout.ptr, s.k_out, y.ptr, prm, true, st);
    }, stream, opt.reps);
    const double tu = time_ms([&] {
      if (kin_nb > 0)
        grass::mask_gather_cuda(a.ptr, grass::DType::F32, s.B * s.T, s.d_in, di_nb.ptr, kin_nb, am.ptr, st);
      grass::mask_gather_cuda(g.ptr, grass::DType::F32, s.B * s.T, s.d_out, dout.ptr, s.k_out, gm.ptr, st);
      grass::KronShape km = ks;
      km.d_in = std::max<int64_t>(kin_nb, 1);
      km.d_out = s.k_out;
      km.bias = has_bias;
      grass::kron_cuda(am.ptr, gm.ptr, grass::DType::F32, km, z.ptr, st);
      grass::sjlt_cuda(z.ptr, grass::DType::F32, s.B, zcols, y.ptr, prm, false, st);
    }, stream, opt.reps);
    std::printf("%5lld %5lld %6lld %6lld %5lld %5lld %6lld | %9.4f %9.4f %9.4f %7.1fx\n", (long long)s.B,
                (long long)s.T, (long long)s.d_in, (long long)s.d_out, (long long)s.k_in, (long long)s.k_out,
                (long long)s.k, tf, td, tu, tu / tf);
  }
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      opt.quick = true;
      opt.reps = 3;
    } else if (std::strcmp(argv[i], "--plan") == 0 && i + 1 < argc) {
      // Tuning experiments: --plan rows=R,chunks=C,verbose overrides the launch plans.
      const char* spec = argv[++i];
      grass::CudaPlanOverride plan;
      if (const char* r = std::strstr(spec, "rows=")) plan.rows = std::atoi(r + 5);
      if (const char* c = std::strstr(spec, "chunks=")) plan.chunks = std::atoll(c + 7);
      plan.verbose = std::strstr(spec, "verbose") != nullptr;
      grass::set_cuda_plan_override(plan);
    } else {
      std::fprintf(stderr, "usage: %s [--quick] [--plan rows=R,chunks=C,verbose]\n", argv[0]);
      return 2;
    }
  }
  const grass::CudaStatus status = grass::cuda_runtime_status();
  if (!status.available) {
    std::fprintf(stderr, "bench_cuda: skipped, no usable CUDA device: %s\n", status.reason.c_str());
    return 77;
  }
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  try {
    double copy = 0;
    print_device(stream, opt, &copy);
    bench_sjlt(stream, opt, copy);
    bench_sparse(stream, opt);
    bench_grass_fjlt(stream, opt);
    bench_factgrass(stream, opt);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda: %s\n", e.what());
    return 1;
  }
  CUDA_OK(cudaStreamDestroy(stream));
  return 0;
}
