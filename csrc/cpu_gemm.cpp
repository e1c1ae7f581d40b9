// Dispatch and threading for the small-GEMM kernels (see cpu_gemm.h): the kernels of the best vector
// ISA the CPU has (cpu_gemm_isa.h), split over ATen's threads along N.
#include "cpu_gemm.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cpu_gemm_isa.h"

namespace twolayer_ops {
namespace cpu_gemm {
namespace {

// Above this many multiply-adds BLAS's packed, cache-blocked kernels win. Measured on a 2-core AMD
// EPYC, 2 threads: the AVX2 kernels 1.2-1.5x faster than MKL at the seed's 64x1000x100 (MKL's two
// threads share the work poorly there), even at 128^3, and MKL up to 1.5x faster at 256^3.
constexpr int64_t kMaxMacs = int64_t(1) << 23;
// Fewer multiply-adds than this per thread do not repay waking a thread.
constexpr int64_t kMinMacsPerThread = int64_t(1) << 17;
// Up to this many multiply-adds the kernels run at any depth: BLAS's fixed costs dominate there.
constexpr int64_t kTinyMacs = int64_t(1) << 18;

// The kernel sets by level: 0 none (BLAS runs), 1 AVX2 + FMA, 2 AVX-512F.
enum Isa : int { kNone = 0, kAvx2 = 1, kAvx512 = 2 };
constexpr const char* kIsaNames[] = {"none", "avx2", "avx512"};

int best_isa() {  // the best level this CPU has
#if TWOLAYER_OPS_X86_KERNELS
  static const int best = __builtin_cpu_supports("avx512f")                                    ? kAvx512
                          : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? kAvx2
                                                                                             : kNone;
  return best;
#else
  return kNone;
#endif
}

// TWOLAYER_OPS_CPU_ISA=none|avx2|avx512 caps the level (the best the CPU has if unset or higher).
int env_isa() {
  static const int level = [] {
    const char* v = std::getenv("TWOLAYER_OPS_CPU_ISA");
    for (int l = kNone; v && l <= kAvx512; ++l)
      if (std::strcmp(v, kIsaNames[l]) == 0) return std::min(l, best_isa());
    if (v != nullptr && *v != '\0')
      TORCH_WARN("TWOLAYER_OPS_CPU_ISA=", v, " is not one of none, avx2, avx512; using the CPU's best, ",
                 kIsaNames[best_isa()]);
    return best_isa();
  }();
  return level;
}

std::atomic<int> g_isa{-1};  // set_isa's level; -1: env_isa()

int isa() {
  const int level = g_isa.load(std::memory_order_relaxed);
  return level < 0 ? env_isa() : level;
}

const IsaKernels* kernels() {
#if TWOLAYER_OPS_X86_KERNELS
  switch (isa()) {
    case kAvx512: return &kAvx512Kernels;
    case kAvx2: return &kAvx2Kernels;
  }
#endif
  return nullptr;
}

bool applies(const at::Tensor& out, int64_t M, int64_t N, int64_t K) {
  return out.scalar_type() == at::kFloat && M > 0 && N > 0 && K > 0 && out.stride(1) == 1 && M * N * K <= kMaxMacs;
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
  const IsaKernels* ks = kernels();
  if (!ks || !applies(out, M, N, K) || a.scalar_type() != at::kFloat || b.scalar_type() != at::kFloat) return false;
  const float* ap = a.const_data_ptr<float>();
  const float* bp = b.const_data_ptr<float>();
  float* cp = out.mutable_data_ptr<float>();
  const int64_t ldc = out.stride(0);
  if (a.stride(1) == 1 && b.stride(1) == 1) {  // both unit-stride along K: dot products
    if (K < ks->nt_min_depth && M * N * K > kTinyMacs) return false;
    const int64_t lda = a.stride(0), ldb = b.stride(0);
    split_columns(M, N, K, ks->nt_cols, [&](int64_t n0, int64_t n1) {
      ks->gemm_nt(M, n1 - n0, K, ap, lda, bp + n0 * ldb, ldb, cp + n0, ldc, bias ? bias + n0 : nullptr, relu);
    });
    return true;
  }
  if (b.stride(0) == 1) {  // b = W^T of a row-major (K, N) W, as the seed's raw programs pass it
    const int64_t sam = a.stride(0), sak = a.stride(1), ldb = b.stride(1);
    split_columns(M, N, K, ks->nn_cols, [&](int64_t n0, int64_t n1) {
      ks->gemm_nn(M, n1 - n0, K, ap, sam, sak, bp + n0, ldb, cp + n0, ldc, false, bias ? bias + n0 : nullptr, relu);
    });
    return true;
  }
  return false;
}

bool matmul(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate) {
  const int64_t M = a.size(0), N = b.size(1), K = a.size(1);
  const IsaKernels* ks = kernels();
  if (!ks || !applies(out, M, N, K) || a.scalar_type() != at::kFloat || b.scalar_type() != at::kFloat ||
      b.stride(1) != 1)
    return false;
  const float* ap = a.const_data_ptr<float>();
  const float* bp = b.const_data_ptr<float>();
  float* cp = out.mutable_data_ptr<float>();
  const int64_t sam = a.stride(0), sak = a.stride(1), ldb = b.stride(0), ldc = out.stride(0);
  split_columns(M, N, K, ks->nn_cols, [&](int64_t n0, int64_t n1) {
    ks->gemm_nn(M, n1 - n0, K, ap, sam, sak, bp + n0, ldb, cp + n0, ldc, accumulate, nullptr, false);
  });
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

namespace {

void set_isa_op(int64_t level) {
  TORCH_CHECK(level >= -1 && level <= kAvx512,
              "twolayer_ops_cpu.set_isa: level must be -1 (the default), 0 (none: BLAS), 1 (avx2) or 2 (avx512), got ",
              level);
  TORCH_CHECK(level <= best_isa(), "twolayer_ops_cpu.set_isa: this CPU lacks ", kIsaNames[level], " (it has up to ",
              kIsaNames[best_isa()], ")");
  g_isa.store(int(level));
}

std::vector<int64_t> info_op() { return {isa(), best_isa()}; }

}  // namespace
}  // namespace cpu_gemm
}  // namespace twolayer_ops

// Which kernels the CPU small GEMMs run (levels 0 none: BLAS, 1 avx2, 2 avx512):
// torch.ops.twolayer_ops_cpu.info() -> [level in use, best level this CPU has];
// torch.ops.twolayer_ops_cpu.set_isa(level): -1 restores the default, the best the CPU has, capped by
// TWOLAYER_OPS_CPU_ISA=none|avx2|avx512. For tests and benchmarks of each level on one machine.
TORCH_LIBRARY(twolayer_ops_cpu, m) {
  m.def("info() -> int[]", &twolayer_ops::cpu_gemm::info_op);
  m.def("set_isa(int level) -> ()", &twolayer_ops::cpu_gemm::set_isa_op);
}
