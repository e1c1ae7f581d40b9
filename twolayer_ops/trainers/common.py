"""What every recipe shares: the seed's sizes, argument checks, the loss log and the timed loop."""
import contextlib
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from torch import nn

from ..backends import BACKEND_NAMES, available_backends, resolve_backend

# The seed's net: batch N, input D_in, hidden H, output D_out.
N, D_IN, H, D_OUT = 64, 1000, 100, 10


@dataclass
class TrainResult:
    recipe: str
    losses: list  # one float per step (the global loss under DDP)
    model: object  # the trained nn.Module, or a dict of weight tensors for the by-hand recipes
    wall_time_s: float  # the training loop alone, device work included
    device: str
    backend: str

    @property
    def steps(self):
        return len(self.losses)

    @property
    def final_loss(self):
        return self.losses[-1]

    @property
    def steps_per_s(self):
        return self.steps / self.wall_time_s if self.wall_time_s > 0 else float("inf")


def prepare(steps, seed, device, backend, dtype, *, seed_python=False):
    """Checks the arguments, seeds the generators as the seed's programs do; returns the device
    and the name of the backend that will run (what "auto" resolves to there)."""
    if not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if backend not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKEND_NAMES)}")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda (or cuda:N), got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} is not available: no CUDA device is visible")
    if backend != "auto" and backend not in available_backends(dev):
        raise ValueError(f"backend {backend!r} is not available on {dev.type}; available: {', '.join(available_backends(dev))}")
    if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    torch.manual_seed(seed)
    if seed_python:
        import random

        random.seed(seed)
    try:
        return dev, resolve_backend(backend, torch.empty(0, device=dev, dtype=dtype)).name
    except RuntimeError as e:  # a backend without a kernel for this dtype: a bad argument, said as one
        raise ValueError(str(e)) from None


class LossLog:
    """Losses stay on the device and are fetched in batches; `log_every` steps, `on_log(step,
    losses)` sees the new ones (the default prints `step loss` lines, as the seed does)."""

    def __init__(self, steps, device, log_every=None, on_log=None):
        self.buffer = torch.zeros(steps, dtype=torch.float64, device=device)
        self.log_every = log_every
        self.on_log = on_log or _print_losses
        self.logged = 0

    def record(self, step, loss):
        self.buffer[step] = loss.detach()  # a device copy: no host sync
        if self.log_every and (step + 1) % self.log_every == 0:
            self.flush(step + 1)

    def flush(self, upto):
        if upto > self.logged:
            self.on_log(self.logged, _global_sum(self.buffer[self.logged : upto]).tolist())
            self.logged = upto

    def values(self):
        return _global_sum(self.buffer).tolist()


def _distributed():
    return dist.is_available() and dist.is_initialized()


def _global_sum(losses):
    """Under DDP each rank holds the loss of its rows; the global loss is their sum."""
    if not _distributed():
        return losses
    losses = losses.clone()
    dist.all_reduce(losses)
    return losses


def _print_losses(first_step, losses):
    if not _distributed() or dist.get_rank() == 0:
        for i, loss in enumerate(losses):
            print(first_step + i, loss)


def shard_for_ddp(model, x, y, dev, *, find_unused_parameters=False):
    """Wraps the model in DistributedDataParallel and keeps this rank's rows of the batch.

    Returns (model, x, y, loss_scale): DDP averages gradients over ranks, so each rank scales
    its summed loss by the world size and the update equals the full-batch one."""
    if not _distributed():
        raise RuntimeError("ddp=True needs torch.distributed initialized (run under torchrun with --ddp)")
    world, rank = dist.get_world_size(), dist.get_rank()
    if x.shape[0] % world:
        raise ValueError(f"the batch of {x.shape[0]} rows does not split over {world} ranks")
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else None
    wrapped = DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)
    return wrapped, x.chunk(world)[rank], y.chunk(world)[rank], float(world)


def _timer(dev):
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()

    def stop():
        sync()
        return time.perf_counter() - start

    return stop


