// The Hopper (sm_90a) path of twolayer_ops: entry points that cuda/linear_relu.cu calls before its
// portable kernels. Each try_* returns true when it did the work, false when the call is not
// eligible (then the caller runs the portable kernels, unchanged). Implemented in linear_relu_sm90.cu.
//
// On by default since an H200 run validated it (2026-11-27: the GPU tests, memcheck; 5.3x the portable
// kernels' speed). The path is taken when
//   * the environment variable TWOLAYER_OPS_SM90 is not 0 (read once, at the first eligible call),
//     or torch.ops.twolayer_ops_sm90.set_mode(1) switched it on (-1: back to the variable, 0: off);
//   * the device has compute capability 9.0 and the loaded image of linear_relu_sm90.cu is the
//     sm_90a one (a one-off probe kernel per device says so; plain sm_90 or other images never run
//     these kernels);
//   * the dtype is float16 or bfloat16 and M*N*K >= 2^24 (smaller problems keep the portable path);
//     or float32 read as TF32 (forward and backward) when torch.backends.cuda.matmul.allow_tf32 is set
//     and the TF32 switch is on: it is by default since an H200 run validated the TF32 kernel
//     (2026-11-28); TWOLAYER_OPS_SM90_TF32=0 or torch.ops.twolayer_ops_sm90.set_tf32(0) turns it off;
//   * the operands suit TMA: x and W row-major (unit inner stride, row strides multiples of 16 bytes,
//     16-byte aligned base pointers); the backward also needs N % 8 == 0 (the masked gradient it
//     writes is read by TMA; TF32: N % 4 and, for dW, M % 4); every extent below 2^30.
// torch.ops.twolayer_ops_sm90.info() returns [mode, env, probe, forward calls, backward calls, tf32,
// cluster, cluster launches, tma_store, tma_store launches, wide_stores, wide-store launches,
// merged_backward, merged launches, stream_k, stream-K launches, overlap_mask, overlapped-mask launches]
// (probe: 1 sm_90a image on a 9.0 device, 0 not, -1 no CUDA device; tf32: the TF32 switch; cluster:
// blocks per cluster, 1 or 2; tma_store: the TMA-store switch; wide_stores: the 16-byte-store switch;
// overlap_mask: the overlapped-mask switch; the launch counts: launches in two-block
// clusters (a merged backward's one launch runs two GEMMs), GEMMs that stored C by TMA, GEMMs that
// stored 16-bit C in 16-byte stores, backwards whose dX and dW ran in one launch, GEMMs whose last
// waves' tiles were shared out by K-blocks, backwards whose masked gradient was written during a GEMM)
// for tests and benchmarks;
// torch.ops.twolayer_ops_sm90.set_group_m(g) sets the persistent tile order's group height (0: the
// default, 16), for tuning sweeps;
// torch.ops.twolayer_ops_sm90.set_cluster(n) runs the GEMMs in clusters of n = 2 blocks that share their
// B tile by TMA multicast (1: no clusters; -1: back to TWOLAYER_OPS_SM90_CLUSTER, where 2 turns them on);
// torch.ops.twolayer_ops_sm90.set_tma_store(1) makes the GEMMs' epilogue stage C in shared memory and
// store it by TMA, asynchronously (0: stores from the registers; -1: back to TWOLAYER_OPS_SM90_TMA_STORE,
// where 1 turns it on);
// torch.ops.twolayer_ops_sm90.set_wide_stores(1) makes the epilogue store 16-bit C from the registers
// in 16-byte stores, each quad of lanes trading its element pairs first (where TMA does not store C;
// 0: pair stores; -1: back to TWOLAYER_OPS_SM90_WIDE_STORES, where 1 turns it on);
// torch.ops.twolayer_ops_sm90.set_merged_backward(1) runs the backward's dX and dW in one persistent
// launch, their tiles in one sequence, so that they share one partial last wave (0: a launch each; -1:
// back to TWOLAYER_OPS_SM90_MERGED_BACKWARD, where 1 turns it on);
// torch.ops.twolayer_ops_sm90.set_stream_k(1) shares the tiles of a single-block GEMM's last whole wave
// and its partial one out by K-blocks, so that no SM idles through the partial wave (0: whole tiles;
// -1: back to TWOLAYER_OPS_SM90_STREAM_K, where 1 turns it on). TWOLAYER_OPS_SM90_GRID=n caps the
// persistent grid of single blocks at n (for tests: many tiles a block, stream-K on small problems);
// torch.ops.twolayer_ops_sm90.set_overlap_mask(1) has the 16-bit backward's first GEMM write the masked
// gradient (and db's column sums) with its producer warpgroups' spare warps while it runs, instead of a
// pass before it, where K >= 1024 and grad_out and the output are contiguous and 16-byte aligned (0: the
// pass; -1: back to TWOLAYER_OPS_SM90_OVERLAP_MASK, where 1 turns it on; the merged backward keeps it).
// All six off by default: written without a GPU, they wait for a GPU run to check and time them.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace twolayer_ops {
namespace sm90 {

// out (M, N) contiguous and freshly allocated; x2 (M, K); weight (N, K); bias (N,) or None.
bool try_forward(const at::Tensor& x2, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                 at::Tensor& out);

// g2, o2: grad_out and the saved output as (M, N) matrices (any strides); x2 (M, K); weight (N, K).
// grad_x (M, K), grad_w (N, K), grad_b (N,): contiguous, allocated by the caller for the requested ones.
bool try_backward(const at::Tensor& g2, const at::Tensor& o2, const at::Tensor& x2, const at::Tensor& weight,
                  bool run_dx, bool run_dw, bool run_db, at::Tensor& grad_x, at::Tensor& grad_w,
                  at::Tensor& grad_b);

}  // namespace sm90
}  // namespace twolayer_ops
