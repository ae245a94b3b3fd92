// sjlt_cpu, sjlt_csr_cpu and sjlt_transpose_cpu against S built explicitly from
// sjlt_codes, applied in double; plus the properties a sketch must have.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "grass/check.h"
#include "grass/hash.h"
#include "grass/sjlt.h"
#include "harness.h"
#include "sketch_reference.h"

using grass_test::sjlt_params;

namespace {

std::vector<float> run_dense(const grass_test::Input& in, int64_t B, int64_t p,
                             const grass::SjltParams& params) {
  std::vector<float> y(B * params.k, std::nanf(""));  // NaN: every output must be written
  grass::sjlt_cpu(in.data(), in.dtype, B, p, y.data(), params);
  return y;
}

struct Csr {
  std::vector<int64_t> indptr, indices;
  std::vector<float> values;
};

// The non-zeros of dense x [B, p], row by row, ascending columns.
Csr to_csr(const std::vector<float>& x, int64_t B, int64_t p) {
  Csr c;
  c.indptr.push_back(0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < p; ++j)
      if (x[b * p + j] != 0.0f) {
        c.indices.push_back(j);
        c.values.push_back(x[b * p + j]);
      }
    c.indptr.push_back(static_cast<int64_t>(c.indices.size()));
  }
  return c;
}

std::vector<float> run_csr(const Csr& c, int64_t B, int64_t p, const grass::SjltParams& params) {
  std::vector<float> y(B * params.k, std::nanf(""));
  grass::sjlt_csr_cpu(c.indptr.data(), c.indices.data(), c.values.data(), grass::DType::F32, B, p,
                      y.data(), params);
  return y;
}

void check_dense(int64_t B, int64_t p, int64_t k, int64_t s, grass::DType dtype, double zeros,
                 uint64_t seed) {
  const grass_test::Input in = grass_test::random_input(B * p, seed, dtype, zeros);
  const grass::SjltParams params = sjlt_params(k, s, seed * 31 + 1);
  const std::vector<float> y = run_dense(in, B, p, params);
  const auto ref = grass_test::apply_explicit(grass_test::explicit_sjlt(p, params), in.f32, B);
  const int bad = grass_test::count_mismatches(y, ref, "sjlt_cpu");
  if (bad)
    std::printf("  B=%lld p=%lld k=%lld s=%lld dtype=%s: %d bad\n", (long long)B, (long long)p,
                (long long)k, (long long)s, grass::dtype_name(dtype), bad);
  EXPECT_EQ(bad, 0);
}

}  // namespace

GRASS_TEST(codes_are_the_hash) {
  const grass::SjltParams params = sjlt_params(37, 3, 12);
  const int64_t begin = 1000, count = 500;
  std::vector<int64_t> bucket(count * 3);
  std::vector<int8_t> sign(count * 3);
  grass::sjlt_codes(begin, count, params, bucket.data(), sign.data());
  const grass::SjltHash hash(12, 37, 3);
  int bad = 0;
  for (int64_t c = 0; c < count; ++c)
    for (int64_t r = 0; r < 3; ++r) {
      int64_t b;
      int neg;
      hash.code(begin + c, r, &b, &neg);
      bad += bucket[c * 3 + r] != b || sign[c * 3 + r] != (neg ? -1 : 1);
    }
  EXPECT_EQ(bad, 0);
}

