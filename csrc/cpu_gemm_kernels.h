// Register-blocked float32 GEMM kernels for the small products of the seed's net, written once over
// a vector ISA S and compiled once per ISA: cpu_gemm_avx2.cpp (8 lanes) and cpu_gemm_avx512.cpp (16
// lanes) each define their S and include this file after their `#pragma GCC target`. No packing; the
// forward's bias and ReLU ride in the epilogue. Single-threaded: cpu_gemm.cpp splits the work and
// picks the ISA the CPU has.
//
// S gives: V (a vector of float), Mask (the first n lanes), kLanes, zero, load, load_first (lanes past
// the mask read nothing and give 0), store, store_first, broadcast, fma, add, relu (v <= 0 ? 0 : v,
// NaN passes), half (a 256-bit vector: the sum of V's halves, or V itself for 8 lanes), first_lanes;
// the register blocks: kNtRows x kNtCols outputs and kNnRows x kNnVecs vectors; and kNtMinDepth (see
// IsaKernels::nt_min_depth).
//
// Everything here has internal linkage: each ISA's file gets its own copy, compiled for that ISA, so
// the linker can never hand the AVX2 path an inline function built for AVX-512. Every fixed-trip loop
// over registers carries `#pragma GCC unroll`: unrolled early, the accumulator arrays become registers;
// without it GCC kept them on the stack, storing 12 of them every k.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "cpu_gemm_isa.h"

namespace twolayer_ops {
namespace cpu_kernels {
namespace {

// The four horizontal sums of a, b, c, d (256-bit vectors).
inline __m128 sum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

// v <= 0 ? 0 : v lane by lane; the ordered compare is false for NaN, which passes, as in torch.relu.
inline __m128 relu_keep_nan(__m128 v) { return _mm_andnot_ps(_mm_cmp_ps(v, _mm_setzero_ps(), _CMP_LE_OQ), v); }

// C[i, j] = epilogue(sum_k A[i, k] B[j, k]) for an MR x NR block: dot products along the unit-stride
// K of both operands, lane-wise partial sums folded at the end, four columns at a time.
template <class S, int MR, int NR>
void nt_block(int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
              const float* bias, bool relu) {
  using V = typename S::V;
  constexpr int L = S::kLanes, NG = (NR + 3) / 4;  // NG groups of 4 columns; those past NR stay zero
  V acc[MR][4 * NG];
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 16
    for (int j = 0; j < 4 * NG; ++j) acc[i][j] = S::zero();
  int64_t k = 0;
  for (; k + L <= K; k += L) {
    V a[MR];
    #pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) a[i] = S::load(A + i * lda + k);
    #pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) {
      const V b = S::load(B + j * ldb + k);
      #pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) acc[i][j] = S::fma(a[i], b, acc[i][j]);
    }
  }
  if (k < K) {  // the K tail: masked loads read nothing past the row and give zeros
    const typename S::Mask mask = S::first_lanes(K - k);
    V a[MR];
    #pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) a[i] = S::load_first(A + i * lda + k, mask);
    #pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) {
      const V b = S::load_first(B + j * ldb + k, mask);
      #pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) acc[i][j] = S::fma(a[i], b, acc[i][j]);
    }
  }
  #pragma GCC unroll 4
  for (int g = 0; g < NG; ++g) {
    constexpr int last = NR - 4 * (NG - 1);  // columns in the last group
    const int cols = g == NG - 1 ? last : 4;
    alignas(16) float b4[4] = {0, 0, 0, 0};
    if (bias) {
      #pragma GCC unroll 4
      for (int j = 0; j < cols; ++j) b4[j] = bias[4 * g + j];
    }
    const __m128 bv = _mm_load_ps(b4);
    #pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const V* r = acc[i] + 4 * g;
      __m128 v = _mm_add_ps(sum4(S::half(r[0]), S::half(r[1]), S::half(r[2]), S::half(r[3])), bv);
      if (relu) v = relu_keep_nan(v);
      float* c = C + i * ldc + 4 * g;
      if (cols == 4) {
        _mm_storeu_ps(c, v);
      } else {
        alignas(16) float out[4];
        _mm_store_ps(out, v);
        #pragma GCC unroll 4
        for (int j = 0; j < cols; ++j) c[j] = out[j];
      }
    }
  }
}

