// CUDA kernels of twolayer_ops: y = relu(x @ W^T + b), its backward, and a standalone ReLU.
//
// One tiled GEMM kernel, C[M,N] = A[M,K] @ B[K,N], serves all three products. A and B are read
// through arbitrary int64 element strides (transposes, non-contiguous views, storage offsets and
// unaligned pointers need no copies); 16-byte vector loads are used where a tile row is
// contiguous and aligned, scalar loads otherwise. MODE picks the variant:
//   0  forward  A = x (M,K),                       B[k][n] = W[n][k],  epilogue: + bias, ReLU
//   1  dX       A = G masked by out (M,N),         B = W (N,K)
//   2  dW       A[n][m] = G[m][n] masked (N,M),    B = x (M,K),        row sums of A -> db
// The mask (out <= 0 ? 0 : g) is applied as the G tiles go from registers to shared memory.
// db is deterministic: the blocks of the first column of output tiles (n0 == 0) already stream
// every masked G element of their rows, and each sums its own rows in a fixed order; no atomics.
// Forward and dX outputs of too few tiles to fill the GPU split K (plan_split_k): each slice writes
// its partial product to a workspace, and splitk_reduce_kernel sums them in order, then the epilogue.
// The backward runs dX (its slices, if split) and dW in one launch (grads_kernel), side by side.
// float32 / float64 run a SIMT path (FMA, never TF32); float16 / bfloat16 run WMMA tensor cores
// (16x16x16, float accumulators) with the epilogue staged through shared memory.
// The operands, the tile loader, both policies and the kernel body are plain C++ in linear_relu_gemm.h
// (CI runs them on a CPU: tests/test_gemm_emulated.py); this file adds the 16-bit element types, the
// kernels and the launches.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "../linear_relu.h"

// linear_relu_gemm.h's hint (tests/cuda_emulation.cpp has its own): the 128-byte line at p into L2.
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.L2 [%0];" ::"l"(p)); }

#include "linear_relu_gemm.h"  // operands, tile loader, SIMT policy, kernel body: the portable core
#include "sm90.h"              // the Hopper path (linear_relu_sm90.cu), tried first; see sm90.h

