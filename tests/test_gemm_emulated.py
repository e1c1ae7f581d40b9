"""The native backend's CUDA GEMM kernels, run on the CPU.

csrc/cuda/linear_relu_gemm.h holds the portable core of csrc/cuda/linear_relu.cu: the operands,
the tile loader (16-byte vector loads where a tile row is contiguous and aligned, scalar ones
otherwise, the ReLU mask applied as G loads), the SIMT (float32, float64) and WMMA (float16,
bfloat16) policies, the kernel body and the setup of the three products' operands from pointers and
strides. tests/cuda_emulation.cpp runs that code with one OS thread per CUDA thread and a WMMA of its
own (float products, float sums); EmulatedNative below does what linear_relu.cu's host functions do
around it. The property test of every backend (tests/test_properties.py: sizes across the tile
edges, transposed, strided, sliced and broadcast operands, specials) then checks it against float64.
Not covered here: the tensor cores' own arithmetic, the Hopper path, and launch errors.
"""
import ctypes
import math
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .cases import phases
from .reference import assert_close_to_ref, linear_relu_ref
from .test_properties import check, problems

LAUNCH_TIMEOUT_S = 120
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}  # emulated_gemm's
# float32's tile kinds, emulated_gemm's codes (cuda_gemm::SimtTiles), and their output tiles' side.
FLOAT32_TILES = {"default": 0, "small": 1, "wide": 2}
TILE_SIDE = {0: 128, 1: 64, 2: 128}
# Each dtype in its tiles, and float32 in each of its other kinds too.
TILE_CASES = [(dtype, 0) for dtype in DTYPE_CODES] + [(torch.float32, 1), (torch.float32, 2)]
TILE_IDS = [f"{dtype}{'' if tiles == 0 else '-' + ('small' if tiles == 1 else 'wide')}" for dtype, tiles in TILE_CASES]


def tile_side(dtype, tiles):
    return 64 if dtype == torch.float64 else 128 if dtype != torch.float32 else TILE_SIDE[tiles]
SIZES = st.one_of(st.integers(0, 20), st.integers(21, 70), st.integers(71, 200))


def as_matrix(t):
    """linear_relu.h's as_matrix: 2-D as it is, else (rows, last dim) with the rows counted."""
    return t if t.dim() == 2 else t.reshape(math.prod(t.shape[:-1]), t.shape[-1])


class EmulatedNative:
    """linear_relu and linear_relu_backward as linear_relu.cu runs them (linear_relu_cuda,
    linear_relu_backward_cuda, without the Hopper path), on CPU tensors. max_blocks caps the grid so
    that each block walks several output tiles; None launches one block per tile, as the GPU does.
    sms > 0 splits K as a GPU with that many SMs would (plan_split_k), each slice at least min_ktiles
    K-tiles deep (TWOLAYER_OPS_SPLITK_MIN_KTILES); 0 never splits. tiles runs float32 in that kind of
    tile (FLOAT32_TILES: 1 the small-output tiles, 64x64x16, of TWOLAYER_OPS_SIMT_SMALL_TILES; 2 the
    128-thread tiles of TWOLAYER_OPS_SIMT_WIDE_THREAD_TILES), whatever the size."""

    def __init__(self, lib, max_blocks=None, sms=0, min_ktiles=8, tiles=0):
        self.lib, self.max_blocks, self.sms, self.min_ktiles = lib, max_blocks, sms, min_ktiles
        self.tiles = tiles
        self.blocks = []  # blocks of every launch of one product
        self.paired = []  # blocks of every launch of dX and dW together

    def linear_relu(self, x, weight, bias):
        x2 = as_matrix(x)
        (m, k), n = x2.shape, weight.shape[0]
        out = x.new_full((m, n), float("nan"))  # NaN where the kernel fails to write (at::empty on the GPU)
        if m and n:  # K == 0 runs the epilogue alone
            self._gemm(0, x2, None, weight, bias, out, None, m, k, n)
        return out.view(*x.shape[:-1], n)

    def linear_relu_backward(self, grad_out, out, x, weight, output_mask):
        x2 = as_matrix(x)
        (m, k), n = x2.shape, weight.shape[0]
        g, o = as_matrix(grad_out), as_matrix(out)
        run_dx = output_mask[0] and m > 0 and n > 0 and k > 0
        run_dw = output_mask[1] and m > 0 and n > 0 and k > 0
        run_db = output_mask[2] and m > 0 and n > 0

        def result(wanted, run, shape):
            return x.new_empty(0) if not wanted else x.new_full(shape, float("nan")) if run else x.new_zeros(shape)

        dx, dw, db = result(output_mask[0], run_dx, (m, k)), result(output_mask[1], run_dw, (n, k)), \
            result(output_mask[2], run_db, (n,))
        dw_or_none, db_or_none = dw if run_dw else None, db if run_db else None
        if run_dx and (run_dw or run_db):  # one launch of both
            self.paired.append(self._launch(self.lib.emulated_grads, DTYPE_CODES[g.dtype], *_mat(g), *_mat(o),
                                            *_mat(weight), *_mat(x2), _ptr(dx), _ptr(dw_or_none), _ptr(db_or_none),
                                            *self._sizes(m, k, n)))
        elif run_dx:
            self._gemm(1, g, o, weight, None, dx, None, m, k, n)
        elif run_dw or run_db:
            self._gemm(2, g, o, x2, None, dw_or_none, db_or_none, m, k, n)
        return dx.view(x.shape) if output_mask[0] else dx, dw, db

    def _sizes(self, m, k, n):
        return ctypes.c_int64(m), ctypes.c_int64(k), ctypes.c_int64(n), ctypes.c_int64(self.max_blocks or 2**62), \
            ctypes.c_int64(self.sms), ctypes.c_int64(self.min_ktiles), ctypes.c_int64(self.tiles)

    def _gemm(self, mode, a, o, b, bias, c, db, m, k, n):
        self.blocks.append(self._launch(self.lib.emulated_gemm, DTYPE_CODES[a.dtype], mode, *_mat(a), *_mat(o), *_mat(b),
                                        _ptr(bias), ctypes.c_int64(bias.stride(0) if bias is not None else 0), _ptr(c), _ptr(db),
                                        *self._sizes(m, k, n)))

    @staticmethod
    def _launch(fn, *args):
        result = []
        worker = threading.Thread(target=lambda: result.append(fn(*args)), daemon=True)
        worker.start()
        worker.join(LAUNCH_TIMEOUT_S)
        if worker.is_alive():
            pytest.fail(f"the emulated GEMM did not finish in {LAUNCH_TIMEOUT_S} s")
        return result[0]


