// The small-GEMM kernels (cpu_gemm_kernels.h) for AVX-512F: 16 lanes, 32 vector registers. Measured
// on a 2-core Xeon with AVX-512, one thread, 64x1000x100: 1.8x the AVX2 kernels backward (~150
// GFLOP/s), 1.45x forward (~105 GFLOP/s; blocking K so that the rows of A stay in L1 was slower).
// The standard headers come before the target pragma (see cpu_gemm_avx2.cpp).
#include <algorithm>
#include <cstdint>

#include "cpu_gemm_isa.h"

#if TWOLAYER_OPS_X86_KERNELS
#pragma GCC target("avx512f,avx2,fma")
// GCC 12's AVX-512 intrinsics pass _mm512_undefined_*() (a self-initialized variable) to their
// builtins, and -Wall then reports it as used uninitialized (GCC bug 105593, fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

namespace twolayer_ops {
namespace cpu_gemm {
namespace {

struct Avx512 {
  using V = __m512;
  using Mask = __mmask16;
  static constexpr int kLanes = 16;
  static constexpr int kNtRows = 4, kNtCols = 6;  // 24 accumulators + 4 A rows + 1 B row = 29 registers
  static constexpr int kNnRows = 8, kNnVecs = 3;  // 24 accumulators + 3 B vectors + 1 broadcast
  // A 4x6 block's 24 16-lane sums take about 100 instructions to finish, against 34 a 16-deep K
  // step: on the Xeon, MKL won at K = 64 to 192 with M, N >= 128 (1.07-1.9x), and lost at K >= 256.
  static constexpr int kNtMinDepth = 256;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load_first(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void store_first(float* p, Mask m, V v) { _mm512_mask_storeu_ps(p, m, v); }
  static V broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  // Keeps the lanes where !(v <= 0): unordered (NaN) counts as true, so NaN passes.
  static V relu(V v) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_NLE_UQ), v); }
  static __m256 half(V v) {
    return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  }
  static Mask first_lanes(int64_t n) { return Mask((1u << n) - 1u); }  // n in [0, 16]
};

}  // namespace
}  // namespace cpu_gemm
}  // namespace twolayer_ops

#include "cpu_gemm_kernels.h"

namespace twolayer_ops {
namespace cpu_gemm {

const IsaKernels kAvx512Kernels = cpu_kernels::table<Avx512>();

}  // namespace cpu_gemm
}  // namespace twolayer_ops

#endif  // TWOLAYER_OPS_X86_KERNELS
