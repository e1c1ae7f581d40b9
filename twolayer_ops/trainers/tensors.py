"""The raw-tensor program (the tutorial's section 2): forward and backward by hand, with the
library's ops doing layer 1 (linear_relu forward, linear_relu_backward for its weight gradient)."""
import torch

from ..backends import resolve_backend
from .common import draw_raw, prepare, run_loop


def train(steps=500, *, seed=0, device="cpu", backend="auto", dtype=torch.float32, lr=1e-6, log_every=None, on_log=None):
    dev, _ = prepare(steps, seed, device, backend, dtype)
    x, y, w1, w2 = draw_raw(dev, dtype)
    w1 = w1.t().contiguous()  # stored (H, D_in), the op's weight layout: its update stays contiguous
    ops = resolve_backend(backend, x)

    def step(n):
        h_relu = ops.linear_relu(x, w1, None)
        y_pred = h_relu.mm(w2)
        loss = (y_pred - y).pow(2).sum()

        grad_y_pred = 2.0 * (y_pred - y)
        grad_w2 = h_relu.t().mm(grad_y_pred)
        grad_h_relu = grad_y_pred.mm(w2.t())
        _, grad_w1, _ = ops.linear_relu_backward(grad_h_relu, h_relu, x, w1, [False, True, False])
        w1.sub_(lr * grad_w1)
        w2.sub_(lr * grad_w2)
        return loss

    return run_loop("tensors", step, steps, dev, ops.name, {"w1": w1.t(), "w2": w2}, log_every=log_every, on_log=on_log)
