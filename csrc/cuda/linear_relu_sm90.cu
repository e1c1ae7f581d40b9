// The Hopper (sm_90a) path of twolayer_ops: a persistent, warp-specialized GEMM on TMA and wgmma,
// used for the forward out = relu(x @ W^T + b) and the two backward GEMMs, float16 / bfloat16 with
// float32 accumulation, and for float32 as TF32 where torch allows TF32 matmuls. Entry
// points and when it runs: sm90.h. Everything else (other GPUs, other dtypes, layouts TMA cannot read,
// small problems) keeps the portable kernels of linear_relu.cu.
//
// The GEMM, C[M,N] = A[M,K] B[K,N] (+ bias, ReLU, cast in the epilogue):
//   * Tiles 128 x 256 x 128 bytes of K (BK = 64 16-bit or 32 TF32 elements). A block is 3 warpgroups
//     (384 threads): warpgroup 0 is the producer (setmaxnreg.dec to 40; one thread issues the TMA
//     copies), warpgroups 1 and 2 are the consumers (setmaxnreg.inc to 232), each owning 64 rows of the
//     tile: one wgmma.m64n256k16 (k8 for TF32) per 32-byte K step, 128 float accumulators per thread.
//   * A 4-stage shared-memory ring (48 KB a stage: A 16 KB + B 32 KB, 128-byte swizzle) with a "full"
//     mbarrier (TMA transaction bytes) and an "empty" mbarrier (one arrival per consumer warp) a stage.
//     Consumers keep one wgmma batch in flight (wait_group 1) and free a stage once the batch that
//     read it has retired.
//   * Persistent grid (one block per SM); block b takes tiles b, b + grid, ... in a grouped order
//     (16 tile-rows per group, tile-rows fastest) so that the tiles in flight share A and B in L2.
//     The producer runs ahead into the next tile while the consumers run the epilogue.
//   * Optionally (set_cluster(2), TWOLAYER_OPS_SM90_CLUSTER=2; off until a GPU run times it) clusters of
//     two blocks on tile-rows 2i, 2i + 1: each loads half of their common B tile and multicasts it to
//     both, cutting the L2 -> SM traffic per tile from 48 KB to 32 KB a K-step. Without it, the 132 SMs
//     at cuBLAS's speed would pull about 8 TB/s from L2.
//   * Operands come either K-major (the reduction axis contiguous: one TMA box per tile, 128-byte rows)
//     or MN-major (M or N contiguous: 64 x 64 boxes, wgmma's transpose bit; 16-bit types only, so the
//     TF32 backward copies those operands transposed and reads every operand K-major).
//   * Epilogue straight from the accumulator fragments: + bias (optional), ReLU as v <= 0 ? 0 : v
//     (NaN passes, never fmaxf), cast, and stores of element pairs (bounds-checked rows/cols). Optionally
//     (set_tma_store(1), TWOLAYER_OPS_SM90_TMA_STORE=1; off until a GPU run times it) the same values go
//     to swizzled shared-memory boxes that TMA stores while the consumers start the next tile. Or
//     (set_wide_stores(1), TWOLAYER_OPS_SM90_WIDE_STORES=1; off until timed) 16-bit C leaves the
//     registers in 16-byte stores: each quad of lanes trades its pairs (quad_transpose.h) so that its 4
//     lanes write whole 32-byte sectors, where pair stores write half sectors, 4x as many stores.
//     Every epilogue takes its bias from registers, loaded while the tile's last wgmma batch runs.
//   * K, M, N tails: TMA fills out-of-range elements with zeros; boxes that lie wholly outside the
//     matrix are not issued (their stale shared memory only reaches rows / columns never stored).
//   * Optionally (set_stream_k(1), TWOLAYER_OPS_SM90_STREAM_K=1; off until timed) stream-K for the last
//     waves: their tiles are shared out by K-blocks, evenly over the blocks (plan_stream_k).
// Uses:
//   forward  A = x (M,K) K-major, B = W (N,K) K-major, epilogue + bias, ReLU.
//   dX       A = Gm (M,N) K-major, B[k=n][j] = W[n][j]: W is MN-major;   C = dX (M,K).
//   dW       A[i=n][k=m] = Gm[m][n]: Gm is MN-major, B = x (M,K) MN-major; C = dW (N,K).
//   TF32     the forward as above; dX with B = W^T and dW with A = Gm^T, B = x^T, copied K-major.
// Backward: one elementwise pass writes Gm = (out <= 0 ? 0 : grad_out) once (M x N, contiguous) and,
// when db is wanted, per-block float32 column partial sums; a second tiny kernel adds the partials of
// each column in a fixed order (deterministic, no atomics). The two GEMMs then read Gm through TMA.
// Optionally (set_merged_backward(1), TWOLAYER_OPS_SM90_MERGED_BACKWARD=1; off until timed) they run in
// one persistent launch (sm90_gemm_pair_kernel), their tiles one sequence, so that they end on one
// partial wave instead of one each (about 3% of the backward's GEMMs at the issue's shapes).
// Optionally (set_overlap_mask(1), TWOLAYER_OPS_SM90_OVERLAP_MASK=1; off until timed) there is no pass:
// the spare warps of the first GEMM's producer warpgroups write Gm (and db's column sums) while it runs,
// in 64 x 64 chunks in the order it reads them, each published by a flag that its producer waits for
// (mask_chunks, overlap_mask.h). The pass's memory traffic then hides under the GEMM's tensor-core time.
// Why the extra pass rather than masking G as it is loaded: with TMA + wgmma the tiles go from global
// memory to shared memory to the tensor cores without passing through registers, so a fused mask needs
// either register-sourced A fragments (ldmatrix, mask, wgmma with A in registers; for dW the A operand
// is MN-major) or a read-modify-write of each shared tile by the consumers with an extra proxy fence,
// both of which cost mainloop issue slots in every tile of both GEMMs and are much harder to get right
// without a GPU to check on. The pass reads G and out once and writes Gm once (3 x M x N x 2 bytes,
// about 55 us at 8192 x 4096 on an H200 against ~800 us of GEMMs) and also makes G's layout irrelevant.
// The in-place variant (out's tile loaded by TMA beside G's, masked element by element, both in the same
// swizzled layout) would add 48 KB of shared-memory traffic a K-step to the 80 KB the two consumers'
// wgmma already read from it: 128 bytes a clock at full tensor speed, the whole shared-memory bandwidth,
// against 62% now. The register-fed variant meets the ptxas wgmma hazard of the README. hopper_evidence
// breaks the backward down by kernel; a GPU run should measure the pass there before this is revisited.
//
// sm_90a-only device code sits under __CUDA_ARCH_FEAT_SM90_ALL: every other image (sm_90, older archs,
// PTX) gets empty GEMM kernels and the host never selects them (a probe kernel reports which image the
// driver loaded).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda.h>  // CUtensorMap and its enums; the encoder comes from cudaGetDriverEntryPointByVersion
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "stream_k.h"
#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../linear_relu.h"
#include "overlap_mask.h"
#include "quad_transpose.h"
#include "sm90.h"

namespace twolayer_ops {
namespace sm90 {
namespace {

constexpr int kBM = 128, kBN = 256, kStages = 4;
constexpr int kRowBytes = 128;                     // a K-tile's depth in bytes: one 128-byte swizzle span
constexpr int kConsumers = 2;                      // consumer warpgroups, 64 tile rows each
constexpr int kThreads = 128 * (1 + kConsumers);   // + the producer warpgroup
[[maybe_unused]] constexpr int kProducerRegs = 40, kConsumerRegs = 232;  // 128 * (40 + 2 * 232) = 64512 <= 65536
constexpr int kABytes = kBM * kRowBytes;           // 16 KB
constexpr int kBBytes = kBN * kRowBytes;           // 32 KB
[[maybe_unused]] constexpr int kBox = 64 * 64 * 2;                 // one MN-major box: 64 (M or N) x 64 (K), 8 KB
constexpr int kCBox = 64 * kRowBytes;              // one C box of the TMA-store epilogue: 64 rows x 128 bytes
constexpr int kSmemBytes = kStages * (kABytes + kBBytes) + kConsumers * 2 * kCBox + 1024 /* alignment slack */ +
                           2 * kStages * 8 + 4 * (1 + 3 * kMaxSkPieces);
constexpr int kGroupM = 16;                        // tile-rows per group of the persistent order
static_assert(kSmemBytes <= 227 * 1024, "shared memory per block on sm_90");

// The masked gradient Gm = out <= 0 ? 0 : g, written chunk by chunk (overlap_mask.h) by the spare warps of
// the producer warpgroup while the backward's first GEMM runs (set_overlap_mask; 16-bit types): that
// GEMM's A is Gm, loaded a K-tile at a time once the K-tile's chunks are written. flags: rows x cols chunk
// flags (1 once written), zeros at the launch, as are the counters next and done; flags nullptr: no such
// job. A separate kernel parameter (in GemmArgs it cost the pair kernel's registers), with everything the
// writers need worked out on the host: what they keep in registers, their 40 would not hold.
struct MaskJob {
  const uint16_t* g = nullptr;  // grad_out (M, N), contiguous, 16-byte aligned
  const uint16_t* o = nullptr;  // the forward's output (M, N), the same
  uint16_t* gm = nullptr;       // Gm (M, N), the same
  float* partial = nullptr;     // (rows, N): each chunk-row's column sums, for db; or nullptr
  int* flags = nullptr;
  int* next = nullptr;          // the next chunk of the writing order to take
  int* done = nullptr;          // chunks written
  int M = 0, N = 0, rows = 0, cols = 0, total = 0;  // Gm's extents (N % 8 == 0), in chunks, chunks in all
  int lines = 0;                // the writing order's chunk-lines a group (launch_gemm_cl)
};

struct GemmArgs {
  void* c = nullptr;           // (M, N) with row stride ldc, of the kernel's element type
  const void* bias = nullptr;  // (N,) with stride bias_s, or nullptr
  int64_t ldc = 0, bias_s = 0;
  int M = 0, N = 0, K = 0;
  int tiles_m = 0, tiles_n = 0, k_blocks = 0, group_m = kGroupM;  // tiles_m, group_m: rows of CL tiles
  int pair_ok = 0;    // C rows take stores of element pairs (ldc even, C aligned to a pair)
  int tma_store = 0;  // the epilogue stores C through shared memory and TMA (the kernel's tma_c)
  int wide_stores = 0;  // else 16-byte stores of 16-bit C (rows 16-byte aligned) where a tile's columns all fit
  // Stream-K (plan_stream_k; single blocks only; the schedule: stream_k.h): the last sk.sk_tiles tiles
  // are shared out by K-blocks. The block that holds a shared tile's first K-blocks adds the other
  // blocks' partial sums, sk_partials[b] (kBM x kBN floats each), once their sk_flags[b] read 1.
  SkPlan sk;
  float* sk_partials = nullptr;
  int* sk_flags = nullptr;
};

// The element types: float16, bfloat16, and float32 read as TF32 where torch allows TF32. wgmma takes
// TF32 operands K-major only: the TF32 backward copies the operands it reads MN-major, transposed.
// A K-tile is 128 bytes deep whatever the type: 64 16-bit or 32 TF32 elements, 4 wgmma K steps.
enum Dt : int { kF16 = 0, kBF16 = 1, kTF32 = 2 };

template <int DT>
struct Elt;
template <>
struct Elt<kF16> {
  using raw = uint16_t;
  __device__ __forceinline__ static float to_f(raw r) { return __half2float(__ushort_as_half(r)); }
  __device__ __forceinline__ static raw from_f(float v) { return __half_as_ushort(__float2half_rn(v)); }
};
template <>
struct Elt<kBF16> {
  using raw = uint16_t;
  __device__ __forceinline__ static float to_f(raw r) { return __bfloat162float(__ushort_as_bfloat16(r)); }
  __device__ __forceinline__ static raw from_f(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
};
template <>
struct Elt<kTF32> {
  using raw = float;
  __device__ __forceinline__ static float to_f(raw r) { return r; }
  __device__ __forceinline__ static raw from_f(float v) { return v; }
};

template <int DT>
constexpr int kBK = kRowBytes / int(sizeof(typename Elt<DT>::raw));  // K-tile depth in elements

// The 16-bit element pair (lo, hi) as one word, lo in the low half (its address comes first).
template <int DT>
__device__ __forceinline__ uint32_t pack_pair(float lo, float hi) {
  static_assert(sizeof(typename Elt<DT>::raw) == 2, "pairs of 16-bit types only");
  return uint32_t(Elt<DT>::from_f(lo)) | (uint32_t(Elt<DT>::from_f(hi)) << 16);
}

// Stores the element pair (lo, hi) at p, 2-element aligned: one 4-byte (16-bit types) or 8-byte store.
template <int DT>
__device__ __forceinline__ void store_pair(typename Elt<DT>::raw* p, float lo, float hi) {
  if constexpr (DT == kTF32) {
    *reinterpret_cast<float2*>(p) = make_float2(lo, hi);
  } else {
    *reinterpret_cast<uint32_t*>(p) = pack_pair<DT>(lo, hi);
  }
}

// The bias of a consumer thread's 64 columns of a tile (col + 8j and col + 8j + 1 for j < 32), zeros
// without a bias and past N: 16-bit pairs packed like pack_pair (32 registers), float pairs as they are
// (64). The epilogue loads it all while the tile's last wgmma batch runs. Loaded next to each store, the
// bias waits: the compiler may not move a load of it above the stores before it (they might alias C),
// so the SASS waited out one load latency a pair, 32 a tile, with the tensor cores idle.
template <int DT>
struct TileBias {
  using raw = typename Elt<DT>::raw;
  static constexpr bool kPacked = sizeof(raw) == 2;
  using Pair = std::conditional_t<kPacked, uint32_t, float2>;
  Pair v[kBN / 8];

