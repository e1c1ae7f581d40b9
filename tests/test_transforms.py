"""torch.func transforms and forward-mode AD on the ops, against the same transforms of the torch
reference. The ops' C++ autograd cannot run under them; linear_relu and relu route to the autograd
Functions, and the forward ops have batching rules."""
import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vmap

from twolayer_ops import linear_relu, relu

from .cases import kernel_cases
from .reference import assert_close_to_ref, linear_relu_ref, relu_ref

pytestmark = pytest.mark.parametrize("device,backend", kernel_cases())


def inputs(device, m=5, k=7, n=4, batch=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_shape = (m, k) if batch is None else (batch, m, k)
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(device) for shape in (x_shape, (n, k), (n,))]


TRANSFORMS = {
    "grad": lambda f, x, w, b: grad(lambda *a: f(*a).square().sum(), argnums=(0, 1, 2))(x, w, b),
    "jacrev": lambda f, x, w, b: jacrev(f, argnums=(0, 1, 2))(x, w, b),
    "jacfwd": lambda f, x, w, b: jacfwd(f, argnums=(0, 1, 2))(x, w, b),
    "jvp": lambda f, x, w, b: jvp(f, (x, w, b), (x.cos(), w.sin(), b.cos())),
    "hessian": lambda f, x, w, b: hessian(lambda x: f(x, w, b).pow(3).sum())(x),
    "vmap x": lambda f, x, w, b: vmap(f, in_dims=(0, None, None))(x, w, b),
    "vmap weight": lambda f, x, w, b: vmap(f, in_dims=(None, 0, None))(x[0], torch.stack([w, 2 * w, -w]), b),
    "per-sample grad": lambda f, x, w, b: vmap(grad(lambda w, x: f(x, w, b).square().sum()), in_dims=(None, 0))(w, x),
    "vmap empty batch of weights": lambda f, x, w, b: vmap(f, in_dims=(None, 0, None))(x[0], w.new_empty(0, *w.shape), b),
    "vmap empty batch of x": lambda f, x, w, b: vmap(f, in_dims=(1, None, None))(x[:, :0], w, b),
}


@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_torch_func_matches_reference(device, backend, transform):
    x, w, b = inputs(device, batch=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = TRANSFORMS[transform](lambda *a: linear_relu(*a, backend=backend), x, w, b)
    want = TRANSFORMS[transform](linear_relu_ref, x, w, b)
    got, want = torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)
    assert len(got) == len(want)
    for i, (g, r) in enumerate(zip(got, want)):
        assert_close_to_ref(g, r, torch.float64, f"{transform} result {i}")
    assert not [warning for warning in caught if "batching rule" in str(warning.message)], "an op fell back to torch's batching loop"


@pytest.mark.parametrize("transform", ["jacfwd", "hessian", "vmap"])
def test_relu_under_torch_func(device, backend, transform):
    x = inputs(device)[0]
    run = {
        "jacfwd": lambda f: jacfwd(f)(x),
        "hessian": lambda f: hessian(lambda x: f(x).pow(3).sum())(x),
        "vmap": lambda f: vmap(f, in_dims=1)(x),
    }[transform]
    assert_close_to_ref(run(lambda t: relu(t, backend=backend)), run(relu_ref), torch.float64)


def test_forward_mode_ad(device, backend):
    x, w, b = inputs(device)
    tangents = [t.cos() for t in (x, w, b)]
    with fwAD.dual_level():
        duals = [fwAD.make_dual(t, dt) for t, dt in zip((x, w, b), tangents)]
        got = fwAD.unpack_dual(linear_relu(*duals, backend=backend))
        want = fwAD.unpack_dual(linear_relu_ref(*duals))
        relu_got = fwAD.unpack_dual(relu(duals[0], backend=backend)).tangent
        relu_want = fwAD.unpack_dual(relu_ref(duals[0])).tangent
    assert_close_to_ref(got.primal, want.primal, torch.float64)
    assert_close_to_ref(got.tangent, want.tangent, torch.float64, "tangent")
    assert_close_to_ref(relu_got, relu_want, torch.float64, "relu tangent")


def test_forward_mode_tangent_takes_the_autocast_dtype(device, backend):
    """Under autocast the output is 16-bit and so is its tangent, as F.linear's, though the inputs and
    tangents are float32."""
    x, w, b = (t.float() for t in inputs(device))
    for f in (lambda *a: linear_relu(*a, backend=backend), linear_relu_ref):
        with torch.autocast(device):
            out, tangent = jvp(lambda w: f(x, w, b), (w,), (w.cos(),))
        assert out.dtype == tangent.dtype == torch.get_autocast_dtype(device), (out.dtype, tangent.dtype)


def test_direct_op_call_refuses_a_tangent_under_no_grad(device, backend):
    """Under no_grad a call skips the ops' autograd, but not when an input carries a forward-mode
    tangent: that must fail clearly, not come back without its tangent."""
    op = torch.ops.twolayer_ops.linear_relu if backend == "native" else torch.ops.twolayer_ops.linear_relu_triton
    x, w, b = inputs(device)
    with fwAD.dual_level(), torch.no_grad():
        dual = fwAD.make_dual(x, x.cos())
        with pytest.raises(RuntimeError, match="jvp"):
            op(dual, w, b)
