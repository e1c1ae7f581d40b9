// The fused training step of the seed's two-layer net on CUDA: forward, MSE-sum loss, backward and
// the optimizer update of `steps` consecutive steps in ONE cooperative kernel launch.
//   h = relu(x W1^T + b1);  y_pred = h W2^T + b2;  loss = sum((y_pred - y)^2)
// Same semantics as the CPU kernels in ../train_step.cpp (which see): gradients of loss * loss_scale
// are added to the accumulators, an updating call steps every parameter with torch.optim's formulas
// (SGD, SGD with momentum, Adam) and zeroes the accumulators.
//
// Work split. The grid is Pj x Pk blocks (Pj * Pk <= number of SMs, one block per SM). Block
// (jb, kb) owns the tile W1[j0 : j0+uj, k0 : k0+kl] (j hidden units, k input features), and keeps
// that tile, its gradient accumulator and its optimizer state in shared memory for the whole launch,
// together with x[:, k0 : k0+kl]; they go back to global memory once, at the end. Each step is three
// phases separated by two grid barriers (cooperative_groups::this_grid().sync()):
//   A  partial pre-activations over the block's k range: zpart[kb][n][j] = sum_k x[n,k] W1[j,k]
//      (shared memory only; lanes split k, fixed-order shuffle reduction).
//   -- grid barrier --
//   B  row n of the batch on block n % grid (rows spread over all blocks): z = sum over kb of
//      zpart (fixed order) + b1, h = relu (v <= 0 ? 0 : v, so NaN passes), y_pred = h W2^T + b2,
//      gy = 2 * loss_scale * (y_pred - y), the row's loss in double, gh = (gy W2) masked by h <= 0.
//      h, gy, gh and the row losses go to a global (L2-resident) scratch.
//   -- grid barrier --
//   C  the block's W1 tile: grad += gh[:, j]^T x[:, k] (shared memory; gh staged in shared memory,
//      all N rows at once or, where they do not fit, in chunks of rows), then, on an updating call,
//      the optimizer and the zeroing of the tile's accumulator. The small parameters (b1, W2, b2:
//      H + D_out*H + D_out elements) are split into contiguous chunks over all blocks; each element's
//      gradient is a warp's fixed-order reduction over the batch read from the scratch; its owner
//      adds it, updates, zeroes. Block 0 sums the row losses into losses[step].
// Ownership makes every write race-free: W1 elements belong to one block (and stay in its shared
// memory), small parameters to one warp of one block; W2, b1, b2 are read only in phase B and written
// only in phase C, with a grid barrier between (and the next step's phase B comes after the next
// step's first barrier), so no second copy of W2 is needed. zpart is written in A and read in B; h,
// gy, gh in B and read in C, each pair separated by a barrier, and the next writer comes after the
// following barrier. No atomics: every sum has a fixed order, so results are bitwise reproducible and
// two_layer_train over k steps equals k two_layer_step calls bitwise (the split depends only on the
// sizes, dtype, optimizer and device, never on the number of steps).
//
// On-chip limits (es = 4 bytes for float32, 8 for float64): with kl = ceil(D_in / Pk), uj =
// ceil(H / Pj), ujp = uj rounded up to a multiple of 4, ns = 0 (sgd), 1 (momentum), 2 (adam), a split
// fits when Pj * Pk <= the SM count and one block's shared memory,
//   es * [N * (kl | 1) + (2 + ns) * kl * ujp] + max(es * min(N, 32) * ujp, es * (H + D_out) + 8 * D_out)
// (plus 16-byte alignment), is at most the device's opt-in limit (227 KiB on H100/H200). The host
// searches every split and takes the cheapest that fits (a rough cost model); none fitting is a clear
// RuntimeError ("exceeds the on-chip limits of the fused CUDA step"): such sizes train on the unfused
// path (the recipes without fused_step). In words, for float32 on 132 SMs: x, W1, W1's gradient and state must fit in all
// SMs' shared memory together, (N + (2 + ns) * H) * D_in <= ~7.5M elements (the seed net needs 0.46M
// with Adam); one block's x slice, N * ceil(D_in / #SMs) <= ~57k elements; and one batch row's
// activations, H + 3 * D_out <= ~57k. float64 halves each.
// Dtypes: float32 and float64. Zero sizes (N, D_in, H or D_out = 0) work; steps == 0 launches nothing.
// The work split and the kernel body are plain C++ over a few device primitives (train_step_kernel.h):
// CI runs them on a host emulation (one OS thread per CUDA thread, barriers for __syncthreads, the grid
// barrier and warp shuffles) against the CPU step, and under ThreadSanitizer (tests/test_fused_step_emulated.py).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "../train_step.h"

