// masked_sjlt_cpu (GraSS) against its unfused composition sjlt_cpu(mask_gather_cpu(x))
// and against S built explicitly from sjlt_codes, applied in double to x[:, idx].
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
#include "grass/mask.h"
#include "grass/masked_sjlt.h"
#include "grass/sjlt.h"
#include "harness.h"
#include "sketch_reference.h"

using grass_test::sjlt_params;

namespace {

std::vector<float> run_fused(const grass_test::Input& in, int64_t B, int64_t p, const std::vector<int64_t>& idx,
                             const grass::SjltParams& params) {
  std::vector<float> y(B * params.k, std::nanf(""));
  grass::masked_sjlt_cpu(in.data(), in.dtype, B, p, idx.data(), static_cast<int64_t>(idx.size()), y.data(),
                         params);
  return y;
}

// sjlt_cpu of the gathered [B, kp] matrix (in x's dtype).
std::vector<float> run_unfused(const grass_test::Input& in, int64_t B, int64_t p, const std::vector<int64_t>& idx,
                               const grass::SjltParams& params) {
  const int64_t kp = static_cast<int64_t>(idx.size());
  const int64_t width = in.dtype == grass::DType::F32 ? 4 : 2;
  std::vector<unsigned char> gathered(static_cast<size_t>(B * kp * width));
  grass::mask_gather_cpu(in.data(), in.dtype, B, p, idx.data(), kp, gathered.data());
  std::vector<float> y(B * params.k, std::nanf(""));
  grass::sjlt_cpu(gathered.data(), in.dtype, B, kp, y.data(), params);
  return y;
}

std::vector<int64_t> random_indices(int64_t n, int64_t p, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> idx(n);
  for (auto& i : idx) i = static_cast<int64_t>(rng() % p);  // unsorted, duplicates possible
  return idx;
}

void check_case(int64_t B, int64_t p, int64_t kp, int64_t k, int64_t s, grass::DType dt, bool sorted_mask,
                uint64_t seed) {
  const grass_test::Input in = grass_test::random_input(B * p, seed, dt, 0.1);
  std::vector<int64_t> idx(kp);
  if (sorted_mask)
    grass::random_mask_indices(p, kp, seed, idx.data());
  else
    idx = random_indices(kp, p, seed);
  const grass::SjltParams params = sjlt_params(k, s, seed + 3);
  const std::vector<float> y = run_fused(in, B, p, idx, params);
  // Bitwise: the gather is exact (bits are copied) and both kernels add column j of the
  // masked matrix into the same bucket, in the same order, with the same scaling.
  EXPECT_TRUE(grass_test::bitwise_equal(y, run_unfused(in, B, p, idx, params)));
  // And to float tolerance against the explicit S applied in double.
  std::vector<float> masked(B * kp);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < kp; ++j) masked[b * kp + j] = in.f32[b * p + idx[j]];
  const auto ref = grass_test::apply_explicit(grass_test::explicit_sjlt(kp, params), masked, B);
  EXPECT_EQ(grass_test::count_mismatches(y, ref, "masked_sjlt_cpu"), 0);
}

}  // namespace

GRASS_TEST(equals_unfused_and_reference) {
  //        B     p    kp    k  s
  check_case(3, 1000, 300, 64, 1, grass::DType::F32, true, 1);
  check_case(1, 777, 1, 1, 1, grass::DType::F32, true, 2);            // B = 1, kp = 1, k = 1
  check_case(5, 1031, 500, 17, 3, grass::DType::F32, false, 3);        // unsorted, duplicates, s > 1
  check_case(2, 50, 50, 8, 8, grass::DType::F32, true, 4);             // kp = p, s = k
  check_case(9, 20011, 9000, 100, 2, grass::DType::F32, true, 5);      // several column tiles
  check_case(4, 3001, 1000, 33, 1, grass::DType::BF16, false, 6);
  check_case(4, 3001, 1000, 33, 2, grass::DType::F16, true, 7);
  // Full blocks of 16 rows and a partial one.
  check_case(35, 4000, 1500, 128, 1, grass::DType::F32, true, 8);
  check_case(17, 2000, 700, 50, 3, grass::DType::BF16, false, 9);
}

