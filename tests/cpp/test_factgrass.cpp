// factgrass_cpu against (1) an explicit reference in double: gather the masked factors,
// form z = sum_t g' (x) a~' and apply S built column by column from SjltHash; and (2) the
// composition sjlt_cpu(kron_cpu(masked factors)) with the same params.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "grass/check.h"
#include "grass/factgrass.h"
#include "grass/hash.h"
#include "grass/kron.h"
#include "grass/sjlt.h"
#include "harness.h"

namespace {

struct Problem {
  grass::KronShape shape;
  std::vector<float> a, g;             // float values [B, T, d_in], [B, T, d_out]
  std::vector<uint16_t> a_bits, g_bits;  // the same values as bf16 when dtype is BF16
  std::vector<int64_t> idx_in, idx_out;
  grass::DType dtype = grass::DType::F32;
  const void* a_data() const {
    return dtype == grass::DType::F32 ? static_cast<const void*>(a.data()) : a_bits.data();
  }
  const void* g_data() const {
    return dtype == grass::DType::F32 ? static_cast<const void*>(g.data()) : g_bits.data();
  }
};

// Random factors (bf16 values rounded down from normals when dtype is BF16) and random
// index lists: unsorted, and with bias the ones column d_in included.
Problem make_problem(int64_t B, int64_t T, int64_t d_in, int64_t d_out, bool bias, int64_t k_in,
                     int64_t k_out, grass::DType dt, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Problem pr;
  pr.shape = grass::KronShape{B, T, d_in, d_out, bias};
  pr.dtype = dt;
  auto fill = [&](std::vector<float>& v, std::vector<uint16_t>& bits, int64_t n) {
    v.resize(n);
    if (dt == grass::DType::BF16) bits.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      v[i] = normal(rng);
      if (dt == grass::DType::BF16) {
        uint32_t u;
        std::memcpy(&u, &v[i], 4);
        bits[i] = static_cast<uint16_t>(u >> 16);
        u &= 0xffff0000u;
        std::memcpy(&v[i], &u, 4);
      }
    }
  };
  fill(pr.a, pr.a_bits, B * T * d_in);
  fill(pr.g, pr.g_bits, B * T * d_out);
  const int64_t d_aug = d_in + (bias ? 1 : 0);
  for (int64_t i = 0; i < k_in; ++i) pr.idx_in.push_back(static_cast<int64_t>(rng() % d_aug));
  if (bias) pr.idx_in[k_in / 2] = d_in;  // the bias column is always selected once
  for (int64_t o = 0; o < k_out; ++o) pr.idx_out.push_back(static_cast<int64_t>(rng() % d_out));
  return pr;
}

// y_ref[b] = S z[b] in double, S from SjltHash: entry sign / sqrt(s) at each replica's bucket.
std::vector<double> reference(const Problem& pr, const grass::SjltParams& params,
                              std::vector<double>* magnitude) {
  const auto& sh = pr.shape;
  const int64_t k_in = pr.idx_in.size(), k_out = pr.idx_out.size();
  const grass::SjltHash hash(params.seed, params.k, params.s);
  std::vector<double> y(sh.B * params.k, 0.0), mag(sh.B * params.k, 0.0);
  for (int64_t b = 0; b < sh.B; ++b)
    for (int64_t o = 0; o < k_out; ++o)
      for (int64_t i = 0; i < k_in; ++i) {
        double z = 0, zmag = 0;
        for (int64_t t = 0; t < sh.T; ++t) {
          double gv = pr.g[(b * sh.T + t) * sh.d_out + pr.idx_out[o]];
          double av = pr.idx_in[i] == sh.d_in ? 1.0 : pr.a[(b * sh.T + t) * sh.d_in + pr.idx_in[i]];
          z += gv * av;
          zmag += std::fabs(gv * av);
        }
        for (int64_t r = 0; r < params.s; ++r) {
          int64_t bucket;
          int neg;
          hash.code(o * k_in + i, r, &bucket, &neg);
          y[b * params.k + bucket] += (neg ? -z : z) / std::sqrt(static_cast<double>(params.s));
          mag[b * params.k + bucket] += zmag / std::sqrt(static_cast<double>(params.s));
        }
      }
  *magnitude = mag;
  return y;
}

