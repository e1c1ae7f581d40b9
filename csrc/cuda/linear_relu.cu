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
// float32 / float64 run a SIMT path (FMA, never TF32); float16 / bfloat16 run WMMA tensor cores
// (16x16x16, float accumulators) with the epilogue staged through shared memory.
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
#include <type_traits>

#include "../linear_relu.h"
#include "sm90.h"  // the Hopper path (linear_relu_sm90.cu), tried first; opt-in, see sm90.h

namespace twolayer_ops {
namespace {

// ---------------------------------------------------------------------------------------------
// Element traits. Kernels move raw bits (float, double, or the 16 bits of a half / bfloat16) and
// compute in acc (at::opmath_type: float for the 16-bit types).

template <typename T>
struct Elem;

template <>
struct Elem<float> {
  using raw = float;
  using vec = float4;
  using acc = at::opmath_type<float>;
  static constexpr int VEC = 4;  // elements per 16-byte vector
  __device__ __forceinline__ static acc tof(raw r) { return r; }
  __device__ __forceinline__ static raw fromf(acc a) { return a; }
};

template <>
struct Elem<double> {
  using raw = double;
  using vec = double2;
  using acc = at::opmath_type<double>;
  static constexpr int VEC = 2;
  __device__ __forceinline__ static acc tof(raw r) { return r; }
  __device__ __forceinline__ static raw fromf(acc a) { return a; }
};

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

// The ReLU rule of the reference: NaN <= 0 is false, so NaN passes (never fmax/max).
template <typename E>
__device__ __forceinline__ bool le0(typename E::raw r) {
  return E::tof(r) <= typename E::acc(0);
}

// ---------------------------------------------------------------------------------------------
// GEMM operands. Element (i0, i1) of a tile-space operand lives at p[i0 * s0 + i1 * s1]
// (A: i0 = m, i1 = k; B: i0 = k, i1 = n). The optional mask (mp, same logical shape as A, its own
// strides) zeroes A where mask <= 0.

struct Opnd {
  const void* p = nullptr;
  const void* mp = nullptr;
  int64_t s0 = 0, s1 = 0, ms0 = 0, ms1 = 0;
  int fast = 1;  // the axis that each thread's VEC-element chunk runs along (the unit-stride one)
  int vec = 0;   // chunks of p may be loaded as one aligned 16-byte vector
  int mvec = 0;  // the same for mp
};

struct GemmArgs {
  Opnd a, b;
  void* c = nullptr;  // (M, N), contiguous; nullptr: only the row sums (MODE 2) are wanted
  const void* bias = nullptr;
  void* db = nullptr;  // (M,) row sums of A, MODE 2 only; nullptr: not wanted
  int64_t bias_s = 0, M = 0, N = 0, K = 0;
  int c_vec = 0;  // C rows may be written as aligned 16-byte vectors
};

// Loads a D0 x D1 tile of an operand into registers (VEC-element chunks, zero-filled beyond the
// E0 x E1 extents, masked if MASK) and stores it to shared memory sm[i0 * LD + i1] (SMC == 1)
// or sm[i1 * LD + i0] (SMC == 0).
template <typename E, int D0, int D1, int NT, int SMC, int LD, bool MASK>
struct TileLoader {
  using raw = typename E::raw;
  using vec = typename E::vec;
  static constexpr int VEC = E::VEC;
  static constexpr int CH = D0 * D1 / (VEC * NT);
  static_assert(D0 % VEC == 0 && D1 % VEC == 0 && CH * VEC * NT == D0 * D1, "tile does not split into chunks");
  static_assert(LD % VEC == 0, "shared rows must stay 16-byte aligned");
  union Chunk {
    vec v;
    raw r[VEC];
  };
  Chunk c[CH];

  __device__ __forceinline__ static void coords(int ci, int fast, int& i0, int& i1) {
    if (fast) {
      i0 = ci / (D1 / VEC);
      i1 = (ci % (D1 / VEC)) * VEC;
    } else {
      i1 = ci / (D0 / VEC);
      i0 = (ci % (D0 / VEC)) * VEC;
    }
  }
  __device__ __forceinline__ static int sidx(int i0, int i1) { return SMC == 1 ? i0 * LD + i1 : i1 * LD + i0; }

