"""64-bit index arithmetic: an output of more than 2^31 elements."""
import pytest
import torch

from twolayer_ops import linear_relu

from .cases import kernel_cases
from .reference import linear_relu_ref

M, N = 65537, 32768  # M * N = 2^31 + 2^15


@pytest.mark.parametrize("device,backend", [c for c in kernel_cases() if c.id == "native-cpu" or "cuda" in c.id])
def test_output_over_2_31_elements(device, backend):
    """Checks the first and last rows and columns: a 32-bit offset would wrap and miss them."""
    dtype = torch.float32 if device == "cpu" else torch.bfloat16  # 8.6 GB on the CPU, 4.3 GB on a GPU
    g = torch.Generator().manual_seed(0)
    x = torch.randn(M, 2, generator=g).to(device, dtype)
    w = torch.randn(N, 2, generator=g).to(device, dtype)
    b = torch.randn(N, generator=g).to(device, dtype)
    out = linear_relu(x, w, b, backend=backend)
    assert out.numel() > 2**31
    for rows in (slice(0, 2), slice(M - 2, M)):
        want = linear_relu_ref(x[rows].double(), w.double(), b.double())
        torch.testing.assert_close(out[rows].double(), want, rtol=2e-2, atol=2e-2)
    del out
