"""The Hopper path of the Triton backend (triton_kernels/hopper.py): persistent TMA-descriptor GEMM
kernels, on by default (TWOLAYER_OPS_TRITON_TMA=0 turns them off).

On CPU: the three kernels run through Triton's interpreter (host-side descriptors included) against
a float64 reference; the eligibility rules; the fallback where triton lacks descriptors; the
environment switch; and every kept config compiled for sm_90 without a GPU, with its shared memory,
wgmma and TMA instructions checked in the PTX and, where cuobjdump is at hand, in the machine code
(HGMMA, UTMALDG, no spills). On a Hopper GPU: the path forced on, checked against a float64
reference across shapes, configs and the NaN/zero rules, with a spy that proves the TMA kernels ran."""
import functools
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")

from benchmarks import machine_code  # noqa: E402
from twolayer_ops.backends import BACKENDS  # noqa: E402
from twolayer_ops.triton_kernels import hopper  # noqa: E402
from twolayer_ops.triton_kernels import linear_relu as tk  # noqa: E402

from .reference import assert_close_to_ref, linear_relu_ref, rel_error  # noqa: E402

ops = torch.ops.twolayer_ops
needs_tma_api = pytest.mark.skipif(not hopper.HAS_TMA_API, reason="this triton has no host-side tensor descriptors")
needs_interpreter = pytest.mark.skipif(not tk.INTERPRETER_RUNS, reason=f"no triton interpreter here: {tk.INTERPRETER_PROBLEM}")


def has_hopper():
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


requires_hopper = pytest.mark.skipif(not has_hopper(), reason="needs a CUDA GPU of capability >= 9")


def on_hopper(test):
    """GPU tests: the cuda marker, skipped without a device of capability >= 9 or descriptors."""
    return pytest.mark.cuda(requires_hopper(needs_tma_api(test)))


ALL_KERNELS = list(hopper.KERNELS)


def kernel_name(kernel):
    return tk.python_function(kernel).__name__


