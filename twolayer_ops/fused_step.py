"""The fused training step: forward, MSE-sum loss, backward and the optimizer update of a two-layer
net (Linear+ReLU, then Linear) in one op call, torch.ops.twolayer_ops.two_layer_step."""
import torch
from torch import nn

from .ops import ops

OPTIMIZERS = ("sgd", "momentum", "adam")


def _supported_optimizer(optimizer):
    """(name, hyperparameters) for a torch.optim optimizer the fused step reproduces exactly, read from
    its one parameter group (where a scheduler or a user sets them), not its defaults."""
    if len(optimizer.param_groups) != 1:
        raise ValueError(f"the fused step runs an optimizer of one parameter group, got {len(optimizer.param_groups)}")
    if optimizer.state:
        raise ValueError("the fused step starts from a fresh optimizer: this one has state (a resumed run?), "
                         "which the fused step would not continue")
    d = optimizer.param_groups[0]
    if isinstance(optimizer, torch.optim.Adam):
        if d.get("weight_decay") or d.get("amsgrad") or d.get("maximize"):
            raise ValueError("the fused step runs Adam without weight_decay, amsgrad or maximize")
        return "adam", {"lr": d["lr"], "betas": d["betas"], "eps": d["eps"]}
    if type(optimizer) is torch.optim.SGD:
        if d.get("weight_decay") or d.get("dampening") or d.get("nesterov") or d.get("maximize"):
            raise ValueError("the fused step runs SGD without weight_decay, dampening, nesterov or maximize")
        return ("momentum" if d["momentum"] else "sgd"), {"lr": d["lr"], "momentum": d["momentum"]}
    raise ValueError(f"the fused step runs torch.optim.SGD and Adam, not {type(optimizer).__name__}")


