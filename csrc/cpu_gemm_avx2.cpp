// The small-GEMM kernels (cpu_gemm_kernels.h) for AVX2 + FMA: 8 lanes, 16 vector registers.
// The standard headers come before the target pragma, so that no inline function they define is
// compiled for AVX2 here and kept by the linker for callers elsewhere.
#include <algorithm>
#include <cstdint>

#include "cpu_gemm_isa.h"

#if TWOLAYER_OPS_X86_KERNELS
#pragma GCC target("avx2,fma")
#include <immintrin.h>

namespace twolayer_ops {
namespace cpu_gemm {
namespace {

struct Avx2 {
  using V = __m256;
  using Mask = __m256i;
  static constexpr int kLanes = 8;
  static constexpr int kNtRows = 3, kNtCols = 4;  // 12 accumulators + 3 A rows + 1 B row = 16 registers
  static constexpr int kNnRows = 6, kNnVecs = 2;  // 12 accumulators + 2 B vectors + 1 broadcast
  static constexpr int kNtMinDepth = 1;  // 8 lanes reduce cheaply: these beat MKL at every K on a 2-core AMD EPYC
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V load_first(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static void store_first(float* p, Mask m, V v) { _mm256_maskstore_ps(p, m, v); }
  static V broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V relu(V v) { return _mm256_andnot_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LE_OQ), v); }
  static __m256 half(V v) { return v; }
  static Mask first_lanes(int64_t n) {  // n in [0, 8]
    alignas(32) static const int32_t table[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + 8 - n));
  }
};

}  // namespace
}  // namespace cpu_gemm
}  // namespace twolayer_ops

#include "cpu_gemm_kernels.h"

namespace twolayer_ops {
namespace cpu_gemm {

const IsaKernels kAvx2Kernels = cpu_kernels::table<Avx2>();

}  // namespace cpu_gemm
}  // namespace twolayer_ops

#endif  // TWOLAYER_OPS_X86_KERNELS