std::vector<float> run(const Problem& pr, const grass::SjltParams& params) {
  std::vector<float> y(pr.shape.B * params.k, std::nanf(""));
  grass::factgrass_cpu(pr.a_data(), pr.g_data(), pr.dtype, pr.shape, pr.idx_in.data(),
                       pr.idx_in.size(), pr.idx_out.data(), pr.idx_out.size(), y.data(), params);
  return y;
}

void check_reference(int64_t B, int64_t T, int64_t d_in, int64_t d_out, bool bias, int64_t k_in,
                     int64_t k_out, int64_t k, int64_t s, grass::DType dt, uint64_t seed) {
  Problem pr = make_problem(B, T, d_in, d_out, bias, k_in, k_out, dt, seed);
  grass::SjltParams params;
  params.k = k;
  params.s = s;
  params.seed = seed + 100;
  std::vector<float> y = run(pr, params);
  std::vector<double> mag;
  std::vector<double> ref = reference(pr, params, &mag);
  int bad = 0;
  for (size_t e = 0; e < y.size(); ++e) {
    // float32 sums: T roundings per z, then one per term added into the bucket.
    const double tol = 1e-6 * (T + 8) * mag[e] + 1e-30;
    if (!(std::fabs(y[e] - ref[e]) <= tol) && bad++ < 5) EXPECT_NEAR(y[e], ref[e], tol);
  }
  if (bad)
    std::printf("  B=%lld T=%lld d_in=%lld d_out=%lld bias=%d k_in=%lld k_out=%lld k=%lld s=%lld: %d bad\n",
                (long long)B, (long long)T, (long long)d_in, (long long)d_out, (int)bias,
                (long long)k_in, (long long)k_out, (long long)k, (long long)s, bad);
  EXPECT_EQ(bad, 0);
}

}  // namespace

GRASS_TEST(matches_explicit_reference) {
  //               B  T  d_in d_out bias k_in k_out  k   s
  check_reference(3, 1, 20, 30, false, 7, 9, 16, 1, grass::DType::F32, 1);  // T = 1
  check_reference(2, 5, 20, 30, false, 7, 9, 16, 1, grass::DType::F32, 2);  // T > 1
  check_reference(2, 5, 20, 30, true, 8, 6, 16, 3, grass::DType::F32, 3);   // bias, s > 1
  check_reference(2, 3, 40, 50, true, 33, 13, 64, 4, grass::DType::F32, 4);  // k_in > 32
  check_reference(4, 2, 9, 7, false, 5, 5, 1, 1, grass::DType::F32, 5);     // k = 1
  check_reference(1, 4, 1, 1, true, 2, 1, 8, 8, grass::DType::F32, 6);      // d_in = d_out = 1, s = k
  check_reference(2, 3, 64, 64, true, 1, 1, 5, 2, grass::DType::F32, 7);    // k_in = k_out = 1
  check_reference(2, 6, 30, 40, true, 10, 12, 32, 2, grass::DType::BF16, 8);
}

GRASS_TEST(tiles_of_output_rows) {
  // k_in * k_out * s = 1024 * 1024 * 8 codes exceeds one tile (2^22 codes): two tiles.
  check_reference(2, 1, 1100, 1030, false, 1024, 1024, 256, 8, grass::DType::F32, 9);
}

GRASS_TEST(equals_sjlt_of_masked_kron) {
  // The same params applied to kron_cpu of the gathered factors (a~' as an explicit
  // input without bias): factgrass must agree to 1e-6 relative.
  const int64_t B = 3, T = 4, d_in = 30, d_out = 25, k_in = 12, k_out = 10;
  for (int64_t s : {1, 4}) {
    Problem pr = make_problem(B, T, d_in, d_out, true, k_in, k_out, grass::DType::F32, 20 + s);
    grass::SjltParams params;
    params.k = 48;
    params.s = s;
    params.seed = 77;
    std::vector<float> y = run(pr, params);

    std::vector<float> am(B * T * k_in), gm(B * T * k_out);
    for (int64_t bt = 0; bt < B * T; ++bt) {
      for (int64_t i = 0; i < k_in; ++i)
        am[bt * k_in + i] = pr.idx_in[i] == d_in ? 1.0f : pr.a[bt * d_in + pr.idx_in[i]];
      for (int64_t o = 0; o < k_out; ++o) gm[bt * k_out + o] = pr.g[bt * d_out + pr.idx_out[o]];
    }
    std::vector<float> z(B * k_out * k_in), y2(B * params.k);
    grass::kron_cpu(am.data(), gm.data(), grass::DType::F32, grass::KronShape{B, T, k_in, k_out, false},
                    z.data());
    grass::sjlt_cpu(z.data(), grass::DType::F32, B, k_in * k_out, y2.data(), params);
    double scale = 0;
    for (float v : y2) scale = std::max(scale, static_cast<double>(std::fabs(v)));
    int bad = 0;
    for (size_t e = 0; e < y.size(); ++e)
      if (!(std::fabs(y[e] - y2[e]) <= 1e-6 * scale) && bad++ < 5) EXPECT_NEAR(y[e], y2[e], 1e-6 * scale);
    EXPECT_EQ(bad, 0);
  }
}