namespace twolayer_ops {
namespace fused_cuda {

// ---------------------------------------------------------------------------------------------
// Device primitives: what the portable core (train_step_kernel.h) runs on, besides threadIdx /
// blockIdx / gridDim and __syncthreads().

__device__ __forceinline__ void grid_barrier() { cooperative_groups::this_grid().sync(); }

template <typename T>
__device__ __forceinline__ T shfl_down(T v, int d) {
  return __shfl_down_sync(0xffffffffu, v, d);
}
template <typename T>
__device__ __forceinline__ T shfl_xor(T v, int m) {
  return __shfl_xor_sync(0xffffffffu, v, m);
}

// Correctly rounded, never contracted into an FMA, so that the optimizer's arithmetic is exactly the
// formula written in apply_opt.
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ float sqrt_rn(float a) { return __fsqrt_rn(a); }
__device__ __forceinline__ double sqrt_rn(double a) { return __dsqrt_rn(a); }

template <typename T>
struct Quad {
  T v[4];
};
// Four consecutive elements from 16-byte aligned shared memory.
__device__ __forceinline__ Quad<float> load4(const float* p) {
  const float4 q = *reinterpret_cast<const float4*>(p);
  return {{q.x, q.y, q.z, q.w}};
}
__device__ __forceinline__ Quad<double> load4(const double* p) {
  const double2 a = *reinterpret_cast<const double2*>(p);
  const double2 b = *reinterpret_cast<const double2*>(p + 2);
  return {{a.x, a.y, b.x, b.y}};
}

}  // namespace fused_cuda
}  // namespace twolayer_ops

#include "train_step_kernel.h"  // make_plan, FusedArgs, fused_block: the portable core

namespace twolayer_ops {
namespace fused_cuda {

// ---------------------------------------------------------------------------------------------

template <typename T, int OPT>
__global__ void __launch_bounds__(kThreads, 1) fused_two_layer_kernel(const __grid_constant__ FusedArgs<T> a) {
  // __grid_constant__: `a` (about 420 bytes) is read in place from the parameter space; passed on by
  // reference, it would otherwise be copied into every thread's local memory.
  extern __shared__ __align__(16) unsigned char fused_smem[];
  fused_block<T, OPT>(a, fused_smem);
}

// ---------------------------------------------------------------------------------------------
// Host side.

struct DeviceInfo {
  int sms = 0;
  int64_t smem_optin = 0;
  bool cooperative = false;
};

struct CachedPlan {
  Plan plan;
  int64_t min_smem = 0;
  int occupancy = 0;  // resident blocks per SM at the plan's shared memory
  int sms = 0;
};

template <typename T, int OPT>
const void* kernel_ptr() {
  return reinterpret_cast<const void*>(&fused_two_layer_kernel<T, OPT>);
}

// Plans depend on (device, sizes, dtype, optimizer) only; cached so a step pays no search.
template <typename T, int OPT>
CachedPlan get_plan(int device, int64_t n, int64_t d_in, int64_t h, int64_t d_out) {
  static std::mutex mu;
  static std::map<std::array<int64_t, 5>, CachedPlan> cache;
  static std::map<int, DeviceInfo> devices;
  const std::array<int64_t, 5> key = {device, n, d_in, h, d_out};
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  auto dit = devices.find(device);
  if (dit == devices.end()) {
    DeviceInfo info;
    int v = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&info.sms, cudaDevAttrMultiProcessorCount, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    cudaFuncAttributes attrs;
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attrs, kernel_ptr<T, OPT>()));
    info.smem_optin = v - int(attrs.sharedSizeBytes);  // what static shared memory leaves (none today)
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrCooperativeLaunch, device));
    info.cooperative = v != 0;
    // Allow every plan of this kernel up to the device's limit (the launch asks for what it needs).
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel_ptr<T, OPT>(), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(info.smem_optin)));
    dit = devices.emplace(device, info).first;
  }
  const DeviceInfo& info = dit->second;
  TORCH_CHECK(info.cooperative, "two_layer_step: the fused CUDA step needs cooperative launch, which device ", device,
              " does not support");
  CachedPlan c;
  c.sms = info.sms;
  constexpr int ns = OPT == kSgd ? 0 : OPT == kMomentum ? 1 : 2;
  c.plan = make_plan(n, d_in, h, d_out, int64_t(sizeof(T)), ns, info.sms, info.smem_optin, &c.min_smem);
  if (c.plan.ok) {
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&c.occupancy, &fused_two_layer_kernel<T, OPT>,
                                                                 kThreads, size_t(c.plan.lay.total)));
  }
  cache.emplace(key, c);
  return c;
}

