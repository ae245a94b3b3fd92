// Random masks (sorted, distinct, in range, uniform) and the gather, against plain loops.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <set>
#include <vector>

#include "grass/check.h"
#include "grass/mask.h"
#include "harness.h"

namespace {

std::vector<int64_t> mask(int64_t p, int64_t k, uint64_t seed) {
  std::vector<int64_t> idx(k, -7);
  grass::random_mask_indices(p, k, seed, idx.data());
  return idx;
}

bool sorted_distinct_in_range(const std::vector<int64_t>& idx, int64_t p) {
  for (size_t i = 0; i < idx.size(); ++i) {
    if (idx[i] < 0 || idx[i] >= p) return false;
    if (i > 0 && idx[i] <= idx[i - 1]) return false;
  }
  return true;
}

// Upper bound for a chi-square-like statistic with mean `dof`: mean + 6 sd.
double chi2_bound(double dof) { return dof + 6.0 * std::sqrt(2.0 * dof); }

}  // namespace

GRASS_TEST(masks_sorted_distinct_in_range) {
  // Both set representations (a bitmap for dense masks, a hash set for sparse ones).
  for (auto [p, k] : {std::pair<int64_t, int64_t>{1, 1}, {10, 1}, {10, 10}, {1000, 999}, {1000, 37},
                      {1 << 20, 5}, {int64_t{1} << 40, 1000}}) {
    for (uint64_t seed : {0ULL, 1ULL, 12345ULL}) {
      const auto idx = mask(p, k, seed);
      EXPECT_TRUE(sorted_distinct_in_range(idx, p));
      EXPECT_TRUE(idx == mask(p, k, seed));  // seeded
    }
  }
  // k = p: every index.
  const auto all = mask(257, 257, 3);
  for (int64_t i = 0; i < 257; ++i) EXPECT_EQ(all[i], i);
}

GRASS_TEST(seeds_give_different_masks) {
  int same = 0;
  for (uint64_t seed = 0; seed < 50; ++seed) same += mask(100000, 50, seed) == mask(100000, 50, seed + 1);
  EXPECT_EQ(same, 0);
}

GRASS_TEST(inclusion_is_uniform_dense_path) {
  // Each index is kept with probability q = k/p; over n seeds its count has mean n q and
  // variance n q (1 - q), so sum_i (c_i - n q)^2 / (n q (1 - q)) has mean p.
  const int64_t p = 60, k = 17, n = 20000;
  std::vector<int64_t> count(p, 0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i : mask(p, k, 1000 + t)) ++count[i];
  const double q = static_cast<double>(k) / p;
  double stat = 0;
  for (int64_t c : count) stat += (c - n * q) * (c - n * q) / (n * q * (1 - q));
  EXPECT_TRUE(stat < chi2_bound(p));
}

GRASS_TEST(inclusion_is_uniform_sparse_path) {
  // p >> k takes the hash-set path. Indices fall in 64 equal bins uniformly: chi-square
  // with 63 dof over all draws (draws within one mask are nearly independent as k << p).
  const int64_t p = 10000019, k = 500, n = 200, bins = 64;
  std::vector<int64_t> count(bins, 0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i : mask(p, k, 77 + t)) ++count[i * bins / p];
  const double expect = static_cast<double>(k * n) / bins;
  double stat = 0;
  for (int64_t c : count) stat += (c - expect) * (c - expect) / expect;
  EXPECT_TRUE(stat < chi2_bound(bins - 1));
}

GRASS_TEST(pairs_are_uniform) {
  // Floyd's algorithm gives every k-subset the same probability; for p = 6, k = 2 all
  // 15 pairs appear n / 15 times each: chi-square with 14 dof.
  const int64_t n = 30000;
  std::vector<int64_t> count(36, 0);
  for (int64_t t = 0; t < n; ++t) {
    const auto idx = mask(6, 2, 5000 + t);
    ++count[idx[0] * 6 + idx[1]];
  }
  double stat = 0;
  for (int64_t a = 0; a < 6; ++a)
    for (int64_t b = a + 1; b < 6; ++b) stat += std::pow(count[a * 6 + b] - n / 15.0, 2) / (n / 15.0);
  EXPECT_TRUE(stat < chi2_bound(14));
}

GRASS_TEST(mask_errors) {
  std::vector<int64_t> out(4);
  EXPECT_THROWS_WITH(grass::random_mask_indices(0, 1, 0, out.data()), "p must be >= 1, got 0");
  EXPECT_THROWS_WITH(grass::random_mask_indices(3, 4, 0, out.data()), "k must be in [1, p = 3], got 4");
  EXPECT_THROWS_WITH(grass::random_mask_indices(3, 0, 0, out.data()), "k must be in [1, p = 3], got 0");
}