  __device__ __forceinline__ void load(const GemmArgs& a, int64_t col) {
    const auto* bias = static_cast<const raw*>(a.bias);
    if (bias != nullptr && a.bias_s == 1 && reinterpret_cast<uintptr_t>(bias) % sizeof(Pair) == 0 &&
        col + kBN - 7 < a.N) {
      // Contiguous, aligned (col is even), every pair in range: one load a pair.
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) v[j] = *reinterpret_cast<const Pair*>(bias + col + 8 * j);
    } else {
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) {
        const int64_t n = col + 8 * j;
        const raw lo = bias != nullptr && n < a.N ? bias[n * a.bias_s] : raw(0);
        const raw hi = bias != nullptr && n + 1 < a.N ? bias[(n + 1) * a.bias_s] : raw(0);
        if constexpr (kPacked) {
          v[j] = uint32_t(lo) | (uint32_t(hi) << 16);
        } else {
          v[j] = make_float2(lo, hi);
        }
      }
    }
  }

  __device__ __forceinline__ float2 pair(int j) const {
    if constexpr (kPacked) {
      return make_float2(Elt<DT>::to_f(raw(v[j] & 0xffffu)), Elt<DT>::to_f(raw(v[j] >> 16)));
    } else {
      return v[j];
    }
  }
};

// ReLU as v <= 0 ? 0 : v: NaN <= 0 is false, so NaN passes (never fmaxf, which would drop it).
template <bool RELU>
__device__ __forceinline__ float activate(float v) {
  if constexpr (RELU) return v <= 0.f ? 0.f : v;
  return v;
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// ---- sm_90a primitives (inline PTX) --------------------------------------------------------------

// The pair store of store_pair, into shared memory at `addr`.
template <int DT>
__device__ __forceinline__ void store_pair_shared(uint32_t addr, float lo, float hi) {
  if constexpr (DT == kTF32) {
    asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(addr), "f"(lo), "f"(hi) : "memory");
  } else {
    asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(pack_pair<DT>(lo, hi)) : "memory");
  }
}

// One 16-byte store of four words to global memory at p (16-byte aligned). Inline PTX: from a uint4
// store, nvcc split the first of a run of them into four 4-byte stores.
__device__ __forceinline__ void store_global_16(void* p, uint32_t w0, uint32_t w1, uint32_t w2, uint32_t w3) {
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(p), "r"(w0), "r"(w1), "r"(w2), "r"(w3) : "memory");
}

// Tile t of the persistent order -> (tile-row, tile-column): groups of group_m tile-rows, tile-rows
// fastest inside a group (the tiles of one wave share few A rows and B columns).
__device__ __forceinline__ void tile_coords(int t, const GemmArgs& a, int& tm, int& tn) {
  const int per_group = a.group_m * a.tiles_n;
  const int group = t / per_group;
  const int first = group * a.group_m;
  const int rows = min(a.tiles_m - first, a.group_m);
  const int r = t - group * per_group;
  tm = first + r % rows;
  tn = r / rows;
}

// The tiles that run whole: all but the last sk_tiles (stream-K, plan_stream_k).
__device__ __forceinline__ int whole_tiles(const GemmArgs& a) { return a.tiles_m * a.tiles_n - a.sk.sk_tiles; }


__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

__device__ __forceinline__ void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}

__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

// Waits for the phase of parity `parity` to complete. A wait that lasts over ~2^34 cycles (seconds)
// can only be a bug (a TMA that never lands, a barrier count off): trap rather than hang the GPU.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  if (done) return;
  const long long start = clock64();
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
    if (!done && clock64() - start > (1ll << 34)) __trap();
  } while (!done);
}

// This CTA's rank in its cluster, the cluster's index in the grid, and the number of clusters.
__device__ __forceinline__ void cluster_position(int& rank, int& cluster, int& clusters) {
  uint32_t r, c, n;
  asm("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  asm("mov.u32 %0, %%clusterid.x;\n" : "=r"(c));
  asm("mov.u32 %0, %%nclusterid.x;\n" : "=r"(n));
  rank = int(r);
  cluster = int(c);
  clusters = int(n);
}

__device__ __forceinline__ void prefetch_tmap(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// 2-D TMA load of one box at element coordinates (c0 innermost, c1) into shared memory, completing
// transaction bytes on mbarrier `bar`.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, int c0, int c1, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}

// The same copy multicast: the box lands at offset `dst` of the shared memory of every CTA of the cluster
// in `mask`, and completes its bytes on the mbarrier at offset `bar` of each of them.
__device__ __forceinline__ void tma_load_2d_multicast(uint32_t dst, const CUtensorMap* map, int c0, int c1,
                                                      uint32_t bar, uint16_t mask) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster"
      " [%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar), "h"(mask)
      : "memory");
}

// Arrives on the mbarrier at shared offset `bar` of the cluster's CTA `rank` (this CTA's own included).
// Default (CTA-scope release) semantics, as CUTLASS's ClusterBarrier::arrive: the arrival only orders this
// thread's reads of a stage, done by wgmma and retired by wait_group, before the producers overwrite it;
// ptxas 13.0 compiles a cluster-scope release to a MEMBAR.ALL.GPU before every arrival. If a GPU run
// shows results wrong only in clusters, try .release.cluster here first.
__device__ __forceinline__ void mbar_arrive_cluster(uint32_t bar, uint32_t rank) {
  asm volatile(
      "{\n.reg .b32 remote;\nmapa.shared::cluster.u32 remote, %0, %1;\n"
      "mbarrier.arrive.shared::cluster.b64 _, [remote];\n}\n" ::"r"(bar),
      "r"(rank)
      : "memory");
}

// Every thread of every CTA of the cluster (not warp-aligned: the producer warp's lanes arrive apart).
// RELAXED: no release of this thread's memory operations (a MEMBAR.ALL.GPU in the machine code), for the
// start, where fence_barrier_init has already released the barriers' initialization to the cluster.
template <bool RELAXED>
__device__ __forceinline__ void cluster_sync() {
  if constexpr (RELAXED) {
    asm volatile("barrier.cluster.arrive.relaxed;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
  } else {
    asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
  }
}

// 2-D TMA store of one box from shared memory (`src`, laid out as the map's swizzle says) at element
// coordinates (c0 innermost, c1); elements past the matrix are not written. Joins this thread's open
// bulk group; bulk_commit closes it.
__device__ __forceinline__ void tma_store_2d(const CUtensorMap* map, uint32_t src, int c0, int c1) {
  asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%1, %2}], [%3];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(c0), "r"(c1), "r"(src)
               : "memory");
}

__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }

// Waits until at most N of this thread's bulk groups are still reading their shared memory.
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}

// Waits until at most N of this thread's bulk groups are incomplete (their global writes done).
template <int N>
__device__ __forceinline__ void bulk_wait() {
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
}

// Makes this thread's shared-memory writes visible to the async proxy (the TMA store that reads them).
__device__ __forceinline__ void fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Barrier `id` (1..15) among `threads` threads, whole warps.
__device__ __forceinline__ void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// A flag between blocks, as CUTLASS's GenericBarrier: the writer fences (acq_rel, GPU scope: its block's
// writes that a barrier ordered before it are then visible first), the reader loads with acquire.
__device__ __forceinline__ void flag_release(int* flag) {
  asm volatile("fence.acq_rel.gpu;\nst.relaxed.gpu.global.b32 [%0], %1;\n" ::"l"(flag), "r"(1) : "memory");
}
__device__ __forceinline__ int flag_acquire(const int* flag) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(flag) : "memory");
  return v;
}
// Waits for the flag to read 1; traps after ~2^34 cycles, as mbar_wait does.
__device__ __forceinline__ void flag_wait(const int* flag) {
  const long long start = clock64();
  while (flag_acquire(flag) == 0) {
    if (clock64() - start > (1ll << 34)) __trap();
    __nanosleep(256);
  }
}

template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Keeps the compiler from moving accumulator accesses across the asynchronous wgmma statements.
__device__ __forceinline__ void fence_acc(float (&d)[128]) {
#pragma unroll
  for (int i = 0; i < 128; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// wgmma shared-memory matrix descriptor, 128-byte swizzle: start address, leading-dimension byte
// offset (LBO), stride-dimension byte offset (SBO), all >> 4; bits 62-63 = 1 selects SWIZZLE_128B.
//   K-major (K contiguous, one 128-byte row per M/N index): SBO = 1024 (8 rows), LBO unused (16);
//     the k-th 16-wide K step starts 32 * k bytes into the rows.
//   MN-major (M/N contiguous, one 128-byte row of 64 M/N per K index, 64 x 64 boxes 8 KB apart):
//     SBO = 1024 (8 K rows), LBO = 8192 (the next 64 M/N); the k-th K step starts 2048 * k bytes in.
__device__ __forceinline__ uint64_t make_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return uint64_t((addr & 0x3FFFFu) >> 4) | (uint64_t((lbo & 0x3FFFFu) >> 4) << 16) |
         (uint64_t((sbo & 0x3FFFFu) >> 4) << 32) | (uint64_t(1) << 62);
}

#define SM90_WGMMA_REGS \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, " \
  "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
  "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, " \
  "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
  "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define SM90_WGMMA_OUTS(d) \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
  "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
  "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
  "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
  "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), \
  "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
  "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
  "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), \
  "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), \
  "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), \
  "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), \
  "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
  "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

// D (64 x 256, float) += A (64 x k) * B (k x 256) from shared memory, one 32-byte K step: k = 16
// (16-bit types) or 8 (TF32). TA / TB: 1 when the operand is MN-major in shared memory (the transpose
// bit, 16-bit types only).
template <int DT, int TA, int TB>
__device__ __forceinline__ void wgmma_m64n256(float (&d)[128], uint64_t desc_a, uint64_t desc_b) {
  if constexpr (DT == kBF16) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {" SM90_WGMMA_REGS
        "}, %128, %129, p, 1, 1, %131, %132;\n}\n"
        : SM90_WGMMA_OUTS(d)
        : "l"(desc_a), "l"(desc_b), "r"(1), "n"(TA), "n"(TB));
  } else if constexpr (DT == kF16) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 {" SM90_WGMMA_REGS
        "}, %128, %129, p, 1, 1, %131, %132;\n}\n"
        : SM90_WGMMA_OUTS(d)
        : "l"(desc_a), "l"(desc_b), "r"(1), "n"(TA), "n"(TB));
  } else {
    static_assert(TA == 0 && TB == 0, "wgmma reads TF32 operands K-major only");
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k8.f32.tf32.tf32 {" SM90_WGMMA_REGS
        "}, %128, %129, p, 1, 1;\n}\n"
        : SM90_WGMMA_OUTS(d)
        : "l"(desc_a), "l"(desc_b), "r"(1));
  }
}
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// ---- the GEMM kernels -------------------------------------------------------------------------------

