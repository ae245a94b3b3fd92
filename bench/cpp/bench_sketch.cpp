// Sketch kernels on the CPU, measured in one run next to a copy-bandwidth probe.
//
//   bench_sketch [--quick] [--p 131072] [--B 128] [--ks 32,64,...] [--sparsity 0,30,60,90]
//                [--reps 7] [--grass-factor 4] [--no-fjlt]
//
// For each input sparsity (percent of exact zeros) and each k it prints the median time
// and GB/s of: SJLT on dense float32 input, SJLT on the same data as CSR, GraSS
// (masked_sjlt with k' = min(p, grass-factor * k) random columns) and FJLT; /copy is
// the kernel's GB/s over the copy probe's (bench_common.h: each kernel run is paired with
// a copy run just before it, and the median of the pairs' ratios is printed), both
// counting bytes read + written:
//   SJLT dense, FJLT: B*p*4 read + B*k*4 written
//   SJLT CSR:         nnz*(4 + 8) + (B+1)*8 read + B*k*4 written
//   GraSS:            B*k'*4 + k'*8 read + B*k*4 written (the bytes it needs; a gather of
//                     scattered columns moves whole cache lines, so this understates traffic)
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "bench_common.h"
#include "grass/build_info.h"
#include "grass/fjlt.h"
#include "grass/hash.h"
#include "grass/mask.h"
#include "grass/masked_sjlt.h"
#include "grass/sjlt.h"

using grass_bench::Buffer;
using grass_bench::median_seconds;

namespace {

// Deterministic input: standard-normal-ish values (sum of uniforms from the hash), a
// fraction `zeros` of them exactly zero, filled in parallel (first touch by the threads
// that will read the rows).
void fill_input(float* x, int64_t B, int64_t p, double zeros, uint64_t seed) {
  const uint64_t key = grass::stream_key(seed, 0x42454e43ULL);
  const uint64_t zero_below = static_cast<uint64_t>(zeros * 18446744073709551616.0);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < p; ++j) {
      const uint64_t h = grass::draw(key, static_cast<uint64_t>(b * p + j));
      const uint64_t h2 = grass::mix64(h);
      const bool zero = zeros > 0 && grass::mix64(h2) < zero_below;
      // Two 32-bit uniforms -> approximately normal (Irwin-Hall with n = 2, rescaled).
      const double u = (static_cast<double>(h >> 32) + static_cast<double>(h2 >> 32)) / 4294967296.0 - 1.0;
      x[b * p + j] = zero ? 0.0f : static_cast<float>(u * 2.449);
    }
}

struct Csr {
  std::vector<int64_t> indptr, indices;
  std::vector<float> values;
};
Csr to_csr(const float* x, int64_t B, int64_t p) {
  Csr c;
  c.indptr.assign(B + 1, 0);
  for (int64_t b = 0; b < B; ++b) {
    int64_t n = 0;
    for (int64_t j = 0; j < p; ++j) n += x[b * p + j] != 0.0f;
    c.indptr[b + 1] = c.indptr[b] + n;
  }
  c.indices.resize(c.indptr[B]);
  c.values.resize(c.indptr[B]);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    int64_t e = c.indptr[b];
    for (int64_t j = 0; j < p; ++j)
      if (x[b * p + j] != 0.0f) {
        c.indices[e] = j;
        c.values[e++] = x[b * p + j];
      }
  }
  return c;
}

double gbs(double bytes, double sec) { return bytes / sec / 1e9; }

}  // namespace

