"""The seed document's training programs, ported to plain torch/numpy as the parity reference.

Each is the seed's code with its typos fixed (a stray `.` after numpy calls, a `forward`
docstring outside the function), `print(n, loss)` replaced by collecting the losses, and the
device made a parameter. Each returns (losses, final parameters)."""
import random

import numpy as np
import torch
import torch.nn as nn

N, D_in, H, D_out = 64, 1000, 100, 10


def numpy_warmup(steps=500, seed=0):
    np.random.seed(seed)
    x = np.random.randn(N, D_in)
    y = np.random.randn(N, D_out)
    w1 = np.random.randn(D_in, H)
    w2 = np.random.randn(H, D_out)
    lr = 1e-6
    losses = []
    for n in range(steps):
        h = x.dot(w1)
        h_relu = np.maximum(h, 0)
        y_pred = h_relu.dot(w2)
        loss = np.square(y_pred - y).sum()
        losses.append(float(loss))
        grad_y_pred = 2 * (y_pred - y)
        grad_w2 = h_relu.T.dot(grad_y_pred)
        grad_h_relu = grad_y_pred.dot(w2.T)
        grad_h = grad_h_relu.copy()
        grad_h[h < 0] = 0
        grad_w1 = x.T.dot(grad_h)
        w1 -= lr * grad_w1
        w2 -= lr * grad_w2
    return losses, {"w1": w1, "w2": w2}


def tensors(steps=500, seed=0, device="cpu"):
    """The tutorial's raw-tensor program, which the seed skips (its section 2)."""
    torch.manual_seed(seed)
    x = torch.randn(N, D_in, device=device)
    y = torch.randn(N, D_out, device=device)
    w1 = torch.randn(D_in, H, device=device)
    w2 = torch.randn(H, D_out, device=device)
    lr = 1e-6
    losses = []
    for t in range(steps):
        h = x.mm(w1)
        h_relu = h.clamp(min=0)
        y_pred = h_relu.mm(w2)
        loss = (y_pred - y).pow(2).sum()
        losses.append(loss.item())
        grad_y_pred = 2.0 * (y_pred - y)
        grad_w2 = h_relu.t().mm(grad_y_pred)
        grad_h_relu = grad_y_pred.mm(w2.t())
        grad_h = grad_h_relu.clone()
        grad_h[h < 0] = 0
        grad_w1 = x.t().mm(grad_h)
        w1 -= lr * grad_w1
        w2 -= lr * grad_w2
    return losses, {"w1": w1, "w2": w2}


def autograd(steps=500, seed=0, device="cpu"):
    torch.manual_seed(seed)
    x = torch.randn(N, D_in, device=device)
    y = torch.randn(N, D_out, device=device)
    w1 = torch.randn(D_in, H, device=device, requires_grad=True)
    w2 = torch.randn(H, D_out, device=device, requires_grad=True)
    lr = 1e-6
    losses = []
    for n in range(steps):
        y_pred = x.mm(w1).clamp(min=0).mm(w2)
        loss = (y_pred - y).pow(2).sum()
        losses.append(loss.item())
        loss.backward()
        with torch.no_grad():
            w1 -= lr * w1.grad
            w2 -= lr * w2.grad
            w1.grad.zero_()
            w2.grad.zero_()
    return losses, {"w1": w1.detach(), "w2": w2.detach()}


class MyReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        grad_x = grad_output.clone()
        grad_x[x < 0] = 0
        return grad_x


def custom_function(steps=500, seed=0, device="cpu"):
    torch.manual_seed(seed)
    x = torch.randn(N, D_in, requires_grad=True)  # drawn and then replaced, as in the seed
    y = torch.randn(N, D_out, requires_grad=True)
    x = torch.randn(N, D_in, device=device)
    y = torch.randn(N, D_out, device=device)
    w1 = torch.randn(D_in, H, device=device, requires_grad=True)
    w2 = torch.randn(H, D_out, device=device, requires_grad=True)
    learning_rate = 1e-6
    losses = []
    for t in range(steps):
        y_pred = MyReLU.apply(x.mm(w1)).mm(w2)
        loss = (y_pred - y).pow(2).sum()
        losses.append(loss.item())
        loss.backward()
        with torch.no_grad():
            w1 -= learning_rate * w1.grad
            w2 -= learning_rate * w2.grad
            w1.grad.zero_()
            w2.grad.zero_()
    return losses, {"w1": w1.detach(), "w2": w2.detach()}