// The block for the last nr < S::kNtCols columns, rows MR.
template <class S, int MR, int NR = S::kNtCols>
void nt_rows(int nr, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
             const float* bias, bool relu) {
  if constexpr (NR > 1) {
    if (nr < NR) return nt_rows<S, MR, NR - 1>(nr, K, A, lda, B, ldb, C, ldc, bias, relu);
  }
  nt_block<S, MR, NR>(K, A, lda, B, ldb, C, ldc, bias, relu);
}

// The last m < S::kNtRows rows of a column block.
template <class S, int MR = S::kNtRows - 1>
void nt_tail_rows(int64_t m, int nr, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                  int64_t ldc, const float* bias, bool relu) {
  if constexpr (MR > 1) {
    if (m < MR) return nt_tail_rows<S, MR - 1>(m, nr, K, A, lda, B, ldb, C, ldc, bias, relu);
  }
  nt_rows<S, MR>(nr, K, A, lda, B, ldb, C, ldc, bias, relu);
}

// C[m, n] = relu?(bias[n] + sum_k A[m*lda + k] * B[n*ldb + k]); bias may be null.
template <class S>
void gemm_nt(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
             int64_t ldc, const float* bias, bool relu) {
  // Columns outer: a block of B rows (NR x K) stays in L1 while the rows of A stream past it.
  for (int64_t n = 0; n < N; n += S::kNtCols) {
    const int nr = int(std::min<int64_t>(S::kNtCols, N - n));
    const float* Bn = B + n * ldb;
    const float* bn = bias ? bias + n : nullptr;
    int64_t m = 0;
    for (; m + S::kNtRows <= M; m += S::kNtRows)
      nt_rows<S, S::kNtRows>(nr, K, A + m * lda, lda, Bn, ldb, C + m * ldc + n, ldc, bn, relu);
    if (m < M) nt_tail_rows<S>(M - m, nr, K, A + m * lda, lda, Bn, ldb, C + m * ldc + n, ldc, bn, relu);
  }
}

// C[i, 0:cols] = epilogue((C[i, 0:cols] if accumulate) + sum_k A[i*sam + k*sak] B[k, 0:cols]) for an
// MR x (L NV) block, cols <= L NV: A broadcast, B loaded along its unit-stride N; with PARTIAL the
// last vector is masked to cols. The epilogue adds bias[0:cols] (if given), then ReLU (if asked).
// PARTIAL is a template argument so that each instance has one k loop.
template <class S, int MR, int NV, bool PARTIAL>
void nn_block(int64_t K, const float* A, int64_t sam, int64_t sak, const float* B, int64_t ldb, float* C,
              int64_t ldc, int64_t cols, bool accumulate, const float* bias, bool relu) {
  using V = typename S::V;
  constexpr int L = S::kLanes;
  const typename S::Mask mask = S::first_lanes(PARTIAL ? cols - L * (NV - 1) : L);
  V acc[MR][NV];
  #pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[i][v] = S::zero();
  for (int64_t k = 0; k < K; ++k) {
    const float* b_row = B + k * ldb;
    V b[NV];
    #pragma GCC unroll 8
    for (int v = 0; v < NV; ++v)
      b[v] = PARTIAL && v == NV - 1 ? S::load_first(b_row + L * v, mask) : S::load(b_row + L * v);
    const float* a_col = A + k * sak;
    #pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const V a = S::broadcast(a_col + i * sam);
      #pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[i][v] = S::fma(a, b[v], acc[i][v]);
    }
  }
  #pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
    #pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      float* c = C + i * ldc + L * v;
      const bool masked = PARTIAL && v == NV - 1;
      V r = acc[i][v];
      if (accumulate) r = S::add(r, masked ? S::load_first(c, mask) : S::load(c));
      if (bias) r = S::add(r, masked ? S::load_first(bias + L * v, mask) : S::load(bias + L * v));
      if (relu) r = S::relu(r);
      if (masked) {
        S::store_first(c, mask, r);
      } else {
        S::store(c, r);
      }
    }
}

