"""The CPU small-GEMM kernels (csrc/cpu_gemm_kernels.h) at every edge of their register blocks, for
each vector ISA this CPU has (torch.ops.twolayer_ops_cpu.set_isa): AVX2 blocks 3x4 over 8-wide K
steps forward and 6 rows x 16 columns backward (and for a transposed weight's forward); AVX-512
blocks 4x6 over 16-wide K steps and 8 rows x 48 columns. And the split over threads."""
import itertools
import os
import subprocess
import sys

import pytest
import torch

from twolayer_ops.ops import CPU_ISAS, cpu_isa, ops

from .reference import assert_close_to_ref, linear_relu_ref

ISA_LEVELS = {name: level for level, name in enumerate(CPU_ISAS)}
IN_USE, BEST = range(2)  # the entries of torch.ops.twolayer_ops_cpu.info()

# Rows, columns and depths around both ISAs' block sizes (rows 3, 4, 6, 8; forward columns 4, 6;
# backward columns, which run along K, 16 and 48; K steps 8 and 16).
ROWS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 13]
COLS = [1, 3, 4, 5, 6, 7, 8, 15, 16, 17, 33, 47, 48, 49]
DEPTHS = [1, 7, 8, 9, 15, 16, 17, 33, 47, 48, 49, 65, 97]
# Large enough to be split over threads, and not multiples of any block size.
SPLIT_SHAPES = [(64, 1000, 100), (50, 333, 77), (129, 257, 130)]


def best_isa():
    return torch.ops.twolayer_ops_cpu.info()[BEST]


@pytest.fixture(params=["avx2", "avx512"])
def isa(request):
    """Runs the test on one ISA's kernels, skipped where the CPU lacks it."""
    level = ISA_LEVELS[request.param]
    if best_isa() < level:
        pytest.skip(f"this CPU lacks {request.param}")
    torch.ops.twolayer_ops_cpu.set_isa(level)
    assert cpu_isa()[0] == request.param
    yield request.param
    torch.ops.twolayer_ops_cpu.set_isa(-1)


def fp64_grads(x, w, b, g):
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, w, b))
    out = linear_relu_ref(x64, w64, b64)
    out.backward(g.double())
    return out.detach(), x64.grad, w64.grad, b64.grad


def weight(N, K, layout):
    """(N, K) weight, row-major or the transpose of a row-major (K, N) matrix (the seed's raw programs)."""
    return torch.randn(N, K) if layout == "rowmajor" else torch.randn(K, N).t()


@pytest.mark.parametrize("layout", ["rowmajor", "transposed"])
@pytest.mark.parametrize("M,N,K", [(3, 5, 17), (8, 48, 16), (13, 7, 97), (4, 6, 1), (130, 70, 64)] + SPLIT_SHAPES)
def test_forward_and_backward_against_float64(isa, M, N, K, layout):
    torch.manual_seed(M * 10007 + N * 101 + K)
    x, w, b, g = torch.randn(M, K), weight(N, K, layout), torch.randn(N), torch.randn(M, N)
    ref, gx, gw, gb = fp64_grads(x, w, b, g)
    out = ops.linear_relu(x, w, b)
    assert_close_to_ref(out, ref, torch.float32, "forward")
    assert_close_to_ref(ops.linear_relu(x, w, None), linear_relu_ref(x.double(), w.double()), torch.float32, "no bias")
    dx, dw, db = ops.linear_relu_backward(g, out, x, w, [True, True, True])
    for got, want, what in [(dx, gx, "grad_x"), (dw, gw, "grad_w"), (db, gb, "grad_b")]:
        assert_close_to_ref(got, want, torch.float32, what)


