// Register-blocked AVX2/FMA float32 GEMM kernels for the small products of the seed's net. They
// need no packing and reach about 80% of a core's FMA peak at 64x1000x100, as MKL does on one
// thread; split over threads by whole column blocks they scale 1.85x on 2 cores where MKL's own
// split gives 1.4x, and the forward's bias and ReLU ride in the epilogue. Single-threaded:
// cpu_gemm.cpp splits the work and checks at run time that the CPU has AVX2 and FMA.
// Every fixed-trip loop over registers carries `#pragma GCC unroll`: unrolled early, the accumulator
// arrays become registers; without it GCC kept them on the stack, storing 12 of them every k.
// It includes no ATen header, and the standard headers come before the target pragma, so no inline
// function compiled for AVX2 here can be the copy the linker keeps for callers elsewhere.
#include "cpu_gemm_avx2.h"

#include <algorithm>
#include <cstdint>

#if TWOLAYER_OPS_AVX2_KERNELS
#pragma GCC target("avx2,fma")
#include <immintrin.h>

namespace twolayer_ops {
namespace avx2 {
namespace {

// Lanes [0, n) on, n in [0, 8].
inline __m256i first_lanes(int64_t n) {
  alignas(32) static const int32_t table[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + 8 - n));
}

// The four horizontal sums of a, b, c, d.
inline __m128 sum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

// v <= 0 ? 0 : v lane by lane; the ordered compare is false for NaN, which passes, as in torch.relu.
inline __m128 relu_keep_nan(__m128 v) { return _mm_andnot_ps(_mm_cmp_ps(v, _mm_setzero_ps(), _CMP_LE_OQ), v); }

// C[i, j] = epilogue(sum_k A[i, k] B[j, k]) for an MR x NR block: dot products along the unit-stride
// K of both operands, NR <= 4 so that one sum4 finishes a row.
template <int MR, int NR>
void nt_block(int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
              const float* bias, bool relu) {
  __m256 acc[MR][4];  // columns past NR stay zero
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 8
    for (int j = 0; j < 4; ++j) acc[i][j] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 a[MR];
    #pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) a[i] = _mm256_loadu_ps(A + i * lda + k);
    #pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) {
      const __m256 b = _mm256_loadu_ps(B + j * ldb + k);
      #pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm256_fmadd_ps(a[i], b, acc[i][j]);
    }
  }
  if (k < K) {  // the K tail: masked loads read nothing past the row and give zeros
    const __m256i mask = first_lanes(K - k);
    __m256 a[MR];
    #pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) a[i] = _mm256_maskload_ps(A + i * lda + k, mask);
    #pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) {
      const __m256 b = _mm256_maskload_ps(B + j * ldb + k, mask);
      #pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm256_fmadd_ps(a[i], b, acc[i][j]);
    }
  }
  alignas(16) float b4[4] = {0, 0, 0, 0};
  if (bias) {
    #pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) b4[j] = bias[j];
  }
  const __m128 bv = _mm_load_ps(b4);
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    __m128 v = _mm_add_ps(sum4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]), bv);
    if (relu) v = relu_keep_nan(v);
    if (NR == 4) {
      _mm_storeu_ps(C + i * ldc, v);
    } else {
      alignas(16) float out[4];
      _mm_store_ps(out, v);
      #pragma GCC unroll 8
      for (int j = 0; j < NR; ++j) C[i * ldc + j] = out[j];
    }
  }
}

constexpr int kNtRows = 3, kNtCols = 4;  // 12 accumulators + 3 A rows + 1 B row = 16 registers

template <int MR>
void nt_rows(int nr, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
             const float* bias, bool relu) {
  switch (nr) {
    case 4: return nt_block<MR, 4>(K, A, lda, B, ldb, C, ldc, bias, relu);
    case 3: return nt_block<MR, 3>(K, A, lda, B, ldb, C, ldc, bias, relu);
    case 2: return nt_block<MR, 2>(K, A, lda, B, ldb, C, ldc, bias, relu);
    default: return nt_block<MR, 1>(K, A, lda, B, ldb, C, ldc, bias, relu);
  }
}

