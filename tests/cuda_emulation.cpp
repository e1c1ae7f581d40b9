// CUDA kernels' portable cores run on a CPU: one OS thread per CUDA thread, pthread barriers for
// __syncthreads, the grid barrier and the warp shuffles.
//   emulated_launch: the fused training step (csrc/cuda/train_step_kernel.h), all blocks at once, as
//     its cooperative launch runs them; shared memory and the global scratch start as NaN, so a read
//     of anything not written first shows in the results.
//   emulated_gemm: the GEMM of the native backend (csrc/cuda/linear_relu_gemm.h: forward, dX, dW + db;
//     SIMT and WMMA), one block after another (its blocks never wait for each other); emulated_prefetched:
//     the lines its last call prefetched into L2.
//   emulated_quad_transpose: the sm90 epilogue's exchange of words in each quad of a warp
//     (csrc/cuda/quad_transpose.h).
//   emulated_stream_k: the sm90 GEMM's stream-K schedule (csrc/cuda/stream_k.h), plain host code.
//   emulated_chunk_order, emulated_a_chunk: the sm90 backward's overlapped mask (csrc/cuda/overlap_mask.h):
//     the order its warps write Gm's chunks in, the chunks a K-tile of A waits for; plain host code.
// tests/conftest.py builds it as a shared library for the tests (through ctypes) and, with
// -DEMULATION_MAIN -fsanitize=thread, as a program that runs fused-step launches under ThreadSanitizer.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include <pthread.h>

#define __host__
#define __device__
#define __forceinline__ inline
#define __shared__ static  // shared by every thread; blocks that use it run one at a time
#define __align__(n) __attribute__((aligned(n)))

struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

struct Dim3 {
  unsigned x = 0, y = 1, z = 1;
};
inline thread_local Dim3 threadIdx, blockIdx;
inline Dim3 gridDim, blockDim;

// glibc's barrier; ThreadSanitizer knows its ordering.
struct Barrier {
  explicit Barrier(unsigned count) { pthread_barrier_init(&b, nullptr, count); }
  ~Barrier() { pthread_barrier_destroy(&b); }
  void arrive_and_wait() { pthread_barrier_wait(&b); }
  pthread_barrier_t b;
};

struct Warp {
  Barrier arrive{32};
  alignas(8) unsigned char slot[2][32][8];  // shuffles alternate between the two: see shfl_from
};
inline thread_local Warp* this_warp;
inline thread_local int shuffle_parity;
inline thread_local Barrier* this_block;
inline Barrier* this_grid;

inline void __syncthreads() { this_block->arrive_and_wait(); }
inline void __syncwarp() { this_warp->arrive.arrive_and_wait(); }

// The 16-bit element types, as bits, with IEEE round-to-nearest-even conversions.
struct Half16 {
  uint16_t bits;
};
struct BFloat16Bits {
  uint16_t bits;
};
inline float to_float(Half16 h) {
  _Float16 f;
  std::memcpy(&f, &h.bits, 2);
  return float(f);
}
inline uint16_t to_bits(float a, Half16) {
  const _Float16 f = static_cast<_Float16>(a);
  uint16_t b;
  std::memcpy(&b, &f, 2);
  return b;
}
inline float to_float(BFloat16Bits h) {
  const uint32_t u = uint32_t(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t to_bits(float a, BFloat16Bits) {
  uint32_t u;
  std::memcpy(&u, &a, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // NaN stays NaN
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// WMMA 16x16x16 with float accumulators, as the kernel uses it. Operand fragments hold the whole tile
// in every lane; an accumulator fragment holds its lane's 8 of the 256 elements (row lane / 2,
// columns (lane % 2) * 8 + 0..7), spread over the warp as the hardware does (in its own order).
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16);
  float x[256];  // matrix_a, matrix_b: the whole tile, row-major
};
template <>
struct fragment<accumulator, 16, 16, 16, float, void> {
  float x[8];
};
using acc_fragment = fragment<accumulator, 16, 16, 16, float, void>;

inline int acc_row() { return int(threadIdx.x % 32) / 2; }
inline int acc_col() { return (int(threadIdx.x % 32) % 2) * 8; }

inline void fill_fragment(acc_fragment& f, float v) {
  for (float& e : f.x) e = v;
}
template <class Use, class T, class L>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, L>& f, const T* p, unsigned ldm) {
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.x[r * 16 + c] = to_float(p[r * ldm + c]);
}
template <class T, class L>
void mma_sync(acc_fragment& d, const fragment<matrix_a, 16, 16, 16, T, L>& a, const fragment<matrix_b, 16, 16, 16, T, L>& b,
              const acc_fragment& c) {
  acc_fragment out;
  for (int j = 0; j < 8; ++j) {
    float s = c.x[j];
    for (int k = 0; k < 16; ++k) s += a.x[acc_row() * 16 + k] * b.x[k * 16 + acc_col() + j];
    out.x[j] = s;
  }
  d = out;
}
inline void store_matrix_sync(float* p, const acc_fragment& f, unsigned ldm, layout_t) {
  for (int j = 0; j < 8; ++j) p[acc_row() * ldm + acc_col() + j] = f.x[j];
}
}  // namespace wmma
}  // namespace nvcuda

