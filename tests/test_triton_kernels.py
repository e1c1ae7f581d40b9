"""The Triton backend's own tests, beyond the parity suite that runs it with every other backend:
which path runs a tensor (interpreted twin on CPU, compiled kernel on CUDA) and which kernels a
call launches, parity with the native kernels on identical inputs, gradcheck, opcheck and
torch.compile on the raw ops; every config the autotuner tries, compiled for sm_90 without a GPU
and read as machine code; and on a GPU every autotune config, TF32 and determinism."""
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch.library import opcheck

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from benchmarks import machine_code  # noqa: E402
from twolayer_ops import available_backends, linear_relu, relu  # noqa: E402
from twolayer_ops.backends import BACKENDS  # noqa: E402
from twolayer_ops.triton_kernels import aot  # noqa: E402
from twolayer_ops.triton_kernels import linear_relu as tk  # noqa: E402

from .reference import REL_TOL, assert_close_to_ref, linear_relu_ref  # noqa: E402

ops = torch.ops.twolayer_ops
needs_interpreter = pytest.mark.skipif(not tk.INTERPRETER_RUNS, reason=f"no triton interpreter here: {tk.INTERPRETER_PROBLEM}")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GEMM_KERNELS = [tk.linear_relu_fwd_kernel, tk.linear_relu_dx_kernel, tk.linear_relu_dw_db_kernel]


def inputs(m, k, n, *, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = ((m, k), (n, k), (n,))
    return [torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype) for shape in shapes]


def away_from_kink(m, k, n, margin=1e-3):
    """float64 inputs whose pre-activations all lie more than `margin` from zero (for gradcheck)."""
    for seed in range(100):
        x, w, b = inputs(m, k, n, seed=seed)
        if (torch.nn.functional.linear(x, w, b).abs() > margin).all():
            return x, w, b
    raise AssertionError("could not sample inputs away from the kink")


def backward_op_inputs(x, w, b, seed=1):
    out = ops.linear_relu_triton(x, w, b)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return grad.to(out), out


# ---- which path runs: interpreted twins on CPU, and the launches each call makes ------------

@pytest.fixture
def cpu_launches(monkeypatch):
    """Records (kernel name, meta-parameters) of every interpreted launch, then runs it."""
    launches = []

    class Spy:
        def __init__(self, name, twin):
            self.name, self.twin = name, twin

        def __getitem__(self, grid):
            def run(*args, **meta):
                launches.append((self.name, meta))
                return self.twin[grid](*args, **meta)

            return run

    for kernel, (twin, tile) in list(tk.INTERPRETED.items()):
        monkeypatch.setitem(tk.INTERPRETED, kernel, (Spy(tk.python_function(kernel).__name__, twin), tile))
    return launches


@pytest.fixture
def launch_args(monkeypatch):
    """Records the tensor and integer arguments of every launch, by kernel name, then launches."""
    launched = {}
    real = tk.launch

    def spy(kernel, device, grid, *args, **meta):
        launched[tk.python_function(kernel).__name__] = args
        return real(kernel, device, grid, *args, **meta)

    monkeypatch.setattr(tk, "launch", spy)
    return launched


def test_cpu_backend_listed_where_the_interpreter_runs():
    assert ("triton" in available_backends("cpu")) == tk.INTERPRETER_RUNS
    assert tk.supports("cpu", torch.float64) == tk.supports("cpu", torch.float32) == tk.INTERPRETER_RUNS
    assert not tk.supports("cpu", torch.bfloat16) and not tk.supports("cpu", torch.float16)
    assert tk.supports("cuda", torch.bfloat16) == torch.cuda.is_available()


@pytest.mark.parametrize(
    "triton_version, numpy_version, runs",
    [("3.6.0", "2.5.2", False), ("3.6.0", "2.4.0rc1", False), ("3.6.0", "2.3.5", True), ("3.7.0", "2.5.2", True),
     ("3.8.0", "2.4.6", True)],
)
def test_interpreter_refused_where_triton_36_meets_numpy_24(triton_version, numpy_version, runs):
    """triton <= 3.6's interpreter breaks on numpy >= 2.4 (the GPU machines' torch 2.11 image has both)."""
    problem = tk.interpreter_problem(triton_version, numpy_version)
    assert (problem is None) == runs
    if problem:
        assert triton_version in problem and numpy_version in problem


