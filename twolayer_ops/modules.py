"""nn.Modules built on the fused op."""
import torch
from torch import nn

from .backends import BACKEND_NAMES
from .functional import linear_relu


class FusedLinearReLU(nn.Module):
    """A drop-in for nn.Sequential(nn.Linear(in, out, bias), nn.ReLU()) on the fused op.

    Same parameter names, shapes and initialization as nn.Linear (it runs nn.Linear's own
    reset_parameters, so the same seed draws the same weights), and its state_dict loads
    into and from nn.Linear."""

    def __init__(self, in_features, out_features, bias=True, *, backend="auto", device=None, dtype=None):
        super().__init__()
        if backend not in BACKEND_NAMES:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKEND_NAMES)}")
        factory = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.backend = backend
        self.weight = nn.Parameter(torch.empty((out_features, in_features), **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    reset_parameters = nn.Linear.reset_parameters

    @classmethod
    def from_linear(cls, linear, *, backend="auto"):
        """A FusedLinearReLU holding a copy of `linear`'s parameters (draws no random numbers)."""
        fused = nn.utils.skip_init(
            cls,
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            backend=backend,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        fused.load_state_dict(linear.state_dict())
        return fused

    def forward(self, x):
        return linear_relu(x, self.weight, self.bias, backend=self.backend)

    def extra_repr(self):
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, backend={self.backend!r}"
        )
