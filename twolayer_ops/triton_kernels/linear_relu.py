"""The Triton backend: y = relu(x @ W^T + b), its backward, and a standalone ReLU, as Triton kernels
behind four torch.library ops (twolayer_ops::linear_relu_triton, linear_relu_backward_triton,
relu_triton, relu_backward_triton): the native ops' schemas, fake kernels and C++ autograd formula.

The three GEMM kernels share one scheme: each program owns one output tile, walks the reduction
dimension in BLOCK-sized steps with an fp32 accumulator (fp64 for float64), and programs are
numbered in groups of GROUP_SIZE row-tiles, so that the programs running together reuse the same
column of input tiles from L2. Both backward kernels apply the mask, mask(g) = (out <= 0 ? 0 : g),
to the tiles of g as they load them, except for the tensor-core dots of a Hopper GPU: there one
elementwise pass writes mask(g) first and the kernels read it (see mask_in_kernel).

  forward  out[M, N] = relu(x[M, K] @ w[N, K]^T + b)    tile BLOCK_M x BLOCK_N, steps over K
  grad x    dx[M, K] = mask(g)[M, N] @ w[N, K]           tile BLOCK_M x BLOCK_K, steps over N
  grad w    dw[N, K] = mask(g)[M, N]^T @ x[M, K]         tile BLOCK_N x BLOCK_K, steps over M
  grad b       db[N] = mask(g)[M, N]^T @ 1[M]             by the grad-w programs of the first K tile

Devices and dtypes. CUDA runs compiled, autotuned kernels for float32, float64, float16 and
bfloat16. float64 is supported on CUDA: Triton lowers an fp64 tl.dot with input_precision "ieee"
exactly (measured on an H200 with triton 3.6). CPU tensors (float32, float64) run the same kernels
through Triton's interpreter, as InterpretedFunction twins of the jitted functions with one fixed
tile config (timing numpy is no basis for autotuning). So one process runs CPU tensors interpreted
and CUDA tensors compiled, without TRITON_INTERPRET. Two rules come with the twins:
  - kernels call Triton builtins only, never a @triton.jit function, and the standard library's
    tl.cdiv, tl.zeros and tl.sum are such functions. Inside a twin they are still JITFunctions,
    which refuse to be called ("Cannot call @triton.jit'd outside of the scope of a kernel");
    and the interpreter's own nested calls (under TRITON_INTERPRET) leave triton.language patched
    afterwards, which would break later compilations. So the kernels write out ceil-division and
    grouped ordering, fill with tl.full, and get db from a GEMM against a column of ones.
  - with TRITON_INTERPRET=1 set before import, triton interprets everything, CUDA tensors included.
Every dot names out_dtype=ACC_DTYPE: triton 3.6 defaults it to float32 and then rejects a float64
accumulator (3.8 takes the accumulator's dtype).

float32 dots use TF32 only when torch.backends.cuda.matmul.allow_tf32 says so; the interpreter
computes in numpy at full precision whatever the setting.

Hopper. Unless TWOLAYER_OPS_TRITON_TMA=0 is in the environment at import (read once, into
hopper.ENABLED), CUDA tensors on a device of capability >= 9 run the persistent TMA-descriptor
kernel of hopper.py for the forward instead (fp16, bf16 and TF32 float32), wherever every operand
meets TMA's layout rules (hopper.eligible); each kernel call that is not eligible runs the portable
kernel below, as do CPU tensors and a triton without host-side tensor descriptors. On an H200 it
ran at 0.97x to 1.16x cuBLAS, the portable forward at 1.23x to 1.40x. Its backward kernels are off
(hopper.BACKWARD) until a GPU run times them, so the backward stays portable.
"""
import functools
import math

import numpy
import torch
import triton
import triton.language as tl
from torch.torch_version import TorchVersion  # PEP 440 comparisons
from triton.backends import backends as triton_backends

from .. import ops
from ..checks import check_linear_relu_args
from . import hopper


