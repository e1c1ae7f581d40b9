"""The parity matrix of the fused op, run for every kernel backend on every device."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

import twolayer_ops
from twolayer_ops import LinearReLUFunction, linear_relu

from .cases import EMPTY_SHAPES, SHAPES, kernel_cases, poison_allocator
from .reference import REL_TOL, assert_close_to_ref, linear_relu_ref, rel_error

pytestmark = pytest.mark.parametrize("device,backend", kernel_cases())


def make_inputs(x_shape, n, *, dtype=torch.float64, device="cpu", bias=True, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    k = x_shape[-1]
    x = torch.randn(x_shape, generator=g, dtype=torch.float64)
    w = torch.randn(n, k, generator=g, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64) if bias else None
    tensors = [t.to(device=device, dtype=dtype).requires_grad_(requires_grad) if t is not None else None for t in (x, w, b)]
    return tensors


def away_from_kink(x_shape, n, device, seed=0, margin=1e-3):
    """float64 inputs whose pre-activations all lie more than `margin` from zero (for gradcheck)."""
    for s in range(seed, seed + 100):
        x, w, b = make_inputs(x_shape, n, device=device, seed=s)
        if (torch.nn.functional.linear(x, w, b).abs() > margin).all():
            return x, w, b
    raise AssertionError("could not sample inputs away from the kink")


def grads_of(fn, inputs, grad_out):
    out = fn(*inputs)
    params = [t for t in inputs if t is not None and t.requires_grad]
    grads = torch.autograd.grad(out, params, grad_out, allow_unused=False)
    return out, grads


def check_against_reference(x, w, b, backend, grad_out=None):
    """Forward and all gradients of the kernel vs the float64 torch reference on the same values."""
    ref_inputs = [t.detach().double().requires_grad_(t.requires_grad) if t is not None else None for t in (x, w, b)]
    ref_out = linear_relu_ref(*ref_inputs)
    if grad_out is None:
        grad_out = torch.randn(ref_out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
        grad_out = grad_out.to(x.device)
    poison_allocator(ref_out.shape, x.dtype, x.device)
    out, grads = grads_of(lambda *a: linear_relu(*a, backend=backend), (x, w, b), grad_out.to(x.dtype))
    _, ref_grads = grads_of(linear_relu_ref, ref_inputs, grad_out.double())
    assert_close_to_ref(out, ref_out.to(x.dtype) if x.dtype != torch.float64 else ref_out, x.dtype, "output")
    assert out.is_contiguous()
    names = [n for n, t in zip(("grad_x", "grad_weight", "grad_bias"), (x, w, b)) if t is not None and t.requires_grad]
    for name, got, want in zip(names, grads, ref_grads):
        assert_close_to_ref(got, want.to(got.dtype) if got.dtype != torch.float64 else want, x.dtype, name)


@pytest.mark.parametrize("x_shape,n", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_matches_reference(device, backend, x_shape, n, dtype):
    check_against_reference(*make_inputs(x_shape, n, dtype=dtype, device=device), backend)


@pytest.mark.parametrize("x_shape,n", SHAPES[1:], ids=str)
def test_no_bias(device, backend, x_shape, n):
    check_against_reference(*make_inputs(x_shape, n, device=device, bias=False), backend)


@pytest.mark.parametrize("x_shape,n", [((7, 33), 12), ((2, 3, 17), 5), ((17,), 5)], ids=str)
def test_gradcheck(device, backend, x_shape, n):
    x, w, b = away_from_kink(x_shape, n, device)
    assert torch.autograd.gradcheck(lambda *a: linear_relu(*a, backend=backend), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: linear_relu(x, w, None, backend=backend), (x, w))


def test_autograd_function_gradcheck(device, backend):
    x, w, b = away_from_kink((5, 9), 4, device)
    assert torch.autograd.gradcheck(lambda *a: LinearReLUFunction.apply(*a, backend), (x, w, b))


@pytest.mark.parametrize(
    "x_shape,w_shape,b_shape",
    [
        ((6, 5), (5,), None),
        ((2, 3, 5), (5,), ()),
        ((6, 5), (5,), ()),  # F.linear itself raises here (addmm wants a matrix); the formula is clear
        ((5,), (5,), ()),
        ((2, 3, 5), (4, 5), ()),
        ((6, 5), (4, 5), (1,)),
        ((2, 3, 5), (4, 5), (1, 1, 4)),
        ((5,), (4, 5), ()),
    ],
    ids=str,
)
def test_f_linear_other_forms(device, backend, x_shape, w_shape, b_shape):
    """F.linear's other forms: a (K,) weight drops the output's last dimension, a bias of one value
    per output feature may have any shape that broadcasts so. Against F.linear's formula
    x @ weight.T + bias in float64: output, shape and every gradient."""
    g = torch.Generator().manual_seed(3)
    x, w, b = (
        None if shape is None else torch.randn(shape, generator=g, dtype=torch.float64).to(device).requires_grad_()
        for shape in (x_shape, w_shape, b_shape)
    )
    ref_inputs = [None if t is None else t.detach().clone().requires_grad_() for t in (x, w, b)]
    out = linear_relu(x, w, b, backend=backend)
    ref = torch.relu(ref_inputs[0] @ ref_inputs[1].t() + (0 if b is None else ref_inputs[2]))
    assert_close_to_ref(out, ref)
    grad_out = torch.randn(ref.shape, generator=g, dtype=torch.float64).to(device)
    got = torch.autograd.grad(out, [t for t in (x, w, b) if t is not None], grad_out)
    want = torch.autograd.grad(ref, [t for t in ref_inputs if t is not None], grad_out)
    for i, (gt, wt) in enumerate(zip(got, want)):
        assert_close_to_ref(gt, wt, torch.float64, f"grad {i}")


def test_one_d_x_takes_a_row_bias_as_f_linear_does(device, backend):
    """A 1-D x with a (1, N) bias: F.linear returns a 1-D output and a (1, N) bias gradient; so does the op."""
    g = torch.Generator().manual_seed(4)
    x, w, b = (torch.randn(shape, generator=g, dtype=torch.float64).to(device).requires_grad_()
               for shape in ((5,), (4, 5), (1, 4)))
    ref_inputs = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    out = linear_relu(x, w, b, backend=backend)
    ref = torch.relu(F.linear(*ref_inputs))
    assert out.shape == ref.shape == (4,)
    assert_close_to_ref(out, ref)
    grad_out = torch.randn(4, generator=g, dtype=torch.float64).to(device)
    for i, (got, want) in enumerate(zip(torch.autograd.grad(out, (x, w, b), grad_out),
                                        torch.autograd.grad(ref, ref_inputs, grad_out))):
        assert got.shape == want.shape, (i, got.shape, want.shape)
        assert_close_to_ref(got, want, torch.float64, f"grad {i}")


def test_other_forms_reach_the_op_reshaped(monkeypatch, device, backend):
    """The op only ever sees a (N, K) weight and a (N,) bias or None: F.linear's other forms are
    reshaped before the call, not after the op refuses them, since torch.compile before torch 2.14
    cannot trace a fallback from an op's error."""
    from twolayer_ops import backends

    key = (backend, device, torch.float64)
    real = backends._RESOLVED[key]
    seen = []

    def spy(x, weight, bias):
        seen.append((tuple(weight.shape), None if bias is None else tuple(bias.shape)))
        return real.linear_relu(x, weight, bias)

    monkeypatch.setitem(backends._RESOLVED, key, dataclasses.replace(real, linear_relu=spy))
    g = torch.Generator().manual_seed(4)
    x, w = (torch.randn(shape, generator=g, dtype=torch.float64).to(device) for shape in ((6, 5), (4, 5)))
    for weight, bias_shape in ((w[0], None), (w[0], ()), (w, (1,)), (w, (1, 4)), (w, (4,)), (w, None)):
        bias = None if bias_shape is None else torch.randn(bias_shape, generator=g, dtype=torch.float64).to(device)
        linear_relu(x, weight, bias, backend=backend)
    assert len(seen) == 6, seen
    assert all(len(ws) == 2 and bs in (None, (ws[0],)) for ws, bs in seen), seen