// A block's shared memory (addresses in the shared window): the ring's A and B stages, the C boxes of
// the TMA-store epilogue, the ring's barriers (full[kStages], then empty[kStages]) and the block's
// stream-K pieces.
struct Smem {
  uint32_t sa, sb, sc, bars, work;
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ int lds(uint32_t addr) {  // volatile: read where used, not held in registers
  int v;
  asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(addr) : "memory");
  return v;
}

// Block `cta` runs its stream-K pieces first (stream_k.h), then whole tiles cta, cta + ctas, ... of the
// first whole_tiles. One thread writes the pieces to shared memory at `work` (a count, then t, kb0, kb1
// each) when the block starts; the loops read them there. Worked out in the loops, the pieces took
// registers the consumers do not have: ptxas spilled their accumulators.
__device__ __forceinline__ void plan_sk_pieces(const GemmArgs& a, int cta, uint32_t work) {
  int piece[kMaxSkPieces][3];
  const int n = sk_pieces(a.sk, whole_tiles(a), a.k_blocks, cta, piece);
  // Word stores: a piece's words are only 4-byte aligned (a vector store there faults).
  for (int i = 0; i < n; ++i)
    asm volatile("st.shared.b32 [%0], %1;\nst.shared.b32 [%0+4], %2;\nst.shared.b32 [%0+8], %3;\n" ::"r"(
                     work + 4 + 12 * i),
                 "r"(piece[i][0]), "r"(piece[i][1]), "r"(piece[i][2]) : "memory");
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(work), "r"(n) : "memory");
}

// Piece i of block `cta`'s work: K-blocks [kb0, kb1) of tile t; false past the end.
__device__ __forceinline__ bool work_piece(const GemmArgs& a, const Smem& sm, int cta, int ctas, int i, int& t,
                                          int& kb0, int& kb1) {
  const int pieces = lds(sm.work);
  if (i < pieces) {
    t = lds(sm.work + 4 + 12 * i);
    kb0 = lds(sm.work + 8 + 12 * i);
    kb1 = lds(sm.work + 12 + 12 * i);
    return true;
  }
  t = cta + (i - pieces) * ctas;
  kb0 = 0;
  kb1 = a.k_blocks;
  return t < whole_tiles(a);
}

// Carves the shared memory and initializes the ring's barriers, for every block of the cluster.
// sk: the GEMM whose stream-K pieces this block plans (nullptr: none, as in the pair kernel).
template <int CL>
__device__ __forceinline__ Smem start_block(unsigned char* smem_raw, const GemmArgs* sk = nullptr) {
  // Stage buffers 1024-byte aligned: the 128-byte swizzle repeats every 8 rows of 128 bytes.
  const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  Smem sm;
  sm.sa = base;                                // kStages x A tile
  sm.sb = sm.sa + kStages * kABytes;           // kStages x B tile
  sm.sc = sm.sb + kStages * kBBytes;           // kConsumers x 2 C boxes (TMA-store epilogue)
  sm.bars = sm.sc + kConsumers * 2 * kCBox;    // full[kStages], then empty[kStages]
  sm.work = sm.bars + 2 * kStages * 8;
  if (threadIdx.x == 0) {
    if (sk != nullptr) {
      plan_sk_pieces(*sk, int(blockIdx.x), sm.work);
    } else {
      asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(sm.work), "r"(0) : "memory");
    }
    for (int s = 0; s < kStages; ++s) {
      mbar_init(sm.bars + 8 * s, 1);                                 // the producer's arrive.expect_tx
      mbar_init(sm.bars + 8 * (kStages + s), CL * kConsumers * 4);  // each consumer warp of the cluster
    }
    fence_barrier_init();
  }
  // A cluster: the peer's barriers are initialized before any multicast or remote arrival. Every block:
  // the work list is written before it is read (a relaxed cluster arrive does not publish it).
  if constexpr (CL > 1) cluster_sync<true>();
  __syncthreads();
  return sm;
}

// The end of a block: its TMA stores are done (they read its shared memory), and in a cluster it waits
// for its peer, whose last arrivals target this block's barriers.
template <int CL>
__device__ __forceinline__ void finish_block(bool tma_store) {
  if (tma_store && threadIdx.x % 128 == 0 && threadIdx.x >= 128) bulk_wait<0>();
  if constexpr (CL > 1) cluster_sync<false>();
}

// ---- the overlapped mask (set_overlap_mask): Gm written by the producer warpgroup's spare warps ----------
// The separate pass costs the backward about 55 us at 8192 x 4096 -> 4096 with the tensor cores idle. The
// GEMMs leave most of the memory bandwidth unused (their operands come from L2), and warps 1-3 of the
// producer warpgroup idle, so those warps of every block write Gm's chunks while the first GEMM runs, in
// the order it reads them, and its producer waits for a K-tile's chunks before loading it. The warps never
// wait on anything, and each takes the next chunk from a counter: every chunk gets written by the blocks
// that run, whatever the others do.

// Prefetches `bytes` (a multiple of 16) at p (16-byte aligned) into L2, asynchronously: no registers wait.
__device__ __forceinline__ void prefetch_l2(const void* p, uint32_t bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"(bytes) : "memory");
}

// Chunk (rc, cc)'s rows of g and out into L2: a 128-byte row segment a prefetch, lane l rows l and l + 32.
__device__ __forceinline__ void prefetch_chunk(const MaskJob& j, int rc, int cc, int lane) {
  const uint32_t segment = 2u * uint32_t(min(kChunk, j.N - cc * kChunk));  // a row's bytes in the chunk
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int m = rc * kChunk + lane + 32 * h;
    if (m < j.M) {
      const int64_t first = int64_t(m) * j.N + cc * kChunk;
      prefetch_l2(j.g + first, segment);
      prefetch_l2(j.o + first, segment);
    }
  }
}

// One warp writes chunk (rc, cc) of Gm: lane l the 8 columns 8 (l % 8) in rows l / 8 + 4i, in 16-byte loads
// and stores. The producers' 40 registers hold one row's loads a lane, so the chunk's rows of g and out have
// been prefetched into L2 (prefetch_chunk) while the warp wrote its previous chunk: the row loads wait for
// L2, not for memory. g, out and Gm share one layout (contiguous), so one offset walks all three. With a
// partial, also the chunk's column sums over its rows, in a fixed order (rows ascending in a lane, then
// lanes l % 8 + 8j by a shuffle tree): db does not depend on which warp took the chunk.
template <int DT>
__device__ __forceinline__ void mask_chunk(const MaskJob& j, int rc, int cc, int lane) {
  union V8 {
    uint4 q;
    uint16_t e[8];
  };
  const int n = cc * kChunk + 8 * (lane % 8);
  const int m0 = rc * kChunk + lane / 8;
  const int rows = min(kChunk / 4, (j.M - m0 + 3) / 4);  // this lane's rows in the chunk (M - m0 may be <= 0)
  float s[8];
#pragma unroll
  for (int v = 0; v < 8; ++v) s[v] = 0.f;
  if (n < j.N) {  // N % 8 == 0: a lane's 8 columns are all in or all out
    const int64_t step = 4 * int64_t(j.N);  // 4 rows
    int64_t off = int64_t(m0) * j.N + n;
#pragma unroll 1
    for (int i = 0; i < rows; ++i, off += step) {
      V8 gv, ov;  // read once: streaming loads, L2 stays the GEMM's
      gv.q = __ldcs(reinterpret_cast<const uint4*>(j.g + off));
      ov.q = __ldcs(reinterpret_cast<const uint4*>(j.o + off));
#pragma unroll
      for (int v = 0; v < 8; ++v) {
        gv.e[v] = Elt<DT>::to_f(ov.e[v]) <= 0.f ? uint16_t(0) : gv.e[v];  // NaN out passes its gradient
        s[v] += Elt<DT>::to_f(gv.e[v]);
      }
      *reinterpret_cast<uint4*>(j.gm + off) = gv.q;
    }
  }
  if (j.partial != nullptr) {
#pragma unroll
    for (int v = 0; v < 8; ++v) {
      s[v] += __shfl_xor_sync(0xffffffffu, s[v], 8);
      s[v] += __shfl_xor_sync(0xffffffffu, s[v], 16);
    }
    if (lane < 8 && n < j.N) {
      float4* p = reinterpret_cast<float4*>(j.partial + int64_t(rc) * j.N + n);
      p[0] = make_float4(s[0], s[1], s[2], s[3]);
      p[1] = make_float4(s[4], s[5], s[6], s[7]);
    }
  }
}

// A spare producer warp's loop: the next chunk of the writing order (overlap_mask.h, after the tile order
// of the launch's first GEMM: BY_COLUMNS for dW, whose tile side is Gm's columns) until none is left, one
// chunk ahead: the chunk it will write next is taken, and its rows prefetched, before it writes this one. Each
// chunk is published by its flag: every lane fences its stores for the async proxy (the TMA loads that
// will read them); after the warp's barrier, lane 0 fences at GPU scope and sets the flag and counts the
// chunk (a release pattern: the fence and the writes in one thread, the other lanes' stores ordered before
// it by the barrier).
template <int DT, bool BY_COLUMNS>
__device__ __forceinline__ void mask_chunks(const MaskJob& j) {
  const int lane = threadIdx.x % 32;
  const auto take = [&] {  // the next chunk of the order, and its rows into L2
    int i = 0;
    if (lane == 0) i = atomicAdd(j.next, 1);
    i = __shfl_sync(0xffffffffu, i, 0);
    if (i < j.total) {
      int rc, cc;
      chunk_coords(i, j.rows, j.cols, j.lines, BY_COLUMNS, rc, cc);
      prefetch_chunk(j, rc, cc, lane);
    }
    return i;
  };
  for (int i = take(); i < j.total;) {
    const int following = take();
    int rc, cc;
    chunk_coords(i, j.rows, j.cols, j.lines, BY_COLUMNS, rc, cc);
    mask_chunk<DT>(j, rc, cc, lane);
    asm volatile("fence.proxy.async.global;\n" ::: "memory");
    __syncwarp();
    if (lane == 0) {
      asm volatile(
          "fence.acq_rel.gpu;\nst.relaxed.gpu.global.b32 [%0], %1;\nred.relaxed.gpu.global.add.s32 [%2], 1;\n" ::"l"(
              j.flags + rc * j.cols + cc),
          "r"(1), "l"(j.done)
          : "memory");
    }
    i = following;
  }
}

// The producer's wait before loading K-tile kb of A's tile-row tm, where A is a Gm still being written:
// its two chunks (overlap_mask.h's a_chunk; MN_MAJOR for dW). Then a proxy fence: the
// chunks' generic writes, acquired, come before this thread's TMA reads of them.
template <bool MN_MAJOR>
__device__ __forceinline__ void wait_a_chunks(const MaskJob& j, int tm, int kb) {
  for (int h = 0; h < 2; ++h) {
    int rc, cc;
    a_chunk(tm, kb, h, MN_MAJOR, rc, cc);
    if (rc < j.rows && cc < j.cols) flag_wait(j.flags + rc * j.cols + cc);
  }
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
}