namespace twolayer_ops {
namespace fused_cuda {

inline void grid_barrier() { this_grid->arrive_and_wait(); }

// __shfl_*_sync over the full warp: every lane publishes its value, then reads the source lane's
// (its own where the source is outside the warp, as __shfl_down_sync does). Consecutive shuffles use
// alternate slot sets, so one barrier each suffices: a lane writes a set again only two shuffles
// later, after the barrier of the shuffle between, which every lane reaches after its read.
template <typename T>
T shfl_from(T v, int src) {
  static_assert(sizeof(T) <= 8);
  const int lane = int(threadIdx.x % 32);
  auto& slot = this_warp->slot[shuffle_parity];
  shuffle_parity ^= 1;
  std::memcpy(slot[lane], &v, sizeof(T));
  this_warp->arrive.arrive_and_wait();
  T r = v;
  if (src >= 0 && src < 32) std::memcpy(&r, slot[src], sizeof(T));
  return r;
}
template <typename T>
T shfl_down(T v, int d) {
  return shfl_from(v, int(threadIdx.x % 32) + d);
}
template <typename T>
T shfl_xor(T v, int m) {
  return shfl_from(v, int(threadIdx.x % 32) ^ m);
}

// Correctly rounded, never contracted: volatile keeps a * b + c from becoming an FMA.
template <typename T>
T add_rn(T a, T b) {
  volatile T r = a + b;
  return r;
}
template <typename T>
T sub_rn(T a, T b) {
  volatile T r = a - b;
  return r;
}
template <typename T>
T mul_rn(T a, T b) {
  volatile T r = a * b;
  return r;
}
template <typename T>
T div_rn(T a, T b) {
  volatile T r = a / b;
  return r;
}
template <typename T>
T sqrt_rn(T a) {
  return std::sqrt(a);
}

template <typename T>
struct Quad {
  T v[4];
};
template <typename T>
Quad<T> load4(const T* p) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {  // a vector load on the GPU: it must be aligned
    std::fprintf(stderr, "cuda_emulation: misaligned load4 at %p\n", static_cast<const void*>(p));
    std::abort();
  }
  return {{p[0], p[1], p[2], p[3]}};
}

}  // namespace fused_cuda
}  // namespace twolayer_ops

#include "../csrc/cuda/train_step_kernel.h"

namespace twolayer_ops {
namespace cuda_gemm {
using std::fma;  // the float overload, as CUDA's fma(float, float, float)
}  // namespace cuda_gemm
}  // namespace twolayer_ops

// The GEMMs' L2 prefetch hint: the lines asked for, recorded (emulated_prefetched returns them).
inline std::mutex prefetched_mutex;
inline std::vector<uintptr_t> prefetched;
inline void prefetch_l2(const void* p) {
  const std::lock_guard<std::mutex> lock(prefetched_mutex);
  prefetched.push_back(reinterpret_cast<uintptr_t>(p));
}

#include "../csrc/cuda/linear_relu_gemm.h"
#include "../csrc/cuda/quad_transpose.h"
#include "../csrc/cuda/overlap_mask.h"
#include "../csrc/cuda/stream_k.h"