class FusedTwoLayerStep:
    """Trains `linear1` (followed by ReLU) and `linear2` in place, one op call per step.

    step = FusedTwoLayerStep(model[0], model[1], "adam", lr=1e-4)
    loss = step(x, y)              # one step: a 0-d tensor on the device; no host sync
    losses = step.run(x, y, 499)   # 499 more steps in one call (one kernel launch on CUDA)

    optimizer: "sgd", "momentum" (SGD with momentum) or "adam", with torch.optim's formulas and
    defaults. With accumulation_steps=k, each call adds the gradient of loss / k and every k-th call
    updates, as loss.backward() and optimizer.step() would. The gradient accumulators and optimizer
    state live here, not in the modules' .grad nor in a torch.optim optimizer: from_optimizer starts
    from a fresh one, whose state does not follow the fused steps (a switch back to optimizer.step()
    would start again from zero moments and step count)."""

    def __init__(self, linear1, linear2, optimizer="adam", *, lr, momentum=0.0, betas=(0.9, 0.999), eps=1e-8,
                 accumulation_steps=1):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        if optimizer == "momentum" and not momentum:
            raise ValueError("optimizer 'momentum' needs momentum > 0")
        if optimizer != "momentum" and momentum:
            raise ValueError(f"momentum={momentum} is optimizer 'momentum''s, not {optimizer!r}'s")
        # torch.optim's own checks of these values
        if not (lr >= 0 and eps >= 0 and momentum >= 0 and all(0 <= b < 1 for b in betas)):
            raise ValueError(f"need lr >= 0, eps >= 0, momentum >= 0 and betas in [0, 1); got lr={lr}, eps={eps}, "
                             f"momentum={momentum}, betas={tuple(betas)}")
        if isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be an int >= 1, got {accumulation_steps!r}")
        if linear1.bias is None or linear2.bias is None:
            raise ValueError("the fused step trains layers with biases")
        self.params = [linear1.weight, linear1.bias, linear2.weight, linear2.bias]
        memory = [p.data_ptr() for p in self.params if p.numel()]
        if len({id(p) for p in self.params}) < 4 or len(set(memory)) < len(memory):
            raise ValueError("the fused step updates four separate parameters: two of them share memory (tied?)")
        if not all(p.is_contiguous() for p in self.params):
            raise ValueError("the fused step updates contiguous parameters in place")
        self.grads = [torch.zeros_like(p) for p in self.params]
        n_state = {"sgd": 0, "momentum": 4, "adam": 8}[optimizer]  # Adam: 4 first, then 4 second moments
        self.state = [torch.zeros_like(self.params[i % 4]) for i in range(n_state)]
        self.optimizer = optimizer
        self.lr, self.momentum, self.betas, self.eps = lr, momentum, tuple(betas), eps
        self.accumulation_steps = accumulation_steps
        self.calls = 0
        self.updates = 0
        self.group = None  # from_optimizer: its parameter group, whose hyperparameters each call reads

    @classmethod
    def from_optimizer(cls, linear1, linear2, optimizer, accumulation_steps=1):
        """The fused twin of a torch.optim optimizer over exactly these two layers' parameters. Each
        call reads the learning rate (and betas, eps, momentum) from the optimizer's parameter group,
        so a learning-rate scheduler stepping that optimizer drives the fused steps too."""
        name, hyper = _supported_optimizer(optimizer)
        step = cls(linear1, linear2, name, accumulation_steps=accumulation_steps, **hyper)
        if {id(p) for p in optimizer.param_groups[0]["params"]} != {id(p) for p in step.params}:
            raise ValueError("the optimizer must hold exactly the two layers' weights and biases")
        if not all(p.requires_grad for p in step.params):
            raise ValueError("the fused step trains every weight and bias of both layers: none may be frozen")
        step.group = optimizer.param_groups[0]
        return step

    def _hyper(self):
        if self.group is not None:
            g = self.group
            self.lr, self.momentum, self.eps = float(g["lr"]), g.get("momentum", 0.0), g.get("eps", 1e-8)
            self.betas = tuple(float(b) for b in g.get("betas", (0.9, 0.999)))
        return self.optimizer, self.lr, self.momentum, self.betas[0], self.betas[1], self.eps

    def _updated(self):
        # The parameters changed in place, as optimizer.step() changes them: autograd then refuses a
        # backward through a graph that saved their old values.
        for p in self.params:
            torch.autograd.graph.increment_version(p)

    def __call__(self, x, y):
        """One step; returns its loss (computed before the update)."""
        calls = self.calls + 1  # counted once the op has run: a failed call changes nothing
        update = calls % self.accumulation_steps == 0
        updates = self.updates + update
        with torch.no_grad():
            loss = ops.two_layer_step(x, y, [p.detach() for p in self.params], self.grads, self.state, *self._hyper(),
                                      max(updates, 1), 1.0 / self.accumulation_steps, update)
        self.calls, self.updates = calls, updates
        if update:
            self._updated()
        return loss

    def run(self, x, y, steps):
        """`steps` steps in one call; returns their losses, a (steps,) tensor on the device."""
        with torch.no_grad():
            losses = ops.two_layer_train(x, y, [p.detach() for p in self.params], self.grads, self.state,
                                         *self._hyper(), self.calls, steps, self.accumulation_steps)
        self.calls += steps
        self.updates = self.calls // self.accumulation_steps
        self._updated()
        return losses


def two_layers(model):
    """(linear1, linear2) of the seed's two-layer nets: TwoLayerNet, Sequential(FusedLinearReLU, Linear)
    or Sequential(Linear, ReLU, Linear); a clear error for anything else."""
    from .modules import FusedLinearReLU, TwoLayerNet

    if isinstance(model, TwoLayerNet):
        return model.linear1, model.linear2
    kinds = [type(m) for m in model] if isinstance(model, nn.Sequential) else None
    if kinds in ([FusedLinearReLU, nn.Linear], [nn.Linear, nn.ReLU, nn.Linear]):
        return model[0], model[-1]
    raise ValueError(f"the fused step trains Linear+ReLU -> Linear nets, not {model.__class__.__name__}")