namespace twolayer_ops {
namespace cuda_gemm {

// ---------------------------------------------------------------------------------------------
// The 16-bit element types: raw bits, computed in float.

template <>
struct Elem<c10::Half> {
  using raw = unsigned short;
  using vec = uint4;
  using acc = at::opmath_type<c10::Half>;
  using wt = __half;  // the WMMA element type
  static constexpr int VEC = 8;
  __device__ __forceinline__ static acc tof(raw r) { return __half2float(__ushort_as_half(r)); }
  __device__ __forceinline__ static raw fromf(acc a) { return __half_as_ushort(__float2half_rn(a)); }
};

template <>
struct Elem<c10::BFloat16> {
  using raw = unsigned short;
  using vec = uint4;
  using acc = at::opmath_type<c10::BFloat16>;
  using wt = __nv_bfloat16;
  static constexpr int VEC = 8;
  __device__ __forceinline__ static acc tof(raw r) { return __bfloat162float(__ushort_as_bfloat16(r)); }
  __device__ __forceinline__ static raw fromf(acc a) { return __bfloat16_as_ushort(__float2bfloat16_rn(a)); }
};

template <>
struct PolicyFor<c10::Half> {
  using type = WmmaPolicy<c10::Half>;
};
template <>
struct PolicyFor<c10::BFloat16> {
  using type = WmmaPolicy<c10::BFloat16>;
};

// Blocks per SM that the register budget must allow. Two for the SIMT kernels, which fit 128
// registers without spilling in their k-loops (ptxas, sm_90a; tests/test_machine_code.py checks both;
// float32 dW fits since the tile loader keeps its shared-memory offsets): a second resident block
// computes through the first one's barriers and loads (on the H200 the float32 forward went from 1.60x
// to 1.39x cuBLAS with it and a leaner tile loader, 2026-11-28). Not for the WMMA kernels.
template <typename T>
constexpr int kMinBlocksPerSm = std::is_same_v<T, float> || std::is_same_v<T, double> ? 2 : 1;

template <typename T, int MODE, int TILES>
__global__ void __launch_bounds__(Policy<T, TILES>::NT, kMinBlocksPerSm<T>) gemm_kernel(const GemmArgs g) {
  __shared__ __align__(128) unsigned char smem[Policy<T, TILES>::SMEM];
  gemm_body<T, MODE, TILES>(g, smem, blockIdx.x, gridDim.x);
}

// The backward's dX and dW (with db) in one grid (grads_body): dx_blocks blocks for dX, the rest for dW.
template <typename T, int TILES>
__global__ void __launch_bounds__(Policy<T, TILES>::NT, kMinBlocksPerSm<T>)
    grads_kernel(const GemmArgs dx, const GemmArgs dw, unsigned dx_blocks) {
  __shared__ __align__(128) unsigned char smem[Policy<T, TILES>::SMEM];
  grads_body<T, TILES>(dx, dw, smem, blockIdx.x, dx_blocks, gridDim.x);
}

template <typename T, int MODE>
__global__ void splitk_reduce_kernel(const GemmArgs g) {
  const int64_t step = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < g.M * g.N; i += step)
    splitk_reduce_body<T, MODE>(g, i);
}

// dst = mask <= 0 ? 0 : val. relu: mask = val = x; relu backward: mask = out, val = grad_out.
template <typename T>
__global__ void relu_mask_kernel(const typename Elem<T>::raw* mask, const typename Elem<T>::raw* val,
                                 typename Elem<T>::raw* dst, int64_t n) {
  using raw = typename Elem<T>::raw;
  const int64_t step = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step)
    dst[i] = le0<Elem<T>>(mask[i]) ? raw(0) : val[i];
}

}  // namespace cuda_gemm

namespace {

using namespace cuda_gemm;

// ---------------------------------------------------------------------------------------------
// Host side.

Mat mat(const at::Tensor& t) { return {t.const_data_ptr(), t.stride(0), t.stride(1)}; }

int sm_count(const at::Tensor& like) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, like.get_device()));
  return sms;
}

int l2_bytes(const at::Tensor& like) {
  int bytes = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrL2CacheSize, like.get_device()));
  return bytes;
}

// K-tiles a split-K slice spans at least (plan_split_k): TWOLAYER_OPS_SPLITK_MIN_KTILES, 2 or more,
// else kMinKTiles. A knob for the GPU runs to time deeper splits at the seed's sizes.
int64_t split_min_ktiles() {
  static const int64_t v = [] {
    const char* s = std::getenv("TWOLAYER_OPS_SPLITK_MIN_KTILES");
    const int64_t n = s != nullptr ? std::strtoll(s, nullptr, 10) : 0;
    return n >= 2 ? n : kMinKTiles;
  }();
  return v;
}

// plan_prefetch's L2 prefetch: on unless TWOLAYER_OPS_L2_PREFETCH=0, for GPU runs to time it against none.
bool l2_prefetch_on() {
  static const bool on = [] {
    const char* v = std::getenv("TWOLAYER_OPS_L2_PREFETCH");
    return v == nullptr || std::string(v) != "0";
  }();
  return on;
}

bool env_on(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && std::string(v) == "1";
}

// float32's tile kinds (SimtTiles), each off until a GPU run times it: the small-output tiles where they
// fit (use_small_tiles) with TWOLAYER_OPS_SIMT_SMALL_TILES=1, the 128-thread tiles elsewhere with
// TWOLAYER_OPS_SIMT_WIDE_THREAD_TILES=1.
template <typename T>
int simt_tiles(const GemmArgs& g, const at::Tensor& like) {
  static const bool small_on = env_on("TWOLAYER_OPS_SIMT_SMALL_TILES");
  static const bool wide_on = env_on("TWOLAYER_OPS_SIMT_WIDE_THREAD_TILES");
  if (!std::is_same_v<T, float>) return kDefaultTiles;
  if (small_on && use_small_tiles<T>(g, sm_count(like))) return kSmallTiles;
  return wide_on ? kWideThreadTiles : kDefaultTiles;
}

