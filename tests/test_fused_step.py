"""The fused training step against torch.optim and against the seed's programs."""
import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.library import opcheck

from twolayer_ops.fused_step import FusedTwoLayerStep, two_layers
from twolayer_ops.trainers import FUSED_STEP_RECIPES, RECIPES

from . import seed_programs
from .cases import phases
from .test_trainers import assert_same_curve, assert_same_params

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]),
]
OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=1e-3),
    "momentum": lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
}


def small_net(device, dtype, seed=0, sizes=(16, 20, 8, 3)):
    torch.manual_seed(seed)
    n, d_in, h, d_out = sizes
    x, y = torch.randn(n, d_in, dtype=dtype), torch.randn(n, d_out, dtype=dtype)
    net = nn.Sequential(nn.Linear(d_in, h), nn.ReLU(), nn.Linear(h, d_out)).to(dtype)
    return x.to(device), y.to(device), net.to(device)


def torch_training(x, y, net, make_optimizer, steps, accumulation_steps):
    optimizer = make_optimizer(net.parameters())
    losses = []
    for n in range(steps):
        loss = nn.functional.mse_loss(net(x), y, reduction="sum")
        losses.append(loss.item())
        (loss / accumulation_steps).backward()
        if (n + 1) % accumulation_steps == 0:
            optimizer.step()
            optimizer.zero_grad()
    return losses


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("accumulation_steps", [1, 3])
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_matches_torch_optim(device, optimizer, accumulation_steps, dtype):
    x, y, net = small_net(device, dtype)
    fused_net = copy.deepcopy(net)
    want = torch_training(x, y, net, OPTIMIZERS[optimizer], steps=30, accumulation_steps=accumulation_steps)
    step = FusedTwoLayerStep.from_optimizer(*two_layers(fused_net), OPTIMIZERS[optimizer](fused_net.parameters()),
                                            accumulation_steps=accumulation_steps)
    got = [step(x, y).item() for _ in range(30)]
    rtol = 1e-10 if dtype == torch.float64 else 1e-4
    np.testing.assert_allclose(got, want, rtol=rtol)
    for (name, p), q in zip(fused_net.named_parameters(), net.parameters()):
        torch.testing.assert_close(p, q, rtol=rtol, atol=rtol, msg=lambda m: f"{name}: {m}")
    assert step.updates == 30 // accumulation_steps


@pytest.mark.parametrize("device", DEVICES)
def test_any_sizes_match_torch_optim(device):
    """Sizes hypothesis draws (zeros and the CUDA kernel's split edges included), every optimizer, with and
    without accumulation, in float64: the losses and parameters are torch.optim's."""

    @settings(max_examples=40 if device == "cpu" else 30, phases=phases(device))
    @given(
        sizes=st.tuples(st.integers(0, 100), st.integers(0, 300), st.integers(0, 150), st.integers(0, 20)),
        optimizer=st.sampled_from(list(OPTIMIZERS)),
        accumulation_steps=st.integers(1, 3),
        seed=st.integers(0, 2**31 - 1),
    )
    def holds(sizes, optimizer, accumulation_steps, seed):
        x, y, net = small_net(device, torch.float64, seed, sizes)
        fused_net = copy.deepcopy(net)
        want = torch_training(x, y, net, OPTIMIZERS[optimizer], steps=6, accumulation_steps=accumulation_steps)
        step = FusedTwoLayerStep.from_optimizer(*two_layers(fused_net), OPTIMIZERS[optimizer](fused_net.parameters()),
                                                accumulation_steps=accumulation_steps)
        got = step.run(x, y, 6).tolist()
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-300)
        for (name, p), q in zip(fused_net.named_parameters(), net.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name} at {sizes}: {m}")

    holds()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("recipe", FUSED_STEP_RECIPES)
def test_recipe_fused_step_matches_seed_program(device, recipe):
    want_losses, want_params = seed_programs.PROGRAMS[recipe](steps=500, seed=0, device=device)
    fused = RECIPES[recipe](steps=500, seed=0, device=device, fused_step=True)
    unfused = RECIPES[recipe](steps=500, seed=0, device=device)
    assert fused.backend == "fused_step"
    assert_same_curve(fused.losses, want_losses, "fused vs seed")
    assert_same_curve(fused.losses, unfused.losses, "fused vs unfused")
    assert_same_params(fused.model, want_params, recipe, 500, device)


def test_loss_stays_on_the_device_and_is_a_tensor():
    x, y, net = small_net("cpu", torch.float32)
    with torch.no_grad():
        want = nn.functional.mse_loss(net(x), y, reduction="sum")  # the loss before this step's update
    loss = FusedTwoLayerStep(*two_layers(net), "sgd", lr=1e-3)(x, y)
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and loss.dtype == torch.float32
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=0)


