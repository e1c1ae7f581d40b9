"""The torch.library ops: loads the compiled extension (schemas, kernels and the C++ autograd of
every backend's ops) and registers their fake kernels, for torch.compile and opcheck, their FLOP
counts, for torch.utils.flop_counter, and the forward ops' batching rules, for torch.vmap."""
import math

import torch
from torch.utils.flop_counter import register_flop_formula

from . import _C  # noqa: F401  (loading it runs TORCH_LIBRARY: defines torch.ops.twolayer_ops.*)
from .checks import check_linear_relu_args

ops = torch.ops.twolayer_ops

# Which devices the compiled extension has kernels for; read once, so traced code sees constants.
HAS_CUDA_KERNELS = torch._C._dispatch_has_kernel_for_dispatch_key("twolayer_ops::linear_relu", "CUDA")

# The vector ISAs of the native CPU GEMM kernels, by the levels of torch.ops.twolayer_ops_cpu.info()
# and set_isa (csrc/cpu_gemm.cpp); at "none", BLAS runs.
CPU_ISAS = ("none", "avx2", "avx512")


def cpu_isa():
    """(the ISA of the native CPU GEMM kernels in use, the best this CPU has), names from CPU_ISAS."""
    in_use, best = torch.ops.twolayer_ops_cpu.info()
    return CPU_ISAS[in_use], CPU_ISAS[best]


# ---- fake kernels: shapes, dtypes and devices only -------------------------------------------

def linear_relu_fake(x, weight, bias):
    # Checks as the kernels do: with tensors on the meta device and others (x on the CPU, weight on
    # meta), the dispatcher picks this kernel, and no other would check.
    check_linear_relu_args(x, weight, bias)
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def linear_relu_backward_fake(grad_out, out, x, weight, output_mask):
    def grad(requested, shape):
        return x.new_empty(shape if requested else (0,))

    return (grad(output_mask[0], x.shape), grad(output_mask[1], weight.shape), grad(output_mask[2], (weight.shape[0],)))


def relu_fake(x):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def relu_backward_fake(grad_out, out):
    return torch.empty_like(out, memory_format=torch.contiguous_format)


# ---- batching rules (torch.vmap) ---------------------------------------------------------------

def linear_relu_vmap(op):
    """x batched alone: one call, the batch as one more leading dimension of x. A batched weight or
    bias: one call per batch entry (what torch's fallback would do, without its warning)."""

    def rule(info, in_dims, x, weight, bias):
        x_dim, weight_dim, bias_dim = in_dims
        if weight_dim is None and bias_dim is None:
            return op(x.movedim(x_dim, 0), weight, bias), 0

        def entry(t, dim, i):
            return t if dim is None else t.select(dim, i)

        if info.batch_size == 0:  # no entry to call the op on: an empty result of the entries' shape
            rows = [d for i, d in enumerate(x.shape[:-1]) if i != x_dim]
            n = [d for i, d in enumerate(weight.shape) if i != weight_dim][0]
            return x.new_empty((0, *rows, n)), 0
        outs = [op(entry(x, x_dim, i), entry(weight, weight_dim, i), entry(bias, bias_dim, i))
                for i in range(info.batch_size)]
        return torch.stack(outs), 0

    return rule


def relu_vmap(op):
    def rule(info, in_dims, x):
        return op(x), in_dims[0]  # elementwise: the batch stays where it is

    return rule


# ---- FLOP counts (torch.utils.flop_counter.FlopCounterMode), as torch counts F.linear ------------

def linear_relu_flop(x_shape, weight_shape, *args, out_shape=None, **kwargs):
    """2 M N K: the bias and the ReLU are not counted, as for addmm."""
    return 2 * math.prod(x_shape[:-1]) * weight_shape[0] * weight_shape[1]


def linear_relu_backward_flop(grad_out_shape, saved_out_shape, x_shape, weight_shape, output_mask, *args,
                              out_shape=None, **kwargs):
    """2 M N K for each of dX and dW asked for."""
    return linear_relu_flop(x_shape, weight_shape) * (bool(output_mask[0]) + bool(output_mask[1]))


def register_python_rules(forward_name, backward_name, relu_name, relu_backward_name):
    """Registers one backend's fake kernels, FLOP counts and its forward ops' batching rules (the ops'
    autograd is C++, csrc/autograd.cpp). The backward ops need no batching rule: under torch.func the
    backward runs the torch formula (twolayer_ops.functional)."""
    torch.library.register_fake(forward_name)(linear_relu_fake)
    torch.library.register_fake(backward_name)(linear_relu_backward_fake)
    torch.library.register_fake(relu_name)(relu_fake)
    torch.library.register_fake(relu_backward_name)(relu_backward_fake)
    register_flop_formula(_packet(forward_name))(linear_relu_flop)
    register_flop_formula(_packet(backward_name))(linear_relu_backward_flop)
    torch.library.register_vmap(forward_name, linear_relu_vmap(_op(forward_name)))
    torch.library.register_vmap(relu_name, relu_vmap(_op(relu_name)))


def _packet(qualname):
    namespace, name = qualname.split("::")
    return getattr(getattr(torch.ops, namespace), name)


def _op(qualname):
    return _packet(qualname).default


@torch.library.register_fake("twolayer_ops::two_layer_step")
def two_layer_step_fake(x, y, params, grads, state, optimizer, lr, momentum, beta1, beta2, eps, step, loss_scale, update):
    return x.new_empty(())


@torch.library.register_fake("twolayer_ops::two_layer_train")
def two_layer_train_fake(x, y, params, grads, state, optimizer, lr, momentum, beta1, beta2, eps, calls_done, steps,
                         accumulation_steps):
    return x.new_empty((steps,))


register_python_rules(
    "twolayer_ops::linear_relu",
    "twolayer_ops::linear_relu_backward",
    "twolayer_ops::relu",
    "twolayer_ops::relu_backward",
)