@pytest.mark.parametrize("x_dtype", ["float32", "lower"])
@pytest.mark.parametrize("api", ["linear_relu", "LinearReLUFunction"])
def test_autocast_like_f_linear(device, backend, api, x_dtype):
    """Under torch.autocast the op runs on x, weight and bias cast to the autocast dtype, as F.linear
    does: the same output dtype and values, gradients in each input's dtype. x_dtype "lower": x is
    already 16-bit, the parameters float32, as in an autocast net's second layer. On CUDA the op's own
    16-bit kernel runs; the CPU kernels are 32- and 64-bit only, so there F.linear's own ops run."""
    lower = torch.get_autocast_dtype(device)
    x, w, b = make_inputs((9, 33), 17, dtype=torch.float32, device=device)
    if x_dtype == "lower":
        x = x.detach().to(lower).requires_grad_()
    ref_inputs = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    fn = (lambda *a: linear_relu(*a, backend=backend)) if api == "linear_relu" else (lambda *a: LinearReLUFunction.apply(*a, backend))
    with torch.autocast(device):
        out = fn(x, w, b)
        ref = linear_relu_ref(*ref_inputs)
    assert out.dtype == ref.dtype == lower
    assert_close_to_ref(out, ref, lower)
    if device == "cuda" and api == "linear_relu":
        assert "twolayer_ops::autograd::LinearReLUFunction<" in out.grad_fn.name(), "the op's own kernel did not run"
    grad_out = torch.randn(ref.shape, generator=torch.Generator().manual_seed(5)).to(device, lower)
    got = torch.autograd.grad(out, (x, w, b), grad_out)
    want = torch.autograd.grad(ref, ref_inputs, grad_out)
    for name, t, g, r in zip(("x", "weight", "bias"), (x, w, b), got, want):
        assert g.dtype == t.dtype, f"grad of {name} is {g.dtype}, {name} {t.dtype}"
        assert rel_error(g, r) <= REL_TOL[lower], f"grad of {name}: relative error {rel_error(g, r):.3g}"