def rand(*shape, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


# ---- the kernels through the interpreter (CPU) ----------------------------------------------------

def interpreted(**meta):
    return functools.partial(hopper.run_interpreted, meta_override=meta)


@needs_interpreter
@needs_tma_api
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("flatten,split", [(True, True), (False, False)], ids=["flat-split", "plain"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_interpreted_tma_kernels_match_float64(dtype, flatten, split, bias):
    """All three kernels, on shapes that cross the 32-wide interpreter tiles in every dimension and
    give each of the 3 persistent programs several tiles, with NaN and exact-zero pre-activations;
    outputs poisoned first."""
    M, K, N = 70, 96, 72  # 3 x 3 tiles of out, partial in M and N; 3 K steps
    x, w, b = rand(M, K), rand(N, K, seed=1), rand(N, seed=2)
    x[3, 5] = float("nan")
    w[9], b[9] = 0.0, 0.0  # column 9: exact zeros (NaN in row 3)
    b[10] = -1e4  # column 10: negative in every finite row
    b = b if bias else None
    xd, wd, bd = (t.to(dtype) if t is not None else None for t in (x, w, b))
    run = interpreted(FLATTEN=flatten, EPILOGUE_SPLIT=split)

    out = torch.full((M, N), 777.0, dtype=dtype)
    hopper.forward(xd, wd, bd, out, "ieee", runner=run)
    ref = linear_relu_ref(xd.double(), wd.double(), bd.double() if bias else None)
    assert_close_to_ref(out, ref.to(dtype), dtype)
    assert torch.isnan(out[3]).all() and not torch.isnan(out[:3]).any()
    assert (out[:3, 9] == 0).all() and (out[4:, 9] == 0).all()
    if bias:
        assert (out[:3, 10] == 0).all()

    # The backward kernels take the masked gradient, here of the float64 output: NaN outputs pass
    # their gradient, zeros stop it.
    o = ref.to(dtype)
    g = rand(M, N, seed=3).to(dtype)
    gm = torch.where(o <= 0, 0, g)
    xf = torch.nan_to_num(xd)  # dw's reference would be all NaN otherwise
    dx = torch.full((M, K), 777.0, dtype=dtype)
    hopper.grad_x(gm, wd, dx, "ieee", runner=run)
    dw = torch.full((N, K), 777.0, dtype=dtype)
    db = torch.full((N,), 777.0, dtype=dtype) if bias else None
    hopper.grad_weight_bias(gm, xf, dw, db, "ieee", runner=run)
    gm = gm.double()
    assert_close_to_ref(dx, (gm @ wd.double()).to(dtype), dtype, "grad_x")
    assert_close_to_ref(dw, (gm.t() @ xf.double()).to(dtype), dtype, "grad_weight")
    if bias:
        assert_close_to_ref(db, gm.sum(0).to(dtype), dtype, "grad_bias")
        # Columns 9 and 10 are 0 in every row but row 3, which is NaN: zeros stop the gradient,
        # NaN passes it, so each sum is exactly row 3's gradient.
        assert db[9] == g[3, 9] and db[10] == g[3, 10]


@needs_interpreter
@needs_tma_api
def test_interpreted_tma_forward_one_program_walks_every_tile():
    """A single persistent program over 3 x 5 tiles in grouped order (GROUP_SIZE 2, 3 row-tiles: a
    partial last group): every tile is written once, none skipped."""
    M, K, N = 80, 32, 160
    x, w = rand(M, K, dtype=torch.float32), rand(N, K, dtype=torch.float32, seed=1)
    out = torch.full((M, N), float("nan"), dtype=torch.float32)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hopper, "INTERPRETER_PROGRAMS", 1)
        hopper.forward(x, w, None, out, "ieee", runner=interpreted())
    assert_close_to_ref(out, linear_relu_ref(x.double(), w.double()).float(), torch.float32)


@needs_interpreter
@needs_tma_api
def test_autotuned_launch_path_under_TRITON_INTERPRET():
    """The GPU launch path (autotuner, config pre_hook setting the descriptors' block shapes,
    persistent grid) with every kept config, run by TRITON_INTERPRET=1 on CPU tensors."""
    out = run_python(
        """
        import torch
        from twolayer_ops.triton_kernels import hopper
        hopper.device_limits = lambda index: (232448, 5, 9)  # 5 "SMs": each program walks tiles
        torch.manual_seed(0)
        M, K, N = 300, 136, 264  # partial tiles in every dimension, for every config
        results = []
        all_configs = {kernel: kernel.configs for kernel in hopper.KERNELS}
        def check(got, want):
            results.append(((got.double() - want).norm() / want.norm()).item() < 1e-2)
        for dtype in (torch.float16, torch.float32):
            x, w, b = torch.randn(M, K).to(dtype), torch.randn(N, K).to(dtype), torch.randn(N).to(dtype)
            o = torch.relu(x.double() @ w.double().t() + b.double())
            g = torch.randn(M, N).to(dtype)
            gm = torch.where(o <= 0, 0, g.double())
            gmd = gm.to(dtype)
            for kernel in hopper.KERNELS:
                if dtype == torch.float32 and kernel is not hopper.linear_relu_fwd_tma_kernel:
                    continue
                dw_db = kernel is hopper.linear_relu_dw_db_tma_kernel
                kernel.configs = all_configs[kernel]
                for config in hopper.kept_configs(kernel, dtype):
                    kernel.configs = [config]  # one config: the autotuner runs it without timing
                    precision = "tf32" if dtype == torch.float32 else "ieee"
                    if kernel is hopper.linear_relu_fwd_tma_kernel:
                        check(hopper.forward(x, w, b, torch.full((M, N), 7.0, dtype=dtype), precision), o)
                    elif not dw_db:
                        check(hopper.grad_x(gmd, w, torch.full((M, K), 7.0, dtype=dtype), precision), gm @ w.double())
                    else:
                        db = None if config.kwargs["FLATTEN"] else torch.full((N,), 7.0, dtype=dtype)
                        dw, db = hopper.grad_weight_bias(gmd, x, torch.full((N, K), 7.0, dtype=dtype), db, precision)
                        check(dw, gm.t() @ x.double())
                        if db is not None:
                            check(db, gm.sum(0))
        print(len(results), all(results))
        """,
        TRITON_INTERPRET="1", TWOLAYER_OPS_TRITON_TMA="1",
    )
    expected = sum(len(hopper.kept_configs(k, torch.float16)) for k in hopper.KERNELS)
    expected += len(hopper.kept_configs(hopper.linear_relu_fwd_tma_kernel, torch.float32))
    expected += len(hopper.kept_configs(hopper.linear_relu_dw_db_tma_kernel, torch.float16, compute_db=True))
    assert out[-2:] == [str(expected), "True"]


# ---- eligibility, fallback, and the switch (CPU) -----------------------------------------------

def test_tma_layout_rules():
    base = torch.empty(64, 72, dtype=torch.bfloat16)
    assert hopper.tma_compatible(base)
    assert not hopper.tma_compatible(base.t())  # last stride not 1
    assert not hopper.tma_compatible(torch.empty(64, 60, dtype=torch.bfloat16))  # 120-byte rows
    assert hopper.tma_compatible(torch.empty(64, 60, dtype=torch.float32))  # 240 bytes: a multiple of 16
    assert not hopper.tma_compatible(base[:, 1:])  # base 2 bytes past an aligned one
    assert hopper.tma_compatible(base[:, 8:])  # 16 bytes past: aligned, row stride still 144 bytes
    assert not hopper.tma_compatible(base[:0])  # empty
    assert not hopper.tma_compatible(torch.empty(64, 0, dtype=torch.bfloat16))
    assert not hopper.tma_compatible(base[0])  # 1-D


class OnCuda:
    """A CPU tensor that reports a CUDA device, for eligible()'s dtype and device rules."""

    def __init__(self, t):
        self.t, self.device, self.dtype = t, torch.device("cuda", 0), t.dtype

    def __getattr__(self, name):
        return getattr(self.t, name)


@pytest.mark.parametrize("capability", [8, 9, 10])
def test_eligibility_rules(monkeypatch, capability):
    monkeypatch.setattr(hopper, "ENABLED", True)
    monkeypatch.setattr(hopper, "HAS_TMA_API", True)
    shared = [232448]
    monkeypatch.setattr(hopper, "device_limits", lambda index: (shared[0], 132, capability))
    on_hopper = capability >= 9
    fwd, dx, dw = hopper.linear_relu_fwd_tma_kernel, hopper.linear_relu_dx_tma_kernel, hopper.linear_relu_dw_db_tma_kernel

    def ok(kernel, dtype, precision="ieee", cols=64):
        operands = (OnCuda(torch.empty(32, cols, dtype=dtype)), OnCuda(torch.empty(48, cols, dtype=dtype)))
        return hopper.eligible(kernel, precision, *operands)

    assert not ok(dx, torch.bfloat16) and not ok(dw, torch.bfloat16)  # the backward kernels are off
    monkeypatch.setattr(hopper, "BACKWARD", True)
    for kernel in (fwd, dx, dw):
        assert ok(kernel, torch.bfloat16) == ok(kernel, torch.float16) == on_hopper
        assert not ok(kernel, torch.float64)
        assert not ok(kernel, torch.float32, "ieee")  # IEEE float32: no tensor cores
        assert not ok(kernel, torch.bfloat16, cols=60)  # 120-byte rows
    assert ok(fwd, torch.float32, "tf32") == on_hopper  # the TF32 forward
    assert not ok(dx, torch.float32, "tf32") and not ok(dw, torch.float32, "tf32")
    assert not hopper.eligible(fwd, "ieee", torch.empty(32, 64, dtype=torch.bfloat16))  # a CPU tensor
    shared[0] = 101376  # a capability >= 9 part with 99 KB per block: no config fits
    assert not ok(fwd, torch.bfloat16)
    shared[0] = 232448
    monkeypatch.setattr(hopper, "ENABLED", False)
    assert not ok(fwd, torch.bfloat16)
    monkeypatch.setattr(hopper, "ENABLED", True)
    monkeypatch.setattr(hopper, "HAS_TMA_API", False)
    assert not ok(fwd, torch.bfloat16)


@needs_tma_api
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("kernel", ALL_KERNELS, ids=kernel_name)
def test_pruner_keeps_the_configs_cut_for_the_dtype(monkeypatch, kernel, dtype):
    """The autotuner's pruner keeps a config only where its step is one 128-byte row of the dtype
    and its shared memory fits the device; with db, only unflattened ones; never none."""
    spec = hopper.KERNELS[kernel]
    first = list(spec["descs"])[0]
    named = {first: hopper.descriptor(torch.empty(64, 64, dtype=dtype))}
    prune = kernel.early_config_prune
    for limit in (232448, 101376):  # Hopper; a 99 KB consumer part (nothing fits: an error)
        monkeypatch.setattr(hopper, "device_limits", lambda index: (limit, 132, 9))
        for db in (False, True):
            want = [c for c in kernel.configs
                    if c.kwargs[spec["step"]] * dtype.itemsize == 128
                    and hopper.shared_memory_bytes(spec, c.kwargs, c.num_stages, dtype.itemsize) <= limit
                    and not (db and c.kwargs["FLATTEN"])]
            if want:
                assert prune(kernel.configs, named, COMPUTE_DB=db) == want
                assert want == hopper.kept_configs(kernel, dtype, limit, compute_db=db)
            else:
                with pytest.raises(RuntimeError, match="no Hopper TMA config fits"):
                    prune(kernel.configs, named, COMPUTE_DB=db)
    assert hopper.kept_configs(kernel, torch.bfloat16)  # every kernel has configs for 16-bit types


def run_python(code, **env):
    environ = {k: v for k, v in os.environ.items() if k not in ("TWOLAYER_OPS_TRITON_TMA", "TRITON_INTERPRET")}
    environ.update(env)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environ, capture_output=True,
                            text=True, timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split()


@pytest.mark.parametrize("value,enabled", [(None, "True"), ("0", "False"), ("1", "True")])
def test_environment_switch_read_at_import(value, enabled):
    env = {} if value is None else {"TWOLAYER_OPS_TRITON_TMA": value}
    out = run_python("from twolayer_ops.triton_kernels import hopper; print(hopper.ENABLED)", **env)
    assert out[-1] == enabled


@needs_interpreter
def test_fallback_without_tensor_descriptors():
    """A triton without triton.tools.tensor_descriptor: the backend imports with the Hopper path off
    (eligible() then refuses everything: test_eligibility_rules) and its portable kernels still run
    (here on CPU, through the interpreter)."""
    out = run_python(
        """
        import sys
        import triton.runtime.interpreter, triton.tools.tensor_descriptor  # triton itself keeps them
        # While twolayer_ops imports, importing the module fails, as on a triton without it.
        real, sys.modules["triton.tools.tensor_descriptor"] = sys.modules["triton.tools.tensor_descriptor"], None
        import torch
        from twolayer_ops.triton_kernels import hopper
        sys.modules["triton.tools.tensor_descriptor"] = real  # triton's own lazy imports need it back
        print(hopper.HAS_TMA_API, hopper.ENABLED)
        x = torch.randn(8, 16)
        print(torch.allclose(torch.ops.twolayer_ops.linear_relu_triton(x, torch.eye(16), None), x.relu()))
        """,
        TWOLAYER_OPS_TRITON_TMA="1",
    )
    assert out[-3:] == ["False", "True", "True"]


@needs_interpreter
def test_cpu_tensors_stay_on_the_portable_kernels(monkeypatch):
    monkeypatch.setattr(hopper, "ENABLED", True)
    ran = []
    monkeypatch.setattr(hopper, "launch", lambda kernel, *a, **k: ran.append(kernel))
    x, w, b = rand(5, 16), rand(8, 16, seed=1), rand(8, seed=2)
    out = ops.linear_relu_triton(x, w, b)
    ops.linear_relu_backward_triton(torch.ones_like(out), out, x, w, [True, True, True])
    assert ran == []
    assert_close_to_ref(out, linear_relu_ref(x, w, b), torch.float64)


# ---- compiled for sm_90 without a GPU (CPU) --------------------------------------------------------

def compile_cases():
    cases = []
    for kernel in ALL_KERNELS:
        dtypes = [torch.bfloat16, torch.float16] + ([torch.float32] if kernel is hopper.linear_relu_fwd_tma_kernel else [])
        for dtype in dtypes:
            for db in ([True, False] if kernel is hopper.linear_relu_dw_db_tma_kernel else [None]):
                for config in hopper.kept_configs(kernel, dtype, compute_db=bool(db)):
                    extra = {} if db is None else {"COMPUTE_DB": db}
                    ident = f"{kernel_name(kernel)}-{dtype}-{config}-db{db}".replace(" ", "")
                    cases.append(pytest.param(kernel, dtype, config, extra, id=ident))
    return cases


@needs_tma_api
@pytest.mark.skipif("nvidia" not in tk.triton_backends, reason="triton has no NVIDIA compiler here")
@pytest.mark.parametrize("kernel,dtype,config,extra", compile_cases())
def test_kept_configs_compile_for_sm90_with_wgmma_and_tma(kernel, dtype, config, extra):
    """Every config the pruner keeps compiles for sm_90 within an H100's shared memory, its dots
    on wgmma (no mma.sync fallback) with both operands in shared memory (a register-fed one is
    the hazard of tk.mask_in_kernel), its tiles moved by TMA loads and stores."""
    compiled = hopper.compile_for(kernel, config, dtype, **extra)
    ptx, ttgir = compiled.asm["ptx"], compiled.asm["ttgir"]
    assert compiled.metadata.shared <= 232448
    assert "warp_group_dot" in ttgir and re.search(r"wgmma\.mma_async", ptx)
    assert not re.search(r"\bmma\.sync", ptx)
    assert re.search(r"cp\.async\.bulk\.tensor\.2d\.shared[:a-z]*\.global", ptx), "no TMA load"
    assert re.search(r"cp\.async\.bulk\.tensor\.2d\.global\.shared", ptx), "no TMA store"
    if machine_code.find_cuobjdump():
        (sass,) = machine_code.read_cubin(compiled.asm["cubin"])
        assert sass.ops["HGMMA"] > 0 and sass.ops["UTMALDG"] > 0 and sass.ops["HMMA"] == 0, sass.ops
        assert sass.register_fed_wgmma == 0
        assert sass.stack == sass.local == sass.local_traffic == 0, f"spills: {sass}"


# ---- on a Hopper GPU ------------------------------------------------------------------------------

@pytest.fixture
def tma_launches(monkeypatch):
    """Forces the TMA path on (the default unless TWOLAYER_OPS_TRITON_TMA=0) and records each TMA launch."""
    monkeypatch.setattr(hopper, "ENABLED", True)
    monkeypatch.setattr(hopper, "BACKWARD", False)
    launched = []
    real = hopper.launch

    def spy(kernel, *args, **meta):
        launched.append(kernel_name(kernel))
        return real(kernel, *args, **meta)

    monkeypatch.setattr(hopper, "launch", spy)
    return launched


# (x shape, N): tile multiples and not, several row groups, a 3-D input, a tiny one.
GPU_SHAPES = [((1000, 264), 328), ((4096, 512), 512), ((4, 250, 264), 136), ((8, 64), 8), ((2100, 8), 1032)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("x_shape,n", GPU_SHAPES, ids=str)
@pytest.mark.parametrize("tma_backward", [False, True], ids=["portable_backward", "tma_backward"])
@on_hopper
def test_tma_forward_and_backward_on_gpu(monkeypatch, tma_launches, dtype, bias, x_shape, n, tma_backward):
    monkeypatch.setattr(hopper, "BACKWARD", tma_backward)
    K = x_shape[-1]
    x, w, b = rand(*x_shape, device="cuda"), rand(n, K, device="cuda", seed=1), rand(n, device="cuda", seed=2)
    b = b if bias else None
    xd, wd, bd = (t.to(dtype) if t is not None else None for t in (x, w, b))
    out = ops.linear_relu_triton(xd, wd, bd)
    assert_close_to_ref(out, linear_relu_ref(xd.double(), wd.double(), bd.double() if bias else None).to(dtype), dtype)
    assert tma_launches == ["linear_relu_fwd_tma_kernel"]

    # The backward at the float64 output (of the rounded inputs), so that the masks agree.
    out64 = linear_relu_ref(xd.double(), wd.double(), bd.double() if bias else None)
    grad = rand(*out64.shape, device="cuda", seed=3)
    want = BACKENDS["torch"].linear_relu_backward(grad, out64, xd.double(), wd.double(), [True, True, bias])
    tma_launches.clear()
    got = ops.linear_relu_backward_triton(grad.to(dtype), out64.to(dtype), xd, wd, [True, True, bias])
    assert tma_launches == (["linear_relu_dx_tma_kernel", "linear_relu_dw_db_tma_kernel"] if tma_backward else [])
    for name, g, r in zip(("grad_x", "grad_weight", "grad_bias"), got, want):
        if r.numel():
            assert_close_to_ref(g, r.to(dtype), dtype, name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@on_hopper
def test_tma_nan_and_zero_rules_on_gpu(tma_launches, dtype):
    """A NaN in x makes its output row NaN; a zero weight row and bias make a column exactly 0.
    Zero outputs stop the gradient and NaN ones pass it, as in the float64 reference."""
    M, K, N = 300, 128, 264
    x, w, b = rand(M, K, device="cuda"), rand(N, K, device="cuda", seed=1), rand(N, device="cuda", seed=2)
    x[3, 5] = float("nan")
    w[9], b[9] = 0.0, 0.0
    xd, wd, bd = (t.to(dtype) for t in (x, w, b))
    out = ops.linear_relu_triton(xd, wd, bd)
    assert_close_to_ref(out, linear_relu_ref(xd.double(), wd.double(), bd.double()).to(dtype), dtype)
    assert torch.isnan(out[3]).all() and (out[:3, 9] == 0).all() and (out[4:, 9] == 0).all()
    grad = rand(M, N, device="cuda", seed=3).to(dtype)
    got = ops.linear_relu_backward_triton(grad, out, xd, wd, [True, True, True])
    assert tma_launches == ["linear_relu_fwd_tma_kernel"]  # the portable backward
    want = BACKENDS["torch"].linear_relu_backward(grad.double(), out.double(), xd.double(), wd.double(), [True] * 3)
    for name, g, r in zip(("grad_x", "grad_weight", "grad_bias"), got, want):
        assert_close_to_ref(g, r.to(dtype), dtype, name)  # NaN placement included
    assert got[2][9] == grad[3, 9]  # column 9: only the NaN row's gradient passes


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kernel", ALL_KERNELS, ids=kernel_name)
@on_hopper
def test_every_tma_config_on_gpu(monkeypatch, tma_launches, kernel, dtype):
    """Every config the pruner keeps, one at a time (no autotuning), against float64."""
    monkeypatch.setattr(hopper, "BACKWARD", True)
    x, w, b = rand(1100, 520, device="cuda"), rand(1032, 520, device="cuda", seed=1), rand(1032, device="cuda", seed=2)
    grad = rand(1100, 1032, device="cuda", seed=3)
    out64 = linear_relu_ref(x, w, b)
    want = BACKENDS["torch"].linear_relu_backward(grad, out64, x, w, [True] * 3)
    xd, wd, bd, gd, od = (t.to(dtype) for t in (x, w, b, grad, out64))
    limit = hopper.device_limits(torch.cuda.current_device())[0]
    dbs = [True, False] if kernel is hopper.linear_relu_dw_db_tma_kernel else [True]
    for db in dbs:
        with_db = db and kernel is hopper.linear_relu_dw_db_tma_kernel
        for config in hopper.kept_configs(kernel, dtype, limit, compute_db=with_db):
            with monkeypatch.context() as patch:
                patch.setattr(kernel, "configs", [config])
                if kernel is hopper.linear_relu_fwd_tma_kernel:
                    assert_close_to_ref(ops.linear_relu_triton(xd, wd, bd), out64.to(dtype), dtype, f"out with {config}")
                    continue
                mask = [True, False, False] if kernel is hopper.linear_relu_dx_tma_kernel else [False, True, db]
                got = ops.linear_relu_backward_triton(gd, od, xd, wd, mask)
                for name, wanted, g, r in zip(("grad_x", "grad_weight", "grad_bias"), mask, got, want):
                    if wanted:
                        assert_close_to_ref(g, r.to(dtype), dtype, f"{name} with {config}")
    assert set(tma_launches) == {kernel_name(kernel)}


@pytest.mark.parametrize("allow_tf32", [True, False])
@on_hopper
def test_float32_takes_tma_only_as_tf32(monkeypatch, tma_launches, allow_tf32):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", allow_tf32)
    x, w, b = rand(512, 1024, device="cuda"), rand(264, 1024, device="cuda", seed=1), rand(264, device="cuda", seed=2)
    out = ops.linear_relu_triton(x.float(), w.float(), b.float())
    err = rel_error(out, linear_relu_ref(x, w, b))
    if allow_tf32:
        assert tma_launches == ["linear_relu_fwd_tma_kernel"]
        assert 1e-5 < err < 5e-3, f"TF32 expected, relative error {err:.3g}"
    else:
        assert tma_launches == [] and err < 1e-5
    tma_launches.clear()
    grad, o = torch.randn_like(out), out
    ops.linear_relu_backward_triton(grad, o, x.float(), w.float(), [True, True, True])
    assert tma_launches == []  # the float32 backward stays portable


@on_hopper
def test_ineligible_layouts_fall_back_on_gpu(tma_launches):
    dtype = torch.bfloat16
    x, w, b = (t.to(dtype) for t in (rand(256, 128, device="cuda"), rand(300, 128, device="cuda", seed=1),
                                     rand(300, device="cuda", seed=2)))
    out = ops.linear_relu_triton(x, w, b)  # N = 300: 600-byte output rows
    assert tma_launches == []
    assert_close_to_ref(out, linear_relu_ref(x.double(), w.double(), b.double()).to(dtype), dtype)
    wt = rand(128, 264, device="cuda", seed=3).to(dtype).t()  # transposed weight: last stride 264
    out = ops.linear_relu_triton(x, wt, None)
    assert tma_launches == []
    assert_close_to_ref(out, linear_relu_ref(x.double(), wt.double()).to(dtype), dtype)
    xs = torch.empty(256 * 128 + 8, dtype=dtype, device="cuda")[1:1 + 256 * 128].view(256, 128).copy_(x)  # base + 2 B
    out = ops.linear_relu_triton(xs, w[:264], None)
    assert tma_launches == []
    assert_close_to_ref(out, linear_relu_ref(x.double(), w[:264].double()).to(dtype), dtype)


@on_hopper
def test_tma_backward_is_deterministic_on_gpu(monkeypatch, tma_launches):
    monkeypatch.setattr(hopper, "BACKWARD", True)
    x, w, b = (t.to(torch.bfloat16) for t in (rand(4096, 256, device="cuda"), rand(512, 256, device="cuda", seed=1),
                                              rand(512, device="cuda", seed=2)))
    out = ops.linear_relu_triton(x, w, b)
    grad = torch.randn_like(out)
    first = ops.linear_relu_backward_triton(grad, out, x, w, [True, True, True])
    second = ops.linear_relu_backward_triton(grad, out, x, w, [True, True, True])
    assert "linear_relu_dw_db_tma_kernel" in tma_launches
    assert all(torch.equal(a, c) for a, c in zip(first, second))


@on_hopper
def test_tma_output_over_2_31_elements(tma_launches):
    M, N, K = 65537, 32768, 8  # 4.3 GB of bf16 output; tile coordinates past 2**31 elements
    x, w, b = (t.to(torch.bfloat16) for t in (rand(M, K, device="cuda"), rand(N, K, device="cuda", seed=1),
                                              rand(N, device="cuda", seed=2)))
    out = ops.linear_relu_triton(x, w, b)
    assert tma_launches == ["linear_relu_fwd_tma_kernel"] and out.numel() > 2**31
    for rows in (slice(0, 2), slice(M - 2, M)):
        want = linear_relu_ref(x[rows].double(), w.double(), b.double())
        torch.testing.assert_close(out[rows].double(), want, rtol=2e-2, atol=2e-2)


@on_hopper
def test_environment_variable_runs_tma_kernels_on_gpu():
    out = run_python(
        """
        import torch
        from twolayer_ops.triton_kernels import hopper
        ran = []
        real = hopper.launch
        hopper.launch = lambda kernel, *a, **k: (ran.append(kernel.fn.fn.__name__), real(kernel, *a, **k))
        x = torch.randn(512, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        w = torch.randn(264, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        out = torch.ops.twolayer_ops.linear_relu_triton(x, w, None)
        g = torch.randn_like(out)
        out.backward(g)  # not out.sum(): its gradient is a stride-0 expand
        ref = torch.relu(x.double() @ w.double().t())
        ref_dx = torch.where(ref <= 0, 0, g.double()) @ w.double()
        print(((out.double() - ref).norm() / ref.norm()).item() < 1e-2,
              ((x.grad.double() - ref_dx).norm() / ref_dx.norm()).item() < 1e-2, *ran)
        """,
        TWOLAYER_OPS_TRITON_TMA="1",
    )
    assert out == ["True", "True", "linear_relu_fwd_tma_kernel"]  # the backward stays portable