// The producer thread's part of output tile t (t counts tiles of CL blocks; this block takes tile-row
// CL * row + rank): the tile's K-tiles kb0 .. kb1 - 1 into the ring, one stage after another. WAITS: the
// code that waits for an overlapped mask's chunks (mask->flags set), only where a launch can need it (the
// single 16-bit backward kernels: in the pair kernel's producer it would not fit the 40 registers).
template <int DT, int TA, int TB, int CL, bool WAITS = false>
__device__ __forceinline__ void produce_tile(const CUtensorMap& tma_a, const CUtensorMap& tma_b, const GemmArgs& args,
                                             int t, int kb0, int kb1, int rank, const Smem& sm, int& stage,
                                             uint32_t& phase, const MaskJob* mask = nullptr) {
  int tm, tn;
  tile_coords(t, args, tm, tn);
  tm = tm * CL + rank;
  const int m0 = tm * kBM, n0 = tn * kBN;
  // MN-major operands load in 64-wide boxes, K-major B in CL parts of kBN / CL rows; boxes and
  // parts wholly past M (or N) are not issued, nor A for a tile-row past M (the second block of a
  // cluster on the last, odd tile-row: it loads its half of B for its peer and stores nothing).
  const int a_rows = max(0, min(kBM, args.M - m0));
  const int a_boxes = TA ? (a_rows + 63) / 64 : (a_rows > 0);
  const int b_boxes = TB ? min(kBN / 64, (args.N - n0 + 63) / 64) : min(CL, (args.N - n0 + kBN / CL - 1) / (kBN / CL));
  const uint32_t bytes = uint32_t(a_boxes * (TA ? kBox : kABytes)) + uint32_t(b_boxes * (TB ? kBox : kBBytes / CL));
  // A Gm still being written: wait for each K-tile's chunks, until the count says all are written.
  bool wait = false;
  if (WAITS && mask->flags != nullptr) {
    wait = flag_acquire(mask->done) < mask->total;
    if (!wait) asm volatile("fence.proxy.async.global;\n" ::: "memory");
  }
  for (int kb = kb0; kb < kb1; ++kb) {
    const int k0 = kb * kBK<DT>;
    const uint32_t full = sm.bars + 8 * stage, empty = sm.bars + 8 * (kStages + stage);
    if constexpr (WAITS) {
      if (wait) wait_a_chunks<TA == 1>(*mask, tm, kb);  // before the ring's wait, which it overlaps
    }
    mbar_wait(empty, phase ^ 1u);  // a fresh barrier passes parity 1 at once
    mbar_arrive_expect_tx(full, bytes);
    const uint32_t a_dst = sm.sa + stage * kABytes, b_dst = sm.sb + stage * kBBytes;
    if constexpr (TA) {
      for (int i = 0; i < a_boxes; ++i) tma_load_2d(a_dst + i * kBox, &tma_a, m0 + 64 * i, k0, full);
    } else {
      if (a_boxes) tma_load_2d(a_dst, &tma_a, k0, m0, full);
    }
    // B: box or part i goes to block i % CL, which multicasts it to the whole cluster.
    constexpr uint32_t part = TB ? kBox : kBBytes / CL;
    for (int i = rank; i < b_boxes; i += CL) {
      const int c0 = TB ? n0 + 64 * i : k0, c1 = TB ? k0 : n0 + i * (kBN / CL);
      if constexpr (CL > 1) {
        tma_load_2d_multicast(b_dst + i * part, &tma_b, c0, c1, full, uint16_t((1u << CL) - 1));
      } else {
        tma_load_2d(b_dst + i * part, &tma_b, c0, c1, full);
      }
    }
    if (++stage == kStages) {
      stage = 0;
      phase ^= 1u;
    }
  }
}

// A consumer warpgroup's part of output tile t (rows cw * 64 .. cw * 64 + 63 of it): wgmma on the ring
// over the tile's K-tiles kb0 .. kb1 - 1, then the epilogue. This block is `cta` of `ctas`.
template <int DT, int TA, int TB, bool RELU, int CL>
__device__ __forceinline__ void consume_tile(float (&acc)[128], const CUtensorMap& tma_c, const GemmArgs& args, int t,
                                             int kb0, int kb1, int cta, int ctas, int rank, int cw, const Smem& sm,
                                             int& stage, uint32_t& phase) {
  using E = Elt<DT>;
  using raw = typename E::raw;
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  // Hands stage s back to the producers: one arrival per warp on each block of the cluster.
  const auto release = [&](int s) {
    if constexpr (CL > 1) {
      if (lane < CL) mbar_arrive_cluster(sm.bars + 8 * (kStages + s), uint32_t(lane));
    } else {
      if (lane == 0) mbar_arrive(sm.bars + 8 * (kStages + s));
    }
  };
  int tm, tn;
  tile_coords(t, args, tm, tn);
  tm = tm * CL + rank;
  // A cluster's second block on the last, odd tile-row has no A rows: it keeps every barrier step
  // (its peer needs its arrivals) but issues no wgmma.
  const bool has_rows = tm * kBM < args.M;
#pragma unroll
  for (int i = 0; i < 128; ++i) acc[i] = 0.f;
  int prev = 0;
  for (int kb = kb0; kb < kb1; ++kb) {
    mbar_wait(sm.bars + 8 * stage, phase);
    // This warpgroup's 64 rows of A: 64 K-major rows of 128 bytes, or the cw-th 64 x 64 MN-major
    // box; both start 8 KB in.
    const uint32_t a_base = sm.sa + stage * kABytes + cw * 8192;
    const uint32_t b_base = sm.sb + stage * kBBytes;
    fence_acc(acc);
    if (has_rows) {  // (no group is committed without it: the waits below then return at once)
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kRowBytes / 32; ++kk) {
        const uint64_t da = make_desc(a_base + kk * (TA ? 2048 : 32), TA ? 8192 : 16, 1024);
        const uint64_t db = make_desc(b_base + kk * (TB ? 2048 : 32), TB ? 8192 : 16, 1024);
        wgmma_m64n256<DT, TA, TB>(acc, da, db);
      }
      wgmma_commit();
    }
    fence_acc(acc);
    if (kb > kb0) {  // the previous stage's batch has retired: hand its buffers back
      wgmma_wait<1>();
      fence_acc(acc);
      release(prev);
    }
    prev = stage;
    if (++stage == kStages) {
      stage = 0;
      phase ^= 1u;
    }
  }
  // Epilogue. Accumulator fragment of wgmma m64nNk16: acc[4j + 2h + e] is row
  // warp * 16 + lane / 4 + 8h, column 8j + 2 (lane % 4) + e of this warpgroup's 64 x 256 block.
  const int64_t row = int64_t(tm) * kBM + cw * 64 + warp * 16 + lane / 4;
  const int64_t col = int64_t(tn) * kBN + (lane % 4) * 2;
  // A stream-K part (plan_stream_k): a later part (kb0 > 0) goes to this block's partial sums for the
  // block that holds the tile's first; that block adds the others' before its epilogue.
  const bool part = kb0 > 0 || kb1 < args.k_blocks;
  TileBias<DT> tile_bias;
  tile_bias.load(args, col);  // while the last wgmma batch runs
  wgmma_wait<0>();
  fence_acc(acc);
  if (kb1 > kb0) release(prev);
  if (part) {
    // Partial sums in float4 q of consumer thread c at q * 256 + c: each warp's stores and loads are 512
    // contiguous bytes. Barrier 3 joins the 256 consumer threads.
    const int ct = int(threadIdx.x) - 128;
    if (kb0 > 0) {
      float4* mine = reinterpret_cast<float4*>(args.sk_partials + int64_t(cta) * (kBM * kBN));
#pragma unroll
      for (int q = 0; q < 32; ++q) __stcg(mine + q * 256 + ct, make_float4(acc[4 * q], acc[4 * q + 1], acc[4 * q + 2], acc[4 * q + 3]));
      named_barrier(3, 256);
      if (ct == 0) flag_release(args.sk_flags + cta);
      return;
    }
    // The first part: add the later ones, blocks cta + 1, ... in order (deterministic), as each is ready.
    const int tile_end = (t - whole_tiles(args) + 1) * args.k_blocks;
    for (int other = cta + 1; sk_shares(args.sk.per, args.sk.extra, ctas, other, tile_end); ++other) {
      if (ct == 0) flag_wait(args.sk_flags + other);
      named_barrier(3, 256);
      const float4* theirs = reinterpret_cast<const float4*>(args.sk_partials + int64_t(other) * (kBM * kBN));
#pragma unroll
      for (int q = 0; q < 32; ++q) {
        const float4 v = __ldcg(theirs + q * 256 + ct);
        acc[4 * q] += v.x;
        acc[4 * q + 1] += v.y;
        acc[4 * q + 2] += v.z;
        acc[4 * q + 3] += v.w;
      }
    }
  }
  const bool row_ok[2] = {row < args.M, row + 8 < args.M};
  raw* const C = static_cast<raw*>(args.c);
  if (args.tma_store) {
    // Through shared memory and TMA: the warpgroup's 64 x 256 block leaves as boxes of 64 rows x 128
    // bytes (64 16-bit or 32 float columns), staged in two 8 KB buffers that alternate. Each box:
    // registers (+ bias, ReLU, cast) -> the buffer, in the 128-byte swizzle the map expects (16-byte
    // chunk q of row r at chunk q ^ (r % 8): the 8 rows of a warp's store hit distinct banks) ->
    // one TMA store, issued by the warpgroup's first thread. That thread waits for a buffer's
    // previous store to have read it before the warpgroup rewrites it; the stores drain while the
    // consumers run the next tile's mainloop. TMA clips what lies past M and N.
    constexpr int kCols = kRowBytes / int(sizeof(raw));  // columns per box
    const int wtid = threadIdx.x % 128;
    const int m_box = tm * kBM + cw * 64;
    const uint32_t bufs = sm.sc + cw * 2 * kCBox;
    if (m_box < args.M) {  // uniform per warpgroup, as is every condition around a barrier below
      if (wtid == 0) bulk_wait_read<0>();  // the previous tile's stores have read both buffers
      named_barrier(1 + cw, 128);
#pragma unroll
      for (int box = 0; box < kBN / kCols; ++box) {
        const int n_box = tn * kBN + box * kCols;
        if (n_box >= args.N) break;
        const uint32_t buf = bufs + (box % 2) * kCBox;
        if (box >= 2) {  // this buffer's store two boxes ago has read it
          if (wtid == 0) bulk_wait_read<1>();
          named_barrier(1 + cw, 128);
        }
#pragma unroll
        for (int jj = 0; jj < kCols / 8; ++jj) {
          const int j = box * (kCols / 8) + jj;
          const float2 b = tile_bias.pair(j);
          const uint32_t byte = uint32_t(8 * jj + 2 * (lane % 4)) * uint32_t(sizeof(raw));  // in the row
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const float v0 = activate<RELU>(acc[4 * j + 2 * h] + b.x);
            const float v1 = activate<RELU>(acc[4 * j + 2 * h + 1] + b.y);
            const uint32_t r = uint32_t(warp * 16 + lane / 4 + 8 * h);
            store_pair_shared<DT>(buf + r * kRowBytes + (((byte >> 4) ^ (r & 7u)) << 4) + (byte & 15u), v0, v1);
          }
        }
        fence_proxy_async_smem();
        named_barrier(1 + cw, 128);
        if (wtid == 0) {
          tma_store_2d(&tma_c, buf, n_box, m_box);
          bulk_commit();
        }
      }
    }
  } else if (DT != kTF32 && args.wide_stores && int64_t(tn + 1) * kBN <= args.N) {
    if constexpr (DT != kTF32) {
      // All 256 columns in range, rows 16-byte aligned: 16-byte stores of 16-bit C. A quad (the 4
      // lanes of one accumulator row) holds 8-column runs 4J .. 4J + 3 as pairs, lane q columns
      // 8j + 2q and 8j + 2q + 1; quad_transpose hands lane q the four pairs of run 4J + q. Each store
      // of a warp then fills 64 contiguous bytes in each of its 8 rows (two whole 32-byte sectors),
      // where a pair store fills 16 bytes a row (half a sector), four times as many stores.
      const int q = lane % 4;
      const int64_t first = int64_t(tn) * kBN + 8 * q;  // this lane's run when J = 0
#pragma unroll
      for (int J = 0; J < kBN / 32; ++J) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          uint32_t w[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int j = 4 * J + i;
            const float2 b = tile_bias.pair(j);
            w[i] = pack_pair<DT>(activate<RELU>(acc[4 * j + 2 * h] + b.x),
                                 activate<RELU>(acc[4 * j + 2 * h + 1] + b.y));
          }
          quad_transpose(w, q, [](uint32_t v, int m) { return __shfl_xor_sync(0xffffffffu, v, m); });
          if (row_ok[h]) store_global_16(C + (row + 8 * h) * args.ldc + first + 32 * J, w[0], w[1], w[2], w[3]);
        }
      }
    }
  } else if (args.pair_ok && int64_t(tn + 1) * kBN <= args.N) {
    // All 256 columns in range: pair stores, unchecked.
#pragma unroll
    for (int j = 0; j < kBN / 8; ++j) {
      const int64_t n = col + 8 * j;
      const float2 b = tile_bias.pair(j);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float v0 = activate<RELU>(acc[4 * j + 2 * h] + b.x);
        const float v1 = activate<RELU>(acc[4 * j + 2 * h + 1] + b.y);
        if (row_ok[h]) store_pair<DT>(C + (row + 8 * h) * args.ldc + n, v0, v1);
      }
    }
  } else {
    // The last tile-column (or C rows that take no 4-byte stores): every column checked.
#pragma unroll
    for (int j = 0; j < kBN / 8; ++j) {
      const int64_t n = col + 8 * j;
      const float2 b = tile_bias.pair(j);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float v0 = activate<RELU>(acc[4 * j + 2 * h] + b.x);
        const float v1 = activate<RELU>(acc[4 * j + 2 * h + 1] + b.y);
        if (row_ok[h]) {
          raw* p = C + (row + 8 * h) * args.ldc + n;
          if (args.pair_ok && n + 1 < args.N) {
            store_pair<DT>(p, v0, v1);
          } else {
            if (n < args.N) p[0] = E::from_f(v0);
            if (n + 1 < args.N) p[1] = E::from_f(v1);
          }
        }
      }
    }
  }
}
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// CL: blocks per cluster, 1 or 2. With 2, the two blocks of a cluster take vertically adjacent tiles
// (tile-rows 2i and 2i + 1 of one tile-column), which read the same B tile: each block loads half of
// it, multicast into both blocks' rings, so B costs each block half its L2 reads. A stage of the ring is
// then written by both producers, so it is free only when the consumers of both blocks have released it
// (each consumer warp arrives on the "empty" barrier of both blocks).
template <int DT, int TA, int TB, bool RELU, int CL>
__global__ void __launch_bounds__(kThreads, 1)
    sm90_gemm_kernel(const __grid_constant__ CUtensorMap tma_a, const __grid_constant__ CUtensorMap tma_b,
                     const __grid_constant__ CUtensorMap tma_c, const GemmArgs args,
                     const __grid_constant__ MaskJob mask) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(CL == 1 || CL == 2, "clusters of 1 or 2 blocks");
  extern __shared__ unsigned char smem_raw[];
  const Smem sm = start_block<CL>(smem_raw, CL == 1 ? &args : nullptr);  // stream-K: single blocks only
  int rank = 0, cluster = int(blockIdx.x), clusters = int(gridDim.x);
  if constexpr (CL > 1) cluster_position(rank, cluster, clusters);
  int stage = 0;
  uint32_t phase = 0;
  if (threadIdx.x < 128) {
    // ---- producer warpgroup: one thread issues every TMA copy -------------------------------------
    setmaxnreg_dec<kProducerRegs>();
    if (threadIdx.x == 0) {
      prefetch_tmap(&tma_a);
      prefetch_tmap(&tma_b);
      for (int i = 0, t, kb0, kb1; work_piece(args, sm, cluster, clusters, i, t, kb0, kb1); ++i)
        produce_tile<DT, TA, TB, CL, !RELU && DT != kTF32>(tma_a, tma_b, args, t, kb0, kb1, rank, sm, stage, phase,
                                                           &mask);
    } else if (threadIdx.x >= 32) {
      if constexpr (!RELU && DT != kTF32) {  // a 16-bit backward product: the overlapped mask's writers
        if (mask.flags != nullptr) mask_chunks<DT, TA == 1>(mask);
      }
    }
  } else {
    // ---- consumer warpgroups --------------------------------------------------------------------------
    setmaxnreg_inc<kConsumerRegs>();
    float acc[128];
    const int cw = threadIdx.x / 128 - 1;
    for (int i = 0, t, kb0, kb1; work_piece(args, sm, cluster, clusters, i, t, kb0, kb1); ++i)
      consume_tile<DT, TA, TB, RELU, CL>(acc, tma_c, args, t, kb0, kb1, cluster, clusters, rank, cw, sm, stage, phase);
  }
  finish_block<CL>(args.tma_store);
