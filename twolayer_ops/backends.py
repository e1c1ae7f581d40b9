"""The backends and where each one runs. A backend is four callables with the op schemas:
linear_relu, linear_relu_backward, relu, relu_backward. The forward ones carry autograd. The ops are
held as their OpOverloads (.default): calling one skips the packet's overload lookup, a microsecond."""
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import ops
from .checks import autocast_casts, check_linear_relu_args

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
CPU_NATIVE_DTYPES = (torch.float32, torch.float64)


@dataclass(frozen=True)
class Backend:
    name: str
    linear_relu: Callable
    linear_relu_backward: Callable
    relu: Callable
    relu_backward: Callable
    supports: Callable[[str, torch.dtype], bool]  # (device type, dtype) -> has a kernel


def _torch_linear_relu(x, weight, bias):
    """The composite forward, in torch ops, with the checks the kernels make, so that every backend
    takes and refuses the same arguments."""
    check_linear_relu_args(x, weight, bias)
    return torch.relu(F.linear(x, weight, bias))


def _torch_linear_relu_backward(grad_out, out, x, weight, output_mask):
    """The composite formula, in torch ops: the reference the kernels must match."""
    rows = math.prod(x.shape[:-1])  # counted: reshape(-1, 0) cannot infer it
    gm = torch.where(out <= 0, 0, grad_out).reshape(rows, weight.shape[0])
    empty = x.new_empty(0)
    return (
        (gm @ weight).reshape(x.shape) if output_mask[0] else empty,
        gm.t() @ x.reshape(rows, weight.shape[1]) if output_mask[1] else empty,
        gm.sum(0) if output_mask[2] else empty,
    )


def _triton_backend():
    """The triton backend; where the triton package is missing it is listed but supports nothing."""
    try:
        from .triton_kernels import linear_relu as triton_kernels  # implements twolayer_ops::*_triton
    except ModuleNotFoundError as err:
        if err.name != "triton":
            raise

        def missing(*args, **kwargs):
            raise RuntimeError("backend 'triton' needs the triton package")

        return Backend("triton", missing, missing, missing, missing, lambda device_type, dtype: False)
    return Backend(
        "triton",
        ops.ops.linear_relu_triton.default,
        ops.ops.linear_relu_backward_triton.default,
        ops.ops.relu_triton.default,
        ops.ops.relu_backward_triton.default,
        triton_kernels.supports,
    )


def _native_supports(device_type, dtype):
    if device_type == "cpu":
        return dtype in CPU_NATIVE_DTYPES
    return device_type == "cuda" and ops.HAS_CUDA_KERNELS and dtype in FLOAT_DTYPES


BACKENDS = {
    "native": Backend(
        "native",
        ops.ops.linear_relu.default,
        ops.ops.linear_relu_backward.default,
        ops.ops.relu.default,
        ops.ops.relu_backward.default,
        _native_supports,
    ),
    "triton": _triton_backend(),
    "torch": Backend(
        "torch",
        _torch_linear_relu,
        _torch_linear_relu_backward,
        torch.relu,
        lambda grad_out, out: torch.where(out <= 0, 0, grad_out),
        lambda device_type, dtype: dtype in FLOAT_DTYPES,
    ),
}
BACKEND_NAMES = ("auto", *BACKENDS)


def _device_usable(device_type):
    return device_type == "cpu" or (device_type == "cuda" and torch.cuda.is_available())


def available_backends(device="cpu"):
    """The backends that run on `device` for at least one dtype, best first."""
    device_type = torch.device(device).type
    if not _device_usable(device_type):
        return []
    return [name for name, b in BACKENDS.items() if any(b.supports(device_type, dt) for dt in FLOAT_DTYPES)]


def resolve_backend(name, tensor, *, autocast=False):
    """The Backend that will run `tensor`: "auto" takes native where it has a kernel, else torch.
    autocast: the call is the fused forward, which torch.autocast casts (relu it does not)."""
    # is_cuda and is_cpu answer in a tenth of the time of device.type, which builds a torch.device.
    device_type = "cuda" if tensor.is_cuda else "cpu" if tensor.is_cpu else tensor.device.type
    backend = _RESOLVED.get((name, device_type, tensor.dtype))
    if backend is None and autocast and autocast_casts(tensor):
        # The op's autocast kernel casts, then runs every dtype autocast makes (csrc/autocast.cpp: F.linear's
        # own ops where the backend has no 16-bit kernel): a backend that takes float32 takes this call.
        backend = _RESOLVED.get((name, device_type, torch.float32))
    return backend if backend is not None else _resolve(name, device_type, tensor.dtype)


def check_backend_name(name):
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")


def _resolve(name, device_type, dtype):
    check_backend_name(name)
    if name == "auto":
        return BACKENDS["native"] if BACKENDS["native"].supports(device_type, dtype) else BACKENDS["torch"]
    backend = BACKENDS[name]
    if not backend.supports(device_type, dtype):
        raise RuntimeError(
            f"backend {name!r} has no kernel for {dtype} on {device_type}; "
            f"available here: {', '.join(available_backends(device_type)) or 'none'} (or backend='auto')"
        )
    return backend


def _resolvable(name, device_type, dtype):
    return name == "auto" or BACKENDS[name].supports(device_type, dtype)


# Resolving is on every call's path: the valid answers are looked up, never recomputed. Built once
# here, never changed, so that code traced by torch.compile sees a constant.
_RESOLVED = {
    (name, device_type, dtype): _resolve(name, device_type, dtype)
    for name in BACKEND_NAMES
    for device_type in ("cpu", "cuda")
    for dtype in FLOAT_DTYPES
    if _resolvable(name, device_type, dtype)
}