def test_cpu_error_names_the_interpreter_problem(monkeypatch):
    monkeypatch.setattr(tk, "INTERPRETER_PROBLEM", "triton 3.6.0's interpreter fails with numpy 2.5.2")
    monkeypatch.setattr(tk, "INTERPRETER_RUNS", False)
    with pytest.raises(RuntimeError, match="fails with numpy 2.5.2"):
        tk.check_runs("linear_relu_triton", torch.ones(2))


@needs_interpreter
def test_cpu_tensors_run_the_interpreted_twins(cpu_launches):
    x, w, b = inputs(5, 7, 3)
    ops.linear_relu_triton(x, w, b)
    ops.relu_triton(x)
    ops.relu_backward_triton(x, x)
    assert [name for name, _ in cpu_launches] == ["linear_relu_fwd_kernel", "relu_kernel", "relu_backward_kernel"]
    assert cpu_launches[0][1]["BLOCK_M"] == tk.INTERPRETER_TILE  # the fixed config, not the autotuner


@needs_interpreter
@pytest.mark.parametrize(
    "mask,expected",
    [
        ([True, True, True], [("linear_relu_dx_kernel", None), ("linear_relu_dw_db_kernel", (True, True))]),
        ([True, False, False], [("linear_relu_dx_kernel", None)]),
        ([False, True, False], [("linear_relu_dw_db_kernel", (True, False))]),
        ([False, False, True], [("linear_relu_dw_db_kernel", (False, True))]),
        ([False, True, True], [("linear_relu_dw_db_kernel", (True, True))]),
    ],
    ids=str,
)
def test_backward_launches_only_what_output_mask_asks(cpu_launches, mask, expected):
    x, w, b = inputs(9, 70, 67)  # 70 and 67 > INTERPRETER_TILE: several tiles per dimension
    grad, out = backward_op_inputs(x, w, b)
    cpu_launches.clear()
    got = ops.linear_relu_backward_triton(grad, out, x, w, mask)
    flags = [(name, (meta["COMPUTE_DW"], meta["COMPUTE_DB"]) if "COMPUTE_DW" in meta else None)
             for name, meta in cpu_launches]
    assert flags == expected
    want = BACKENDS["torch"].linear_relu_backward(grad, out, x, w, mask)
    for requested, g, r in zip(mask, got, want):
        assert g.shape == r.shape == (r.shape if requested else (0,))
        if requested:
            assert_close_to_ref(g, r, torch.float64)


@needs_interpreter
def test_tf32_backward_reads_reduction_contiguous_copies(monkeypatch, launch_args):
    """With TF32 dots (CUDA only; forced here, which the interpreter computes exactly) the backward
    kernels get right operands whose summed dimension is contiguous: weight's rows for dX, x's for
    dW. Same results."""
    monkeypatch.setattr(tk, "input_precision", lambda t: "tf32")
    x, w, b = inputs(9, 70, 67)
    grad, out = backward_op_inputs(x, w, b)
    got = ops.linear_relu_backward_triton(grad, out, x, w, [True, True, True])
    assert launch_args["linear_relu_dx_kernel"][2].stride() == (1, 67)
    assert launch_args["linear_relu_dw_db_kernel"][2].stride() == (1, 9)
    for g, r in zip(got, BACKENDS["torch"].linear_relu_backward(grad, out, x, w, [True, True, True])):
        assert_close_to_ref(g, r, torch.float64)


@pytest.mark.parametrize(
    "dtype,precision,hopper_device,in_kernel",
    [
        (torch.float16, "ieee", True, False),
        (torch.bfloat16, "ieee", True, False),
        (torch.float32, "tf32", True, False),
        (torch.float32, "ieee", True, True),  # SIMT float32: no wgmma
        (torch.float64, "ieee", True, True),  # float64 units: no wgmma
        (torch.bfloat16, "ieee", False, True),  # other GPUs' mma.sync reads its registers at once
        (torch.float32, "tf32", False, True),
    ],
    ids=str,
)
def test_mask_goes_before_the_kernels_only_for_hopper_wgmma(dtype, precision, hopper_device, in_kernel):
    assert tk.mask_in_kernel(dtype, precision, hopper_device) == in_kernel