// The 16-bit element types (linear_relu.cu has CUDA's): raw bits, computed in float, WMMA policy.
namespace twolayer_ops {
namespace cuda_gemm {
template <typename Bits>
struct Elem16 {
  using raw = unsigned short;
  using vec = uint4;
  using acc = float;
  using wt = Bits;
  static constexpr int VEC = 8;
  static acc tof(raw r) { return to_float(Bits{r}); }
  static raw fromf(acc a) { return to_bits(a, Bits{}); }
};
template <>
struct Elem<Half16> : Elem16<Half16> {};
template <>
struct Elem<BFloat16Bits> : Elem16<BFloat16Bits> {};
template <>
struct PolicyFor<Half16> {
  using type = WmmaPolicy<Half16>;
};
template <>
struct PolicyFor<BFloat16Bits> {
  using type = WmmaPolicy<BFloat16Bits>;
};
}  // namespace cuda_gemm
}  // namespace twolayer_ops

using namespace twolayer_ops;
using namespace twolayer_ops::fused_cuda;

namespace {

struct Thread {
  const std::function<void()>* body;
  unsigned block, thread;
  Warp* warp;
  Barrier* block_barrier;
};

void* thread_main(void* p) {
  const auto* t = static_cast<const Thread*>(p);
  threadIdx.x = t->thread;
  blockIdx.x = t->block;
  this_warp = t->warp;
  shuffle_parity = 0;
  this_block = t->block_barrier;
  (*t->body)();
  return nullptr;
}

// Runs body() on threads_per_block threads for each block in [b0, b1), all at once; grid_barrier()
// waits for all of them. gridDim is the caller's to set.
void run_blocks(int64_t b0, int64_t b1, int threads_per_block, const std::function<void()>& body) {
  const int64_t blocks = b1 - b0;
  blockDim.x = unsigned(threads_per_block);
  Barrier grid(unsigned(blocks * threads_per_block));
  this_grid = &grid;
  std::vector<std::unique_ptr<Barrier>> block_barriers;
  std::vector<std::unique_ptr<Warp>> warps;
  std::vector<Thread> threads(blocks * threads_per_block);
  std::vector<pthread_t> handles(threads.size());
  // Every thread's stack in one allocation: tens of thousands of separately mapped stacks (and their
  // guard pages) would approach the kernel's limit on mappings per process (vm.max_map_count).
#ifdef __SANITIZE_THREAD__
  constexpr size_t kStack = 1024 * 1024;  // ThreadSanitizer asks for about 900 KB
#else
  constexpr size_t kStack = 128 * 1024;
#endif
  std::unique_ptr<char[]> stacks(new char[threads.size() * kStack + 4096]);
  char* stack = stacks.get() + (4096 - reinterpret_cast<uintptr_t>(stacks.get()) % 4096) % 4096;
  const int warps_per_block = (threads_per_block + 31) / 32;
  for (int64_t b = 0; b < blocks; ++b) {
    block_barriers.push_back(std::make_unique<Barrier>(unsigned(threads_per_block)));
    for (int w = 0; w < warps_per_block; ++w) warps.push_back(std::make_unique<Warp>());
    for (int t = 0; t < threads_per_block; ++t) {
      threads[b * threads_per_block + t] = {&body, unsigned(b0 + b), unsigned(t),
                                            warps[b * warps_per_block + t / 32].get(), block_barriers[b].get()};
    }
  }
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  for (size_t i = 0; i < threads.size(); ++i) {
    pthread_attr_setstack(&attr, stack + i * kStack, kStack);
    if (pthread_create(&handles[i], &attr, &thread_main, &threads[i]) != 0) {
      std::fprintf(stderr, "cuda_emulation: pthread_create failed at thread %zu\n", i);
      std::abort();
    }
  }
  for (pthread_t h : handles) pthread_join(h, nullptr);
  pthread_attr_destroy(&attr);
}

// The fused step's cooperative launch: every block at once, each with its dynamic shared memory.
template <typename T, int OPT>
void run_grid(const FusedArgs<T>& a, const Plan& plan) {
  const int64_t grid = plan.grid();
  gridDim.x = unsigned(grid);
  std::vector<std::vector<unsigned char>> smem(grid, std::vector<unsigned char>(plan.lay.total + 16, 0xff));
  std::vector<unsigned char*> base(grid);
  for (int64_t b = 0; b < grid; ++b) {
    base[b] = smem[b].data() + (16 - reinterpret_cast<uintptr_t>(smem[b].data()) % 16) % 16;  // 16-byte aligned
  }
  run_blocks(0, grid, kThreads, [&] { fused_block<T, OPT>(a, base[blockIdx.x]); });
}

template <typename T, int OPT>
int launch(int64_t n, int64_t d_in, int64_t h, int64_t d_out, const void* x, const void* y, void* const* params,
           void* const* grads, void* const* state, void* losses, int64_t steps, int single, int single_update,
           int64_t single_step, int64_t calls_done, int64_t acc, double loss_scale, const double* hyper,
           int64_t max_blocks, int64_t smem_limit, int64_t* plan_out) {
  constexpr int ns = OPT == kSgd ? 0 : OPT == kMomentum ? 1 : 2;
  int64_t min_smem = 0;
  const Plan p = make_plan(n, d_in, h, d_out, int64_t(sizeof(T)), ns, max_blocks, smem_limit, &min_smem);
  plan_out[0] = p.pj;
  plan_out[1] = p.pk;
  plan_out[2] = p.nc;
  plan_out[3] = p.ok ? p.lay.total : min_smem;
  if (!p.ok) return 1;
  if (steps == 0) return 0;
  const size_t bytes = size_t(scratch_layout(p, n, h, d_out, sizeof(T)).bytes);
  std::vector<double> scratch(bytes / 8 + 2);  // malloc's 16-byte alignment, as cudaMalloc's (and more)
  std::memset(scratch.data(), 0xff, scratch.size() * 8);  // all-ones bytes: NaN as float and as double
  FusedArgs<T> a{};
  set_plan(a, p, n, d_in, h, d_out, reinterpret_cast<unsigned char*>(scratch.data()));
  a.x = static_cast<const T*>(x);
  a.y = static_cast<const T*>(y);
  for (int i = 0; i < 4; ++i) {
    a.p[i] = static_cast<T*>(params[i]);
    a.g[i] = static_cast<T*>(grads[i]);
    a.s0[i] = ns >= 1 ? static_cast<T*>(state[i]) : nullptr;
    a.s1[i] = ns >= 2 ? static_cast<T*>(state[4 + i]) : nullptr;
  }
  a.losses = static_cast<T*>(losses);
  a.steps = steps;
  a.single = single != 0;
  a.single_update = single_update != 0;
  a.single_step = single_step;
  a.calls_done = calls_done;
  a.acc = acc;
  a.loss_scale = loss_scale;
  a.lr = hyper[0];
  a.momentum = hyper[1];
  a.beta1 = hyper[2];
  a.beta2 = hyper[3];
  a.eps = hyper[4];
  run_grid<T, OPT>(a, p);
  return 0;
}

}  // namespace

