"""Seed section 3, autograd: raw weights, loss.backward(), a manual update; layer 1 is linear_relu."""
import torch

from ..functional import linear_relu
from .common import draw_raw, prepare, run_loop, sgd_by_hand


def train(steps=500, *, seed=0, device="cpu", backend="auto", dtype=torch.float32, lr=1e-6, log_every=None, on_log=None):
    dev, backend_name = prepare(steps, seed, device, backend, dtype)
    x, y, w1, w2 = draw_raw(dev, dtype)
    w1 = w1.t().contiguous().requires_grad_()  # stored (H, D_in), the op's weight layout
    w2.requires_grad_()

    def step(n):
        y_pred = linear_relu(x, w1, backend=backend).mm(w2)
        loss = (y_pred - y).pow(2).sum()
        sgd_by_hand(loss, (w1, w2), lr)
        return loss

    return run_loop("autograd", step, steps, dev, backend_name, {"w1": w1.detach().t(), "w2": w2}, log_every=log_every, on_log=on_log)
