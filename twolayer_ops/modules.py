"""nn.Modules built on the fused op."""
import random

import torch
from torch import nn

from .backends import check_backend_name
from .functional import linear_relu


class FusedLinearReLU(nn.Module):
    """A drop-in for nn.Sequential(nn.Linear(in, out, bias), nn.ReLU()) on the fused op.

    Same parameter names, shapes and initialization as nn.Linear (it runs nn.Linear's own
    reset_parameters, so the same seed draws the same weights), and its state_dict loads
    into and from nn.Linear."""

    def __init__(self, in_features, out_features, bias=True, *, backend="auto", device=None, dtype=None):
        super().__init__()
        check_backend_name(backend)
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


class TwoLayerNet(nn.Module):
    """The seed's custom module (section 7): linear1 -> ReLU -> linear2, layer 1 fused.
    Parameter names match the seed's, so its state_dict loads here unchanged."""

    def __init__(self, D_in, H, D_out, *, backend="auto"):
        super().__init__()
        self.linear1 = FusedLinearReLU(D_in, H, backend=backend)
        self.linear2 = nn.Linear(H, D_out)

    def forward(self, x):
        return self.linear2(self.linear1(x))


class DynamicNet(nn.Module):
    """The seed's dynamic net (section 8): the middle layer is reused 0 to 3 times, drawn per
    forward from `rng` (the `random` module by default, as in the seed)."""

    def __init__(self, D_in, H, D_out, *, backend="auto", rng=None):
        super().__init__()
        self.input_linear = FusedLinearReLU(D_in, H, backend=backend)
        self.middle_linear = FusedLinearReLU(H, H, backend=backend)
        self.output_linear = nn.Linear(H, D_out)
        self.rng = rng

    def forward(self, x):
        h_relu = self.input_linear(x)
        for _ in range((self.rng or random).randint(0, 3)):
            h_relu = self.middle_linear(h_relu)
        return self.output_linear(h_relu)
