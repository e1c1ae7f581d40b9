"""The CPU small-GEMM kernels (csrc/cpu_gemm_avx2.cpp) at every edge of their register blocks:
3x4 output blocks over 8-wide K steps forward, 6x16 blocks backward and for a transposed weight's
forward, and the split over threads."""
import itertools

import pytest
import torch

from twolayer_ops.ops import ops

from .reference import assert_close_to_ref, linear_relu_ref

# Rows and columns around the block sizes (3, 4, 6, 8, 16), K around the 8-wide vector.
EDGE_SHAPES = list(itertools.product([1, 2, 3, 5, 7, 13], [1, 3, 4, 5, 8, 15, 16, 17, 33], [1, 7, 8, 9, 24, 65]))
# Large enough to be split over threads, and not multiples of any block size.
SPLIT_SHAPES = [(64, 1000, 100), (50, 333, 77), (129, 257, 130)]


def fp64_grads(x, w, b, g):
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, w, b))
    out = linear_relu_ref(x64, w64, b64)
    out.backward(g.double())
    return out.detach(), x64.grad, w64.grad, b64.grad


@pytest.mark.parametrize("layout", ["rowmajor", "transposed"])
@pytest.mark.parametrize("M,N,K", EDGE_SHAPES[::5] + SPLIT_SHAPES)
def test_forward_and_backward_against_float64(M, N, K, layout):
    torch.manual_seed(M * 10007 + N * 101 + K)
    x, w, b, g = torch.randn(M, K), weight(N, K, layout), torch.randn(N), torch.randn(M, N)
    ref, gx, gw, gb = fp64_grads(x, w, b, g)
    out = ops.linear_relu(x, w, b)
    assert_close_to_ref(out, ref, torch.float32, "forward")
    assert_close_to_ref(ops.linear_relu(x, w, None), linear_relu_ref(x.double(), w.double()), torch.float32, "no bias")
    dx, dw, db = ops.linear_relu_backward(g, out, x, w, [True, True, True])
    for got, want, what in [(dx, gx, "grad_x"), (dw, gw, "grad_w"), (db, gb, "grad_b")]:
        assert_close_to_ref(got, want, torch.float32, what)


def weight(N, K, layout):
    """(N, K) weight, row-major or the transpose of a row-major (K, N) matrix (the seed's raw programs)."""
    return torch.randn(N, K) if layout == "rowmajor" else torch.randn(K, N).t()


@pytest.mark.parametrize("layout", ["rowmajor", "transposed"])
@pytest.mark.parametrize("M,N,K", EDGE_SHAPES)
def test_every_block_edge_elementwise(M, N, K, layout):
    # Element by element: a wrong tail row or column cannot hide in a norm.
    torch.manual_seed(0)
    x, w, b = torch.randn(M, K), weight(N, K, layout), torch.randn(N)
    want = linear_relu_ref(x.double(), w.double(), b.double())
    torch.testing.assert_close(ops.linear_relu(x, w, b).double(), want, rtol=1e-5, atol=1e-5 * K)
    g = torch.randn(M, N)
    out = ops.linear_relu(x, w, b)
    gm = (g * (out > 0)).double()
    dx, dw, _ = ops.linear_relu_backward(g, out, x, w, [True, True, False])
    torch.testing.assert_close(dx.double(), gm @ w.double(), rtol=1e-5, atol=1e-5 * N)
    torch.testing.assert_close(dw.double(), gm.t() @ x.double(), rtol=1e-5, atol=1e-5 * M)


def test_strided_operands_take_the_right_path():
    # x with a row stride wider than K, and an expanded (stride 0) batch: the kernels index by stride.
    torch.manual_seed(1)
    base, w, b = torch.randn(20, 40), torch.randn(9, 30), torch.randn(9)
    x = base[:, 5:35]
    assert_close_to_ref(ops.linear_relu(x, w, b), linear_relu_ref(x.double(), w.double(), b.double()), torch.float32)
    row = torch.randn(1, 30).expand(11, 30)
    assert_close_to_ref(ops.linear_relu(row, w, b), linear_relu_ref(row.double(), w.double(), b.double()), torch.float32)