#endif  // __CUDA_ARCH_FEAT_SM90_ALL: other images get an empty kernel that the host never launches
}

// Two products in one persistent launch (the backward's dX and dW; TWOLAYER_OPS_SM90_MERGED_BACKWARD=1):
// tiles [0, tiles of product 1) are product 1's, the rest product 2's, and the blocks walk them as one
// sequence, so the two products end on one partial wave instead of one each. Plain products (no bias,
// no ReLU), each with its own operands, layouts (TA, TB) and C. Gm is all written before it starts (no
// overlapped mask: its producer thread has no registers for the waits).
template <int DT, int TA1, int TB1, int TA2, int TB2, int CL>
__global__ void __launch_bounds__(kThreads, 1)
    sm90_gemm_pair_kernel(const __grid_constant__ CUtensorMap tma_a1, const __grid_constant__ CUtensorMap tma_b1,
                          const __grid_constant__ CUtensorMap tma_c1, const GemmArgs args1,
                          const __grid_constant__ CUtensorMap tma_a2, const __grid_constant__ CUtensorMap tma_b2,
                          const __grid_constant__ CUtensorMap tma_c2, const GemmArgs args2) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(CL == 1 || CL == 2, "clusters of 1 or 2 blocks");
  extern __shared__ unsigned char smem_raw[];
  const Smem sm = start_block<CL>(smem_raw);
  int rank = 0, cluster = int(blockIdx.x), clusters = int(gridDim.x);
  if constexpr (CL > 1) cluster_position(rank, cluster, clusters);
  const int tiles1 = args1.tiles_m * args1.tiles_n, tiles = tiles1 + args2.tiles_m * args2.tiles_n;
  int stage = 0;
  uint32_t phase = 0;
  if (threadIdx.x < 128) {
    setmaxnreg_dec<kProducerRegs>();
    if (threadIdx.x == 0) {
      prefetch_tmap(&tma_a1);
      prefetch_tmap(&tma_b1);
      prefetch_tmap(&tma_a2);
      prefetch_tmap(&tma_b2);
      for (int t = cluster; t < tiles; t += clusters) {
        if (t < tiles1) {
          produce_tile<DT, TA1, TB1, CL>(tma_a1, tma_b1, args1, t, 0, args1.k_blocks, rank, sm, stage, phase);
        } else {
          produce_tile<DT, TA2, TB2, CL>(tma_a2, tma_b2, args2, t - tiles1, 0, args2.k_blocks, rank, sm, stage, phase);
        }
      }
    }
  } else {
    setmaxnreg_inc<kConsumerRegs>();
    float acc[128];
    const int cw = threadIdx.x / 128 - 1;
    for (int t = cluster; t < tiles; t += clusters) {
      if (t < tiles1) {
        consume_tile<DT, TA1, TB1, false, CL>(acc, tma_c1, args1, t, 0, args1.k_blocks, cluster, clusters, rank, cw, sm,
                                              stage, phase);
      } else {
        consume_tile<DT, TA2, TB2, false, CL>(acc, tma_c2, args2, t - tiles1, 0, args2.k_blocks, cluster, clusters,
                                              rank, cw, sm, stage, phase);
      }
    }
  }
  finish_block<CL>(args1.tma_store || args2.tma_store);
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

// Which image of this file the driver loaded: 1 for sm_90a, 2 for anything else.
__global__ void sm90_probe_kernel(int* out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *out = 1;
#else
  *out = 2;
#endif
}

// ---- the backward's elementwise pass -----------------------------------------------------------------
// Gm (M, N contiguous) = out <= 0 ? 0 : g, read through any strides. Block (256 threads = 8 row lanes x
// 32 column lanes of 8 elements) covers 256 columns x rows_per_block rows; with `partial` it also writes
// the float32 column sums of its rows to partial[blockIdx.y][n] (fixed order: rows ascending per lane,
// then lanes 0..7). vec: g and out rows are unit-stride and 16-byte aligned.
template <int DT>
__global__ void __launch_bounds__(256, 4)
    sm90_mask_grad_kernel(const uint16_t* g, int64_t gs0, int64_t gs1, const uint16_t* o, int64_t os0, int64_t os1,
                          uint16_t* gm, float* partial, int64_t M, int64_t N, int64_t rows_per_block, int vec) {
  static_assert(sizeof(typename Elt<DT>::raw) == 2, "the backward runs on 16-bit types only");
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  const int64_t n = int64_t(blockIdx.x) * 256 + tx * 8;
  const int64_t r0 = int64_t(blockIdx.y) * rows_per_block;
  const int64_t r1 = min(M, r0 + rows_per_block);
  const bool full = n + 8 <= N;
  float s[8];
#pragma unroll
  for (int v = 0; v < 8; ++v) s[v] = 0.f;
  union V8 {
    uint4 q;
    uint16_t e[8];
  };
#pragma unroll 2
  for (int64_t m = r0 + ty; m < r1; m += 8) {
    V8 gv, ov, r;
    if (vec && full) {
      gv.q = *reinterpret_cast<const uint4*>(g + m * gs0 + n);
      ov.q = *reinterpret_cast<const uint4*>(o + m * os0 + n);
    } else {
#pragma unroll
      for (int v = 0; v < 8; ++v) {
        const bool in = n + v < N;
        gv.e[v] = in ? g[m * gs0 + (n + v) * gs1] : uint16_t(0);
        ov.e[v] = in ? o[m * os0 + (n + v) * os1] : uint16_t(0);
      }
    }
#pragma unroll
    for (int v = 0; v < 8; ++v) {
      r.e[v] = Elt<DT>::to_f(ov.e[v]) <= 0.f ? uint16_t(0) : gv.e[v];  // NaN out passes its gradient
      s[v] += Elt<DT>::to_f(r.e[v]);
    }
    if (full && (N % 8) == 0) {
      *reinterpret_cast<uint4*>(gm + m * N + n) = r.q;
    } else {
#pragma unroll
      for (int v = 0; v < 8; ++v)
        if (n + v < N) gm[m * N + n + v] = r.e[v];
    }
  }
  if (partial != nullptr) {
    __shared__ float red[8][257];
#pragma unroll
    for (int v = 0; v < 8; ++v) red[ty][tx * 8 + v] = s[v];
    __syncthreads();
    const int c = threadIdx.x;  // 256 threads, one column each
    float t = 0.f;
#pragma unroll
    for (int y = 0; y < 8; ++y) t += red[y][c];
    const int64_t nc = int64_t(blockIdx.x) * 256 + c;
    if (nc < N) partial[int64_t(blockIdx.y) * N + nc] = t;
  }
}

// db[n] = the sum of partial[r][n] over the R rows, in a fixed order (deterministic): a block takes 32
// columns, its warp w the rows w, w + 8, ... in turn, then warp 0 adds the 8 warps' sums in warp order.
// (One thread a column walking all R rows left a 4096-column db on 16 blocks, 128 dependent loads each.)
template <int DT>
__global__ void __launch_bounds__(256) sm90_db_kernel(const float* partial, int64_t R, int64_t N, uint16_t* db) {
  __shared__ float sums[8][32];
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32;
  const int64_t n = int64_t(blockIdx.x) * 32 + lane;
  float t = 0.f;
  if (n < N)
    for (int64_t r = w; r < R; r += 8) t += partial[r * N + n];
  sums[w][lane] = t;
  __syncthreads();
  if (w == 0 && n < N) {
    float total = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) total += sums[i][lane];
    db[n] = Elt<DT>::from_f(total);
  }
}

// ---- host side ------------------------------------------------------------------------------------------

// Whether the environment variable `name` is set to `value`.
bool env_is(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, value) == 0;
}

// An on/off switch: its environment variable, read once at the first use (a switch on by default is
// off only when it reads "0"; one off by default is on only when it reads "1"), unless its set_* op
// overrides it (-1: back to the variable, 0: off, 1: on).
class Switch {
 public:
  constexpr Switch(const char* name, const char* op, bool on_by_default)
      : name_(name), op_(op), on_by_default_(on_by_default) {}

  bool env_on() {
    int v = env_.load(std::memory_order_relaxed);
    if (v < 0) {
      v = on_by_default_ ? !env_is(name_, "0") : env_is(name_, "1");
      env_.store(v);
    }
    return v == 1;
  }
  bool on() {
    const int mode = mode_.load(std::memory_order_relaxed);
    return mode < 0 ? env_on() : mode == 1;
  }
  int mode() const { return mode_.load(); }
  void set(int64_t mode) {
    TORCH_CHECK(mode >= -1 && mode <= 1, "twolayer_ops_sm90.", op_, ": mode must be -1 (env), 0 (off) or 1 (on), got ",
                mode);
    mode_.store(int(mode));
  }

 private:
  const char* name_;  // the environment variable
  const char* op_;    // the set_* op, for its error message
  bool on_by_default_;
  std::atomic<int> env_{-1}, mode_{-1};  // env_: the variable once read (0 or 1)
};

