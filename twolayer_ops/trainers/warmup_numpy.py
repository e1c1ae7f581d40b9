"""Seed section 1, the numpy warm-up: forward and backward written by hand. The baseline."""
import time

import numpy as np
import torch

from .common import D_IN, D_OUT, H, N, TrainResult, prepare


def train(steps=500, *, seed=0, device="cpu", backend="auto", dtype=torch.float32, lr=1e-6, log_every=None, on_log=None):
    dev, _ = prepare(steps, seed, device, backend, dtype)
    if dev.type != "cpu":
        raise ValueError("the numpy recipe runs on the CPU only")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"the numpy recipe supports float32 and float64, got {dtype}")
    np.random.seed(seed)
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    x, y, w1, w2 = (np.random.randn(*s).astype(np_dtype) for s in ((N, D_IN), (N, D_OUT), (D_IN, H), (H, D_OUT)))
    losses = []
    start = time.perf_counter()
    for n in range(steps):
        h = x.dot(w1)
        h_relu = np.maximum(h, 0)
        y_pred = h_relu.dot(w2)
        losses.append(float(np.square(y_pred - y).sum()))
        if log_every and (n + 1) % log_every == 0:
            (on_log or _print)(n + 1 - log_every, losses[-log_every:])

        grad_y_pred = 2 * (y_pred - y)
        grad_w2 = h_relu.T.dot(grad_y_pred)
        grad_h = grad_y_pred.dot(w2.T)
        grad_h[h < 0] = 0
        grad_w1 = x.T.dot(grad_h)
        w1 -= lr * grad_w1
        w2 -= lr * grad_w2
    wall = time.perf_counter() - start
    return TrainResult("numpy", losses, {"w1": torch.from_numpy(w1), "w2": torch.from_numpy(w2)}, wall, "cpu", "numpy")


def _print(first_step, losses):
    for i, loss in enumerate(losses):
        print(first_step + i, loss)