// An MR-row block over cols <= S::kNnVecs * L columns: as many vectors as the columns need, the last
// one masked where they do not fill it.
template <class S, int MR, int NV = S::kNnVecs>
void nn_rows(int64_t cols, int64_t K, const float* A, int64_t sam, int64_t sak, const float* B, int64_t ldb,
             float* C, int64_t ldc, bool accumulate, const float* bias, bool relu) {
  constexpr int L = S::kLanes;
  if constexpr (NV > 1) {
    if (cols <= L * (NV - 1)) return nn_rows<S, MR, NV - 1>(cols, K, A, sam, sak, B, ldb, C, ldc, accumulate, bias, relu);
  }
  if (cols == L * NV) return nn_block<S, MR, NV, false>(K, A, sam, sak, B, ldb, C, ldc, cols, accumulate, bias, relu);
  nn_block<S, MR, NV, true>(K, A, sam, sak, B, ldb, C, ldc, cols, accumulate, bias, relu);
}

// The last m < S::kNnRows rows of a column panel.
template <class S, int MR = S::kNnRows - 1>
void nn_tail_rows(int64_t m, int64_t cols, int64_t K, const float* A, int64_t sam, int64_t sak, const float* B,
                  int64_t ldb, float* C, int64_t ldc, bool accumulate, const float* bias, bool relu) {
  if constexpr (MR > 1) {
    if (m < MR) return nn_tail_rows<S, MR - 1>(m, cols, K, A, sam, sak, B, ldb, C, ldc, accumulate, bias, relu);
  }
  nn_rows<S, MR>(cols, K, A, sam, sak, B, ldb, C, ldc, accumulate, bias, relu);
}

// C[m, n] = relu?((C[m, n] if accumulate) + bias[n] + sum_k A[m*sam + k*sak] * B[k*ldb + n]); bias may be null.
template <class S>
void gemm_nn(int64_t M, int64_t N, int64_t K, const float* A, int64_t sam, int64_t sak, const float* B, int64_t ldb,
             float* C, int64_t ldc, bool accumulate, const float* bias, bool relu) {
  constexpr int64_t kCols = int64_t(S::kNnVecs) * S::kLanes;
  // Column panels outer: a K x kCols panel of B stays in L1 across all rows of A.
  for (int64_t n = 0; n < N; n += kCols) {
    const int64_t cols = std::min<int64_t>(kCols, N - n);
    const float* bn = bias ? bias + n : nullptr;
    int64_t m = 0;
    for (; m + S::kNnRows <= M; m += S::kNnRows)
      nn_rows<S, S::kNnRows>(cols, K, A + m * sam, sam, sak, B + n, ldb, C + m * ldc + n, ldc, accumulate, bn, relu);
    if (m < M)
      nn_tail_rows<S>(M - m, cols, K, A + m * sam, sam, sak, B + n, ldb, C + m * ldc + n, ldc, accumulate, bn, relu);
  }
}

// S's entry in the table of each ISA's kernels (cpu_gemm_isa.h).
template <class S>
constexpr cpu_gemm::IsaKernels table() {
  return {S::kNtCols, S::kLanes, S::kNtMinDepth, gemm_nt<S>, gemm_nn<S>};
}

}  // namespace
}  // namespace cpu_kernels
}  // namespace twolayer_ops
