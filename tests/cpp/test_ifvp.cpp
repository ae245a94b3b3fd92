// Batched Cholesky iFVP against plain float64 loops: F = G^T G per block, the textbook
// Cholesky-Banachiewicz factorisation, and forward/back substitution; plus residuals.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "grass/check.h"
#include "grass/ifvp.h"
#include "harness.h"

namespace {

struct Blocks {
  std::vector<int64_t> sizes, col, packed;  // col / packed: offsets, [L + 1]
  explicit Blocks(std::vector<int64_t> s) : sizes(std::move(s)) {
    col.push_back(0);
    packed.push_back(0);
    for (int64_t n : sizes) {
      col.push_back(col.back() + n);
      packed.push_back(packed.back() + n * n);
    }
  }
  int64_t L() const { return static_cast<int64_t>(sizes.size()); }
  int64_t K() const { return col.back(); }
};

std::vector<double> random_matrix(int64_t rows, int64_t cols, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<double> m(rows * cols);
  for (auto& v : m) v = normal(rng);
  return m;
}

// Plain F_l = G_l^T G_l.
std::vector<double> reference_fisher(const std::vector<double>& G, int64_t N, const Blocks& bl) {
  std::vector<double> F(bl.packed.back(), 0.0);
  for (int64_t l = 0; l < bl.L(); ++l) {
    const int64_t n = bl.sizes[l], c0 = bl.col[l];
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0;
        for (int64_t r = 0; r < N; ++r) acc += G[r * bl.K() + c0 + i] * G[r * bl.K() + c0 + j];
        F[bl.packed[l] + i * n + j] = acc;
      }
  }
  return F;
}

// Cholesky-Banachiewicz of A + damping I (lower), n x n row-major.
std::vector<double> reference_cholesky(const double* A, int64_t n, double damping) {
  std::vector<double> L(n * n, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j <= i; ++j) {
      double sum = A[i * n + j] + (i == j ? damping : 0.0);
      for (int64_t m = 0; m < j; ++m) sum -= L[i * n + m] * L[j * n + m];
      L[i * n + j] = i == j ? std::sqrt(sum) : sum / L[j * n + j];
    }
  return L;
}

// A well-conditioned SPD Fisher: G^T G over N > n rows.
struct Problem {
  Blocks bl;
  int64_t N;
  std::vector<double> G, F;
};
Problem make_problem(std::vector<int64_t> sizes, int64_t N, uint64_t seed) {
  Problem pr{Blocks(std::move(sizes)), N, {}, {}};
  pr.G = random_matrix(N, pr.bl.K(), seed);
  pr.F.assign(pr.bl.packed.back(), 0.0);
  grass::fisher_accumulate_cpu(pr.G.data(), grass::DType::F64, N, pr.bl.K(), pr.bl.sizes.data(), pr.bl.L(),
                               pr.F.data());
  return pr;
}

double max_abs(const double* a, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i]));
  return m;
}

}  // namespace

GRASS_TEST(packed_size_and_layout_errors) {
  const int64_t sizes[] = {3, 1, 5};
  EXPECT_EQ(grass::ifvp_packed_size(sizes, 3), int64_t{9 + 1 + 25});
  const int64_t zero[] = {3, 0};
  EXPECT_THROWS_WITH(grass::ifvp_packed_size(zero, 2), "block_sizes[1] must be >= 1, got 0");
  EXPECT_THROWS_WITH(grass::ifvp_packed_size(sizes, 0), "num_blocks must be >= 1, got 0");
  std::vector<double> G(4 * 8), F(35);
  EXPECT_THROWS_WITH(grass::fisher_accumulate_cpu(G.data(), grass::DType::F64, 4, 8, sizes, 3, F.data()),
                     "block_sizes must sum to K = 8 (the columns of the matrix), got sum 9");
  EXPECT_THROWS_WITH(grass::fisher_accumulate_cpu(G.data(), grass::DType::F16, 4, 9, sizes, 3, F.data()),
                     "dtype of G must be float32 or float64, got float16");
  EXPECT_THROWS_WITH(grass::fisher_accumulate_cpu(G.data(), grass::DType::F64, -1, 9, sizes, 3, F.data()),
                     "N must be >= 0, got -1");
}