def run_fused(recipe, stepper, x, y, steps, dev, model, *, log_every=None, on_log=None):
    """Runs a FusedTwoLayerStep in chunks of `log_every` steps (all at once without logging):
    one op call, one kernel launch on CUDA, per chunk."""
    log = LossLog(steps, dev, log_every, on_log)
    chunk = log_every or steps
    stop = _timer(dev)
    for first in range(0, steps, chunk):
        count = min(chunk, steps - first)
        log.buffer[first : first + count] = stepper.run(x, y, count)
        if log_every:
            log.flush(first + count)
    wall = stop()
    return TrainResult(recipe, log.values(), model, wall, str(dev), "fused_step")


def run_loop(recipe, step_fn, steps, dev, backend, model, *, log_every=None, on_log=None):
    """Runs step_fn(n) -> loss tensor for n in range(steps) and times it, device work included."""
    log = LossLog(steps, dev, log_every, on_log)
    stop = _timer(dev)
    for n in range(steps):
        log.record(n, step_fn(n))
    wall = stop()
    if log.log_every:
        log.flush(steps)
    return TrainResult(recipe, log.values(), model, wall, str(dev), backend)


def draw_raw(dev, dtype):
    """x, y, w1 (D_in x H), w2 (H x D_out), drawn in the seed's order on `dev`."""
    return [torch.randn(*s, device=dev).to(dtype) for s in ((N, D_IN), (N, D_OUT), (D_IN, H), (H, D_OUT))]


def sgd_by_hand(loss, weights, lr):
    """The seed's raw-tensor update: backward, w -= lr * w.grad, zero the gradients."""
    loss.backward()
    with torch.no_grad():
        for w in weights:
            w -= lr * w.grad
            w.grad.zero_()


def fit(recipe, model, x, y, dev, backend, *, steps, optimizer=None, lr=None, accumulation_steps=1,
        ddp=False, find_unused_parameters=False, fused_step=False, log_every=None, on_log=None):
    """The seed's nn-style loop: MSE-sum loss, backward, then an optimizer step or the manual
    update `p -= lr * p.grad` every `accumulation_steps` micro-steps (the loss divided by it).
    fused_step: the same training, each step one two_layer_step op call (FusedTwoLayerStep)."""
    if accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
    if fused_step:
        if ddp:
            raise ValueError("the fused step trains in one process: drop ddp")
        if x.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"the fused step trains float32 and float64 only, got {x.dtype}")
        from ..fused_step import FusedTwoLayerStep, two_layers

        layers = two_layers(model)
        if optimizer is not None:
            stepper = FusedTwoLayerStep.from_optimizer(*layers, optimizer, accumulation_steps)
        else:
            stepper = FusedTwoLayerStep(*layers, "sgd", lr=lr, accumulation_steps=accumulation_steps)
        return run_fused(recipe, stepper, x, y, steps, dev, model, log_every=log_every, on_log=on_log)
    loss_fn = nn.MSELoss(reduction="sum")
    net, x, y, scale = (
        shard_for_ddp(model, x, y, dev, find_unused_parameters=find_unused_parameters) if ddp else (model, x, y, 1.0)
    )

    def step(n):
        stepping = (n + 1) % accumulation_steps == 0
        # DDP: micro-steps that do not step skip the gradient all-reduce; the forward must be inside too.
        with net.no_sync() if ddp and not stepping else contextlib.nullcontext():
            loss = loss_fn(net(x), y)
            # Each factor only where it changes something: an op and its backward are ~15 us of a
            # ~500 us CPU step.
            scaled = loss if accumulation_steps == 1 else loss / accumulation_steps
            (scaled if scale == 1.0 else scaled * scale).backward()
        if stepping:
            if optimizer is not None:
                optimizer.step()
            else:
                with torch.no_grad():
                    for p in model.parameters():
                        p -= lr * p.grad
            model.zero_grad()
        return loss

    return run_loop(recipe, step, steps, dev, backend, model, log_every=log_every, on_log=on_log)