def test_opcheck():
    x, y, net = small_net("cpu", torch.float64)
    step = FusedTwoLayerStep(*two_layers(net), "adam", lr=1e-3)
    params = [p.detach() for p in step.params]
    args = (x, y, params, step.grads, step.state, "adam", 1e-3, 0.0, 0.9, 0.999, 1e-8, 1, 1.0, True)
    opcheck(torch.ops.twolayer_ops.two_layer_step, args, test_utils=("test_schema", "test_faketensor"))


def _stepped(optimizer, net):
    net(torch.randn(2, 20)).sum().backward()
    optimizer.step()
    return optimizer


def _tied_layers():
    linear1, linear2 = nn.Linear(20, 8), nn.Linear(8, 8)
    linear2.bias = linear1.bias  # one tensor, updated twice if trained as two
    return linear1, linear2


@pytest.mark.parametrize(
    "make,error,message",
    [
        (lambda net: FusedTwoLayerStep.from_optimizer(net[0], net[2], torch.optim.RMSprop(net.parameters())), ValueError, "SGD and Adam, not RMSprop"),
        (lambda net: FusedTwoLayerStep.from_optimizer(net[0], net[2], torch.optim.Adam(net.parameters(), weight_decay=0.1)), ValueError, "without weight_decay"),
        (lambda net: FusedTwoLayerStep.from_optimizer(net[0], net[2], torch.optim.SGD(net.parameters(), lr=1, nesterov=True, momentum=0.9)), ValueError, "nesterov"),
        (lambda net: FusedTwoLayerStep(net[0], net[2], "lion", lr=1), ValueError, "optimizer must be one of"),
        (lambda net: FusedTwoLayerStep(net[0], net[2], "momentum", lr=1), ValueError, "momentum > 0"),
        (lambda net: FusedTwoLayerStep(net[0], net[2], "sgd", lr=1, accumulation_steps=0), ValueError, "accumulation_steps"),
        (lambda net: FusedTwoLayerStep(net[0], net[2], "sgd", lr=1, accumulation_steps=2.5), ValueError, "accumulation_steps"),
        (lambda net: FusedTwoLayerStep(net[0], net[2], "sgd", lr=1, momentum=0.9), ValueError, "optimizer 'momentum''s"),
        (lambda net: FusedTwoLayerStep(net[0], net[2], "adam", lr=1, betas=(1.5, 0.999)), ValueError, "betas in"),
        (lambda net: FusedTwoLayerStep(net[0], net[2], "adam", lr=-1), ValueError, "lr >= 0"),
        (lambda net: FusedTwoLayerStep(nn.Linear(20, 8, bias=False), net[2], "sgd", lr=1), ValueError, "biases"),
        (lambda net: two_layers(nn.Sequential(net[0], net[2])), ValueError, "Linear\\+ReLU -> Linear nets"),
        # The group's settings count, not the defaults; one group; a fresh optimizer over exactly these four.
        (lambda net: FusedTwoLayerStep.from_optimizer(net[0], net[2], torch.optim.SGD([{"params": net.parameters(), "momentum": 0.9, "nesterov": True}], lr=1)), ValueError, "nesterov"),
        (lambda net: FusedTwoLayerStep.from_optimizer(net[0], net[2], torch.optim.SGD([{"params": net[0].parameters()}, {"params": net[2].parameters(), "lr": 2}], lr=1)), ValueError, "one parameter group"),
        (lambda net: FusedTwoLayerStep.from_optimizer(net[0], net[2], torch.optim.SGD(net[2].parameters(), lr=1)), ValueError, "exactly the two layers'"),
        (lambda net: FusedTwoLayerStep.from_optimizer(net[0], net[2], _stepped(torch.optim.Adam(net.parameters()), net)), ValueError, "has state"),
        (lambda net: FusedTwoLayerStep(*_tied_layers(), "sgd", lr=1), ValueError, "share memory"),
    ],
)
def test_bad_configuration(make, error, message):
    _, _, net = small_net("cpu", torch.float32)
    with pytest.raises(error, match=message):
        make(net)


