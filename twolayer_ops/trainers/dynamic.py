"""Seed section 8, control flow and weight sharing: DynamicNet reuses its middle layer 0 to 3
times per step (Python's `random`, seeded with `seed`), SGD with momentum 0.9."""
import torch

from ..modules import DynamicNet
from .common import D_IN, D_OUT, H, N, fit, prepare


def train(steps=500, *, seed=0, device="cpu", backend="auto", dtype=torch.float32, lr=1e-4, log_every=None,
          on_log=None, ddp=False):
    dev, backend_name = prepare(steps, seed, device, backend, dtype, seed_python=True)
    x, y = torch.randn(N, D_IN).to(dev, dtype), torch.randn(N, D_OUT).to(dev, dtype)  # the seed draws on the CPU
    model = DynamicNet(D_IN, H, D_OUT, backend=backend).to(dev, dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return fit("dynamic", model, x, y, dev, backend_name, steps=steps, optimizer=optimizer, ddp=ddp,
               find_unused_parameters=True, log_every=log_every, on_log=on_log)
