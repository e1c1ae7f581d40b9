"""The torch reference every kernel is measured against (tests and benchmarks import it)."""
import torch
import torch.nn.functional as F

# Relative-error bounds ||out - ref|| / ||ref|| against a float64 reference (ENGINEERING.md).
REL_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def linear_relu_ref(x, weight, bias=None):
    return torch.relu(F.linear(x, weight, bias))


def relu_ref(x):
    return torch.relu(x)


def rel_error(out, ref):
    """||out - ref|| / ||ref|| in float64 over the finite entries (NaN placement is checked apart)."""
    out, ref = out.double(), ref.double()
    finite = torch.isfinite(ref)
    diff = torch.linalg.vector_norm((out - ref)[finite])
    scale = torch.linalg.vector_norm(ref[finite])
    return (diff / scale).item() if scale > 0 else diff.item()


def assert_close_to_ref(out, ref, dtype=None, what="output"):
    """out matches ref in shape, dtype, NaN placement and relative error for `dtype`."""
    dtype = dtype or out.dtype
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert out.dtype == dtype, f"{what}: dtype {out.dtype} != {dtype}"
    nan_out, nan_ref = torch.isnan(out), torch.isnan(ref)
    assert torch.equal(nan_out.cpu(), nan_ref.cpu()), f"{what}: NaN at different places than the reference"
    assert torch.equal(torch.isinf(out).cpu(), torch.isinf(ref).cpu()), f"{what}: inf at different places"
    err = rel_error(out, ref)
    assert err <= REL_TOL[dtype], f"{what}: relative error {err:.3g} > {REL_TOL[dtype]:.0e} for {dtype}"