GRASS_TEST(fisher_matches_plain_loops) {
  // Blocks across the tile (128) and register-block (8 x 16) edges; N across the row
  // chunk (256); float64 and float32 G.
  const Blocks bl({1, 7, 130, 257, 16});
  const int64_t N = 300;
  const std::vector<double> G = random_matrix(N, bl.K(), 1);
  const std::vector<double> ref = reference_fisher(G, N, bl);
  std::vector<double> F(bl.packed.back(), 0.0);
  grass::fisher_accumulate_cpu(G.data(), grass::DType::F64, N, bl.K(), bl.sizes.data(), bl.L(), F.data());
  double worst = 0;
  for (size_t e = 0; e < F.size(); ++e) worst = std::max(worst, std::fabs(F[e] - ref[e]));
  // Sums of N products of standard normals: |terms| sum to about N, rounding N * 2^-53 each.
  EXPECT_TRUE(worst <= N * N * std::ldexp(1.0, -52));
  // Exactly symmetric.
  int asym = 0;
  for (int64_t l = 0; l < bl.L(); ++l) {
    const int64_t n = bl.sizes[l];
    const double* A = F.data() + bl.packed[l];
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < i; ++j) asym += A[i * n + j] != A[j * n + i];
  }
  EXPECT_EQ(asym, 0);

  // float32 G: the products of floats are exact in float64, so the same tolerance holds
  // against the reference on the float-rounded values.
  std::vector<float> Gf(G.begin(), G.end());
  std::vector<double> Gr(Gf.begin(), Gf.end());
  const std::vector<double> ref_f = reference_fisher(Gr, N, bl);
  std::vector<double> Ff(bl.packed.back(), 0.0);
  grass::fisher_accumulate_cpu(Gf.data(), grass::DType::F32, N, bl.K(), bl.sizes.data(), bl.L(), Ff.data());
  worst = 0;
  for (size_t e = 0; e < Ff.size(); ++e) worst = std::max(worst, std::fabs(Ff[e] - ref_f[e]));
  EXPECT_TRUE(worst <= N * N * std::ldexp(1.0, -52));
}

GRASS_TEST(fisher_accumulates_over_chunks_and_is_deterministic) {
  const Blocks bl({40, 200});
  const int64_t N = 500;
  const std::vector<double> G = random_matrix(N, bl.K(), 2);
  std::vector<double> whole(bl.packed.back(), 0.0), parts(bl.packed.back(), 0.0);
  grass::fisher_accumulate_cpu(G.data(), grass::DType::F64, N, bl.K(), bl.sizes.data(), bl.L(), whole.data());
  // Two calls on rows [0, 123) and [123, 500) add up to the same F (to rounding).
  grass::fisher_accumulate_cpu(G.data(), grass::DType::F64, 123, bl.K(), bl.sizes.data(), bl.L(), parts.data());
  grass::fisher_accumulate_cpu(G.data() + 123 * bl.K(), grass::DType::F64, N - 123, bl.K(), bl.sizes.data(),
                               bl.L(), parts.data());
  double worst = 0;
  for (size_t e = 0; e < whole.size(); ++e) worst = std::max(worst, std::fabs(whole[e] - parts[e]));
  EXPECT_TRUE(worst <= N * N * std::ldexp(1.0, -52));
  // Bitwise the same for any thread count.
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  std::vector<double> one(bl.packed.back(), 0.0);
  grass::fisher_accumulate_cpu(G.data(), grass::DType::F64, N, bl.K(), bl.sizes.data(), bl.L(), one.data());
  omp_set_num_threads(saved);
  EXPECT_TRUE(std::memcmp(one.data(), whole.data(), one.size() * sizeof(double)) == 0);
}

