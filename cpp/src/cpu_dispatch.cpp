// Which CPU level the kernels run at, and (with GRASS_CPU_DISPATCH) the public kernel
// functions as forwarders through that level's table. Design: docs/portability.md.
#include "cpu_dispatch.h"

#include <cstdlib>
#include <string>
#include <vector>

#include "grass/check.h"

#if !defined(GRASS_CPU_DISPATCH) && !defined(GRASS_CPU_SINGLE_LEVEL)  // set by cmake/grass_cpu_levels.cmake
#define GRASS_CPU_SINGLE_LEVEL "baseline"
#endif

#if defined(GRASS_CPU_DISPATCH)
extern "C" const grass::detail::CpuKernels grass_cpu_kernels_baseline;
#if defined(GRASS_CPU_LEVEL_AVX2)
extern "C" const grass::detail::CpuKernels grass_cpu_kernels_avx2;
#endif
#if defined(GRASS_CPU_LEVEL_AVX512)
extern "C" const grass::detail::CpuKernels grass_cpu_kernels_avx512;
#endif
#endif

namespace grass {
namespace detail {

namespace {

constexpr const char* kEnv = "GRASS_CPU_CAPABILITY";

struct Level {
  const char* name;
  const CpuKernels* table;            // null in a single-level build
  std::vector<const char*> features;  // what the level's compiler flags let it use
};

// The levels compiled in, best last. Their flags (cmake/grass_cpu_levels.cmake) and the
// features checked here must agree: a level runs only where all its features are present.
std::vector<Level> compiled_levels() {
#if defined(GRASS_CPU_DISPATCH)
  std::vector<Level> levels{{"baseline", &grass_cpu_kernels_baseline, {"sse4.2", "popcnt"}}};
#if defined(GRASS_CPU_LEVEL_AVX2)
  levels.push_back({"avx2", &grass_cpu_kernels_avx2, {"sse4.2", "popcnt", "avx", "avx2", "fma"}});
#endif
#if defined(GRASS_CPU_LEVEL_AVX512)
  levels.push_back({"avx512", &grass_cpu_kernels_avx512,
                    {"sse4.2", "popcnt", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl",
                     "avx512cd"}});
#endif
  return levels;
#else
  // One level: the kernels are compiled straight into the library (GRASS_NATIVE_ARCH, a
  // non-x86 target, or GRASS_CPU_DISPATCH=OFF); the compiler flags decide what it needs.
  return {{GRASS_CPU_SINGLE_LEVEL, nullptr, {}}};
#endif
}

// The features in `wanted` this CPU lacks (__builtin_cpu_supports also checks that the OS
// saves the AVX / AVX-512 registers).
std::string missing_features(const std::vector<const char*>& wanted) {
  std::string missing;
#if defined(GRASS_CPU_DISPATCH) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  for (const char* f : wanted) {
    bool has = false;
    // __builtin_cpu_supports takes a string literal only.
#define GRASS_FEATURE(lit) \
  if (std::string(f) == lit) has = __builtin_cpu_supports(lit);
    GRASS_FEATURE("sse4.2")
    GRASS_FEATURE("popcnt")
    GRASS_FEATURE("avx")
    GRASS_FEATURE("avx2")
    GRASS_FEATURE("fma")
    GRASS_FEATURE("avx512f")
    GRASS_FEATURE("avx512bw")
    GRASS_FEATURE("avx512dq")
    GRASS_FEATURE("avx512vl")
    GRASS_FEATURE("avx512cd")
#undef GRASS_FEATURE
    if (!has) missing += std::string(missing.empty() ? "" : ", ") + f;
  }
#else
  (void)wanted;
#endif
  return missing;
}

struct Chosen {
  CpuLevelChoice choice;
  const CpuKernels* table = nullptr;
};

Chosen choose() {
  Chosen out;
  CpuLevelChoice& c = out.choice;
  const std::vector<Level> levels = compiled_levels();
  std::vector<std::string> missing;
  for (const Level& l : levels) {
    c.compiled += std::string(c.compiled.empty() ? "" : ",") + l.name;
    missing.push_back(missing_features(l.features));
    if (missing.back().empty()) c.supported += std::string(c.supported.empty() ? "" : ",") + l.name;
  }
  const char* env = std::getenv(kEnv);
  const std::string forced = env ? env : "";
  if (forced.empty()) {
    for (size_t i = levels.size(); i-- > 0;)
      if (missing[i].empty()) {
        c.chosen = levels[i].name;
        out.table = levels[i].table;
        return out;
      }
    c.error = "this CPU lacks " + missing[0] + ", which grass's lowest compiled CPU level (" + levels[0].name +
              ") needs";
    return out;
  }
  if (forced != "baseline" && forced != "avx2" && forced != "avx512" && forced != "native") {
    c.error = std::string(kEnv) + " must be one of baseline, avx2, avx512 (or unset to choose from the CPU), got '" +
              forced + "'";
    return out;
  }
  for (size_t i = 0; i < levels.size(); ++i) {
    if (forced != levels[i].name) continue;
    if (!missing[i].empty()) {
      c.error = std::string(kEnv) + "=" + forced + ", but this CPU lacks " + missing[i] + " (levels it can run: " +
                (c.supported.empty() ? "none" : c.supported) + ")";
      return out;
    }
    c.chosen = levels[i].name;
    out.table = levels[i].table;
    return out;
  }
  c.error = std::string(kEnv) + "=" + forced + ", but this build of grass has only the CPU level(s) " + c.compiled;
  return out;
}

const Chosen& chosen() {
  static const Chosen c = choose();
  return c;
}

}  // namespace

const CpuLevelChoice& cpu_level_choice() { return chosen().choice; }

}  // namespace detail

