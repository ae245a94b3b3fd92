// kron_cpu against the definition, a plain triple loop in double:
//   out[b, o * d_in' + i] = sum_t g[b, t, o] * a~[b, t, i],  a~ = [a, 1] with bias.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "grass/check.h"
#include "grass/kron.h"
#include "harness.h"

namespace {

// Values in a given dtype and their exact float values (bf16: top half of a float;
// f16: normals (1 + m/1024) 2^(e-15), decoded here independently of dtype.h).
struct Tensor {
  std::vector<float> value;
  std::vector<uint16_t> bits;
  const void* data(grass::DType dt) const {
    return dt == grass::DType::F32 ? static_cast<const void*>(value.data())
                                   : static_cast<const void*>(bits.data());
  }
};
Tensor random_tensor(int64_t n, std::mt19937_64& rng, grass::DType dt) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Tensor x;
  x.value.resize(n);
  if (dt != grass::DType::F32) x.bits.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    if (dt == grass::DType::F32) {
      x.value[i] = normal(rng);
    } else if (dt == grass::DType::BF16) {
      float v = normal(rng);
      uint32_t u;
      std::memcpy(&u, &v, 4);
      x.bits[i] = static_cast<uint16_t>(u >> 16);
      u = static_cast<uint32_t>(x.bits[i]) << 16;
      std::memcpy(&x.value[i], &u, 4);
    } else {
      uint16_t sign = (rng() & 1) ? 0x8000 : 0;
      uint16_t e = static_cast<uint16_t>(11 + rng() % 7);
      uint16_t m = static_cast<uint16_t>(rng() & 0x3ff);
      x.bits[i] = static_cast<uint16_t>(sign | (e << 10) | m);
      double v = std::ldexp(1.0 + m / 1024.0, e - 15);
      x.value[i] = static_cast<float>(sign ? -v : v);
    }
  }
  return x;
}

void check_kron(int64_t B, int64_t T, int64_t d_in, int64_t d_out, bool bias, grass::DType dt,
                uint64_t seed) {
  std::mt19937_64 rng(seed);
  Tensor a = random_tensor(B * T * d_in, rng, dt);
  Tensor g = random_tensor(B * T * d_out, rng, dt);
  grass::KronShape shape;
  shape.B = B;
  shape.T = T;
  shape.d_in = d_in;
  shape.d_out = d_out;
  shape.bias = bias;
  const int64_t d_aug = d_in + (bias ? 1 : 0);
  std::vector<float> out(B * d_out * d_aug, std::nanf(""));
  grass::kron_cpu(a.data(dt), g.data(dt), dt, shape, out.data());

  int bad = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t o = 0; o < d_out; ++o)
      for (int64_t i = 0; i < d_aug; ++i) {
        double ref = 0, mag = 0;
        for (int64_t t = 0; t < T; ++t) {
          double gv = g.value[(b * T + t) * d_out + o];
          double av = i < d_in ? a.value[(b * T + t) * d_in + i] : 1.0;
          ref += gv * av;
          mag += std::fabs(gv * av);
        }
        // float32 accumulation over T terms: at most T roundings of partial sums <= mag.
        const double tol = (T + 1) * 6e-8 * mag + 1e-30;
        const double got = out[(b * d_out + o) * d_aug + i];
        if (!(std::fabs(got - ref) <= tol) && bad++ < 5) EXPECT_NEAR(got, ref, tol);
      }
  if (bad)
    std::printf("  B=%lld T=%lld d_in=%lld d_out=%lld bias=%d %s: %d mismatches\n", (long long)B,
                (long long)T, (long long)d_in, (long long)d_out, (int)bias, grass::dtype_name(dt), bad);
  EXPECT_EQ(bad, 0);
}

}  // namespace

GRASS_TEST(single_token_outer_product) {
  check_kron(3, 1, 5, 7, false, grass::DType::F32, 1);
  check_kron(3, 1, 5, 7, true, grass::DType::F32, 2);
  check_kron(2, 1, 1, 1, false, grass::DType::F32, 3);
  check_kron(2, 1, 1, 1, true, grass::DType::F32, 4);
}

GRASS_TEST(sequences_sum_over_tokens) {
  check_kron(2, 4, 33, 70, true, grass::DType::F32, 5);   // crosses 32-wide and 4-row tiles
  check_kron(4, 7, 40, 130, false, grass::DType::F32, 6);  // > 64 output rows: several items
  check_kron(2, 3, 300, 5, true, grass::DType::F32, 7);    // > 256 input columns: several panels
  check_kron(1, 16, 1, 9, false, grass::DType::F32, 8);    // d_in = 1
  check_kron(3, 5, 9, 1, true, grass::DType::F32, 9);      // d_out = 1
  check_kron(1, 2, 64, 64, false, grass::DType::F32, 10);  // exact tiles, B = 1
}