@pytest.mark.parametrize("needs_x_grad", [False, True])
def test_flop_counter_counts_as_for_f_linear(device, backend, needs_x_grad):
    """torch.utils.flop_counter counts the op's forward and backward as relu(F.linear(...))'s: 2 M N K
    a product, for each gradient product asked for."""
    from torch.utils.flop_counter import FlopCounterMode

    totals = []
    for f in ((lambda *a: linear_relu(*a, backend=backend)), linear_relu_ref):
        x, w, b = make_inputs((2, 6, 5), 3, device=device)
        x.requires_grad_(needs_x_grad)
        with FlopCounterMode(display=False) as counter:
            f(x, w, b).sum().backward()
        totals.append(counter.get_total_flops())
    assert totals[0] == totals[1] == 2 * 12 * 5 * 3 * (2 + needs_x_grad), totals


@pytest.mark.parametrize("frozen", ["weight", "x"])
@pytest.mark.parametrize("api", ["linear_relu", "LinearReLUFunction"])
def test_saves_operands_only_where_their_gradient_partner_needs_them(device, backend, api, frozen):
    """As torch's linear: x is saved only for the weight's gradient, the weight only for x's. So a frozen
    weight keeps no x alive, and an operand changed in place after the forward, whose value no gradient
    needs, does not fail the backward; the gradients are the reference's."""
    fn = (lambda *a: linear_relu(*a, backend=backend)) if api == "linear_relu" else (lambda *a: LinearReLUFunction.apply(*a, backend))
    grads = []
    for f in (fn, linear_relu_ref):
        x0, w0, b = make_inputs((6, 5), 3, device=device)
        x = x0.detach().clone() if frozen == "x" else x0 * 1  # not a leaf that needs grad: it may change in place
        w = w0.detach().clone() if frozen == "weight" else w0 * 1
        packed = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: (packed.append(t.data_ptr()), t)[1], lambda t: t):
            out = f(x, w, b)
        unneeded = x if frozen == "weight" else w
        assert unneeded.data_ptr() not in packed, "the forward saved an operand that no gradient needs"
        with torch.no_grad():
            unneeded.add_(1.0)
        want = (x0, b) if frozen == "weight" else (w0, b)
        grads.append(torch.autograd.grad(out.square().sum(), want))
    for got, ref in zip(*grads):
        assert_close_to_ref(got, ref, torch.float64)


@pytest.mark.parametrize("x_shape,n", [((3, 5), 4), ((2, 2, 3), 2)], ids=str)  # small: O(numel^2) calls
def test_gradgradcheck(device, backend, x_shape, n):
    """create_graph=True differentiates the backward op itself, as relu(F.linear(...)) allows."""
    x, w, b = away_from_kink(x_shape, n, device)
    assert torch.autograd.gradgradcheck(lambda *a: linear_relu(*a, backend=backend), (x, w, b))
    assert torch.autograd.gradgradcheck(lambda x, w: linear_relu(x, w, None, backend=backend), (x, w))
    assert torch.autograd.gradgradcheck(lambda *a: LinearReLUFunction.apply(*a, backend), (x, w, b))


