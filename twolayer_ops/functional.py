"""The public functions. The backend is chosen here, before autograd records the node."""
import torch
import torch.nn.functional as F
from torch.autograd import forward_ad

from .backends import BACKENDS, check_backend_name, resolve_backend
from .checks import args_ok, check_linear_relu_args, check_tensor, explain_bad_args, feature_bias, layout_name

_STRIDED = torch.strided  # one lookup fewer on every call


def linear_relu(x, weight, bias=None, *, backend="auto"):
    """relu(x @ weight.T + bias), fused. x (..., K), weight (N, K), bias (N,) or None -> (..., N).
    F.linear's other forms work too: a weight (K,) gives (...); a bias of one value per output
    feature may have any shape that broadcasts so, such as () or (1, N).

    backend: "auto" (native where it has a kernel for the device and dtype, else torch),
    "native", "triton" or "torch" (the composite reference)."""
    if _transformed():
        if args_ok(x, weight, bias):
            return _TransformableLinearReLU.apply(x, weight, bias, backend)
    elif isinstance(x, torch.Tensor) and x.layout is not _STRIDED:
        return _linear_relu_sparse_or_nested(x, weight, bias, backend)
    else:
        # Every backend's op checks its arguments (native in C++, triton and torch in checks.py), so
        # the common call pays for no check here; only a failure looks closer. The other forms are
        # told apart by shape first: torch.compile before torch 2.14 raises its own error type for
        # an op's failure while tracing, which the except below would not catch.
        try:
            if weight.dim() == 2 and (bias is None or (bias.dim() == 1 and bias.shape[0] == weight.shape[0])):
                return resolve_backend(backend, x, autocast=True).linear_relu(x, weight, bias)
        except (RuntimeError, TypeError, ValueError, AttributeError, IndexError):
            # Rare layouts are found by their failure: a sparse weight or bias, a strided nested x.
            if any(_sparse_or_nested(t) for t in (x, weight, bias)):
                return _linear_relu_sparse_or_nested(x, weight, bias, backend)
            if args_ok(x, weight, bias):
                raise  # valid arguments: a failure that is not theirs to explain
    return _linear_relu_other_forms(x, weight, bias, backend)


def _sparse_or_nested(t):
    return isinstance(t, torch.Tensor) and (t.layout is not _STRIDED or t.is_nested)


def _packed(x):
    """A contiguous jagged nested x (batch, ragged, ..., K): its packed values (total, ..., K) are a
    dense tensor that the kernels take whole."""
    return x.layout is torch.jagged and x.is_contiguous()


def _linear_relu_sparse_or_nested(x, weight, bias, backend):
    """Sparse or nested operands, as F.linear takes them: a packed x runs the backend's kernels on its
    values. No kernel takes the others, so backend "auto" (or "torch") runs relu(F.linear(...))
    itself, as torch would."""
    if _packed(x) and not any(_sparse_or_nested(t) for t in (weight, bias)):
        out = linear_relu(x.values(), weight, bias, backend=backend)
        return torch.nested.nested_tensor_from_jagged(out, x.offsets())
    operands = {"x": x, "weight": weight, "bias": bias}
    return _composite("linear_relu", operands, backend, lambda: torch.relu(F.linear(x, weight, bias)))


def _composite(op, operands, backend, run):
    """run() (torch's own ops) for operands {name: tensor} that no kernel takes, where the backend
    allows it; else the error that names the first such operand."""
    if backend in ("auto", "torch"):
        return run()
    check_backend_name(backend)
    name, t = next((name, t) for name, t in operands.items() if _sparse_or_nested(t))
    kind = ("non-contiguous " if t.layout is torch.jagged else "") + layout_name(t)
    raise TypeError(f"{op}: backend {backend!r} has no kernel for a {kind} {name} (its kernels take dense tensors and a "
                    "contiguous jagged nested x); backend='auto' or 'torch' runs torch's own ops on it")


def _linear_relu_other_forms(x, weight, bias, backend):
    """F.linear's other forms, on the (N, K) kernels, or the error that says what is wrong."""
    tensors = all(isinstance(t, torch.Tensor) for t in (x, weight, bias) if t is not None)
    if tensors and x.dim() >= 1 and weight.dim() in (1, 2) and x.shape[-1] == weight.shape[-1]:
        per_feature = None if bias is None else feature_bias(x, weight, bias)
        if bias is None or per_feature is not None:
            if weight.dim() == 1:
                return linear_relu(x, weight.unsqueeze(0), per_feature, backend=backend).squeeze(-1)
            if bias is not None and per_feature.shape != bias.shape:  # else: not a new form
                return linear_relu(x, weight, per_feature, backend=backend)
    explain_bad_args(x, weight, bias, other_forms=True)


def relu(x, *, backend="auto"):
    """relu(x) on the library's standalone kernels; NaN passes through, as in torch.relu."""
    check_tensor("relu", "x", x)
    if _transformed():
        return _TransformableReLU.apply(x, backend)
    if _sparse_or_nested(x):  # as in linear_relu: kernels on a packed x's values
        if _packed(x):
            return torch.nested.nested_tensor_from_jagged(relu(x.values(), backend=backend), x.offsets())
        return _composite("relu", {"x": x}, backend, lambda: torch.relu(x))
    return resolve_backend(backend, x).relu(x)