// Plans g's split over K (plan_split_k) and its L2 prefetch (plan_prefetch), and gives it its
// workspace: undefined where K is not split.
template <typename T, int MODE, int TILES>
at::Tensor plan_workspace(GemmArgs& g, const at::Tensor& like) {
  const int sms = sm_count(like);
  const int64_t work = plan_split_k<T, MODE, TILES>(g, sms, split_min_ktiles());
  plan_prefetch<T, MODE, TILES>(g, sms, l2_prefetch_on() ? l2_bytes(like) : 0);  // no L2: no prefetch
  if (work <= 0) return {};
  at::Tensor workspace = at::empty({work}, like.options().dtype(c10::CppTypeToScalarType<typename Elem<T>::acc>::value));
  g.work = workspace.data_ptr();
  return workspace;  // freed when the caller returns: stream-ordered, so after the kernels that use it
}

// The reduce pass of a product that split K: the slices summed in order, then the epilogue.
template <typename T, int MODE>
void launch_reduce(const GemmArgs& g, cudaStream_t stream) {
  const unsigned blocks = unsigned(std::min<int64_t>(ceil_div(g.M * g.N, 256), 8192));
  splitk_reduce_kernel<T, MODE><<<blocks, 256, 0, stream>>>(g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// One product on like's device, in TILES' tiles; small outputs over a long K split K (plan_split_k),
// through a workspace.
template <typename T, int MODE, int TILES>
void launch_gemm_tiles(GemmArgs g, const at::Tensor& like) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor workspace = plan_workspace<T, MODE, TILES>(g, like);
  const int64_t tiles = gemm_tiles<T, TILES>(g);
  if (tiles <= 0) return;  // never launch an empty grid
  const unsigned grid = unsigned(std::min<int64_t>(tiles, INT_MAX));
  gemm_kernel<T, MODE, TILES><<<grid, Policy<T, TILES>::NT, 0, stream>>>(g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if constexpr (MODE != 2) {  // dW never splits: its db row sums run inside its tiles
    if (workspace.defined()) launch_reduce<T, MODE>(g, stream);
  }
}

template <typename T, int MODE>
void launch_gemm(const GemmArgs& g, const at::Tensor& like) {
  if constexpr (std::is_same_v<T, float>) {
    switch (simt_tiles<T>(g, like)) {
      case kSmallTiles: return launch_gemm_tiles<T, MODE, kSmallTiles>(g, like);
      case kWideThreadTiles: return launch_gemm_tiles<T, MODE, kWideThreadTiles>(g, like);
    }
  }
  launch_gemm_tiles<T, MODE, kDefaultTiles>(g, like);
}

// The backward's dX and dW (with db) in one launch (grads_kernel), in TILES' tiles; a dX that splits
// K has its slices run there and its reduce pass after.
template <typename T, int TILES>
void launch_grads_tiles(GemmArgs dx, GemmArgs dw, const at::Tensor& like) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor workspace = plan_workspace<T, 1, TILES>(dx, like);
  // Each part's blocks walk its work items (grads_body), so capping a part's blocks only lengthens its walk.
  const int64_t dx_blocks = std::min<int64_t>(gemm_tiles<T, TILES>(dx), INT_MAX / 2);
  const int64_t dw_blocks = std::min<int64_t>(gemm_tiles<T, TILES>(dw), INT_MAX / 2);
  grads_kernel<T, TILES><<<unsigned(dx_blocks + dw_blocks), Policy<T, TILES>::NT, 0, stream>>>(dx, dw,
                                                                                             unsigned(dx_blocks));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (workspace.defined()) launch_reduce<T, 1>(dx, stream);
}

// One launch runs both products in one tile kind: the small tiles where both fit them. The 128-thread
// tiles run them one launch each: a kernel with both bodies would spill (each alone takes 245 to 255
// registers), and they are for products large enough to fill the GPU on their own.
template <typename T>
void launch_grads(const GemmArgs& dx, const GemmArgs& dw, const at::Tensor& like) {
  if constexpr (std::is_same_v<T, float>) {
    const int tx = simt_tiles<T>(dx, like), tw = simt_tiles<T>(dw, like);
    if (tx == kSmallTiles && tw == kSmallTiles) return launch_grads_tiles<T, kSmallTiles>(dx, dw, like);
    if (tx != kDefaultTiles && tw != kDefaultTiles) {
      launch_gemm_tiles<T, 1, kWideThreadTiles>(dx, like);
      return launch_gemm_tiles<T, 2, kWideThreadTiles>(dw, like);
    }
  }
  launch_grads_tiles<T, kDefaultTiles>(dx, dw, like);
}

void launch_relu_mask(const at::Tensor& mask, const at::Tensor& val, at::Tensor& dst) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  constexpr int threads = 256;
  const unsigned blocks = unsigned(std::min<int64_t>(ceil_div(n, threads), 8192));  // grid-stride beyond
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dst.scalar_type(), "relu_mask_cuda", [&] {
    using raw = typename Elem<scalar_t>::raw;
    relu_mask_kernel<scalar_t><<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        static_cast<const raw*>(mask.const_data_ptr()), static_cast<const raw*>(val.const_data_ptr()),
        static_cast<raw*>(dst.data_ptr()), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// bfloat16 WMMA needs sm_80+: older GPUs get this error instead of the kernel's trap.
void check_bf16_arch(const at::Tensor& x, const char* op) {
  if (x.scalar_type() != at::kBFloat16) return;
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, x.get_device()));
  TORCH_CHECK(major >= 8, op, ": the native bfloat16 kernels need compute capability 8.0 or newer, this GPU has ",
              major, ".x; use backend='torch'");
}

}  // namespace

