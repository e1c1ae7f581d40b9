"""Runs every CUDA kernel once on small, ragged shapes: the workload for compute-sanitizer.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python -m benchmarks.sanitize_kernels
"""
import sys

import torch
from torch import nn

import twolayer_ops
from twolayer_ops.fused_step import FusedTwoLayerStep

# The last two split K on the native GEMMs (plan_split_k): 2 slices in float32 and float64, and the
# seed's first layer, 4 to 13 slices in every dtype.
SHAPES = [(1, 1, 1), (7, 33, 5), (65, 17, 130), (33, 129, 31), (64, 1000, 100)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def main(backends):
    for backend in backends:
        for dtype in DTYPES:
            for m, k, n in SHAPES:
                # Offset views: unaligned pointers and non-unit strides reach the kernels unchanged.
                x = torch.randn(m, k + 1, device="cuda", dtype=dtype)[:, 1:].requires_grad_()
                w = torch.randn(n, k, device="cuda", dtype=dtype).requires_grad_()
                b = torch.randn(n, device="cuda", dtype=dtype).requires_grad_()
                twolayer_ops.linear_relu(x, w, b, backend=backend).sum().backward()
                twolayer_ops.relu(x, backend=backend).sum().backward()
        torch.cuda.synchronize()
        print(f"{backend}: every kernel ran on {len(DTYPES)} dtypes x {len(SHAPES)} shapes")
    if "native" in backends:
        fused_steps()


def fused_steps():
    """The fused training step's kernel: an odd size and the seed's, every optimizer."""
    for n, d_in, hidden, d_out in [(7, 33, 19, 5), (64, 1000, 100, 10)]:
        for optimizer in ("sgd", "momentum", "adam"):
            l1, l2 = nn.Linear(d_in, hidden).cuda(), nn.Linear(hidden, d_out).cuda()
            step = FusedTwoLayerStep(l1, l2, optimizer, lr=1e-3, momentum=0.9 if optimizer == "momentum" else 0.0,
                                     accumulation_steps=2)
            x, y = torch.randn(n, d_in, device="cuda"), torch.randn(n, d_out, device="cuda")
            step.run(x, y, 3)
            step(x, y)
    torch.cuda.synchronize()
    print("fused step: every optimizer ran at two sizes")


if __name__ == "__main__":
    main(sys.argv[1:] or [b for b in twolayer_ops.available_backends("cuda") if b != "torch"])
