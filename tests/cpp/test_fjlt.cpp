// FJLT against an explicit dense (1/sqrt(k)) R H D built in double from the published
// parameters (fjlt_signs, fjlt_rows) and H[i][j] = (-1)^popcount(i & j).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "grass/check.h"
#include "grass/fjlt.h"
#include "harness.h"

namespace {

int parity(uint64_t v) { return __builtin_popcountll(v) & 1; }

// Independent decoders (not dtype.h's): bfloat16 is the top half of a float; float16
// normals are (1 + m / 1024) * 2^(e - 15).
float bf16_value(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
float f16_value(uint16_t h) {
  int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  double v = std::ldexp(1.0 + m / 1024.0, e - 15);
  return static_cast<float>((h & 0x8000) ? -v : v);
}

// Random inputs as float plus bf16/f16 bit patterns whose decoded values are xs.
struct Input {
  std::vector<float> f32;
  std::vector<uint16_t> bits;
};
Input random_input(int64_t n, uint64_t seed, grass::DType dtype) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Input in;
  in.f32.resize(n);
  if (dtype == grass::DType::F32) {
    for (auto& v : in.f32) v = normal(rng);
  } else {
    in.bits.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      if (dtype == grass::DType::BF16) {
        float v = normal(rng);
        uint32_t u;
        std::memcpy(&u, &v, 4);
        in.bits[i] = static_cast<uint16_t>(u >> 16);
        in.f32[i] = bf16_value(in.bits[i]);
      } else {
        // Normal halves with exponents around 1: |v| in [2^-4, 2^3).
        uint16_t sign = (rng() & 1) ? 0x8000 : 0;
        uint16_t e = static_cast<uint16_t>(11 + rng() % 7);
        uint16_t m = static_cast<uint16_t>(rng() & 0x3ff);
        in.bits[i] = static_cast<uint16_t>(sign | (e << 10) | m);
        in.f32[i] = f16_value(in.bits[i]);
      }
    }
  }
  return in;
}
const void* data_of(const Input& in, grass::DType dtype) {
  return dtype == grass::DType::F32 ? static_cast<const void*>(in.f32.data())
                                    : static_cast<const void*>(in.bits.data());
}

// y_ref[b, r] = (1/sqrt(k)) sum_j H[rows[r], j] sign[j] x[b, j], in double.
std::vector<double> dense_reference(const std::vector<float>& x, int64_t B, int64_t p, int64_t k,
                                    uint64_t seed) {
  std::vector<int8_t> sign(p);
  std::vector<int64_t> rows(k);
  grass::fjlt_signs(p, seed, sign.data());
  grass::fjlt_rows(p, k, seed, rows.data());
  std::vector<double> y(B * k);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r = 0; r < k; ++r) {
      double acc = 0;
      for (int64_t j = 0; j < p; ++j) {
        double h = parity(static_cast<uint64_t>(rows[r]) & static_cast<uint64_t>(j)) ? -1.0 : 1.0;
        acc += h * sign[j] * x[b * p + j];
      }
      y[b * k + r] = acc / std::sqrt(static_cast<double>(k));
    }
  return y;
}

// Compares fjlt_cpu with the dense reference; the tolerance is a float FWHT's error bound:
// log2(P) + 1 roundings of partial sums of at most sum_j |x_j|.
void check_against_dense(int64_t B, int64_t p, int64_t k, uint64_t seed, grass::DType dtype) {
  Input in = random_input(B * p, seed * 7919 + p, dtype);
  std::vector<float> y(B * k, std::nanf(""));
  grass::fjlt_cpu(data_of(in, dtype), dtype, B, p, y.data(), k, seed);
  std::vector<double> ref = dense_reference(in.f32, B, p, k, seed);
  const int64_t P = grass::fjlt_padded_size(p);
  const double stages = std::log2(static_cast<double>(P)) + 2;
  int bad = 0;
  for (int64_t b = 0; b < B; ++b) {
    double l1 = 0;
    for (int64_t j = 0; j < p; ++j) l1 += std::fabs(in.f32[b * p + j]);
    const double tol = 2.0 * stages * 6e-8 * l1 / std::sqrt(static_cast<double>(k)) + 1e-30;
    for (int64_t r = 0; r < k; ++r) {
      double d = std::fabs(y[b * k + r] - ref[b * k + r]);
      if (!(d <= tol) && bad++ < 5) EXPECT_NEAR(y[b * k + r], ref[b * k + r], tol);
    }
  }
  if (bad) std::printf("  B=%lld p=%lld k=%lld dtype=%s: %d mismatches\n", (long long)B,
                       (long long)p, (long long)k, grass::dtype_name(dtype), bad);
  EXPECT_EQ(bad, 0);
}

}  // namespace

