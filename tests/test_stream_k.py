"""The sm90 GEMM's stream-K schedule (csrc/cuda/stream_k.h, TWOLAYER_OPS_SM90_STREAM_K=1), the same code
the kernels run, on the CPU (tests/cuda_emulation.cpp). The kernels themselves need an H100 / H200
(tests/test_hopper.py); here: every K-block of every shared-out tile runs exactly once, each block's
work is balanced and at most three pieces, a tile's later parts are their blocks' first work, and the
block that finishes a tile waits for exactly the blocks that hold its other parts."""
import ctypes
import itertools

import pytest

MAX_PIECES = 3

# (tiles, blocks, K-blocks a tile): the shapes on an H200 and an H100 PCIe (132, 114 SMs; 64 or
# 128 K-blocks of 64), the TWOLAYER_OPS_SM90_GRID=7 test cases, tails of one tile and of blocks - 1,
# a range longer than a tile, and the smallest K the plan accepts.
CASES = [(1024, 132, 64), (4096, 132, 64), (2048, 132, 128), (512, 132, 128), (1024, 114, 64), (4096, 114, 64),
         (32, 7, 16), (1024, 7, 64), (133, 132, 5), (263, 132, 9), (13, 7, 4), (8, 7, 4), (9, 2, 7)]
CASES += [(t, b, k) for t, b, k in itertools.product((5, 11, 41), (2, 3, 4), (4, 5, 13)) if t > b and t % b]


def schedule(lib, tiles, blocks, k_blocks):
    plan = (ctypes.c_int * 3)()
    pieces = (ctypes.c_int * (10 * blocks))()
    waits = (ctypes.c_int * blocks)()
    assert lib.emulated_stream_k(tiles, blocks, k_blocks, plan, pieces, waits) == 0
    per_block = [[tuple(pieces[10 * b + 1 + 3 * i:10 * b + 4 + 3 * i]) for i in range(pieces[10 * b])]
                 for b in range(blocks)]
    return tuple(plan), per_block, list(waits)


@pytest.mark.parametrize("tiles,blocks,k_blocks", CASES)
def test_every_k_block_runs_once_and_each_tile_is_finished_after_its_parts(emulation, tiles, blocks, k_blocks):
    check_schedule(emulation, tiles, blocks, k_blocks)


def test_every_small_schedule(emulation):
    """Every plan of up to 9 blocks, 40 tiles and 9 K-blocks a tile: ranges that end on a tile's last
    K-block or inside a tile, and tails of every length. (A range is never shorter than a tile.)"""
    for blocks, k_blocks in itertools.product(range(2, 10), range(4, 10)):
        for tiles in range(blocks + 1, 41):
            if tiles % blocks:
                check_schedule(emulation, tiles, blocks, k_blocks)


def check_schedule(emulation, tiles, blocks, k_blocks):
    (sk_tiles, per, extra), per_block, waits = schedule(emulation, tiles, blocks, k_blocks)
    tail = tiles % blocks
    assert sk_tiles == blocks + tail and tail > 0, (sk_tiles, tail)
    whole = tiles - sk_tiles
    assert whole % blocks == 0  # whole waves: each block the same number of whole tiles
    ran = {}
    for b, pieces in enumerate(per_block):
        assert 1 <= len(pieces) <= MAX_PIECES, (b, pieces)
        assert sum(kb1 - kb0 for _, kb0, kb1 in pieces) in (per, per + 1)  # balanced
        for i, (t, kb0, kb1) in enumerate(pieces):
            assert whole <= t < tiles and 0 <= kb0 < kb1 <= k_blocks, (b, pieces)
            assert i == 0 or kb0 == 0, f"block {b}: a later part of a tile after its first piece: {pieces}"
            assert i == len(pieces) - 1 or kb1 == k_blocks, (b, pieces)
            for k in range(kb0, kb1):
                assert (t, k) not in ran, f"tile {t} K-block {k}: blocks {ran[(t, k)]} and {b}"
                ran[(t, k)] = b
    assert len(ran) == sk_tiles * k_blocks  # every shared-out K-block ran
    for t in range(whole, tiles):
        holders = sorted({ran[(t, k)] for k in range(k_blocks)})
        assert holders == list(range(holders[0], holders[-1] + 1)), (t, holders)  # consecutive blocks
        first = holders[0]
        if len(holders) == 1:
            continue  # whole inside one block's range: no waiting
        assert ran[(t, 0)] == first and per_block[first][-1][0] == t  # its first part: the block's last work
        assert waits[first] == holders[-1] + 1, f"tile {t}: block {first} waits up to {waits[first]}, parts {holders}"
        for other in holders[1:]:
            assert per_block[other][0][0] == t and per_block[other][0][1] > 0  # their first work
    for b, pieces in enumerate(per_block):  # a block whose last piece starts a tile but ends it waits for no one
        t, kb0, kb1 = pieces[-1]
        if not (kb0 == 0 and kb1 < k_blocks):
            assert waits[b] == -1, (b, pieces, waits[b])


@pytest.mark.parametrize("tiles,blocks,k_blocks", [(1056, 132, 64), (100, 132, 64), (133, 132, 3), (133, 132, 0)])
def test_no_plan_for_whole_waves_few_tiles_or_short_k(emulation, tiles, blocks, k_blocks):
    """Whole waves, a grid that takes every tile at once, and under 4 K-blocks a tile run every tile whole."""
    (sk_tiles, _, _), per_block, waits = schedule(emulation, tiles, blocks, k_blocks)
    assert sk_tiles == 0 and all(not p for p in per_block) and all(w == -1 for w in waits)
