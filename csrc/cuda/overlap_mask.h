// The overlapped mask of the sm90 backward (linear_relu_sm90.cu, TWOLAYER_OPS_SM90_OVERLAP_MASK=1): which
// chunk of the masked gradient Gm (M x N) the spare producer warps write next, and which chunks a K-tile of
// a GEMM's A operand reads. Plain C++ for the host too: tests/cuda_emulation.cpp runs it for
// tests/test_overlap_mask.py, which checks that the order writes every chunk once and that the chunks a
// K-tile waits for cover every element its TMA box reads.
//
// Chunks are 64 x 64 elements, so that both GEMMs that read Gm take whole chunks a K-tile: dX reads Gm
// K-major (a tile-row of 128 rows, K-tiles of 64 columns: chunks (2 tm + h, kb)), dW MN-major (a tile-row
// of 128 columns, K-tiles of 64 rows: chunks (kb, 2 tm + h)). The writing order follows the launch's
// first GEMM, the one that waits: its tile order (linear_relu_sm90.cu's tile_coords) takes groups of
// `lines` chunk-lines of its tile side (Gm's rows for dX, columns for dW) and, inside a group, walks its
// K-tiles first, so the order is: group by group, K-tile by K-tile, the group's lines.
#pragma once

#if defined(__CUDACC__)
#define TWOLAYER_OPS_OM_FN __host__ __device__ __forceinline__
#else
#define TWOLAYER_OPS_OM_FN inline
#endif

namespace twolayer_ops {
namespace sm90 {

constexpr int kChunk = 64;  // a chunk of Gm: kChunk rows x kChunk columns

// Chunk i (0 <= i < rows * cols) of the writing order -> (chunk-row rc, chunk-column cc) of a Gm of rows x
// cols chunks. by_columns: the waiting GEMM's tile side is Gm's columns (dW), else its rows (dX). lines:
// chunk-lines of the tile side per group (> 0).
TWOLAYER_OPS_OM_FN void chunk_coords(int i, int rows, int cols, int lines, bool by_columns, int& rc, int& cc) {
  const int tile_side = by_columns ? cols : rows, k_side = by_columns ? rows : cols;
  lines = lines < tile_side ? lines : tile_side;
  const int per_group = lines * k_side;
  const int group = i / per_group, first = group * lines;
  const int in_group = tile_side - first < lines ? tile_side - first : lines;
  const int r = i - group * per_group;
  const int line = first + r % in_group, k = r / in_group;
  rc = by_columns ? k : line;
  cc = by_columns ? line : k;
}

// Chunk h (0 or 1) of K-tile kb of A's tile-row tm (in 128-row tiles): Gm read K-major (dX) or MN-major
// (dW, mn_major). The caller skips chunks past Gm's last chunk-row or column.
TWOLAYER_OPS_OM_FN void a_chunk(int tm, int kb, int h, bool mn_major, int& rc, int& cc) {
  rc = mn_major ? kb : 2 * tm + h;
  cc = mn_major ? 2 * tm + h : kb;
}

}  // namespace sm90
}  // namespace twolayer_ops