GRASS_TEST(dense_matches_explicit_reference) {
  //          B     p     k  s
  check_dense(3, 1000, 64, 1, grass::DType::F32, 0.0, 1);
  check_dense(1, 777, 1, 1, grass::DType::F32, 0.0, 2);         // B = 1, k = 1
  check_dense(5, 1031, 17, 3, grass::DType::F32, 0.0, 3);       // p prime, k odd, s > 1
  check_dense(2, 50, 8, 8, grass::DType::F32, 0.0, 4);          // s = k
  check_dense(4, 9000, 33, 2, grass::DType::F32, 0.5, 5);       // several column tiles, zeros
  check_dense(11, 300, 100, 1, grass::DType::F32, 0.0, 6);      // B not a multiple of the row block
  check_dense(2, 1, 4, 2, grass::DType::F32, 0.0, 7);           // p = 1
  check_dense(3, 20000, 4096, 1, grass::DType::F32, 0.0, 8);    // k in the benchmark range
  check_dense(2, 5000, 5, 5, grass::DType::F32, 0.0, 9);        // s = k > 1, many tiles
  // Full blocks of 16 rows (the vectorised paths) plus a partial block; p not a multiple
  // of the 16-column tile nor of the hash tile.
  check_dense(37, 3001, 256, 1, grass::DType::F32, 0.0, 10);
  check_dense(33, 2500, 100, 3, grass::DType::F32, 0.2, 11);
  check_dense(16, 1024, 32, 1, grass::DType::F32, 0.0, 12);     // exactly one block, one tile
  check_dense(20, 1030, 64, 2, grass::DType::BF16, 0.1, 13);
  check_dense(18, 777, 48, 1, grass::DType::F16, 0.0, 14);
}

GRASS_TEST(large_k_sketches_rows_one_by_one) {
  // k above the blocked path's limit (2^18): every row goes straight into y. Checked row
  // by row against the explicit S (a dense double reference of B x k would be large).
  const int64_t B = 17, p = 1500, k = 300007, s = 2;
  const grass_test::Input in = grass_test::random_input(B * p, 15, grass::DType::F32, 0.1);
  const grass::SjltParams params = sjlt_params(k, s, 16);
  const std::vector<float> y = run_dense(in, B, p, params);
  const grass_test::ExplicitS S = grass_test::explicit_sjlt(p, params);
  int bad = 0;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<float> row(in.f32.begin() + b * p, in.f32.begin() + (b + 1) * p);
    const auto ref = grass_test::apply_explicit(S, row, 1);
    const std::vector<float> yb(y.begin() + b * k, y.begin() + (b + 1) * k);
    bad += grass_test::count_mismatches(yb, ref, "sjlt_cpu large k");
  }
  EXPECT_EQ(bad, 0);
}

GRASS_TEST(half_inputs_equal_float_inputs_bitwise) {
  // The same values given as float16/bfloat16 or as float32 are the same terms added in
  // the same order with float32 accumulation: bitwise equal outputs.
  for (grass::DType dt : {grass::DType::F16, grass::DType::BF16}) {
    for (int64_t s : {1, 3}) {
      const int64_t B = 19, p = 5003;  // a full block of 16 rows and a partial one
      const grass_test::Input half = grass_test::random_input(B * p, 40 + s, dt, 0.2);
      grass_test::Input f32;
      f32.f32 = half.f32;
      const grass::SjltParams params = sjlt_params(96, s, 8);
      EXPECT_TRUE(grass_test::bitwise_equal(run_dense(half, B, p, params), run_dense(f32, B, p, params)));
      check_dense(B, p, 96, s, dt, 0.2, 50 + s);
    }
  }
}

GRASS_TEST(csr_equals_dense) {
  // Same non-zeros, ascending columns: the same terms in the same order, so bitwise equal
  // (the dense path skips zeros, which would not change the sums anyway).
  for (double zeros : {0.0, 0.3, 0.9}) {
    for (int64_t s : {1, 2}) {
      const int64_t B = 35, p = 4099;
      const grass_test::Input in = grass_test::random_input(B * p, 60, grass::DType::F32, zeros);
      const grass::SjltParams params = sjlt_params(128, s, 3);
      const Csr c = to_csr(in.f32, B, p);
      EXPECT_TRUE(grass_test::bitwise_equal(run_csr(c, B, p, params), run_dense(in, B, p, params)));
    }
  }
}

