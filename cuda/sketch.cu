// Host side of the sketching kernels' shared machinery: launch plans and output handling.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "grass/tuning.h"
#include "sketch.cuh"

namespace grass {
namespace gpu {

namespace {

// Tuning hook for benchmarks (grass/tuning.h, set by bench_cuda --plan): overrides the rows
// per block and the chunks per row of the sketch kernels (chunks only in fast mode:
// deterministic plans never split rows) and/or prints every plan to stderr. Never read from
// the environment: a library's launch plans do not change with a user's shell.
CudaPlanOverride g_plan_override;

const CudaPlanOverride& plan_override() { return g_plan_override; }

}  // namespace

int64_t wave_fit_chunks(int64_t groups, int64_t max_chunks, int64_t slots) {
  int64_t best = max_chunks;
  double best_eff = -1.0;
  for (int64_t c = max_chunks; c >= 1 && 2 * c >= max_chunks; --c) {
    const int64_t blocks = c * groups;
    const double eff = static_cast<double>(blocks) / static_cast<double>(ceil_div(blocks, slots) * slots);
    if (eff > best_eff + 1e-9) {
      best_eff = eff;
      best = c;
    }
  }
  return best;
}

RowsPlan plan_rows(const DeviceLimits& dev, int threads, int regs, int64_t B, int64_t n_entries,
                   int64_t k, bool deterministic, int64_t tile, size_t per_row_extra,
                   size_t static_bytes, int max_rows) {
  RowsPlan plan;
  const size_t budget =
      dev.smem_block_optin > static_bytes ? dev.smem_block_optin - static_bytes : 0;
  const size_t per_row = static_cast<size_t>(k) * sizeof(float) + per_row_extra;
  int R = max_rows;
  if (per_row <= budget) {
    const size_t fit = std::min(std::max(kPreferredAccBytes, per_row), budget) / per_row;
    R = static_cast<int>(std::min<size_t>(fit, static_cast<size_t>(max_rows)));
  } else {
    plan.global_acc = true;  // k floats do not fit: y rows are the accumulators (zeroed first)
    if (per_row_extra > 0)
      R = static_cast<int>(std::min<size_t>(static_cast<size_t>(R), std::max<size_t>(1, budget / per_row_extra)));
  }
  if (deterministic) {
    // Rows are the only parallelism: aim for at least one block per SM.
    R = static_cast<int>(std::min<int64_t>(R, std::max<int64_t>(1, B / dev.sms)));
  }
  const CudaPlanOverride& over = plan_override();
  if (over.rows > 0) {
    const size_t unit = plan.global_acc ? per_row_extra : per_row;
    const size_t fit = unit > 0 ? budget / unit : static_cast<size_t>(max_rows);
    R = static_cast<int>(std::min<size_t>({static_cast<size_t>(over.rows), static_cast<size_t>(max_rows), fit}));
  }
  R = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(R, B)));
  plan.R = R;
  plan.n_groups = ceil_div(std::max<int64_t>(B, 1), R);
  plan.dyn_smem = (plan.global_acc ? per_row_extra : per_row) * static_cast<size_t>(R);

  const int64_t tiles = std::max<int64_t>(1, ceil_div(n_entries, tile));
  int64_t chunks = 1;
  if (!deterministic) {
    // About two waves of resident blocks, ...
    const int resident = resident_blocks(dev, threads, plan.dyn_smem + static_bytes, regs);
    const int64_t slots = static_cast<int64_t>(dev.sms) * resident;
    chunks = std::min(std::max<int64_t>(1, 2 * slots / plan.n_groups), tiles);
    // ... each block flushing its k floats atomically for less than half the entries it
    // reads, ... 
    if (!plan.global_acc) chunks = std::min(chunks, std::max<int64_t>(1, n_entries / (2 * k)));
    // ... and a block count that fills whole waves (a partial last wave idles SMs).
    chunks = wave_fit_chunks(plan.n_groups, chunks, slots);
    if (over.chunks > 0) chunks = std::min(over.chunks, tiles);
  }
  const int64_t chunk_tiles = ceil_div(tiles, chunks);
  plan.n_chunks = ceil_div(tiles, chunk_tiles);
  plan.chunk = chunk_tiles * tile;
  if (plan.global_acc) plan.flush = Flush::kNone;
  else plan.flush = plan.n_chunks == 1 ? Flush::kStore : Flush::kAtomic;
  if (over.verbose)
    std::fprintf(stderr,
                 "grass plan: B=%lld entries=%lld k=%lld %s threads=%d -> rows/block=%d groups=%lld "
                 "chunks=%lld (entries/chunk=%lld) %s acc, dyn smem=%zu B, flush=%s\n",
                 (long long)B, (long long)n_entries, (long long)k, deterministic ? "det" : "fast",
                 threads, plan.R, (long long)plan.n_groups, (long long)plan.n_chunks,
                 (long long)plan.chunk, plan.global_acc ? "global" : "shared", plan.dyn_smem,
                 plan.flush == Flush::kNone ? "none" : plan.flush == Flush::kStore ? "store" : "atomic");
  return plan;
}

void begin_output(SketchArgs& a, const RowsPlan& plan, cudaStream_t stream, const char* func) {
  a.R = plan.R;
  a.n_groups = plan.n_groups;
  a.chunk = plan.chunk;
  a.flush = plan.flush;
  a.vec_flush = a.k % 4 == 0 && aligned16(a.y);
  if (plan.flush != Flush::kStore) {
    const size_t y_bytes = static_cast<size_t>(a.B) * static_cast<size_t>(a.k) * sizeof(float);
    check_cuda(cudaMemsetAsync(a.y, 0, y_bytes, stream), "cudaMemsetAsync(y)", func);
  }
}

}  // namespace gpu

void set_cuda_plan_override(const CudaPlanOverride& override) { gpu::g_plan_override = override; }

}  // namespace grass