@pytest.mark.parametrize("wrt", ["x", "weight"])
def test_gradient_penalty_matches_reference(device, backend, wrt):
    """A gradient penalty (the norm of a first gradient, itself trained) against the float64
    reference: exercises every term of the double backward, with the kink's zeros in it."""

    def penalty_grads(fn, x, w, b):
        first = torch.autograd.grad((fn(x, w, b) ** 2).sum(), x if wrt == "x" else w, create_graph=True)[0]
        return torch.autograd.grad(first.square().sum(), (x, w, b))

    x, w, b = make_inputs((2, 9, 13), 6, device=device)
    ref_inputs = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    got = penalty_grads(lambda *a: linear_relu(*a, backend=backend), x, w, b)
    want = penalty_grads(linear_relu_ref, *ref_inputs)
    for name, g, r in zip(("x", "weight", "bias"), got, want):
        assert_close_to_ref(g, r, torch.float64, f"second-order grad of {name}")
    assert (got[2] != 0).any(), "the bias term of the double backward contributed nothing"


def test_exact_zero_preactivation_has_zero_output_and_gradient(device, backend):
    x, w, b = make_inputs((6, 8), 4, device=device, requires_grad=False)
    w[1] = 0.0  # column 1: pre-activation exactly 0
    b[1] = 0.0
    x[2] = 0.0  # row 2: pre-activation exactly b
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    out = linear_relu(x, w, b, backend=backend)
    assert (out[:, 1] == 0).all()
    out.backward(torch.ones_like(out))
    assert b.grad[1] == 0 and (w.grad[1] == 0).all()
    check_against_reference(*(t.detach().clone().requires_grad_() for t in (x, w, b)), backend)


def test_nan_propagates_like_reference(device, backend):
    x, w, b = make_inputs((5, 6), 4, device=device, requires_grad=False)
    x[1, 2] = float("nan")  # row 1 all NaN
    b[3] = float("nan")  # column 3 all NaN
    w[0, 0] = float("-inf")  # column 0: +-inf or NaN
    out = linear_relu(x, w, b, backend=backend)
    assert torch.isnan(out[1]).all() and torch.isnan(out[:, 3]).all()
    check_against_reference(*(t.clone().requires_grad_() for t in (x, w, b)), backend)


def test_layouts(device, backend):
    """Transposed, strided, offset and broadcast (stride-0) operands, and a transposed grad_out."""
    g = torch.Generator().manual_seed(3)

    def rnd(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=g).to(device)

    m, k, n = 9, 13, 6
    layouts = {
        "x transposed": (rnd(k, m).t(), rnd(n, k), rnd(n)),
        "w transposed": (rnd(m, k), rnd(k, n).t(), rnd(n)),
        "strided": (rnd(m, 2 * k)[:, ::2], rnd(2 * n, k)[::2], rnd(2 * n)[::2]),
        "storage offset": (rnd(m + 1, k + 3)[1:, 3:], rnd(n + 1, k)[1:], rnd(n + 1)[1:]),
        "broadcast x": (rnd(1, k).expand(m, k), rnd(n, k), rnd(n)),
        "3-D permuted": (rnd(k, 3, m).permute(2, 1, 0), rnd(n, k), rnd(n)),
    }
    for name, (x, w, b) in layouts.items():
        x, w, b = (t.requires_grad_() for t in (x, w, b))
        grad_out = rnd(*reversed(linear_relu_ref(x, w, b).shape)).permute(*reversed(range(x.dim())))
        check_against_reference(x, w, b, backend, grad_out=grad_out)


@pytest.mark.parametrize("x_shape,n", EMPTY_SHAPES, ids=str)
def test_empty(device, backend, x_shape, n):
    x, w, b = make_inputs(x_shape, n, device=device)
    out = linear_relu(x, w, b, backend=backend)
    assert out.shape == (*x_shape[:-1], n)
    out.backward(torch.ones_like(out))
    ref = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    ref_out = linear_relu_ref(*ref)
    ref_out.backward(torch.ones_like(ref_out))
    torch.testing.assert_close(out, ref_out)
    for got, want in zip((x, w, b), ref):
        torch.testing.assert_close(got.grad, want.grad)