def interpreter_problem(triton_version=triton.__version__, numpy_version=numpy.__version__):
    """Why Triton's interpreter cannot run the CPU kernels here, or None."""
    try:
        from triton.runtime.interpreter import InterpretedFunction  # noqa: F401
    except ImportError:
        return "this triton build has no interpreter"
    # triton <= 3.6's interpreter calls int() on the 1-element array that holds a scalar argument
    # (range(0, K, BLOCK_K)), which numpy >= 2.4 refuses; triton 3.7 squeezes it first.
    if TorchVersion(triton_version) < "3.7.0.dev0" and TorchVersion(numpy_version) >= "2.4.0.dev0":
        return (f"triton {triton_version}'s interpreter fails with numpy {numpy_version}: "
                "needs triton >= 3.7 or numpy < 2.4")
    return None


INTERPRETER_PROBLEM = interpreter_problem()  # None, or why CPU tensors get no triton kernel here
INTERPRETER_RUNS = INTERPRETER_PROBLEM is None
if INTERPRETER_RUNS:
    from triton.runtime.interpreter import InterpretedFunction

CPU_DTYPES = (torch.float32, torch.float64)
CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# (tile rows, tile cols, reduction step, num_warps, num_stages). Every extent is >= 16: the GPU's
# dots need 16 rows, columns and steps. Large tiles feed the 8192x4096 bf16 layers; the pruner drops
# the ones too big for a dtype (see keeps) and the ones too big or too small for the output (see
# fits_output).
TILES = [
    (128, 256, 64, 8, 3),
    (128, 128, 32, 8, 4),  # 8 warps: the large SIMT float32 tile that fits in registers
    (128, 128, 32, 4, 4),
    (64, 128, 32, 4, 4),
    (128, 64, 32, 4, 4),
    (64, 64, 32, 4, 4),
    (32, 64, 32, 2, 5),
    # Outputs of fewer 64x64 tiles than the GPU has SMs (the seed's 64x100 and 64x10): many small
    # programs over a long reduction, where one 128x128 program walked all of K on one SM (the
    # 64x1000->100 forward took 83 us on an H200, 5.9x torch.mm).
    (32, 32, 64, 2, 4),
    (16, 32, 64, 1, 4),
    (16, 16, 32, 1, 4),
]
SMALL_OUTPUT_TILE = 64 * 64  # an output of fewer such tiles than SMs takes tiles of at most this area
LARGE_OUTPUT_MIN_TILE = 32 * 64  # other outputs, tiles of at least this area
GROUP_SIZE = 8
# A SIMT dot (IEEE float32, float64) whose accumulator takes more registers per thread than this
# spills in its k-loop. Compiled for sm_90 (tests/test_triton_kernels.py), float32 128x128 tiles on
# 4 warps (128 registers) and float64 64x128 ones (128) do; the kept configs spill at most a trace.
# So does a TF32 backward dot on such a tile: its masked left operand, computed in registers, sits
# beside the accumulator at 32 bits an element (dW 128x128 on 4 warps: 255 registers, 30 LDL/STL).
SIMT_ACCUMULATOR_REGISTERS = 64
H100_SHARED_MEMORY = 232448  # bytes per block, opt-in: H100 and H200
# The one config of the interpreter (CPU). Its cost is per op, not per element: 64 was fastest
# on the test shapes (64x1000 -> 100 fwd+bwd: 0.8 s, against 3.9 s at 32 and 1.0 s at 128).
INTERPRETER_TILE = 64


def gemm_configs(rows, cols, step):
    """TILES as triton.Configs, named after one kernel's block parameters."""
    return [
        triton.Config({rows: r, cols: c, step: k, "GROUP_SIZE": GROUP_SIZE}, num_warps=w, num_stages=s)
        for r, c, k, w, s in TILES
    ]


@functools.cache
def device_properties(device_index):
    """(shared memory per block, SM count) of a CUDA device."""
    props = triton.runtime.driver.active.utils.get_device_properties(device_index)
    return props["max_shared_mem"], props["multiprocessor_count"]


def shared_memory_bytes(config, rows, cols, step, a_loads, element_size):
    """Shared memory of a config's pipelined tiles: per stage, `a_loads` row-tiles (in the backward
    g and the saved output both stream through) and one column-tile. An upper bound: triton 3.8's
    sm_90 compiles of every config and dtype allocated at most this (exactly this for most fp16
    ones, where wgmma reads both tiles from shared memory)."""
    kw = config.kwargs
    return (a_loads * kw[rows] + kw[cols]) * kw[step] * element_size * config.num_stages