@pytest.mark.parametrize("layout", ["rowmajor", "transposed"])
@pytest.mark.parametrize("M", ROWS)
def test_every_block_edge_elementwise(isa, M, layout):
    # Element by element: a wrong tail row or column cannot hide in a norm.
    for N, K in itertools.product(COLS, DEPTHS):
        torch.manual_seed(M * 10007 + N * 101 + K)
        x, w, b = torch.randn(M, K), weight(N, K, layout), torch.randn(N)
        shape = f"M={M} N={N} K={K}"
        want = linear_relu_ref(x.double(), w.double(), b.double())
        out = ops.linear_relu(x, w, b)
        torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5 * K, msg=lambda m: f"forward {shape}: {m}")
        g = torch.randn(M, N)
        gm = (g * (out > 0)).double()
        dx, dw, _ = ops.linear_relu_backward(g, out, x, w, [True, True, False])
        torch.testing.assert_close(dx.double(), gm @ w.double(), rtol=1e-5, atol=1e-5 * N,
                                   msg=lambda m: f"grad_x {shape}: {m}")
        torch.testing.assert_close(dw.double(), gm.t() @ x.double(), rtol=1e-5, atol=1e-5 * M,
                                   msg=lambda m: f"grad_w {shape}: {m}")


def test_strided_operands_take_the_right_path(isa):
    # x with a row stride wider than K, and an expanded (stride 0) batch: the kernels index by stride.
    torch.manual_seed(1)
    base, w, b = torch.randn(20, 40), torch.randn(9, 30), torch.randn(9)
    x = base[:, 5:35]
    assert_close_to_ref(ops.linear_relu(x, w, b), linear_relu_ref(x.double(), w.double(), b.double()), torch.float32)
    row = torch.randn(1, 30).expand(11, 30)
    assert_close_to_ref(ops.linear_relu(row, w, b), linear_relu_ref(row.double(), w.double(), b.double()), torch.float32)


def test_nan_passes_the_fused_relu(isa):
    # The kernels' ReLU keeps NaN (v <= 0 is false for it), in both the dot-product and the broadcast form.
    x, b = torch.randn(5, 40), torch.randn(7)
    x[2, 3] = float("nan")
    for w in (torch.randn(7, 40), torch.randn(40, 7).t()):
        out = ops.linear_relu(x, w, b)
        assert out[2].isnan().all() and not out[[0, 1, 3, 4]].isnan().any()


def test_each_isa_runs_its_own_kernels():
    # The switch takes effect: every level that the CPU has gives its own rounding of the same product
    # (the kernels sum K in different orders, and level 0 is BLAS), all of them close to float64.
    levels = [level for level in ISA_LEVELS.values() if level <= best_isa()]
    if len(levels) < 2:
        pytest.skip("this CPU has no vector ISA the kernels use")
    torch.manual_seed(2)
    x, w, b = torch.randn(64, 1000), torch.randn(100, 1000), torch.randn(100)
    outs = []
    try:
        for level in levels:
            torch.ops.twolayer_ops_cpu.set_isa(level)
            outs.append(ops.linear_relu(x, w, b))
            assert_close_to_ref(outs[-1], linear_relu_ref(x.double(), w.double(), b.double()), torch.float32)
    finally:
        torch.ops.twolayer_ops_cpu.set_isa(-1)
    for (la, a), (lb, b_) in itertools.combinations(zip(levels, outs), 2):
        assert not torch.equal(a, b_), f"levels {la} and {lb} gave the same bits: the switch did not take effect"


def test_set_isa_rejects_what_it_cannot_run():
    before = torch.ops.twolayer_ops_cpu.info()[IN_USE]
    for level in (-2, 3):
        with pytest.raises(RuntimeError, match="level must be -1"):
            torch.ops.twolayer_ops_cpu.set_isa(level)
    if best_isa() < ISA_LEVELS["avx512"]:
        with pytest.raises(RuntimeError, match="this CPU lacks avx512"):
            torch.ops.twolayer_ops_cpu.set_isa(ISA_LEVELS["avx512"])
    assert torch.ops.twolayer_ops_cpu.info()[IN_USE] == before  # nothing changed


@pytest.mark.parametrize("name", ["none", "avx2", "sse"])
def test_environment_caps_the_isa(name):
    code = "import torch, twolayer_ops; print(*torch.ops.twolayer_ops_cpu.info())"
    env = {**os.environ, "TWOLAYER_OPS_CPU_ISA": name}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    in_use, best = map(int, done.stdout.split())
    if name in ISA_LEVELS:
        assert in_use == min(ISA_LEVELS[name], best)
    else:  # a value it does not know: the default, and a warning that names it
        assert in_use == best and "TWOLAYER_OPS_CPU_ISA=sse is not one of" in done.stderr
