"""Triton kernels of twolayer_ops (named triton_kernels, not triton, so `import triton` is never shadowed)."""