Switch g_path{"TWOLAYER_OPS_SM90", "set_mode", true};
Switch g_tf32{"TWOLAYER_OPS_SM90_TF32", "set_tf32", true};
Switch g_tma_store{"TWOLAYER_OPS_SM90_TMA_STORE", "set_tma_store", false};
Switch g_wide_stores{"TWOLAYER_OPS_SM90_WIDE_STORES", "set_wide_stores", false};
Switch g_merged_backward{"TWOLAYER_OPS_SM90_MERGED_BACKWARD", "set_merged_backward", false};
Switch g_stream_k{"TWOLAYER_OPS_SM90_STREAM_K", "set_stream_k", false};
Switch g_overlap_mask{"TWOLAYER_OPS_SM90_OVERLAP_MASK", "set_overlap_mask", false};
std::atomic<int> g_group_m{0};  // tile-rows per group of the persistent order; 0: kGroupM (set_group_m)
std::atomic<int> g_cluster{-1};  // -1: follow TWOLAYER_OPS_SM90_CLUSTER; else blocks per cluster, 1 or 2
std::atomic<int64_t> g_forward_calls{0}, g_backward_calls{0}, g_cluster_launches{0}, g_tma_store_launches{0},
    g_wide_store_launches{0}, g_merged_launches{0}, g_stream_k_launches{0}, g_overlap_launches{0};
constexpr int kMaxDevices = 64;
std::atomic<int> g_probe[kMaxDevices];  // 0 unknown, 1 sm_90a image on a 9.0 device, 2 no

int cluster_env() {  // 2 when TWOLAYER_OPS_SM90_CLUSTER=2, else 1 (no clusters)
  static const int blocks = env_is("TWOLAYER_OPS_SM90_CLUSTER", "2") ? 2 : 1;
  return blocks;
}

int cluster_setting() {
  const int mode = g_cluster.load(std::memory_order_relaxed);
  return mode < 0 ? cluster_env() : mode;
}

// The path's element type for t, or -1: float16, bfloat16, and float32 when torch allows TF32 matmuls
// (torch.backends.cuda.matmul.allow_tf32) and the TF32 switch is on.
int element_type(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf:
      return kF16;
    case at::kBFloat16:
      return kBF16;
    case at::kFloat:
      return g_tf32.on() && at::globalContext().allowTF32CuBLAS() ? kTF32 : -1;
    default:
      return -1;
  }
}

// 1 when `device` is compute capability 9.0 and runs the sm_90a image of this file; 2 when not;
// 0 when unknown (not probed inside a stream capture, where the probe's synchronization is illegal).
int probe_device(int device) {
  if (device < 0 || device >= kMaxDevices) return 2;
  const int known = g_probe[device].load();
  if (known != 0) return known;
  int major = 0, minor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  int result = 2;
  if (major == 9 && minor == 0) {
    c10::cuda::CUDAGuard guard(device);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device);
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
    if (capture != cudaStreamCaptureStatusNone) return 0;
    at::Tensor flag = at::zeros({1}, at::TensorOptions().dtype(at::kInt).device(at::kCUDA, device));
    sm90_probe_kernel<<<1, 1, 0, stream>>>(flag.data_ptr<int>());
    const cudaError_t err = cudaGetLastError();  // no image for this device: not an error here
    result = (err == cudaSuccess && flag.item<int>() == 1) ? 1 : 2;
  }
  g_probe[device].store(result);
  return result;
}

using EncodeTiledFn = decltype(&cuTensorMapEncodeTiled);

EncodeTiledFn encode_tiled() {
  static const EncodeTiledFn fn = []() -> EncodeTiledFn {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q);
    if (err != cudaSuccess || q != cudaDriverEntryPointSuccess || p == nullptr) {
      (void)cudaGetLastError();
      return nullptr;
    }
    return reinterpret_cast<EncodeTiledFn>(p);
  }();
  return fn;
}

// The encoder is a driver call: it needs the device's context current on the calling thread. A thread that
// has made no CUDA runtime call yet has none (autograd's backward thread, whose device guard found the device
// already set): forcing cudaSetDevice binds the primary context. The callers hold a guard of this device.
void bind_context(int device) { C10_CUDA_CHECK(c10::cuda::SetDevice(static_cast<c10::DeviceIndex>(device), true)); }

// A 2-D row-major matrix of element type dt (rows x cols, unit column stride, row stride `ld` elements)
// as a TMA tensor map with box (box_cols x box_rows) and 128-byte swizzle; out-of-range elements read as
// zeros. box_cols is 0 for one 128-byte row (64 16-bit or 32 float elements).
bool make_map(CUtensorMap* map, const void* ptr, int dt, int64_t rows, int64_t cols, int64_t ld, int box_cols,
              int box_rows) {
  const EncodeTiledFn fn = encode_tiled();
  if (fn == nullptr) return false;
  const int64_t esize = dt == kTF32 ? 4 : 2;
  if (box_cols == 0) box_cols = int(kRowBytes / esize);
  const cuuint64_t dims[2] = {cuuint64_t(cols), cuuint64_t(rows)};
  const cuuint64_t strides[1] = {cuuint64_t(ld * esize)};
  const cuuint32_t box[2] = {cuuint32_t(box_cols), cuuint32_t(box_rows)};
  const cuuint32_t elem_strides[2] = {1, 1};
  std::memset(map, 0, sizeof(*map));
  const CUtensorMapDataType type = dt == kBF16   ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                   : dt == kF16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16
                                                : CU_TENSOR_MAP_DATA_TYPE_FLOAT32;
  const CUresult r = fn(map, type, 2,
                        const_cast<void*>(ptr), dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                        CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

constexpr int64_t kMaxExtent = int64_t(1) << 30;  // TMA coordinates are int32; tiles past the end stay in range

// t (rows x cols) can be read by TMA as a row-major matrix.
bool tma_readable(const at::Tensor& t) {
  return t.dim() == 2 && t.stride(1) == 1 && t.stride(0) >= t.size(1) &&
         t.stride(0) * t.element_size() % 16 == 0 && t.stride(0) < (int64_t(1) << 38) &&
         reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0 && t.size(0) < kMaxExtent &&
         t.size(1) < kMaxExtent;
}

// Everything but the operand layouts: dtype, size, the switches, the device. The path's element type
// (element_type) where it applies, else -1.
int path_element_type(const at::Tensor& x2, int64_t M, int64_t N, int64_t K) {
  const int dt = element_type(x2);
  if (dt < 0) return -1;
  if (M <= 0 || N <= 0 || K <= 0 || M >= kMaxExtent || N >= kMaxExtent || K >= kMaxExtent) return -1;
  if (double(M) * double(N) * double(K) < double(int64_t(1) << 24)) return -1;  // small: portable path
  if (!x2.is_cuda() || !g_path.on()) return -1;
  return probe_device(x2.get_device()) == 1 ? dt : -1;
}

int sm_count(int device) {
  static std::atomic<int> sms[kMaxDevices];  // multiprocessor counts, 0 until read
  int n = sms[device].load();
  if (n == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    sms[device].store(n);
  }
  return n;
}

// The persistent grid of single blocks for `tiles` tiles: a block per SM, or fewer where
// TWOLAYER_OPS_SM90_GRID (a count) caps it, so that tests walk many tiles a block and share out tiles
// by stream-K on small problems.
int persistent_blocks(int tiles, int device) {
  static const int cap = [] {
    const char* v = std::getenv("TWOLAYER_OPS_SM90_GRID");
    return v != nullptr ? std::max(0, std::atoi(v)) : 0;
  }();
  const int sms = sm_count(device);
  return std::min(tiles, cap > 0 ? std::min(cap, sms) : sms);
}

// Raises KERNEL's dynamic shared-memory limit to kSmemBytes, once per device.
template <auto KERNEL>
void allow_smem(int device) {
  static std::atomic<uint64_t> done{0};  // one bit per device
  if (!(done.load() >> device & 1)) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(KERNEL, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
    done.fetch_or(uint64_t(1) << device);
  }
}

cudaLaunchConfig_t launch_config(int grid, int cl, cudaStream_t stream, cudaLaunchAttribute* attr) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(unsigned(grid));
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = kSmemBytes;
  cfg.stream = stream;
  attr->id = cudaLaunchAttributeClusterDimension;
  attr->val.clusterDim.x = unsigned(cl);
  attr->val.clusterDim.y = 1;
  attr->val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cfg;
}

// How many two-block clusters of the GEMM kernel fit on the device at once (every instantiation takes
// the same threads and shared memory, so one stands for all); 0 when none do.
int max_pair_clusters(int device) {
  static std::atomic<int> known[kMaxDevices];  // count + 1, 0 until asked
  int n = known[device].load();
  if (n == 0) {
    allow_smem<sm90_gemm_kernel<kBF16, 0, 0, true, 2>>(device);
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t cfg =
        launch_config(2 * sm_count(device), 2, c10::cuda::getCurrentCUDAStream(device), &attr);
    int clusters = 0;
    if (cudaOccupancyMaxActiveClusters(&clusters, sm90_gemm_kernel<kBF16, 0, 0, true, 2>, &cfg) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;  // no clusters this call; asked again next time (a failure is not the device's answer)
    }
    n = clusters + 1;
    known[device].store(n);
  }
  return n - 1;
}

// Blocks per cluster for a GEMM whose C has `rows` rows: 2 when the cluster switch asks for it, C has at
// least two tile-rows and the device fits such clusters; else 1. The caller builds B's tensor map
// with boxes of kBN / cl rows when B is K-major.
int cluster_blocks(int64_t rows, int device) {
  if (cluster_setting() != 2 || rows <= kBM) return 1;
  return max_pair_clusters(device) > 0 ? 2 : 1;
}

// Fills a's launch fields (the epilogue's stores, the tile counts, K-tiles and group height) for
// clusters of CL blocks, and C's tensor map where the TMA-store epilogue takes it. Returns a's tiles.
template <int DT, int CL>
int plan_gemm(GemmArgs& a, CUtensorMap& mc) {
  // The TMA-store epilogue where it is switched on and C's rows suit TMA (16-byte aligned, 16-byte row
  // stride); else the stores straight from the accumulators.
  std::memset(&mc, 0, sizeof(mc));
  const int64_t esize = DT == kTF32 ? 4 : 2;
  a.tma_store = g_tma_store.on() && a.ldc * esize % 16 == 0 && reinterpret_cast<uintptr_t>(a.c) % 16 == 0 &&
                make_map(&mc, a.c, DT, a.M, a.N, a.ldc, 0, 64);
  if (a.tma_store) g_tma_store_launches.fetch_add(1);
  // Else 16-byte stores from the registers where switched on, for 16-bit C with 16-byte aligned rows.
  a.wide_stores = !a.tma_store && g_wide_stores.on() && esize == 2 && a.ldc % 8 == 0 &&
                  reinterpret_cast<uintptr_t>(a.c) % 16 == 0;
  if (a.wide_stores) g_wide_store_launches.fetch_add(1);
  const int tile_rows = (a.M + kBM - 1) / kBM;
  a.tiles_m = (tile_rows + CL - 1) / CL;  // rows of CL tiles
  a.tiles_n = (a.N + kBN - 1) / kBN;
  a.k_blocks = (a.K + kBK<DT> - 1) / kBK<DT>;
  const int group_m = g_group_m.load(std::memory_order_relaxed);
  // At most tiles_m: the same order, and tile_coords' group_m * tiles_n (an int) stays within the tile
  // count, which tiles_fit bounds; set_group_m(4096) with 2^21 tile-columns would overflow it.
  a.group_m = std::clamp((group_m > 0 ? group_m : kGroupM) / CL, 1, std::max(1, a.tiles_m));
  return a.tiles_m * a.tiles_n;
}

// Launches KERNEL on a persistent grid for `tiles` tiles (of CL blocks): a block, or a cluster, per SM.
template <auto KERNEL, int CL, typename... Args>
void launch_persistent(int tiles, int device, const Args&... args) {
  allow_smem<KERNEL>(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device);
  if constexpr (CL == 1) {
    KERNEL<<<persistent_blocks(tiles, device), kThreads, kSmemBytes, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t cfg = launch_config(CL * std::min(tiles, max_pair_clusters(device)), CL, stream, &attr);
    C10_CUDA_CHECK(cudaLaunchKernelEx(&cfg, KERNEL, args...));
    g_cluster_launches.fetch_add(1);
  }
}

// Stream-K (set_stream_k(1), TWOLAYER_OPS_SM90_STREAM_K=1; off until a GPU run times it). When the
// tiles are not a whole number of waves, the last wave runs on fewer SMs than there are: 100 of 132 at
// 8192x4096 -> 4096 (1024 tiles), 68 at 8192^3, 4 at 8192x4096 -> 16384; each costs about 3% of the
// GEMM. Here the last whole wave and the partial one (blocks + tail tiles) are shared out by K-blocks
// instead, evenly over the blocks, so that every block ends at about the same time: each block runs its
// range of those tiles' K-blocks, then its whole tiles (plan_sk_pieces). A tile split between blocks is
// finished by the block that holds its first K-blocks, after adding the others' partial sums (through a
// workspace of one float32 tile per block and a flag each; in block order: deterministic). Only that
// block waits, on the blocks after it, whose parts of the tile are their first work: none of them has
// waited before, so none can deadlock while all run at once (one block per SM; where fewer SMs are usable
// than the grid has blocks, as under an MPS limit, a waiter can wait on a block that never starts, and traps).
// Needs 4 or more K-blocks a tile (sk_plan). Sets a's stream-K fields; returns the workspace, to keep
// until the kernel is queued (freed stream-ordered), or none.
at::Tensor plan_stream_k(GemmArgs& a, int tiles, int device) {
  if (!g_stream_k.on()) return {};
  const int blocks = persistent_blocks(tiles, device);
  a.sk = sk_plan(tiles, blocks, a.k_blocks);
  if (a.sk.sk_tiles == 0) return {};
  const int64_t floats = int64_t(blocks) * kBM * kBN;
  at::Tensor workspace = at::empty({floats + blocks}, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA, device));
  workspace.narrow(0, floats, blocks).zero_();  // the flags: int 0 has float 0's bits
  a.sk_partials = workspace.data_ptr<float>();
  a.sk_flags = reinterpret_cast<int*>(a.sk_partials + floats);
  g_stream_k_launches.fetch_add(1);
  return workspace;
}