// One launch of the fused kernel on contiguous host arrays, with the CUDA host code's arguments
// (train_step.cu: launch). es: 4 (float32) or 8 (float64); opt: 0 sgd, 1 momentum, 2 adam; state:
// 0, 4 or 8 arrays as the optimizer needs; hyper: lr, momentum, beta1, beta2, eps; max_blocks and
// smem_limit stand for the SM count and the per-block shared memory. plan_out: pj, pk, nc and the
// shared memory per block (or, with no plan, the least any split needs). Returns 0, or 1 where no
// split fits (the CUDA op raises its "on-chip limits" error there).
extern "C" int emulated_launch(int es, int opt, int64_t n, int64_t d_in, int64_t h, int64_t d_out, const void* x,
                               const void* y, void* const* params, void* const* grads, void* const* state,
                               void* losses, int64_t steps, int single, int single_update, int64_t single_step,
                               int64_t calls_done, int64_t acc, double loss_scale, const double* hyper,
                               int64_t max_blocks, int64_t smem_limit, int64_t* plan_out) {
#define EMULATED_LAUNCH(T, OPT)                                                                                   \
  return launch<T, OPT>(n, d_in, h, d_out, x, y, params, grads, state, losses, steps, single, single_update,    \
                        single_step, calls_done, acc, loss_scale, hyper, max_blocks, smem_limit, plan_out)
  if (es == 4) {
    if (opt == kSgd) EMULATED_LAUNCH(float, kSgd);
    if (opt == kMomentum) EMULATED_LAUNCH(float, kMomentum);
    EMULATED_LAUNCH(float, kAdam);
  }
  if (opt == kSgd) EMULATED_LAUNCH(double, kSgd);
  if (opt == kMomentum) EMULATED_LAUNCH(double, kMomentum);
  EMULATED_LAUNCH(double, kAdam);
#undef EMULATED_LAUNCH
}