std::string limits_message(int64_t n, int64_t d_in, int64_t h, int64_t d_out, at::ScalarType dtype,
                           const std::string& optimizer, int device, int64_t min_smem) {
  int sms = 0, optin = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  return "two_layer_step: N=" + std::to_string(n) + ", D_in=" + std::to_string(d_in) + ", H=" + std::to_string(h) +
         ", D_out=" + std::to_string(d_out) + " (" + std::string(c10::toString(dtype)) + ", " + optimizer +
         ") exceeds the on-chip limits of the fused CUDA step: it keeps x, W1, W1's gradient and optimizer state in "
         "shared memory split over at most " + std::to_string(sms) + " blocks of " + std::to_string(optin) +
         " bytes, and the best split needs " + std::to_string(min_smem) +
         " bytes per block (roughly: (N + (2 + state tensors) * H) * D_in elements over all SMs, N * (D_in / #SMs) and "
         "H + 3 * D_out elements per block). Use the unfused path for this size.";
}

template <typename T, int OPT>
void launch(const at::Tensor& x, const at::Tensor& y, at::TensorList params, at::TensorList grads,
            at::TensorList state, const std::string& optimizer, double lr, double momentum, double beta1,
            double beta2, double eps, int64_t steps, bool single, bool single_update, int64_t single_step,
            int64_t calls_done, int64_t acc, double loss_scale, const at::Tensor& losses) {
  const int64_t n = x.size(0), d_in = x.size(1), h = params[0].size(0), d_out = y.size(1);
  const int device = x.get_device();
  const CachedPlan c = get_plan<T, OPT>(device, n, d_in, h, d_out);
  TORCH_CHECK(c.plan.ok, limits_message(n, d_in, h, d_out, x.scalar_type(), optimizer, device, c.min_smem));
  TORCH_CHECK(c.occupancy >= 1 && c.plan.grid() <= int64_t(c.occupancy) * c.sms,
              "two_layer_step: the fused CUDA step's ", c.plan.grid(), " blocks (", c.plan.lay.total,
              " bytes of shared memory each) cannot all be resident on device ", device,
              " (occupancy ", c.occupancy, " per SM); use the unfused path");
  if (steps == 0) return;

  const Plan& p = c.plan;
  at::Tensor scratch = at::empty({std::max<int64_t>(scratch_layout(p, n, h, d_out, sizeof(T)).bytes, 16)},
                                 x.options().dtype(at::kByte));
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();

  FusedArgs<T> a{};
  set_plan(a, p, n, d_in, h, d_out, scratch.data_ptr<unsigned char>());
  a.x = xc.const_data_ptr<T>();
  a.y = yc.const_data_ptr<T>();
  for (int i = 0; i < 4; ++i) {
    a.p[i] = params[i].data_ptr<T>();
    a.g[i] = grads[i].data_ptr<T>();
    a.s0[i] = state.size() >= 4 ? state[i].data_ptr<T>() : nullptr;
    a.s1[i] = state.size() >= 8 ? state[4 + i].data_ptr<T>() : nullptr;
  }
  a.losses = losses.data_ptr<T>();
  a.steps = steps;
  a.single = single;
  a.single_update = single_update;
  a.single_step = single_step;
  a.calls_done = calls_done;
  a.acc = acc;
  a.loss_scale = loss_scale;
  a.lr = lr;
  a.momentum = momentum;
  a.beta1 = beta1;
  a.beta2 = beta2;
  a.eps = eps;

  void* kargs[] = {&a};
  C10_CUDA_CHECK(cudaLaunchCooperativeKernel(kernel_ptr<T, OPT>(), dim3(unsigned(p.grid())), dim3(kThreads), kargs,
                                             size_t(p.lay.total), c10::cuda::getCurrentCUDAStream().stream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void run_fused(const at::Tensor& x, const at::Tensor& y, at::TensorList params, at::TensorList grads,
               at::TensorList state, const std::string& optimizer, double lr, double momentum, double beta1,
               double beta2, double eps, int64_t steps, bool single, bool single_update, int64_t single_step,
               int64_t calls_done, int64_t acc, double loss_scale, const at::Tensor& losses) {
  TORCH_CHECK(x.is_cuda(), "two_layer_step: the CUDA kernel got x on ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "two_layer_step: the fused CUDA step supports float32 and float64, got ", x.scalar_type());
  for (int64_t v : {x.size(0), x.size(1), params[0].size(0), y.size(1)})
    TORCH_CHECK(v < (int64_t(1) << 31), "two_layer_step: sizes must be below 2^31, got ", v);
  c10::cuda::CUDAGuard guard(x.device());
  const int opt = optimizer == "sgd" ? kSgd : optimizer == "momentum" ? kMomentum : kAdam;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "two_layer_step_cuda", [&] {
    auto go = [&](auto opt_tag) {
      launch<scalar_t, decltype(opt_tag)::value>(x, y, params, grads, state, optimizer, lr, momentum, beta1, beta2,
                                                 eps, steps, single, single_update, single_step, calls_done, acc,
                                                 loss_scale, losses);
    };
    if (opt == kSgd) {
      go(std::integral_constant<int, kSgd>{});
    } else if (opt == kMomentum) {
      go(std::integral_constant<int, kMomentum>{});
    } else {
      go(std::integral_constant<int, kAdam>{});
    }
  });
}

at::Tensor two_layer_step_cuda(const at::Tensor& x, const at::Tensor& y, at::TensorList params, at::TensorList grads,
                               at::TensorList state, c10::string_view optimizer_view, double lr, double momentum,
                               double beta1, double beta2, double eps, int64_t step, double loss_scale, bool update) {
  const std::string optimizer(optimizer_view);
  check_step_args(x, y, params, grads, state, optimizer);
  check_adam_step(optimizer, step, update);
  at::Tensor loss = at::empty({}, x.options());
  run_fused(x, y, params, grads, state, optimizer, lr, momentum, beta1, beta2, eps, 1, /*single=*/true, update, step,
            0, 1, loss_scale, loss);
  return loss;
}

at::Tensor two_layer_train_cuda(const at::Tensor& x, const at::Tensor& y, at::TensorList params,
                                at::TensorList grads, at::TensorList state, c10::string_view optimizer_view,
                                double lr, double momentum, double beta1, double beta2, double eps, int64_t calls_done,
                                int64_t steps, int64_t accumulation_steps) {
  check_train_args(calls_done, steps, accumulation_steps);
  const std::string optimizer(optimizer_view);
  check_step_args(x, y, params, grads, state, optimizer);
  at::Tensor losses = at::empty({steps}, x.options());
  // Checks and plans even for steps == 0 (same errors either way); launch() returns before the launch.
  run_fused(x, y, params, grads, state, optimizer, lr, momentum, beta1, beta2, eps, steps, /*single=*/false, false, 0,
            calls_done, accumulation_steps, 1.0 / double(accumulation_steps), losses);
  return losses;
}

}  // namespace fused_cuda

TORCH_LIBRARY_IMPL(twolayer_ops, CUDA, m) {
  m.impl("two_layer_step", &fused_cuda::two_layer_step_cuda);
  m.impl("two_layer_train", &fused_cuda::two_layer_train_cuda);
}

}  // namespace twolayer_ops
