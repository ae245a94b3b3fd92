// Batched Cholesky iFVP on the CPU, float64, no LAPACK.
//
// fisher_accumulate_cpu: per block, a blocked SYRK. Work items are (block, tile I, tile
//   J <= I) of kTile x kTile entries; each item streams G in chunks of kChunk rows,
//   converts its two column panels to float64 and runs an MR x NR register-blocked
//   outer-product kernel, then adds the tile (and its mirror) into F.
// cholesky_factor_cpu: right-looking blocked Cholesky per block with panels of kPanel
//   columns: factor the diagonal block, solve the rows below it, update the trailing
//   matrix with the same outer-product kernel (parallel over tiles). Blocks that carry
//   a large share of the work are factored one at a time with the threads inside; the
//   others one per thread.
// cholesky_solve_cpu: per (block, group of kRhs right-hand sides), stored transposed so
//   that the right-hand sides are the vector lanes: forward and backward substitution
//   broadcast each element of L against the whole group, four rows of L at a time.
//
// Determinism: every output element is computed by one thread in a fixed order that
// does not depend on the thread count.
#include "grass/ifvp.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "grass/check.h"
#include "scratch.h"

namespace grass {

namespace {

constexpr int64_t kTile = 128;     // SYRK tile edge (entries of F)
constexpr int64_t kChunk = 256;    // rows of G per packed chunk
constexpr int64_t kPanel = 64;     // Cholesky panel width
constexpr int64_t kRhs = 32;       // right-hand sides solved together (the vector lanes)
constexpr int64_t kSmallBlock = 256;  // blocks up to this size are always factored by one thread
constexpr int MR = 8, NR = 16;     // register block of the outer-product kernel

// C[q, j] += alpha * sum_{m < kc} A[m * lda + q] * Bm[m * ldb + j] for q < h, j < w.
// The full MR x NR case keeps the accumulators in registers (16 zmm with AVX-512).
void outer_product_kernel(const double* A, int64_t lda, const double* Bm, int64_t ldb, int64_t kc,
                          double* C, int64_t ldc, double alpha, int64_t h, int64_t w) {
  double acc[MR][NR];
  for (int q = 0; q < MR; ++q)
    for (int j = 0; j < NR; ++j) acc[q][j] = 0.0;
  if (h == MR && w == NR) {
    for (int64_t m = 0; m < kc; ++m) {
      const double* a = A + m * lda;
      const double* b = Bm + m * ldb;
      for (int q = 0; q < MR; ++q) {
        const double aq = a[q];
#pragma omp simd
        for (int j = 0; j < NR; ++j) acc[q][j] += aq * b[j];
      }
    }
  } else {
    for (int64_t m = 0; m < kc; ++m) {
      const double* a = A + m * lda;
      const double* b = Bm + m * ldb;
      for (int64_t q = 0; q < h; ++q) {
        const double aq = a[q];
        for (int64_t j = 0; j < w; ++j) acc[q][j] += aq * b[j];
      }
    }
  }
  for (int64_t q = 0; q < h; ++q)
    for (int64_t j = 0; j < w; ++j) C[q * ldc + j] += alpha * acc[q][j];
}

// C [h, w] (ldc) += alpha * A^T B for panels A [kc, h] (lda) and B [kc, w] (ldb).
void panel_product(const double* A, int64_t lda, const double* Bm, int64_t ldb, int64_t kc,
                   int64_t h, int64_t w, double* C, int64_t ldc, double alpha) {
  for (int64_t q0 = 0; q0 < h; q0 += MR)
    for (int64_t j0 = 0; j0 < w; j0 += NR)
      outer_product_kernel(A + q0, lda, Bm + j0, ldb, kc, C + q0 * ldc + j0, ldc, alpha,
                           std::min<int64_t>(MR, h - q0), std::min<int64_t>(NR, w - j0));
}

// Validates block_sizes against K and returns the column offset of each block and the
// offset of each block's matrix in the packed layout.
struct Layout {
  std::vector<int64_t> col;     // [L + 1] column offsets
  std::vector<int64_t> packed;  // [L + 1] offsets of packed matrices
};
Layout make_layout(const int64_t* block_sizes, int64_t num_blocks) {
  Layout lay;
  ifvp_packed_size(block_sizes, num_blocks);  // validates the sizes
  lay.col.resize(num_blocks + 1);
  lay.packed.resize(num_blocks + 1);
  lay.col[0] = lay.packed[0] = 0;
  for (int64_t l = 0; l < num_blocks; ++l) {
    lay.col[l + 1] = lay.col[l] + block_sizes[l];
    lay.packed[l + 1] = lay.packed[l] + block_sizes[l] * block_sizes[l];
  }
  return lay;
}

void check_blocks_cover(const Layout& lay, int64_t K) {
  GRASS_CHECK(lay.col.back() == K,
              "block_sizes must sum to K = %lld (the columns of the matrix), got sum %lld", (long long)K,
              (long long)lay.col.back());
}

// Loads rows [r0, r0 + nr) and columns [c0, c0 + nc) of G [*, K] into P [nr, nc] as float64.
void load_panel(const void* G, DType dtype, int64_t K, int64_t r0, int64_t nr, int64_t c0, int64_t nc,
                double* P) {
  if (dtype == DType::F64) {
    const double* g = static_cast<const double*>(G);
    for (int64_t r = 0; r < nr; ++r)
      for (int64_t c = 0; c < nc; ++c) P[r * nc + c] = g[(r0 + r) * K + c0 + c];
  } else {
    const float* g = static_cast<const float*>(G);
    for (int64_t r = 0; r < nr; ++r)
      for (int64_t c = 0; c < nc; ++c) P[r * nc + c] = static_cast<double>(g[(r0 + r) * K + c0 + c]);
  }
}

// --- Cholesky of one block ------------------------------------------------------------

// Factors A [n, n] (row-major, lower triangle read and written) in place. Returns -1 on
// success, else the first pivot that is not positive (A is then partly overwritten).
// `parallel` lets the row solves and the trailing updates use the threads.
// panel_t: scratch of panel_scratch(n) doubles.
int64_t panel_scratch(int64_t n) { return (n + kTile - 1) / kTile * kPanel * kTile; }

int64_t factor_block(double* A, int64_t n, bool parallel, double* pivot_value, double* panel_t) {
  // The panel below the diagonal block goes to panel_t transposed tile by tile: rows i of
  // tile I = i / kTile at pt[(I * kb + c) * kTile + i % kTile], so that the outer-product
  // kernel walks it with a stride of kTile doubles (a stride of nt, a multiple of 4 KiB
  // for n a multiple of 512, would map every step to the same L1 set).
  for (int64_t k0 = 0; k0 < n; k0 += kPanel) {
    const int64_t kb = std::min(kPanel, n - k0);
    // 1. The diagonal block, left-looking (its trailing updates from earlier panels are in).
    for (int64_t c = 0; c < kb; ++c) {
      double* rc = A + (k0 + c) * n + k0;
      double d = rc[c];
      for (int64_t m = 0; m < c; ++m) d -= rc[m] * rc[m];
      if (!(d > 0.0) || !std::isfinite(d)) {
        *pivot_value = d;
        return k0 + c;
      }
      const double l = std::sqrt(d);
      rc[c] = l;
      for (int64_t i = c + 1; i < kb; ++i) {
        double* ri = A + (k0 + i) * n + k0;
        double v = ri[c];
        for (int64_t m = 0; m < c; ++m) v -= ri[m] * rc[m];
        ri[c] = v / l;
      }
    }
    const int64_t r0 = k0 + kb, nt = n - r0;
    if (nt == 0) break;
    // 2. Rows below: L[i, panel] = A[i, panel] L_kk^{-T}, solved in the transposed tiles
    //    themselves, where the rows of a tile are the vector lanes:
    //    P[c, :] = (P[c, :] - sum_{m < c} L[c, m] P[m, :]) / L[c, c].
    const int64_t tiles = (nt + kTile - 1) / kTile;
    double* pt = panel_t;
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t I = 0; I < tiles; ++I) {
      const int64_t i0 = I * kTile, h = std::min(kTile, nt - i0);
      double* P = pt + I * kb * kTile;  // [kb, kTile]
      for (int64_t i = 0; i < h; ++i)
        for (int64_t c = 0; c < kb; ++c) P[c * kTile + i] = A[(r0 + i0 + i) * n + k0 + c];
      for (int64_t c = 0; c < kb; ++c) {
        const double* lc = A + (k0 + c) * n + k0;
        double* pc = P + c * kTile;
        for (int64_t m = 0; m < c; ++m) {
          const double l = lc[m];
          const double* pm = P + m * kTile;
#pragma omp simd
          for (int64_t i = 0; i < h; ++i) pc[i] -= l * pm[i];
        }
        const double d = lc[c];
#pragma omp simd
        for (int64_t i = 0; i < h; ++i) pc[i] /= d;
      }
      for (int64_t i = 0; i < h; ++i)
        for (int64_t c = 0; c < kb; ++c) A[(r0 + i0 + i) * n + k0 + c] = P[c * kTile + i];
    }
    // 3. Trailing update, lower tiles: A[I, J] -= P_I P_J^T.
    const int64_t pairs = tiles * (tiles + 1) / 2;
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
    for (int64_t t = 0; t < pairs; ++t) {
      int64_t I = static_cast<int64_t>((std::sqrt(8.0 * t + 1) - 1) / 2);
      while (I * (I + 1) / 2 > t) --I;
      while ((I + 1) * (I + 2) / 2 <= t) ++I;
      const int64_t J = t - I * (I + 1) / 2;
      const int64_t i0 = I * kTile, j0 = J * kTile;
      const int64_t h = std::min(kTile, nt - i0), w = std::min(kTile, nt - j0);
      panel_product(pt + I * kb * kTile, kTile, pt + J * kb * kTile, kTile, kb, h, w, A + (r0 + i0) * n + r0 + j0, n,
                    -1.0);
    }
  }
  return -1;
}

// --- Triangular solves for a group of kRhs right-hand sides ---------------------------
//
// The group is stored transposed, wt[i * kRhs + r] = v_r[i], so that the right-hand sides
// are the vector lanes: each row of L is applied to all of them with broadcast FMAs.
// Rows are taken kSolveRows at a time so that one load of wt[m] feeds that many FMAs.

constexpr int kSolveRows = 4;

// wt[i, r] = V[r0 + r, c0 + i] for r < nr; lanes r >= nr are zero.
void load_rhs_transposed(const void* V, DType dtype, int64_t K, int64_t r0, int64_t nr, int64_t c0, int64_t n,
                         double* wt) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t r = nr; r < kRhs; ++r) wt[i * kRhs + r] = 0.0;
  for (int64_t r = 0; r < nr; ++r) {
    if (dtype == DType::F64) {
      const double* v = static_cast<const double*>(V) + (r0 + r) * K + c0;
      for (int64_t i = 0; i < n; ++i) wt[i * kRhs + r] = v[i];
    } else {
      const float* v = static_cast<const float*>(V) + (r0 + r) * K + c0;
      for (int64_t i = 0; i < n; ++i) wt[i * kRhs + r] = static_cast<double>(v[i]);
    }
  }
}