GRASS_TEST(half_precision_inputs) {
  check_kron(2, 3, 37, 11, true, grass::DType::F16, 11);
  check_kron(2, 3, 37, 11, false, grass::DType::BF16, 12);
  check_kron(3, 1, 70, 66, true, grass::DType::BF16, 13);
}

GRASS_TEST(bias_column_is_token_sum_of_g) {
  // With a = 0 only the bias column survives, and it is exactly sum_t g[t, o].
  const int64_t B = 2, T = 3, d_in = 4, d_out = 3;
  std::vector<float> a(B * T * d_in, 0.0f), g(B * T * d_out), out(B * d_out * (d_in + 1));
  for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(i) * 0.25f - 1.0f;
  grass::KronShape shape{B, T, d_in, d_out, true};
  grass::kron_cpu(a.data(), g.data(), grass::DType::F32, shape, out.data());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t o = 0; o < d_out; ++o) {
      float s = 0;
      for (int64_t t = 0; t < T; ++t) s += g[(b * T + t) * d_out + o];
      EXPECT_EQ(out[(b * d_out + o) * (d_in + 1) + d_in], s);
      for (int64_t i = 0; i < d_in; ++i) EXPECT_EQ(out[(b * d_out + o) * (d_in + 1) + i], 0.0f);
    }
}

GRASS_TEST(deterministic_and_overwrites) {
  const int64_t B = 5, T = 6, d_in = 50, d_out = 90;
  std::mt19937_64 rng(3);
  Tensor a = random_tensor(B * T * d_in, rng, grass::DType::F32);
  Tensor g = random_tensor(B * T * d_out, rng, grass::DType::F32);
  grass::KronShape shape{B, T, d_in, d_out, true};
  std::vector<float> o1(B * d_out * (d_in + 1), 0.0f), o2(o1.size(), 9.0f);
  grass::kron_cpu(a.value.data(), g.value.data(), grass::DType::F32, shape, o1.data());
  grass::kron_cpu(a.value.data(), g.value.data(), grass::DType::F32, shape, o2.data());
  EXPECT_TRUE(std::memcmp(o1.data(), o2.data(), o1.size() * sizeof(float)) == 0);
  // A sample alone gives bitwise the same block as inside the batch.
  grass::KronShape one{1, T, d_in, d_out, true};
  std::vector<float> o3(d_out * (d_in + 1));
  grass::kron_cpu(a.value.data() + 3 * T * d_in, g.value.data() + 3 * T * d_out, grass::DType::F32,
                  one, o3.data());
  EXPECT_TRUE(std::memcmp(o3.data(), o1.data() + 3 * o3.size(), o3.size() * sizeof(float)) == 0);
}

GRASS_TEST(empty_batch_and_argument_errors) {
  std::vector<float> a(8, 1.0f), g(8, 1.0f), out(64, 7.0f);
  grass::KronShape empty{0, 1, 2, 2, false};
  grass::kron_cpu(nullptr, nullptr, grass::DType::F32, empty, out.data());
  EXPECT_EQ(out[0], 7.0f);
  EXPECT_THROWS_WITH(grass::kron_cpu(a.data(), g.data(), grass::DType::F32, grass::KronShape{1, 0, 2, 2, false}, out.data()),
                     "shape.T must be >= 1, got 0");
  EXPECT_THROWS_WITH(grass::kron_cpu(a.data(), g.data(), grass::DType::F32, grass::KronShape{1, 1, 0, 2, false}, out.data()),
                     "shape.d_in must be >= 1, got 0");
  EXPECT_THROWS_WITH(grass::kron_cpu(a.data(), g.data(), grass::DType::F32, grass::KronShape{1, 1, 2, 0, false}, out.data()),
                     "shape.d_out must be >= 1, got 0");
  EXPECT_THROWS_WITH(grass::kron_cpu(a.data(), g.data(), grass::DType::F32, grass::KronShape{-1, 1, 2, 2, false}, out.data()),
                     "shape.B must be >= 0");
  EXPECT_THROWS_WITH(grass::kron_cpu(a.data(), g.data(), grass::DType::F64, grass::KronShape{1, 1, 2, 2, false}, out.data()),
                     "got float64");
}

int main() { return grass_test::run_all(); }
