// The portable core of the CUDA GEMM kernels in linear_relu.cu: the operands, the tile loader, the
// SIMT policy (float32, float64), the WMMA policy (float16, bfloat16), the kernel body (gemm_body)
// and the host's setup of the three products' operands (forward_args, grad_x_args, grad_w_args).
// Plain C++ over what the includer declares first: __device__ / __host__ / __forceinline__ /
// __shared__ / __align__, threadIdx, blockIdx, gridDim, __syncthreads, __syncwarp, float4, double2,
// uint4, fma, prefetch_l2 (a hint: the 128-byte line at an address into L2) and nvcuda::wmma's
// fragments. linear_relu.cu gives CUDA's and the 16-bit element types (Elem and PolicyFor specializations); tests/cuda_emulation.cpp gives host threads and a WMMA of its
// own, so that CI runs this code on a CPU (tests/test_gemm_emulated.py).
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

namespace twolayer_ops {
namespace cuda_gemm {

// ---------------------------------------------------------------------------------------------
// Element traits. Kernels move raw bits (float, double, or the 16 bits of a half / bfloat16) and
// compute in acc (at::opmath_type: float for the 16-bit types).

template <typename T>
struct Elem;  // float and double here; float16 and bfloat16 in linear_relu.cu

template <>
struct Elem<float> {
  using raw = float;
  using vec = float4;
  using acc = float;
  static constexpr int VEC = 4;  // elements per 16-byte vector
  __device__ __forceinline__ static acc tof(raw r) { return r; }
  __device__ __forceinline__ static raw fromf(acc a) { return a; }
};

template <>
struct Elem<double> {
  using raw = double;
  using vec = double2;
  using acc = double;
  static constexpr int VEC = 2;
  __device__ __forceinline__ static acc tof(raw r) { return r; }
  __device__ __forceinline__ static raw fromf(acc a) { return a; }
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
  // Split K (plan_split_k): splits slices of kper K-tiles each; slice s writes its partial product, as
  // acc values, to work + s * work_slice (rows of work_ld, padded to whole tiles), and the reduce pass
  // (splitk_reduce_body) sums the slices in order and applies the epilogue. splits == 1: no split.
  int splits = 1;
  int64_t kper = 0, work_ld = 0, work_slice = 0;
  void* work = nullptr;
  int prefetch = 0;  // each work item first prefetches its operand panels into L2 (plan_prefetch)
};

// Loads D0 x D1 tiles of an operand, one K-tile after another, into registers (VEC-element chunks,
// zero-filled beyond the extents, masked if MASK), and stores them to shared memory sm[i0 * LD + i1]
// (SMC == 1) or sm[i1 * LD + i0] (SMC == 0). KAXIS is the tile axis that runs along K. begin() puts
// each chunk at an output tile's first K-tile and works out where it goes in shared memory; load()
// steps it one K-tile on. The main loop thus adds one stride per chunk rather than recomputing 64-bit
// addresses, bounds and shared-memory offsets: on the GPU every such instruction takes an FMA's issue slot.
template <typename E, int D0, int D1, int NT, int SMC, int LD, bool MASK, int KAXIS>
struct TileLoader {
  using raw = typename E::raw;
  using vec = typename E::vec;
  static constexpr int VEC = E::VEC;
  static constexpr int CH = D0 * D1 / (VEC * NT);
  static constexpr int DK = KAXIS == 0 ? D0 : D1;
  static_assert(D0 % VEC == 0 && D1 % VEC == 0 && CH * VEC * NT == D0 * D1, "tile does not split into chunks");
  static_assert(LD % VEC == 0, "shared rows must stay 16-byte aligned");
  union Chunk {
    vec v;
    raw r[VEC];
  };
  Chunk c[CH];
  int64_t off[CH];                    // each chunk's first element at the next K-tile: p[off]
  [[maybe_unused]] int64_t moff[CH];  // the same in the mask, mp[moff] (MASK only)
  int room[CH];                       // how many of the chunk's elements are in range off the K axis
  int soff[CH];                       // the chunk's first element in the shared tile: sm[soff]
  bool whole;                         // every chunk is in range off the K axis and vector-loadable

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

