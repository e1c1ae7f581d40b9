// The small-GEMM kernels of each x86-64 vector ISA (cpu_gemm_kernels.h, compiled per ISA in
// cpu_gemm_avx2.cpp and cpu_gemm_avx512.cpp). Call an ISA's kernels only where the CPU has it;
// cpu_gemm.h is the tensor-level entry point, which checks that and picks one.
#pragma once

#include <cstdint>

// GCC and Clang on x86-64 build the kernels; elsewhere cpu_gemm.h always declines, and BLAS runs.
#if defined(__x86_64__) && defined(__GNUC__)
#define TWOLAYER_OPS_X86_KERNELS 1
#else
#define TWOLAYER_OPS_X86_KERNELS 0
#endif

namespace twolayer_ops {
namespace cpu_gemm {

struct IsaKernels {
  // Column widths that threads split N in: the dot products' whole blocks, and one vector for the
  // broadcast form (its panels are several vectors wide, and whole panels would split 128 columns 48:80).
  int nt_cols, nn_cols;
  // The dot products' least K (except for tiny problems): each output pays a fixed horizontal
  // reduction, which at shorter K costs more than BLAS's packing does.
  int nt_min_depth;
  // C[m, n] = relu?(bias[n] + sum_k A[m*lda + k] * B[n*ldb + k]); bias may be null.
  void (*gemm_nt)(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                  int64_t ldc, const float* bias, bool relu);
  // C[m, n] = relu?((C[m, n] if accumulate) + bias[n] + sum_k A[m*sam + k*sak] * B[k*ldb + n]); bias may be null.
  void (*gemm_nn)(int64_t M, int64_t N, int64_t K, const float* A, int64_t sam, int64_t sak, const float* B,
                  int64_t ldb, float* C, int64_t ldc, bool accumulate, const float* bias, bool relu);
};

#if TWOLAYER_OPS_X86_KERNELS
extern const IsaKernels kAvx2Kernels;    // AVX2 + FMA, 8 lanes
extern const IsaKernels kAvx512Kernels;  // AVX-512F, 16 lanes
#endif

}  // namespace cpu_gemm
}  // namespace twolayer_ops
