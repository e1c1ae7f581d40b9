"""Seed section 5-1, gradient accumulation: Adam steps every `accumulation_steps` micro-steps,
each micro-step's loss divided by it."""
import torch
from torch import nn

from ..modules import FusedLinearReLU
from .common import D_IN, D_OUT, H, N, fit, prepare


def train(steps=500, *, seed=0, device="cpu", backend="auto", dtype=torch.float32, lr=0.01, log_every=None,
          on_log=None, ddp=False, fused_step=False, accumulation_steps=8):
    dev, backend_name = prepare(steps, seed, device, backend, dtype)
    x, y = torch.randn(N, D_IN, device=dev).to(dtype), torch.randn(N, D_OUT, device=dev).to(dtype)
    model = nn.Sequential(FusedLinearReLU(D_IN, H, backend=backend), nn.Linear(H, D_OUT)).to(dev, dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr)
    return fit("grad_accum", model, x, y, dev, backend_name, steps=steps, optimizer=optimizer,
               accumulation_steps=accumulation_steps, ddp=ddp, fused_step=fused_step, log_every=log_every, on_log=on_log)
