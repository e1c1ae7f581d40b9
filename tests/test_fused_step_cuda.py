"""The CUDA fused step (csrc/cuda/train_step.cu) against the CPU op on the same inputs.

Every case runs the same schedule of calls on a CPU copy and a CUDA copy of one net: the one-step op
(two_layer_step, one launch per call) or the persistent op (two_layer_train, k steps per launch, cut
into several launches so that calls_done carries over), with accumulation 1 and 3 and each optimizer.

* float64, generic data (nn.Linear init, random x, y; ReLU kinks crossed freely): every element of the
  losses, parameter changes, gradient accumulators and optimizer state within 1e-9, relative to the
  largest element of its tensor. Rounding noise there is ~1e-16, so this pins the index math, the
  schedule and the optimizer formulas exactly.
* float32, data kept away from the ReLU kink (half the hidden units on, half off, pre-activations
  >= ~1 from zero through training): losses elementwise within rtol 1e-4; parameter changes, gradients
  and state within 1e-4 in relative norm. Norms, not elements, because the two devices sum in
  different orders: an Adam element whose first gradient is within float32 rounding of zero
  (~1e-7 absolute; a few in a million) can take the opposite +-lr first step, which moves that one
  element by 2 lr but the tensor's norm by < 1e-4.
Also: two_layer_train over k steps equals k two_layer_step calls bitwise (the kernel has no atomics and
its work split depends on the sizes only), losses are computed before the update, steps=0 launches
nothing, sizes outside the on-chip limits raise a clear RuntimeError and leave every tensor untouched.
"""

import pytest
import torch

import twolayer_ops  # noqa: F401  (loads the extension)

ops = torch.ops.twolayer_ops

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

# (N, D_in, H, D_out): the seed net; odd sizes; N above the grid (rows per block > 1). The hidden
# gradient staged in several chunks is test_chunked_hidden_gradient_matches_cpu's case.
SIZES = {
    "seed": (64, 1000, 100, 10),
    "odd": (7, 33, 19, 5),
    "rows": (300, 64, 45, 17),
}
N_STATE = {"sgd": 0, "momentum": 4, "adam": 8}
STEPS = 30


def hyper(optimizer, d_in):
    """(lr, momentum, beta1, beta2, eps): the sum-loss's gradient grows with D_in, so lr shrinks with it."""
    base = {"sgd": 1e-2, "momentum": 1e-2, "adam": 1e-1}[optimizer]
    return base / max(d_in, 1), 0.9 if optimizer == "momentum" else 0.0, 0.9, 0.999, 1e-8


def make_case(size, optimizer, dtype, seed=0, kink_safe=False):
    """x, y, params, grads, state on the CPU. Accumulators and state start non-zero, as after earlier calls.
    Parameters are drawn like nn.Linear's; kink_safe: |x w1| ~ 0.03 and b1 = +-1.5, so that every
    pre-activation stays far from 0 (half the hidden units on, half off) through the tests' training."""
    n, d_in, h, d_out = size
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    uniform = lambda shape, bound: (torch.rand(shape, generator=g, dtype=f64) * 2 - 1) * bound  # noqa: E731
    x = torch.randn(n, d_in, generator=g, dtype=f64)
    y = torch.randn(n, d_out, generator=g, dtype=f64)
    b_in, b_h = max(d_in, 1) ** -0.5, max(h, 1) ** -0.5
    params = [uniform((h, d_in), b_in), uniform((h,), b_in), uniform((d_out, h), b_h), uniform((d_out,), b_h)]
    if kink_safe:
        params[0] = torch.randn(h, d_in, generator=g, dtype=f64) * (0.03 * b_in)
        params[1] = torch.tensor([1.5 if j % 2 == 0 else -1.5 for j in range(h)], dtype=f64)
    grads = [torch.randn(p.shape, generator=g, dtype=f64) * 0.01 for p in params]
    state = [torch.randn(params[i % 4].shape, generator=g, dtype=f64) * 0.01 for i in range(N_STATE[optimizer])]
    if optimizer == "adam":
        state[4:] = [s * s for s in state[4:]]  # second moments are >= 0
    cast = lambda ts: [t.to(dtype).contiguous() for t in ts]  # noqa: E731
    return x.to(dtype), y.to(dtype), cast(params), cast(grads), cast(state)


def to(device, case):
    """A copy of the case on `device` (always a copy: the runs update it in place)."""
    x, y, params, grads, state = case
    copy = lambda ts: [t.to(device, copy=True) for t in ts]  # noqa: E731
    return x.to(device, copy=True), y.to(device, copy=True), copy(params), copy(grads), copy(state)


