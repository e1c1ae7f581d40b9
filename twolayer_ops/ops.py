"""The torch.library ops: loads the compiled kernels, registers fake kernels and the autograd
formulas. Every backend's ops share these formulas; only the kernels they call differ."""
import torch

from . import _C  # noqa: F401  (loading it runs TORCH_LIBRARY: defines torch.ops.twolayer_ops.*)

ops = torch.ops.twolayer_ops

# Which devices the compiled extension has kernels for; read once, so traced code sees constants.
HAS_CUDA_KERNELS = torch._C._dispatch_has_kernel_for_dispatch_key("twolayer_ops::linear_relu", "CUDA")


# ---- fake kernels: shapes, dtypes and devices only -------------------------------------------

def linear_relu_fake(x, weight, bias):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def linear_relu_backward_fake(grad_out, out, x, weight, output_mask):
    def grad(requested, shape):
        return x.new_empty(shape if requested else (0,))

    return (grad(output_mask[0], x.shape), grad(output_mask[1], weight.shape), grad(output_mask[2], (weight.shape[0],)))


def relu_fake(x):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def relu_backward_fake(grad_out, out):
    return torch.empty_like(out, memory_format=torch.contiguous_format)


# ---- the autograd formulas, one per op, shared by every backend ---------------------------------

def save_linear_relu(ctx, inputs, output):
    """Saves x, weight and the output; the mask is recovered as out > 0, never from the pre-activation."""
    x, weight, bias = inputs[:3]
    ctx.save_for_backward(x, weight, output)
    ctx.has_bias = bias is not None


def linear_relu_grads(ctx, grad_out, backward_op):
    """(grad_x, grad_weight, grad_bias) through `backward_op`, computing only what autograd needs."""
    x, weight, out = ctx.saved_tensors
    need = ctx.needs_input_grad
    mask = [bool(need[0]), bool(need[1]), bool(ctx.has_bias and need[2])]
    if not any(mask):
        return None, None, None
    grads = backward_op(grad_out, out, x, weight, mask)
    return tuple(g if m else None for g, m in zip(grads, mask))


def save_relu(ctx, inputs, output):
    ctx.save_for_backward(output)


def relu_grad(ctx, grad_out, backward_op):
    (out,) = ctx.saved_tensors
    return backward_op(grad_out, out)


def register_backend_ops(forward_name, backward_name, relu_name, relu_backward_name):
    """Registers fake kernels and autograd for one backend's four ops (same schemas in every backend)."""
    torch.library.register_fake(forward_name)(linear_relu_fake)
    torch.library.register_fake(backward_name)(linear_relu_backward_fake)
    torch.library.register_fake(relu_name)(relu_fake)
    torch.library.register_fake(relu_backward_name)(relu_backward_fake)
    backward_op = _resolve(backward_name)
    relu_backward_op = _resolve(relu_backward_name)
    torch.library.register_autograd(
        forward_name, lambda ctx, g: linear_relu_grads(ctx, g, backward_op), setup_context=save_linear_relu
    )
    torch.library.register_autograd(
        relu_name, lambda ctx, g: relu_grad(ctx, g, relu_backward_op), setup_context=save_relu
    )


def _resolve(qualname):
    namespace, name = qualname.split("::")
    return getattr(getattr(torch.ops, namespace), name).default


@torch.library.register_fake("twolayer_ops::two_layer_step")
def two_layer_step_fake(x, y, params, grads, state, optimizer, lr, momentum, beta1, beta2, eps, step, loss_scale, update):
    return x.new_empty(())


@torch.library.register_fake("twolayer_ops::two_layer_train")
def two_layer_train_fake(x, y, params, grads, state, optimizer, lr, momentum, beta1, beta2, eps, calls_done, steps,
                         accumulation_steps):
    return x.new_empty((steps,))


register_backend_ops(
    "twolayer_ops::linear_relu",
    "twolayer_ops::linear_relu_backward",
    "twolayer_ops::relu",
    "twolayer_ops::relu_backward",
)
