"""Property tests: each kernel backend's forward and backward ops against the float64 reference on
problems hypothesis draws: sizes from 0 across the kernels' block edges, leading dimensions,
transposed, strided, sliced (padded rows) and broadcast operands with NaN in the memory around
them, bias or none, and exact zeros, signed zeros, NaN and infinities at drawn places. The backward is checked given the kernel's own saved output, its
contract, so a pre-activation that rounds to the other side of zero cannot fail it falsely.

The examples are the same every run (tests/conftest.py), so that CI is reproducible; for fresh
ones, `pytest tests/test_properties.py --hypothesis-profile=explore`. CUDA cases carry the `cuda`
marker and add float16 and bfloat16."""
import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twolayer_ops.backends import BACKENDS

from .cases import kernel_cases, phases
from .reference import assert_close_to_ref, linear_relu_ref

pytestmark = pytest.mark.parametrize("device,backend", kernel_cases())

SPECIALS = [0.0, -0.0, float("nan"), float("inf"), float("-inf")]
# Examples per case: Triton's interpreter (CPU) pays seconds per hundred small GEMMs, and on CUDA
# every new shape compiles or launches three Triton kernels.
EXAMPLES = {("cpu", "native"): 150, ("cpu", "triton"): 30, ("cuda", "native"): 120, ("cuda", "triton"): 40}
# Sizes: small ones cross every register and tile edge; large ones reach the CUDA tiles (up to 256)
# and, on the CPU, the switch from the small-GEMM kernels to BLAS (2^23 multiply-adds).
SIZES = st.one_of(st.integers(0, 20), st.integers(21, 70), st.integers(71, 300))
INTERPRETER_SIZES = st.one_of(st.integers(0, 20), st.integers(21, 70), st.integers(71, 130))


@dataclass
class Problem:
    lead: tuple  # leading dimensions of x; their product is M
    k: int
    n: int
    dtype: torch.dtype
    x_layout: str
    w_layout: str
    bias: str  # "none", "contiguous" or "strided"
    specials: list  # (tensor name, flat index fraction, value)
    seed: int