class LinearReLUFunction(torch.autograd.Function):
    """The fused op as an autograd Function: LinearReLUFunction.apply(x, weight, bias, backend).
    Its backward is the ops' own formula (csrc/autograd.cpp): the backend's backward op, asked for
    only the gradients autograd needs, with the mask taken from the saved output. Written with ctx,
    as the seed's MyReLU is; under torch.func, call linear_relu, which takes the form those need."""

    @staticmethod
    def forward(ctx, x, weight, bias=None, backend="auto"):
        check_linear_relu_args(x, weight, bias)
        ctx.backend = resolve_backend(backend, x, autocast=True)
        out = ctx.backend.linear_relu(x, weight, bias)
        # As the C++ formula saves them: x only for dW, weight only for dX; placeholders in the backward.
        need = ctx.needs_input_grad
        ctx.save_for_backward(x if need[1] else None, weight if need[0] else None, out)
        ctx.shapes = x.shape, weight.shape
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, out = ctx.saved_tensors
        x, weight = (out.new_empty(()).expand(shape) if t is None else t for t, shape in zip((x, weight), ctx.shapes))
        need = ctx.needs_input_grad
        mask = [need[0], need[1], ctx.has_bias and need[2]]
        if not any(mask):
            return None, None, None, None
        if not out.dtype == x.dtype == weight.dtype:  # autocast: the op ran on x and weight cast to out's dtype
            x, weight = x.to(out.dtype), weight.to(out.dtype)
        grads = _autograd_backend(ctx, out).linear_relu_backward(grad_out, out, x, weight, mask)
        return (*(g if m else None for g, m in zip(grads, mask)), None)


class MyReLU(torch.autograd.Function):
    """The seed's MyReLU on the library's kernels: MyReLU.apply(x) or MyReLU.apply(x, backend).
    It saves the output, not the input: the mask out > 0 is the same. Under torch.func, call relu."""

    @staticmethod
    def forward(ctx, x, backend="auto"):
        check_tensor("MyReLU", "x", x)
        ctx.backend = resolve_backend(backend, x)
        out = ctx.backend.relu(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (out,) = ctx.saved_tensors
        return _autograd_backend(ctx, out).relu_backward(grad_out, out), None


# torch.func transforms and forward-mode AD: the ops' C++ autograd serves neither, and an autograd
# Function serves them only in the setup_context form, with a jvp for forward mode. That form's
# apply binds its arguments with inspect.signature on every call (about 40 us in torch 2.14), so
# the Functions above keep the ctx form and these subclasses, used only under a transform, add the
# other. There the backward and the jvp take the torch backend's formula, which torch.func can
# transform; under vmap the forward runs the ops' batching rules (twolayer_ops/ops.py).

class _TransformableLinearReLU(LinearReLUFunction):
    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias=None, backend="auto"):
        check_linear_relu_args(x, weight, bias)
        return resolve_backend(backend, x, autocast=True).linear_relu(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, backend = inputs  # apply has bound the defaults
        ctx.backend = resolve_backend(backend, x, autocast=True)
        ctx.save_for_backward(x, weight, output)  # all three: the jvp needs both operands
        ctx.shapes = x.shape, weight.shape
        ctx.save_for_forward(x, weight, output)
        ctx.has_bias = bias is not None

    @staticmethod
    def jvp(ctx, x_tangent, weight_tangent, bias_tangent, backend_tangent):
        """The masked x' W^T + x W'^T + b', the mask from the output as in the backward."""
        x, weight, out = ctx.saved_tensors
        pre = torch.zeros_like(out)
        if x_tangent is not None:
            pre = pre + F.linear(x_tangent, weight)
        if weight_tangent is not None:
            pre = pre + F.linear(x, weight_tangent)
        if bias_tangent is not None:
            pre = pre + bias_tangent
        return BACKENDS["torch"].relu_backward(pre.to(out.dtype), out)  # autocast: float32 inputs, 16-bit out


class _TransformableReLU(MyReLU):
    generate_vmap_rule = True

    @staticmethod
    def forward(x, backend="auto"):
        check_tensor("relu", "x", x)
        return resolve_backend(backend, x).relu(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.backend = resolve_backend(inputs[1], inputs[0])
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def jvp(ctx, x_tangent, backend_tangent):
        (out,) = ctx.saved_tensors
        return BACKENDS["torch"].relu_backward(x_tangent, out)


def _transformed():
    """A torch.func transform or a forward-mode AD level is active. About 0.1 us a call."""
    return torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0


def _autograd_backend(ctx, out):
    """The backend whose backward ops run: the forward's; the torch formula under a transform, or
    where autocast gave the output a dtype the backend has no kernel for (16-bit on the CPU, where
    the forward ran torch's ops too: csrc/autocast.cpp)."""
    if _transformed() or not ctx.backend.supports(out.device.type, out.dtype):
        return BACKENDS["torch"]
    return ctx.backend
