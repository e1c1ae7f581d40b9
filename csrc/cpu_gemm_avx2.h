// Single-threaded AVX2/FMA float32 GEMM kernels (cpu_gemm_avx2.cpp). Call them only where
// cpu_gemm::available() is true; cpu_gemm.h is the tensor-level entry point.
#pragma once

#include <cstdint>

// GCC and Clang on x86-64 build the kernels; elsewhere cpu_gemm.h always declines, and BLAS runs.
#if defined(__x86_64__) && defined(__GNUC__)
#define TWOLAYER_OPS_AVX2_KERNELS 1
#else
#define TWOLAYER_OPS_AVX2_KERNELS 0
#endif

namespace twolayer_ops {
namespace avx2 {

// C[m, n] = relu?(bias[n] + sum_k A[m*lda + k] * B[n*ldb + k]); bias may be null.
void gemm_nt(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
             int64_t ldc, const float* bias, bool relu);

// C[m, n] = relu?((C[m, n] if accumulate) + bias[n] + sum_k A[m*sam + k*sak] * B[k*ldb + n]); bias may be null.
void gemm_nn(int64_t M, int64_t N, int64_t K, const float* A, int64_t sam, int64_t sak, const float* B, int64_t ldb,
             float* C, int64_t ldc, bool accumulate, const float* bias, bool relu);

}  // namespace avx2
}  // namespace twolayer_ops