def keeps(config, layout, dtype, precision, shared_limit):
    """Whether the autotuner tries `config` for a dot of `dtype` at `precision` ("ieee", "tf32"):
    its tiles fit in shared memory and, for a SIMT dot or a float32 backward one, its accumulator
    in registers."""
    rows, cols, step, a_loads = layout
    if shared_memory_bytes(config, rows, cols, step, a_loads, dtype.itemsize) > shared_limit:
        return False
    simt = dtype == torch.float64 or (dtype == torch.float32 and precision == "ieee")
    tf32_backward = dtype == torch.float32 and a_loads == 2  # the backward kernels stream g and out
    kw = config.kwargs
    registers = kw[rows] * kw[cols] * max(dtype.itemsize // 4, 1) / (32 * config.num_warps)
    return not (simt or tf32_backward) or registers <= SIMT_ACCUMULATOR_REGISTERS


def fits_output(config, layout, rows, cols, sm_count):
    """Whether `config`'s tile suits a rows x cols output: one of fewer 64x64 tiles than SMs takes tiles
    of at most 64x64 (a larger tile puts the same work on fewer SMs), any other tiles of at least
    32x64 (a smaller one rereads its operands more often and no SM idles for want of tiles)."""
    kw = config.kwargs
    area = kw[layout[0]] * kw[layout[1]]
    if math.ceil(rows / 64) * math.ceil(cols / 64) < sm_count:
        return area <= SMALL_OUTPUT_TILE
    return area >= LARGE_OUTPUT_MIN_TILE


def kept(configs, layout, dtype, precision, shared_limit, output=None):
    """The configs that keeps() admits, and of those, where `output` is (rows, cols, SM count), the
    ones that fits_output admits; never none (the smallest tiles where keeps() admits nothing)."""
    admitted = [c for c in configs if keeps(c, layout, dtype, precision, shared_limit)]
    if output is not None:
        admitted = [c for c in admitted if fits_output(c, layout, *output)] or admitted
    return admitted or [min(configs, key=lambda c: shared_memory_bytes(c, *layout, dtype.itemsize))]


def kept_configs(kernel, dtype, precision, shared_limit=H100_SHARED_MEMORY):
    """The configs the autotuner of `kernel` tries for `dtype` and `precision`."""
    return kept(kernel.configs, kernel.tile_layout, dtype, precision, shared_limit)


def autotune(rows, cols, step, a_loads, key):
    """triton.autotune over TILES, pruned by keeps() at the call's dtype, precision and device. The
    autotuner adds every tensor argument's dtype to `key`: each dtype tunes apart."""
    layout = (rows, cols, step, a_loads)
    extents = (rows.removeprefix("BLOCK_"), cols.removeprefix("BLOCK_"))  # the output's: "M", "N"...

    def prune(configs, named_args, **kwargs):
        t = next(a for a in named_args.values() if isinstance(a, torch.Tensor))
        shared_limit, sm_count = device_properties(t.device.index)
        output = (named_args[extents[0]], named_args[extents[1]], sm_count) if extents[0] in named_args else None
        return kept(configs, layout, t.dtype, kwargs["INPUT_PRECISION"], shared_limit, output)

    def wrap(fn):
        tuner = triton.autotune(configs=gemm_configs(rows, cols, step), key=key,
                                prune_configs_by={"early_config_prune": prune})(fn)
        tuner.tile_layout = layout
        return tuner

    return wrap


@autotune("BLOCK_M", "BLOCK_N", "BLOCK_K", a_loads=1, key=["M", "N", "K", "HAS_BIAS", "INPUT_PRECISION"])
@triton.jit
def linear_relu_fwd_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_b, stride_om, stride_on,
    HAS_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_SIZE: tl.constexpr,
):
    """out[m, n] = relu(sum_k x[m, k] * w[n, k] + b[n]).

    One program per BLOCK_M x BLOCK_N tile of out, stepping over K by BLOCK_K; bias and ReLU are
    applied to the accumulator before its single store. Programs run in groups of GROUP_SIZE
    row-tiles: the group sweeps the columns of out together, so each w tile is read from DRAM once
    per group rather than once per row-tile."""
    pid = tl.program_id(0)
    num_pid_m = (M + BLOCK_M - 1) // BLOCK_M
    num_pid_n = (N + BLOCK_N - 1) // BLOCK_N
    pids_per_group = GROUP_SIZE * num_pid_n
    first_pid_m = (pid // pids_per_group) * GROUP_SIZE
    group_rows = min(num_pid_m - first_pid_m, GROUP_SIZE)
    pid_m = first_pid_m + (pid % pids_per_group) % group_rows
    pid_n = (pid % pids_per_group) // group_rows

    # int64 before any product with a stride: offsets pass 2**31 on large tensors.
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.full((BLOCK_M, BLOCK_N), 0, dtype=ACC_DTYPE)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
            mask=(offs_m[:, None] < M) & (offs_k[None, :] < K),
            other=0.0,
        )
        w_t = tl.load(  # the (BLOCK_K, BLOCK_N) tile of w^T
            w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn,
            mask=(offs_k[:, None] < K) & (offs_n[None, :] < N),
            other=0.0,
        )
        acc = tl.dot(x, w_t, acc=acc, input_precision=INPUT_PRECISION, out_dtype=ACC_DTYPE)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n * stride_b, mask=offs_n < N, other=0.0).to(ACC_DTYPE)[None, :]
    # NaN <= 0 is false, so NaN survives (tl.maximum and where(acc > 0, ...) would drop it).
    acc = tl.where(acc <= 0, 0.0, acc)
    tl.store(
        out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on,
        acc.to(out_ptr.dtype.element_ty),
        mask=(offs_m[:, None] < M) & (offs_n[None, :] < N),
    )


