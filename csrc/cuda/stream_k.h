// The stream-K schedule of the sm90 GEMM (linear_relu_sm90.cu, TWOLAYER_OPS_SM90_STREAM_K=1): which
// K-blocks of which tiles each persistent block runs. Plain C++ for the host too: tests/cuda_emulation.cpp
// runs it for tests/test_stream_k.py, which checks that the pieces cover every K-block once.
//
// A GEMM of `tiles` tiles of k_blocks K-blocks on `blocks` persistent blocks, with tiles % blocks = tail
// > 0: the first tiles - (blocks + tail) tiles run whole (whole waves, block b taking b, b + blocks, ...);
// the last blocks + tail tiles' K-blocks, one sequence, are split evenly over the blocks: block b takes
// `per` of them (one more where b < extra) from sk_start(b). Each block runs its range first, cut at tile
// boundaries into at most kMaxSkPieces pieces (a tile's last part, whole tiles, a tile's first part), then
// its whole tiles. The block holding a split tile's first part finishes it, after the blocks b + 1, ...
// whose ranges start inside the tile (sk_shares) have written their parts.
#pragma once

#if defined(__CUDACC__)
#define TWOLAYER_OPS_SK_FN __host__ __device__ __forceinline__
#else
#define TWOLAYER_OPS_SK_FN inline
#endif

namespace twolayer_ops {
namespace sm90 {

// Under two tiles' K-blocks a block (tail < blocks), a range touches at most 3 tiles.
constexpr int kMaxSkPieces = 3;

struct SkPlan {
  int sk_tiles = 0;         // the tiles shared out (0: none, every tile whole)
  int per = 0, extra = 0;   // K-blocks a block, and how many blocks take one more
};

// The plan, or none (sk_tiles 0): whole waves only, under 4 K-blocks a tile, or a sequence past an int.
TWOLAYER_OPS_SK_FN SkPlan sk_plan(int tiles, int blocks, int k_blocks) {
  SkPlan p;
  if (blocks <= 0 || tiles <= blocks || tiles % blocks == 0 || k_blocks < 4) return p;
  const long long sequence = (long long)(blocks + tiles % blocks) * k_blocks;
  if (sequence >= 2147483647LL) return p;
  p.sk_tiles = blocks + tiles % blocks;
  p.per = int(sequence / blocks);
  p.extra = int(sequence % blocks);
  return p;
}

// Where block b's range starts in the sequence (no division: the consumers' waiting loop calls it).
TWOLAYER_OPS_SK_FN int sk_start(int per, int extra, int b) { return b * per + (b < extra ? b : extra); }

// Whether block `other` holds a part of the tile that ends at tile_end in the sequence, given that a
// block before it holds the tile's first part: the waiting block's loop runs other = b + 1, ... while so.
TWOLAYER_OPS_SK_FN bool sk_shares(int per, int extra, int blocks, int other, int tile_end) {
  return other < blocks && sk_start(per, extra, other) < tile_end;
}

// Block b's pieces: piece[i] = {tile, kb0, kb1} (K-blocks [kb0, kb1) of the tile, tiles counted from 0
// over all tiles: the shared-out ones follow the `whole` others). Returns how many.
TWOLAYER_OPS_SK_FN int sk_pieces(const SkPlan& p, int whole, int k_blocks, int b, int (*piece)[3]) {
  int s = sk_start(p.per, p.extra, b), n = 0;
  const int e = sk_start(p.per, p.extra, b + 1);
  while (s < e && n < kMaxSkPieces) {
    const int kb0 = s % k_blocks, kb1 = kb0 + (e - s) < k_blocks ? kb0 + (e - s) : k_blocks;
    piece[n][0] = whole + s / k_blocks;
    piece[n][1] = kb0;
    piece[n][2] = kb1;
    ++n;
    s += kb1 - kb0;
  }
  return n;
}

}  // namespace sm90
}  // namespace twolayer_ops