// In place: wt <- (L L^T)^{-1} wt, L [n, n] lower triangular (row-major).
void solve_group(const double* L, int64_t n, double* wt) {
  double acc[kSolveRows][kRhs];
  // Forward, L z = v: z_i = (v_i - sum_{m < i} L[i, m] z_m) / L[i, i].
  for (int64_t i0 = 0; i0 < n; i0 += kSolveRows) {
    const int64_t ib = std::min<int64_t>(kSolveRows, n - i0);
    for (int q = 0; q < kSolveRows; ++q)
      for (int r = 0; r < kRhs; ++r) acc[q][r] = q < ib ? wt[(i0 + q) * kRhs + r] : 0.0;
    if (ib == kSolveRows) {
      const double* l0 = L + i0 * n;
      for (int64_t m = 0; m < i0; ++m) {
        const double* w = wt + m * kRhs;
        for (int q = 0; q < kSolveRows; ++q) {
          const double lq = l0[q * n + m];
#pragma omp simd
          for (int r = 0; r < kRhs; ++r) acc[q][r] -= lq * w[r];
        }
      }
    } else {
      for (int64_t m = 0; m < i0; ++m)
        for (int64_t q = 0; q < ib; ++q) {
          const double lq = L[(i0 + q) * n + m];
          for (int r = 0; r < kRhs; ++r) acc[q][r] -= lq * wt[m * kRhs + r];
        }
    }
    for (int64_t q = 0; q < ib; ++q) {
      const double* lrow = L + (i0 + q) * n + i0;
      for (int64_t q2 = 0; q2 < q; ++q2)
        for (int r = 0; r < kRhs; ++r) acc[q][r] -= lrow[q2] * acc[q2][r];
      for (int r = 0; r < kRhs; ++r) acc[q][r] /= lrow[q];
      for (int r = 0; r < kRhs; ++r) wt[(i0 + q) * kRhs + r] = acc[q][r];
    }
  }
  // Backward, L^T x = z: x_i = (z_i - sum_{m > i} L[m, i] x_m) / L[i, i], blocks from the end.
  const int64_t tail = n % kSolveRows;
  for (int64_t i0 = n - (tail ? tail : kSolveRows); i0 >= 0; i0 -= kSolveRows) {
    const int64_t ib = std::min<int64_t>(kSolveRows, n - i0);
    for (int q = 0; q < kSolveRows; ++q)
      for (int r = 0; r < kRhs; ++r) acc[q][r] = q < ib ? wt[(i0 + q) * kRhs + r] : 0.0;
    if (ib == kSolveRows) {
      for (int64_t m = i0 + kSolveRows; m < n; ++m) {
        const double* w = wt + m * kRhs;
        const double* lm = L + m * n + i0;
        for (int q = 0; q < kSolveRows; ++q) {
          const double lq = lm[q];
#pragma omp simd
          for (int r = 0; r < kRhs; ++r) acc[q][r] -= lq * w[r];
        }
      }
    } else {
      for (int64_t m = i0 + ib; m < n; ++m)
        for (int64_t q = 0; q < ib; ++q) {
          const double lq = L[m * n + i0 + q];
          for (int r = 0; r < kRhs; ++r) acc[q][r] -= lq * wt[m * kRhs + r];
        }
    }
    for (int64_t q = ib - 1; q >= 0; --q) {
      for (int64_t q2 = q + 1; q2 < ib; ++q2) {
        const double lq = L[(i0 + q2) * n + i0 + q];
        for (int r = 0; r < kRhs; ++r) acc[q][r] -= lq * acc[q2][r];
      }
      const double d = L[(i0 + q) * n + i0 + q];
      for (int r = 0; r < kRhs; ++r) acc[q][r] /= d;
      for (int r = 0; r < kRhs; ++r) wt[(i0 + q) * kRhs + r] = acc[q][r];
    }
  }
}

}  // namespace