@needs_interpreter
def test_hopper_backward_reads_a_premasked_gradient(monkeypatch, cpu_launches, launch_args):
    """The backward as a Hopper GPU runs its TF32 dots (forced here; the interpreter computes them
    exactly): one masking pass, then both kernels without MASK_G, dW's on a copy of the masked
    gradient with M contiguous. NaN outputs pass their gradient and zero outputs stop it, as in the
    float64 reference."""
    monkeypatch.setattr(tk, "on_hopper", lambda device: True)
    monkeypatch.setattr(tk, "input_precision", lambda t: "tf32")
    x, w, b = special_inputs(torch.float64)
    out = linear_relu_ref(x, w, b)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    got = ops.linear_relu_backward_triton(grad, out, x, w, [True, True, True])
    assert [(name, meta.get("MASK_G")) for name, meta in cpu_launches] == [
        ("relu_backward_kernel", None), ("linear_relu_dx_kernel", False), ("linear_relu_dw_db_kernel", False)]
    # dX reads the masked gradient as written, dW a transposed copy
    assert launch_args["linear_relu_dx_kernel"][0].stride() == (130, 1)
    assert launch_args["linear_relu_dw_db_kernel"][0].stride() == (1, 70)
    want = BACKENDS["torch"].linear_relu_backward(grad, out, x, w, [True, True, True])
    for name, g, r in zip(("grad_x", "grad_weight", "grad_bias"), got, want):
        assert_close_to_ref(g, r, torch.float64, name)


@needs_interpreter
@pytest.mark.parametrize(
    "m,k,n,forward_launches,backward_launches",
    [
        (0, 5, 3, [], []),
        (4, 5, 0, [], []),
        (0, 0, 0, [], []),
        # K == 0: the forward still runs (zero k-steps give relu(b)); only db has work in the backward.
        (4, 0, 3, ["linear_relu_fwd_kernel"], ["linear_relu_dw_db_kernel"]),
    ],
)
def test_empty_shapes_launch_only_where_there_is_work(cpu_launches, m, k, n, forward_launches, backward_launches):
    x, w, b = inputs(m, k, n)
    out = ops.linear_relu_triton(x, w, b)
    assert [name for name, _ in cpu_launches] == forward_launches
    assert_close_to_ref(out, linear_relu_ref(x, w, b), torch.float64)
    cpu_launches.clear()
    grads = ops.linear_relu_backward_triton(torch.ones_like(out), out, x, w, [True, True, True])
    assert [name for name, _ in cpu_launches] == backward_launches
    for got, want in zip(grads, ops.linear_relu_backward(torch.ones_like(out), out, x, w, [True] * 3)):
        torch.testing.assert_close(got, want)


def test_direct_op_call_refuses_half_precision_on_cpu():
    x, w, b = inputs(3, 4, 2, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="no kernel for torch.bfloat16 on cpu"):
        ops.linear_relu_triton(x, w, b)


# ---- parity with the native kernels on identical inputs (CPU) -------------------------------

def special_inputs(dtype):
    """Crosses interpreter tiles in every dimension, with NaN and exact-zero pre-activations."""
    x, w, b = inputs(70, 66, 130, seed=4)
    x[3, 5] = float("nan")
    w[9], b[9] = 0.0, 0.0
    x[11], b[12] = 0.0, -1.0
    return [t.to(dtype) for t in (x, w, b)]


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_matches_native_on_identical_inputs(dtype, bias):
    x, w, b = special_inputs(dtype)
    b = b if bias else None
    out = ops.linear_relu_triton(x, w, b)
    native_out = ops.linear_relu(x, w, b)
    assert_close_to_ref(out, native_out, dtype)
    assert torch.equal(out == 0, native_out == 0), "the ReLU mask differs from native"
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(dtype)
    mask = [True, True, bias]
    grads = ops.linear_relu_backward_triton(grad, out, x, w, mask)
    native_grads = ops.linear_relu_backward(grad, out, x, w, mask)
    for name, got, want in zip(("grad_x", "grad_weight", "grad_bias"), grads, native_grads):
        assert_close_to_ref(got, want, dtype, name)