GRASS_TEST(large_k_equals_unfused) {
  // k above the blocked path's limit (2^18): rows one by one, still equal to the unfused
  // composition bit for bit.
  const int64_t B = 18, p = 3000, kp = 1000, k = 300007;
  const grass_test::Input in = grass_test::random_input(B * p, 21, grass::DType::F32);
  std::vector<int64_t> idx = random_indices(kp, p, 22);
  const grass::SjltParams params = sjlt_params(k, 3, 23);
  EXPECT_TRUE(grass_test::bitwise_equal(run_fused(in, B, p, idx, params), run_unfused(in, B, p, idx, params)));
}

GRASS_TEST(dense_masks_read_x_tile_by_tile) {
  // Sorted masks keeping at least 1 column in 16 take the tile-by-tile path (full blocks
  // of 16 rows): every other column plus the last one, whose 16-column tile is partial
  // (p = 1001), for each dtype and s = 1, 2.
  const int64_t p = 1001;
  std::vector<int64_t> idx;
  for (int64_t j = 0; j < p - 1; j += 2) idx.push_back(j);
  idx.push_back(p - 1);
  for (grass::DType dt : {grass::DType::F32, grass::DType::F16, grass::DType::BF16}) {
    for (int64_t s : {1, 2}) {
      const int64_t B = 21;
      const grass_test::Input in = grass_test::random_input(B * p, 40 + s, dt, 0.1);
      const grass::SjltParams params = sjlt_params(48, s, 41);
      const std::vector<float> y = run_fused(in, B, p, idx, params);
      EXPECT_TRUE(grass_test::bitwise_equal(y, run_unfused(in, B, p, idx, params)));
      std::vector<float> masked(B * idx.size());
      for (int64_t b = 0; b < B; ++b)
        for (size_t j = 0; j < idx.size(); ++j) masked[b * idx.size() + j] = in.f32[b * p + idx[j]];
      const auto ref = grass_test::apply_explicit(grass_test::explicit_sjlt(idx.size(), params), masked, B);
      EXPECT_EQ(grass_test::count_mismatches(y, ref, "masked_sjlt_cpu, dense mask"), 0);
    }
  }
}

GRASS_TEST(column_ranges_equal_unfused_for_any_threads) {
  // k' above one column range (2^17 masked columns): summed range by range, the same bits
  // as the unfused composition, for 1 and 2 threads (B = 16 and B = 2 spread (row group,
  // range) pairs over 2 threads).
  const int64_t p = 350000, kp = 300000;  // three ranges: the fold order matters
  std::vector<int64_t> idx(kp);
  grass::random_mask_indices(p, kp, 31, idx.data());
  for (int64_t B : {2, 16}) {
    const grass_test::Input in = grass_test::random_input(B * p, 32 + B, grass::DType::F32);
    const grass::SjltParams params = sjlt_params(100, 2, 33);
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    const std::vector<float> one = run_fused(in, B, p, idx, params);
    omp_set_num_threads(2);
    const std::vector<float> two = run_fused(in, B, p, idx, params);
    omp_set_num_threads(saved);
    EXPECT_TRUE(grass_test::bitwise_equal(one, two));
    EXPECT_TRUE(grass_test::bitwise_equal(two, run_unfused(in, B, p, idx, params)));
  }
}

GRASS_TEST(empty_mask_gives_zeros) {
  const grass_test::Input in = grass_test::random_input(2 * 10, 1, grass::DType::F32);
  std::vector<float> y(2 * 8, 7.0f);
  grass::masked_sjlt_cpu(in.data(), grass::DType::F32, 2, 10, nullptr, 0, y.data(), sjlt_params(8, 1, 0));
  for (float v : y) EXPECT_EQ(v, 0.0f);
}