int64_t ifvp_packed_size(const int64_t* block_sizes, int64_t num_blocks) {
  GRASS_CHECK(num_blocks >= 1, "num_blocks must be >= 1, got %lld", (long long)num_blocks);
  GRASS_CHECK(block_sizes != nullptr, "block_sizes must not be null");
  int64_t total = 0;
  for (int64_t l = 0; l < num_blocks; ++l) {
    const int64_t b = block_sizes[l];
    GRASS_CHECK(b >= 1, "block_sizes[%lld] must be >= 1, got %lld", (long long)l, (long long)b);
    GRASS_CHECK(b <= (int64_t{1} << 31) && b * b <= INT64_MAX - total,
                "block_sizes[%lld] = %lld makes the packed size overflow int64", (long long)l,
                (long long)b);
    total += b * b;
  }
  return total;
}

void fisher_accumulate_cpu(const void* G /* [N, K] */, DType dtype, int64_t N, int64_t K,
                           const int64_t* block_sizes, int64_t num_blocks, double* F /* packed */) {
  GRASS_CHECK(dtype == DType::F32 || dtype == DType::F64, "dtype of G must be float32 or float64, got %s",
              dtype_name(dtype));
  GRASS_CHECK(N >= 0, "N must be >= 0, got %lld", (long long)N);
  GRASS_CHECK(K >= 1, "K must be >= 1, got %lld", (long long)K);
  const Layout lay = make_layout(block_sizes, num_blocks);
  check_blocks_cover(lay, K);
  GRASS_CHECK(F != nullptr, "F must not be null");
  if (N == 0) return;
  GRASS_CHECK(G != nullptr, "G must not be null");

  // Work items: (block, I, J <= I) tiles over all blocks.
  struct Item { int64_t l, i0, j0; };
  std::vector<Item> items;
  for (int64_t l = 0; l < num_blocks; ++l) {
    const int64_t n = block_sizes[l];
    for (int64_t i0 = 0; i0 < n; i0 += kTile)
      for (int64_t j0 = 0; j0 <= i0; j0 += kTile) items.push_back({l, i0, j0});
  }
  const int64_t num_items = static_cast<int64_t>(items.size());
  detail::PerThread<double> scratch(2 * kChunk * kTile + kTile * kTile);
#pragma omp parallel num_threads(scratch.threads)
  {
    double* pa = scratch.mine();           // [chunk, tile] rows of G, columns of tile I
    double* pb = pa + kChunk * kTile;      // [chunk, tile] columns of tile J
    double* tile = pb + kChunk * kTile;    // [tile, tile] the sum
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < num_items; ++t) {
      const Item it = items[t];
      const int64_t n = block_sizes[it.l], c0 = lay.col[it.l];
      const int64_t h = std::min(kTile, n - it.i0), w = std::min(kTile, n - it.j0);
      const bool diag = it.i0 == it.j0;
      std::fill(tile, tile + h * w, 0.0);
      for (int64_t r0 = 0; r0 < N; r0 += kChunk) {
        const int64_t nr = std::min(kChunk, N - r0);
        load_panel(G, dtype, K, r0, nr, c0 + it.i0, h, pa);
        if (!diag) load_panel(G, dtype, K, r0, nr, c0 + it.j0, w, pb);
        panel_product(pa, h, diag ? pa : pb, w, nr, h, w, tile, w, 1.0);
      }
      double* Fl = F + lay.packed[it.l];
      for (int64_t i = 0; i < h; ++i)
        for (int64_t j = 0; j < w; ++j) Fl[(it.i0 + i) * n + it.j0 + j] += tile[i * w + j];
      if (!diag)  // the mirror tile; disjoint from every other item's writes
        for (int64_t i = 0; i < h; ++i)
          for (int64_t j = 0; j < w; ++j) Fl[(it.j0 + j) * n + it.i0 + i] += tile[i * w + j];
    }
  }
}

