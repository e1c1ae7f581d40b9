// Dispatch and threading for the small-GEMM kernels (see cpu_gemm.h).
#include "cpu_gemm.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "cpu_gemm_avx2.h"

namespace twolayer_ops {
namespace cpu_gemm {
namespace {

// Above this many multiply-adds BLAS's packed, cache-blocked kernels win. Measured on a 2-core AMD
// EPYC, 2 threads: these kernels 1.2-1.5x faster than MKL at the seed's 64x1000x100 (MKL's two
// threads share the work poorly there), even at 128^3, and MKL up to 1.5x faster at 256^3.
constexpr int64_t kMaxMacs = int64_t(1) << 23;
// Fewer multiply-adds than this per thread do not repay waking a thread.
constexpr int64_t kMinMacsPerThread = int64_t(1) << 17;

bool cpu_has_avx2_fma() {
#if TWOLAYER_OPS_AVX2_KERNELS
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

bool applies(const at::Tensor& out, int64_t M, int64_t N, int64_t K) {
  return cpu_has_avx2_fma() && out.scalar_type() == at::kFloat && M > 0 && N > 0 && K > 0 && out.stride(1) == 1 &&
         M * N * K <= kMaxMacs;
}

// Runs fn(n_begin, n_end) over [0, N) in chunks of whole `align`-column blocks, one per thread.
template <typename F>
void split_columns(int64_t M, int64_t N, int64_t K, int64_t align, const F& fn) {
  const int64_t blocks = (N + align - 1) / align;
  const int64_t chunks = std::clamp<int64_t>(M * N * K / kMinMacsPerThread, 1, std::min<int64_t>(blocks, at::get_num_threads()));
  if (chunks == 1) return fn(0, N);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t n0 = blocks * c / chunks * align, n1 = std::min(N, blocks * (c + 1) / chunks * align);
      if (n0 < n1) fn(n0, n1);
    }
  });
}

}  // namespace

bool linear(const at::Tensor& a, const at::Tensor& b, const float* bias, bool relu, const at::Tensor& out) {
  const int64_t M = a.size(0), N = b.size(0), K = a.size(1);
  if (!applies(out, M, N, K) || a.scalar_type() != at::kFloat || b.scalar_type() != at::kFloat) return false;
#if TWOLAYER_OPS_AVX2_KERNELS  // else applies() was false
  const float* ap = a.const_data_ptr<float>();
  const float* bp = b.const_data_ptr<float>();
  float* cp = out.mutable_data_ptr<float>();
  const int64_t ldc = out.stride(0);
  if (a.stride(1) == 1 && b.stride(1) == 1) {  // both unit-stride along K: dot products
    const int64_t lda = a.stride(0), ldb = b.stride(0);
    split_columns(M, N, K, 4, [&](int64_t n0, int64_t n1) {
      avx2::gemm_nt(M, n1 - n0, K, ap, lda, bp + n0 * ldb, ldb, cp + n0, ldc, bias ? bias + n0 : nullptr, relu);
    });
    return true;
  }
  if (b.stride(0) == 1) {  // b = W^T of a row-major (K, N) W, as the seed's raw programs pass it
    const int64_t sam = a.stride(0), sak = a.stride(1), ldb = b.stride(1);
    split_columns(M, N, K, 16, [&](int64_t n0, int64_t n1) {
      avx2::gemm_nn(M, n1 - n0, K, ap, sam, sak, bp + n0, ldb, cp + n0, ldc, false, bias ? bias + n0 : nullptr, relu);
    });
    return true;
  }
#endif
  return false;
}

bool matmul(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate) {
  const int64_t M = a.size(0), N = b.size(1), K = a.size(1);
  if (!applies(out, M, N, K) || a.scalar_type() != at::kFloat || b.scalar_type() != at::kFloat || b.stride(1) != 1)
    return false;
#if TWOLAYER_OPS_AVX2_KERNELS  // else applies() was false
  const float* ap = a.const_data_ptr<float>();
  const float* bp = b.const_data_ptr<float>();
  float* cp = out.mutable_data_ptr<float>();
  const int64_t sam = a.stride(0), sak = a.stride(1), ldb = b.stride(0), ldc = out.stride(0);
  split_columns(M, N, K, 16, [&](int64_t n0, int64_t n1) {
    avx2::gemm_nn(M, n1 - n0, K, ap, sam, sak, bp + n0, ldb, cp + n0, ldc, accumulate, nullptr, false);
  });
#endif
  return true;
}

at::Tensor mm(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  if (!matmul(a, b, out, /*accumulate=*/false)) at::mm_out(out, a, b);
  return out;
}

void addmm_(const at::Tensor& acc, const at::Tensor& a, const at::Tensor& b) {
  if (!matmul(a, b, acc, /*accumulate=*/true)) acc.addmm_(a, b);
}

}  // namespace cpu_gemm
}  // namespace twolayer_ops