  __device__ __forceinline__ static void fetch(Chunk& ch, const raw* p, int64_t s0, int64_t s1, int64_t g0,
                                               int64_t g1, int64_t E0, int64_t E1, int fast, int vec_ok) {
    const bool full = fast ? (g0 < E0 && g1 + VEC <= E1) : (g1 < E1 && g0 + VEC <= E0);
    if (vec_ok && full) {
      ch.v = *reinterpret_cast<const vec*>(p + g0 * s0 + g1 * s1);
    } else {
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        const int64_t a0 = g0 + (fast ? 0 : v), a1 = g1 + (fast ? v : 0);
        ch.r[v] = (a0 < E0 && a1 < E1) ? p[a0 * s0 + a1 * s1] : raw(0);
      }
    }
  }

  __device__ __forceinline__ void load(const Opnd& op, int64_t o0, int64_t o1, int64_t E0, int64_t E1, int tid) {
#pragma unroll
    for (int k = 0; k < CH; ++k) {
      int i0, i1;
      coords(tid + k * NT, op.fast, i0, i1);
      fetch(c[k], static_cast<const raw*>(op.p), op.s0, op.s1, o0 + i0, o1 + i1, E0, E1, op.fast, op.vec);
      if constexpr (MASK) {
        Chunk m;  // out-of-range mask entries read 0, which masks the (already zero) value
        fetch(m, static_cast<const raw*>(op.mp), op.ms0, op.ms1, o0 + i0, o1 + i1, E0, E1, op.fast, op.mvec);
#pragma unroll
        for (int v = 0; v < VEC; ++v)
          if (le0<E>(m.r[v])) c[k].r[v] = raw(0);
      }
    }
  }

  __device__ __forceinline__ void store(raw* sm, int fast, int tid) const {
#pragma unroll
    for (int k = 0; k < CH; ++k) {
      int i0, i1;
      coords(tid + k * NT, fast, i0, i1);
      if (fast == SMC) {
        *reinterpret_cast<vec*>(sm + sidx(i0, i1)) = c[k].v;
      } else {
#pragma unroll
        for (int v = 0; v < VEC; ++v) sm[sidx(i0 + (fast ? 0 : v), i1 + (fast ? v : 0))] = c[k].r[v];
      }
    }
  }
};

// Bias + ReLU for the forward epilogue (MODE 0); other modes store the product as it is.
template <typename E, int MODE>
__device__ __forceinline__ typename E::acc epilogue_value(typename E::acc v, const GemmArgs& g, int64_t n) {
  using acc_t = typename E::acc;
  if constexpr (MODE == 0) {
    if (g.bias != nullptr) v += E::tof(static_cast<const typename E::raw*>(g.bias)[n * g.bias_s]);
    v = v <= acc_t(0) ? acc_t(0) : v;
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// SIMT policy (float32, float64). 256 threads as 16 x 16, each owning a TM x TN micro-tile split
// into 16-byte groups: rows ty*VS + {0..VS-1} + g * BM/(TM/VS) (same for columns), so that the
// shared-memory reads are conflict-free 16-byte vectors. float: 128x128x8 tiles, 8x8 per thread;
// double: 64x64x8 tiles, 4x4 per thread. Shared tiles As[k][m], Bs[k][n], double-buffered.

template <typename T>
struct SimtPolicy {
  using E = Elem<T>;
  using raw = typename E::raw;
  using acc_t = typename E::acc;
  static constexpr int NT = 256, BK = 8;
  static constexpr int VS = E::VEC;
  static constexpr int TM = sizeof(T) == 4 ? 8 : 4, TN = TM;
  static constexpr int BM = 16 * TM, BN = 16 * TN;
  static constexpr int GM = TM / VS, GN = TN / VS;  // 16-byte groups per thread and dimension
  static constexpr int LDA = BM + VS, LDB = BN + VS;
  static constexpr int A_SMC = 0, B_SMC = 1;
  static constexpr int A_STAGE = BK * LDA, B_STAGE = BK * LDB;
  static constexpr int SMEM = 2 * (A_STAGE + B_STAGE) * int(sizeof(raw));
  union V {
    typename E::vec v;
    raw r[VS];
  };
  struct Acc {
    acc_t v[TM][TN];
  };

  __device__ __forceinline__ static int row(int i, int ty) { return (i / VS) * (BM / GM) + ty * VS + i % VS; }
  __device__ __forceinline__ static int col(int j, int tx) { return (j / VS) * (BN / GN) + tx * VS + j % VS; }

  __device__ __forceinline__ static void zero(Acc& a) {
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) a.v[i][j] = acc_t(0);
  }

  __device__ __forceinline__ static void mma(Acc& a, const raw* As, const raw* Bs, int tid) {
    const int ty = tid / (BN / TN), tx = tid % (BN / TN);
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      acc_t av[TM], bv[TN];
#pragma unroll
      for (int g = 0; g < GM; ++g) {
        V q;
        q.v = *reinterpret_cast<const typename E::vec*>(As + k * LDA + row(g * VS, ty));
#pragma unroll
        for (int e = 0; e < VS; ++e) av[g * VS + e] = q.r[e];
      }
#pragma unroll
      for (int g = 0; g < GN; ++g) {
        V q;
        q.v = *reinterpret_cast<const typename E::vec*>(Bs + k * LDB + col(g * VS, tx));
#pragma unroll
        for (int e = 0; e < VS; ++e) bv[g * VS + e] = q.r[e];
      }
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) a.v[i][j] = fma(av[i], bv[j], a.v[i][j]);
    }
  }

