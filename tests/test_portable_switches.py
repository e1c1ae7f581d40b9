"""The portable CUDA GEMMs (csrc/cuda/linear_relu.cu) under the switches that stay off until a GPU run
times them: TWOLAYER_OPS_SIMT_SMALL_TILES=1 (float32's small-output tiles),
TWOLAYER_OPS_SIMT_WIDE_THREAD_TILES=1 (float32's 128-thread tiles) and TWOLAYER_OPS_SPLITK_MIN_KTILES=2
(deeper splits over K). Each runs in a process of its own (the
switches are read once): forward and every gradient against float64, and the profiler's kernel names
show that the switch took effect. tests/test_gemm_emulated.py checks the same code on every build."""
import ast
import os
import re
import pathlib
import subprocess
import sys

import pytest
import torch

from twolayer_ops import ops

ROOT = pathlib.Path(__file__).resolve().parent.parent
# (M, K, N): the seed's layers (their forwards split K at either depth on an H100/H200), a long K
# over few columns, sizes off the tiles, and one of each.
CASES = [(64, 1000, 100), (64, 100, 10), (5, 1056, 130), (130, 70, 257), (1, 3, 1)]
SWITCHES = {
    "small_tiles": {"TWOLAYER_OPS_SIMT_SMALL_TILES": "1"},
    "splitk2": {"TWOLAYER_OPS_SPLITK_MIN_KTILES": "2"},
    "small_tiles_splitk2": {"TWOLAYER_OPS_SIMT_SMALL_TILES": "1", "TWOLAYER_OPS_SPLITK_MIN_KTILES": "2"},
    "wide_thread_tiles": {"TWOLAYER_OPS_SIMT_WIDE_THREAD_TILES": "1"},
}
# The SIMT GEMM kernels' tile kind, their last template argument (cuda_gemm::SimtTiles).
TILE_KINDS = {"default": 0, "small_tiles": 1, "wide_thread_tiles": 2}
WORKER = r"""
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from tests.reference import assert_close_to_ref, linear_relu_ref
from twolayer_ops import linear_relu

device, cases = sys.argv[1], eval(sys.argv[2])
with profile(activities=[ProfilerActivity.CUDA if device == "cuda" else ProfilerActivity.CPU]) as prof:
    for m, k, n in cases:
        for dtype in (torch.float32, torch.float64):
            g = torch.Generator().manual_seed(m * k + n)
            x, w, b, go = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((m, k), (n, k), (n,), (m, n)))
            ins = [t.to(device, dtype).requires_grad_() for t in (x, w, b)]
            out = linear_relu(*ins, backend="native")
            got = (out, *torch.autograd.grad(out, ins, go.to(device, dtype)))
            ref_ins = [t.requires_grad_() for t in (x, w, b)]
            ref = linear_relu_ref(*ref_ins)
            want = (ref, *torch.autograd.grad(ref, ref_ins, go))
            for name, a, r in zip(("output", "grad_x", "grad_weight", "grad_bias"), got, want):
                assert_close_to_ref(a.cpu(), r.to(dtype), dtype, f"{name}, {m}x{k}x{n} {dtype}")
launches = {e.key: e.count for e in prof.key_averages() if "kernel<" in e.key}
print("kernels:", repr(launches))
"""


def _run(device, switches):
    """{kernel name: launches} of the worker's run under `switches` (the names are demangled signatures)."""
    proc = subprocess.run([sys.executable, "-c", WORKER, device, repr(CASES)], cwd=ROOT, env={**os.environ, **switches},
                          capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return ast.literal_eval(proc.stdout.split("kernels:", 1)[1].strip())


def _launches(kernels, name):
    return sum(count for key, count in kernels.items() if name in key)


def _float32_tile_kinds(kernels):
    """The tile kinds (the last template argument) of the float32 SIMT GEMMs that ran."""
    return {int(found.group(1)) for key in kernels
            if (found := re.search(r"(?:gemm_kernel<float, \d, |grads_kernel<float, )(\d)>", key))}


@pytest.fixture(scope="module")
def default_kernels():
    return _run("cuda", {})


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or not ops.HAS_CUDA_KERNELS, reason="needs a GPU and the CUDA kernels")
@pytest.mark.parametrize("variant", SWITCHES)
def test_switch_on_the_gpu(variant, default_kernels):
    kernels = _run("cuda", SWITCHES[variant])
    # Every case is a small output (the small tiles fit each), so one tile kind runs every float32 product.
    kind = next((kind for name, kind in TILE_KINDS.items() if name in variant), TILE_KINDS["default"])
    assert _float32_tile_kinds(kernels) == {kind}, kernels
    assert _launches(kernels, f"gemm_kernel<float, 0, {kind}>"), kernels
    if kind == TILE_KINDS["wide_thread_tiles"]:  # dX and dW one launch each
        assert _launches(kernels, f"gemm_kernel<float, 1, {kind}>") and _launches(kernels, f"gemm_kernel<float, 2, {kind}>"), \
            kernels
    else:
        assert _launches(kernels, f"grads_kernel<float, {kind}>"), kernels
    if "splitk2" in variant:  # shorter slices split more products (the seed's 64x100->10 forward among them)
        assert _launches(kernels, "splitk_reduce_kernel<float") > _launches(default_kernels, "splitk_reduce_kernel<float"), \
            (kernels, default_kernels)


def test_worker_runs_on_the_cpu():
    """The worker itself, on the CPU kernels (where the switches do nothing), so that no GPU time goes
    to a broken script."""
    _run("cpu", SWITCHES["small_tiles_splitk2"])