GRASS_TEST(csr_unsorted_duplicates_empty_rows) {
  // Unsorted indices with duplicates (which add up) and empty rows, against the reference
  // applied to the densified matrix.
  const int64_t B = 5, p = 300;
  std::mt19937_64 rng(70);
  std::normal_distribution<float> normal;
  Csr c;
  c.indptr.push_back(0);
  std::vector<float> dense(B * p, 0.0f);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = (b == 1 || b == 3) ? 0 : 200;  // rows 1 and 3 empty
    for (int64_t e = 0; e < n; ++e) {
      const int64_t j = static_cast<int64_t>(rng() % p);
      const float v = normal(rng);
      c.indices.push_back(j);
      c.values.push_back(v);
      dense[b * p + j] += v;  // exact enough: the reference is compared with a tolerance
    }
    c.indptr.push_back(static_cast<int64_t>(c.indices.size()));
  }
  for (int64_t s : {1, 4}) {
    const grass::SjltParams params = sjlt_params(24, s, 9);
    const std::vector<float> y = run_csr(c, B, p, params);
    const auto ref = grass_test::apply_explicit(grass_test::explicit_sjlt(p, params), dense, B);
    // Duplicates were summed in float for the reference input: allow for that rounding too.
    int bad = 0;
    for (size_t e = 0; e < y.size(); ++e)
      bad += !(std::fabs(y[e] - ref.y[e]) <= 1e-5 * (ref.mag[e] + 1.0));
    EXPECT_EQ(bad, 0);
    for (int64_t b : {1, 3})
      for (int64_t o = 0; o < 24; ++o) EXPECT_EQ(y[b * 24 + o], 0.0f);
  }
}

GRASS_TEST(transpose_matches_reference_and_adjoint_identity) {
  for (int64_t s : {1, 3}) {
    const int64_t B = 4, p = 2053, k = 61;
    const grass::SjltParams params = sjlt_params(k, s, 17);
    const grass_test::ExplicitS S = grass_test::explicit_sjlt(p, params);
    const grass_test::Input yin = grass_test::random_input(B * k, 80 + s, grass::DType::F32);
    std::vector<float> xt(B * p, std::nanf(""));
    grass::sjlt_transpose_cpu(yin.f32.data(), B, p, xt.data(), params);
    // Reference: x[b, j] = sum_r value[j, r] * y[b, bucket[j, r]].
    int bad = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < p; ++j) {
        double v = 0, mag = 0;
        for (int64_t r = 0; r < s; ++r) {
          const double t = S.value[j * s + r] * yin.f32[b * k + S.bucket[j * s + r]];
          v += t;
          mag += std::fabs(t);
        }
        bad += !(std::fabs(xt[b * p + j] - v) <= (s + 2) * std::ldexp(1.0, -24) * mag);
      }
    EXPECT_EQ(bad, 0);

    // <S x, y> = <x, S^T y> in double. Each float output errs by at most (terms + 2) *
    // 2^-24 * (its sum of |terms|): bound both sides' rounding that way.
    const grass_test::Input xin = grass_test::random_input(B * p, 90 + s, grass::DType::F32);
    const std::vector<float> sx = run_dense(xin, B, p, params);
    const auto ref = grass_test::apply_explicit(S, xin.f32, B);
    const double u = std::ldexp(1.0, -24);
    for (int64_t b = 0; b < B; ++b) {
      double lhs = 0, rhs = 0, tol = 0;
      for (int64_t o = 0; o < k; ++o) {
        const double yo = yin.f32[b * k + o];
        lhs += static_cast<double>(sx[b * k + o]) * yo;
        tol += (ref.terms[b * k + o] + 2) * u * ref.mag[b * k + o] * std::fabs(yo);
      }
      for (int64_t j = 0; j < p; ++j) {
        const double xj = xin.f32[b * p + j];
        rhs += xj * xt[b * p + j];
        double mag = 0;
        for (int64_t r = 0; r < s; ++r)
          mag += std::fabs(S.value[j * s + r] * yin.f32[b * k + S.bucket[j * s + r]]);
        tol += (s + 2) * u * mag * std::fabs(xj);
      }
      EXPECT_NEAR(lhs, rhs, tol);
    }
  }
}

