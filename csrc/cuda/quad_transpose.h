// A 4 x 4 transpose of 32-bit words across the four lanes of each quad of a warp (lanes 4r .. 4r + 3),
// for the sm90 GEMM's 16-byte epilogue stores (linear_relu_sm90.cu). Portable: tests/cuda_emulation.cpp
// runs it on host threads with its emulated shuffles.
#pragma once

#include <cstdint>

namespace twolayer_ops {

// Lane q of a quad holds row q of a 4 x 4 word matrix in w; afterwards it holds column q: w[p] is what
// lane p held as w[q]. Two exchange rounds (with lane ^ 2, then lane ^ 1) of two shuffles each.
// shfl_xor(v, m) returns lane ^ m's v (a full-warp __shfl_xor_sync; every lane must call it).
template <typename XorShuffle>
__device__ __forceinline__ void quad_transpose(uint32_t (&w)[4], int q, XorShuffle shfl_xor) {
#pragma unroll
  for (int m = 2; m >= 1; m /= 2) {
    const bool upper = (q & m) != 0;  // this lane's partner, q ^ m, holds the other half of each pair
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if (i & m) continue;
      // Pairs (i, i | m): the lower lane keeps w[i] and takes the upper lane's w[i] as its w[i | m];
      // the upper lane keeps w[i | m] and takes the lower lane's w[i | m] as its w[i].
      const uint32_t got = shfl_xor(upper ? w[i] : w[i | m], m);
      if (upper) {
        w[i] = got;
      } else {
        w[i | m] = got;
      }
    }
  }
}

}  // namespace twolayer_ops