int main(int argc, char** argv) {
  const grass_bench::Args args{argc, argv};
  const bool quick = args.has("--quick");
  const int64_t p = args.get("--p", quick ? 4099 : 131072);
  const int64_t B = args.get("--B", quick ? 8 : 128);
  const int reps = static_cast<int>(args.get("--reps", quick ? 3 : 7));
  const int64_t grass_factor = args.get("--grass-factor", 4);
  const bool with_fjlt = !args.has("--no-fjlt");
  std::vector<long long> ks = grass_bench::parse_list(
      args.get_str("--ks", quick ? "32,256" : "32,64,128,256,512,1024,2048,4096,8192,16384"));
  std::vector<long long> sparsity = grass_bench::parse_list(args.get_str("--sparsity", quick ? "0,90" : "0,30,60,90"));

  const grass::BuildInfo info = grass::build_info();
  std::printf("# bench_sketch: p = %lld, B = %lld, float32 input, median of %d runs\n", (long long)p,
              (long long)B, reps);
  std::printf("grass %s, %s, SIMD %s, OpenMP threads %d\n\n", info.version.c_str(), info.compiler.c_str(),
              info.simd.c_str(), omp_get_max_threads());

  Buffer<float> x(static_cast<size_t>(B * p));
  const long long k_max = ks.empty() ? 1 : *std::max_element(ks.begin(), ks.end());
  std::vector<float> y(static_cast<size_t>(B * k_max));
  std::vector<float> y_check(y.size());
  const double in_bytes = static_cast<double>(B) * p * 4;
  int failures = 0;

  grass_bench::CopyProbe probe(static_cast<size_t>(in_bytes));
  for (long long sp : sparsity) {
    fill_input(x.data, B, p, sp / 100.0, 1234);
    const Csr csr = to_csr(x.data, B, p);
    const int64_t nnz = csr.indptr[B];
    const double copy = grass_bench::copy_bandwidth_gbs(probe, std::max(reps, 5));
    const double read = grass_bench::read_bandwidth_gbs(x.data, x.n, std::max(reps, 5));
    std::printf("## sparsity %lld%% (nnz = %lld of %lld)\n\n", sp, (long long)nnz, (long long)(B * p));
    std::printf("copy probe %.1f GB/s (memcpy of the %.1f MiB input, read + written), read probe %.1f GB/s; "
                "/copy is the median over repetitions of kernel GB/s / copy GB/s, each kernel run paired with a "
                "copy run just before it; best: the fastest kernel run over the fastest copy run\n\n",
                copy, in_bytes / (1 << 20), read);
    std::printf("| k | SJLT dense ms | GB/s | /copy | best | SJLT CSR ms | GB/s | /copy | GraSS k' | GraSS ms | GB/s |%s\n",
                with_fjlt ? " FJLT ms | GB/s |" : "");
    std::printf("|---|---|---|---|---|---|---|---|---|---|---|%s\n", with_fjlt ? "---|---|" : "");
    for (long long k : ks) {
      grass::SjltParams params;
      params.k = k;
      params.s = 1;
      params.seed = 7;
      const double out_bytes = static_cast<double>(B) * k * 4;

      const auto dense = grass_bench::time_against_copy(
          [&] { grass::sjlt_cpu(x.data, grass::DType::F32, B, p, y.data(), params); }, in_bytes + out_bytes, probe,
          reps);
      const double csr_bytes = nnz * 12.0 + (B + 1) * 8.0 + out_bytes;
      const auto sparse = grass_bench::time_against_copy(
          [&] {
            grass::sjlt_csr_cpu(csr.indptr.data(), csr.indices.data(), csr.values.data(), grass::DType::F32, B, p,
                                y_check.data(), params);
          },
          csr_bytes, probe, reps);
      // Harness check: dense and CSR paths must agree bit for bit.
      if (!std::equal(y.begin(), y.begin() + B * k, y_check.begin())) {
        std::printf("ERROR: SJLT dense and CSR outputs differ at k = %lld\n", k);
        ++failures;
      }

      const int64_t kp = std::min<int64_t>(p, grass_factor * k);
      std::vector<int64_t> idx(static_cast<size_t>(kp));
      grass::random_mask_indices(p, kp, 99, idx.data());
      const double t_grass = median_seconds(
          [&] { grass::masked_sjlt_cpu(x.data, grass::DType::F32, B, p, idx.data(), kp, y.data(), params); }, reps);
      const double grass_bytes = static_cast<double>(B) * kp * 4 + kp * 8.0 + out_bytes;

      std::printf("| %lld | %.3f | %.1f | %.2f | %.2f | %.3f | %.1f | %.2f | %lld | %.3f | %.1f |", k,
                  dense.seconds * 1e3, gbs(in_bytes + out_bytes, dense.seconds), dense.ratio, dense.best_ratio,
                  sparse.seconds * 1e3,
                  gbs(csr_bytes, sparse.seconds), sparse.ratio, (long long)kp, t_grass * 1e3,
                  gbs(grass_bytes, t_grass));
      if (with_fjlt) {
        if (k <= grass::fjlt_padded_size(p)) {
          const double t_fjlt = median_seconds(
              [&] { grass::fjlt_cpu(x.data, grass::DType::F32, B, p, y.data(), k, params.seed); },
              std::max(3, reps / 2));
          std::printf(" %.3f | %.1f |", t_fjlt * 1e3, gbs(in_bytes + out_bytes, t_fjlt));
        } else {
          std::printf(" - | - |");
        }
      }
      std::printf("\n");
      std::fflush(stdout);
    }
    std::printf("\n");
  }
  return failures ? 1 : 0;
}
