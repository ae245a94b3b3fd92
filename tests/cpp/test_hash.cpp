// The counter-based hash: draw() is the SplitMix64 sequence, mix64 avalanches, and
// SjltHash places replicas in disjoint bucket blocks with uniform buckets and fair signs.
#include <cmath>
#include <cstdint>
#include <set>
#include <vector>

#include "grass/hash.h"
#include "harness.h"

namespace {

// SplitMix64 as published (Steele, Lea, Flood 2014; Vigna's reference code):
// state += golden gamma; z = state; three xor-shift-multiply rounds.
struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
};

// Upper bound for a chi-square statistic with `dof` degrees of freedom: mean + 6 sd.
double chi2_bound(double dof) { return dof + 6.0 * std::sqrt(2.0 * dof); }

}  // namespace

GRASS_TEST(draw_is_the_splitmix64_sequence) {
  for (uint64_t key : {0ULL, 1ULL, 0x123456789abcdefULL, ~0ULL}) {
    SplitMix64 ref{key};
    for (uint64_t c = 0; c < 1000; ++c) EXPECT_TRUE(grass::draw(key, c) == ref.next());
  }
}

GRASS_TEST(mix64_avalanche) {
  // Flipping one input bit flips each output bit with probability 1/2: over n inputs and
  // 64 input bits the mean number of flipped output bits is 32 with sd 4 / sqrt(64 n).
  const int n = 2000;
  double total = 0;
  for (int i = 0; i < n; ++i) {
    const uint64_t v = grass::draw(7, i);
    for (int bit = 0; bit < 64; ++bit)
      total += __builtin_popcountll(grass::mix64(v) ^ grass::mix64(v ^ (1ULL << bit)));
  }
  const double mean = total / (64.0 * n);
  EXPECT_NEAR(mean, 32.0, 6.0 * 4.0 / std::sqrt(64.0 * n));
}

GRASS_TEST(streams_and_seeds_give_distinct_keys) {
  std::set<uint64_t> keys;
  for (uint64_t seed = 0; seed < 100; ++seed)
    for (uint64_t stream : {grass::kStreamSjlt, grass::kStreamMask, grass::kStreamFjltSign,
                            grass::kStreamFjltRows})
      keys.insert(grass::stream_key(seed, stream));
  EXPECT_EQ(keys.size(), size_t{400});
}

GRASS_TEST(replicas_fall_in_disjoint_blocks_covering_k) {
  // For every (k, s) the s blocks partition [0, k), widths differ by at most one, and a
  // column's s buckets are distinct and in their own block.
  for (int64_t k : {1, 2, 7, 64, 100, 1000}) {
    for (int64_t s : {1, 2, 3, 7}) {
      if (s > k) continue;
      const grass::SjltHash hash(11, k, s);
      int64_t covered = 0, min_w = k, max_w = 0;
      for (int64_t r = 0; r < s; ++r) {
        const int64_t lo = r * k / s, hi = (r + 1) * k / s;
        covered += hi - lo;
        min_w = std::min(min_w, hi - lo);
        max_w = std::max(max_w, hi - lo);
      }
      EXPECT_EQ(covered, k);
      EXPECT_TRUE(max_w - min_w <= 1);
      for (int64_t j = 0; j < 500; ++j) {
        std::set<int64_t> seen;
        for (int64_t r = 0; r < s; ++r) {
          int64_t bucket;
          int neg;
          hash.code(j, r, &bucket, &neg);
          EXPECT_TRUE(bucket >= r * k / s && bucket < (r + 1) * k / s);
          EXPECT_TRUE(neg == 0 || neg == 1);
          seen.insert(bucket);
        }
        EXPECT_EQ(seen.size(), static_cast<size_t>(s));
      }
    }
  }
}

GRASS_TEST(buckets_uniform_signs_fair) {
  // n columns into k buckets: the chi-square statistic against the uniform law stays
  // below mean + 6 sd; the number of negative signs is Binomial(n, 1/2): within 6 sd.
  for (int64_t k : {5, 64, 1000}) {
    const int64_t n = 200 * k;
    const grass::SjltHash hash(3, k, 1);
    std::vector<int64_t> count(k, 0);
    int64_t negatives = 0;
    for (int64_t j = 0; j < n; ++j) {
      int64_t bucket;
      int neg;
      hash.code(j, 0, &bucket, &neg);
      ++count[bucket];
      negatives += neg;
    }
    const double expect = static_cast<double>(n) / k;
    double chi2 = 0;
    for (int64_t c : count) chi2 += (c - expect) * (c - expect) / expect;
    EXPECT_TRUE(chi2 < chi2_bound(k - 1));
    EXPECT_NEAR(negatives, n / 2.0, 6.0 * std::sqrt(n / 4.0));
  }
}

GRASS_TEST(sign_independent_of_bucket) {
  // Per bucket the fraction of negatives is fair: sum over buckets of the squared
  // standardised deviation is chi-square with k dof.
  const int64_t k = 32, n = 200000;
  const grass::SjltHash hash(99, k, 1);
  std::vector<int64_t> count(k, 0), negatives(k, 0);
  for (int64_t j = 0; j < n; ++j) {
    int64_t bucket;
    int neg;
    hash.code(j, 0, &bucket, &neg);
    ++count[bucket];
    negatives[bucket] += neg;
  }
  double chi2 = 0;
  for (int64_t b = 0; b < k; ++b) {
    const double d = negatives[b] - count[b] / 2.0;
    chi2 += d * d / (count[b] / 4.0);
  }
  EXPECT_TRUE(chi2 < chi2_bound(k));
}

GRASS_TEST(huge_column_indices_hash_fine) {
  // Columns beyond 2^32 use the full 64-bit counter: neighbouring huge columns still get
  // uniform buckets (no truncation to 32 bits collapsing them onto small columns).
  const int64_t k = 16, n = 16000;
  const grass::SjltHash hash(5, k, 1);
  std::vector<int64_t> count(k, 0);
  int same_as_truncated = 0;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t col = (int64_t{1} << 40) + j;
    int64_t bucket, low_bucket;
    int neg, low_neg;
    hash.code(col, 0, &bucket, &neg);
    hash.code(col & 0xffffffff, 0, &low_bucket, &low_neg);
    same_as_truncated += (bucket == low_bucket && neg == low_neg);
    ++count[bucket];
  }
  double chi2 = 0;
  for (int64_t c : count) chi2 += (c - n / double(k)) * (c - n / double(k)) / (n / double(k));
  EXPECT_TRUE(chi2 < chi2_bound(k - 1));
  // Agreement with the truncated column happens by chance, with probability 1 / (2k).
  EXPECT_TRUE(same_as_truncated < n / (2.0 * k) + 6.0 * std::sqrt(n / (2.0 * k)));
}

int main() { return grass_test::run_all(); }
