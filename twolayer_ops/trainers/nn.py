"""Seed section 5, nn: nn.Sequential(FusedLinearReLU, nn.Linear), MSE-sum loss, manual update."""
import torch
from torch import nn

from ..modules import FusedLinearReLU
from .common import D_IN, D_OUT, H, N, fit, prepare


def train(steps=500, *, seed=0, device="cpu", backend="auto", dtype=torch.float32, lr=1e-4, log_every=None,
          on_log=None, ddp=False, fused_step=False):
    dev, backend_name = prepare(steps, seed, device, backend, dtype)
    x, y = torch.randn(N, D_IN, device=dev).to(dtype), torch.randn(N, D_OUT, device=dev).to(dtype)
    model = nn.Sequential(FusedLinearReLU(D_IN, H, backend=backend), nn.Linear(H, D_OUT)).to(dev, dtype)
    return fit("nn", model, x, y, dev, backend_name, steps=steps, lr=lr, ddp=ddp, fused_step=fused_step, log_every=log_every, on_log=on_log)