namespace {

// A kernel's shared array, NaN-filled before each block so that a read of anything unwritten shows.
template <typename T, int TILES>
unsigned char* gemm_smem() {
  constexpr int kBytes = cuda_gemm::Policy<T, TILES>::SMEM;
  alignas(128) static unsigned char smem[kBytes];
  for (size_t i = 0; i + sizeof(float) <= sizeof(smem); i += sizeof(float)) {
    const float nan = NAN;
    std::memcpy(smem + i, &nan, sizeof(float));
  }
  return smem;
}

constexpr int64_t kL2Bytes = int64_t(50) << 20;  // an H100's or H200's L2, for plan_prefetch

// plan_workspace of linear_relu.cu: g's split over K, its prefetch and its workspace (empty: no split).
// sms stands for the SM count that plans them (0: neither), min_ktiles for TWOLAYER_OPS_SPLITK_MIN_KTILES.
template <typename T, int MODE, int TILES>
std::vector<typename cuda_gemm::Elem<T>::acc> plan_workspace(cuda_gemm::GemmArgs& g, int64_t sms, int64_t min_ktiles) {
  const int64_t work = sms > 0 ? cuda_gemm::plan_split_k<T, MODE, TILES>(g, sms, min_ktiles) : 0;
  if (sms > 0) cuda_gemm::plan_prefetch<T, MODE, TILES>(g, sms, kL2Bytes);
  std::vector<typename cuda_gemm::Elem<T>::acc> workspace(size_t(work), NAN);  // unwritten slots read as NaN
  g.work = workspace.data();
  return workspace;
}

template <typename T, int MODE>
void reduce(const cuda_gemm::GemmArgs& g) {
  for (int64_t i = 0; i < g.M * g.N; ++i) cuda_gemm::splitk_reduce_body<T, MODE>(g, i);
}

// launch_gemm_tiles of linear_relu.cu.
template <typename T, int MODE, int TILES>
int64_t run_gemm_tiles(cuda_gemm::GemmArgs g, int64_t max_blocks, int64_t sms, int64_t min_ktiles) {
  using P = cuda_gemm::Policy<T, TILES>;
  const auto workspace = plan_workspace<T, MODE, TILES>(g, sms, min_ktiles);
  const int64_t tiles = cuda_gemm::gemm_tiles<T, TILES>(g);
  if (tiles <= 0) return 0;
  const int64_t grid = std::min(tiles, max_blocks);  // fewer blocks than tiles: each walks several
  gridDim.x = unsigned(grid);
  for (int64_t b = 0; b < grid; ++b) {
    unsigned char* smem = gemm_smem<T, TILES>();
    run_blocks(b, b + 1, P::NT, [&] { cuda_gemm::gemm_body<T, MODE, TILES>(g, smem, blockIdx.x, gridDim.x); });
  }
  if (!workspace.empty()) reduce<T, MODE>(g);
  return grid;
}

// launch_gemm: float32 runs in the tiles of kind `tiles` (cuda_gemm::SimtTiles), whatever the size.
template <typename T, int MODE>
int64_t gemm(const cuda_gemm::GemmArgs& g, int64_t max_blocks, int64_t sms, int64_t min_ktiles, int tiles) {
  if constexpr (std::is_same_v<T, float>) {
    if (tiles == cuda_gemm::kSmallTiles) return run_gemm_tiles<T, MODE, cuda_gemm::kSmallTiles>(g, max_blocks, sms, min_ktiles);
    if (tiles == cuda_gemm::kWideThreadTiles)
      return run_gemm_tiles<T, MODE, cuda_gemm::kWideThreadTiles>(g, max_blocks, sms, min_ktiles);
  }
  return run_gemm_tiles<T, MODE, cuda_gemm::kDefaultTiles>(g, max_blocks, sms, min_ktiles);
}

// launch_grads_tiles of linear_relu.cu: dX (its K slices, if split) and dW (+ db) in one grid, then
// dX's reduce pass if split. max_blocks caps each part of the grid. Returns the grid's blocks.
template <typename T, int TILES>
int64_t run_grads_tiles(cuda_gemm::GemmArgs dx, cuda_gemm::GemmArgs dw, int64_t max_blocks, int64_t sms,
                    int64_t min_ktiles) {
  using P = cuda_gemm::Policy<T, TILES>;
  const auto workspace = plan_workspace<T, 1, TILES>(dx, sms, min_ktiles);
  const int64_t dx_blocks = std::min(cuda_gemm::gemm_tiles<T, TILES>(dx), max_blocks);
  const int64_t grid = dx_blocks + std::min(cuda_gemm::gemm_tiles<T, TILES>(dw), max_blocks);
  gridDim.x = unsigned(grid);
  for (int64_t b = 0; b < grid; ++b) {
    unsigned char* smem = gemm_smem<T, TILES>();
    run_blocks(b, b + 1, P::NT,
               [&] { cuda_gemm::grads_body<T, TILES>(dx, dw, smem, blockIdx.x, dx_blocks, gridDim.x); });
  }
  if (!workspace.empty()) reduce<T, 1>(dx);
  return grid;
}

template <typename T>
int64_t grads(const cuda_gemm::GemmArgs& dx, const cuda_gemm::GemmArgs& dw, int64_t max_blocks, int64_t sms,
              int64_t min_ktiles, int tiles) {
  if constexpr (std::is_same_v<T, float>) {
    if (tiles == cuda_gemm::kSmallTiles) return run_grads_tiles<T, cuda_gemm::kSmallTiles>(dx, dw, max_blocks, sms, min_ktiles);
    if (tiles == cuda_gemm::kWideThreadTiles)  // one launch each, as launch_grads runs them
      return run_gemm_tiles<T, 1, cuda_gemm::kWideThreadTiles>(dx, max_blocks, sms, min_ktiles) +
             run_gemm_tiles<T, 2, cuda_gemm::kWideThreadTiles>(dw, max_blocks, sms, min_ktiles);
  }
  return run_grads_tiles<T, cuda_gemm::kDefaultTiles>(dx, dw, max_blocks, sms, min_ktiles);
}

template <typename T>
int64_t gemm_mode(int mode, cuda_gemm::Mat a, cuda_gemm::Mat o, cuda_gemm::Mat b, const void* bias, int64_t bias_s,
                  void* c, void* db, int64_t M, int64_t K, int64_t N, int64_t max_blocks, int64_t sms,
                  int64_t min_ktiles, int tiles) {
  using namespace cuda_gemm;
  if (mode == 0) return gemm<T, 0>(forward_args<T>(a, b, bias, bias_s, c, M, K, N), max_blocks, sms, min_ktiles, tiles);
  if (mode == 1) return gemm<T, 1>(grad_x_args<T>(a, o, b, c, M, N, K), max_blocks, sms, min_ktiles, tiles);
  return gemm<T, 2>(grad_w_args<T>(a, o, b, c, db, M, N, K), max_blocks, sms, min_ktiles, tiles);
}

// run(T()) for the element type of a dtype code: 0 float32, 1 float64 (the SIMT policy), 2 float16,
// 3 bfloat16 (WMMA).
template <typename F>
int64_t for_dtype(int dtype, const F& run) {
  switch (dtype) {
    case 0:
      return run(float());
    case 1:
      return run(double());
    case 2:
      return run(Half16());
    default:
      return run(BFloat16Bits());
  }
}

}  // namespace