GRASS_TEST(norm_preserved_in_expectation) {
  // For any x, E ||Sx||^2 = ||x||^2 and Var(||Sx||^2 / ||x||^2) = (2/k)(1 - sum x^4 / ||x||^4)
  // (each pair of columns collides with probability 1/k in each of the s blocks of k/s
  // buckets, and the 1/s scaling cancels the s blocks). Over n independent (x, seed)
  // pairs the mean ratio is within 6 sd of 1 and the sample variance near the exact one.
  for (int64_t s : {1, 4}) {
    const int64_t p = 1500, k = 64, n = 400;
    double sum = 0, sum_sq = 0, var_exact = 0;
    for (int64_t t = 0; t < n; ++t) {
      const grass_test::Input x = grass_test::random_input(p, 1000 + t, grass::DType::F32);
      const std::vector<float> y = run_dense(x, 1, p, sjlt_params(k, s, 5000 + t));
      double nx = 0, nx4 = 0, ny = 0;
      for (float v : x.f32) {
        nx += double(v) * v;
        nx4 += double(v) * v * v * v;
      }
      for (float v : y) ny += double(v) * v;
      const double ratio = ny / nx;
      sum += ratio;
      sum_sq += ratio * ratio;
      var_exact += 2.0 / k * (1.0 - nx4 / (nx * nx)) / n;
    }
    const double mean = sum / n;
    const double var = (sum_sq - n * mean * mean) / (n - 1);
    EXPECT_NEAR(mean, 1.0, 6.0 * std::sqrt(var_exact / n));
    // The sample variance of n near-normal draws has relative sd sqrt(2 / (n - 1)) = 0.07.
    EXPECT_TRUE(var > 0.6 * var_exact && var < 1.5 * var_exact);
  }
}

GRASS_TEST(seeded_deterministic_thread_independent) {
  const int64_t B = 45, p = 10007;
  const grass_test::Input in = grass_test::random_input(B * p, 100, grass::DType::F32, 0.3);
  const grass::SjltParams params = sjlt_params(256, 2, 42);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const std::vector<float> one = run_dense(in, B, p, params);
  const Csr c = to_csr(in.f32, B, p);
  const std::vector<float> csr_one = run_csr(c, B, p, params);
  omp_set_num_threads(2);  // more threads than this machine has cores would only measure spinning
  EXPECT_TRUE(grass_test::bitwise_equal(run_dense(in, B, p, params), one));
  EXPECT_TRUE(grass_test::bitwise_equal(run_csr(c, B, p, params), csr_one));
  omp_set_num_threads(saved);
  EXPECT_TRUE(grass_test::bitwise_equal(run_dense(in, B, p, params), one));
  // Another seed: another S. At least most outputs differ.
  const std::vector<float> other = run_dense(in, B, p, sjlt_params(256, 2, 43));
  int64_t same = 0;
  for (size_t e = 0; e < other.size(); ++e) same += other[e] == one[e];
  EXPECT_TRUE(same < static_cast<int64_t>(other.size()) / 10);
}

GRASS_TEST(column_ranges_reference_csr_and_threads) {
  // p above one column range (2^17 columns for small k): rows are summed range by range.
  // Against the reference; CSR (sorted) equals dense bit for bit; and the same bits for
  // 1 and 2 threads, where B = 16 (one block) or B = 1 (one row) with 2 threads spreads
  // (row group, range) pairs over the threads and B = 35 gives each thread whole groups.
  const int64_t p = 300007, k = 64;
  for (int64_t B : {1, 16, 35}) {
    for (int64_t s : {1, 3}) {
      const grass_test::Input in = grass_test::random_input(B * p, 200 + B + s, grass::DType::F32, 0.5);
      const grass::SjltParams params = sjlt_params(k, s, 201);
      const int saved = omp_get_max_threads();
      omp_set_num_threads(1);
      const std::vector<float> one = run_dense(in, B, p, params);
      omp_set_num_threads(2);
      const std::vector<float> two = run_dense(in, B, p, params);
      omp_set_num_threads(saved);
      EXPECT_TRUE(grass_test::bitwise_equal(one, two));
      const auto ref = grass_test::apply_explicit(grass_test::explicit_sjlt(p, params), in.f32, B);
      EXPECT_EQ(grass_test::count_mismatches(two, ref, "sjlt_cpu, several ranges"), 0);
      const Csr c = to_csr(in.f32, B, p);
      EXPECT_TRUE(grass_test::bitwise_equal(run_csr(c, B, p, params), two));
    }
  }
  // Unsorted CSR rows across ranges: the same sum in another order.
  const int64_t B = 3;
  std::mt19937_64 rng(202);
  std::normal_distribution<float> normal;
  Csr c;
  c.indptr.push_back(0);
  std::vector<float> dense(B * p, 0.0f);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t e = 0; e < 5000; ++e) {
      const int64_t j = static_cast<int64_t>(rng() % p);
      if (dense[b * p + j] != 0.0f) continue;  // no duplicates: the reference input is exact
      c.indices.push_back(j);
      c.values.push_back(normal(rng));
      dense[b * p + j] = c.values.back();
    }
    c.indptr.push_back(static_cast<int64_t>(c.indices.size()));
  }
  const grass::SjltParams params = sjlt_params(k, 2, 203);
  const auto ref = grass_test::apply_explicit(grass_test::explicit_sjlt(p, params), dense, B);
  EXPECT_EQ(grass_test::count_mismatches(run_csr(c, B, p, params), ref, "sjlt_csr_cpu, unsorted"), 0);
}