GRASS_TEST(padded_size_is_next_power_of_two) {
  EXPECT_EQ(grass::fjlt_padded_size(0), int64_t{1});
  EXPECT_EQ(grass::fjlt_padded_size(1), int64_t{1});
  EXPECT_EQ(grass::fjlt_padded_size(2), int64_t{2});
  EXPECT_EQ(grass::fjlt_padded_size(3), int64_t{4});
  EXPECT_EQ(grass::fjlt_padded_size(5), int64_t{8});
  EXPECT_EQ(grass::fjlt_padded_size(1024), int64_t{1024});
  EXPECT_EQ(grass::fjlt_padded_size(1025), int64_t{2048});
  EXPECT_EQ(grass::fjlt_padded_size((int64_t{1} << 40) + 1), int64_t{1} << 41);
  EXPECT_THROWS_WITH(grass::fjlt_padded_size(-1), "p must be");
}

GRASS_TEST(rows_sorted_distinct_in_range) {
  const int64_t cases[][2] = {{1, 1}, {5, 8}, {5, 1}, {1000, 1024}, {1000, 17}, {4096, 4096},
                              {100000, 3000}};
  for (auto& c : cases) {
    const int64_t p = c[0], k = c[1], P = grass::fjlt_padded_size(p);
    std::vector<int64_t> rows(k, -7);
    grass::fjlt_rows(p, k, 11, rows.data());
    bool ok = true;
    for (int64_t r = 0; r < k; ++r) {
      ok = ok && rows[r] >= 0 && rows[r] < P;
      if (r > 0) ok = ok && rows[r] > rows[r - 1];
    }
    EXPECT_TRUE(ok);
    if (k == P) EXPECT_TRUE(rows.back() == P - 1 && rows.front() == 0);
  }
  // Rows depend on the seed.
  std::vector<int64_t> r1(64), r2(64);
  grass::fjlt_rows(100000, 64, 1, r1.data());
  grass::fjlt_rows(100000, 64, 2, r2.data());
  EXPECT_TRUE(r1 != r2);
}

GRASS_TEST(signs_are_balanced_and_seeded) {
  const int64_t p = 20000;
  std::vector<int8_t> s1(p), s2(p), s1b(p);
  grass::fjlt_signs(p, 5, s1.data());
  grass::fjlt_signs(p, 5, s1b.data());
  grass::fjlt_signs(p, 6, s2.data());
  int64_t neg = 0, same = 0;
  bool valid = true;
  for (int64_t j = 0; j < p; ++j) {
    valid = valid && (s1[j] == 1 || s1[j] == -1);
    neg += s1[j] < 0;
    same += s1[j] == s2[j];
  }
  EXPECT_TRUE(valid);
  EXPECT_TRUE(s1 == s1b);
  // Fair coins: 5 standard deviations is sqrt(p) * 2.5 ~ 354.
  EXPECT_NEAR(static_cast<double>(neg), p / 2.0, 354.0);
  EXPECT_NEAR(static_cast<double>(same), p / 2.0, 354.0);
  // A prefix of the signs does not depend on p.
  std::vector<int8_t> short_signs(100);
  grass::fjlt_signs(100, 5, short_signs.data());
  EXPECT_TRUE(std::equal(short_signs.begin(), short_signs.end(), s1.begin()));
}

GRASS_TEST(matches_dense_reference_f32) {
  // p = 1; p a power of two; awkward p; k = 1; k = P; B = 1; P beyond the 4096-float
  // block (cross-block stages, with an odd number of them at P = 2^15).
  check_against_dense(3, 1, 1, 1, grass::DType::F32);
  check_against_dense(2, 2, 2, 2, grass::DType::F32);
  check_against_dense(4, 5, 3, 3, grass::DType::F32);
  check_against_dense(2, 8, 8, 4, grass::DType::F32);
  check_against_dense(5, 13, 16, 5, grass::DType::F32);
  check_against_dense(1, 100, 7, 6, grass::DType::F32);
  check_against_dense(3, 64, 1, 7, grass::DType::F32);
  check_against_dense(2, 1000, 1024, 8, grass::DType::F32);
  check_against_dense(2, 4096, 100, 9, grass::DType::F32);
  check_against_dense(2, 5000, 300, 10, grass::DType::F32);
  check_against_dense(1, 20000, 40, 11, grass::DType::F32);
  check_against_dense(1, 65536, 20, 12, grass::DType::F32);
}

GRASS_TEST(matches_dense_reference_f16_bf16) {
  check_against_dense(3, 37, 20, 21, grass::DType::F16);
  check_against_dense(2, 5000, 64, 22, grass::DType::F16);
  check_against_dense(3, 37, 20, 23, grass::DType::BF16);
  check_against_dense(2, 5000, 64, 24, grass::DType::BF16);
}