  // Element v of a chunk is p[off + v * sf]; it is in range if v < room and its K coordinate is
  // below K: kroom (K minus the chunk's first K coordinate) > v along K (kfast), or > 0 off it.
  __device__ __forceinline__ static void fetch(Chunk& ch, const raw* p, int64_t off, int64_t sf, int room,
                                               int64_t kroom, bool kfast) {
#pragma unroll
    for (int v = 0; v < VEC; ++v) ch.r[v] = v < room && (kfast ? v : 0) < kroom ? p[off + v * sf] : raw(0);
  }

  __device__ __forceinline__ static void apply_mask(Chunk& ch, const Chunk& m) {
#pragma unroll
    for (int v = 0; v < VEC; ++v)
      if (le0<E>(m.r[v])) ch.r[v] = raw(0);  // out-of-range mask entries read 0: the value is 0 already
  }

  // Places the chunks at K coordinate k0 of the output tile whose non-K coordinates start at o (of extent).
  __device__ __forceinline__ void begin(const Opnd& op, int64_t o, int64_t extent, int64_t k0, int tid) {
    whole = op.vec && (!MASK || op.mvec);
#pragma unroll
    for (int k = 0; k < CH; ++k) {
      int i0, i1;
      coords(tid + k * NT, op.fast, i0, i1);
      const int64_t g0 = KAXIS == 0 ? k0 + i0 : o + i0, g1 = KAXIS == 0 ? o + i1 : k0 + i1;
      const int64_t left = extent - (KAXIS == 0 ? g1 : g0);
      room[k] = op.fast == KAXIS ? (left > 0 ? VEC : 0) : int(left <= 0 ? 0 : left < VEC ? left : VEC);
      whole = whole && room[k] == VEC;
      off[k] = g0 * op.s0 + g1 * op.s1;
      if constexpr (MASK) moff[k] = g0 * op.ms0 + g1 * op.ms1;
      soff[k] = sidx(i0, i1);
    }
  }

  // Loads the K-tile that starts at k0 (the one the chunks are at) and steps them to the next. In
  // a K-tile that ends by K (kfull: k0 + DK <= K, worked out once for both operands), a whole chunk is
  // in range along K too (VEC divides DK and the chunk's K offset), so the common case is one test,
  // then one vector load per chunk.
  __device__ __forceinline__ void load(const Opnd& op, int64_t k0, int64_t K, bool kfull, int tid) {
    if (whole && kfull) {
#pragma unroll
      for (int k = 0; k < CH; ++k) {
        c[k].v = *reinterpret_cast<const vec*>(static_cast<const raw*>(op.p) + off[k]);
        if constexpr (MASK) {
          Chunk m;
          m.v = *reinterpret_cast<const vec*>(static_cast<const raw*>(op.mp) + moff[k]);
          apply_mask(c[k], m);
        }
      }
    } else {
      const bool kfast = op.fast == KAXIS;
#pragma unroll
      for (int k = 0; k < CH; ++k) {
        int i0, i1;
        coords(tid + k * NT, op.fast, i0, i1);
        const int64_t kroom = K - k0 - (KAXIS == 0 ? i0 : i1);
        fetch(c[k], static_cast<const raw*>(op.p), off[k], op.fast ? op.s1 : op.s0, room[k], kroom, kfast);
        if constexpr (MASK) {
          Chunk m;
          fetch(m, static_cast<const raw*>(op.mp), moff[k], op.fast ? op.ms1 : op.ms0, room[k], kroom, kfast);
          apply_mask(c[k], m);
        }
      }
    }
#pragma unroll
    for (int k = 0; k < CH; ++k) {
      off[k] += DK * (KAXIS == 0 ? op.s0 : op.s1);
      if constexpr (MASK) moff[k] += DK * (KAXIS == 0 ? op.ms0 : op.ms1);
    }
  }