  __device__ __forceinline__ static acc_t a_at(const raw* As, int m, int k) { return E::tof(As[k * LDA + m]); }

  template <int MODE>
  __device__ __forceinline__ static void epilogue(Acc& a, unsigned char*, const GemmArgs& g, int64_t m0, int64_t n0,
                                                  int tid) {
    const int ty = tid / (BN / TN), tx = tid % (BN / TN);
    raw* C = static_cast<raw*>(g.c);
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int64_t m = m0 + row(i, ty);
      if (m >= g.M) continue;
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const int64_t n = n0 + col(j, tx);
        if (n < g.N) C[m * g.N + n] = E::fromf(epilogue_value<E, MODE>(a.v[i][j], g, n));
      }
    }
  }
};

// ---------------------------------------------------------------------------------------------
// WMMA policy (float16, bfloat16). 128x128x32 block tiles, 8 warps as 2 (m) x 4 (n), each warp a
// 64x32 tile of 4x2 16x16 float accumulator fragments. Shared tiles As[m][k] (ld 40) and Bs[k][n]
// (ld 136), both row-major fragments, double-buffered (37 KB). The epilogue stages each fragment
// through a per-warp 16x16 float buffer (reusing the tile memory), then each lane applies
// bias/ReLU/cast to 8 consecutive columns and writes them as one 16-byte vector when it can.

template <typename T>
struct WmmaPolicy {
  using E = Elem<T>;
  using raw = typename E::raw;
  using wt = typename E::wt;
  using acc_t = typename E::acc;
  static constexpr int NT = 256, BM = 128, BN = 128, BK = 32;
  static constexpr int WM = 64, WN = 32, FM = WM / 16, FN = WN / 16;
  static constexpr int LDA = BK + 8, LDB = BN + 8;
  static constexpr int A_SMC = 1, B_SMC = 1;
  static constexpr int A_STAGE = BM * LDA, B_STAGE = BK * LDB;
  static constexpr int TILE_BYTES = 2 * (A_STAGE + B_STAGE) * int(sizeof(raw));
  static constexpr int STAGE_BYTES = (NT / 32) * 16 * 16 * int(sizeof(float));
  static constexpr int SMEM = TILE_BYTES > STAGE_BYTES ? TILE_BYTES : STAGE_BYTES;
  static_assert((BM / WM) * (BN / WN) * 32 == NT, "warp layout");
  struct Acc {
    nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> f[FM][FN];
  };