def schedule(calls_done, steps, accumulation_steps):
    """(update, adam step, loss_scale) of each call, as FusedTwoLayerStep and two_layer_train count them."""
    out = []
    for i in range(steps):
        call = calls_done + i + 1
        out.append((call % accumulation_steps == 0, max(call // accumulation_steps, 1), 1.0 / accumulation_steps))
    return out


def run_steps(case, optimizer, accumulation_steps, steps=STEPS, calls_done=0, op=ops):
    """`steps` op.two_layer_step calls; returns the losses (a tensor)."""
    x, y, params, grads, state = case
    lr, momentum, beta1, beta2, eps = hyper(optimizer, x.shape[1])
    losses = [op.two_layer_step(x, y, params, grads, state, optimizer, lr, momentum, beta1, beta2, eps, step, scale, update)
              for update, step, scale in schedule(calls_done, steps, accumulation_steps)]
    return torch.stack(losses)


def run_train(case, optimizer, accumulation_steps, chunks=(7, 1, STEPS - 8), calls_done=0, op=ops):
    """op.two_layer_train launches of `chunks` steps each, calls_done carried over; returns all losses."""
    x, y, params, grads, state = case
    lr, momentum, beta1, beta2, eps = hyper(optimizer, x.shape[1])
    losses = []
    for k in chunks:
        losses.append(op.two_layer_train(x, y, params, grads, state, optimizer, lr, momentum, beta1, beta2, eps,
                                         calls_done, k, accumulation_steps))
        calls_done += k
    return torch.cat(losses)


def assert_elementwise(got, want, tol, what):
    got = got.cpu()
    scale = want.abs().max().item() if want.numel() else 0.0
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * scale if scale > 0 else 0.0,
                               msg=lambda m: f"{what}: {m}")


def assert_norm(got, want, tol, what):
    got = got.cpu().double()
    want = want.double()
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    ref = want.norm().item()
    if ref == 0:
        assert torch.equal(got, want), f"{what}: expected all zeros, max |got| {got.abs().max().item():.3g}"
        return
    err = (got - want).norm().item() / ref
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


def compare(cpu_case, cuda_case, initial, cpu_losses, cuda_losses, dtype):
    """The CUDA run against the CPU run of the same calls: float64 elementwise within 1e-9, float32 in
    norm within 1e-4 (see the module's docstring)."""
    names = ["w1", "b1", "w2", "b2"]
    if dtype == torch.float64:
        tol, check = 1e-9, assert_elementwise
        assert_elementwise(cuda_losses, cpu_losses, tol, "losses")
    else:
        tol, check = 1e-4, assert_norm
        torch.testing.assert_close(cuda_losses.cpu(), cpu_losses, rtol=1e-4, atol=0, msg=lambda m: f"losses: {m}")
    _, _, params, grads, state = cpu_case
    _, _, cparams, cgrads, cstate = cuda_case
    for i, name in enumerate(names):
        # Parameter changes, not values: an update far below the parameter's size still counts in full.
        check(cparams[i].cpu() - initial[2][i], params[i] - initial[2][i], tol, f"change of {name}")
        check(cgrads[i], grads[i], tol, f"gradient accumulator of {name}")
    for i, (got, want) in enumerate(zip(cstate, state)):
        check(got, want, tol, f"state[{i}] ({'m' if i < 4 else 'v'} of {names[i % 4]})")


def test_cuda_kernels_are_registered():
    for op in ("two_layer_step", "two_layer_train"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"twolayer_ops::{op}", "CUDA"), (
            f"twolayer_ops::{op} has no CUDA kernel: was the extension built with nvcc?")


@pytest.mark.parametrize("mode", ["step", "train"])
@pytest.mark.parametrize("accumulation_steps", [1, 3])
@pytest.mark.parametrize("optimizer", list(N_STATE))
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_matches_cpu(dtype, size, optimizer, accumulation_steps, mode):
    initial = make_case(SIZES[size], optimizer, dtype, kink_safe=dtype == torch.float32)
    cpu_case = to("cpu", initial)
    cuda_case = to("cuda", initial)
    run = run_steps if mode == "step" else run_train
    cpu_losses = run(cpu_case, optimizer, accumulation_steps)
    cuda_losses = run(cuda_case, optimizer, accumulation_steps)
    assert cuda_losses.shape == (STEPS,) and cuda_losses.dtype == dtype and cuda_losses.is_cuda
    compare(cpu_case, cuda_case, initial, cpu_losses, cuda_losses, dtype)
    if dtype == torch.float32:  # the net trained: the comparison is not of a frozen state
        assert not torch.equal(cpu_case[2][0], initial[2][0])


@pytest.mark.parametrize("optimizer", list(N_STATE))
def test_chunked_hidden_gradient_matches_cpu(optimizer):
    """N=2048 with float64: phase C stages gh in several chunks of rows where shared memory is short."""
    initial = make_case((2048, 24, 300, 3), optimizer, torch.float64)
    cpu_case, cuda_case = to("cpu", initial), to("cuda", initial)
    cpu_losses = run_steps(cpu_case, optimizer, 2, steps=6, calls_done=1)
    cuda_losses = run_train(cuda_case, optimizer, 2, chunks=(6,), calls_done=1)
    compare(cpu_case, cuda_case, initial, cpu_losses, cuda_losses, torch.float64)


@pytest.mark.parametrize("accumulation_steps", [1, 3])
@pytest.mark.parametrize("optimizer", list(N_STATE))
@pytest.mark.parametrize("size", ["seed", "odd"])
def test_train_equals_steps_bitwise(size, optimizer, accumulation_steps):
    initial = make_case(SIZES[size], optimizer, torch.float32)
    a, b = to("cuda", initial), to("cuda", initial)
    steps = 11
    losses_a = run_steps(a, optimizer, accumulation_steps, steps=steps, calls_done=2)
    losses_b = run_train(b, optimizer, accumulation_steps, chunks=(steps,), calls_done=2)
    assert torch.equal(losses_a, losses_b), (losses_a, losses_b)
    for ta, tb in zip(a[2] + a[3] + a[4], b[2] + b[3] + b[4]):
        assert torch.equal(ta, tb)
    # And a rerun reproduces the same bits (no atomics, fixed-order sums).
    c = to("cuda", initial)
    assert torch.equal(run_train(c, optimizer, accumulation_steps, chunks=(steps,), calls_done=2), losses_b)
    for tc, tb in zip(c[2], b[2]):
        assert torch.equal(tc, tb)


def test_loss_is_computed_before_the_update():
    initial = make_case(SIZES["odd"], "adam", torch.float64)
    x, y, params, grads, state = to("cuda", initial)
    with torch.no_grad():
        want = ((torch.relu(x @ params[0].T + params[1]) @ params[2].T + params[3] - y) ** 2).sum()
    loss = ops.two_layer_step(x, y, params, grads, state, "adam", 1e-2, 0.0, 0.9, 0.999, 1e-8, 1, 1.0, True)
    assert loss.dim() == 0 and loss.dtype == torch.float64 and loss.is_cuda
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=0)
    assert not torch.equal(params[0].cpu(), initial[2][0])
    assert all(torch.count_nonzero(g) == 0 for g in grads)


def test_accumulation_only_adds_gradients():
    """update=False: parameters and state untouched, gradients of loss * loss_scale added."""
    initial = make_case(SIZES["odd"], "momentum", torch.float64)
    cpu_case, cuda_case = to("cpu", initial), to("cuda", initial)
    for case in (cpu_case, cuda_case):
        x, y, params, grads, state = case
        ops.two_layer_step(x, y, params, grads, state, "momentum", 1e-2, 0.9, 0.9, 0.999, 1e-8, 1, 0.25, False)
    for got, want, start in zip(cuda_case[2] + cuda_case[4], cpu_case[2] + cpu_case[4], initial[2] + initial[4]):
        assert torch.equal(got.cpu(), start) and torch.equal(want, start)
    for got, want in zip(cuda_case[3], cpu_case[3]):
        assert_elementwise(got, want, 1e-12, "gradient")


def test_non_contiguous_inputs():
    initial = make_case(SIZES["odd"], "sgd", torch.float64)
    cpu_case, cuda_case = to("cpu", initial), to("cuda", initial)
    x, y = cuda_case[0], cuda_case[1]
    cuda_case = (x.T.contiguous().T, y.T.contiguous().T, *cuda_case[2:])
    assert not cuda_case[0].is_contiguous()
    compare(cpu_case, cuda_case, initial, run_train(cpu_case, "sgd", 1, chunks=(5,)),
            run_train(cuda_case, "sgd", 1, chunks=(5,)), torch.float64)


def test_zero_steps_launches_nothing():
    initial = make_case(SIZES["odd"], "adam", torch.float32)
    x, y, params, grads, state = to("cuda", initial)
    losses = ops.two_layer_train(x, y, params, grads, state, "adam", 1e-2, 0.0, 0.9, 0.999, 1e-8, 0, 0, 1)
    assert losses.shape == (0,) and losses.is_cuda
    for got, want in zip(params + grads + state, initial[2] + initial[3] + initial[4]):
        assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("size", [(3, 1, 1, 1), (4, 0, 5, 2), (4, 6, 0, 2), (4, 6, 5, 0), (0, 6, 5, 2)],
                         ids=["ones", "d_in0", "h0", "d_out0", "n0"])
def test_degenerate_sizes(size):
    initial = make_case(size, "adam", torch.float64)
    cpu_case, cuda_case = to("cpu", initial), to("cuda", initial)
    compare(cpu_case, cuda_case, initial, run_steps(cpu_case, "adam", 1, steps=3),
            run_train(cuda_case, "adam", 1, chunks=(3,)), torch.float64)


@pytest.mark.parametrize(
    "size",
    [(64, 100_000, 100, 10),  # W1, its gradient and Adam state alone exceed every SM's shared memory together
     (2, 1, 70_000, 1)],      # one batch row's h (70k floats) exceeds one block's shared memory
    ids=["d_in", "hidden_row"],
)
def test_sizes_beyond_the_on_chip_limits_raise(size):
    n, d_in, h, d_out = size
    x, y = torch.randn(n, d_in, device="cuda"), torch.randn(n, d_out, device="cuda")
    params = [torch.randn(h, d_in, device="cuda"), torch.randn(h, device="cuda"), torch.randn(d_out, h, device="cuda"),
              torch.randn(d_out, device="cuda")]
    grads = [torch.zeros_like(p) for p in params]
    state = [torch.zeros_like(params[i % 4]) for i in range(8)]
    before = [t.clone() for t in params + grads]
    with pytest.raises(RuntimeError, match="exceeds the on-chip limits of the fused CUDA step"):
        ops.two_layer_step(x, y, params, grads, state, "adam", 1e-3, 0.0, 0.9, 0.999, 1e-8, 1, 1.0, True)
    with pytest.raises(RuntimeError, match="exceeds the on-chip limits of the fused CUDA step"):
        ops.two_layer_train(x, y, params, grads, state, "adam", 1e-3, 0.0, 0.9, 0.999, 1e-8, 0, 3, 1)
    for got, want in zip(params + grads, before):
        assert torch.equal(got, want)


def test_bad_dtype_and_device_raise():
    initial = make_case(SIZES["odd"], "sgd", torch.float32)
    x, y, params, grads, state = to("cuda", initial)
    half = lambda ts: [t.half() for t in ts]  # noqa: E731
    with pytest.raises(RuntimeError, match="fused CUDA step supports float32 and float64"):
        ops.two_layer_step(x.half(), y.half(), half(params), half(grads), [], "sgd", 1e-3, 0.0, 0.9, 0.999, 1e-8, 1, 1.0, True)
    with pytest.raises(RuntimeError, match="must be on x's device"):
        ops.two_layer_step(x, y.cpu(), params, grads, [], "sgd", 1e-3, 0.0, 0.9, 0.999, 1e-8, 1, 1.0, True)
    with pytest.raises(RuntimeError, match="Adam's step count starts at 1, got 0"):
        ops.two_layer_step(x, y, params, grads, [torch.zeros_like(params[i % 4]) for i in range(8)], "adam", 1e-3, 0.0,
                           0.9, 0.999, 1e-8, 0, 1.0, True)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device():
    initial = make_case(SIZES["odd"], "adam", torch.float64)
    cpu_case, cuda_case = to("cpu", initial), to("cuda:1", initial)
    compare(cpu_case, cuda_case, initial, run_steps(cpu_case, "adam", 1, steps=4),
            run_train(cuda_case, "adam", 1, chunks=(4,)), torch.float64)


def test_opcheck():
    initial = make_case(SIZES["odd"], "adam", torch.float64)
    x, y, params, grads, state = to("cuda", initial)
    args = (x, y, params, grads, state, "adam", 1e-3, 0.0, 0.9, 0.999, 1e-8, 1, 1.0, True)
    torch.library.opcheck(ops.two_layer_step, args, test_utils=("test_schema", "test_faketensor"))
    args = (x, y, params, grads, state, "adam", 1e-3, 0.0, 0.9, 0.999, 1e-8, 0, 3, 2)
    torch.library.opcheck(ops.two_layer_train, args, test_utils=("test_schema", "test_faketensor"))