// One product of the native CUDA backend, as linear_relu.cu launches it, on host arrays given by
// pointer and element strides (x (M, K), w (N, K), g and o (M, N)). dtype: 0 float32, 1 float64
// (the SIMT policy), 2 float16, 3 bfloat16 (WMMA).
//   mode 0: c (M, N) = relu(a=x @ b=w^T + bias)              (bias may be null)
//   mode 1: c (M, K) = mask(a=g, o) @ b=w                    (dX)
//   mode 2: c (N, K) = mask(a=g, o)^T @ b=x, db (N,) = row sums of mask(g, o)^T  (dW, db; either may be null)
// At most max_blocks blocks (each then walks several output tiles); sms > 0 plans a split over K as
// the GPU with that many SMs would (0: never split), each slice at least min_ktiles K-tiles deep
// (TWOLAYER_OPS_SPLITK_MIN_KTILES); tiles runs float32 in that tile kind (cuda_gemm::SimtTiles: 0 the
// default, 1 the small-output tiles of TWOLAYER_OPS_SIMT_SMALL_TILES, 2 the 128-thread tiles of
// TWOLAYER_OPS_SIMT_WIDE_THREAD_TILES), whatever the size. Returns the blocks run.
extern "C" int64_t emulated_gemm(int dtype, int mode, const void* a, int64_t as0, int64_t as1, const void* o, int64_t os0,
                                 int64_t os1, const void* b, int64_t bs0, int64_t bs1, const void* bias,
                                 int64_t bias_s, void* c, void* db, int64_t M, int64_t K, int64_t N,
                                 int64_t max_blocks, int64_t sms, int64_t min_ktiles, int64_t tiles) {
  const cuda_gemm::Mat ma{a, as0, as1}, mo{o, os0, os1}, mb{b, bs0, bs1};
  prefetched.clear();
  auto run = [&](auto zero) {
    return gemm_mode<decltype(zero)>(mode, ma, mo, mb, bias, bias_s, c, db, M, K, N, max_blocks, sms, min_ktiles,
                                     int(tiles));
  };
  return for_dtype(dtype, run);
}