GRASS_TEST(cholesky_matches_reference_with_damping_per_block) {
  // Sizes: 1, below and across the panel (64), above the one-thread-per-block limit (256).
  Problem pr = make_problem({1, 5, 65, 130, 300}, 400, 3);
  const std::vector<double> damping = {0.5, 0.0, 1.0, 2.5, 10.0};
  std::vector<double> Lf = pr.F;
  grass::cholesky_factor_cpu(Lf.data(), pr.bl.sizes.data(), pr.bl.L(), damping.data());
  for (int64_t l = 0; l < pr.bl.L(); ++l) {
    const int64_t n = pr.bl.sizes[l];
    const double* A = pr.F.data() + pr.bl.packed[l];
    const double* L = Lf.data() + pr.bl.packed[l];
    const std::vector<double> ref = reference_cholesky(A, n, damping[l]);
    const double scale = max_abs(ref.data(), n * n);
    double worst = 0, resid = 0;
    int upper_nonzero = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) {
        worst = std::max(worst, std::fabs(L[i * n + j] - ref[i * n + j]));
        if (j > i) upper_nonzero += L[i * n + j] != 0.0;
        // (L L^T)[i, j] against A + damping I.
        double llt = 0;
        for (int64_t m = 0; m <= std::min(i, j); ++m) llt += L[i * n + m] * L[j * n + m];
        resid = std::max(resid, std::fabs(llt - A[i * n + j] - (i == j ? damping[l] : 0.0)));
      }
    const double a_scale = max_abs(A, n * n) + damping[l];
    EXPECT_TRUE(worst <= 1e-10 * scale);
    EXPECT_TRUE(resid <= n * 1e-14 * a_scale);
    EXPECT_EQ(upper_nonzero, 0);
  }
}

GRASS_TEST(not_positive_definite_names_block_and_leaves_F) {
  Problem pr = make_problem({4, 70, 6}, 100, 4);
  // Block 1 made indefinite: a diagonal entry far below zero.
  pr.F[pr.bl.packed[1] + 33 * 70 + 33] = -1e6;
  const std::vector<double> before = pr.F;
  const std::vector<double> damping = {0.1, 0.1, 0.1};
  EXPECT_THROWS_WITH(grass::cholesky_factor_cpu(pr.F.data(), pr.bl.sizes.data(), pr.bl.L(), damping.data()),
                     "block 1 (size 70) is not positive definite");
  EXPECT_TRUE(std::memcmp(before.data(), pr.F.data(), before.size() * sizeof(double)) == 0);
  // Singular without damping (rank N < n), fine with it.
  Problem low = make_problem({50}, 10, 5);
  const double none = 0.0, some = 1.0;
  std::vector<double> F = low.F;
  EXPECT_THROWS_WITH(grass::cholesky_factor_cpu(F.data(), low.bl.sizes.data(), 1, &none), "block 0 (size 50)");
  grass::cholesky_factor_cpu(F.data(), low.bl.sizes.data(), 1, &some);
  const double negative = -1.0;
  EXPECT_THROWS_WITH(grass::cholesky_factor_cpu(low.F.data(), low.bl.sizes.data(), 1, &negative),
                     "damping[0] must be finite and >= 0, got -1");
}

