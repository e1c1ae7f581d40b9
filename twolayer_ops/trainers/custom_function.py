"""Seed section 4: the library's kernel-backed MyReLU in place of the seed's Python one."""
import torch

from ..functional import MyReLU
from .common import D_IN, D_OUT, N, draw_raw, prepare, run_loop, sgd_by_hand


def train(steps=500, *, seed=0, device="cpu", backend="auto", dtype=torch.float32, lr=1e-6, log_every=None, on_log=None):
    dev, backend_name = prepare(steps, seed, device, backend, dtype)
    # The seed draws a CPU x and y first and then draws them again on the device; keep its order.
    torch.randn(N, D_IN)
    torch.randn(N, D_OUT)
    x, y, w1, w2 = draw_raw(dev, dtype)
    w1.requires_grad_()
    w2.requires_grad_()

    def step(n):
        y_pred = MyReLU.apply(x.mm(w1), backend).mm(w2)
        loss = (y_pred - y).pow(2).sum()
        sgd_by_hand(loss, (w1, w2), lr)
        return loss

    return run_loop("custom_function", step, steps, dev, backend_name, {"w1": w1, "w2": w2}, log_every=log_every, on_log=on_log)
