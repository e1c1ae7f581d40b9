"""The public functions. The backend is chosen here, before autograd records the node."""
import torch
import torch.nn.functional as F
from torch.autograd import forward_ad

from .backends import BACKENDS, resolve_backend


def _check_tensor(op, name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")


def _args_ok(x, weight, bias):
    """The common, valid case, decided by one cheap test: x (..., K), weight (N, K), bias (N,) or None."""
    try:
        return (
            x.dtype is weight.dtype
            and x.is_floating_point()
            and weight.dim() == 2
            and x.dim() >= 1
            and x.shape[-1] == weight.shape[1]
            and x.device == weight.device
            and (bias is None or (bias.dtype is x.dtype and bias.shape == weight.shape[:1] and bias.device == x.device))
        )
    except AttributeError:
        return False  # not a tensor: explained by _explain_bad_args


def check_linear_relu_args(x, weight, bias):
    """Clear errors for bad shapes, dtypes and devices, the same for every backend. Only a failure
    of the cheap test looks closer, to say what is wrong."""
    if not _args_ok(x, weight, bias):
        _explain_bad_args(x, weight, bias, other_forms=False)


def _explain_bad_args(x, weight, bias, *, other_forms):
    """Raises the error that says what is wrong; other_forms: F.linear's other forms are valid."""
    named = [("x", x), ("weight", weight)] + ([("bias", bias)] if bias is not None else [])
    for name, t in named:
        _check_tensor("linear_relu", name, t)
    if x.dim() < 1:
        raise ValueError("linear_relu: x must have at least 1 dimension (..., in_features), got a 0-d tensor")
    if weight.dim() not in ((1, 2) if other_forms else (2,)):
        forms = "(out_features, in_features)" + (" or (in_features,)" if other_forms else "")
        raise ValueError(f"linear_relu: weight must be {forms}, got shape {tuple(weight.shape)}")
    if x.shape[-1] != weight.shape[-1]:
        raise ValueError(
            f"linear_relu: x's last dimension ({x.shape[-1]}) must equal weight.shape[-1] ({weight.shape[-1]}); "
            f"x {tuple(x.shape)}, weight {tuple(weight.shape)}"
        )
    if bias is not None and (_feature_bias(x, weight, bias) is None if other_forms else bias.shape != weight.shape[:1]):
        n = weight.shape[0] if weight.dim() == 2 else 1
        forms = f"one value per output feature: ({n},), () or (1, ..., {n})" if other_forms else f"shape ({n},)"
        raise ValueError(f"linear_relu: bias must have {forms}; got {tuple(bias.shape)} for weight {tuple(weight.shape)}")
    for name, t in named[1:]:
        if t.dtype != x.dtype:
            raise TypeError(f"linear_relu: {name} dtype {t.dtype} differs from x dtype {x.dtype}")
        if t.device != x.device:
            raise ValueError(f"linear_relu: {name} is on {t.device} but x is on {x.device}")
    raise AssertionError("linear_relu rejected arguments that _explain_bad_args accepts")


def _feature_bias(x, weight, bias):
    """bias as the kernels' (N,) vector (a view), where F.linear broadcasts it as one value per
    output feature: (N,), (), (1,) or (1, ..., 1 or N), with no more dimensions than the output.
    None for any other shape (a bias that varies over rows cannot go in the fused epilogue)."""
    features = weight.shape[0] if weight.dim() == 2 else 1
    out_dim = x.dim() if weight.dim() == 2 else x.dim() - 1
    last = bias.shape[-1] if bias.dim() else 1
    if bias.dim() > out_dim or last not in (1, features) or any(d != 1 for d in bias.shape[:-1]):
        return None
    return bias.reshape(last).expand(features)


def linear_relu(x, weight, bias=None, *, backend="auto"):
    """relu(x @ weight.T + bias), fused. x (..., K), weight (N, K), bias (N,) or None -> (..., N).
    F.linear's other forms work too: a weight (K,) gives (...); a bias of one value per output
    feature may have any shape that broadcasts so, such as () or (1, N).

    backend: "auto" (native where it has a kernel for the device and dtype, else torch),
    "native", "triton" or "torch" (the composite reference)."""
    if not _args_ok(x, weight, bias):
        return _linear_relu_other_forms(x, weight, bias, backend)
    if _transformed():
        return LinearReLUFunction.apply(x, weight, bias, backend)
    return resolve_backend(backend, x).linear_relu(x, weight, bias)


def _linear_relu_other_forms(x, weight, bias, backend):
    """F.linear's other forms, on the (N, K) kernels, or the error that says what is wrong."""
    tensors = all(isinstance(t, torch.Tensor) for t in (x, weight, bias) if t is not None)
    if tensors and x.dim() >= 1 and weight.dim() in (1, 2) and x.shape[-1] == weight.shape[-1]:
        feature_bias = None if bias is None else _feature_bias(x, weight, bias)
        if bias is None or feature_bias is not None:
            if weight.dim() == 1:
                return linear_relu(x, weight.unsqueeze(0), feature_bias, backend=backend).squeeze(-1)
            if feature_bias.shape != bias.shape:  # else: no new form; the error below says what is wrong
                return linear_relu(x, weight, feature_bias, backend=backend)
    _explain_bad_args(x, weight, bias, other_forms=True)


def relu(x, *, backend="auto"):
    """relu(x) on the library's standalone kernels; NaN passes through, as in torch.relu."""
    _check_tensor("relu", "x", x)
    if _transformed():
        return MyReLU.apply(x, backend)
    return resolve_backend(backend, x).relu(x)


class LinearReLUFunction(torch.autograd.Function):
    """The fused op as an autograd Function: LinearReLUFunction.apply(x, weight, bias, backend).
    Its backward is the ops' own formula (csrc/autograd.cpp): the backend's backward op, asked for
    only the gradients autograd needs, with the mask taken from the saved output.

    It also serves torch.func (grad, vjp, jacrev, jvp, jacfwd, hessian, vmap), which linear_relu
    routes here: the ops' C++ autograd cannot run under those transforms, so there the backward and
    the jvp take the same formula in torch ops (the torch backend's), which torch.func can transform.
    vmap runs the forward kernel once per batch entry (torch's batching fallback)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias=None, backend="auto"):
        check_linear_relu_args(x, weight, bias)
        return resolve_backend(backend, x).linear_relu(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, backend = (*inputs, None, "auto")[:2] + (*inputs[2:], None, "auto")[:2]
        ctx.backend = resolve_backend(backend, x)
        ctx.save_for_backward(x, weight, output)
        ctx.save_for_forward(x, weight, output)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, out = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = [need[0], need[1], ctx.has_bias and need[2]]
        if not any(mask):
            return None, None, None, None
        if out.dtype != x.dtype:  # autocast: the op ran on x and weight cast to out's dtype
            x, weight = x.to(out.dtype), weight.to(out.dtype)
        grads = _autograd_backend(ctx, out).linear_relu_backward(grad_out, out, x, weight, mask)
        return (*(g if m else None for g, m in zip(grads, mask)), None)

    @staticmethod
    def jvp(ctx, x_tangent, weight_tangent, bias_tangent=None, backend_tangent=None):
        """Forward mode: the masked x' W^T + x W'^T + b', the mask from the output as in backward."""
        x, weight, out = ctx.saved_tensors
        pre = torch.zeros_like(out)
        if x_tangent is not None:
            pre = pre + F.linear(x_tangent, weight)
        if weight_tangent is not None:
            pre = pre + F.linear(x, weight_tangent)
        if bias_tangent is not None:
            pre = pre + bias_tangent
        return BACKENDS["torch"].relu_backward(pre, out)  # forward mode: under a transform only


class MyReLU(torch.autograd.Function):
    """The seed's MyReLU on the library's kernels: MyReLU.apply(x) or MyReLU.apply(x, backend).
    It saves the output, not the input: the mask out > 0 is the same. Written with setup_context,
    as torch.func needs; relu routes here under torch.func transforms, as linear_relu does."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, backend="auto"):
        _check_tensor("MyReLU", "x", x)
        return resolve_backend(backend, x).relu(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, backend = (*inputs, "auto")[:2]
        ctx.backend = resolve_backend(backend, x)
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_out):
        (out,) = ctx.saved_tensors
        return _autograd_backend(ctx, out).relu_backward(grad_out, out), None

    @staticmethod
    def jvp(ctx, x_tangent, backend_tangent=None):
        (out,) = ctx.saved_tensors
        return BACKENDS["torch"].relu_backward(x_tangent, out)


def _transformed():
    """A torch.func transform or a forward-mode AD level is active: the ops' C++ autograd serves
    neither, the autograd Functions here serve both. About 0.1 us a call."""
    return torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0


def _autograd_backend(ctx, out):
    """The backend whose backward ops run: the forward's; the torch formula under a transform, or
    where autocast gave the output a dtype the backend has no kernel for (16-bit on the CPU, where
    the forward ran torch's ops too: csrc/autocast.cpp)."""
    if _transformed() or not ctx.backend.supports(out.device.type, out.dtype):
        return BACKENDS["torch"]
    return ctx.backend