@st.composite
def problems(draw, sizes, dtypes):
    lead = draw(st.sampled_from([(), (1,), (2,), (3,)]))
    m = draw(sizes)
    lead = (m,) if not lead else (*lead, max(1, m // lead[0]))
    specials = draw(
        st.lists(st.tuples(st.sampled_from("xwb"), st.floats(0, 1, exclude_max=True), st.sampled_from(SPECIALS)),
                 max_size=4)
    )
    return Problem(
        lead=lead,
        k=draw(sizes),
        n=draw(sizes),
        dtype=draw(st.sampled_from(dtypes)),
        x_layout=draw(st.sampled_from(["contiguous", "transposed", "strided", "sliced", "broadcast"])),
        w_layout=draw(st.sampled_from(["contiguous", "transposed", "strided", "sliced"])),
        bias=draw(st.sampled_from(["none", "contiguous", "strided"])),
        specials=specials,
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def laid_out(values, layout):
    """A view of a copy of 2-D `values` in `layout` (the values unchanged). The memory between and
    after the elements holds NaN, so that a kernel reading past an operand's edge puts NaN in its result."""
    rows, cols = values.shape
    if layout == "transposed":
        return values.t().contiguous().t()
    if layout == "strided":  # every other column of a wider tensor
        wide = torch.full((rows, 2 * cols), float("nan"), dtype=values.dtype, device=values.device)
        wide[:, ::2] = values
        return wide[:, ::2]
    if layout == "sliced":  # the first columns of rows padded to a multiple of 8 (vector loads that end mid-row)
        wide = torch.full((rows + 1, (cols + 8) // 8 * 8), float("nan"), dtype=values.dtype, device=values.device)
        wide[:rows, :cols] = values
        return wide[:rows, :cols]
    return values.clone()


def make(problem, device):
    """(x, w, b) of the problem, in its dtype, layouts and special values."""
    g = torch.Generator().manual_seed(problem.seed)
    m = math.prod(problem.lead)
    k, n = problem.k, problem.n
    rows = 1 if problem.x_layout == "broadcast" else m
    x = torch.randn(rows, k, generator=g, dtype=torch.float64)
    w = torch.randn(n, k, generator=g, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    for name, where, value in problem.specials:
        t = {"x": x, "w": w, "b": b}[name]
        if t.numel():
            t.view(-1)[int(where * t.numel())] = value
    x, w, b = (t.to(device=device, dtype=problem.dtype) for t in (x, w, b))
    if problem.x_layout == "broadcast":  # stride 0 along M
        x = x.expand(m, k)
    else:
        x = laid_out(x, problem.x_layout)
    x = x.view(*problem.lead, k)  # splitting M keeps any layout a view
    w = laid_out(w, problem.w_layout)
    if problem.bias == "none":
        b = None
    elif problem.bias == "strided":
        b = laid_out(b[None], "strided")[0]
    return x, w, b


def backward_ref(grad_out, out, x, w):
    """The backward's contract in float64: mask = (out <= 0 ? 0 : g), given the kernel's own out."""
    n, k = w.shape
    rows = math.prod(x.shape[:-1])
    gm = torch.where(out.double() <= 0, 0.0, grad_out.double()).reshape(rows, n)
    x2 = x.double().reshape(rows, k)
    return (gm @ w.double()).reshape(x.shape), gm.t() @ x2, gm.sum(0)


def check(problem, device, ops):
    """ops: a Backend (or anything with its linear_relu and linear_relu_backward)."""
    x, w, b = make(problem, device)
    out = ops.linear_relu(x, w, b)
    ref = linear_relu_ref(*(t.double() if t is not None else None for t in (x, w, b)))
    assert_close_to_ref(out, ref.to(out.dtype) if out.dtype != torch.float64 else ref, problem.dtype, "output")

    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(problem.seed + 1), dtype=torch.float64)
    g = g.to(device=device, dtype=problem.dtype)
    if g.dim() == 2:
        g = g.t().contiguous().t()  # a transposed grad_out, as autograd can hand one
    mask = [True, True, b is not None]
    grads = ops.linear_relu_backward(g, out, x, w, mask)
    for name, got, want in zip(("grad_x", "grad_weight", "grad_bias"), grads, backward_ref(g, out, x, w)):
        if name == "grad_bias" and b is None:
            continue
        assert_close_to_ref(got, want.to(got.dtype) if got.dtype != torch.float64 else want, problem.dtype, name)


def test_forward_and_backward_match_reference(device, backend, monkeypatch):
    interpreted = device == "cpu" and backend == "triton"
    if device == "cuda" and backend == "triton":
        # One config, the one with the smallest tiles: the autotuner would time every config anew for
        # each drawn size (the test ran past 150 s on an H200). test_every_config_on_gpu runs them all.
        from twolayer_ops.triton_kernels import linear_relu as tk

        for kernel in (tk.linear_relu_fwd_kernel, tk.linear_relu_dx_kernel, tk.linear_relu_dw_db_kernel):
            small = min(kernel.configs, key=lambda c: tk.shared_memory_bytes(c, *kernel.tile_layout, 8))
            monkeypatch.setattr(kernel, "configs", [small])
    dtypes = [torch.float32, torch.float64] + ([torch.float16, torch.bfloat16] if device == "cuda" else [])
    if device == "cuda" and torch.cuda.get_device_capability()[0] < 8:
        dtypes.remove(torch.bfloat16)

    @settings(max_examples=EXAMPLES[device, backend], phases=phases(device),
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(problems(INTERPRETER_SIZES if interpreted else SIZES, dtypes))
    def holds(problem):
        check(problem, device, BACKENDS[backend])

    holds()