  __device__ __forceinline__ static void zero(Acc& a) {
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j) nvcuda::wmma::fill_fragment(a.f[i][j], 0.0f);
  }

  __device__ __forceinline__ static void mma(Acc& a, const raw* As, const raw* Bs, int tid) {
    using namespace nvcuda;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    if constexpr (std::is_same_v<wt, __nv_bfloat16>) {
      __trap();  // bfloat16 WMMA fragments need sm_80+
    } else
#endif
    {
      const int warp = tid / 32, wm = warp / (BN / WN), wn = warp % (BN / WN);
      const wt* A = reinterpret_cast<const wt*>(As) + wm * WM * LDA;
      const wt* B = reinterpret_cast<const wt*>(Bs) + wn * WN;
#pragma unroll
      for (int kk = 0; kk < BK; kk += 16) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, wt, wmma::row_major> bf[FN];
#pragma unroll
        for (int j = 0; j < FN; ++j) wmma::load_matrix_sync(bf[j], B + kk * LDB + j * 16, LDB);
#pragma unroll
        for (int i = 0; i < FM; ++i) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, wt, wmma::row_major> af;
          wmma::load_matrix_sync(af, A + i * 16 * LDA + kk, LDA);
#pragma unroll
          for (int j = 0; j < FN; ++j) wmma::mma_sync(a.f[i][j], af, bf[j], a.f[i][j]);
        }
      }
    }
  }

  __device__ __forceinline__ static acc_t a_at(const raw* As, int m, int k) { return E::tof(As[m * LDA + k]); }

  template <int MODE>
  __device__ __forceinline__ static void epilogue(Acc& a, unsigned char* smem, const GemmArgs& g, int64_t m0,
                                                  int64_t n0, int tid) {
    using namespace nvcuda;
    const int warp = tid / 32, lane = tid % 32, wm = warp / (BN / WN), wn = warp % (BN / WN);
    float* stage = reinterpret_cast<float*>(smem) + warp * 256;
    const int r = lane / 2, c0 = (lane % 2) * 8;
    raw* C = static_cast<raw*>(g.c);
    union {
      uint4 v;
      raw r[8];
    } o;
#pragma unroll
    for (int i = 0; i < FM; ++i) {
#pragma unroll
      for (int j = 0; j < FN; ++j) {
        wmma::store_matrix_sync(stage, a.f[i][j], 16, wmma::mem_row_major);
        __syncwarp();
        const int64_t m = m0 + wm * WM + i * 16 + r, n = n0 + wn * WN + j * 16 + c0;
        if (m < g.M) {
#pragma unroll
          for (int v = 0; v < 8; ++v) {
            const int64_t nv = n + v < g.N ? n + v : g.N - 1;  // columns past N are computed, not stored
            o.r[v] = E::fromf(epilogue_value<E, MODE>(stage[r * 16 + c0 + v], g, nv));
          }
          if (g.c_vec && n + 8 <= g.N) {
            *reinterpret_cast<uint4*>(C + m * g.N + n) = o.v;
          } else {
#pragma unroll
            for (int v = 0; v < 8; ++v)
              if (n + v < g.N) C[m * g.N + n + v] = o.r[v];
          }
        }
        __syncwarp();
      }
    }
  }
};

template <typename T>
struct PolicyFor {
  using type = WmmaPolicy<T>;
};
template <>
struct PolicyFor<float> {
  using type = SimtPolicy<float>;
};
template <>
struct PolicyFor<double> {
  using type = SimtPolicy<double>;
};

// ---------------------------------------------------------------------------------------------
// The GEMM kernel. Each block walks output tiles t = blockIdx.x, + gridDim.x, ... (tm fastest),
// so no grid dimension can overflow. Main loop: the next K-tile is fetched into registers while
// the current one is multiplied from shared memory; one barrier per K-tile.