template <int DT, int TA, int TB, bool RELU, int CL>
void launch_gemm_cl(const CUtensorMap& ma, const CUtensorMap& mb, GemmArgs a, int device, MaskJob mask) {
  CUtensorMap mc;
  const int tiles = plan_gemm<DT, CL>(a, mc);
  mask.lines = 2 * a.group_m * CL;  // the writing order follows the tile order: 2 chunk-lines a tile-row
  // No stream-K while Gm is being written: its pieces are the last tiles, run first, whose chunks come last.
  at::Tensor workspace;
  if constexpr (CL == 1) {
    if (mask.flags == nullptr) workspace = plan_stream_k(a, tiles, device);
  }
  launch_persistent<sm90_gemm_kernel<DT, TA, TB, RELU, CL>, CL>(tiles, device, ma, mb, mc, a, mask);
}

// mask: an overlapped mask's job, for the backward GEMM that runs first (its A is Gm); else none.
template <int DT, int TA, int TB, bool RELU>
void launch_gemm(const CUtensorMap& ma, const CUtensorMap& mb, const GemmArgs& a, int device, int cl,
                 const MaskJob& mask = MaskJob{}) {
  if (cl == 2) {
    launch_gemm_cl<DT, TA, TB, RELU, 2>(ma, mb, a, device, mask);
  } else {
    launch_gemm_cl<DT, TA, TB, RELU, 1>(ma, mb, a, device, mask);
  }
}

// The tile count fits the kernel's int tile index, with room for t + gridDim.x.
bool tiles_fit(int64_t M, int64_t N) {
  return ((M + kBM - 1) / kBM) * ((N + kBN - 1) / kBN) <= int64_t(INT_MAX) - 4096;
}

// The backward's two products, dX (A1, B1 -> a1) and dW (A2, B2 -> a2): one persistent launch where
// TWOLAYER_OPS_SM90_MERGED_BACKWARD is on, Gm is written before (no overlapped mask), both run in
// clusters of the same size and their tiles together fit the tile index; else one launch each, dX's
// writing Gm where an overlapped mask's job is given (dW reads it after).
template <int DT, int TA1, int TB1, int TA2, int TB2>
void launch_gemm_pair(const CUtensorMap& ma1, const CUtensorMap& mb1, GemmArgs a1, int cl1, const CUtensorMap& ma2,
                      const CUtensorMap& mb2, GemmArgs a2, int cl2, int device, const MaskJob& mask = MaskJob{}) {
  const int64_t m_rows = (int64_t(a1.M) + kBM - 1) / kBM + (int64_t(a2.M) + kBM - 1) / kBM;
  const int64_t n_cols = (int64_t(std::max(a1.N, a2.N)) + kBN - 1) / kBN;
  if (!g_merged_backward.on() || mask.flags != nullptr || cl1 != cl2 || !tiles_fit(m_rows * kBM, n_cols * kBN)) {
    launch_gemm<DT, TA1, TB1, false>(ma1, mb1, a1, device, cl1, mask);
    launch_gemm<DT, TA2, TB2, false>(ma2, mb2, a2, device, cl2);
    return;
  }
  CUtensorMap mc1, mc2;
  g_merged_launches.fetch_add(1);
  if (cl1 == 2) {
    const int tiles = plan_gemm<DT, 2>(a1, mc1) + plan_gemm<DT, 2>(a2, mc2);
    launch_persistent<sm90_gemm_pair_kernel<DT, TA1, TB1, TA2, TB2, 2>, 2>(tiles, device, ma1, mb1, mc1, a1, ma2, mb2,
                                                                          mc2, a2);
  } else {
    const int tiles = plan_gemm<DT, 1>(a1, mc1) + plan_gemm<DT, 1>(a2, mc2);
    launch_persistent<sm90_gemm_pair_kernel<DT, TA1, TB1, TA2, TB2, 1>, 1>(tiles, device, ma1, mb1, mc1, a1, ma2, mb2,
                                                                          mc2, a2);
  }
}

// db (N,) = the column sums of partial (R, N), row after row.
template <int DT>
void launch_db(const at::Tensor& partial, at::Tensor& grad_b, cudaStream_t stream) {
  const int64_t R = partial.size(0), N = partial.size(1);
  sm90_db_kernel<DT><<<unsigned((N + 31) / 32), 256, 0, stream>>>(partial.const_data_ptr<float>(), R, N,
                                                                   static_cast<uint16_t*>(grad_b.data_ptr()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <int DT>
void launch_mask_and_db(const at::Tensor& g2, const at::Tensor& o2, at::Tensor& gm, at::Tensor* grad_b, int device) {
  const int64_t M = gm.size(0), N = gm.size(1);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device);
  // Row blocks: at most 512, each a multiple of 8 rows; fixed by (M, N) alone, so db is reproducible.
  int64_t R = std::min<int64_t>((M + 63) / 64, 512);
  const int64_t rows_per_block = ((M + R - 1) / R + 7) / 8 * 8;
  R = (M + rows_per_block - 1) / rows_per_block;
  at::Tensor partial;
  if (grad_b != nullptr) partial = at::empty({R, N}, gm.options().dtype(at::kFloat));
  const auto aligned = [](const at::Tensor& t) {
    return t.stride(1) == 1 && (t.size(0) <= 1 || t.stride(0) % 8 == 0) &&
           reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
  };
  const int vec = aligned(g2) && aligned(o2);
  const dim3 grid(unsigned((N + 255) / 256), unsigned(R));
  sm90_mask_grad_kernel<DT><<<grid, 256, 0, stream>>>(
      static_cast<const uint16_t*>(g2.const_data_ptr()), g2.stride(0), g2.stride(1),
      static_cast<const uint16_t*>(o2.const_data_ptr()), o2.stride(0), o2.stride(1),
      static_cast<uint16_t*>(gm.data_ptr()), grad_b != nullptr ? partial.data_ptr<float>() : nullptr, M, N,
      rows_per_block, vec);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (grad_b != nullptr) launch_db<DT>(partial, *grad_b, stream);
}

// The overlapped mask's job (set_overlap_mask; MaskJob) where the switch is on, the merged backward's is
// off (sm90_gemm_pair_kernel does not wait), K >= kOverlapMinK, the chunks fit an int and g and out are
// contiguous and 16-byte aligned, like Gm; else none (flags nullptr): the separate pass writes Gm. flags
// and partial (db's column sums, one row a chunk-row, where db runs) are its workspaces, to keep until the
// kernels are queued. K: either GEMM does K multiply-adds an element of Gm, the writers a few loads and a
// store, whatever the grid; under kOverlapMinK the GEMM would wait for its writers more than it gains.
constexpr int64_t kOverlapMinK = 1024;
MaskJob plan_overlap_mask(const at::Tensor& g2, const at::Tensor& o2, at::Tensor& gm, int64_t K, bool run_db,
                          at::Tensor& flags, at::Tensor& partial) {
  MaskJob j;
  const int64_t M = gm.size(0), N = gm.size(1);
  const int64_t rows = (M + kChunk - 1) / kChunk, cols = (N + kChunk - 1) / kChunk;
  const auto like_gm = [](const at::Tensor& t) {
    return t.is_contiguous() && reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
  };
  // (next ends at most one per writer warp past the chunks: room for that in an int)
  if (!g_overlap_mask.on() || g_merged_backward.on() || K < kOverlapMinK ||
      rows * cols > int64_t(INT_MAX) - (1 << 20) || !like_gm(g2) || !like_gm(o2))
    return j;
  flags = at::zeros({rows * cols + 2}, gm.options().dtype(at::kInt));  // the flags, next, done
  if (run_db) partial = at::empty({rows, N}, gm.options().dtype(at::kFloat));
  j.g = static_cast<const uint16_t*>(g2.const_data_ptr());
  j.o = static_cast<const uint16_t*>(o2.const_data_ptr());
  j.gm = static_cast<uint16_t*>(gm.data_ptr());
  j.partial = run_db ? partial.data_ptr<float>() : nullptr;
  j.flags = flags.data_ptr<int>();
  j.next = j.flags + rows * cols;
  j.done = j.next + 1;
  j.M = int(M);
  j.N = int(N);
  j.rows = int(rows);
  j.cols = int(cols);
  j.total = int(rows * cols);
  g_overlap_launches.fetch_add(1);
  return j;
}

GemmArgs out_args(at::Tensor& c, int64_t M, int64_t N, int64_t K) {
  GemmArgs a;
  a.c = c.data_ptr();
  a.ldc = c.stride(0);
  a.M = int(M);
  a.N = int(N);
  a.K = int(K);
  a.pair_ok = c.stride(0) % 2 == 0 && reinterpret_cast<uintptr_t>(a.c) % (2 * c.element_size()) == 0;
  return a;
}

// The TF32 backward. wgmma reads TF32 operands K-major only, so what dX and dW read MN-major is copied
// once, transposed (W^T, x^T and the masked gradient's transpose: three passes over K x N, K x M and
// N x M), and both GEMMs run like the forward, A and B K-major. The mask and db are ATen passes
// (where, and a column sum with no atomics: deterministic). Needs M, N multiples of 4 (16-byte rows).
bool tf32_backward(const at::Tensor& g2, const at::Tensor& o2, const at::Tensor& x2, const at::Tensor& weight,
                   bool run_dx, bool run_dw, bool run_db, at::Tensor& grad_x, at::Tensor& grad_w,
                   at::Tensor& grad_b) {
  const int64_t M = x2.size(0), K = x2.size(1), N = weight.size(0);
  if (N % 4 != 0 || (run_dw && M % 4 != 0)) return false;
  bind_context(x2.get_device());
  const at::Tensor gm = at::where(o2 <= 0, at::scalar_tensor(0, o2.options()), g2).contiguous();  // NaN passes
  // dX (M,K) = Gm (M,N) @ W (N,K): A = Gm, B = W^T (K,N), both with N contiguous.
  // dW (N,K) = Gm^T (N,M) @ x (M,K): A = Gm^T, B = x^T (K,M), both with M contiguous.
  const at::Tensor wt = run_dx ? weight.t().contiguous() : at::Tensor();
  const at::Tensor gmt = run_dw ? gm.t().contiguous() : at::Tensor(), xt = run_dw ? x2.t().contiguous() : at::Tensor();
  const int device = x2.get_device();
  const int cl_dx = cluster_blocks(M, device), cl_dw = cluster_blocks(N, device);
  CUtensorMap dx_a, dx_b, dw_a, dw_b;
  if (run_dx && (!make_map(&dx_a, gm.const_data_ptr(), kTF32, M, N, N, 0, kBM) ||
                 !make_map(&dx_b, wt.const_data_ptr(), kTF32, K, N, N, 0, kBN / cl_dx)))
    return false;
  if (run_dw && (!make_map(&dw_a, gmt.const_data_ptr(), kTF32, N, M, M, 0, kBM) ||
                 !make_map(&dw_b, xt.const_data_ptr(), kTF32, K, M, M, 0, kBN / cl_dw)))
    return false;
  if (run_db) grad_b.copy_(gm.sum(0));
  if (run_dx && run_dw) {
    launch_gemm_pair<kTF32, 0, 0, 0, 0>(dx_a, dx_b, out_args(grad_x, M, K, N), cl_dx, dw_a, dw_b,
                                        out_args(grad_w, N, K, M), cl_dw, device);
  } else if (run_dx) {
    launch_gemm<kTF32, 0, 0, false>(dx_a, dx_b, out_args(grad_x, M, K, N), device, cl_dx);
  } else if (run_dw) {
    launch_gemm<kTF32, 0, 0, false>(dw_a, dw_b, out_args(grad_w, N, K, M), device, cl_dw);
  }
  g_backward_calls.fetch_add(1);
  return true;
}

// ---- introspection ops (namespace twolayer_ops_sm90) ----------------------------------------------------

std::vector<int64_t> info_op() {
  int count = 0;
  int64_t probe = -1;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    (void)cudaGetLastError();
  } else {
    int device = 0;
    C10_CUDA_CHECK(cudaGetDevice(&device));
    probe = probe_device(device) == 1 ? 1 : 0;
  }
  return {int64_t(g_path.mode()), int64_t(g_path.env_on()), probe, g_forward_calls.load(), g_backward_calls.load(),
          int64_t(g_tf32.on()), int64_t(cluster_setting()), g_cluster_launches.load(), int64_t(g_tma_store.on()),
          g_tma_store_launches.load(), int64_t(g_wide_stores.on()), g_wide_store_launches.load(),
          int64_t(g_merged_backward.on()), g_merged_launches.load(), int64_t(g_stream_k.on()),
          g_stream_k_launches.load(), int64_t(g_overlap_mask.on()), g_overlap_launches.load()};
}

void set_mode_op(int64_t mode) { g_path.set(mode); }
void set_tf32_op(int64_t mode) { g_tf32.set(mode); }
void set_tma_store_op(int64_t mode) { g_tma_store.set(mode); }
void set_wide_stores_op(int64_t mode) { g_wide_stores.set(mode); }
void set_merged_backward_op(int64_t mode) { g_merged_backward.set(mode); }
void set_stream_k_op(int64_t mode) { g_stream_k.set(mode); }
void set_overlap_mask_op(int64_t mode) { g_overlap_mask.set(mode); }

void set_cluster_op(int64_t blocks) {
  TORCH_CHECK(blocks == -1 || blocks == 1 || blocks == 2,
              "twolayer_ops_sm90.set_cluster: -1 (env), 1 (no clusters) or 2 (pairs of blocks), got ", blocks);
  g_cluster.store(int(blocks));
}

void set_group_m_op(int64_t group_m) {
  TORCH_CHECK(group_m >= 0 && group_m <= 4096, "twolayer_ops_sm90.set_group_m: 0 (the default, ", kGroupM,
              ") or a tile-row count up to 4096, got ", group_m);
  g_group_m.store(int(group_m));
}

}  // namespace

