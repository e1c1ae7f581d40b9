"""Backend selection, F.linear's argument forms and clear errors on bad input."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import twolayer_ops
from twolayer_ops import available_backends, linear_relu, relu
from twolayer_ops.backends import resolve_backend


def test_available_backends_cpu():
    backends = available_backends("cpu")
    assert "native" in backends and backends[-1] == "torch"


def test_available_backends_cuda_matches_machine():
    backends = available_backends("cuda")
    if torch.cuda.is_available():
        assert "torch" in backends
    else:
        assert backends == []


@pytest.mark.parametrize(
    "dtype,expected", [(torch.float32, "native"), (torch.float64, "native"), (torch.bfloat16, "torch"), (torch.float16, "torch")]
)
def test_auto_on_cpu(dtype, expected):
    assert resolve_backend("auto", torch.empty(1, dtype=dtype)).name == expected


def test_auto_runs_native_op_on_cpu():
    x = torch.randn(3, 4, requires_grad=True)
    out = linear_relu(x, torch.randn(2, 4), torch.randn(2))
    assert "twolayer_ops::autograd::LinearReLUFunction<" in out.grad_fn.name()  # the C++ autograd node


@pytest.mark.parametrize("name", ["auto", "native", "triton", "torch"])
def test_every_backend_name_takes_an_autocast_nets_second_layer(name):
    """Under torch.autocast a 16-bit x meets float32 parameters, as F.linear takes them: each backend
    name gives F.linear's dtype and values, and gradients in each input's dtype. relu is not cast, so a
    16-bit relu still asks for a backend with a 16-bit kernel (native has none on the CPU)."""
    if name not in ("auto", *available_backends("cpu")):
        pytest.skip(f"backend {name!r} does not run on cpu here")
    g = torch.Generator().manual_seed(6)
    x = torch.randn(5, 8, generator=g).bfloat16().requires_grad_()
    w, b = torch.randn(3, 8, generator=g, requires_grad=True), torch.randn(3, generator=g, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_relu(x, w, b, backend=name)
        ref = torch.relu(torch.nn.functional.linear(x, w, b))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref)
    got, want = torch.autograd.grad(out.sum(), (x, w, b)), torch.autograd.grad(ref.sum(), (x, w, b))
    for t, gt, wt in zip((x, w, b), got, want):
        assert gt.dtype == t.dtype
        torch.testing.assert_close(gt, wt)
    if name == "native":
        with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError, match="no kernel for torch.bfloat16"):
            relu(x, backend=name)


def test_meta_tensors_give_shapes_as_f_linear():
    """Meta tensors (shape inference, a module built under torch.device("meta")) run as F.linear does."""
    x = torch.randn(2, 5, device="meta", requires_grad=True)
    w, b = torch.randn(3, 5, device="meta", requires_grad=True), torch.randn(3, device="meta", requires_grad=True)
    out = linear_relu(x, w, b)
    assert out.shape == (2, 3) and out.device.type == "meta"
    grads = torch.autograd.grad(out.sum(), (x, w, b))
    assert [g.shape for g in grads] == [x.shape, w.shape, b.shape]
    with torch.device("meta"):
        assert twolayer_ops.FusedLinearReLU(10, 4)(torch.randn(2, 10)).shape == (2, 4)


def test_bfloat16_cpu_falls_back_to_torch():
    x, w, b = (torch.randn(*s).bfloat16() for s in ((4, 8), (3, 8), (3,)))
    torch.testing.assert_close(linear_relu(x, w, b), torch.relu(torch.nn.functional.linear(x, w, b)))


def x_w_b(m=4, k=5, n=3, **kw):
    return torch.randn(m, k, **kw), torch.randn(n, k, **kw), torch.randn(n, **kw)


BAD_INPUTS = {
    "k mismatch": (lambda x, w, b: (x, torch.randn(3, 6), b), ValueError, r"last dimension \(5\) must equal weight.shape\[-1\] \(6\)"),
    "k mismatch 1-D weight": (lambda x, w, b: (x, torch.randn(6), None), ValueError, r"\(5\) must equal weight.shape\[-1\] \(6\)"),
    "weight 3-D": (lambda x, w, b: (x, w[None], b), ValueError, r"weight must be \(out_features, in_features\) or \(in_features,\)"),
    "bias of 1-D weight": (lambda x, w, b: (x, torch.randn(5), b), ValueError, r"one value per output feature: \(1,\).*got \(3,\)"),
    "bias shape": (lambda x, w, b: (x, w, torch.randn(4)), ValueError, r"bias must have one value per output feature: \(3,\), \(\) or \(1, ..., 3\); got \(4,\)"),
    "bias per row": (lambda x, w, b: (x, w, torch.randn(4, 3)), ValueError, r"one value per output feature.*got \(4, 3\)"),
    "bias more dims than out": (lambda x, w, b: (x, w, b[None, None]), ValueError, r"one value per output feature.*got \(1, 1, 3\)"),
    "x 0-d": (lambda x, w, b: (torch.tensor(1.0), w, b), ValueError, "at least 1 dimension"),
    "int x": (lambda x, w, b: (x.long(), w, b), TypeError, "x must be a floating-point tensor, got torch.int64"),
    "int weight": (lambda x, w, b: (x, w.int(), b), TypeError, "weight must be a floating-point tensor"),
    "dtype mismatch": (lambda x, w, b: (x, w.double(), b), TypeError, "weight dtype torch.float64 differs from x dtype torch.float32"),
    "dtype mismatch, no bias": (lambda x, w, b: (x, w.double(), None), TypeError, "weight dtype torch.float64 differs"),
    "device mismatch, no bias": (lambda x, w, b: (x, w.to("meta"), None), ValueError, "weight is on meta but x is on cpu"),
    "bias dtype": (lambda x, w, b: (x, w, b.half()), TypeError, "bias dtype torch.float16 differs"),
    "device mismatch": (lambda x, w, b: (x, w.to("meta"), b), ValueError, "weight is on meta but x is on cpu"),
    "not a tensor": (lambda x, w, b: (x.tolist(), w, b), TypeError, "x must be a torch.Tensor, got list"),
}


@pytest.mark.parametrize("backend", ["auto", "native", "torch"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_clear_error(case, backend):
    make, error, message = BAD_INPUTS[case]
    with pytest.raises(error, match=message):
        linear_relu(*make(*x_w_b()), backend=backend)


@st.composite
def argument_forms(draw):
    """x of 1 to 3 dimensions (sizes from 0), weight (N, K) or (K,), and a bias of any of the shapes
    F.linear broadcasts, valid for the fused op or not."""
    lead = draw(st.lists(st.integers(0, 3), max_size=2))
    k, n = draw(st.integers(0, 5)), draw(st.integers(0, 4))
    vector_weight = draw(st.booleans())
    features = 1 if vector_weight else n
    bias_shapes = [None, (features,), (), (1,), (1, features), (1, 1, features), (2, features), (features, 1)]
    bias_shape = draw(st.sampled_from(bias_shapes))
    return lead, k, n, vector_weight, bias_shape


@settings(max_examples=300)
@given(form=argument_forms(), backend=st.sampled_from(["auto", "native", "torch"]))
def test_argument_forms_match_the_formula_or_raise_clearly(form, backend):
    """Each form either matches x @ weight.T + bias (F.linear's formula) in output, shape and every
    gradient, or raises ValueError: exactly the forms with one bias value per output feature and no
    more bias dimensions than output dimensions are taken, and a (N, K) weight's (1, N) bias for a 1-D x
    (F.linear keeps that output 1-D)."""
    lead, k, n, vector_weight, bias_shape = form
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*lead, k, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(*(() if vector_weight else (n,)), k, generator=g, dtype=torch.float64, requires_grad=True)
    b = None if bias_shape is None else torch.randn(bias_shape, generator=g, dtype=torch.float64, requires_grad=True)
    out_dims = x.dim() - vector_weight
    features = 1 if vector_weight else n
    row_bias_1d = b is not None and x.dim() == 1 and not vector_weight and tuple(b.shape) == (1, n)
    taken = b is None or row_bias_1d or (
        b.dim() <= out_dims and (b.shape[-1] if b.dim() else 1) in (1, features) and all(d == 1 for d in b.shape[:-1])
    )
    if not taken:
        with pytest.raises(ValueError, match="bias must have one value per output feature"):
            linear_relu(x, w, b, backend=backend)
        return
    out = linear_relu(x, w, b, backend=backend)
    ref = torch.relu(x @ w.t() + (0 if b is None else b.reshape(n) if row_bias_1d else b))
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref)
    inputs = [t for t in (x, w, b) if t is not None]
    grad_out = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    for got, want in zip(torch.autograd.grad(out, inputs, grad_out, allow_unused=True),
                         torch.autograd.grad(ref, inputs, grad_out, allow_unused=True)):
        torch.testing.assert_close(got, want)


def test_autograd_function_takes_only_the_matrix_form():
    """LinearReLUFunction returns one gradient per input as given, so F.linear's vector forms are
    linear_relu's alone."""
    x, w, b = x_w_b()
    with pytest.raises(ValueError, match=r"weight must be \(out_features, in_features\), got shape \(5,\)"):
        twolayer_ops.LinearReLUFunction.apply(x, w[0], None)
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\); got \(\) for weight \(3, 5\)"):
        twolayer_ops.LinearReLUFunction.apply(x, w, b[0])


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'cutlass'; choose one of auto, native"):
        linear_relu(*x_w_b(), backend="cutlass")