def _sequential(device):
    return nn.Sequential(nn.Linear(D_in, H), nn.ReLU(), nn.Linear(H, D_out)).to(device)


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def nn_manual(steps=500, seed=0, device="cpu"):
    torch.manual_seed(seed)
    x = torch.randn(N, D_in, device=device)
    y = torch.randn(N, D_out, device=device)
    model = _sequential(device)
    loss_fn = nn.MSELoss(reduction="sum")
    lr = 1e-4
    losses = []
    for n in range(steps):
        y_pred = model(x)
        loss = loss_fn(y_pred, y)
        losses.append(loss.item())
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for param in model.parameters():
                param -= lr * param.grad
    return losses, _params(model)


def grad_accum(steps=500, seed=0, device="cpu", accumulation_steps=8):
    torch.manual_seed(seed)
    x = torch.randn(N, D_in, device=device)
    y = torch.randn(N, D_out, device=device)
    model = _sequential(device)
    lr = 0.01
    optimizer = torch.optim.Adam(model.parameters(), lr)
    loss_fn = nn.MSELoss(reduction="sum")
    losses = []
    for n in range(steps):
        y_pred = model(x)
        loss = loss_fn(y_pred, y)
        losses.append(loss.item())
        loss = loss / accumulation_steps
        loss.backward()
        if (n + 1) % accumulation_steps == 0:
            optimizer.step()
            optimizer.zero_grad()
    return losses, _params(model)


def optim(steps=500, seed=0, device="cpu"):
    torch.manual_seed(seed)
    x = torch.randn(N, D_in, device=device)
    y = torch.randn(N, D_out, device=device)
    model = _sequential(device)
    lr = 1e-4
    optimizer = torch.optim.Adam(model.parameters(), lr)
    loss_fn = nn.MSELoss(reduction="sum")
    losses = []
    for n in range(steps):
        y_pred = model(x)
        loss = loss_fn(y_pred, y)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return losses, _params(model)


class TwoLayerNet(nn.Module):
    def __init__(self, D_in, H, D_out):
        super().__init__()
        self.linear1 = nn.Linear(D_in, H)
        self.linear2 = nn.Linear(H, D_out)

    def forward(self, x):
        h_relu = self.linear1(x).clamp(min=0)
        return self.linear2(h_relu)


def module(steps=500, seed=0, device="cpu"):
    torch.manual_seed(seed)
    x = torch.randn(N, D_in).to(device)
    y = torch.randn(N, D_out).to(device)
    model = TwoLayerNet(D_in, H, D_out).to(device)
    loss_fn = nn.MSELoss(reduction="sum")
    optimizer = torch.optim.SGD(model.parameters(), 1e-4)
    losses = []
    for n in range(steps):
        y_pred = model(x)
        loss = loss_fn(y_pred, y)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return losses, _params(model)


class DynamicNet(nn.Module):
    def __init__(self, D_in, H, D_out):
        super().__init__()
        self.input_linear = nn.Linear(D_in, H)
        self.middle_linear = nn.Linear(H, H)
        self.output_linear = nn.Linear(H, D_out)

    def forward(self, x):
        """Reuses middle_linear a random 0 to 3 times: a dynamic graph with weight sharing."""
        h_relu = self.input_linear(x).clamp(min=0)
        for _ in range(random.randint(0, 3)):
            h_relu = self.middle_linear(h_relu).clamp(min=0)
        return self.output_linear(h_relu)


def dynamic(steps=500, seed=0, device="cpu"):
    torch.manual_seed(seed)
    random.seed(seed)
    x = torch.randn(N, D_in).to(device)
    y = torch.randn(N, D_out).to(device)
    model = DynamicNet(D_in, H, D_out).to(device)
    loss_fn = torch.nn.MSELoss(reduction="sum")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    losses = []
    for n in range(steps):
        y_pred = model(x)
        loss = loss_fn(y_pred, y)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return losses, _params(model)


PROGRAMS = {
    "numpy": numpy_warmup,
    "tensors": tensors,
    "autograd": autograd,
    "custom_function": custom_function,
    "nn": nn_manual,
    "grad_accum": grad_accum,
    "optim": optim,
    "module": module,
    "dynamic": dynamic,
}
