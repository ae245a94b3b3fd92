// Batched Cholesky iFVP on the CPU: Fisher accumulation (SYRK), factorisation and solve
// for a few block layouts, in GFLOP/s, next to a naive triple loop measured in the same
// run on the first block of each layout (the speed-up of the blocked kernels).
//
//   bench_ifvp [--quick] [--N 4096] [--M 256] [--reps 3]
//
// FLOP counts (multiply + add = 2): accumulation N * k^2 per block (one triangle, as
// SYRK), Cholesky k^3 / 3, solve 2 * M * k^2.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "bench_common.h"
#include "grass/build_info.h"
#include "grass/hash.h"
#include "grass/ifvp.h"

using grass_bench::median_seconds;

namespace {

struct Layout {
  const char* name;
  std::vector<int64_t> sizes;
};

std::vector<float> random_matrix(int64_t rows, int64_t cols, uint64_t seed) {
  std::vector<float> m(static_cast<size_t>(rows * cols));
  const uint64_t key = grass::stream_key(seed, 0x49465650ULL);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows * cols; ++i)
    m[i] = static_cast<float>(static_cast<double>(grass::draw(key, i) >> 11) / 9007199254740992.0 - 0.5);
  return m;
}

// The textbook loops, single-threaded, on one block: F = G^T G (lower triangle).
double naive_syrk_seconds(const std::vector<float>& G, int64_t N, int64_t K, int64_t n) {
  std::vector<double> F(static_cast<size_t>(n * n), 0.0);
  const double t0 = grass_bench::now_seconds();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j <= i; ++j) {
      double acc = 0;
      for (int64_t r = 0; r < N; ++r) acc += static_cast<double>(G[r * K + i]) * G[r * K + j];
      F[i * n + j] = acc;
    }
  const double t = grass_bench::now_seconds() - t0;
  if (F[0] < 0) std::printf("impossible\n");  // keeps the loop from being optimised away
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  const grass_bench::Args args{argc, argv};
  const bool quick = args.has("--quick");
  const int64_t N = args.get("--N", quick ? 300 : 4096);
  const int64_t M = args.get("--M", quick ? 20 : 256);
  const int reps = static_cast<int>(args.get("--reps", quick ? 1 : 3));
  std::vector<Layout> layouts;
  if (quick) {
    layouts = {{"3 blocks of 40..130", {40, 70, 130}}};
  } else {
    layouts = {{"1 x 4096", {4096}},
               {"8 x 1024", std::vector<int64_t>(8, 1024)},
               {"32 x 256", std::vector<int64_t>(32, 256)},
               {"mixed 2048,1024,512,256,128,64", {2048, 1024, 512, 256, 128, 64}}};
  }
  const grass::BuildInfo info = grass::build_info();
  std::printf("# bench_ifvp: N = %lld rows of G (float32), M = %lld right-hand sides, median of %d\n",
              (long long)N, (long long)M, reps);
  std::printf("grass %s, %s, SIMD %s, OpenMP threads %d\n\n", info.version.c_str(), info.compiler.c_str(),
              info.simd.c_str(), omp_get_max_threads());
  std::printf("| layout | K | accumulate ms | GFLOP/s | naive GFLOP/s (1 thread, block 0) | Cholesky ms | GFLOP/s | "
              "solve ms | GFLOP/s |\n|---|---|---|---|---|---|---|---|---|\n");

  int failures = 0;
  for (const Layout& lay : layouts) {
    const int64_t L = static_cast<int64_t>(lay.sizes.size());
    int64_t K = 0;
    double syrk_flops = 0, chol_flops = 0, solve_flops = 0;
    for (int64_t n : lay.sizes) {
      K += n;
      syrk_flops += static_cast<double>(N) * n * n;
      chol_flops += static_cast<double>(n) * n * n / 3.0;
      solve_flops += 2.0 * M * n * n;
    }
    const std::vector<float> G = random_matrix(N, K, 1);
    const std::vector<float> V = random_matrix(M, K, 2);
    const int64_t packed = grass::ifvp_packed_size(lay.sizes.data(), L);
    std::vector<double> F(static_cast<size_t>(packed)), Lf(static_cast<size_t>(packed));
    std::vector<float> X(static_cast<size_t>(M * K));
    std::vector<double> damping(static_cast<size_t>(L), 1e-3 * N);

    const double t_acc = median_seconds(
        [&] {
          std::fill(F.begin(), F.end(), 0.0);
          grass::fisher_accumulate_cpu(G.data(), grass::DType::F32, N, K, lay.sizes.data(), L, F.data());
        },
        reps);
    // The copy Lf = F is inside the Cholesky timing: time it alone to subtract it.
    const double t_copy = median_seconds([&] { Lf = F; }, reps);
    const double t_chol = median_seconds(
        [&] {
          Lf = F;
          grass::cholesky_factor_cpu(Lf.data(), lay.sizes.data(), L, damping.data());
        },
        reps);
    const double t_solve = median_seconds(
        [&] {
          grass::cholesky_solve_cpu(Lf.data(), lay.sizes.data(), L, V.data(), grass::DType::F32, M, K, X.data());
        },
        reps);
    // Harness check: the solve's residual on block 0, row 0.
    {
      const int64_t n = lay.sizes[0];
      double worst = 0, scale = 0;
      for (int64_t i = 0; i < n; ++i) {
        double ax = damping[0] * X[i];
        for (int64_t j = 0; j < n; ++j) ax += F[i * n + j] * X[j];
        worst = std::max(worst, std::fabs(ax - V[i]));
        scale = std::max(scale, std::fabs(static_cast<double>(V[i])));
      }
      if (!(worst <= 1e-3 * scale)) {
        std::printf("ERROR: residual %g on %s\n", worst, lay.name);
        ++failures;
      }
    }
    // Naive reference on (part of) block 0: at most 512 columns to keep the run short.
    const int64_t n0 = std::min<int64_t>(lay.sizes[0], 512);
    const double t_naive = naive_syrk_seconds(G, std::min<int64_t>(N, 1024), K, n0);
    const double naive_flops = static_cast<double>(std::min<int64_t>(N, 1024)) * n0 * (n0 + 1);

    std::printf("| %s | %lld | %.1f | %.1f | %.2f | %.1f | %.1f | %.1f | %.1f |\n", lay.name, (long long)K,
                t_acc * 1e3, syrk_flops / t_acc / 1e9, naive_flops / t_naive / 1e9,
                (t_chol - t_copy) * 1e3, chol_flops / std::max(t_chol - t_copy, 1e-9) / 1e9, t_solve * 1e3,
                solve_flops / t_solve / 1e9);
    std::fflush(stdout);
  }
  return failures ? 1 : 0;
}