def test_only_needed_gradients(device, backend):
    """x without requires_grad (the seed's first layer): only weight and bias gradients are made."""
    x, w, b = make_inputs((8, 5), 3, device=device)
    x.requires_grad_(False)
    check_against_reference(x, w, b, backend)


@pytest.mark.parametrize("grad_mode", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("needs", [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)], ids=str)
def test_output_is_tracked_like_reference(device, backend, needs, grad_mode):
    """The output requires grad (and has a node) exactly when the reference's does."""
    inputs = make_inputs((4, 5), 3, device=device, requires_grad=False)
    for t, need in zip(inputs, needs):
        t.requires_grad_(bool(need))
    with torch.set_grad_enabled(grad_mode):
        out, ref = linear_relu(*inputs, backend=backend), linear_relu_ref(*inputs)
    assert out.requires_grad == ref.requires_grad and (out.grad_fn is None) == (ref.grad_fn is None)
    if ref.requires_grad:
        got = torch.autograd.grad(out.sum(), [t for t in inputs if t.requires_grad])
        want = torch.autograd.grad(ref.sum(), [t for t in inputs if t.requires_grad])
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_opcheck(device, backend, bias):
    if backend == "native":
        fwd, bwd = torch.ops.twolayer_ops.linear_relu, torch.ops.twolayer_ops.linear_relu_backward
    else:
        fwd = getattr(torch.ops.twolayer_ops, f"linear_relu_{backend}")
        bwd = getattr(torch.ops.twolayer_ops, f"linear_relu_backward_{backend}")
    for x_shape, n in [((5, 7), 3), ((2, 3, 4), 6), ((4,), 2)]:
        x, w, b = make_inputs(x_shape, n, device=device, bias=bias)
        opcheck(fwd, (x, w, b))
        out = fwd(x, w, b).detach()
        for mask in ([True, True, bias], [False, True, False], [True, False, False]):
            opcheck(bwd, (torch.randn_like(out), out, x.detach(), w.detach(), mask))
        # The backward op is differentiable (double backward): its autograd is checked too.
        opcheck(bwd, (torch.randn_like(out).requires_grad_(), out, x, w, [True, True, bias]))
    x, w, b = make_inputs((6, 8), 4, device=device, bias=bias)
    opcheck(fwd, (x.detach().t().contiguous().t(), w, b))


def test_compile_fullgraph(device, backend):
    torch._dynamo.reset()
    x, w, b = make_inputs((8, 16), 4, dtype=torch.float32, device=device)
    compiled = torch.compile(lambda x, w, b: linear_relu(x, w, b, backend=backend), fullgraph=True)
    out = compiled(x, w, b)
    out.sum().backward()
    ref = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    ref_out = linear_relu_ref(*ref)
    ref_out.sum().backward()
    torch.testing.assert_close(out, ref_out)
    for got, want in zip((x, w, b), ref):
        torch.testing.assert_close(got.grad, want.grad)


def test_compile_fullgraph_autocast_and_other_forms(device, backend):
    """torch.compile traces the autocast casts (x float32, and x already 16-bit with float32
    parameters) and F.linear's other forms as eager runs them."""
    torch._dynamo.reset()
    x, w, b = make_inputs((8, 16), 4, dtype=torch.float32, device=device)
    lower = torch.get_autocast_dtype(device)

    def forms(x, w, b):
        with torch.autocast(device):
            under_autocast = linear_relu(x, w, b, backend=backend)
            mixed = linear_relu(x.to(lower), w, b, backend=backend)
        others = linear_relu(x, w[0], b[0], backend=backend), linear_relu(x, w, b[:1], backend=backend)
        return under_autocast, mixed, *others

    got = torch.compile(forms, fullgraph=True)(x, w, b)
    ref = [t.detach().clone() for t in (x, w, b)]
    with torch.autocast(device):
        want_autocast = linear_relu_ref(*ref)
        want_mixed = linear_relu_ref(ref[0].to(lower), *ref[1:])
    want = (want_autocast, want_mixed, torch.relu(ref[0] @ ref[1][0] + ref[2][0]), linear_relu_ref(ref[0], ref[1], ref[2][:1]))
    for g, r in zip(got, want):
        assert g.dtype == r.dtype and g.shape == r.shape
        assert_close_to_ref(g, r, r.dtype)