at::Tensor linear_relu_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_linear_relu_args(x, weight, bias);
  TORCH_CHECK(x.is_cuda(), "linear_relu: expected CUDA tensors, got x on ", x.device());
  check_bf16_arch(x, "linear_relu");
  c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor x2 = as_matrix(x);
  const int64_t M = x2.size(0), K = x2.size(1), N = weight.size(0);
  at::Tensor out = at::empty({M, N}, x.options());
  if (M > 0 && N > 0 && sm90::try_forward(x2, weight, bias, out)) return out.view(linear_out_sizes(x, N));
  if (M > 0 && N > 0) {  // K == 0 runs the epilogue alone: relu(bias) or zeros
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "linear_relu_cuda", [&] {
      const bool b = has_bias(bias);
      launch_gemm<scalar_t, 0>(forward_args<scalar_t>(mat(x2), mat(weight), b ? bias->const_data_ptr() : nullptr,
                                                      b ? bias->stride(0) : 0, out.data_ptr(), M, K, N),
                               x);
    });
  }
  return out.view(linear_out_sizes(x, N));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_relu_backward_cuda(const at::Tensor& grad_out,
                                                                         const at::Tensor& out, const at::Tensor& x,
                                                                         const at::Tensor& weight,
                                                                         std::array<bool, 3> output_mask) {
  check_linear_relu_args(x, weight, std::nullopt);
  TORCH_CHECK(x.is_cuda(), "linear_relu_backward: expected CUDA tensors, got x on ", x.device());
  check_bf16_arch(x, "linear_relu_backward");
  check_grad_like_out(grad_out, out, "linear_relu_backward");
  TORCH_CHECK(out.sizes() == at::IntArrayRef(linear_out_sizes(x, weight.size(0))),
              "linear_relu_backward: saved output shape ", out.sizes(), " does not match x ", x.sizes(),
              " and weight ", weight.sizes());
  TORCH_CHECK(out.scalar_type() == x.scalar_type() && out.device() == x.device(),
              "linear_relu_backward: grad_out and out must match x's dtype and device");
  c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor x2 = as_matrix(x);
  const int64_t M = x2.size(0), K = x2.size(1), N = weight.size(0);
  const auto opts = x.options();
  const bool run_dx = output_mask[0] && M > 0 && N > 0 && K > 0;
  const bool run_dw = output_mask[1] && M > 0 && N > 0 && K > 0;
  const bool run_db = output_mask[2] && M > 0 && N > 0;
  at::Tensor grad_x = !output_mask[0] ? unrequested(x) : run_dx ? at::empty({M, K}, opts) : at::zeros({M, K}, opts);
  at::Tensor grad_w = !output_mask[1] ? unrequested(x) : run_dw ? at::empty({N, K}, opts) : at::zeros({N, K}, opts);
  at::Tensor grad_b = !output_mask[2] ? unrequested(x) : run_db ? at::empty({N}, opts) : at::zeros({N}, opts);

  const bool done_sm90 = (run_dx || run_dw) && sm90::try_backward(as_matrix(grad_out), as_matrix(out), x2, weight,
                                                                  run_dx, run_dw, run_db, grad_x, grad_w, grad_b);
  if (!done_sm90 && (run_dx || run_dw || run_db)) {
    const at::Tensor g = as_matrix(grad_out), o = as_matrix(out);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "linear_relu_backward_cuda", [&] {
      const GemmArgs dx = grad_x_args<scalar_t>(mat(g), mat(o), mat(weight), grad_x.data_ptr(), M, N, K);
      // Without dW, c stays nullptr: a db-only pass.
      const GemmArgs dw = grad_w_args<scalar_t>(mat(g), mat(o), mat(x2), run_dw ? grad_w.data_ptr() : nullptr,
                                                run_db ? grad_b.data_ptr() : nullptr, M, N, K);
      if (run_dx && (run_dw || run_db)) {
        launch_grads<scalar_t>(dx, dw, x);
      } else if (run_dx) {
        launch_gemm<scalar_t, 1>(dx, x);
      } else {
        launch_gemm<scalar_t, 2>(dw, x);
      }
    });
  }
  if (output_mask[0]) grad_x = grad_x.view(x.sizes());
  return {grad_x, grad_w, grad_b};
}