@autotune("BLOCK_M", "BLOCK_K", "BLOCK_N", a_loads=2, key=["M", "N", "K", "MASK_G", "INPUT_PRECISION"])
@triton.jit
def linear_relu_dx_kernel(
    g_ptr, o_ptr, w_ptr, dx_ptr,
    M, N, K,
    stride_gm, stride_gn, stride_om, stride_on, stride_wn, stride_wk, stride_dxm, stride_dxk,
    MASK_G: tl.constexpr, ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_SIZE: tl.constexpr,
):
    """dx[m, k] = sum_n mask(g)[m, n] * w[n, k], where mask(g) = (out <= 0 ? 0 : g).

    One program per BLOCK_M x BLOCK_K tile of dx, stepping over N by BLOCK_N. With MASK_G each g
    tile is masked by the matching tile of the saved output as it loads; without, g comes masked
    (see mask_in_kernel) and o is not read. Grouped along M as in the forward."""
    pid = tl.program_id(0)
    num_pid_m = (M + BLOCK_M - 1) // BLOCK_M
    num_pid_k = (K + BLOCK_K - 1) // BLOCK_K
    pids_per_group = GROUP_SIZE * num_pid_k
    first_pid_m = (pid // pids_per_group) * GROUP_SIZE
    group_rows = min(num_pid_m - first_pid_m, GROUP_SIZE)
    pid_m = first_pid_m + (pid % pids_per_group) % group_rows
    pid_k = (pid % pids_per_group) // group_rows

    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    acc = tl.full((BLOCK_M, BLOCK_K), 0, dtype=ACC_DTYPE)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        in_g = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        g = tl.load(g_ptr + offs_m[:, None] * stride_gm + offs_n[None, :] * stride_gn, mask=in_g, other=0.0)
        if MASK_G:
            o = tl.load(o_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on, mask=in_g, other=0.0)
            g = tl.where(o <= 0, 0.0, g)  # a NaN output passes its gradient, as NaN <= 0 is false
        w = tl.load(
            w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk,
            mask=(offs_n[:, None] < N) & (offs_k[None, :] < K),
            other=0.0,
        )
        acc = tl.dot(g, w, acc=acc, input_precision=INPUT_PRECISION, out_dtype=ACC_DTYPE)
    tl.store(
        dx_ptr + offs_m[:, None] * stride_dxm + offs_k[None, :] * stride_dxk,
        acc.to(dx_ptr.dtype.element_ty),
        mask=(offs_m[:, None] < M) & (offs_k[None, :] < K),
    )


@autotune("BLOCK_N", "BLOCK_K", "BLOCK_M", a_loads=2,
          key=["M", "N", "K", "COMPUTE_DW", "COMPUTE_DB", "MASK_G", "INPUT_PRECISION"])
@triton.jit
def linear_relu_dw_db_kernel(
    g_ptr, o_ptr, x_ptr, dw_ptr, db_ptr,
    M, N, K,
    stride_gm, stride_gn, stride_om, stride_on, stride_xm, stride_xk, stride_dwn, stride_dwk, stride_db,
    COMPUTE_DW: tl.constexpr, COMPUTE_DB: tl.constexpr, MASK_G: tl.constexpr, ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_SIZE: tl.constexpr,
):
    """dw[n, k] = sum_m mask(g)[m, n] * x[m, k] and db[n] = sum_m mask(g)[m, n].

    One program per BLOCK_N x BLOCK_K tile of dw, stepping over M by BLOCK_M with the masked g^T
    tile as the left operand; grouped along N. The programs of the first K tile also sum their
    masked tiles over M into db, as db = mask(g)^T @ 1: the gradient of a weight on an input that
    is always 1. Each db entry has one writer and a fixed summation order, so db is deterministic
    without atomics. With COMPUTE_DW off the grid has one K tile and only db is computed. MASK_G as
    in linear_relu_dx_kernel."""
    pid = tl.program_id(0)
    num_pid_n = (N + BLOCK_N - 1) // BLOCK_N
    num_pid_k = (K + BLOCK_K - 1) // BLOCK_K if COMPUTE_DW else 1
    pids_per_group = GROUP_SIZE * num_pid_k
    first_pid_n = (pid // pids_per_group) * GROUP_SIZE
    group_rows = min(num_pid_n - first_pid_n, GROUP_SIZE)
    pid_n = first_pid_n + (pid % pids_per_group) % group_rows
    pid_k = (pid % pids_per_group) // group_rows

    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    acc = tl.full((BLOCK_N, BLOCK_K), 0, dtype=ACC_DTYPE)
    # 16 columns of ones: the narrowest dot the GPU takes. Every column of db gets the row sums.
    ones = tl.full((BLOCK_M, 16), 1, dtype=g_ptr.dtype.element_ty)
    db = tl.full((BLOCK_N, 16), 0, dtype=ACC_DTYPE)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        in_g = (offs_n[:, None] < N) & (offs_m[None, :] < M)
        g_t = tl.load(g_ptr + offs_n[:, None] * stride_gn + offs_m[None, :] * stride_gm, mask=in_g, other=0.0)
        if MASK_G:
            o_t = tl.load(o_ptr + offs_n[:, None] * stride_on + offs_m[None, :] * stride_om, mask=in_g, other=0.0)
            g_t = tl.where(o_t <= 0, 0.0, g_t)
        if COMPUTE_DW:
            x = tl.load(
                x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                mask=(offs_m[:, None] < M) & (offs_k[None, :] < K),
                other=0.0,
            )
            acc = tl.dot(g_t, x, acc=acc, input_precision=INPUT_PRECISION, out_dtype=ACC_DTYPE)
        if COMPUTE_DB:
            if pid_k == 0:  # "ieee": a sum never rounds its terms to TF32
                db = tl.dot(g_t, ones, acc=db, input_precision="ieee", out_dtype=ACC_DTYPE)
    if COMPUTE_DW:
        tl.store(
            dw_ptr + offs_n[:, None] * stride_dwn + offs_k[None, :] * stride_dwk,
            acc.to(dw_ptr.dtype.element_ty),
            mask=(offs_n[:, None] < N) & (offs_k[None, :] < K),
        )
    if COMPUTE_DB:
        if pid_k == 0:  # column 0 of db holds the sums
            col = tl.arange(0, 16)
            tl.store(
                db_ptr + offs_n[:, None] * stride_db + col[None, :],
                db.to(db_ptr.dtype.element_ty),
                mask=(offs_n[:, None] < N) & (col[None, :] == 0),
            )


RELU_BLOCK = 1024


@triton.jit
def relu_kernel(x_ptr, out_ptr, numel, BLOCK: tl.constexpr):
    """out = relu(x) over contiguous memory, one BLOCK of elements per program; NaN passes."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < numel)
    tl.store(out_ptr + offs, tl.where(x <= 0, 0.0, x), mask=offs < numel)


@triton.jit
def relu_backward_kernel(g_ptr, o_ptr, dx_ptr, numel, BLOCK: tl.constexpr):
    """dx = (out <= 0 ? 0 : g) over contiguous memory, one BLOCK of elements per program."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    g = tl.load(g_ptr + offs, mask=offs < numel)
    o = tl.load(o_ptr + offs, mask=offs < numel)
    tl.store(dx_ptr + offs, tl.where(o <= 0, 0.0, g), mask=offs < numel)


# ---- launching: interpreted twins for CPU tensors, compiled kernels for CUDA -----------------

def python_function(kernel):
    """The plain Python function under an autotuner and a jit (or interpreter) wrapper."""
    while hasattr(kernel, "fn"):
        kernel = kernel.fn
    return kernel


def interpreter_tile(rows, cols, step):
    return {rows: INTERPRETER_TILE, cols: INTERPRETER_TILE, step: INTERPRETER_TILE, "GROUP_SIZE": GROUP_SIZE}


# kernel -> (its interpreted twin, the meta-parameters the autotuner would otherwise choose)
INTERPRETED = {}
if INTERPRETER_RUNS:
    INTERPRETED = {
        kernel: (InterpretedFunction(python_function(kernel)), meta)
        for kernel, meta in [
            (linear_relu_fwd_kernel, interpreter_tile("BLOCK_M", "BLOCK_N", "BLOCK_K")),
            (linear_relu_dx_kernel, interpreter_tile("BLOCK_M", "BLOCK_K", "BLOCK_N")),
            (linear_relu_dw_db_kernel, interpreter_tile("BLOCK_N", "BLOCK_K", "BLOCK_M")),
            (relu_kernel, {}),
            (relu_backward_kernel, {}),
        ]
    }


def launch(kernel, device, grid, *args, **meta):
    """Runs `kernel` over `grid` on `device`: interpreted on CPU, compiled (and autotuned) on CUDA."""
    if device.type == "cpu":
        twin, tile = INTERPRETED[kernel]
        twin[grid](*args, **meta, **tile)
    else:
        with torch.cuda.device(device):  # triton launches on the current device's current stream
            kernel[grid](*args, **meta)


# Triton has a compiler for torch's GPU platform. Read without touching the device (no CUDA
# initialization on import), and a constant to torch.compile, like torch.cuda.is_available().
HAS_GPU_COMPILER = ("amd" if torch.version.hip else "nvidia") in triton_backends


def supports(device_type, dtype):
    """(device type, dtype) -> the Triton backend has a kernel for it here."""
    if device_type == "cpu":
        return INTERPRETER_RUNS and dtype in CPU_DTYPES
    return device_type == "cuda" and dtype in CUDA_DTYPES and HAS_GPU_COMPILER and torch.cuda.is_available()


def check_runs(op, t):
    if not supports(t.device.type, t.dtype):
        hint = ""
        if t.device.type == "cpu":
            hint = INTERPRETER_PROBLEM or "its CPU path, Triton's interpreter, runs float32 and float64"
            hint = f" ({hint})"
        raise RuntimeError(
            f"{op}: the triton backend has no kernel for {t.dtype} on {t.device.type}{hint}; "
            "use backend='auto' or backend='torch'"
        )


def acc_dtype(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def input_precision(t):
    """The tl.dot precision the torch reference would use: TF32 for float32 only where allowed."""
    tf32 = t.dtype == torch.float32 and t.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    return "tf32" if tf32 else "ieee"


# ---- the op implementations ----------------------------------------------------------------

def linear_relu(x, weight, bias):
    check_linear_relu_args(x, weight, bias)
    check_runs("linear_relu_triton", x)
    (N, K), M = weight.shape, math.prod(x.shape[:-1])
    x2 = x.reshape(M, K)
    out = x.new_empty((M, N))
    precision = input_precision(x)
    if M and N and hopper.eligible(hopper.linear_relu_fwd_tma_kernel, precision, x2, weight, out):
        hopper.forward(x2, weight, bias, out, precision)
    elif M and N:  # an empty output launches nothing; K == 0 runs no k-steps and gives relu(b)
        def grid(meta):
            return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

        launch(
            linear_relu_fwd_kernel, x.device, grid,
            x2, weight, bias, out, M, N, K,
            *x2.stride(), *weight.stride(), bias.stride(0) if bias is not None else 0, *out.stride(),
            HAS_BIAS=bias is not None, ACC_DTYPE=acc_dtype(x.dtype), INPUT_PRECISION=precision,
        )
    return out.view(*x.shape[:-1], N)


def check_backward_args(grad_out, out, x, weight):
    check_linear_relu_args(x, weight, None)
    out_shape = (*x.shape[:-1], weight.shape[0])
    for name, t in (("grad_out", grad_out), ("out", out)):
        if tuple(t.shape) != out_shape:
            raise ValueError(
                f"linear_relu_backward_triton: {name} shape {tuple(t.shape)} does not match x {tuple(x.shape)} "
                f"and weight {tuple(weight.shape)} (expected {out_shape})"
            )
        if t.dtype != x.dtype or t.device != x.device:
            raise TypeError(
                f"linear_relu_backward_triton: {name} ({t.dtype} on {t.device}) must match x ({x.dtype} on {x.device})"
            )


def reduction_contiguous(t):
    """The (rows, cols) matrix t with its rows dimension contiguous, by a transposed copy. A TF32 dot
    wants the dimension it sums over contiguous in memory: otherwise triton copies the tile 4 bytes
    at a time to lay it out for the tensor cores (seen in the sm_90 PTX of the backward kernels: 64
    to 128 4-byte cp.async per step, 16-byte only with this layout). The right operands need it
    (weight for dX, x for dW), and dW's left one (g, summed over M) where it comes masked rather
    than passing through registers. One copy costs a pass over t; at 4096^3 the TF32 backward ran
    at 31 TFLOP/s on an H200 without it."""
    return t.t().contiguous().t()


def on_hopper(device):
    """A CUDA device of compute capability 9.x (not ROCm, whose MI300 is also 9.x): its 16-bit and
    TF32 dots compile to wgmma."""
    return device.type == "cuda" and torch.version.hip is None and torch.cuda.get_device_capability(device)[0] == 9


def mask_in_kernel(dtype, precision, hopper_device):
    """Whether the backward kernels mask g's tiles as they load them (MASK_G), or take g masked by
    one elementwise pass beforehand: the latter for the wgmma dots (16-bit, TF32) on Hopper.

    There a tile masked in registers feeds wgmma as a register operand, and the ptxas that triton
    3.6 and 3.8 ship (12.8, 12.9) lets the next step overwrite those registers while up to three
    wgmma groups still read them (triton-lang/triton#9433, fixed in ptxas 13.3; seen in the sm_90
    SASS of both backward kernels). On an H200 the TMA backward kernels gave wrong gradients that
    changed from run to run. A g masked beforehand reaches the tensor cores from shared memory, as
    the forward's operands do, for one more pass over M x N."""
    wgmma = dtype in (torch.float16, torch.bfloat16) or precision == "tf32"
    return not (hopper_device and wgmma)


def grad_x(g, o, weight, mask_g):
    """dx (M, K) from g and the saved output o, both (M, N); g comes masked unless mask_g."""
    (M, N), K = g.shape, weight.shape[1]
    dx = g.new_empty((M, K))
    if N == 0:  # an empty sum
        return dx.zero_()
    precision = input_precision(g)
    if M and K and not mask_g and hopper.eligible(hopper.linear_relu_dx_tma_kernel, precision, g, weight, dx):
        hopper.grad_x(g, weight, dx, precision)
    elif M and K:
        def grid(meta):
            return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(K, meta["BLOCK_K"]),)

        if precision == "tf32":  # the dot sums over N: weight's rows
            weight = reduction_contiguous(weight)
        launch(
            linear_relu_dx_kernel, g.device, grid,
            g, o, weight, dx, M, N, K,
            *g.stride(), *o.stride(), *weight.stride(), *dx.stride(),
            MASK_G=mask_g, ACC_DTYPE=acc_dtype(g.dtype), INPUT_PRECISION=precision,
        )
    return dx


def grad_weight_bias(g, o, x2, want_w, want_b, mask_g):
    """(dw, db) from one kernel, None for the one not wanted; g comes masked unless mask_g."""
    (M, N), K = g.shape, x2.shape[1]
    dw = g.new_empty((N, K)) if want_w else None
    db = g.new_empty((N,)) if want_b else None
    if M == 0:  # empty sums
        return dw.zero_() if want_w else None, db.zero_() if want_b else None
    compute_dw = want_w and K > 0
    precision = input_precision(g)
    if N and compute_dw and not mask_g and hopper.eligible(hopper.linear_relu_dw_db_tma_kernel, precision, g, x2, dw):
        hopper.grad_weight_bias(g, x2, dw, db, precision)
    elif N and (compute_dw or want_b):
        def grid(meta):
            return (triton.cdiv(N, meta["BLOCK_N"]) * (triton.cdiv(K, meta["BLOCK_K"]) if compute_dw else 1),)

        if precision == "tf32" and compute_dw:  # the dot sums over M: x's rows, and g's unless masked in registers
            x2 = reduction_contiguous(x2)
            if not mask_g:
                g = reduction_contiguous(g)
        launch(
            linear_relu_dw_db_kernel, g.device, grid,
            g, o, x2, dw, db, M, N, K,
            *g.stride(), *o.stride(), *x2.stride(),
            *(dw.stride() if want_w else (0, 0)), db.stride(0) if want_b else 0,
            COMPUTE_DW=compute_dw, COMPUTE_DB=want_b, MASK_G=mask_g, ACC_DTYPE=acc_dtype(g.dtype),
            INPUT_PRECISION=precision,
        )
    return dw, db


def linear_relu_backward(grad_out, out, x, weight, output_mask):
    check_backward_args(grad_out, out, x, weight)
    check_runs("linear_relu_backward_triton", x)
    want_x, want_w, want_b = output_mask
    (N, K), M = weight.shape, math.prod(x.shape[:-1])
    g, o = grad_out.reshape(M, N), out.reshape(M, N)
    mask_g = mask_in_kernel(x.dtype, input_precision(x), on_hopper(x.device))
    if not mask_g and g.numel() and any(output_mask):
        g = relu_backward(g, o)
    dx = grad_x(g, o, weight, mask_g).view(x.shape) if want_x else None
    dw, db = grad_weight_bias(g, o, x.reshape(M, K), want_w, want_b, mask_g) if want_w or want_b else (None, None)
    # Unrequested gradients are empty (0,) tensors, one each: outputs must not alias.
    return tuple(x.new_empty(0) if grad is None else grad for grad in (dx, dw, db))


def elementwise(kernel, op, *tensors):
    """Runs a ReLU kernel over contiguous copies of `tensors` (views where already contiguous)."""
    check_runs(op, tensors[0])
    flat = [t.contiguous() for t in tensors]
    result = torch.empty_like(flat[0])
    if result.numel():
        launch(
            kernel, result.device, (triton.cdiv(result.numel(), RELU_BLOCK),),
            *flat, result, result.numel(), BLOCK=RELU_BLOCK,
        )
    return result


def relu(x):
    if not x.is_floating_point():
        raise TypeError(f"relu_triton: x must be a floating-point tensor, got {x.dtype}")
    return elementwise(relu_kernel, "relu_triton", x)


def relu_backward(grad_out, out):
    if grad_out.shape != out.shape or grad_out.dtype != out.dtype or grad_out.device != out.device:
        raise ValueError(
            f"relu_backward_triton: grad_out ({tuple(grad_out.shape)}, {grad_out.dtype}, {grad_out.device}) must "
            f"match the saved output ({tuple(out.shape)}, {out.dtype}, {out.device})"
        )
    return elementwise(relu_backward_kernel, "relu_backward_triton", grad_out, out)


# ---- registration: kernels for the *_triton schemas of csrc/ops.cpp; fakes and vmap rules shared with native ----

def implement(native_name, impl):
    """Registers `impl` for CPU and CUDA as twolayer_ops::<native_name>_triton."""
    qualname = f"twolayer_ops::{native_name}_triton"
    torch.library.impl(qualname, ("CPU", "CUDA"), impl)
    return qualname


ops.register_python_rules(
    implement("linear_relu", linear_relu),
    implement("linear_relu_backward", linear_relu_backward),
    implement("relu", relu),
    implement("relu_backward", relu_backward),
)