# ---- autograd, opcheck and torch.compile on the raw triton ops (CPU) --------------------------

@needs_interpreter
def test_gradcheck_float64_through_the_interpreter():
    x, w, b = away_from_kink(3, 5, 4)
    assert torch.autograd.gradcheck(ops.linear_relu_triton, [t.requires_grad_() for t in (x, w, b)])
    # Several tiles in every dimension (grouped program order, partial tiles): the fast mode.
    x, w, b = away_from_kink(70, 66, 67)
    assert torch.autograd.gradcheck(ops.linear_relu_triton, [t.requires_grad_() for t in (x, w, b)], fast_mode=True)
    r = torch.randn(3, 700, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    r = torch.where(r.abs() < 1e-3, 0.5, r).requires_grad_()  # 2100 elements: three ReLU blocks
    assert torch.autograd.gradcheck(ops.relu_triton, (r,), fast_mode=True)


@needs_interpreter
def test_opcheck_the_four_ops_beyond_the_parity_suite():
    """Masks with db but no dx (the db-only launch), tiles crossed in every dimension, and ReLU
    across several blocks; the parity suite opchecks the common masks on one tile."""
    x, w, b = inputs(70, 9, 66)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    opcheck(ops.linear_relu_triton, (x, w, b))
    grad, out = backward_op_inputs(x.detach(), w.detach(), b.detach())
    for mask in ([False, False, True], [False, True, True], [True, True, True]):
        opcheck(ops.linear_relu_backward_triton, (grad, out, x.detach(), w.detach(), mask))
    r = torch.randn(3, 700, dtype=torch.float64)
    opcheck(ops.relu_triton, (r.requires_grad_(),))
    opcheck(ops.relu_backward_triton, (torch.randn_like(r), r.detach()))


@needs_interpreter
def test_compile_two_layer_net_fullgraph_dynamic():
    """A two-layer net on the triton ops compiles as one graph, forward and backward, and serves
    a second batch size without recompiling (the fake kernels carry symbolic shapes)."""
    torch._dynamo.reset()
    w1, b1, w2 = (t.float().requires_grad_() for t in inputs(1, 20, 12)[1:] + [torch.randn(3, 12)])

    def net(x):
        return linear_relu(relu(x, backend="triton"), w1, b1, backend="triton") @ w2.t()

    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(net, backend=counter, fullgraph=True, dynamic=True)
    for batch in (5, 9):
        x = torch.randn(batch, 20)
        out = compiled(x)
        out.sum().backward()
        got = [t.grad.clone() for t in (w1, b1, w2)]
        for t in (w1, b1, w2):
            t.grad = None
        ref = torch.relu(torch.relu(x) @ w1.t() + b1) @ w2.t()
        ref.sum().backward()
        assert_close_to_ref(out, ref, torch.float32)
        for g, t in zip(got, (w1, b1, w2)):
            assert_close_to_ref(g, t.grad, torch.float32)
            t.grad = None
    assert counter.frame_count == 1


# ---- the autotuner's configs for an output's size (CPU) ---------------------------------------

def tiles_tried(monkeypatch, kernel, extents, dtype=torch.float32, sm_count=132):
    """(rows, cols) of the tiles the autotuner of `kernel` tries on an H100-like GPU for `extents`,
    its integer arguments ({"M": .., "N": .., "K": ..}), through the pruner it calls."""
    monkeypatch.setattr(tk, "device_properties", lambda index: (tk.H100_SHARED_MEMORY, sm_count))
    rows, cols = kernel.tile_layout[:2]
    named = {"t": torch.empty(0, dtype=dtype), **extents}
    return {(c.kwargs[rows], c.kwargs[cols]) for c in kernel.early_config_prune(kernel.configs, named, INPUT_PRECISION="ieee")}


@pytest.mark.parametrize("kernel,extents", [
    (tk.linear_relu_fwd_kernel, {"M": 64, "N": 100, "K": 1000}),   # the seed's first layer: output 64x100
    (tk.linear_relu_fwd_kernel, {"M": 64, "N": 10, "K": 100}),     # its second: 64x10
    (tk.linear_relu_dx_kernel, {"M": 64, "N": 100, "K": 1000}),    # dX 64x1000
    (tk.linear_relu_dw_db_kernel, {"M": 64, "N": 100, "K": 1000}),  # dW 100x1000
], ids=["fwd-64x100", "fwd-64x10", "dx-64x1000", "dw-100x1000"])
def test_small_outputs_try_only_small_tiles(monkeypatch, kernel, extents):
    """An output of fewer 64x64 tiles than SMs: the autotuner tries tiles of at most 64x64, the
    16x16 ones among them, so that many SMs share a long reduction (one 128x128 program walked all
    of K=1000 of the seed's forward on one SM)."""
    tried = tiles_tried(monkeypatch, kernel, extents)
    assert (16, 16) in tried and (32, 32) in tried
    assert all(r * c <= 64 * 64 for r, c in tried), tried


def test_large_outputs_never_try_the_small_tiles(monkeypatch):
    tried = tiles_tried(monkeypatch, tk.linear_relu_fwd_kernel, {"M": 8192, "N": 4096, "K": 4096})
    assert (128, 128) in tried and all(r * c >= 32 * 64 for r, c in tried), tried
    # the bound is the SM count: 11 x 12 tiles of 64x64 fill 132 SMs, one tile fewer does not
    assert (16, 16) not in tiles_tried(monkeypatch, tk.linear_relu_fwd_kernel, {"M": 704, "N": 768, "K": 64})
    assert (16, 16) in tiles_tried(monkeypatch, tk.linear_relu_fwd_kernel, {"M": 704, "N": 704, "K": 64})


def test_without_extents_the_pruner_keeps_every_size():
    """The shape-free list (the sm_90 compile checks below, the GPU's every-config test) holds the
    small tiles and the large ones."""
    tiles = {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in tk.kept_configs(tk.linear_relu_fwd_kernel, torch.bfloat16, "ieee")}
    assert {(16, 16), (128, 256)} <= tiles


# ---- compiled for sm_90 without a GPU (CPU) --------------------------------------------------------

M_ = N_ = K_ = 4096  # an LLM-size call on contiguous tensors: what the JIT specializes on
CALL_INTS = {
    tk.linear_relu_fwd_kernel: dict(M=M_, N=N_, K=K_, stride_xm=K_, stride_xk=1, stride_wn=K_, stride_wk=1,
                                    stride_b=1, stride_om=N_, stride_on=1),
    tk.linear_relu_dx_kernel: dict(M=M_, N=N_, K=K_, stride_gm=N_, stride_gn=1, stride_om=N_, stride_on=1,
                                   stride_wn=K_, stride_wk=1, stride_dxm=K_, stride_dxk=1),
    tk.linear_relu_dw_db_kernel: dict(M=M_, N=N_, K=K_, stride_gm=N_, stride_gn=1, stride_om=N_, stride_on=1,
                                      stride_xm=K_, stride_xk=1, stride_dwn=K_, stride_dwk=1, stride_db=1),
}
# With TF32 the backward passes copies whose summed dimension is contiguous (reduction_contiguous),
# on Hopper dW's masked gradient too.
TF32_CALL_INTS = {
    tk.linear_relu_fwd_kernel: CALL_INTS[tk.linear_relu_fwd_kernel],
    tk.linear_relu_dx_kernel: dict(CALL_INTS[tk.linear_relu_dx_kernel], stride_wn=1, stride_wk=N_),
    tk.linear_relu_dw_db_kernel: dict(CALL_INTS[tk.linear_relu_dw_db_kernel], stride_xm=1, stride_xk=M_,
                                      stride_gm=1, stride_gn=M_),
}
VARIANT_CONSTEXPRS = {tk.linear_relu_fwd_kernel: {"HAS_BIAS": True}, tk.linear_relu_dx_kernel: {},
                      tk.linear_relu_dw_db_kernel: {"COMPUTE_DW": True, "COMPUTE_DB": True}}
BACKWARD_KERNELS = (tk.linear_relu_dx_kernel, tk.linear_relu_dw_db_kernel)


def sm90_variant(kernel, dtype, precision):
    """The constexprs of `kernel`'s compile on a Hopper GPU: its variant, and where g is masked."""
    if kernel in BACKWARD_KERNELS:
        return {**VARIANT_CONSTEXPRS[kernel], "MASK_G": tk.mask_in_kernel(dtype, precision, hopper_device=True)}
    return VARIANT_CONSTEXPRS[kernel]
PRECISIONS = [(torch.float16, "ieee"), (torch.bfloat16, "ieee"), (torch.float32, "ieee"), (torch.float32, "tf32"),
              (torch.float64, "ieee")]


def sm90_cases():
    return [
        pytest.param(kernel, dtype, precision, config,
                     id=f"{tk.python_function(kernel).__name__}-{dtype}-{precision}-{config}".replace(" ", ""))
        for kernel in GEMM_KERNELS
        for dtype, precision in PRECISIONS
        for config in tk.kept_configs(kernel, dtype, precision)
    ]


@triton.autotune(configs=[triton.Config({"BLOCK": 1024}, num_warps=4)], key=["n"])
@triton.jit
def strided_copy_kernel(x_ptr, out_ptr, n, stride, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs * stride, tl.load(x_ptr + offs * stride, mask=offs < n), mask=offs < n)


@pytest.mark.skipif("nvidia" not in tk.triton_backends, reason="triton has no NVIDIA compiler here")
def test_compile_for_specializes_like_the_jit():
    """A stride of 1 and a length divisible by 16, as a real call passes them, allow 16-byte loads;
    unknown integers do not. (Without this, the sm_90 checks below would judge code no call runs.)"""
    config = strided_copy_kernel.configs[0]
    called = aot.compile_for(strided_copy_kernel, config, torch.float32, ints={"n": 4096, "stride": 1})
    unknown = aot.compile_for(strided_copy_kernel, config, torch.float32)
    assert "ld.global.v4" in called.asm["ptx"] and "ld.global.v4" not in unknown.asm["ptx"]


@pytest.mark.skipif("nvidia" not in tk.triton_backends, reason="triton has no NVIDIA compiler here")
@pytest.mark.skipif(machine_code.find_cuobjdump() is None, reason="no cuobjdump (PATH, CUDA_HOME or triton)")
@pytest.mark.parametrize("kernel,dtype,precision,config", sm90_cases())
def test_kept_configs_compile_for_sm90(kernel, dtype, precision, config):
    """Every config the autotuner tries fits an H100's shared memory, does its dot on the units the
    precision asks for (tensor cores for 16-bit and TF32; FFMA, never TF32, for IEEE float32;
    float64 units for float64), and spills at most a trace in its k-loop (under 1% of the loop's
    math instructions; the SIMT rule in keeps() prunes the tiles that spill more). Its tiles move
    global -> shared 16 bytes a copy (TF32 tiles laid out otherwise went 4 bytes at a time). Its
    wgmma take both operands from shared memory (the hazard of tk.mask_in_kernel)."""
    ints = (TF32_CALL_INTS if precision == "tf32" else CALL_INTS)[kernel]
    compiled = aot.compile_for(kernel, config, dtype, ints=ints, ACC_DTYPE=tk.acc_dtype(dtype),
                               INPUT_PRECISION=precision, **sm90_variant(kernel, dtype, precision))
    assert compiled.metadata.shared <= tk.H100_SHARED_MEMORY
    copy_bytes = set(re.findall(r"cp\.async\.c[ag]\.shared\.global \[[^\]]+\], \[[^\]]+\], (0x[0-9a-f]+)",
                                compiled.asm["ptx"]))
    assert copy_bytes == {"0x10"}, f"global -> shared copies of {copy_bytes} bytes"
    (sass,) = machine_code.read_cubin(compiled.asm["cubin"])
    tensor_cores = sass.ops["HGMMA"] + sass.ops["HMMA"]
    if dtype == torch.float64:
        assert sass.ops["DMMA"] + sass.ops["DFMA"] > 0 and tensor_cores == 0, sass.ops
    elif dtype == torch.float32 and precision == "ieee":
        assert sass.ops["FFMA"] > 0 and tensor_cores == 0, sass.ops
    else:
        assert tensor_cores > 0 and sass.ops["FFMA"] == 0, sass.ops
        if precision == "tf32":
            assert re.search(r"(wgmma\.mma_async|mma)\S*\.tf32", compiled.asm["ptx"])
    assert sass.register_fed_wgmma == 0
    math = sum(sass.hot_loop_ops[op] for op in machine_code.MATH)
    assert math > 0, "no k-loop found"
    assert sass.hot_loop_local_traffic <= 0.01 * math, (
        f"{sass.hot_loop_local_traffic} LDL/STL against {math} math instructions in the k-loop ({sass.regs} registers)")


@pytest.mark.skipif("nvidia" not in tk.triton_backends, reason="triton has no NVIDIA compiler here")
@pytest.mark.skipif(machine_code.find_cuobjdump() is None, reason="no cuobjdump (PATH, CUDA_HOME or triton)")
@pytest.mark.parametrize("kernel", BACKWARD_KERNELS, ids=lambda k: tk.python_function(k).__name__)
def test_masking_in_the_kernel_feeds_wgmma_from_registers(kernel):
    """Why Hopper masks g first: masked as it loads, the g tile reaches wgmma from registers, the
    operand that ptxas < 13.3 overwrites too early (and the check above would catch)."""
    config = tk.kept_configs(kernel, torch.bfloat16, "ieee")[0]
    compiled = aot.compile_for(kernel, config, torch.bfloat16, ints=CALL_INTS[kernel], ACC_DTYPE=tl.float32,
                               INPUT_PRECISION="ieee", **{**VARIANT_CONSTEXPRS[kernel], "MASK_G": True})
    (sass,) = machine_code.read_cubin(compiled.asm["cubin"])
    assert sass.register_fed_wgmma > 0, sass.ops


# ---- GPU: compiled kernels ---------------------------------------------------------------------

def kept_configs(kernel, dtype, precision="ieee"):
    """The configs the autotuner of `kernel` tries for `dtype` and `precision` on this GPU."""
    probe = torch.empty(0, dtype=dtype, device="cuda")
    return kernel.early_config_prune(kernel.configs, {"t": probe}, INPUT_PRECISION=precision)


def run_with_config(monkeypatch, kernel, config, fn):
    """fn() with `kernel` restricted to one config (the autotuner then runs it without timing)."""
    with monkeypatch.context() as patch:
        patch.setattr(kernel, "configs", [config])
        return fn()


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kernel", GEMM_KERNELS, ids=lambda k: tk.python_function(k).__name__)
def test_every_config_on_gpu(monkeypatch, kernel, dtype):
    """Every config the pruner keeps, on shapes with partial tiles and more than GROUP_SIZE row
    tiles, against the float64 reference (1e-5 for float32, 1e-2 for the 16-bit types)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(tk.hopper, "ENABLED", False)  # these are the portable kernels' configs
    x, w, b = inputs(1100, 200, 300, device="cuda")
    grad = torch.randn(1100, 300, dtype=torch.float64, device="cuda")
    out64 = linear_relu_ref(x, w, b)
    want = BACKENDS["torch"].linear_relu_backward(grad, out64, x, w, [True] * 3)
    xd, wd, bd, gd = (t.to(dtype) for t in (x, w, b, grad))
    for config in kept_configs(kernel, dtype):
        if kernel is tk.linear_relu_fwd_kernel:
            got = run_with_config(monkeypatch, kernel, config, lambda: ops.linear_relu_triton(xd, wd, bd))
            assert_close_to_ref(got, out64.to(dtype), dtype, f"out with {config}")
            continue
        # The backward at the float64 output, so that the reference's ReLU mask is the kernel's.
        mask = [True, False, False] if kernel is tk.linear_relu_dx_kernel else [False, True, True]
        od = out64.to(dtype)
        got = run_with_config(monkeypatch, kernel, config, lambda: ops.linear_relu_backward_triton(gd, od, xd, wd, mask))
        for name, wanted, g, r in zip(("grad_x", "grad_weight", "grad_bias"), mask, got, want):
            if wanted:
                assert_close_to_ref(g, r.to(dtype), dtype, f"{name} with {config}")


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("kernel", GEMM_KERNELS, ids=lambda k: tk.python_function(k).__name__)
def test_every_config_is_kept_for_some_dtype(kernel):
    kept = {str(c) for dtype in tk.CUDA_DTYPES for precision in ("ieee", "tf32") for c in kept_configs(kernel, dtype, precision)}
    assert kept == {str(c) for c in kernel.configs}


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("allow_tf32", [False, True])
def test_tf32_follows_the_torch_flag(monkeypatch, allow_tf32):
    """Forward and backward (whose TF32 dots read copies laid out for the tensor cores)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", allow_tf32)
    x, w, b = inputs(256, 512, 264, device="cuda")
    ref = linear_relu_ref(x, w, b)
    grad = torch.randn_like(ref)
    ref_grads = BACKENDS["torch"].linear_relu_backward(grad, ref, x, w, [True, True, True])
    out = ops.linear_relu_triton(x.float(), w.float(), b.float())
    # The backward at the float64 output, so that both sides mask the same elements.
    grads = ops.linear_relu_backward_triton(grad.float(), ref.float(), x.float(), w.float(), [True, True, True])
    for name, got, want in zip(("out", "grad_x", "grad_weight"), (out, *grads[:2]), (ref, *ref_grads[:2])):
        err = ((got.double() - want).norm() / want.norm()).item()
        if allow_tf32:
            assert REL_TOL[torch.float32] < err < 5e-3, f"{name}: TF32 expected, relative error {err:.3g}"
        else:
            assert err < REL_TOL[torch.float32], f"{name}: relative error {err:.3g}"
    assert ((grads[2].double() - ref_grads[2]).norm() / ref_grads[2].norm()).item() < REL_TOL[torch.float32]


@pytest.mark.cuda
@requires_cuda
def test_backward_is_deterministic_on_gpu():
    """db has one writer per entry and no atomics: two runs agree bit for bit."""
    x, w, b = inputs(4096, 64, 96, device="cuda", dtype=torch.float32)
    grad, out = backward_op_inputs(x, w, b)
    first = ops.linear_relu_backward_triton(grad, out, x, w, [True, True, True])
    second = ops.linear_relu_backward_triton(grad, out, x, w, [True, True, True])
    assert all(torch.equal(a, c) for a, c in zip(first, second))


@pytest.mark.cuda
@requires_cuda
@needs_interpreter
def test_interpreter_then_compiler_in_one_process(tmp_path):
    """CPU (interpreted) then CUDA (compiled from scratch) then CPU, in one fresh process: an
    interpreted run must leave triton.language as it found it for the compiler."""
    script = textwrap.dedent(
        """
        import torch
        from twolayer_ops.triton_kernels import linear_relu as tk
        for kernel in (tk.linear_relu_fwd_kernel, tk.linear_relu_dx_kernel, tk.linear_relu_dw_db_kernel):
            kernel.configs = kernel.configs[-1:]  # one compile each, no autotuning
        def check(device):
            shapes = ((37, 70), (66, 70), (66,))
            x, w, b = (torch.randn(*s, dtype=torch.float64, device=device, requires_grad=True) for s in shapes)
            out = torch.ops.twolayer_ops.linear_relu_triton(x, w, b)
            grads = torch.autograd.grad(out, (x, w, b), torch.ones_like(out))
            ref = torch.relu(torch.nn.functional.linear(x, w, b))
            ref_grads = torch.autograd.grad(ref, (x, w, b), torch.ones_like(ref))
            for got, want in zip((out, *grads), (ref, *ref_grads)):
                torch.testing.assert_close(got, want)
        check("cpu"); check("cuda"); check("cpu")
        print("ok")
        """
    )
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path))  # an empty cache: the frontend must run
    env.pop("TRITON_INTERPRET", None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
    assert any(tmp_path.iterdir()), "CUDA ran without compiling a kernel"