at::Tensor relu_cuda(const at::Tensor& x) {
  TORCH_CHECK(is_float_dtype(x.scalar_type()), "relu: x must be a floating tensor, got ", x.scalar_type());
  TORCH_CHECK(x.is_cuda(), "relu: expected a CUDA tensor, got x on ", x.device());
  c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  launch_relu_mask(xc, xc, out);
  return out;
}

at::Tensor relu_backward_cuda(const at::Tensor& grad_out, const at::Tensor& out) {
  check_grad_like_out(grad_out, out, "relu_backward");
  TORCH_CHECK(is_float_dtype(out.scalar_type()), "relu_backward: out must be a floating tensor, got ",
              out.scalar_type());
  TORCH_CHECK(out.is_cuda(), "relu_backward: expected CUDA tensors, got out on ", out.device());
  c10::cuda::CUDAGuard device_guard(out.device());
  const at::Tensor gc = grad_out.contiguous(), oc = out.contiguous();
  at::Tensor grad_x = at::empty(out.sizes(), out.options());
  launch_relu_mask(oc, gc, grad_x);
  return grad_x;
}

TORCH_LIBRARY_IMPL(twolayer_ops, CUDA, m) {
  m.impl("linear_relu", &linear_relu_cuda);
  m.impl("linear_relu_backward", &linear_relu_backward_cuda);
  m.impl("relu", &relu_cuda);
  m.impl("relu_backward", &relu_backward_cuda);
}

}  // namespace twolayer_ops
