"""Parametrizations shared by the suite: every kernel backend on every device, so a new backend
gets every case for free. CUDA cases carry the `cuda` marker and skip where CUDA is absent."""
import pytest
import torch
from hypothesis import Phase

from twolayer_ops import available_backends
from twolayer_ops.backends import BACKENDS

KERNEL_BACKENDS = [name for name in BACKENDS if name != "torch"]


def kernel_cases(devices=("cpu", "cuda")):
    params = []
    for device in devices:
        for backend in KERNEL_BACKENDS:
            marks = [pytest.mark.cuda] if device == "cuda" else []
            runs = backend in available_backends(device)
            marks.append(pytest.mark.skipif(not runs, reason=f"backend {backend!r} does not run on {device} here"))
            params.append(pytest.param(device, backend, marks=marks, id=f"{backend}-{device}"))
    return params


# (x shape, N): the seed's layers, odd sizes, 3-D and 1-D inputs.
SHAPES = [
    ((64, 1000), 100),
    ((64, 100), 10),
    ((1, 1), 1),
    ((7, 33), 127),
    ((127, 7), 33),
    ((33, 127), 7),
    ((2, 3, 17), 5),
    ((17,), 5),
]
EMPTY_SHAPES = [((0, 5), 3), ((4, 0), 3), ((4, 5), 0), ((0, 0), 0), ((2, 0, 5), 3), ((2, 3, 0), 4), ((0,), 3), ((3, 4, 5), 0)]


def poison_allocator(shape, dtype, device):
    """Best effort: fill and free a block of the size the op will ask for, so the allocator
    tends to hand the NaN-filled block back and unwritten outputs show as NaN."""
    torch.full(shape, float("nan"), dtype=dtype, device=device)


def phases(device):
    """Hypothesis's phases for property tests on `device`. No shrinking on CUDA: each smaller example
    costs GPU time (and new Triton autotuning) that a short GPU lease cannot spare; the first failing
    example is reported as drawn."""
    return [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if device == "cpu" else [])