#if defined(GRASS_CPU_DISPATCH)
namespace {
const detail::CpuKernels& kernels() {
  const detail::Chosen& c = detail::chosen();
  if (c.table == nullptr) throw Error("grass: " + c.choice.error);
  return *c.table;
}
}  // namespace

// The public functions of the kernel headers, forwarded to the chosen level.
void check_sjlt_params(const SjltParams& params) { kernels().check_sjlt_params(params); }
void sjlt_codes(int64_t column_begin, int64_t count, const SjltParams& params, int64_t* bucket, int8_t* sign) {
  kernels().sjlt_codes(column_begin, count, params, bucket, sign);
}
void sjlt_cpu(const void* x, DType dtype, int64_t B, int64_t p, float* y, const SjltParams& params) {
  kernels().sjlt_cpu(x, dtype, B, p, y, params);
}
void sjlt_csr_cpu(const int64_t* indptr, const int64_t* indices, const void* values, DType dtype, int64_t B,
                  int64_t p, float* y, const SjltParams& params) {
  kernels().sjlt_csr_cpu(indptr, indices, values, dtype, B, p, y, params);
}
void sjlt_transpose_cpu(const float* y, int64_t B, int64_t p, float* x, const SjltParams& params) {
  kernels().sjlt_transpose_cpu(y, B, p, x, params);
}
void random_mask_indices(int64_t p, int64_t k, uint64_t seed, int64_t* out) {
  kernels().random_mask_indices(p, k, seed, out);
}
void check_indices(const int64_t* idx, int64_t n, int64_t p, const char* what) {
  kernels().check_indices(idx, n, p, what);
}
void mask_gather_cpu(const void* x, DType dtype, int64_t B, int64_t p, const int64_t* idx, int64_t kp, void* out) {
  kernels().mask_gather_cpu(x, dtype, B, p, idx, kp, out);
}
void masked_sjlt_cpu(const void* x, DType dtype, int64_t B, int64_t p, const int64_t* idx, int64_t kp, float* y,
                     const SjltParams& params) {
  kernels().masked_sjlt_cpu(x, dtype, B, p, idx, kp, y, params);
}
int64_t fjlt_padded_size(int64_t p) { return kernels().fjlt_padded_size(p); }
void fjlt_signs(int64_t p, uint64_t seed, int8_t* signs) { kernels().fjlt_signs(p, seed, signs); }
void fjlt_rows(int64_t p, int64_t k, uint64_t seed, int64_t* rows) { kernels().fjlt_rows(p, k, seed, rows); }
void fjlt_cpu(const void* x, DType dtype, int64_t B, int64_t p, float* y, int64_t k, uint64_t seed) {
  kernels().fjlt_cpu(x, dtype, B, p, y, k, seed);
}
void kron_cpu(const void* a, const void* g, DType dtype, const KronShape& shape, float* out) {
  kernels().kron_cpu(a, g, dtype, shape, out);
}
void factgrass_cpu(const void* a, const void* g, DType dtype, const KronShape& shape, const int64_t* idx_in,
                   int64_t k_in, const int64_t* idx_out, int64_t k_out, float* y, const SjltParams& params) {
  kernels().factgrass_cpu(a, g, dtype, shape, idx_in, k_in, idx_out, k_out, y, params);
}
int64_t ifvp_packed_size(const int64_t* block_sizes, int64_t num_blocks) {
  return kernels().ifvp_packed_size(block_sizes, num_blocks);
}
void fisher_accumulate_cpu(const void* G, DType dtype, int64_t N, int64_t K, const int64_t* block_sizes,
                           int64_t num_blocks, double* F) {
  kernels().fisher_accumulate_cpu(G, dtype, N, K, block_sizes, num_blocks, F);
}
void cholesky_factor_cpu(double* F, const int64_t* block_sizes, int64_t num_blocks, const double* damping) {
  kernels().cholesky_factor_cpu(F, block_sizes, num_blocks, damping);
}
void cholesky_solve_cpu(const double* L, const int64_t* block_sizes, int64_t num_blocks, const void* V, DType dtype,
                        int64_t M, int64_t K, void* X) {
  kernels().cholesky_solve_cpu(L, block_sizes, num_blocks, V, dtype, M, K, X);
}
#endif

}  // namespace grass