void cholesky_factor_cpu(double* F /* packed */, const int64_t* block_sizes, int64_t num_blocks,
                         const double* damping /* [L] */) {
  const Layout lay = make_layout(block_sizes, num_blocks);
  GRASS_CHECK(F != nullptr, "F must not be null");
  GRASS_CHECK(damping != nullptr, "damping must not be null");
  for (int64_t l = 0; l < num_blocks; ++l)
    GRASS_CHECK(std::isfinite(damping[l]) && damping[l] >= 0.0,
                "damping[%lld] must be finite and >= 0, got %g", (long long)l, damping[l]);

  // The diagonal as it came, so that a failure can restore every block: the algorithm
  // reads and writes only the lower triangle, and the upper still holds the input.
  std::vector<double> diag(static_cast<size_t>(lay.col.back()));
  for (int64_t l = 0; l < num_blocks; ++l) {
    const int64_t n = block_sizes[l];
    double* A = F + lay.packed[l];
    for (int64_t i = 0; i < n; ++i) {
      diag[lay.col[l] + i] = A[i * n + i];
      A[i * n + i] += damping[l];
    }
  }
  std::vector<int64_t> bad_pivot(static_cast<size_t>(num_blocks), -1);
  std::vector<double> bad_value(static_cast<size_t>(num_blocks), 0.0);
  // A block whose work (n^3) is a large share of the total is factored with all threads
  // inside it, one such block at a time; the others are factored one per thread, the
  // largest first (dynamic schedule). Which thread factors a block does not change its
  // arithmetic, so the result does not depend on this split.
  const int threads = omp_get_max_threads();
  double total_work = 0;
  for (int64_t l = 0; l < num_blocks; ++l) total_work += std::pow(static_cast<double>(block_sizes[l]), 3);
  std::vector<int64_t> shared, big;
  for (int64_t l = 0; l < num_blocks; ++l) {
    const double work = std::pow(static_cast<double>(block_sizes[l]), 3);
    const bool alone = block_sizes[l] > kSmallBlock && (threads == 1 || work * 2 * threads >= total_work);
    (alone ? big : shared).push_back(l);
  }
  std::sort(shared.begin(), shared.end(), [&](int64_t a, int64_t b) { return block_sizes[a] > block_sizes[b]; });
  const int64_t num_shared = static_cast<int64_t>(shared.size());
  if (num_shared > 0) {
    detail::PerThread<double> scratch(panel_scratch(block_sizes[shared[0]]));  // the largest
#pragma omp parallel for schedule(dynamic, 1) num_threads(scratch.threads)
    for (int64_t t = 0; t < num_shared; ++t) {
      const int64_t l = shared[t];
      bad_pivot[l] = factor_block(F + lay.packed[l], block_sizes[l], false, &bad_value[l], scratch.mine());
    }
  }
  for (int64_t l : big) {
    detail::Scratch<double> panel(panel_scratch(block_sizes[l]));
    bad_pivot[l] = factor_block(F + lay.packed[l], block_sizes[l], true, &bad_value[l], panel.data);
  }

  int64_t failed = -1;
  for (int64_t l = 0; l < num_blocks && failed < 0; ++l)
    if (bad_pivot[l] >= 0) failed = l;
  if (failed >= 0) {
    // Leave F as it came: the lower triangle from the (untouched) upper, and the diagonal.
    for (int64_t l = 0; l < num_blocks; ++l) {
      const int64_t n = block_sizes[l];
      double* A = F + lay.packed[l];
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < i; ++j) A[i * n + j] = A[j * n + i];
        A[i * n + i] = diag[lay.col[l] + i];
      }
    }
    GRASS_CHECK(false,
                "block %lld (size %lld) is not positive definite: pivot %lld is %g after damping %g; "
                "raise damping (F was left unchanged)",
                (long long)failed, (long long)block_sizes[failed], (long long)bad_pivot[failed],
                bad_value[failed], damping[failed]);
  }
  for (int64_t l = 0; l < num_blocks; ++l) {
    const int64_t n = block_sizes[l];
    double* A = F + lay.packed[l];
    for (int64_t i = 0; i < n; ++i) std::fill(A + i * n + i + 1, A + (i + 1) * n, 0.0);
  }
}