// C[i, 0:cols] = epilogue((C[i, 0:cols] if accumulate) + sum_k A[i*sam + k*sak] B[k, 0:cols]) for an
// MR x (8 NV) block, cols <= 8 NV: A broadcast, B loaded along its unit-stride N; with PARTIAL the
// last vector is masked to cols. The epilogue adds bias[0:cols] (if given), then ReLU (if asked).
// PARTIAL is a template argument so that each instance has one k loop.
template <int MR, int NV, bool PARTIAL>
void nn_block(int64_t K, const float* A, int64_t sam, int64_t sak, const float* B, int64_t ldb, float* C,
              int64_t ldc, int64_t cols, bool accumulate, const float* bias, bool relu) {
  const __m256i mask = first_lanes(PARTIAL ? cols - 8 * (NV - 1) : 8);
  __m256 acc[MR][NV];
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const float* b_row = B + k * ldb;
    __m256 b[NV];
    #pragma GCC unroll 8
    for (int v = 0; v < NV; ++v)
      b[v] = PARTIAL && v == NV - 1 ? _mm256_maskload_ps(b_row + 8 * v, mask) : _mm256_loadu_ps(b_row + 8 * v);
    const float* a_col = A + k * sak;
    #pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m256 a = _mm256_broadcast_ss(a_col + i * sam);
      #pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_fmadd_ps(a, b[v], acc[i][v]);
    }
  }
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      float* c = C + i * ldc + 8 * v;
      const bool masked = PARTIAL && v == NV - 1;
      __m256 r = acc[i][v];
      if (accumulate) r = _mm256_add_ps(r, masked ? _mm256_maskload_ps(c, mask) : _mm256_loadu_ps(c));
      if (bias) r = _mm256_add_ps(r, masked ? _mm256_maskload_ps(bias + 8 * v, mask) : _mm256_loadu_ps(bias + 8 * v));
      if (relu) r = _mm256_andnot_ps(_mm256_cmp_ps(r, _mm256_setzero_ps(), _CMP_LE_OQ), r);
      if (masked) {
        _mm256_maskstore_ps(c, mask, r);
      } else {
        _mm256_storeu_ps(c, r);
      }
    }
}

constexpr int kNnRows = 6, kNnCols = 16;  // 12 accumulators + 2 B vectors + 1 broadcast

template <int MR>
void nn_rows(int64_t cols, int64_t K, const float* A, int64_t sam, int64_t sak, const float* B, int64_t ldb,
             float* C, int64_t ldc, bool accumulate, const float* bias, bool relu) {
  if (cols == 16) return nn_block<MR, 2, false>(K, A, sam, sak, B, ldb, C, ldc, cols, accumulate, bias, relu);
  if (cols > 8) return nn_block<MR, 2, true>(K, A, sam, sak, B, ldb, C, ldc, cols, accumulate, bias, relu);
  if (cols == 8) return nn_block<MR, 1, false>(K, A, sam, sak, B, ldb, C, ldc, cols, accumulate, bias, relu);
  nn_block<MR, 1, true>(K, A, sam, sak, B, ldb, C, ldc, cols, accumulate, bias, relu);
}

}  // namespace

void gemm_nt(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
             int64_t ldc, const float* bias, bool relu) {
  // Columns outer: a block of B rows (NR x K) stays in L1 while the rows of A stream past it.
  for (int64_t n = 0; n < N; n += kNtCols) {
    const int nr = int(std::min<int64_t>(kNtCols, N - n));
    const float* Bn = B + n * ldb;
    const float* bn = bias ? bias + n : nullptr;
    int64_t m = 0;
    for (; m + kNtRows <= M; m += kNtRows) nt_rows<kNtRows>(nr, K, A + m * lda, lda, Bn, ldb, C + m * ldc + n, ldc, bn, relu);
    if (M - m == 2) nt_rows<2>(nr, K, A + m * lda, lda, Bn, ldb, C + m * ldc + n, ldc, bn, relu);
    if (M - m == 1) nt_rows<1>(nr, K, A + m * lda, lda, Bn, ldb, C + m * ldc + n, ldc, bn, relu);
  }
}

void gemm_nn(int64_t M, int64_t N, int64_t K, const float* A, int64_t sam, int64_t sak, const float* B, int64_t ldb,
             float* C, int64_t ldc, bool accumulate, const float* bias, bool relu) {
  // Column panels outer: a K x 16 panel of B stays in L1 across all rows of A.
  for (int64_t n = 0; n < N; n += kNnCols) {
    const int64_t cols = std::min<int64_t>(kNnCols, N - n);
    const float* bn = bias ? bias + n : nullptr;
    for (int64_t m = 0; m < M; m += kNnRows) {
      const float* Am = A + m * sam;
      float* Cm = C + m * ldc + n;
      switch (std::min<int64_t>(kNnRows, M - m)) {
        case 6: nn_rows<6>(cols, K, Am, sam, sak, B + n, ldb, Cm, ldc, accumulate, bn, relu); break;
        case 5: nn_rows<5>(cols, K, Am, sam, sak, B + n, ldb, Cm, ldc, accumulate, bn, relu); break;
        case 4: nn_rows<4>(cols, K, Am, sam, sak, B + n, ldb, Cm, ldc, accumulate, bn, relu); break;
        case 3: nn_rows<3>(cols, K, Am, sam, sak, B + n, ldb, Cm, ldc, accumulate, bn, relu); break;
        case 2: nn_rows<2>(cols, K, Am, sam, sak, B + n, ldb, Cm, ldc, accumulate, bn, relu); break;
        default: nn_rows<1>(cols, K, Am, sam, sak, B + n, ldb, Cm, ldc, accumulate, bn, relu); break;
      }
    }
  }
}

}  // namespace avx2
}  // namespace twolayer_ops

#endif  // TWOLAYER_OPS_AVX2_KERNELS