  // A chunk along the shared rows is one vector store; across them (the transpose), its element v
  // goes LD further on whichever axis the chunk runs along.
  __device__ __forceinline__ void store(raw* sm, int fast) const {
#pragma unroll
    for (int k = 0; k < CH; ++k) {
      if (fast == SMC) {
        *reinterpret_cast<vec*>(sm + soff[k]) = c[k].v;
      } else {
#pragma unroll
        for (int v = 0; v < VEC; ++v) sm[soff[k] + v * LD] = c[k].r[v];
      }
    }
  }
};

// The forward epilogue's bias of column n (MODE 0; zero without a bias, past N, or in other modes).
// Epilogues load a thread's bias before their first store: the compiler may not move a load above a
// store that might alias it, so a load next to each store waits out its latency.
template <typename E, int MODE>
__device__ __forceinline__ typename E::acc bias_at(const GemmArgs& g, int64_t n) {
  if constexpr (MODE == 0) {
    if (g.bias != nullptr && n < g.N) return E::tof(static_cast<const typename E::raw*>(g.bias)[n * g.bias_s]);
  }
  return typename E::acc(0);
}

// + bias, ReLU for the forward epilogue (MODE 0); other modes store the product as it is.
template <typename E, int MODE>
__device__ __forceinline__ typename E::acc epilogue_value(typename E::acc v, typename E::acc bias) {
  using acc_t = typename E::acc;
  if constexpr (MODE == 0) {
    v += bias;
    v = v <= acc_t(0) ? acc_t(0) : v;
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// SIMT policy (float32, float64). 16 x TX threads (ty, tx; 256 or 128), each owning a TM x TN micro-tile
// split into 16-byte groups: rows ty*VS + {0..VS-1} + g * BM/(TM/VS) (same for columns), so that the
// shared-memory reads are conflict-free 16-byte vectors. Each warp is 4 x 8 of those threads
// (CUTLASS's SIMT lane layout): a k step's A reads then touch 4 and its B reads 8 distinct vectors,
// one shared-memory wavefront each, where a 2 x 16 warp needs one for A and two for B.
// float: 128x128x8 tiles, 8x8 per thread; double: 64x64x8 tiles, 4x4 per thread; float's other tile
// kinds (SimtTiles): 64x64x16, 4x4 per thread, and 128x128x8 over 128 threads (16 x 8) of 8x16.
// Shared tiles As[k][m], Bs[k][n], double-buffered.

template <typename T, int TM_ = sizeof(T) == 4 ? 8 : 4, int BK_ = 8, int TN_ = TM_, int TX_ = 16>
struct SimtPolicy {
  using E = Elem<T>;
  using raw = typename E::raw;
  using acc_t = typename E::acc;
  static constexpr int TX = TX_, NT = 16 * TX, BK = BK_;  // threads: 16 (m) x TX (n)
  static constexpr int VS = E::VEC;
  static constexpr int TM = TM_, TN = TN_;
  static constexpr int BM = 16 * TM, BN = TX * TN;
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

  static constexpr int WN = TX / 8;  // warps along n
  static_assert(TX % 8 == 0, "warps of 4 (m) x 8 (n) threads, 16 / 4 x TX / 8 of them");
  __device__ __forceinline__ static int thread_y(int tid) { return (tid / (32 * WN)) * 4 + (tid % 32) / 8; }
  __device__ __forceinline__ static int thread_x(int tid) { return (tid / 32) % WN * 8 + tid % 8; }
  __device__ __forceinline__ static int row(int i, int ty) { return (i / VS) * (BM / GM) + ty * VS + i % VS; }
  __device__ __forceinline__ static int col(int j, int tx) { return (j / VS) * (BN / GN) + tx * VS + j % VS; }

  __device__ __forceinline__ static void zero(Acc& a) {
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) a.v[i][j] = acc_t(0);
  }

  __device__ __forceinline__ static void mma(Acc& a, const raw* As, const raw* Bs, int tid) {
    const int ty = thread_y(tid), tx = thread_x(tid);
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
    const int ty = thread_y(tid), tx = thread_x(tid);
    raw* C = static_cast<raw*>(g.c);
    acc_t bias[TN];
#pragma unroll
    for (int j = 0; j < TN; ++j) bias[j] = bias_at<E, MODE>(g, n0 + col(j, tx));
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int64_t m = m0 + row(i, ty);
      if (m >= g.M) continue;
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const int64_t n = n0 + col(j, tx);
        if (n < g.N) C[m * g.N + n] = E::fromf(epilogue_value<E, MODE>(a.v[i][j], bias[j]));
      }
    }
  }