GRASS_TEST(seeded_deterministic_thread_independent) {
  const int64_t B = 40, p = 5000;
  const grass_test::Input in = grass_test::random_input(B * p, 11, grass::DType::F32);
  std::vector<int64_t> idx(1200);
  grass::random_mask_indices(p, 1200, 4, idx.data());
  const grass::SjltParams params = sjlt_params(128, 2, 21);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const std::vector<float> one = run_fused(in, B, p, idx, params);
  omp_set_num_threads(2);  // more threads than this machine has cores would only measure spinning
  EXPECT_TRUE(grass_test::bitwise_equal(run_fused(in, B, p, idx, params), one));
  omp_set_num_threads(saved);
  const std::vector<float> other = run_fused(in, B, p, idx, sjlt_params(128, 2, 22));
  int64_t same = 0;
  for (size_t e = 0; e < one.size(); ++e) same += other[e] == one[e];
  EXPECT_TRUE(same < static_cast<int64_t>(one.size()) / 10);
}

GRASS_TEST(mask_indices_beyond_2_32) {
  // One row of p = 2^32 + 16 bfloat16 (8 GiB of calloc'd address space; only touched pages
  // become memory). The fused kernel reads only the masked columns.
  const int64_t p = (int64_t{1} << 32) + 16;
  std::unique_ptr<uint16_t, decltype(&std::free)> x(
      static_cast<uint16_t*>(std::calloc(static_cast<size_t>(p), sizeof(uint16_t))), &std::free);
  EXPECT_TRUE(x != nullptr);
  if (!x) return;
  const std::vector<int64_t> idx = {7, (int64_t{1} << 32) + 7, p - 1};
  x.get()[idx[1]] = 0x3f80;  // 1.0
  x.get()[idx[2]] = 0xc040;  // -3.0
  const grass::SjltParams params = sjlt_params(16, 1, 2);
  std::vector<float> y(16, std::nanf(""));
  grass::masked_sjlt_cpu(x.get(), grass::DType::BF16, 1, p, idx.data(), 3, y.data(), params);
  std::vector<double> ref(16, 0.0);
  const double vals[3] = {0.0, 1.0, -3.0};
  for (int64_t j = 0; j < 3; ++j) {
    int64_t bucket;
    int8_t sign;
    grass::sjlt_codes(j, 1, params, &bucket, &sign);  // column j of the masked vector
    ref[bucket] += sign * vals[j];
  }
  for (int64_t o = 0; o < 16; ++o) EXPECT_EQ(y[o], static_cast<float>(ref[o]));
}

GRASS_TEST(argument_errors) {
  std::vector<float> x(2 * 10, 1.0f), y(2 * 8, 7.0f);
  const int64_t ok[] = {0, 9};
  const int64_t bad[] = {0, 10};
  auto call = [&](const int64_t* idx, int64_t kp, int64_t k, int64_t s, grass::DType dt = grass::DType::F32) {
    grass::masked_sjlt_cpu(x.data(), dt, 2, 10, idx, kp, y.data(), sjlt_params(k, s, 0));
  };
  EXPECT_THROWS_WITH(call(bad, 2, 8, 1), "idx must hold indices in [0, 10), got idx[1] = 10");
  EXPECT_EQ(y[0], 7.0f);  // nothing written
  EXPECT_THROWS_WITH(call(ok, -1, 8, 1), "kp must be >= 0, got -1");
  EXPECT_THROWS_WITH(call(ok, 2, 0, 1), "k must be in [1, 2^31 - 1], got 0");
  EXPECT_THROWS_WITH(call(ok, 2, 8, 0), "s must be in [1, k = 8], got 0");
  EXPECT_THROWS_WITH(call(ok, 2, 8, 9), "s must be in [1, k = 8], got 9");
  EXPECT_THROWS_WITH(call(ok, 2, 8, 1, grass::DType::F64), "got float64");
}

int main() { return grass_test::run_all(); }