template <typename T, int MODE>
__device__ __forceinline__ void gemm_body(const GemmArgs& g) {
  using P = typename PolicyFor<T>::type;
  using E = Elem<T>;
  using raw = typename E::raw;
  using acc_t = typename E::acc;
  constexpr bool MASK = MODE != 0, ROWSUM = MODE == 2;
  constexpr int BM = P::BM, BN = P::BN, BK = P::BK, NT = P::NT;
  static_assert(BM <= NT, "row sums need one thread per tile row");
  static_assert(NT == 256, "gemm_kernel's launch bounds");

  __shared__ __align__(128) unsigned char smem[P::SMEM];
  raw* const As = reinterpret_cast<raw*>(smem);
  raw* const Bs = As + 2 * P::A_STAGE;

  TileLoader<E, BM, BK, NT, P::A_SMC, P::LDA, MASK> la;
  TileLoader<E, BK, BN, NT, P::B_SMC, P::LDB, false> lb;
  const int tid = threadIdx.x;
  const bool do_mma = g.c != nullptr;
  const int64_t mt = (g.M + BM - 1) / BM, nt = do_mma ? (g.N + BN - 1) / BN : 1;
  const int64_t nk = (g.K + BK - 1) / BK;

  for (int64_t t = blockIdx.x; t < mt * nt; t += gridDim.x) {
    const int64_t m0 = (t % mt) * BM, n0 = (t / mt) * BN;
    [[maybe_unused]] const bool do_sum = ROWSUM && g.db != nullptr && n0 == 0;
    [[maybe_unused]] acc_t rs = acc_t(0);
    typename P::Acc acc;
    if (do_mma) P::zero(acc);

    if (nk > 0) {
      la.load(g.a, m0, 0, g.M, g.K, tid);
      if (do_mma) lb.load(g.b, 0, n0, g.K, g.N, tid);
      la.store(As, g.a.fast, tid);
      if (do_mma) lb.store(Bs, g.b.fast, tid);
    }
    __syncthreads();

    for (int64_t kt = 0; kt < nk; ++kt) {
      const int cur = int(kt & 1);
      const raw* Ac = As + cur * P::A_STAGE;
      const raw* Bc = Bs + cur * P::B_STAGE;
      const bool next = kt + 1 < nk;
      if (next) {
        la.load(g.a, m0, (kt + 1) * BK, g.M, g.K, tid);
        if (do_mma) lb.load(g.b, (kt + 1) * BK, n0, g.K, g.N, tid);
      }
      if constexpr (ROWSUM) {
        if (do_sum && tid < BM) {
#pragma unroll
          for (int k = 0; k < BK; ++k) rs += P::a_at(Ac, tid, k);
        }
      }
      if (do_mma) P::mma(acc, Ac, Bc, tid);
      if (next) {
        la.store(As + (cur ^ 1) * P::A_STAGE, g.a.fast, tid);
        if (do_mma) lb.store(Bs + (cur ^ 1) * P::B_STAGE, g.b.fast, tid);
      }
      __syncthreads();
    }

    if (do_mma) P::template epilogue<MODE>(acc, smem, g, m0, n0, tid);
    if constexpr (ROWSUM) {
      if (do_sum && tid < BM && m0 + tid < g.M) static_cast<raw*>(g.db)[m0 + tid] = E::fromf(rs);
    }
    __syncthreads();  // the epilogue's staging and the next tile's prologue share the memory
  }
}