GRASS_TEST(csr_column_indices_beyond_2_32) {
  // p = 2^33 + 5 columns: column indices need 64 bits; the kernel must hash the full
  // index (a truncated one would hash another column).
  const int64_t B = 2, p = (int64_t{1} << 33) + 5;
  Csr c;
  c.indptr = {0, 3, 6};
  c.indices = {3, (int64_t{1} << 32) + 1, p - 1, 0, (int64_t{1} << 33), p - 2};
  c.values = {1.0f, 2.0f, -3.0f, 0.5f, 4.0f, -1.5f};
  const grass::SjltParams params = sjlt_params(50, 2, 77);
  const std::vector<float> y = run_csr(c, B, p, params);
  std::vector<double> ref(B * 50, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t e = c.indptr[b]; e < c.indptr[b + 1]; ++e) {
      int64_t bucket[2];
      int8_t sign[2];
      grass::sjlt_codes(c.indices[e], 1, params, bucket, sign);
      for (int r = 0; r < 2; ++r) ref[b * 50 + bucket[r]] += sign[r] * c.values[e] / std::sqrt(2.0);
    }
  for (int64_t o = 0; o < B * 50; ++o) EXPECT_NEAR(y[o], ref[o], 1e-5);
}

GRASS_TEST(dense_batch_beyond_2_31_elements) {
  // B * p = 2^31 + 32 bfloat16 elements (4 GiB of address space, zero pages from calloc
  // that are read but never written: no physical memory). The non-zeros sit in the last
  // row, past element 2^31, where a 32-bit offset would wrap. Two blocks of 16 rows; about
  // 1-3 s on 2 cores, mostly the kernel mapping the zero pages.
  const int64_t B = 32, p = (int64_t{1} << 26) + 1;
  std::unique_ptr<uint16_t, decltype(&std::free)> x(
      static_cast<uint16_t*>(std::calloc(static_cast<size_t>(B * p), sizeof(uint16_t))), &std::free);
  EXPECT_TRUE(x != nullptr);
  if (!x) return;
  const int64_t cols[3] = {0, p / 2, p - 1};
  const float vals[3] = {1.5f, -2.0f, 0.25f};  // exact in bfloat16
  for (int i = 0; i < 3; ++i) {
    uint32_t u;
    std::memcpy(&u, &vals[i], 4);
    x.get()[(B - 1) * p + cols[i]] = static_cast<uint16_t>(u >> 16);
  }
  const grass::SjltParams params = sjlt_params(32, 1, 5);
  std::vector<float> y(B * 32, std::nanf(""));
  grass::sjlt_cpu(x.get(), grass::DType::BF16, B, p, y.data(), params);
  std::vector<double> ref(B * 32, 0.0);
  for (int i = 0; i < 3; ++i) {
    int64_t bucket;
    int8_t sign;
    grass::sjlt_codes(cols[i], 1, params, &bucket, &sign);
    ref[(B - 1) * 32 + bucket] += sign * vals[i];
  }
  for (int64_t o = 0; o < B * 32; ++o) EXPECT_EQ(y[o], static_cast<float>(ref[o]));
}