GRASS_TEST(norm_preserved_in_expectation) {
  // Over seeds, for fixed x: E ||y||^2 = ||x||^2. Per seed the ratio has variance about
  // 2 / k, so 400 seeds put the mean within ~0.01 of 1; a wrong scale (1/k, or sqrt(P/k))
  // is far outside 0.05.
  const int64_t p = 300, k = 64, n_seeds = 400;
  Input in = random_input(p, 99, grass::DType::F32);
  std::vector<float> ones(p, 1.0f);
  for (const std::vector<float>* x : {&in.f32, &ones}) {
    double xx = 0;
    for (float v : *x) xx += static_cast<double>(v) * v;
    double mean = 0, mean_sq = 0;
    std::vector<float> y(k);
    for (int64_t s = 0; s < n_seeds; ++s) {
      grass::fjlt_cpu(x->data(), grass::DType::F32, 1, p, y.data(), k, 1000 + s);
      double yy = 0;
      for (float v : y) yy += static_cast<double>(v) * v;
      mean += yy / xx / n_seeds;
      mean_sq += (yy / xx) * (yy / xx) / n_seeds;
    }
    EXPECT_NEAR(mean, 1.0, 0.05);
    // The random signs spread even the all-ones vector: the spread stays JL-like
    // (std ~ sqrt(2/k) ~ 0.18), not the 0-or-huge of an unsigned Hadamard.
    EXPECT_TRUE(std::sqrt(mean_sq - mean * mean) < 0.35);
  }
  // Many vectors, one seed: the mean ratio is also ~1.
  const int64_t B = 256;
  Input many = random_input(B * p, 5, grass::DType::F32);
  std::vector<float> y(B * k);
  grass::fjlt_cpu(many.f32.data(), grass::DType::F32, B, p, y.data(), k, 3);
  double mean = 0;
  for (int64_t b = 0; b < B; ++b) {
    double xx = 0, yy = 0;
    for (int64_t j = 0; j < p; ++j) xx += static_cast<double>(many.f32[b * p + j]) * many.f32[b * p + j];
    for (int64_t r = 0; r < k; ++r) yy += static_cast<double>(y[b * k + r]) * y[b * k + r];
    mean += yy / xx / B;
  }
  EXPECT_NEAR(mean, 1.0, 0.1);
}

GRASS_TEST(deterministic_per_seed_and_per_row) {
  const int64_t B = 9, p = 9000, k = 500;
  Input in = random_input(B * p, 1, grass::DType::F32);
  std::vector<float> y1(B * k), y2(B * k), y3(B * k), row(k);
  grass::fjlt_cpu(in.f32.data(), grass::DType::F32, B, p, y1.data(), k, 42);
  grass::fjlt_cpu(in.f32.data(), grass::DType::F32, B, p, y2.data(), k, 42);
  grass::fjlt_cpu(in.f32.data(), grass::DType::F32, B, p, y3.data(), k, 43);
  EXPECT_TRUE(std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float)) == 0);
  EXPECT_TRUE(y1 != y3);
  // A row sketched alone is bitwise the same row of the batch: rows do not interact.
  bool same = true;
  for (int64_t b = 0; b < B; ++b) {
    grass::fjlt_cpu(in.f32.data() + b * p, grass::DType::F32, 1, p, row.data(), k, 42);
    same = same && std::memcmp(row.data(), y1.data() + b * k, k * sizeof(float)) == 0;
  }
  EXPECT_TRUE(same);
}

GRASS_TEST(output_overwritten_and_empty_batch) {
  const int64_t p = 10, k = 4;
  Input in = random_input(2 * p, 8, grass::DType::F32);
  std::vector<float> y1(2 * k, 0.0f), y2(2 * k, 123.0f);
  grass::fjlt_cpu(in.f32.data(), grass::DType::F32, 2, p, y1.data(), k, 1);
  grass::fjlt_cpu(in.f32.data(), grass::DType::F32, 2, p, y2.data(), k, 1);
  EXPECT_TRUE(y1 == y2);
  std::vector<float> untouched(4, 5.0f);
  grass::fjlt_cpu(nullptr, grass::DType::F32, 0, p, untouched.data(), k, 1);
  EXPECT_EQ(untouched[0], 5.0f);
}

GRASS_TEST(argument_errors) {
  std::vector<float> x(10, 1.0f), y(64);
  EXPECT_THROWS_WITH(grass::fjlt_cpu(x.data(), grass::DType::F32, 1, 10, y.data(), 17, 0), "k must be in [1, P = 16]");
  EXPECT_THROWS_WITH(grass::fjlt_cpu(x.data(), grass::DType::F32, 1, 10, y.data(), 0, 0), "got 0");
  EXPECT_THROWS_WITH(grass::fjlt_cpu(x.data(), grass::DType::F32, 1, 10, y.data(), -3, 0), "got -3");
  EXPECT_THROWS_WITH(grass::fjlt_cpu(x.data(), grass::DType::F64, 1, 10, y.data(), 4, 0), "got float64");
  EXPECT_THROWS_WITH(grass::fjlt_cpu(x.data(), grass::DType::F32, -1, 10, y.data(), 4, 0), "B must be");
  std::vector<int64_t> rows(8);
  EXPECT_THROWS_WITH(grass::fjlt_rows(5, 9, 0, rows.data()), "k must be in [1, P = 8]");
  EXPECT_THROWS_WITH(grass::fjlt_rows(5, 0, 0, rows.data()), "k must be");
}

int main() { return grass_test::run_all(); }