bool try_forward(const at::Tensor& x2, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                 at::Tensor& out) {
  const int64_t M = x2.size(0), K = x2.size(1), N = weight.size(0);
  const int dt = path_element_type(x2, M, N, K);
  if (dt < 0 || !tiles_fit(M, N)) return false;
  if (!tma_readable(x2) || !tma_readable(weight) || !out.is_contiguous()) return false;
  const int device = x2.get_device();
  bind_context(device);
  const int cl = cluster_blocks(M, device);
  CUtensorMap ma, mb;
  if (!make_map(&ma, x2.const_data_ptr(), dt, M, K, x2.stride(0), 0, kBM) ||
      !make_map(&mb, weight.const_data_ptr(), dt, N, K, weight.stride(0), 0, kBN / cl))
    return false;
  GemmArgs a = out_args(out, M, N, K);
  if (has_bias(bias)) {
    a.bias = bias->const_data_ptr();
    a.bias_s = bias->stride(0);
  }
  if (dt == kBF16) {
    launch_gemm<kBF16, 0, 0, true>(ma, mb, a, device, cl);
  } else if (dt == kF16) {
    launch_gemm<kF16, 0, 0, true>(ma, mb, a, device, cl);
  } else {
    launch_gemm<kTF32, 0, 0, true>(ma, mb, a, device, cl);
  }
  g_forward_calls.fetch_add(1);
  return true;
}

bool try_backward(const at::Tensor& g2, const at::Tensor& o2, const at::Tensor& x2, const at::Tensor& weight,
                  bool run_dx, bool run_dw, bool run_db, at::Tensor& grad_x, at::Tensor& grad_w,
                  at::Tensor& grad_b) {
  if (!run_dx && !run_dw) return false;  // db alone: the portable single pass
  const int64_t M = x2.size(0), K = x2.size(1), N = weight.size(0);
  const int dt = path_element_type(x2, M, N, K);
  if (dt < 0) return false;
  if (run_dx && (!tiles_fit(M, K) || !grad_x.is_contiguous())) return false;
  if (run_dw && (!tiles_fit(N, K) || !grad_w.is_contiguous())) return false;
  if (run_db && !grad_b.is_contiguous()) return false;
  if (dt == kTF32) return tf32_backward(g2, o2, x2, weight, run_dx, run_dw, run_db, grad_x, grad_w, grad_b);
  // An operand is read only for the product that needs it (autograd passes the other as a placeholder).
  if (N % 8 != 0 || (run_dw && !tma_readable(x2)) || (run_dx && !tma_readable(weight))) return false;
  const bool bf16 = dt == kBF16;
  at::Tensor gm = at::empty({M, N}, x2.options());
  bind_context(x2.get_device());
  // dX = Gm (M,N) @ W (N,K): A = Gm K-major (box 64 of N x 128 rows), B = W MN-major (64 of K x 64 of N).
  // dW = Gm^T (N,M) @ x (M,K): A = Gm MN-major (64 of N x 64 of M), B = x MN-major (64 of K x 64 of M).
  CUtensorMap dx_a, dx_b, dw_a, dw_b;
  if (run_dx && (!make_map(&dx_a, gm.const_data_ptr(), dt, M, N, N, 0, kBM) ||
                 !make_map(&dx_b, weight.const_data_ptr(), dt, N, K, weight.stride(0), 64, 64)))
    return false;
  if (run_dw && (!make_map(&dw_a, gm.const_data_ptr(), dt, M, N, N, 64, 64) ||
                 !make_map(&dw_b, x2.const_data_ptr(), dt, M, K, x2.stride(0), 64, 64)))
    return false;
  const int device = x2.get_device();
  const int cl_dx = cluster_blocks(M, device), cl_dw = cluster_blocks(N, device);  // B is MN-major: any box
  // Gm: written by the first GEMM's spare warps as it goes (set_overlap_mask), or by a pass before it.
  at::Tensor flags, partial;
  const MaskJob job = plan_overlap_mask(g2, o2, gm, K, run_db, flags, partial);
  const bool overlap = job.flags != nullptr;
  if (!overlap && bf16) {
    launch_mask_and_db<kBF16>(g2, o2, gm, run_db ? &grad_b : nullptr, device);
  } else if (!overlap) {
    launch_mask_and_db<kF16>(g2, o2, gm, run_db ? &grad_b : nullptr, device);
  }
  if (run_dx && run_dw) {
    const GemmArgs a1 = out_args(grad_x, M, K, N), a2 = out_args(grad_w, N, K, M);
    if (bf16) {
      launch_gemm_pair<kBF16, 0, 1, 1, 1>(dx_a, dx_b, a1, cl_dx, dw_a, dw_b, a2, cl_dw, device, job);
    } else {
      launch_gemm_pair<kF16, 0, 1, 1, 1>(dx_a, dx_b, a1, cl_dx, dw_a, dw_b, a2, cl_dw, device, job);
    }
  } else if (run_dx) {
    const GemmArgs a = out_args(grad_x, M, K, N);
    if (bf16) {
      launch_gemm<kBF16, 0, 1, false>(dx_a, dx_b, a, device, cl_dx, job);
    } else {
      launch_gemm<kF16, 0, 1, false>(dx_a, dx_b, a, device, cl_dx, job);
    }
  } else {
    const GemmArgs a = out_args(grad_w, N, K, M);
    if (bf16) {
      launch_gemm<kBF16, 1, 1, false>(dw_a, dw_b, a, device, cl_dw, job);
    } else {
      launch_gemm<kF16, 1, 1, false>(dw_a, dw_b, a, device, cl_dw, job);
    }
  }
  if (overlap && run_db) {  // after the launch whose warps wrote the column sums
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device);
    if (bf16) {
      launch_db<kBF16>(partial, grad_b, stream);
    } else {
      launch_db<kF16>(partial, grad_b, stream);
    }
  }
  g_backward_calls.fetch_add(1);
  return true;
}

}  // namespace sm90
}  // namespace twolayer_ops

// torch.ops.twolayer_ops_sm90.info() -> [mode, env, probe, forward calls, backward calls, tf32, cluster,
// cluster launches, tma_store, tma_store launches, wide_stores, wide-store launches, merged_backward,
// merged launches, stream_k, stream-K launches, overlap_mask, overlapped-mask launches]. See sm90.h.
// torch.ops.twolayer_ops_sm90.set_mode(m): -1 follow TWOLAYER_OPS_SM90, 0 off, 1 on. See sm90.h.
// torch.ops.twolayer_ops_sm90.set_tf32(m): the TF32 forward; -1 follow TWOLAYER_OPS_SM90_TF32, 0 off, 1 on.
// torch.ops.twolayer_ops_sm90.set_group_m(g): the persistent order's group height, 0 for the default
// (a tuning knob: benchmarks/hopper_evidence.sh sweeps it).
// torch.ops.twolayer_ops_sm90.set_cluster(n): blocks per cluster, -1 follow TWOLAYER_OPS_SM90_CLUSTER, 1 or 2.
// torch.ops.twolayer_ops_sm90.set_tma_store(m): the TMA-store epilogue; -1 follow TWOLAYER_OPS_SM90_TMA_STORE,
// 0 off, 1 on.
// torch.ops.twolayer_ops_sm90.set_wide_stores(m): 16-byte stores from the registers (where TMA does not
// store C); -1 follow TWOLAYER_OPS_SM90_WIDE_STORES, 0 off, 1 on.
// torch.ops.twolayer_ops_sm90.set_merged_backward(m): the backward's dX and dW in one launch; -1 follow
// TWOLAYER_OPS_SM90_MERGED_BACKWARD, 0 off, 1 on.
// torch.ops.twolayer_ops_sm90.set_stream_k(m): the last waves' tiles shared out by K-blocks (single-block
// launches); -1 follow TWOLAYER_OPS_SM90_STREAM_K, 0 off, 1 on.
// torch.ops.twolayer_ops_sm90.set_overlap_mask(m): the 16-bit backward's masked gradient written during its
// first GEMM; -1 follow TWOLAYER_OPS_SM90_OVERLAP_MASK, 0 off, 1 on.
TORCH_LIBRARY(twolayer_ops_sm90, m) {
  m.def("info() -> int[]", &twolayer_ops::sm90::info_op);
  m.def("set_mode(int mode) -> ()", &twolayer_ops::sm90::set_mode_op);
  m.def("set_tf32(int mode) -> ()", &twolayer_ops::sm90::set_tf32_op);
  m.def("set_group_m(int group_m) -> ()", &twolayer_ops::sm90::set_group_m_op);
  m.def("set_cluster(int blocks) -> ()", &twolayer_ops::sm90::set_cluster_op);
  m.def("set_tma_store(int mode) -> ()", &twolayer_ops::sm90::set_tma_store_op);
  m.def("set_wide_stores(int mode) -> ()", &twolayer_ops::sm90::set_wide_stores_op);
  m.def("set_merged_backward(int mode) -> ()", &twolayer_ops::sm90::set_merged_backward_op);
  m.def("set_stream_k(int mode) -> ()", &twolayer_ops::sm90::set_stream_k_op);
  m.def("set_overlap_mask(int mode) -> ()", &twolayer_ops::sm90::set_overlap_mask_op);
}