def test_backend_without_kernel_for_dtype():
    with pytest.raises(RuntimeError, match="backend 'native' has no kernel for torch.bfloat16 on cpu"):
        linear_relu(*x_w_b(dtype=torch.bfloat16), backend="native")


def test_relu_rejects_integers():
    with pytest.raises(TypeError, match="relu: x must be a floating-point tensor"):
        relu(torch.arange(4))
    with pytest.raises(TypeError, match="MyReLU: x must be a floating-point tensor"):
        twolayer_ops.MyReLU.apply(torch.arange(4))


NATIVE_OP_ERRORS = {
    "k mismatch": ((torch.randn(4, 5), torch.randn(3, 6), None), "must equal weight.shape\\[1\\]"),
    "int": ((torch.ones(4, 5, dtype=torch.int32), torch.ones(3, 5, dtype=torch.int32), None), "floating tensor"),
    "half on cpu": ((torch.randn(4, 5).half(), torch.randn(3, 5).half(), None), "support float32 and float64"),
    "bias shape": ((torch.randn(4, 5), torch.randn(3, 5), torch.randn(2)), "bias must have shape"),
}


@pytest.mark.parametrize("case", list(NATIVE_OP_ERRORS))
def test_direct_op_call_checks_its_arguments(case):
    """The C++ kernels check too, for callers that use torch.ops directly."""
    args, message = NATIVE_OP_ERRORS[case]
    with pytest.raises(RuntimeError, match=message):
        torch.ops.twolayer_ops.linear_relu(*args)


def test_backward_op_checks_grad_shape():
    x, w = torch.randn(4, 5), torch.randn(3, 5)
    out = torch.ops.twolayer_ops.linear_relu(x, w, None)
    with pytest.raises(RuntimeError, match="grad_out shape"):
        torch.ops.twolayer_ops.linear_relu_backward(torch.randn(4, 2), out, x, w, [True, True, False])
