"""FusedLinearReLU as a drop-in for nn.Sequential(nn.Linear, nn.ReLU)."""
import pytest
import torch
from torch import nn

from twolayer_ops import FusedLinearReLU

from .cases import kernel_cases


@pytest.mark.parametrize("bias", [True, False])
def test_same_initialization_as_linear(bias):
    torch.manual_seed(123)
    linear = nn.Linear(37, 11, bias=bias)
    after_linear = torch.rand(3)
    torch.manual_seed(123)
    fused = FusedLinearReLU(37, 11, bias=bias)
    after_fused = torch.rand(3)
    assert fused.weight.shape == linear.weight.shape == (11, 37)
    assert torch.equal(fused.weight, linear.weight)
    assert (fused.bias is None) == (linear.bias is None)
    if bias:
        assert torch.equal(fused.bias, linear.bias)
    assert torch.equal(after_linear, after_fused), "the RNG must advance exactly as nn.Linear's does"
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in linear.named_parameters()]


def test_state_dict_both_ways():
    linear, fused = nn.Linear(9, 4), FusedLinearReLU(9, 4)
    fused.load_state_dict(linear.state_dict())
    assert torch.equal(fused.weight, linear.weight) and torch.equal(fused.bias, linear.bias)
    other = nn.Linear(9, 4)
    other.load_state_dict(FusedLinearReLU(9, 4).state_dict())
    assert set(other.state_dict()) == {"weight", "bias"}


def test_from_linear_copies_and_draws_no_random_numbers():
    linear = nn.Linear(6, 3, dtype=torch.float64)
    state = torch.get_rng_state()
    fused = FusedLinearReLU.from_linear(linear, backend="native")
    assert torch.equal(torch.get_rng_state(), state)
    assert fused.weight.dtype == torch.float64 and fused.backend == "native"
    assert torch.equal(fused.weight, linear.weight) and fused.weight.data_ptr() != linear.weight.data_ptr()
    assert FusedLinearReLU.from_linear(nn.Linear(6, 3, bias=False)).bias is None


def test_repr():
    assert repr(FusedLinearReLU(5, 2, bias=False, backend="torch")) == (
        "FusedLinearReLU(in_features=5, out_features=2, bias=False, backend='torch')"
    )


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'cudnn'"):
        FusedLinearReLU(3, 2, backend="cudnn")


@pytest.mark.parametrize("device,backend", kernel_cases())
def test_matches_sequential(device, backend):
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(20, 8), nn.ReLU()).to(device)
    fused = FusedLinearReLU.from_linear(seq[0], backend=backend)
    x = torch.randn(2, 5, 20, device=device)
    out_seq, out_fused = seq(x), fused(x)
    torch.testing.assert_close(out_fused, out_seq)
    out_seq.square().sum().backward()
    out_fused.square().sum().backward()
    torch.testing.assert_close(fused.weight.grad, seq[0].weight.grad)
    torch.testing.assert_close(fused.bias.grad, seq[0].bias.grad)
    assert fused.bias.grad.abs().sum() > 0
