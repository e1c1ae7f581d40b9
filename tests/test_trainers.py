"""Every recipe against the seed's own program: the same loss curve and final parameters."""
import numpy as np
import pytest
import torch

from twolayer_ops.trainers import RECIPES

from . import seed_programs
from .cases import kernel_cases


def interpreted(device, backend):
    return backend == "triton" and device == "cpu"


def assert_same_curve(got, want, what="losses"):
    """Float32 tolerance: relative 1e-3, plus an absolute floor of 1e-4 of the largest loss
    (the curves fall by 10 to 12 orders of magnitude, into float32's rounding noise)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max(), err_msg=what)


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r != "numpy"])
@pytest.mark.parametrize("device,backend", kernel_cases())
def test_recipe_matches_seed_program(recipe, device, backend):
    # The interpreter runs the seed-size GEMMs in seconds each: a short curve there; 500 steps elsewhere.
    steps = 2 if interpreted(device, backend) else 500
    want_losses, want_params = seed_programs.PROGRAMS[recipe](steps=steps, seed=0, device=device)
    result = RECIPES[recipe](steps=steps, seed=0, device=device, backend=backend)
    assert result.steps == steps and result.wall_time_s > 0
    assert_same_curve(result.losses, want_losses)
    assert_same_params(result.model, want_params, recipe, steps, device)


def assert_same_params(got_params, want_params, recipe, steps, device):
    """Final parameters within float32 noise of the seed program's: within 1e-3 of the largest, or,
    where 500 steps amplify rounding further (Adam steps a near-zero gradient by lr in whichever
    direction rounding gives it), no further from the float64 run than twice the seed program is."""
    if not isinstance(got_params, dict):
        got_params = got_params.state_dict()
    # In order: the seed's Sequential numbers its last Linear 2 (after the ReLU), the fused one 1.
    assert len(got_params) == len(want_params)
    exact = None
    for (name, got), want in zip(got_params.items(), want_params.values()):
        got, want = got.detach().double().cpu(), want.double().cpu()
        if (got - want).abs().max() <= 1e-3 * want.abs().max():
            continue
        if exact is None:  # the pure-PyTorch recipe in float64, from the same float32 draw
            model = RECIPES[recipe](steps=steps, seed=0, device=device, backend="torch", dtype=torch.float64).model
            exact = list((model if isinstance(model, dict) else model.state_dict()).values())
        ref = exact[list(got_params).index(name)].double().cpu()
        seed_error, got_error = (want - ref).abs().max().item(), (got - ref).abs().max().item()
        assert got_error <= 2 * seed_error, (
            f"{name}: {got_error:.3g} from the float64 run, the seed program's float32 run {seed_error:.3g}")


def test_params_check_catches_a_drift():
    _, want_params = seed_programs.PROGRAMS["optim"](steps=50, seed=0)
    assert_same_params(dict(want_params), want_params, "optim", 50, "cpu")
    drifted = {name: p + 1e-2 * p.abs().max() for name, p in want_params.items()}
    with pytest.raises(AssertionError, match="from the float64 run"):
        assert_same_params(drifted, want_params, "optim", 50, "cpu")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_numpy_recipe_matches_seed_program(dtype):
    want, want_params = seed_programs.numpy_warmup(steps=500, seed=3)  # float64, as numpy draws
    result = RECIPES["numpy"](steps=500, seed=3, dtype=dtype)
    if dtype == torch.float64:
        assert result.losses == want
        np.testing.assert_array_equal(result.model["w1"].numpy(), want_params["w1"])
    else:
        assert_same_curve(result.losses, want)


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_seed_changes_the_draw(recipe):
    a = RECIPES[recipe](steps=1, seed=0).losses
    b = RECIPES[recipe](steps=1, seed=1).losses
    assert a != b


def test_losses_are_logged_in_batches(capsys):
    seen = []
    RECIPES["optim"](steps=10, log_every=4, on_log=lambda first, losses: seen.append((first, len(losses))))
    assert seen == [(0, 4), (4, 4), (8, 2)]
    RECIPES["autograd"](steps=3, log_every=1)
    lines = capsys.readouterr().out.split("\n")
    assert [line.split()[0] for line in lines if line] == ["0", "1", "2"]


def test_grad_accum_updates_every_k_steps():
    frozen = RECIPES["grad_accum"](steps=7, accumulation_steps=8).losses
    assert len(set(frozen)) == 1, "no update before the 8th micro-step: every loss is the first one"
    moving = RECIPES["grad_accum"](steps=9, accumulation_steps=8).losses
    assert moving[8] < moving[7]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"steps": 0}, "steps must be a positive integer"),
        ({"backend": "cudnn"}, "unknown backend"),
        ({"device": "cuda:0"} if not torch.cuda.is_available() else {"device": "meta"}, "device"),
        ({"dtype": torch.int32}, "floating dtype"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RECIPES["optim"](**kwargs)
