"""The torch.library ops: loads the compiled extension (schemas, kernels and the C++ autograd of
every backend's ops) and registers their fake kernels, for torch.compile and opcheck."""
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


def register_fakes(forward_name, backward_name, relu_name, relu_backward_name):
    """Registers the fake kernels of one backend's four ops (their autograd is C++, csrc/autograd.cpp)."""
    torch.library.register_fake(forward_name)(linear_relu_fake)
    torch.library.register_fake(backward_name)(linear_relu_backward_fake)
    torch.library.register_fake(relu_name)(relu_fake)
    torch.library.register_fake(relu_backward_name)(relu_backward_fake)


@torch.library.register_fake("twolayer_ops::two_layer_step")
def two_layer_step_fake(x, y, params, grads, state, optimizer, lr, momentum, beta1, beta2, eps, step, loss_scale, update):
    return x.new_empty(())


@torch.library.register_fake("twolayer_ops::two_layer_train")
def two_layer_train_fake(x, y, params, grads, state, optimizer, lr, momentum, beta1, beta2, eps, calls_done, steps,
                         accumulation_steps):
    return x.new_empty((steps,))


register_fakes(
    "twolayer_ops::linear_relu",
    "twolayer_ops::linear_relu_backward",
    "twolayer_ops::relu",
    "twolayer_ops::relu_backward",
)
