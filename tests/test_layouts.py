"""Sparse and nested operands, which F.linear takes: a contiguous jagged nested x runs the kernels on
its packed values; the others run torch's own ops under backend "auto" (and "torch"), and a named
kernel backend refuses them with an error that says which operand and what to do."""
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import twolayer_ops
from twolayer_ops import linear_relu, relu

from .cases import kernel_cases
from .reference import assert_close_to_ref

OFFSETS = [0, 2, 5, 9, 16]  # four sequences of 2, 3, 4 and 7 rows


class OpLog(TorchDispatchMode):
    """The names of the ops dispatched under it."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


def jagged(values):
    return torch.nested.nested_tensor_from_jagged(values, torch.tensor(OFFSETS, device=values.device))


def leaves(*shapes, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64).to(device).requires_grad_() for s in shapes]


@pytest.mark.parametrize("device,backend", kernel_cases())
@pytest.mark.parametrize("inner", [(), (3,)], ids=["BxJxK", "BxJx3xK"])
def test_jagged_x_runs_the_kernels_on_its_values(device, backend, inner):
    values, w, b = leaves((OFFSETS[-1], *inner, 33), (7, 33), (7,), device=device)
    x = jagged(values)
    with OpLog() as log:
        out = linear_relu(x, w, b, backend=backend)
    assert f"twolayer_ops::linear_relu{'' if backend == 'native' else '_' + backend}" in log.names
    ref = torch.relu(F.linear(jagged(values), w, b))
    assert out.is_nested and out.layout is torch.jagged and out.shape[0] == 4 and out.shape[2:] == (*inner, 7)
    assert torch.equal(out.offsets().cpu(), torch.tensor(OFFSETS))
    assert_close_to_ref(out.values(), ref.values())
    grad = torch.randn_like(ref.values())
    got = torch.autograd.grad(out.values(), (values, w, b), grad)
    want = torch.autograd.grad(ref.values(), (values, w, b), grad)
    for name, g, r in zip(("grad x", "grad weight", "grad bias"), got, want):
        assert_close_to_ref(g, r, what=name)


@pytest.mark.parametrize("backend", ["native", "triton"])
@settings(max_examples=25)
@given(lengths=st.lists(st.integers(0, 9), min_size=1, max_size=5), k=st.integers(1, 40), n=st.integers(1, 40))
def test_jagged_x_of_any_lengths(backend, lengths, k, n):
    """Batches of 1 to 5 sequences of 0 to 9 rows (empty ones too) across the CPU kernels' edges."""
    if backend not in twolayer_ops.available_backends("cpu"):
        pytest.skip(f"backend {backend!r} does not run on the CPU here")
    offsets = torch.tensor([0, *lengths]).cumsum(0)
    values, w, b = leaves((int(offsets[-1]), k), (n, k), (n,), device="cpu", seed=len(lengths))
    x = torch.nested.nested_tensor_from_jagged(values, offsets)
    out, ref = linear_relu(x, w, b, backend=backend), torch.relu(F.linear(x, w, b))
    assert_close_to_ref(out.values(), ref.values())
    if values.numel():
        grad = torch.randn_like(ref.values())
        for g, r in zip(torch.autograd.grad(out.values(), (values, w, b), grad),
                        torch.autograd.grad(ref.values(), (values, w, b), grad)):
            assert_close_to_ref(g, r)


@pytest.mark.parametrize("device,backend", kernel_cases())
def test_jagged_x_through_the_module_and_relu(device, backend):
    layer = twolayer_ops.FusedLinearReLU(33, 7, backend=backend, device=device, dtype=torch.float64)
    (values,) = leaves((OFFSETS[-1], 33), device=device)
    x = jagged(values)
    out = layer(x)
    assert_close_to_ref(out.values(), torch.relu(F.linear(values, layer.weight, layer.bias)))
    out.values().sum().backward()
    assert layer.weight.grad is not None and values.grad is not None
    h = relu(jagged(values - 0.5), backend=backend)
    assert h.is_nested and torch.equal(h.values(), torch.relu(values - 0.5))


def sparse_and_nested_cases(device):
    """(operand, its layout as errors name it, x, weight, bias): forms that torch's own ops run and
    no kernel takes."""
    x, w, b = (t.detach() for t in leaves((5, 33), (7, 33), (7,), device=device))
    transposed = jagged(torch.randn(OFFSETS[-1], 33, 4, dtype=torch.float64, device=device)).transpose(1, 2)
    cases = [
        ("x", "sparse_coo", x.to_sparse(), w, b),
        ("x", "sparse_csr", x.to_sparse_csr(), w, b),
        ("x", "strided-layout nested", torch.nested.nested_tensor([x, x[:2]]), w, b),
        ("x", "non-contiguous jagged nested", transposed, w[:, :4], b),
        ("bias", "sparse_coo", x, w, b.to_sparse()),  # (torch's ops raise their own error)
    ]
    if device == "cpu":  # (CUDA's addmm takes no CSR right operand)
        cases.append(("weight", "sparse_csr", x, w.to_sparse_csr(), None))
    return cases


def same_result(out, ref):
    if ref.is_nested:
        out, ref = out.unbind(), ref.unbind()
        assert len(out) == len(ref)
        return all(torch.allclose(a, r) for a, r in zip(out, ref))
    return out.layout == ref.layout and torch.allclose(out, ref)


@pytest.mark.parametrize("device", [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_other_sparse_and_nested_operands_run_torchs_ops(device, backend):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    for operand, layout, x, w, b in sparse_and_nested_cases(device):
        try:
            ref = torch.relu(F.linear(x, w, b))
        except (RuntimeError, ValueError) as err:  # then ours must fail the same way
            with pytest.raises(type(err), match=re.escape(str(err))):
                linear_relu(x, w, b, backend=backend)
            continue
        assert same_result(linear_relu(x, w, b, backend=backend), ref), f"{layout} {operand}"


@pytest.mark.parametrize("device,backend", kernel_cases())
def test_a_kernel_backend_refuses_them_by_name(device, backend):
    for operand, layout, x, w, b in sparse_and_nested_cases(device):
        with pytest.raises(TypeError, match=f"backend '{backend}' has no kernel for a {layout} {operand} .*backend='auto'"):
            linear_relu(x, w, b, backend=backend)
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        linear_relu(x.to_sparse(), w, b, backend="cuda")


def test_jagged_x_compiles_fullgraph():
    layer = twolayer_ops.FusedLinearReLU(33, 7)
    (values,) = leaves((OFFSETS[-1], 33), device="cpu")
    values = values.detach().float().requires_grad_()
    out = torch.compile(layer, fullgraph=True)(jagged(values))
    assert_close_to_ref(out.values(), torch.relu(F.linear(values, layer.weight, layer.bias)))
    out.values().sum().backward()
    assert values.grad is not None and layer.weight.grad is not None
