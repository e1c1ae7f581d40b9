// The fused training step's portable core: the work split (make_plan), the block's shared-memory
// layout, the global scratch and the kernel body (fused_block), as plain C++. It runs on whatever the
// includer declares first in namespace twolayer_ops::fused_cuda: grid_barrier, shfl_down, shfl_xor,
// add_rn / sub_rn / mul_rn / div_rn / sqrt_rn, Quad and load4, with threadIdx, blockIdx, gridDim,
// __syncthreads and the __host__ / __device__ / __forceinline__ qualifiers. train_step.cu gives
// the CUDA ones; tests/cuda_emulation.cpp gives host threads and barriers, so that CI runs
// this very code on a CPU against the CPU step (tests/test_fused_step_emulated.py).
#pragma once

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

namespace twolayer_ops {
namespace fused_cuda {

constexpr int kThreads = 256;  // threads per block: 8 warps

enum Optimizer : int { kSgd = 0, kMomentum = 1, kAdam = 2 };

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
__host__ __device__ inline int64_t align16(int64_t v) { return (v + 15) & ~int64_t(15); }

// Byte offsets into the dynamic shared memory of one block.
struct Layout {
  int64_t x = 0, w = 0, g = 0, s0 = 0, s1 = 0, scratch = 0;
  int64_t b_gy = 0, b_loss = 0;  // phase B's gy row and per-output losses, relative to scratch
  int64_t total = 0;
};

// How the work is split, chosen on the host from the sizes alone (never from `steps`).
struct Plan {
  bool ok = false;
  int pj = 1, pk = 1;      // blocks along H and along D_in; grid = pj * pk
  int uj = 0, kl = 0;      // hidden units and input features per block
  int ujp = 0;             // uj rounded up to a multiple of 4 (tile row length)
  int xstride = 1;         // row stride of the x tile: odd, so that lanes on different rows miss bank conflicts
  int ks_a = 1, ks_c = 1;  // lanes that share one phase-A / phase-C item (split its k / n loop)
  int64_t nc = 1;          // rows of gh staged in shared memory at a time in phase C (N, or a multiple of 32)
  Layout lay;
  double cost = 0;
  int64_t grid() const { return int64_t(pj) * pk; }
};

inline Layout make_layout(int64_t n, int64_t h, int64_t d_out, int64_t kl, int64_t ujp, int64_t xstride, int64_t es,
                          int ns, int64_t nc) {
  Layout l;
  const int64_t tile = align16(kl * ujp * es);
  l.x = 0;
  l.w = align16(n * xstride * es);
  l.g = l.w + tile;
  l.s0 = l.g + tile;
  l.s1 = l.s0 + (ns >= 1 ? tile : 0);
  l.scratch = l.s1 + (ns >= 2 ? tile : 0);
  l.b_gy = align16(h * es);
  l.b_loss = align16(l.b_gy + d_out * es);
  const int64_t scratch_b = l.b_loss + d_out * 8;
  const int64_t scratch_c = nc * ujp * es;
  l.total = l.scratch + align16(std::max(scratch_b, scratch_c));
  return l;
}

// Lanes per item: a power of two up to 32, while the block still has idle threads and each lane keeps
// at least `min_per_lane` iterations of the item's loop.
inline int lanes_per_item(int64_t items, int64_t loop_len, int64_t min_per_lane) {
  int ks = 1;
  while (ks < 32 && items * ks * 2 <= kThreads && int64_t(ks) * 2 * min_per_lane <= loop_len) ks *= 2;
  return ks;
}

// The cheapest split that fits `smem_limit` bytes per block on at most `max_blocks` blocks. The cost is
// a rough model in SM cycles of one step on the slowest block; it only ranks splits. min_smem gets the
// smallest footprint seen (for the error message).
inline Plan make_plan(int64_t n, int64_t d_in, int64_t h, int64_t d_out, int64_t es, int ns, int64_t max_blocks,
                      int64_t smem_limit, int64_t* min_smem) {
  Plan best;
  *min_smem = INT64_MAX;
  const int64_t pk_max = d_in == 0 ? 1 : std::min(d_in, max_blocks);
  for (int64_t pk_try = 1; pk_try <= pk_max; ++pk_try) {
    const int64_t kl = d_in == 0 ? 0 : ceil_div(d_in, pk_try);
    const int64_t pk = d_in == 0 ? 1 : ceil_div(d_in, kl);
    if (pk != pk_try) continue;  // the same split as a smaller pk
    const int64_t pj_max = h == 0 ? 1 : std::min(h, max_blocks / pk);
    for (int64_t pj_try = 1; pj_try <= pj_max; ++pj_try) {
      const int64_t uj = h == 0 ? 0 : ceil_div(h, pj_try);
      const int64_t pj = h == 0 ? 1 : ceil_div(h, uj);
      if (pj != pj_try) continue;
      const int64_t grid = pj * pk;
      const int64_t ujp = (uj + 3) / 4 * 4;
      const int64_t xstride = kl | 1;
      // gh rows staged per chunk in phase C: all N if they fit, else the most (a multiple of 32) that do.
      int64_t nc = std::max<int64_t>(n, 1);
      Layout lay = make_layout(n, h, d_out, kl, ujp, xstride, es, ns, nc);
      if (lay.total > smem_limit && ujp > 0 && n > 32) {
        const int64_t room = smem_limit - lay.scratch;
        const int64_t fit = room > 0 ? room / (ujp * es) / 32 * 32 : 0;
        nc = std::max<int64_t>(32, std::min(fit, n));
        lay = make_layout(n, h, d_out, kl, ujp, xstride, es, ns, nc);
      }
      *min_smem = std::min(*min_smem, lay.total);
      if (lay.total > smem_limit) continue;
      const double chunk_cost = nc < n ? double(ceil_div(kl * (ujp / 4), kThreads)) * ceil_div(n, nc) * 800.0 : 0.0;
      const double fma = double(n) * double(kl) * double(ujp);  // phase A, and again phase C
      const double rows = double(ceil_div(n, grid));
      const double small = double(h + d_out * h + d_out);
      const double cost = 2.0 * fma / 48.0 + double(kl * ujp) * (2 + ns) * 6.0 / kThreads +
                          rows * (1500.0 + (double(pk) * h + 2.0 * d_out * h) * 8.0 / kThreads) +
                          std::ceil(std::ceil(small / grid) / (kThreads / 32)) * (800.0 + std::ceil(n / 32.0) * 40.0) +
                          2.0 * (800.0 + 3.0 * grid) + chunk_cost;
      if (best.ok && !(cost < best.cost || (cost == best.cost && grid < best.grid()))) continue;
      best.ok = true;
      best.pj = int(pj);
      best.pk = int(pk);
      best.uj = int(uj);
      best.kl = int(kl);
      best.ujp = int(ujp);
      best.xstride = int(xstride);
      best.ks_a = lanes_per_item(n * (ujp / 4), kl, 8);
      best.ks_c = lanes_per_item(kl * (ujp / 4), n, 8);
      best.nc = nc;
      best.lay = lay;
      best.cost = cost;
    }
  }
  return best;
}

template <typename T>
struct FusedArgs {
  const T* x;  // (N, D_in) contiguous; read-only for the whole launch
  const T* y;  // (N, D_out) contiguous; read-only
  T* p[4];     // w1 (H, D_in), b1 (H), w2 (D_out, H), b2 (D_out)
  T* g[4];     // their gradient accumulators
  T* s0[4];    // momentum buffers or Adam first moments (null for sgd)
  T* s1[4];    // Adam second moments (null otherwise)
  T* losses;   // (steps,)
  // Global scratch, rewritten every step (no initial contents needed).
  T* zpart;          // (Pk, N, H) partial pre-activations
  T* hbuf;           // (N, H) h
  T* ghbuf;          // (N, H) masked hidden gradient
  T* gybuf;          // (N, D_out) output gradient
  double* rowloss;   // (N) per-row squared error
  int64_t n, d_in, h, d_out, steps;
  int pj, pk, uj, kl, ujp, xstride, ks_a, ks_c;
  int64_t nc;
  Layout lay;
  // The update schedule. single: one step with the given update flag, Adam step and loss scale
  // (two_layer_step). Otherwise call c = calls_done + s + 1 updates when c % acc == 0, Adam's step
  // being max(c / acc, 1), and loss_scale = 1 / acc (two_layer_train).
  bool single, single_update;
  int64_t single_step, calls_done, acc;
  double loss_scale;
  double lr, momentum, beta1, beta2, eps;
};

// Per-update optimizer constants in the element type, computed as the CPU kernel does.
template <typename T>
struct OptConsts {
  T lr, momentum, step_size, bc2_sqrt, w, b2, one_minus_b2, eps;
};

template <typename T, int OPT>
__device__ __forceinline__ OptConsts<T> opt_consts(const FusedArgs<T>& a, int64_t step) {
  OptConsts<T> c;
  c.lr = T(a.lr);
  c.momentum = T(a.momentum);
  if (OPT == kAdam) {
    const double bc1 = 1 - pow(a.beta1, double(step)), bc2 = 1 - pow(a.beta2, double(step));
    c.step_size = T(a.lr / bc1);
    c.bc2_sqrt = T(sqrt(bc2));
    c.w = T(1 - a.beta1);
    c.b2 = T(a.beta2);
    c.one_minus_b2 = T(1 - a.beta2);
    c.eps = T(a.eps);
  }
  return c;
}

// One element's optimizer step: torch.optim's formulas, Adam in the form of its default (foreach)
// path, step_size * (m / denom). The CPU step runs ATen's fused Adam, (step_size * m) / denom with an
// FMA in its lerp: the two differ by about an ulp per update, within the tests' tolerances.
template <typename T, int OPT>
__device__ __forceinline__ void apply_opt(const OptConsts<T>& c, T& p, T g, T& s0, T& s1) {
  if (OPT == kSgd) {
    p = sub_rn(p, mul_rn(c.lr, g));
  } else if (OPT == kMomentum) {
    s0 = add_rn(mul_rn(c.momentum, s0), g);
    p = sub_rn(p, mul_rn(c.lr, s0));
  } else {
    const T m = s0;
    s0 = c.w < T(0.5) ? add_rn(m, mul_rn(c.w, sub_rn(g, m))) : sub_rn(g, mul_rn(sub_rn(g, m), sub_rn(T(1), c.w)));
    s1 = add_rn(mul_rn(s1, c.b2), mul_rn(mul_rn(c.one_minus_b2, g), g));
    p = sub_rn(p, mul_rn(c.step_size, div_rn(s0, add_rn(div_rn(sqrt_rn(s1), c.bc2_sqrt), c.eps))));
  }
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {  // every lane gets the same, fixed-order sum
  for (int m = 16; m >= 1; m >>= 1) v += shfl_xor(v, m);
  return v;
}

template <typename T, int OPT>
__device__ __forceinline__ void fused_block(const FusedArgs<T>& a, unsigned char* smem) {
  constexpr int NS = OPT == kSgd ? 0 : OPT == kMomentum ? 1 : 2;
  constexpr int kWarps = kThreads / 32;
  const int tid = int(threadIdx.x), lane = tid % 32, warp = tid / 32;
  const int64_t blk = blockIdx.x, grid = gridDim.x;
  const int64_t N = a.n, D_in = a.d_in, H = a.h, D_out = a.d_out;
  const int jb = int(blk / a.pk), kb = int(blk % a.pk);
  const int ujp = a.ujp, kl = a.kl, xs_stride = a.xstride, nq = ujp / 4;
  const int64_t j0 = int64_t(jb) * a.uj, k0 = int64_t(kb) * a.kl;
  const int uj_act = int(std::max<int64_t>(0, std::min<int64_t>(a.uj, H - j0)));
  const int kl_act = int(std::max<int64_t>(0, std::min<int64_t>(a.kl, D_in - k0)));

  T* xs = reinterpret_cast<T*>(smem + a.lay.x);    // [n][xstride]: x[n][k0 + k]
  T* wt = reinterpret_cast<T*>(smem + a.lay.w);    // [k][ujp]: w1[j0 + jj][k0 + k] (transposed)
  T* gt = reinterpret_cast<T*>(smem + a.lay.g);    // [k][ujp]: its gradient accumulator
  T* st0 = reinterpret_cast<T*>(smem + a.lay.s0);  // [k][ujp]: momentum buffer / Adam m
  T* st1 = reinterpret_cast<T*>(smem + a.lay.s1);  // [k][ujp]: Adam v
  unsigned char* scratch = smem + a.lay.scratch;

  T* w1 = a.p[0];
  const T* b1 = a.p[1];
  const T* w2 = a.p[2];
  const T* b2 = a.p[3];

  // Prologue: this block's tiles into shared memory; padding (jj >= uj_act or k >= kl_act) is zero.
  for (int64_t i = tid; i < N * kl_act; i += kThreads) {
    const int64_t n = i / kl_act, k = i % kl_act;
    xs[n * xs_stride + k] = a.x[n * D_in + k0 + k];
  }
  for (int i = tid; i < ujp * kl; i += kThreads) {
    const int jj = i / kl, k = i % kl;
    const bool valid = jj < uj_act && k < kl_act;
    const int64_t gi = (j0 + jj) * D_in + k0 + k;
    const int si = k * ujp + jj;
    wt[si] = valid ? w1[gi] : T(0);
    gt[si] = valid ? a.g[0][gi] : T(0);
    if (NS >= 1) st0[si] = valid ? a.s0[0][gi] : T(0);
    if (NS >= 2) st1[si] = valid ? a.s1[0][gi] : T(0);
  }
  __syncthreads();

  bool any_update = false;
  for (int64_t s = 0; s < a.steps; ++s) {
    bool update;
    int64_t opt_step;
    if (a.single) {
      update = a.single_update;
      opt_step = a.single_step;
    } else {
      const int64_t call = a.calls_done + s + 1;
      update = call % a.acc == 0;
      opt_step = std::max<int64_t>(call / a.acc, 1);
    }
    any_update = any_update || update;
    const T two_scale = T(2 * a.loss_scale);

    // ---- Phase A: zpart[kb][n][j0 + jj] = sum over the block's k of x[n][k] * w1[jj][k].
    {
      const int ks_n = a.ks_a, ks = tid % ks_n, groups = kThreads / ks_n;
      const int64_t items = N * nq;
      const int64_t passes = ceil_div(items, groups);
      for (int64_t pass = 0; pass < passes; ++pass) {
        const int64_t item = pass * groups + tid / ks_n;
        const bool active = item < items;
        const int64_t n = active ? item % N : 0;
        const int q = active ? int(item / N) : 0;
        T acc[4] = {T(0), T(0), T(0), T(0)};
        if (active) {
          const T* xr = xs + n * xs_stride;
          const T* wq = wt + 4 * q;
#pragma unroll 4
          for (int k = ks; k < kl_act; k += ks_n) {
            const T xv = xr[k];
            const Quad<T> w = load4(wq + k * ujp);
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[r] += xv * w.v[r];
          }
        }
        for (int d = ks_n / 2; d >= 1; d /= 2)  // the item's lanes are ks_n consecutive lanes of one warp
#pragma unroll
          for (int r = 0; r < 4; ++r) acc[r] += shfl_down(acc[r], d);
        if (active && ks == 0) {
          T* zrow = a.zpart + (int64_t(kb) * N + n) * H + j0;
#pragma unroll
          for (int r = 0; r < 4; ++r)
            if (4 * q + r < uj_act) zrow[4 * q + r] = acc[r];
        }
      }
    }
    grid_barrier();

    // ---- Phase B: rows n = blk, blk + grid, ...: h, y_pred, loss, gy, gh.
    {
      T* hs = reinterpret_cast<T*>(scratch);
      T* gys = reinterpret_cast<T*>(scratch + a.lay.b_gy);
      double* lossb = reinterpret_cast<double*>(scratch + a.lay.b_loss);
      for (int64_t n = blk; n < N; n += grid) {
        for (int64_t j = tid; j < H; j += kThreads) {
          T z = a.zpart[n * H + j];
          for (int64_t kk = 1; kk < a.pk; ++kk) z += a.zpart[(kk * N + n) * H + j];
          const T v = z + b1[j];
          const T hv = v <= T(0) ? T(0) : v;
          hs[j] = hv;
          a.hbuf[n * H + j] = hv;
        }
        __syncthreads();
        for (int64_t o = warp; o < D_out; o += kWarps) {
          T acc = T(0);
          for (int64_t j = lane; j < H; j += 32) acc += hs[j] * w2[o * H + j];
          acc = warp_sum(acc);
          if (lane == 0) {
            const T d = (acc + b2[o]) - a.y[n * D_out + o];
            const T gy = two_scale * d;
            gys[o] = gy;
            a.gybuf[n * D_out + o] = gy;
            lossb[o] = double(d) * double(d);
          }
        }
        __syncthreads();
        for (int64_t j = tid; j < H; j += kThreads) {
          T acc = T(0);
          for (int64_t o = 0; o < D_out; ++o) acc += gys[o] * w2[o * H + j];
          a.ghbuf[n * H + j] = hs[j] <= T(0) ? T(0) : acc;
        }
        if (tid == 0) {
          double total = 0;
          for (int64_t o = 0; o < D_out; ++o) total += lossb[o];
          a.rowloss[n] = total;
        }
        __syncthreads();
      }
    }
    grid_barrier();

    // ---- Phase C: gradients (and the update) of everything this block owns.
    const OptConsts<T> oc = opt_consts<T, OPT>(a, opt_step);
    {
      // The W1 tile: gt[k][jj] += sum_n x[n][k] * gh[n][j0 + jj], gh staged in shared memory nc rows
      // at a time (all N at once where they fit; a lane's n order is the same either way).
      T* ghs = reinterpret_cast<T*>(scratch);  // [n - c0][ujp]
      const int64_t nc = a.nc, chunks = ceil_div(N, nc);
      auto stage = [&](int64_t c0, int64_t c1) {
        for (int64_t i = tid; i < (c1 - c0) * ujp; i += kThreads) {
          const int64_t n = c0 + i / ujp;
          const int jj = int(i % ujp);
          ghs[i] = jj < uj_act ? a.ghbuf[n * H + j0 + jj] : T(0);
        }
      };
      if (chunks <= 1) {
        stage(0, N);
        __syncthreads();
      }
      const int ks_n = a.ks_c, ks = tid % ks_n, groups = kThreads / ks_n;
      const int64_t items = int64_t(kl_act) * nq;
      const int64_t passes = ceil_div(items, groups);
      for (int64_t pass = 0; pass < passes; ++pass) {
        const int64_t item = pass * groups + tid / ks_n;
        const bool active = item < items;
        const int k = active ? int(item % kl_act) : 0;
        const int q = active ? int(item / kl_act) : 0;
        T acc[4] = {T(0), T(0), T(0), T(0)};
        for (int64_t c = 0; c < chunks; ++c) {
          const int64_t c0 = c * nc, c1 = std::min(N, c0 + nc);
          if (chunks > 1) {
            __syncthreads();  // everyone is done with the previous chunk
            stage(c0, c1);
            __syncthreads();
          }
          if (active) {
#pragma unroll 4
            for (int64_t n = c0 + ks; n < c1; n += ks_n) {
              const T xv = xs[n * xs_stride + k];
              const Quad<T> gq = load4(ghs + (n - c0) * ujp + 4 * q);
#pragma unroll
              for (int r = 0; r < 4; ++r) acc[r] += xv * gq.v[r];
            }
          }
        }
        for (int d = ks_n / 2; d >= 1; d /= 2)
#pragma unroll
          for (int r = 0; r < 4; ++r) acc[r] += shfl_down(acc[r], d);
        if (active && ks == 0) {
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            if (4 * q + r >= uj_act) continue;
            const int si = k * ujp + 4 * q + r;
            T gv = gt[si] + acc[r];
            if (update) {
              T dummy = T(0);
              apply_opt<T, OPT>(oc, wt[si], gv, NS >= 1 ? st0[si] : dummy, NS >= 2 ? st1[si] : dummy);
              gv = T(0);
            }
            gt[si] = gv;
          }
        }
      }
    }
    {
      // Small parameters: flat index e over [b1 (H) | w2 (D_out * H) | b2 (D_out)], a contiguous
      // chunk per block, a warp per element, lanes over the batch.
      const int64_t total = H + D_out * H + D_out;
      const int64_t e_begin = total * blk / grid, e_end = total * (blk + 1) / grid;
      for (int64_t e = e_begin + warp; e < e_end; e += kWarps) {
        int which;
        int64_t idx;
        T acc = T(0);
        if (e < H) {
          which = 1;
          idx = e;
          for (int64_t n = lane; n < N; n += 32) acc += a.ghbuf[n * H + idx];
        } else if (e < H + D_out * H) {
          which = 2;
          idx = e - H;
          const int64_t o = idx / H, j = idx % H;
          for (int64_t n = lane; n < N; n += 32) acc += a.gybuf[n * D_out + o] * a.hbuf[n * H + j];
        } else {
          which = 3;
          idx = e - H - D_out * H;
          for (int64_t n = lane; n < N; n += 32) acc += a.gybuf[n * D_out + idx];
        }
        acc = warp_sum(acc);
        if (lane == 0) {
          // Selects, not a dynamic index into the kernel's parameter arrays (that would copy them to local memory).
          T* pp = (which == 1 ? a.p[1] : which == 2 ? a.p[2] : a.p[3]) + idx;
          T* gp = (which == 1 ? a.g[1] : which == 2 ? a.g[2] : a.g[3]) + idx;
          T gv = *gp + acc;
          if (update) {
            T* s0p = NS >= 1 ? (which == 1 ? a.s0[1] : which == 2 ? a.s0[2] : a.s0[3]) + idx : nullptr;
            T* s1p = NS >= 2 ? (which == 1 ? a.s1[1] : which == 2 ? a.s1[2] : a.s1[3]) + idx : nullptr;
            T p = *pp;
            T s0 = NS >= 1 ? *s0p : T(0);
            T s1 = NS >= 2 ? *s1p : T(0);
            apply_opt<T, OPT>(oc, p, gv, s0, s1);
            *pp = p;
            if (NS >= 1) *s0p = s0;
            if (NS >= 2) *s1p = s1;
            gv = T(0);
          }
          *gp = gv;
        }
      }
      // The step's loss: block 0's last warp sums the row losses.
      if (blk == 0 && warp == kWarps - 1) {
        double l = 0;
        for (int64_t n = lane; n < N; n += 32) l += a.rowloss[n];
        l = warp_sum(l);
        if (lane == 0) a.losses[s] = T(l);
      }
    }
    __syncthreads();  // the updated W1 tile before the next phase A; ghs before the next phase B's writes
  }

  // Epilogue: the tiles back to global memory (parameters and state only if something updated them).
  for (int i = tid; i < uj_act * kl_act; i += kThreads) {
    const int jj = i / kl_act, k = i % kl_act;
    const int64_t gi = (j0 + jj) * D_in + k0 + k;
    const int si = k * ujp + jj;
    a.g[0][gi] = gt[si];
    if (any_update) {
      w1[gi] = wt[si];
      if (NS >= 1) a.s0[0][gi] = st0[si];
      if (NS >= 2) a.s1[0][gi] = st1[si];
    }
  }
}

// Global scratch, in bytes from its base: the row losses (double), then zpart, h, gh and gy, each
// 16-byte aligned.
struct Scratch {
  int64_t z = 0, h = 0, gh = 0, gy = 0, bytes = 0;
};

inline Scratch scratch_layout(const Plan& p, int64_t n, int64_t h, int64_t d_out, int64_t es) {
  Scratch s;
  s.z = align16(n * 8);
  s.h = s.z + align16(int64_t(p.pk) * n * h * es);
  s.gh = s.h + align16(n * h * es);
  s.gy = s.gh + align16(n * h * es);
  s.bytes = s.gy + align16(n * d_out * es);
  return s;
}

// The arguments that come from the sizes, the plan and the scratch buffer (scratch_layout(...).bytes).
template <typename T>
void set_plan(FusedArgs<T>& a, const Plan& p, int64_t n, int64_t d_in, int64_t h, int64_t d_out,
              unsigned char* scratch) {
  const Scratch s = scratch_layout(p, n, h, d_out, int64_t(sizeof(T)));
  a.rowloss = reinterpret_cast<double*>(scratch);
  a.zpart = reinterpret_cast<T*>(scratch + s.z);
  a.hbuf = reinterpret_cast<T*>(scratch + s.h);
  a.ghbuf = reinterpret_cast<T*>(scratch + s.gh);
  a.gybuf = reinterpret_cast<T*>(scratch + s.gy);
  a.n = n;
  a.d_in = d_in;
  a.h = h;
  a.d_out = d_out;
  a.pj = p.pj;
  a.pk = p.pk;
  a.uj = p.uj;
  a.kl = p.kl;
  a.ujp = p.ujp;
  a.xstride = p.xstride;
  a.ks_a = p.ks_a;
  a.ks_c = p.ks_c;
  a.nc = p.nc;
  a.lay = p.lay;
}

}  // namespace fused_cuda
}  // namespace twolayer_ops
