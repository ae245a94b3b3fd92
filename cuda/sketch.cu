// Host side of the sketching kernels' shared machinery: launch plans and output handling.
#include <algorithm>
#include <memory>

#include "sketch.cuh"

namespace grass {
namespace gpu {

namespace {

// y[e] = partial[0][e] + partial[1][e] + ... in chunk order: the order-fixed second half of
// the deterministic mode when a row is split over several blocks.
__global__ void __launch_bounds__(256) reduce_partials_kernel(const float* __restrict__ partial,
                                                              int64_t n_chunks, int64_t n,
                                                              float* __restrict__ y) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += stride) {
    float sum = partial[e];
    for (int64_t c = 1; c < n_chunks; ++c) sum += partial[c * n + e];
    y[e] = sum;
  }
}

}  // namespace

RowsPlan plan_rows(const DeviceLimits& dev, int threads, int64_t B, int64_t n_entries, int64_t k,
                   bool deterministic, int64_t tile, size_t per_row_extra, size_t static_bytes,
                   int max_rows, int64_t max_chunks) {
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
  }
  R = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(R, B)));
  plan.R = R;
  plan.n_groups = ceil_div(std::max<int64_t>(B, 1), R);
  plan.dyn_smem = (plan.global_acc ? per_row_extra : per_row) * static_cast<size_t>(R);

  const int64_t tiles = std::max<int64_t>(1, ceil_div(n_entries, tile));
  const int resident = resident_blocks(dev, threads, plan.dyn_smem + static_bytes);
  // Fast: about two waves of resident blocks. Deterministic: one wave, since every extra
  // chunk costs a partial row in scratch memory and a second pass.
  const int64_t target = static_cast<int64_t>(dev.sms) * resident * (deterministic ? 1 : 2);
  int64_t chunks = std::max<int64_t>(1, target / plan.n_groups);
  chunks = std::min({chunks, tiles, std::max<int64_t>(1, max_chunks)});
  if (!plan.global_acc) {
    // Each block flushes k floats: keep that below half of the entries it reads.
    chunks = std::min(chunks, std::max<int64_t>(1, n_entries / (2 * k)));
    if (deterministic) {
      const int64_t bytes_per_chunk = std::max<int64_t>(1, B) * k * static_cast<int64_t>(sizeof(float));
      chunks = std::min(chunks, std::max<int64_t>(1, kMaxPartialBytes / bytes_per_chunk));
    }
  } else if (deterministic) {
    chunks = 1;  // exclusive ownership of each y row: no atomics, fixed order
  }
  const int64_t chunk_tiles = ceil_div(tiles, chunks);
  plan.n_chunks = ceil_div(tiles, chunk_tiles);
  plan.chunk = chunk_tiles * tile;
  if (plan.global_acc) plan.flush = Flush::kNone;
  else if (plan.n_chunks == 1) plan.flush = Flush::kStore;
  else plan.flush = deterministic ? Flush::kPartial : Flush::kAtomic;
  return plan;
}

void begin_output(SketchArgs& a, const RowsPlan& plan, std::unique_ptr<Scratch>& partials,
                  cudaStream_t stream, const char* func) {
  const size_t y_bytes = static_cast<size_t>(a.B) * static_cast<size_t>(a.k) * sizeof(float);
  a.R = plan.R;
  a.n_groups = plan.n_groups;
  a.chunk = plan.chunk;
  a.flush = plan.flush;
  if (plan.flush == Flush::kAtomic || plan.flush == Flush::kNone) {
    check_cuda(cudaMemsetAsync(a.y, 0, y_bytes, stream), "cudaMemsetAsync(y)", func);
  }
  float* base = a.y;
  if (plan.flush == Flush::kPartial) {
    partials = std::make_unique<Scratch>(y_bytes * static_cast<size_t>(plan.n_chunks), stream, func);
    a.partial = partials->as<float>();
    base = a.partial;
  }
  a.vec_flush = a.k % 4 == 0 && aligned16(base);
}

void end_output(const SketchArgs& a, const RowsPlan& plan, cudaStream_t stream, const char* func) {
  if (plan.flush != Flush::kPartial) return;
  const int64_t n = a.B * a.k;
  const int threads = 256;
  reduce_partials_kernel<<<grid_x(std::min<int64_t>(ceil_div(n, threads), 65536)), threads, 0,
                           stream>>>(a.partial, plan.n_chunks, n, a.y);
  check_cuda(cudaGetLastError(), "launch of reduce_partials_kernel", func);
}

}  // namespace gpu
}  // namespace grass