GRASS_TEST(deterministic_and_seeded) {
  Problem pr = make_problem(6, 3, 40, 40, true, 16, 16, grass::DType::F32, 31);
  grass::SjltParams params;
  params.k = 32;
  params.s = 2;
  params.seed = 5;
  std::vector<float> y1 = run(pr, params), y2 = run(pr, params);
  EXPECT_TRUE(std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float)) == 0);
  params.seed = 6;
  std::vector<float> y3 = run(pr, params);
  EXPECT_TRUE(y1 != y3);
}

GRASS_TEST(empty_batch_and_argument_errors) {
  Problem pr = make_problem(1, 2, 6, 5, true, 3, 2, grass::DType::F32, 41);
  grass::SjltParams params;
  params.k = 8;
  std::vector<float> y(8, 3.0f);
  const int64_t* ii = pr.idx_in.data();
  const int64_t* io = pr.idx_out.data();
  auto call = [&](const grass::KronShape& sh, const int64_t* i_in, int64_t k_in, const int64_t* i_out,
                  int64_t k_out, const grass::SjltParams& p, grass::DType dt = grass::DType::F32) {
    grass::factgrass_cpu(pr.a.data(), pr.g.data(), dt, sh, i_in, k_in, i_out, k_out, y.data(), p);
  };
  grass::KronShape empty = pr.shape;
  empty.B = 0;
  call(empty, ii, 3, io, 2, params);
  EXPECT_EQ(y[0], 3.0f);

  const int64_t in_bias[] = {0, 6};    // 6 = d_in: the ones column, valid with bias only
  const int64_t in_over[] = {0, 7};    // 7 >= d_in' = 7
  const int64_t out_over[] = {1, 5};   // 5 >= d_out
  const int64_t negative[] = {-1};
  call(pr.shape, in_bias, 2, io, 2, params);  // fine with bias
  grass::KronShape no_bias = pr.shape;
  no_bias.bias = false;
  EXPECT_THROWS_WITH(call(no_bias, in_bias, 2, io, 2, params), "idx_in");
  EXPECT_THROWS_WITH(call(pr.shape, in_over, 2, io, 2, params), "idx_in");
  EXPECT_THROWS_WITH(call(pr.shape, negative, 1, io, 2, params), "idx_in");
  EXPECT_THROWS_WITH(call(pr.shape, ii, 3, out_over, 2, params), "idx_out");
  EXPECT_THROWS_WITH(call(pr.shape, ii, 0, io, 2, params), "k_in must be >= 1, got 0");
  EXPECT_THROWS_WITH(call(pr.shape, ii, 3, io, -2, params), "k_out must be >= 1, got -2");
  grass::KronShape bad_t = pr.shape;
  bad_t.T = 0;
  EXPECT_THROWS_WITH(call(bad_t, ii, 3, io, 2, params), "shape.T must be >= 1, got 0");
  EXPECT_THROWS_WITH(call(pr.shape, ii, 3, io, 2, params, grass::DType::F64), "got float64");
  grass::SjltParams bad_k = params;
  bad_k.k = 0;
  EXPECT_THROWS_WITH(call(pr.shape, ii, 3, io, 2, bad_k), "k");
  grass::SjltParams bad_s = params;
  bad_s.s = 9;
  EXPECT_THROWS_WITH(call(pr.shape, ii, 3, io, 2, bad_s), "s");
}

int main() { return grass_test::run_all(); }
