"""The sm90 backward's overlapped mask (csrc/cuda/overlap_mask.h, TWOLAYER_OPS_SM90_OVERLAP_MASK=1), the same
code the kernels run, on the CPU (tests/cuda_emulation.cpp). The kernels need an H100 / H200
(tests/test_hopper.py); here: the writing order writes every chunk of Gm once, in the order the waiting GEMM
reads them (group by group of its tile-rows, K-tile by K-tile), and the chunks a K-tile of A waits for
cover every element of Gm its TMA box reads, and no others."""
import ctypes
import itertools

import pytest

CHUNK, TILE_M = 64, 128  # a chunk is 64 x 64 elements of Gm; a GEMM tile-row 128 rows of A


def chunk_order(lib, rows, cols, lines, by_columns):
    order = (ctypes.c_int * (2 * rows * cols))()
    assert lib.emulated_chunk_order(rows, cols, lines, int(by_columns), order) == 0
    return [(order[2 * i], order[2 * i + 1]) for i in range(rows * cols)]


# (Gm's rows, Gm's columns, chunk-lines a group): the shapes (8192 x 4096 and 8192 x 16384 in chunks,
# groups of 16 tile-rows, or 8 of two-block clusters: 32 lines), one group, groups past the tile side, a
# ragged last group, one chunk, one line.
CASES = [(128, 64, 32), (128, 256, 32), (128, 128, 32), (2, 2, 32), (17, 5, 4), (5, 17, 4), (1, 1, 2), (1, 9, 2),
         (9, 1, 6), (33, 7, 32), (7, 33, 64)]


@pytest.mark.parametrize("by_columns", [False, True], ids=["dX", "dW"])
@pytest.mark.parametrize("rows,cols,lines", CASES)
def test_every_chunk_once_in_the_waiting_gemms_order(emulation, rows, cols, lines, by_columns):
    order = chunk_order(emulation, rows, cols, lines, by_columns)
    assert sorted(order) == sorted(itertools.product(range(rows), range(cols))), "not every chunk exactly once"
    # The waiting GEMM walks groups of `lines` lines of its tile side and, inside a group, its K-tiles in
    # order, all of the group's lines at each: chunk (line, k) is read at (line // lines, k).
    keys = [((cc if by_columns else rc) // lines, rc if by_columns else cc) for rc, cc in order]
    assert keys == sorted(keys), "a chunk comes after one the GEMM reads later"


def test_every_small_order(emulation):
    for rows, cols, lines, by_columns in itertools.product(range(1, 9), range(1, 9), range(1, 10), (False, True)):
        order = chunk_order(emulation, rows, cols, lines, by_columns)
        assert len(set(order)) == rows * cols and all(0 <= r < rows and 0 <= c < cols for r, c in order)


@pytest.mark.parametrize("mn_major", [False, True], ids=["dX", "dW"])
@pytest.mark.parametrize("m,n", [(8192, 4096), (1000, 1024), (64, 8), (65, 136), (200, 2000), (130, 72)])
def test_a_k_tile_waits_for_the_chunks_it_reads(emulation, m, n, mn_major):
    """dX reads Gm K-major: tile-row tm is Gm's rows [128 tm, 128 tm + 128), K-tile kb its columns
    [64 kb, 64 kb + 64). dW reads it MN-major: tile-row tm is Gm's columns [128 tm, ...), K-tile kb its rows
    [64 kb, ...). The producer waits for the in-range chunks of a_chunk(h = 0, 1)."""
    rows, cols = -(-m // CHUNK), -(-n // CHUNK)
    tile_side, k_side = (n, m) if mn_major else (m, n)
    chunk = (ctypes.c_int * 2)()
    for tm in range(-(-tile_side // TILE_M)):
        for kb in range(-(-k_side // CHUNK)):
            waited = set()
            for h in (0, 1):
                assert emulation.emulated_a_chunk(tm, kb, h, int(mn_major), chunk) == 0
                if chunk[0] < rows and chunk[1] < cols:
                    waited.add((chunk[0], chunk[1]))
            lines = range(TILE_M * tm, min(TILE_M * (tm + 1), tile_side))
            ks = range(CHUNK * kb, min(CHUNK * (kb + 1), k_side))
            read = {((k if mn_major else line) // CHUNK, (line if mn_major else k) // CHUNK)
                    for line in (lines[0], lines[-1]) for k in (ks[0], ks[-1])}
            assert waited == read, (tm, kb, waited, read)