GRASS_TEST(check_indices_names_the_argument) {
  const int64_t good[] = {0, 4, 2, 4};
  grass::check_indices(good, 4, 5, "idx");
  grass::check_indices(nullptr, 0, 5, "idx");  // empty is fine
  const int64_t high[] = {0, 5, 1};
  const int64_t low[] = {0, 1, -2};
  EXPECT_THROWS_WITH(grass::check_indices(high, 3, 5, "mask"), "mask must hold indices in [0, 5), got mask[1] = 5");
  EXPECT_THROWS_WITH(grass::check_indices(low, 3, 5, "idx_in"), "got idx_in[2] = -2");
  EXPECT_THROWS_WITH(grass::check_indices(nullptr, 2, 5, "idx"), "idx must not be null");
  EXPECT_THROWS_WITH(grass::check_indices(good, 4, 0, "idx"), "idx must hold indices in [0, 0)");
}

GRASS_TEST(gather_matches_plain_loop_every_dtype) {
  const int64_t B = 3, p = 1001;
  std::mt19937_64 rng(9);
  std::vector<int64_t> idx;  // unsorted, with duplicates
  for (int i = 0; i < 300; ++i) idx.push_back(static_cast<int64_t>(rng() % p));
  idx.push_back(p - 1);
  idx.push_back(0);
  const int64_t kp = static_cast<int64_t>(idx.size());
  auto check = [&](auto zero, grass::DType dt) {
    using T = decltype(zero);
    std::vector<T> x(B * p);
    for (auto& v : x) v = static_cast<T>(rng());  // arbitrary bit patterns, NaNs included
    std::vector<T> out(B * kp, T(0));
    grass::mask_gather_cpu(x.data(), dt, B, p, idx.data(), kp, out.data());
    int bad = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < kp; ++j) bad += out[b * kp + j] != x[b * p + idx[j]];
    EXPECT_EQ(bad, 0);
  };
  check(uint32_t{}, grass::DType::F32);
  check(uint16_t{}, grass::DType::F16);
  check(uint16_t{}, grass::DType::BF16);
  check(uint64_t{}, grass::DType::F64);
  // B = 1, kp = 1.
  const float x1[3] = {1.0f, 2.0f, 3.0f};
  const int64_t one[1] = {2};
  float o1 = 0;
  grass::mask_gather_cpu(x1, grass::DType::F32, 1, 3, one, 1, &o1);
  EXPECT_EQ(o1, 3.0f);
}

GRASS_TEST(gather_indices_beyond_2_32) {
  // One row of p = 2^32 + 16 bfloat16 (8 GiB of calloc'd address space; only the pages
  // touched below become real memory).
  const int64_t p = (int64_t{1} << 32) + 16;
  std::unique_ptr<uint16_t, decltype(&std::free)> x(
      static_cast<uint16_t*>(std::calloc(static_cast<size_t>(p), sizeof(uint16_t))), &std::free);
  EXPECT_TRUE(x != nullptr);
  if (!x) return;
  const int64_t idx[3] = {5, (int64_t{1} << 32) + 5, p - 1};
  x.get()[idx[1]] = 0x3f80;  // 1.0 in bfloat16
  x.get()[idx[2]] = 0x4000;  // 2.0
  uint16_t out[3] = {9, 9, 9};
  grass::mask_gather_cpu(x.get(), grass::DType::BF16, 1, p, idx, 3, out);
  EXPECT_EQ(out[0], uint16_t{0});
  EXPECT_EQ(out[1], uint16_t{0x3f80});
  EXPECT_EQ(out[2], uint16_t{0x4000});
}

GRASS_TEST(gather_errors) {
  std::vector<float> x(20), out(8, 7.0f);
  const int64_t bad[] = {0, 10};
  EXPECT_THROWS_WITH(grass::mask_gather_cpu(x.data(), grass::DType::F32, 2, 10, bad, 2, out.data()),
                     "idx must hold indices in [0, 10), got idx[1] = 10");
  EXPECT_EQ(out[0], 7.0f);
  const int64_t ok[] = {0, 1};
  EXPECT_THROWS_WITH(grass::mask_gather_cpu(x.data(), grass::DType::F32, -1, 10, ok, 2, out.data()),
                     "B must be >= 0, got -1");
  EXPECT_THROWS_WITH(grass::mask_gather_cpu(x.data(), static_cast<grass::DType>(9), 2, 10, ok, 2, out.data()),
                     "dtype must be");
}

int main() { return grass_test::run_all(); }
