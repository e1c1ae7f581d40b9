// float32 GEMMs for small CPU problems, on the register-blocked kernels of the best vector ISA the CPU
// has (AVX-512 or AVX2, cpu_gemm_isa.h), split over ATen's threads. linear and matmul return false,
// touching nothing, where they do not apply (another dtype or layout, a problem large enough that BLAS
// wins, a CPU without AVX2 and FMA, or TWOLAYER_OPS_CPU_ISA=none); mm and addmm_ fall back to BLAS
// themselves.
#pragma once

#include <ATen/core/Tensor.h>

namespace twolayer_ops {
namespace cpu_gemm {

// out (M, N) = relu?(a (M, K) @ b (N, K)^T + bias); bias (N,) or null. Either a and b unit-stride
// along K, or b unit-stride along N (b the transpose of a row-major (K, N) matrix), a any strides.
bool linear(const at::Tensor& a, const at::Tensor& b, const float* bias, bool relu, const at::Tensor& out);

// out (M, N) (+)= a (M, K) @ b (K, N); b unit-stride along N, a any strides.
bool matmul(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate);

// a @ b and acc += a @ b, of any floating dtype and layout.
at::Tensor mm(const at::Tensor& a, const at::Tensor& b);
void addmm_(const at::Tensor& acc, const at::Tensor& a, const at::Tensor& b);

}  // namespace cpu_gemm
}  // namespace twolayer_ops