// The backward's dX (c (M, K)) and dW + db (dw (N, K), db (N,); either may be null) as linear_relu.cu
// launches them together (launch_grads), from g and o (M, N), w (N, K) and x (M, K). max_blocks caps
// each product's part of the grid; sms, min_ktiles and tiles as for emulated_gemm. Returns the grid's blocks
// (in the 128-thread tiles, which run the products one launch each, both launches' together).
extern "C" int64_t emulated_grads(int dtype, const void* g, int64_t gs0, int64_t gs1, const void* o, int64_t os0,
                                  int64_t os1, const void* w, int64_t ws0, int64_t ws1, const void* x, int64_t xs0,
                                  int64_t xs1, void* dx, void* dw, void* db, int64_t M, int64_t K, int64_t N,
                                  int64_t max_blocks, int64_t sms, int64_t min_ktiles, int64_t tiles) {
  using namespace cuda_gemm;
  const Mat mg{g, gs0, gs1}, mo{o, os0, os1}, mw{w, ws0, ws1}, mx{x, xs0, xs1};
  prefetched.clear();
  auto run = [&](auto zero) {
    using T = decltype(zero);
    return grads<T>(grad_x_args<T>(mg, mo, mw, dx, M, N, K), grad_w_args<T>(mg, mo, mx, dw, db, M, N, K), max_blocks,
                    sms, min_ktiles, int(tiles));
  };
  return for_dtype(dtype, run);
}

// The lines the last emulated_gemm or emulated_grads call prefetched into L2 (plan_prefetch, with sms
// > 0 and an H100's L2), at most cap of them into out, in the order asked; returns how many it asked for.
extern "C" int64_t emulated_prefetched(uint64_t* out, int64_t cap) {
  for (int64_t i = 0; i < cap && i < int64_t(prefetched.size()); ++i) out[i] = prefetched[size_t(i)];
  return int64_t(prefetched.size());
}

// quad_transpose (the sm90 epilogue's exchange) on one warp: lane l's words are words[4l .. 4l + 3],
// replaced by what the lane holds afterwards.
extern "C" int emulated_quad_transpose(uint32_t* words) {
  gridDim.x = 1;
  run_blocks(0, 1, 32, [&] {
    const int lane = int(threadIdx.x);
    uint32_t w[4];
    for (int i = 0; i < 4; ++i) w[i] = words[4 * lane + i];
    quad_transpose(w, lane % 4, [](uint32_t v, int m) { return shfl_xor(v, m); });
    for (int i = 0; i < 4; ++i) words[4 * lane + i] = w[i];
  });
  return 0;
}

// The stream-K schedule (stream_k.h) of a GEMM of `tiles` tiles of k_blocks K-blocks on `blocks` blocks:
// plan[0..2] = sk_tiles, per, extra; for block b, pieces[10 b] = its piece count, then (tile, kb0, kb1)
// each; waits[b] = for a block whose last piece is a tile's first part only, the end of its waiting loop
// (the first block after it that sk_shares says holds no part of the tile), else -1.
extern "C" int emulated_stream_k(int tiles, int blocks, int k_blocks, int* plan, int* pieces, int* waits) {
  using namespace twolayer_ops::sm90;
  const SkPlan p = sk_plan(tiles, blocks, k_blocks);
  plan[0] = p.sk_tiles;
  plan[1] = p.per;
  plan[2] = p.extra;
  const int whole = tiles - p.sk_tiles;
  for (int b = 0; b < blocks; ++b) {
    int piece[kMaxSkPieces][3];
    const int n = p.sk_tiles > 0 ? sk_pieces(p, whole, k_blocks, b, piece) : 0;
    pieces[10 * b] = n;
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < 3; ++j) pieces[10 * b + 1 + 3 * i + j] = piece[i][j];
    waits[b] = -1;
    if (n > 0 && piece[n - 1][1] == 0 && piece[n - 1][2] < k_blocks) {
      const int tile_end = (piece[n - 1][0] - whole + 1) * k_blocks;
      int other = b + 1;
      while (sk_shares(p.per, p.extra, blocks, other, tile_end)) ++other;
      waits[b] = other;
    }
  }
  return 0;
}