def _mat(t):
    return (ctypes.c_void_p(t.data_ptr()), ctypes.c_int64(t.stride(0)), ctypes.c_int64(t.stride(1))) \
        if t is not None else (ctypes.c_void_p(0), ctypes.c_int64(0), ctypes.c_int64(0))


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr() if t is not None else 0)


@settings(max_examples=150, phases=phases("cpu"), suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(problem=problems(SIZES, list(DTYPE_CODES)), few_blocks=st.booleans(), sms=st.sampled_from([0, 2, 8]),
       min_ktiles=st.sampled_from([2, 8]), tiles=st.sampled_from(list(FLOAT32_TILES.values())))
def test_forward_and_backward_match_reference(emulation, problem, few_blocks, sms, min_ktiles, tiles):
    """The property test of every backend, on the emulated CUDA kernels (SIMT for float32 and float64,
    WMMA for float16 and bfloat16; float32 in each kind of tile); half the examples on at most 2 blocks,
    so that each block walks several output tiles; and K split as a GPU of 2 or 8 SMs would, in slices
    of at least 2 or 8 K-tiles."""
    check(problem, "cpu", EmulatedNative(emulation, max_blocks=2 if few_blocks else None, sms=sms, min_ktiles=min_ktiles,
                                         tiles=tiles))


@pytest.mark.parametrize("dtype,tiles", TILE_CASES, ids=TILE_IDS)
def test_tile_edges_and_vector_loads(emulation, dtype, tiles):
    """Sizes one below, at and one above the tiles (128x128 for float32 and the 16-bit types, 64x64
    for float64 and float32's small tiles), contiguous (16-byte vector loads) and at an odd storage
    offset (scalar loads), every gradient."""
    tile = tile_side(dtype, tiles)
    emulated = EmulatedNative(emulation, tiles=tiles)
    for m, k, n in [(tile - 1, 9, tile + 1), (tile, 32, tile), (tile + 1, 33, 2 * tile - 1)]:
        g = torch.Generator().manual_seed(m + k + n)
        for offset in (0, 1):
            x = torch.randn(m * k + offset, generator=g, dtype=torch.float64).to(dtype)[offset:].view(m, k)
            w = torch.randn(n, k, generator=g, dtype=torch.float64).to(dtype)
            b = torch.randn(n, generator=g, dtype=torch.float64).to(dtype)
            out = emulated.linear_relu(x, w, b)
            ref = linear_relu_ref(x.double(), w.double(), b.double())
            assert_close_to_ref(out, ref.to(dtype), dtype, f"out {m}x{k}x{n} offset {offset}")
            go = torch.randn(m, n, generator=g, dtype=torch.float64).to(dtype)
            gm = torch.where(out.double() <= 0, 0.0, go.double())
            grads = emulated.linear_relu_backward(go, out, x, w, [True, True, True])
            for name, got, want in zip(("dx", "dw", "db"), grads, (gm @ w.double(), gm.t() @ x.double(), gm.sum(0))):
                assert_close_to_ref(got, want.to(dtype), dtype, f"{name} {m}x{k}x{n} offset {offset}")
    assert max(emulated.blocks) == math.ceil((tile + 1) / tile) * math.ceil((2 * tile - 1) / tile)


def test_db_only_pass_and_unrequested_gradients(emulation):
    """db without dW runs the dW kernel with no output (row sums only); gradients not asked for are empty."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(70, 30, generator=g, dtype=torch.float64), torch.randn(20, 30, generator=g, dtype=torch.float64)
    emulated = EmulatedNative(emulation)
    out = emulated.linear_relu(x, w, None)
    go = torch.randn(70, 20, generator=g, dtype=torch.float64)
    dx, dw, db = emulated.linear_relu_backward(go, out, x, w, [False, False, True])
    assert dx.numel() == 0 and dw.numel() == 0
    torch.testing.assert_close(db, torch.where(out <= 0, 0.0, go).sum(0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", list(DTYPE_CODES), ids=str)
def test_split_k(emulation, dtype):
    """Outputs of a few tiles over a long K split K (the forward, and dX in the last case; dW keeps its
    db row sums in one pass): K ending inside a K-tile and at one, a grid of one block per work item
    and one of 2 blocks walking them all (the same bits: the slices are summed in order), bias and none."""
    bk = 32 if dtype in (torch.float16, torch.bfloat16) else 8
    for m, k, n, sms, bias in [(70, 40 * bk + 3, 50, 8, True), (129, 17 * bk, 7, 4, False), (5, 33 * bk - 1, 130, 16, True)]:
        g = torch.Generator().manual_seed(m + k + n)
        x = torch.randn(m, k, generator=g, dtype=torch.float64).to(dtype)
        w = (torch.randn(n, k, generator=g, dtype=torch.float64) / math.sqrt(k)).to(dtype)
        b = torch.randn(n, generator=g, dtype=torch.float64).to(dtype) if bias else None
        go = torch.randn(m, n, generator=g, dtype=torch.float64).to(dtype)
        runs = []
        for max_blocks in (None, 2):
            emulated = EmulatedNative(emulation, max_blocks=max_blocks, sms=sms)
            out = emulated.linear_relu(x, w, b)
            ref = linear_relu_ref(x.double(), w.double(), b.double() if bias else None)
            assert_close_to_ref(out, ref.to(dtype), dtype, f"out {m}x{k}x{n}")
            gm = torch.where(out.double() <= 0, 0.0, go.double())
            grads = emulated.linear_relu_backward(go, out, x, w, [True, True, bias])
            for name, got, want in zip(("dx", "dw", "db"), grads, (gm @ w.double(), gm.t() @ x.double(), gm.sum(0))):
                if name != "db" or bias:
                    assert_close_to_ref(got, want.to(dtype), dtype, f"{name} {m}x{k}x{n}")
            runs.append((out, *grads))
            tile = 64 if dtype == torch.float64 else 128
            if max_blocks is None:  # the forward ran more blocks than it has output tiles: K was split
                assert emulated.blocks[0] > math.ceil(m / tile) * math.ceil(n / tile), emulated.blocks
        for a, c in zip(*runs):
            assert torch.equal(a, c)


@pytest.mark.parametrize("dtype,tiles", [c for c in TILE_CASES if c[1] != 2], ids=[i for c, i in zip(TILE_CASES, TILE_IDS) if c[1] != 2])
def test_backward_pairs_dx_and_dw_in_one_launch(emulation, dtype, tiles):
    """dX and dW + db run in one grid, each product on its part: the seed's 64x1000->100 backward on a
    132-SM GPU is 8 + 8 blocks (128x128 tiles); where dX splits K (slices of at least 2 K-tiles), its
    slices run in the grid and its reduce pass after. The same bits with each part capped at 2 blocks.
    (float32's 128-thread tiles run the two products one launch each.)"""
    tile = tile_side(dtype, tiles)
    m, k, n = 64, 1000, 100
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.randn(n, k, generator=g, dtype=torch.float64) / math.sqrt(k)).to(dtype)
    b = torch.randn(n, generator=g, dtype=torch.float64).to(dtype)
    go = torch.randn(m, n, generator=g, dtype=torch.float64).to(dtype)
    dx_tiles, dw_tiles, db_tiles = math.ceil(m / tile) * math.ceil(k / tile), math.ceil(n / tile) * math.ceil(k / tile), \
        math.ceil(n / tile)
    runs = []
    for min_ktiles, max_blocks in [(8, None), (8, 2), (2, None), (2, 2)]:
        emulated = EmulatedNative(emulation, max_blocks=max_blocks, sms=132, min_ktiles=min_ktiles, tiles=tiles)
        out = emulated.linear_relu(x, w, b)
        gm = torch.where(out.double() <= 0, 0.0, go.double())
        grads = emulated.linear_relu_backward(go, out, x, w, [True, True, True])
        for name, got, want in zip(("dx", "dw", "db"), grads, (gm @ w.double(), gm.t() @ x.double(), gm.sum(0))):
            assert_close_to_ref(got, want.to(dtype), dtype, f"{name}, slices of {min_ktiles}+ K-tiles, {max_blocks} blocks")
        # dX with db alone: dW's part of the grid is a db-only pass, one block per row of tiles.
        dx, _, db = emulated.linear_relu_backward(go, out, x, w, [True, False, True])
        assert torch.equal(dx, grads[0]) and torch.equal(db, grads[2])
        if max_blocks:
            assert emulated.paired == [4, 2 + min(db_tiles, 2)], emulated.paired
        elif min_ktiles == 8:  # dX does not split: one block per output tile of each product
            assert emulated.paired == [dx_tiles + dw_tiles, dx_tiles + db_tiles], emulated.paired
        else:  # dX splits: more blocks than its output tiles
            assert emulated.paired[0] - dw_tiles > dx_tiles and emulated.paired[1] - db_tiles > dx_tiles, emulated.paired
        runs.append((min_ktiles, grads))
    for (ka, a), (kc, c) in zip(runs, runs[1:]):
        if ka == kc:  # capping the blocks changes no bit (slices are summed in order)
            for ta, tc in zip(a, c):
                assert torch.equal(ta, tc)


def prefetched_lines(lib):
    """The lines the last emulated call prefetched into L2, in the order asked."""
    lib.emulated_prefetched.restype = ctypes.c_int64
    count = lib.emulated_prefetched(None, ctypes.c_int64(0))
    lines = (ctypes.c_uint64 * count)()
    lib.emulated_prefetched(lines, ctypes.c_int64(count))
    return list(lines)


def lines_of(*tensors):
    """The 128-byte lines that hold an element of any of the (strided) tensors."""
    lines = set()
    for t in tensors:
        offsets = torch.zeros((), dtype=torch.int64)
        for size, stride in zip(t.shape, t.stride()):
            offsets = offsets.unsqueeze(-1) + torch.arange(size) * stride
        lines |= set(((t.data_ptr() + offsets.flatten() * t.element_size()) // 128 * 128).tolist())
    return lines


@pytest.mark.parametrize("dtype", list(DTYPE_CODES), ids=str)
def test_seed_sizes_prefetch_exactly_their_operands(emulation, dtype):
    """A grid of one wave or less whose panels fit in L2 (the seed's 64x1000->100 on an H100's 132 SMs:
    the forward split into slices, the backward's dX beside dW in one grid) prefetches every line of its
    operands, the mask's too, and no other line; dW prefetches nothing (its kernel has no register to
    spare). The forward's slices ask for a line at most twice (where they meet); dX's tiles each ask
    for the panel they share (from L2, a hit)."""
    m, k, n = 64, 1000, 100
    g = torch.Generator().manual_seed(0)
    x, w, go = (torch.randn(*s, generator=g, dtype=torch.float64).to(dtype) for s in ((m, k), (n, k), (m, n)))
    emulated = EmulatedNative(emulation, sms=132)
    out = emulated.linear_relu(x, w, None)
    asked = prefetched_lines(emulation)
    assert set(asked) == lines_of(x, w) and len(asked) <= 2 * len(set(asked))
    emulated.linear_relu_backward(go, out, x, w, [True, True, True])
    asked = prefetched_lines(emulation)
    assert set(asked) == lines_of(go, out, w)


def test_prefetch_takes_transposed_operands_and_skips_strided_ones(emulation):
    """A transposed operand's runs go along its other axis; one with no unit stride is not prefetched."""
    m, k, n = 64, 300, 40
    g = torch.Generator().manual_seed(1)
    xt = torch.randn(k, m, generator=g, dtype=torch.float64).float().t()  # (m, k), unit stride along m
    w = torch.randn(n, 2 * k, generator=g, dtype=torch.float64).float()[:, ::2]  # no unit stride
    EmulatedNative(emulation, sms=132).linear_relu(xt, w, None)
    assert set(prefetched_lines(emulation)) == lines_of(xt)


def test_no_prefetch_past_one_wave(emulation):
    """More output tiles than SMs: the blocks that share an SM hide each other's latency."""
    x, w = torch.randn(300, 40, dtype=torch.float64).float(), torch.randn(300, 40, dtype=torch.float64).float()
    EmulatedNative(emulation, sms=8).linear_relu(x, w, None)  # 3 x 3 tiles of 128x128
    assert prefetched_lines(emulation) == []
    EmulatedNative(emulation, sms=9).linear_relu(x, w, None)
    assert set(prefetched_lines(emulation)) == lines_of(x, w)