void cholesky_solve_cpu(const double* L /* packed */, const int64_t* block_sizes, int64_t num_blocks,
                        const void* V /* [M, K] */, DType dtype, int64_t M, int64_t K,
                        void* X /* [M, K] */) {
  GRASS_CHECK(dtype == DType::F32 || dtype == DType::F64, "dtype of V must be float32 or float64, got %s",
              dtype_name(dtype));
  GRASS_CHECK(M >= 0, "M must be >= 0, got %lld", (long long)M);
  GRASS_CHECK(K >= 1, "K must be >= 1, got %lld", (long long)K);
  const Layout lay = make_layout(block_sizes, num_blocks);
  check_blocks_cover(lay, K);
  GRASS_CHECK(L != nullptr, "L must not be null");
  if (M == 0) return;
  GRASS_CHECK(V != nullptr && X != nullptr, "V and X must not be null");

  const int64_t groups = (M + kRhs - 1) / kRhs;
  const int64_t items = groups * num_blocks;
  int64_t max_block = 0;
  for (int64_t l = 0; l < num_blocks; ++l) max_block = std::max(max_block, block_sizes[l]);
  detail::PerThread<double> scratch(kRhs * max_block);
#pragma omp parallel num_threads(scratch.threads)
  {
    double* W = scratch.mine();
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < items; ++t) {
      const int64_t l = t / groups, g = t % groups;
      const int64_t n = block_sizes[l], c0 = lay.col[l];
      const int64_t r0 = g * kRhs, nr = std::min(kRhs, M - r0);
      double* wt = W;  // [n, kRhs]: column r is right-hand side r0 + r
      load_rhs_transposed(V, dtype, K, r0, nr, c0, n, wt);
      solve_group(L + lay.packed[l], n, wt);
      if (dtype == DType::F64) {
        double* x = static_cast<double*>(X);
        for (int64_t r = 0; r < nr; ++r)
          for (int64_t i = 0; i < n; ++i) x[(r0 + r) * K + c0 + i] = wt[i * kRhs + r];
      } else {
        float* x = static_cast<float*>(X);
        for (int64_t r = 0; r < nr; ++r)
          for (int64_t i = 0; i < n; ++i) x[(r0 + r) * K + c0 + i] = static_cast<float>(wt[i * kRhs + r]);
      }
    }
  }
}

}  // namespace grass