  // A split-K slice's partial product, whole tile (the workspace is padded to whole tiles).
  __device__ __forceinline__ static void store_partial(const Acc& a, acc_t* w, int64_t ld, int64_t m0, int64_t n0,
                                                       int tid) {
    const int ty = thread_y(tid), tx = thread_x(tid);
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) w[(m0 + row(i, ty)) * ld + n0 + col(j, tx)] = a.v[i][j];
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
    acc_t bias[FN][8];  // this lane's 8 columns of each fragment column
#pragma unroll
    for (int j = 0; j < FN; ++j)
#pragma unroll
      for (int v = 0; v < 8; ++v) bias[j][v] = bias_at<E, MODE>(g, n0 + wn * WN + j * 16 + c0 + v);
#pragma unroll
    for (int i = 0; i < FM; ++i) {
#pragma unroll
      for (int j = 0; j < FN; ++j) {
        wmma::store_matrix_sync(stage, a.f[i][j], 16, wmma::mem_row_major);
        __syncwarp();
        const int64_t m = m0 + wm * WM + i * 16 + r, n = n0 + wn * WN + j * 16 + c0;
        if (m < g.M) {
#pragma unroll
          for (int v = 0; v < 8; ++v) o.r[v] = E::fromf(epilogue_value<E, MODE>(stage[r * 16 + c0 + v], bias[j][v]));
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

  // A split-K slice's partial product, whole tile (the workspace is padded to whole tiles).
  __device__ __forceinline__ static void store_partial(const Acc& a, float* w, int64_t ld, int64_t m0, int64_t n0, int tid) {
    const int warp = tid / 32, wm = warp / (BN / WN), wn = warp % (BN / WN);
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j)
        nvcuda::wmma::store_matrix_sync(w + (m0 + wm * WM + i * 16) * ld + n0 + wn * WN + j * 16, a.f[i][j],
                                        unsigned(ld), nvcuda::wmma::mem_row_major);
  }
};

// The policy of each element type: SIMT for float and double here; linear_relu.cu picks WMMA for
// float16 and bfloat16.
template <typename T>
struct PolicyFor;
template <>
struct PolicyFor<float> {
  using type = SimtPolicy<float>;
};
template <>
struct PolicyFor<double> {
  using type = SimtPolicy<double>;
};

// float32's tile kinds, chosen per product by the launches (float32 only; each off until a GPU run times it):
//   kSmallTiles (use_small_tiles): a 64x64 tile over 16-deep K-tiles does a quarter of the 128x128
//     tile's multiply-adds a K-tile and half as many K-tiles. The large tile spends most of its time
//     on rows and columns past a seed-sized output (64x10, 64x100).
//   kWideThreadTiles: the 128x128 tile over 128 threads of 8 x 16 outputs each, where the default has
//     256 threads of 8 x 8. Each k step then does 128 FMAs per 6 shared-memory loads (64 per 4), and a
//     K-tile's loads, barrier and loop costs spread over twice the FMAs: 88% of a k-loop trip's
//     instructions are FMAs (the forward's sm_90a SASS), against 84%. The price: 245 to 255 registers,
//     so two blocks of 4 warps per SM where the default has two of 8, half the warps to hide latency.
enum SimtTiles : int { kDefaultTiles = 0, kSmallTiles = 1, kWideThreadTiles = 2 };
template <typename T, int TILES>
using Policy = std::conditional_t<TILES == kSmallTiles, SimtPolicy<T, 4, 16>,
                                  std::conditional_t<TILES == kWideThreadTiles, SimtPolicy<T, 8, 8, 16, 8>,
                                                     typename PolicyFor<T>::type>>;

// Prefetches into L2 the lines of the region [r0, r1) x [c0, c1) of an operand whose element (i0, i1)
// is p[i0 * s0 + i1 * s1], by runs along its unit-stride axis (an operand with none goes without): a
// thread a run, each line that holds an element of it, so no address outside the operand is touched.
// (No division, no state kept: the SIMT kernels' k-loops have no register to spare.)
template <typename raw>
__device__ __forceinline__ void prefetch_region(const void* p, int64_t s0, int64_t s1, int64_t r0, int64_t r1,
                                                int64_t c0, int64_t c1, int tid, int nt) {
  if (s1 != 1) {  // runs along axis 0: one a column of the region
    if (s0 != 1) return;
    const int64_t t0 = r0, t1 = r1;
    r0 = c0, r1 = c1, c0 = t0, c1 = t1, s0 = s1;
  }
  if (c0 >= c1) return;
  for (int64_t r = r0 + tid; r < r1; r += nt) {
    const raw* const run = static_cast<const raw*>(p) + r * s0;
    const uintptr_t last = reinterpret_cast<uintptr_t>(run + c1 - 1);
    for (uintptr_t line = reinterpret_cast<uintptr_t>(run + c0) & ~uintptr_t(127); line <= last; line += 128)
      prefetch_l2(reinterpret_cast<const void*>(line));
  }
}

// ---------------------------------------------------------------------------------------------
// The GEMM kernel's body, block `block` of `blocks` (the kernel passes blockIdx.x and gridDim.x; a
// kernel that runs two products passes each its part of the grid). Each block walks work items
// t = block, + blocks, ... (an output tile, tm fastest, then the K slice), so no grid dimension can
// overflow. Main loop: the next K-tile is fetched into registers while the current one is multiplied
// from shared memory; one barrier per K-tile. smem: the kernel's shared array of P::SMEM bytes,
// 128-byte aligned (declared by the kernel, so that one kernel running two bodies has one).

template <typename T, int MODE, int TILES = kDefaultTiles>
__device__ __forceinline__ void gemm_body(const GemmArgs& g, unsigned char* smem, int64_t block, int64_t blocks) {
  static_assert(TILES == kDefaultTiles || std::is_same_v<T, float>, "other tile kinds are float32's");
  using P = Policy<T, TILES>;
  using E = Elem<T>;
  using raw = typename E::raw;
  using acc_t = typename E::acc;
  constexpr bool MASK = MODE != 0, ROWSUM = MODE == 2;
  constexpr int BM = P::BM, BN = P::BN, BK = P::BK, NT = P::NT;
  static_assert(BM <= NT, "row sums need one thread per tile row");

  raw* const As = reinterpret_cast<raw*>(smem);
  raw* const Bs = As + 2 * P::A_STAGE;

  TileLoader<E, BM, BK, NT, P::A_SMC, P::LDA, MASK, 1> la;
  TileLoader<E, BK, BN, NT, P::B_SMC, P::LDB, false, 0> lb;
  static_assert(decltype(la)::DK == BK && decltype(lb)::DK == BK, "one kfull test serves both operands");
  const int tid = threadIdx.x;
  const bool do_mma = !ROWSUM || g.c != nullptr;  // only dW can be a db-only pass
  const int64_t mt = (g.M + BM - 1) / BM, nt = do_mma ? (g.N + BN - 1) / BN : 1;
  const int splits = ROWSUM ? 1 : g.splits;  // dW never splits (plan_split_k): no split code there
  const int64_t nk = (g.K + BK - 1) / BK, kper = splits > 1 ? g.kper : nk;

  for (int64_t t = block; t < mt * nt * splits; t += blocks) {
    const int64_t tile = t % (mt * nt), m0 = (tile % mt) * BM, n0 = (tile / mt) * BN;
    const int64_t kt0 = (t / (mt * nt)) * kper, kt1 = kt0 + kper < nk ? kt0 + kper : nk;
    [[maybe_unused]] const bool do_sum = ROWSUM && g.db != nullptr && n0 == 0;
    [[maybe_unused]] acc_t rs = acc_t(0);
    typename P::Acc acc;
    if (do_mma) P::zero(acc);

    if constexpr (!ROWSUM) {  // (float32 dW is at its register limit: with this code its k-loop spilled)
      if (g.prefetch && kt0 < kt1) {  // the whole K range of A (and its mask) and B, before its first K-tile
        const int64_t k0 = kt0 * BK, k1 = kt1 * BK < g.K ? kt1 * BK : g.K, m1 = m0 + BM < g.M ? m0 + BM : g.M;
        prefetch_region<raw>(g.a.p, g.a.s0, g.a.s1, m0, m1, k0, k1, tid, NT);
        if constexpr (MASK) prefetch_region<raw>(g.a.mp, g.a.ms0, g.a.ms1, m0, m1, k0, k1, tid, NT);
        prefetch_region<raw>(g.b.p, g.b.s0, g.b.s1, k0, k1, n0, n0 + BN < g.N ? n0 + BN : g.N, tid, NT);
      }
    }
    if (kt0 < kt1) {
      const bool kfull = (kt0 + 1) * BK <= g.K;
      la.begin(g.a, m0, g.M, kt0 * BK, tid);
      la.load(g.a, kt0 * BK, g.K, kfull, tid);
      if (do_mma) {
        lb.begin(g.b, n0, g.N, kt0 * BK, tid);
        lb.load(g.b, kt0 * BK, g.K, kfull, tid);
      }
      la.store(As, g.a.fast);
      if (do_mma) lb.store(Bs, g.b.fast);
    }
    __syncthreads();

    for (int64_t kt = kt0; kt < kt1; ++kt) {
      const int cur = int(kt & 1);  // the stage: kt0 is even (plan_split_k)
      const raw* Ac = As + cur * P::A_STAGE;
      const raw* Bc = Bs + cur * P::B_STAGE;
      const bool next = kt + 1 < kt1;
      if (next) {
        const bool kfull = (kt + 2) * BK <= g.K;
        la.load(g.a, (kt + 1) * BK, g.K, kfull, tid);
        if (do_mma) lb.load(g.b, (kt + 1) * BK, g.K, kfull, tid);
      }
      if constexpr (ROWSUM) {
        if (do_sum && tid < BM) {
#pragma unroll
          for (int k = 0; k < BK; ++k) rs += P::a_at(Ac, tid, k);
        }
      }
      if (do_mma) P::mma(acc, Ac, Bc, tid);
      if (next) {
        la.store(As + (cur ^ 1) * P::A_STAGE, g.a.fast);
        if (do_mma) lb.store(Bs + (cur ^ 1) * P::B_STAGE, g.b.fast);
      }
      __syncthreads();
    }

    if (splits > 1) {
      P::store_partial(acc, static_cast<acc_t*>(g.work) + (t / (mt * nt)) * g.work_slice, g.work_ld, m0, n0, tid);
    } else if (do_mma) {
      P::template epilogue<MODE>(acc, smem, g, m0, n0, tid);
    }
    if constexpr (ROWSUM) {
      if (do_sum && tid < BM && m0 + tid < g.M) static_cast<raw*>(g.db)[m0 + tid] = E::fromf(rs);
    }
    __syncthreads();  // the epilogue's staging and the next tile's prologue share the memory
  }
}

// dX and dW (with db) of one backward in one grid: blocks [0, dx_blocks) run dX's work items (its
// output tiles, or its K slices where it splits K; their reduce pass follows), the others dW's. The
// two products run side by side rather than one after the other, in one launch: the seed's backward
// is 8 tiles of each on a GPU of 132 SMs. The branch is uniform per block, so each body's barriers
// stay whole.
template <typename T, int TILES = kDefaultTiles>
__device__ __forceinline__ void grads_body(const GemmArgs& dx, const GemmArgs& dw, unsigned char* smem, int64_t block,
                                           int64_t dx_blocks, int64_t blocks) {
  if (block < dx_blocks) {
    gemm_body<T, 1, TILES>(dx, smem, block, dx_blocks);
  } else {
    gemm_body<T, 2, TILES>(dw, smem, block - dx_blocks, blocks - dx_blocks);
  }
}

// The split-K reduce pass, element i of C: the slices' partial sums in slice order (deterministic),
// then the epilogue.
template <typename T, int MODE>
__device__ __forceinline__ void splitk_reduce_body(const GemmArgs& g, int64_t i) {
  using E = Elem<T>;
  using acc_t = typename E::acc;
  const int64_t m = i / g.N, n = i % g.N;
  const acc_t* w = static_cast<const acc_t*>(g.work) + m * g.work_ld + n;
  acc_t v = w[0];
  for (int s = 1; s < g.splits; ++s) v += w[s * g.work_slice];
  static_cast<typename E::raw*>(g.c)[i] = E::fromf(epilogue_value<E, MODE>(v, bias_at<E, MODE>(g, n)));
}

// ---------------------------------------------------------------------------------------------
// Host side: the operands of the three products, from pointers and element strides.

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The stride that decides the chunk axis: size-1 axes never qualify.
inline int64_t axis_cost(int64_t stride, int64_t extent) {
  return extent <= 1 ? INT64_MAX : (stride < 0 ? -stride : stride);
}

inline bool vec_ok(const void* p, int64_t s_fast, int64_t s_slow, int64_t e_slow, int vec, int64_t esize) {
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

// c: a contiguous (M, N) output, or nullptr (MODE 2 with only the row sums wanted).
template <typename T>
void set_c(GemmArgs& g, void* c) {
  constexpr int V = Elem<T>::VEC;
  g.c = c;
  g.c_vec = c != nullptr && g.N % V == 0 &&
            reinterpret_cast<uintptr_t>(c) % uintptr_t(V * sizeof(typename Elem<T>::raw)) == 0;
}

// A 2-D operand: its data and element strides (rows, columns).
struct Mat {
  const void* p;
  int64_t s0, s1;
};

// out (M, N) = relu(x (M, K) @ w (N, K)^T + bias): MODE 0. bias may be nullptr.
template <typename T>
GemmArgs forward_args(Mat x, Mat w, const void* bias, int64_t bias_s, void* out, int64_t M, int64_t K, int64_t N) {
  GemmArgs g;
  g.M = M;
  g.N = N;
  g.K = K;
  g.a = make_opnd<T>(x.p, x.s0, x.s1, M, K);
  g.b = make_opnd<T>(w.p, w.s1, w.s0, K, N);
  g.bias = bias;
  g.bias_s = bias_s;
  set_c<T>(g, out);
  return g;
}

// dx (M, K) = mask(g) (M, N) @ w (N, K), mask(g) = (o <= 0 ? 0 : g): MODE 1.
template <typename T>
GemmArgs grad_x_args(Mat g, Mat o, Mat w, void* dx, int64_t M, int64_t N, int64_t K) {
  GemmArgs a;
  a.M = M;
  a.N = K;
  a.K = N;
  a.a = make_opnd<T>(g.p, g.s0, g.s1, M, N);
  add_mask<T>(a.a, o.p, o.s0, o.s1, M, N);
  a.b = make_opnd<T>(w.p, w.s0, w.s1, N, K);
  set_c<T>(a, dx);
  return a;
}

// dw (N, K) = mask(g)^T (N, M) @ x (M, K) and db (N,) = the row sums of mask(g)^T: MODE 2. dw or db
// may be nullptr (not wanted).
template <typename T>
GemmArgs grad_w_args(Mat g, Mat o, Mat x, void* dw, void* db, int64_t M, int64_t N, int64_t K) {
  GemmArgs a;
  a.M = N;
  a.N = K;
  a.K = M;
  a.a = make_opnd<T>(g.p, g.s1, g.s0, N, M);
  add_mask<T>(a.a, o.p, o.s1, o.s0, N, M);
  a.b = make_opnd<T>(x.p, x.s0, x.s1, M, K);
  set_c<T>(a, dw);
  a.db = db;
  return a;
}

// Work items of a product (output tiles times K slices): the blocks of its grid, before the grid's
// cap at INT_MAX.
template <typename T, int TILES = kDefaultTiles>
int64_t gemm_tiles(const GemmArgs& g) {
  using P = Policy<T, TILES>;
  return ceil_div(g.M, P::BM) * (g.c != nullptr ? ceil_div(g.N, P::BN) : 1) * g.splits;
}

// Splits K where the output tiles alone would leave SMs idle and K is long: the seed's forward,
// 64x1000 -> 100, is one 128x128 tile whose block walked all 125 K-tiles while 131 SMs waited. Aims
// at two blocks per SM, each slice at least min_ktiles deep (kMinKTiles by default: the reduce pass
// costs a launch, a few microseconds, and a read of every slice; on the 11-28 H200 run a lone block
// took 1.22 us a K-tile, so fewer may pay). Not for the dW product, whose db row sums run inside its
// tiles. Sets g's split fields except work; returns the workspace's size in acc elements (0: no split).
constexpr int64_t kMinKTiles = 8;

template <typename T, int MODE, int TILES = kDefaultTiles>
int64_t plan_split_k(GemmArgs& g, int64_t sms, int64_t min_ktiles = kMinKTiles) {
  using P = Policy<T, TILES>;
  g.splits = 1;
  if (MODE == 2 || g.c == nullptr || g.M <= 0 || g.N <= 0) return 0;
  const int64_t tiles = gemm_tiles<T, TILES>(g), nk = ceil_div(g.K, P::BK);
  const int64_t want = std::min(2 * sms / std::max<int64_t>(tiles, 1), nk / std::max<int64_t>(min_ktiles, 2));
  if (tiles >= sms || want < 2) return 0;
  g.kper = ceil_div(ceil_div(nk, want), 2) * 2;  // even: each slice starts on shared-memory stage 0
  g.splits = int(ceil_div(nk, g.kper));            // no empty slice
  if (g.splits < 2) {
    g.splits = 1;
    return 0;
  }
  g.work_ld = ceil_div(g.N, P::BN) * P::BN;
  g.work_slice = ceil_div(g.M, P::BM) * P::BM * g.work_ld;
  return g.splits * g.work_slice;
}

// Whether g's work items first prefetch their operand panels into L2: where the grid is one wave or
// less and the panels of all its items fit in a quarter of L2 (the seed's sizes, never the large
// GEMMs). A lone block per SM fetches each K-tile one K-tile ahead of its math, so from DRAM it waits
// out a memory latency every K-tile: on the 11-28 H200 run a block took 1.22 us a K-tile at the seed's
// 64x1000->100, where its 128x128x8 multiply-adds take about 0.6 us. From L2 a load returns within that.
// Not dW (MODE 2): gemm_body leaves it out there.
template <typename T, int MODE, int TILES = kDefaultTiles>
void plan_prefetch(GemmArgs& g, int64_t sms, int64_t l2_bytes) {
  using P = Policy<T, TILES>;
  g.prefetch = 0;
  if (MODE == 2) return;
  const int64_t items = gemm_tiles<T, TILES>(g);
  const int64_t depth = std::min(g.K, (g.splits > 1 ? g.kper : ceil_div(g.K, P::BK)) * P::BK);
  const int64_t rows = std::min<int64_t>(g.M, P::BM) * (MODE == 0 ? 1 : 2) + std::min<int64_t>(g.N, P::BN);  // A (+ mask), B
  const int64_t panel = rows * depth * int64_t(sizeof(typename Elem<T>::raw));
  g.prefetch = items > 0 && items <= sms && panel * items <= l2_bytes / 4;
}

// Whether float32 products of these output tiles take the small tiles (where TWOLAYER_OPS_SIMT_SMALL_TILES
// is set; off until a GPU run times them): a large-tile grid that would fill under a quarter of the SMs.
template <typename T>
bool use_small_tiles(const GemmArgs& g, int64_t sms) {
  return std::is_same_v<T, float> && gemm_tiles<T>(g) * 4 <= sms;
}

}  // namespace cuda_gemm
}  // namespace twolayer_ops