template <typename T, int MODE>
__global__ void __launch_bounds__(256) gemm_kernel(const GemmArgs g) {
  gemm_body<T, MODE>(g);
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

// ---------------------------------------------------------------------------------------------
// Host side.

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The stride that decides the chunk axis: size-1 axes never qualify.
int64_t axis_cost(int64_t stride, int64_t extent) {
  return extent <= 1 ? INT64_MAX : (stride < 0 ? -stride : stride);
}

bool vec_ok(const void* p, int64_t s_fast, int64_t s_slow, int64_t e_slow, int vec, int64_t esize) {
  return s_fast == 1 && (e_slow <= 1 || s_slow % vec == 0) &&
         reinterpret_cast<uintptr_t>(p) % uintptr_t(vec * esize) == 0;
}

// An operand with tile-space extents e0 x e1 and element strides s0, s1.
template <typename T>
Opnd make_opnd(const void* p, int64_t s0, int64_t s1, int64_t e0, int64_t e1) {
  constexpr int V = Elem<T>::VEC;
  constexpr int64_t es = sizeof(typename Elem<T>::raw);
  Opnd o;
  o.p = p;
  o.s0 = s0;
  o.s1 = s1;
  o.fast = axis_cost(s1, e1) <= axis_cost(s0, e0) ? 1 : 0;
  o.vec = o.fast ? vec_ok(p, s1, s0, e0, V, es) : vec_ok(p, s0, s1, e1, V, es);
  return o;
}

template <typename T>
void add_mask(Opnd& o, const void* mp, int64_t ms0, int64_t ms1, int64_t e0, int64_t e1) {
  constexpr int V = Elem<T>::VEC;
  constexpr int64_t es = sizeof(typename Elem<T>::raw);
  o.mp = mp;
  o.ms0 = ms0;
  o.ms1 = ms1;
  o.mvec = o.fast ? vec_ok(mp, ms1, ms0, e0, V, es) : vec_ok(mp, ms0, ms1, e1, V, es);
}

template <typename T>
void set_c(GemmArgs& g, at::Tensor& c) {
  constexpr int V = Elem<T>::VEC;
  g.c = c.data_ptr();
  g.c_vec = g.N % V == 0 && reinterpret_cast<uintptr_t>(g.c) % uintptr_t(V * sizeof(typename Elem<T>::raw)) == 0;
}

template <typename T, int MODE>
void launch_gemm(const GemmArgs& g) {
  using P = typename PolicyFor<T>::type;
  const int64_t tiles = ceil_div(g.M, P::BM) * (g.c != nullptr ? ceil_div(g.N, P::BN) : 1);
  if (tiles <= 0) return;  // never launch an empty grid
  const unsigned grid = unsigned(std::min<int64_t>(tiles, INT_MAX));
  gemm_kernel<T, MODE><<<grid, P::NT, 0, c10::cuda::getCurrentCUDAStream()>>>(g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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
      GemmArgs g;
      g.M = M;
      g.N = N;
      g.K = K;
      g.a = make_opnd<scalar_t>(x2.const_data_ptr(), x2.stride(0), x2.stride(1), M, K);
      g.b = make_opnd<scalar_t>(weight.const_data_ptr(), weight.stride(1), weight.stride(0), K, N);
      if (has_bias(bias)) {
        g.bias = bias->const_data_ptr();
        g.bias_s = bias->stride(0);
      }
      set_c<scalar_t>(g, out);
      launch_gemm<scalar_t, 0>(g);
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
      if (run_dx) {  // dX (M,K) = gm (M,N) @ W (N,K)
        GemmArgs a;
        a.M = M;
        a.N = K;
        a.K = N;
        a.a = make_opnd<scalar_t>(g.const_data_ptr(), g.stride(0), g.stride(1), M, N);
        add_mask<scalar_t>(a.a, o.const_data_ptr(), o.stride(0), o.stride(1), M, N);
        a.b = make_opnd<scalar_t>(weight.const_data_ptr(), weight.stride(0), weight.stride(1), N, K);
        set_c<scalar_t>(a, grad_x);
        launch_gemm<scalar_t, 1>(a);
      }
      if (run_dw || run_db) {  // dW (N,K) = gm^T (N,M) @ x (M,K); db (N,) = row sums of gm^T
        GemmArgs a;
        a.M = N;
        a.N = K;
        a.K = M;
        a.a = make_opnd<scalar_t>(g.const_data_ptr(), g.stride(1), g.stride(0), N, M);
        add_mask<scalar_t>(a.a, o.const_data_ptr(), o.stride(1), o.stride(0), N, M);
        a.b = make_opnd<scalar_t>(x2.const_data_ptr(), x2.stride(0), x2.stride(1), M, K);
        if (run_dw) set_c<scalar_t>(a, grad_w);  // else c stays nullptr: a db-only pass
        if (run_db) a.db = grad_b.data_ptr();
        launch_gemm<scalar_t, 2>(a);
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