def test_bad_arguments():
    x, y, net = small_net("cpu", torch.float32)
    step = FusedTwoLayerStep(*two_layers(net), "sgd", lr=1e-3)
    with pytest.raises(RuntimeError, match="w1 has shape"):
        step(torch.randn(16, 21), y)
    with pytest.raises(RuntimeError, match="the same N"):
        step(x, y[:5])
    with pytest.raises(RuntimeError, match="must have x's dtype"):
        step(x.double(), y.double())
    with pytest.raises(RuntimeError, match="CPU step supports float32 and float64"):
        FusedTwoLayerStep(*two_layers(copy.deepcopy(net).half()), "sgd", lr=1e-3)(x.half(), y.half())
    adam = FusedTwoLayerStep(*two_layers(net), "adam", lr=1e-3)
    args = (x, y, [p.detach() for p in adam.params], adam.grads, adam.state, "adam", 1e-3, 0.0, 0.9, 0.999, 1e-8)
    with pytest.raises(RuntimeError, match="Adam's step count starts at 1, got 0"):
        torch.ops.twolayer_ops.two_layer_step(*args, 0, 1.0, True)
    torch.ops.twolayer_ops.two_layer_step(*args, 0, 1.0, False)  # accumulating only: no count needed


def test_follows_the_optimizers_learning_rate_and_scheduler():
    """from_optimizer reads the group's lr at each call: a value set before conversion and a scheduler
    stepped during training drive the fused steps as they drive optimizer.step()."""
    x, y, net = small_net("cpu", torch.float64)
    fused_net = copy.deepcopy(net)
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (net, fused_net)]
    schedulers = []
    for opt in optimizers:
        opt.param_groups[0]["lr"] = 3e-2
        schedulers.append(torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
    step = FusedTwoLayerStep.from_optimizer(*two_layers(fused_net), optimizers[1])
    for _ in range(4):
        optimizers[0].zero_grad()
        nn.functional.mse_loss(net(x), y, reduction="sum").backward()
        optimizers[0].step()
        step(x, y)
        for scheduler in schedulers:
            scheduler.step()
    for p, q in zip(fused_net.parameters(), net.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_updates_count_as_in_place_changes_and_a_failed_call_counts_nothing():
    """Like optimizer.step(): a backward through a graph built before the update refuses to run. A call
    that fails leaves the step counts (Adam's bias correction, the accumulation phase) as they were."""
    x, y, net = small_net("cpu", torch.float32)
    step = FusedTwoLayerStep(*two_layers(net), "adam", lr=1e-3, accumulation_steps=2)
    loss = nn.functional.mse_loss(net(x), y, reduction="sum")
    step(x, y)
    step(x, y)  # the second call updates
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    with pytest.raises(RuntimeError):
        step(x.double(), y.double())
    assert (step.calls, step.updates) == (2, 1)


def test_a_float32_loss_past_its_range_is_inf_as_in_eager():
    linear1, linear2 = nn.Linear(4, 3), nn.Linear(3, 2)
    x, y = torch.full((2, 4), 1e21), torch.zeros(2, 2)
    want = nn.functional.mse_loss(linear2(torch.relu(linear1(x))), y, reduction="sum")
    got = FusedTwoLayerStep(linear1, linear2, "sgd", lr=0.0)(x, y)
    assert torch.isinf(want) and torch.isinf(got) and got.dtype == torch.float32


def test_recipe_rejects_fused_step_with_ddp():
    with pytest.raises(ValueError, match="drop ddp"):
        RECIPES["optim"](steps=1, fused_step=True, ddp=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("optimizer,accumulation_steps", [("adam", 1), ("adam", 3), ("momentum", 2), ("sgd", 1)])
def test_run_equals_single_steps(device, optimizer, accumulation_steps, dtype):
    """two_layer_train over k steps (one call) is k two_layer_step calls, split anywhere, and leaves
    the same accumulators (inside a call, a step after an update overwrites them instead of adding)."""
    x, y, net = small_net(device, dtype)
    twin = copy.deepcopy(net)
    hyper = {"lr": 1e-3, "momentum": 0.9 if optimizer == "momentum" else 0.0, "accumulation_steps": accumulation_steps}
    single = FusedTwoLayerStep(*two_layers(net), optimizer, **hyper)
    want = torch.stack([single(x, y) for _ in range(11)])
    chunked = FusedTwoLayerStep(*two_layers(twin), optimizer, **hyper)
    got = torch.cat([chunked.run(x, y, 4), chunked.run(x, y, 0), chunked.run(x, y, 7)])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    assert (chunked.calls, chunked.updates) == (single.calls, single.updates) == (11, 11 // accumulation_steps)
    for p, q in zip(twin.parameters(), net.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=0)
    for g, h in zip(chunked.grads, single.grads):
        torch.testing.assert_close(g, h, rtol=1e-12, atol=0)
    if accumulation_steps == 1:
        assert all(not g.any() for g in chunked.grads)  # the last call updated and zeroed them