// The overlapped mask's writing order (overlap_mask.h) of a Gm of rows x cols chunks: order[2i], order[2i + 1]
// = chunk i's (chunk-row, chunk-column).
extern "C" int emulated_chunk_order(int rows, int cols, int lines, int by_columns, int* order) {
  for (int i = 0; i < rows * cols; ++i)
    twolayer_ops::sm90::chunk_coords(i, rows, cols, lines, by_columns != 0, order[2 * i], order[2 * i + 1]);
  return 0;
}

// Chunk h of K-tile kb of A's tile-row tm (overlap_mask.h's a_chunk): chunk[0], chunk[1] = (row, column).
extern "C" int emulated_a_chunk(int tm, int kb, int h, int mn_major, int* chunk) {
  twolayer_ops::sm90::a_chunk(tm, kb, h, mn_major != 0, chunk[0], chunk[1]);
  return 0;
}

#ifdef EMULATION_MAIN
// Launches for ThreadSanitizer: every optimizer, a split over both H and D_in, rows of the batch on
// several blocks, and the hidden gradient staged in chunks. Exits non-zero on a non-finite loss.
int main() {
  struct Case {
    int es, opt;
    int64_t n, d_in, h, d_out, max_blocks, smem_limit;
  };
  const Case cases[] = {{8, 2, 7, 33, 19, 5, 6, 232448},       // split over H
                        {4, 0, 11, 200, 8, 10, 4, 8 * 1024},     // split over D_in; rows on several blocks
                        {8, 1, 40, 9, 40, 3, 2, 13000}};         // the hidden gradient staged in chunks
  for (const Case& c : cases) {
    std::vector<double> x(c.n * c.d_in), y(c.n * c.d_out);
    std::vector<std::vector<double>> tensors;
    const int64_t sizes[4] = {c.h * c.d_in, c.h, c.d_out * c.h, c.d_out};
    for (int i = 0; i < 16; ++i) tensors.emplace_back(sizes[i % 4] + 1, 0.0);  // params, grads, 8 state
    for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(double(i));
    for (size_t i = 0; i < y.size(); ++i) y[i] = std::cos(double(i));
    for (int i = 0; i < 16; ++i)
      for (size_t k = 0; k < tensors[i].size(); ++k) tensors[i][k] = i < 4 ? 0.1 * std::sin(double(k + i)) : 0.0;
    if (c.es == 4) {  // the same values as float32, in place (each buffer holds twice what it needs)
      auto narrow = [](std::vector<double>& v) {
        auto* f = reinterpret_cast<float*>(v.data());
        for (size_t i = 0; i < v.size(); ++i) f[i] = float(v[i]);
      };
      narrow(x);
      narrow(y);
      for (auto& t : tensors) narrow(t);
    }
    void* ptrs[16];
    for (int i = 0; i < 16; ++i) ptrs[i] = tensors[i].data();
    double losses[3];
    const double hyper[5] = {1e-3, 0.9, 0.9, 0.999, 1e-8};
    int64_t plan[4];
    if (emulated_launch(c.es, c.opt, c.n, c.d_in, c.h, c.d_out, x.data(), y.data(), ptrs, ptrs + 4, ptrs + 8, losses,
                        3, 0, 0, 0, 1, 2, 0.5, hyper, c.max_blocks, c.smem_limit, plan) != 0) {
      std::fprintf(stderr, "no plan for case n=%ld\n", long(c.n));
      return 2;
    }
    for (int s = 0; s < 3; ++s) {
      const double l = c.es == 4 ? double(reinterpret_cast<float*>(losses)[s]) : losses[s];
      if (!std::isfinite(l)) {
        std::fprintf(stderr, "non-finite loss %g (case n=%ld)\n", l, long(c.n));
        return 3;
      }
    }
    std::printf("case es=%d opt=%d n=%ld: pj=%ld pk=%ld nc=%ld smem=%ld ok\n", c.es, c.opt, long(c.n), long(plan[0]),
                long(plan[1]), long(plan[2]), long(plan[3]));
  }
  return 0;
}
#endif
