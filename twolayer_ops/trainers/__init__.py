"""The seed's training programs, one recipe each, rebuilt on the fused op.

Every recipe is `train(steps=500, *, seed=0, device="cpu", backend="auto", dtype=torch.float32,
lr=<the seed's>, log_every=None, on_log=None, ...) -> TrainResult`. With the same seed it draws
its random tensors in the order of the seed's program, so the loss curves agree."""
from . import autograd, custom_function, dynamic, grad_accum, module, nn, optim, tensors, warmup_numpy
from .common import TrainResult

RECIPES = {
    "numpy": warmup_numpy.train,
    "tensors": tensors.train,
    "autograd": autograd.train,
    "custom_function": custom_function.train,
    "nn": nn.train,
    "grad_accum": grad_accum.train,
    "optim": optim.train,
    "module": module.train,
    "dynamic": dynamic.train,
}
DDP_RECIPES = ("nn", "grad_accum", "optim", "module", "dynamic")
# The two-layer nets; dynamic's shared middle layer makes a deeper net, which the fused step is not.
FUSED_STEP_RECIPES = ("nn", "grad_accum", "optim", "module")

__all__ = ["RECIPES", "DDP_RECIPES", "FUSED_STEP_RECIPES", "TrainResult"]
