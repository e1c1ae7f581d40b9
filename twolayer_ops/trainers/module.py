"""Seed section 7, a custom nn.Module: TwoLayerNet on FusedLinearReLU, trained with SGD."""
import torch

from ..modules import TwoLayerNet
from .common import D_IN, D_OUT, H, N, fit, prepare


def train(steps=500, *, seed=0, device="cpu", backend="auto", dtype=torch.float32, lr=1e-4, log_every=None,
          on_log=None, ddp=False, fused_step=False):
    dev, backend_name = prepare(steps, seed, device, backend, dtype)
    x, y = torch.randn(N, D_IN).to(dev, dtype), torch.randn(N, D_OUT).to(dev, dtype)  # the seed draws on the CPU
    model = TwoLayerNet(D_IN, H, D_OUT, backend=backend).to(dev, dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr)
    return fit("module", model, x, y, dev, backend_name, steps=steps, optimizer=optimizer, ddp=ddp, fused_step=fused_step,
               log_every=log_every, on_log=on_log)
