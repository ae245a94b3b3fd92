// The 4 x 4 register tile of one thread in the CUDA Kronecker kernels, shared by kron and
// factgrass so that fused FactGraSS forms every z entry with the same expression and order
// as kron (the CPU twins share cpp/src/kron_tile.h for the same reason).
#pragma once

namespace grass {
namespace gpu {

// acc[m][n] += Gs[t][4 ty + m] * As[t][4 tx + n] for t < tk, in ascending t. As and Gs are
// staged [t][column] tiles in shared memory, 16-byte aligned rows.
template <int TI, int TO>
__device__ __forceinline__ void accumulate_tile_4x4(const float (*As)[TI], const float (*Gs)[TO],
                                                    int tk, int tx, int ty, float (&acc)[4][4]) {
  for (int t = 0; t < tk; ++t) {
    const float4 av = *reinterpret_cast<const float4*>(&As[t][tx * 4]);
    const float4 gv = *reinterpret_cast<const float4*>(&Gs[t][ty * 4]);
    const float ar[4] = {av.x, av.y, av.z, av.w};
    const float gr[4] = {gv.x, gv.y, gv.z, gv.w};
#pragma unroll
    for (int m = 0; m < 4; ++m)
#pragma unroll
      for (int n = 0; n < 4; ++n) acc[m][n] += gr[m] * ar[n];
  }
}

}  // namespace gpu
}  // namespace grass
