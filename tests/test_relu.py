"""The standalone ReLU kernels: relu() and the seed's MyReLU, for every kernel backend."""
import pytest
import torch
from torch.library import opcheck

from twolayer_ops import MyReLU, relu

from .cases import kernel_cases, poison_allocator
from .reference import assert_close_to_ref, relu_ref

pytestmark = pytest.mark.parametrize("device,backend", kernel_cases())


def relu_ops(backend):
    suffix = "" if backend == "native" else f"_{backend}"
    return getattr(torch.ops.twolayer_ops, f"relu{suffix}"), getattr(torch.ops.twolayer_ops, f"relu_backward{suffix}")


def special_values(device, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 37, generator=g, dtype=torch.float64)
    x[0, :6] = torch.tensor([0.0, -0.0, float("nan"), float("inf"), float("-inf"), 1e-300])
    return x.to(device=device, dtype=dtype)


@pytest.mark.parametrize("apply", ["relu", "MyReLU"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_matches_reference(device, backend, apply, dtype):
    x = special_values(device, dtype).requires_grad_()
    x_ref = x.detach().double().requires_grad_()
    poison_allocator(x.shape, dtype, device)
    out = relu(x, backend=backend) if apply == "relu" else MyReLU.apply(x, backend)
    ref = relu_ref(x_ref)
    assert_close_to_ref(out, ref.to(dtype), dtype)
    grad = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    assert_close_to_ref(x.grad, x_ref.grad.to(dtype), dtype, "grad")
    assert x.grad[0, 0] == 0 and x.grad[0, 1] == 0, "gradient at exact zero must be 0"


def test_gradcheck(device, backend):
    x = torch.randn(4, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(device)
    x = torch.where(x.abs() < 1e-3, 0.5, x).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: relu(t, backend=backend), (x,))
    assert torch.autograd.gradcheck(lambda t: MyReLU.apply(t, backend), (x,))
    assert torch.autograd.gradgradcheck(lambda t: relu(t, backend=backend), (x,))
    assert torch.autograd.gradgradcheck(lambda t: MyReLU.apply(t, backend), (x,))


def test_layouts_and_empty(device, backend):
    base = torch.randn(8, 12, dtype=torch.float64, device=device)
    for x in (base.t(), base[:, ::3], base[1:, 2:], torch.empty(0, 3, device=device, dtype=torch.float64)):
        x = x.requires_grad_()
        out = relu(x, backend=backend)
        assert_close_to_ref(out, relu_ref(x.detach()), torch.float64)
        out.backward(torch.ones_like(out))
        torch.testing.assert_close(x.grad, (x.detach() > 0).double())


def test_seed_training_loop(device, backend):
    """Section 4 of the seed: MyReLU.apply(x.mm(w1)).mm(w2) drives the loss down."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 100, generator=g).to(device), torch.randn(64, 10, generator=g).to(device)
    w1 = torch.randn(100, 30, generator=g).to(device).requires_grad_()
    w2 = torch.randn(30, 10, generator=g).to(device).requires_grad_()
    losses = []
    for _ in range(20):
        loss = (MyReLU.apply(x.mm(w1), backend).mm(w2) - y).pow(2).sum()
        loss.backward()
        with torch.no_grad():
            for w in (w1, w2):
                w -= 1e-5 * w.grad
                w.grad.zero_()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("requires_grad", [True, False])
@pytest.mark.parametrize("grad_mode", [True, False], ids=["grad", "no_grad"])
def test_output_is_tracked_like_reference(device, backend, requires_grad, grad_mode):
    x = torch.randn(4, 5, device=device, requires_grad=requires_grad)
    with torch.set_grad_enabled(grad_mode):
        out = relu(x, backend=backend)
    assert out.requires_grad == (requires_grad and grad_mode) and (out.grad_fn is None) == (not out.requires_grad)


def test_opcheck(device, backend):
    fwd, bwd = relu_ops(backend)
    for x in (torch.randn(3, 5, device=device), torch.randn(4, device=device).expand(3, 4), torch.randn(2, 3, 4, device=device).transpose(0, 2)):
        opcheck(fwd, (x.requires_grad_(),))
        out = fwd(x.detach())
        opcheck(bwd, (torch.randn_like(out), out))
        opcheck(bwd, (torch.randn_like(out).requires_grad_(), out))


def test_compile_fullgraph(device, backend):
    torch._dynamo.reset()
    x = torch.randn(6, 7, device=device, requires_grad=True)
    out = torch.compile(lambda t: relu(t, backend=backend) * 2, fullgraph=True)(x)
    out.sum().backward()
    torch.testing.assert_close(out, torch.relu(x.detach()) * 2)
    torch.testing.assert_close(x.grad, 2 * (x.detach() > 0).float())