GRASS_TEST(solve_residuals_float64_and_float32) {
  Problem pr = make_problem({3, 64, 129, 270}, 500, 6);
  const std::vector<double> damping = {0.3, 1.0, 0.0, 5.0};
  std::vector<double> Lf = pr.F;
  grass::cholesky_factor_cpu(Lf.data(), pr.bl.sizes.data(), pr.bl.L(), damping.data());
  for (int64_t M : {1, 9, 40}) {
    const int64_t K = pr.bl.K();
    const std::vector<double> V = random_matrix(M, K, 7 + M);
    std::vector<double> X(M * K, std::nan(""));
    grass::cholesky_solve_cpu(Lf.data(), pr.bl.sizes.data(), pr.bl.L(), V.data(), grass::DType::F64, M, K, X.data());
    // Residual (F_l + d_l I) x - v per block and row, and agreement with the reference
    // substitutions on the reference factor.
    for (int64_t l = 0; l < pr.bl.L(); ++l) {
      const int64_t n = pr.bl.sizes[l], c0 = pr.bl.col[l];
      const double* A = pr.F.data() + pr.bl.packed[l];
      const std::vector<double> Lr = reference_cholesky(A, n, damping[l]);
      double worst_res = 0, worst_ref = 0, x_scale = 0, v_scale = 0;
      for (int64_t r = 0; r < M; ++r) {
        std::vector<double> z(n), x(n);
        for (int64_t i = 0; i < n; ++i) {
          double v = V[r * K + c0 + i];
          for (int64_t m = 0; m < i; ++m) v -= Lr[i * n + m] * z[m];
          z[i] = v / Lr[i * n + i];
        }
        for (int64_t i = n - 1; i >= 0; --i) {
          double v = z[i];
          for (int64_t m = i + 1; m < n; ++m) v -= Lr[m * n + i] * x[m];
          x[i] = v / Lr[i * n + i];
        }
        for (int64_t i = 0; i < n; ++i) {
          double ax = damping[l] * X[r * K + c0 + i];
          for (int64_t j = 0; j < n; ++j) ax += A[i * n + j] * X[r * K + c0 + j];
          worst_res = std::max(worst_res, std::fabs(ax - V[r * K + c0 + i]));
          worst_ref = std::max(worst_ref, std::fabs(X[r * K + c0 + i] - x[i]));
          x_scale = std::max(x_scale, std::fabs(x[i]));
          v_scale = std::max(v_scale, std::fabs(V[r * K + c0 + i]));
        }
      }
      const double a_norm = max_abs(A, n * n) * n + damping[l];
      EXPECT_TRUE(worst_res <= 1e-12 * a_norm * x_scale + 1e-12 * v_scale);
      EXPECT_TRUE(worst_ref <= 1e-9 * x_scale);
    }

    // float32 V and X: the same solve rounded to float at the end; X may alias V.
    std::vector<float> Vf(V.begin(), V.end());
    std::vector<double> Vr(Vf.begin(), Vf.end());
    std::vector<double> Xr(M * K);
    grass::cholesky_solve_cpu(Lf.data(), pr.bl.sizes.data(), pr.bl.L(), Vr.data(), grass::DType::F64, M, K,
                              Xr.data());
    grass::cholesky_solve_cpu(Lf.data(), pr.bl.sizes.data(), pr.bl.L(), Vf.data(), grass::DType::F32, M, K,
                              Vf.data());
    int bad = 0;
    for (int64_t e = 0; e < M * K; ++e) bad += Vf[e] != static_cast<float>(Xr[e]);
    EXPECT_EQ(bad, 0);
  }
}

GRASS_TEST(solve_errors_and_empty) {
  const int64_t sizes[] = {2, 3};
  std::vector<double> L(13, 0.0), V(2 * 5, 1.0), X(2 * 5, 7.0);
  grass::cholesky_solve_cpu(L.data(), sizes, 2, V.data(), grass::DType::F64, 0, 5, X.data());  // M = 0
  EXPECT_EQ(X[0], 7.0);
  EXPECT_THROWS_WITH(grass::cholesky_solve_cpu(L.data(), sizes, 2, V.data(), grass::DType::F64, 2, 6, X.data()),
                     "block_sizes must sum to K = 6");
  EXPECT_THROWS_WITH(grass::cholesky_solve_cpu(L.data(), sizes, 2, V.data(), grass::DType::BF16, 2, 5, X.data()),
                     "dtype of V must be float32 or float64, got bfloat16");
}

int main() { return grass_test::run_all(); }
