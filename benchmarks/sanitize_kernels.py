"""Runs every CUDA kernel once on small, ragged shapes: the workload for compute-sanitizer.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python -m benchmarks.sanitize_kernels
"""
import sys

import torch

import twolayer_ops

SHAPES = [(1, 1, 1), (7, 33, 5), (65, 17, 130), (33, 129, 31)]
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


if __name__ == "__main__":
    main(sys.argv[1:] or [b for b in twolayer_ops.available_backends("cuda") if b != "torch"])