GRASS_TEST(output_overwritten_and_empty_inputs) {
  std::vector<float> y(2 * 8, 7.0f);
  grass::sjlt_cpu(nullptr, grass::DType::F32, 2, 0, y.data(), sjlt_params(8, 1, 0));  // p = 0
  for (float v : y) EXPECT_EQ(v, 0.0f);
  std::vector<float> untouched(8, 7.0f);
  grass::sjlt_cpu(nullptr, grass::DType::F32, 0, 10, untouched.data(), sjlt_params(8, 1, 0));  // B = 0
  EXPECT_EQ(untouched[0], 7.0f);
  const int64_t indptr[3] = {0, 0, 0};
  std::fill(y.begin(), y.end(), 7.0f);
  grass::sjlt_csr_cpu(indptr, nullptr, nullptr, grass::DType::F32, 2, 10, y.data(), sjlt_params(8, 1, 0));
  for (float v : y) EXPECT_EQ(v, 0.0f);
}

GRASS_TEST(argument_errors) {
  std::vector<float> x(2 * 10, 1.0f), y(2 * 8);
  auto dense = [&](int64_t k, int64_t s, grass::DType dt = grass::DType::F32, int64_t B = 2) {
    grass::sjlt_cpu(x.data(), dt, B, 10, y.data(), sjlt_params(k, s, 0));
  };
  EXPECT_THROWS_WITH(dense(0, 1), "k must be in [1, 2^31 - 1], got 0");
  EXPECT_THROWS_WITH(dense(-3, 1), "got -3");
  EXPECT_THROWS_WITH(dense(int64_t{1} << 31, 1), "k must be in [1, 2^31 - 1]");
  EXPECT_THROWS_WITH(dense(8, 0), "s must be in [1, k = 8], got 0");
  EXPECT_THROWS_WITH(dense(8, 9), "s must be in [1, k = 8], got 9");
  EXPECT_THROWS_WITH(dense(8, 1, grass::DType::F64), "dtype must be float32, float16 or bfloat16, got float64");
  EXPECT_THROWS_WITH(dense(8, 1, grass::DType::F32, -1), "B must be >= 0, got -1");
  EXPECT_THROWS_WITH(grass::sjlt_transpose_cpu(y.data(), 2, 10, x.data(), sjlt_params(8, 0, 0)), "s must be");
  std::vector<int64_t> bucket(4);
  std::vector<int8_t> sign(4);
  EXPECT_THROWS_WITH(grass::sjlt_codes(-1, 2, sjlt_params(8, 2, 0), bucket.data(), sign.data()),
                     "column_begin must be >= 0, got -1");

  auto csr = [&](std::vector<int64_t> indptr, std::vector<int64_t> indices, int64_t p = 10) {
    std::vector<float> values(indices.size(), 1.0f);
    std::fill(y.begin(), y.end(), 7.0f);
    grass::sjlt_csr_cpu(indptr.data(), indices.data(), values.data(), grass::DType::F32, 2, p, y.data(),
                        sjlt_params(8, 1, 0));
  };
  EXPECT_THROWS_WITH(csr({1, 1, 2}, {0, 1}), "indptr[0] must be 0, got 1");
  EXPECT_THROWS_WITH(csr({0, 2, 1}, {0, 1}), "indptr must be non-decreasing, got indptr[1] = 2 > indptr[2] = 1");
  EXPECT_THROWS_WITH(csr({0, 1, 2}, {0, 10}), "indices must be in [0, p = 10), got indices[1] = 10");
  EXPECT_THROWS_WITH(csr({0, 1, 2}, {-1, 3}), "got indices[0] = -1");
  // A bad index is found while sketching: the output is then all NaN, never a partial sum.
  for (float v : y) EXPECT_TRUE(std::isnan(v));
  EXPECT_THROWS_WITH(csr({0, 2, 1}, {0, 1}), "indptr must be non-decreasing");
  EXPECT_EQ(y[0], 7.0f);  // indptr is checked before anything is written
}

int main() { return grass_test::run_all(); }
