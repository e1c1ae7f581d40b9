"""The Hopper path of the Triton backend: persistent GEMM kernels that move tiles with TMA.

On by default (TWOLAYER_OPS_TRITON_TMA=0 in the environment when this module is imported turns it
off; read once), and only where `eligible` says so; every other call runs the portable kernels of
linear_relu.py unchanged. On an H200 (triton 3.6, 2026-11-28) the forward matched float64 and ran at
0.97x to 1.16x cuBLAS where the portable forward ran at 1.23x to 1.40x. The backward kernels, which
first masked g in registers, gave wrong, run-to-run different gradients (a ptxas hazard on
register-fed wgmma: see linear_relu.mask_in_kernel). They now take g masked beforehand and read every
operand from shared memory, like the forward, and passed every GPU test of that run; they stay off
(BACKWARD) until a GPU run times them against the portable backward (gpu_check's kernels_tma_backward step).

The three kernels compute what the portable ones compute (the same fused epilogue, the same masked
gradient, db without atomics), on another scheme:
  - tiles move through host-side tensor descriptors (triton.tools.tensor_descriptor.TensorDescriptor,
    present in triton 3.6 and 3.8): the launcher encodes one TMA tensor map per operand and passes it
    by value, so no device scratch and no triton.set_allocator are needed. Out-of-bounds parts of a
    tile load as zeros and are clipped on store, so partial tiles need no masks.
  - a persistent grid: min(SM count, tile count) programs, each walking tiles start, start + NUM_SMS,
    ... in the grouped order of the portable kernels (GROUP_SIZE row-tiles sweep the columns
    together), through tl.range(..., flatten=FLATTEN) so the compiler can pipeline across tiles.
  - autotune configs for Hopper: 128-row tiles, a reduction step of 128 bytes (one swizzle row: 64
    for fp16/bf16, 32 for tf32), 3 or 4 stages, 4 or 8 warps; the pruner keeps a config only for the
    element size its step was cut for, and only where its shared memory fits the device.

  forward  out[M, N] = relu(x[M, K] @ w[N, K]^T + b)     tile BLOCK_M x BLOCK_N, steps over K
  grad x    dx[M, K] = gm[M, N] @ w[N, K]                 tile BLOCK_M x BLOCK_K, steps over N
  grad w    dw[N, K] = gm[M, N]^T @ x[M, K]               tile BLOCK_N x BLOCK_K, steps over M
  grad b       db[N] = gm[M, N]^T @ 1[M]                   by the grad-w tiles of the first K column

gm = mask(g) = (out <= 0 ? 0 : g), written by one elementwise pass before these kernels run.

Eligibility (`eligible`), per kernel call: a CUDA tensor on a device of capability >= 9 whose shared
memory holds one of the kernel's configs; fp16 or bf16, or float32 in the forward where its dot runs
as TF32 (torch.backends.cuda.matmul.allow_tf32); every operand and result 2-D with unit last stride,
its other stride a multiple of 16 bytes and its base 16-byte aligned (TMA's rules), no dimension
empty; the backward kernels only where linear_relu masked g first (capability 9, BACKWARD on).
The kernels follow the interpreter-twin rules of linear_relu.py (builtins only, no
@triton.jit helpers), so CPU tests run them through Triton's interpreter, which takes host-side
descriptors in 3.6 and 3.8; production CPU tensors never come here.

Compiled for sm_90 without a GPU (compile_for; `python -m benchmarks.triton_tune --compile`), every
kept config uses wgmma with both operands in shared memory, and TMA loads and stores, with triton
3.6 and 3.8 alike. Not used, found so:
tl.range(warp_specialize=True) compiles but is ignored on sm_90 by both versions (no warp
specialization, no setmaxnreg in the output); flatten=True together with db's `if` fails to compile.
"""
import contextlib
import functools
import inspect
import os

import torch
import triton
import triton.language as tl

from . import aot

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # a triton without host-side tensor descriptors: the portable kernels only
    TensorDescriptor = None

# The kernels need host descriptors and tl.range(flatten=...), both in triton 3.6 and 3.8.
HAS_TMA_API = TensorDescriptor is not None and "flatten" in inspect.signature(tl.range.__init__).parameters
ENABLED = os.environ.get("TWOLAYER_OPS_TRITON_TMA", "1") != "0"  # read once, at import
# The backward kernels: correct on an H200 since they read a pre-masked g (2026-11-28), not yet timed
# against the portable backward, which runs until then; the GPU tests and benchmarks set this.
BACKWARD = False

TMA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # float32 only as TF32, see eligible()
GROUP_SIZE = 8
K_STEP_BYTES = 128  # a reduction step is one 128-byte swizzle row: 64 fp16/bf16 or 32 fp32 elements

# ---- configs -----------------------------------------------------------------------------------
# (tile rows, tile cols, reduction step, num_warps, num_stages, FLATTEN, EPILOGUE_SPLIT) per kernel.
# EPILOGUE_SPLIT stores the output tile as two halves, which halves the epilogue's staging buffer.
FWD_TILES = [
    (128, 256, 64, 8, 3, True, False),
    (128, 256, 64, 8, 4, True, True),
    (128, 128, 64, 8, 4, True, False),
    (128, 128, 64, 4, 4, True, False),
    (128, 128, 64, 8, 4, False, False),
    (128, 256, 32, 8, 3, True, True),
    (128, 128, 32, 8, 4, True, False),
    (128, 128, 32, 4, 4, True, False),
]
# The backward kernels run fp16/bf16 only (see eligible()), so their steps are 64 elements.
DX_TILES = [
    (128, 256, 64, 8, 3, True, True),
    (128, 128, 64, 8, 4, True, False),
    (128, 128, 64, 4, 4, True, False),
    (128, 128, 64, 8, 3, False, False),
]
# db's dot sits under an `if` in the step loop, which triton's loop flattening fails to compile
# (TritonGPUFuseNestedLoops, 3.6 and 3.8): with COMPUTE_DB the pruner keeps the unflattened ones.
DW_TILES = [
    (128, 256, 64, 8, 3, True, True),
    (128, 128, 64, 8, 4, True, False),
    (128, 256, 64, 8, 3, False, True),
    (128, 128, 64, 8, 4, False, False),
    (128, 128, 64, 4, 4, False, False),
]


def _configs(tiles, rows, cols, step):
    return [
        triton.Config(
            {rows: r, cols: c, step: k, "GROUP_SIZE": GROUP_SIZE, "FLATTEN": flat, "EPILOGUE_SPLIT": split},
            num_warps=w, num_stages=s,
        )
        for r, c, k, w, s, flat, split in tiles
    ]


# Per kernel: its descriptor arguments -> (block rows, block cols) meta-parameter names; the result
# descriptor (last) has its columns halved under EPILOGUE_SPLIT; `a_loads` row-tiles are staged per
# step (for the shared-memory estimate).
FWD = dict(
    rows="BLOCK_M", cols="BLOCK_N", step="BLOCK_K", a_loads=1,
    descs={"x_desc": ("BLOCK_M", "BLOCK_K"), "w_desc": ("BLOCK_N", "BLOCK_K"), "out_desc": ("BLOCK_M", "BLOCK_N")},
)
DX = dict(
    rows="BLOCK_M", cols="BLOCK_K", step="BLOCK_N", a_loads=1,
    descs={"g_desc": ("BLOCK_M", "BLOCK_N"), "w_desc": ("BLOCK_N", "BLOCK_K"), "dx_desc": ("BLOCK_M", "BLOCK_K")},
)
DW = dict(
    rows="BLOCK_N", cols="BLOCK_K", step="BLOCK_M", a_loads=1,
    descs={"g_desc": ("BLOCK_M", "BLOCK_N"), "x_desc": ("BLOCK_M", "BLOCK_K"), "dw_desc": ("BLOCK_N", "BLOCK_K")},
)


def block_shapes(spec, meta):
    """Descriptor name -> the block shape the kernel loads or stores through it under `meta`."""
    shapes = {name: [meta[r], meta[c]] for name, (r, c) in spec["descs"].items()}
    result = list(spec["descs"])[-1]
    if meta.get("EPILOGUE_SPLIT"):
        shapes[result][1] //= 2
    return shapes


def set_block_shapes(spec):
    """A Config pre_hook: gives the call's descriptors the block shapes of the config about to run
    (the launcher encodes the TMA maps from them, and they are part of the compile key)."""

    def hook(nargs):
        for name, shape in block_shapes(spec, nargs).items():
            nargs[name].block_shape = shape

    return hook


def shared_memory_bytes(spec, meta, num_stages, element_size):
    """Pipelined operand tiles plus the epilogue's staging buffer, in bytes (an estimate: compare
    with the compiler's metadata.shared, which benchmarks/triton_tune.py --compile prints)."""
    rows, cols, step = meta[spec["rows"]], meta[spec["cols"]], meta[spec["step"]]
    staged = (spec["a_loads"] * rows + cols) * step * num_stages
    epilogue = rows * (cols // 2 if meta.get("EPILOGUE_SPLIT") else cols)
    return (staged + epilogue) * element_size


@functools.cache
def device_limits(device_index):
    """(max shared memory per block, SM count, capability major) of a CUDA device."""
    props = torch.cuda.get_device_properties(device_index)
    shared = triton.runtime.driver.active.utils.get_device_properties(device_index)["max_shared_mem"]
    return shared, props.multi_processor_count, props.major


def keeps(spec, config, element_size, shared_limit):
    """Whether `config` serves `element_size`: its step is one 128-byte row, and it fits."""
    kw = config.kwargs
    return (kw[spec["step"]] * element_size == K_STEP_BYTES
            and shared_memory_bytes(spec, kw, config.num_stages, element_size) <= shared_limit)


def pruner(spec):
    def prune(configs, named_args, **kwargs):
        desc = named_args[list(spec["descs"])[0]]
        limit = device_limits(desc.base.device.index)[0]
        size = desc.base.element_size()
        kept = [c for c in configs if keeps(spec, c, size, limit)]
        if kwargs.get("COMPUTE_DB"):  # see DW_TILES
            kept = [c for c in kept if not c.kwargs["FLATTEN"]]
        if not kept:
            raise RuntimeError(f"no Hopper TMA config fits {desc.base.dtype} in {limit} bytes of shared memory")
        return kept

    return prune


def autotune(spec, tiles, key):
    configs = _configs(tiles, spec["rows"], spec["cols"], spec["step"])
    hook = set_block_shapes(spec)
    for c in configs:
        c.pre_hook = hook
    # Descriptors carry no dtype the autotuner could see: DTYPE (a constexpr) keys each dtype apart.
    return triton.autotune(configs=configs, key=key + ["DTYPE"], prune_configs_by={"early_config_prune": pruner(spec)})


# ---- kernels -------------------------------------------------------------------------------------

@autotune(FWD, FWD_TILES, key=["M", "N", "K", "HAS_BIAS", "INPUT_PRECISION"])
@triton.jit
def linear_relu_fwd_tma_kernel(
    x_desc, w_desc, b_ptr, out_desc,
    M, N, K, stride_b,
    HAS_BIAS: tl.constexpr, INPUT_PRECISION: tl.constexpr, DTYPE: tl.constexpr, NUM_SMS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_SIZE: tl.constexpr,
    FLATTEN: tl.constexpr, EPILOGUE_SPLIT: tl.constexpr,
):
    """out[m, n] = relu(sum_k x[m, k] * w[n, k] + b[n]), persistent over BLOCK_M x BLOCK_N tiles.

    Program p takes tiles p, p + NUM_SMS, ...; tile t maps to (row, col) tile in grouped order. The
    epilogue recomputes its tile from a second counter (tile_out), so that a flattened loop keeps
    the epilogue's indices apart from the prefetching main loop's."""
    start = tl.program_id(0)
    num_pid_m = (M + BLOCK_M - 1) // BLOCK_M
    num_pid_n = (N + BLOCK_N - 1) // BLOCK_N
    k_steps = (K + BLOCK_K - 1) // BLOCK_K
    num_tiles = num_pid_m * num_pid_n
    pids_per_group = GROUP_SIZE * num_pid_n
    tile_out = start - NUM_SMS
    for tile in tl.range(start, num_tiles, NUM_SMS, flatten=FLATTEN):
        first_pid_m = (tile // pids_per_group) * GROUP_SIZE
        group_rows = min(num_pid_m - first_pid_m, GROUP_SIZE)
        off_m = (first_pid_m + (tile % pids_per_group) % group_rows) * BLOCK_M
        off_n = ((tile % pids_per_group) // group_rows) * BLOCK_N
        acc = tl.full((BLOCK_M, BLOCK_N), 0, dtype=tl.float32)
        for ks in range(k_steps):
            x = x_desc.load([off_m, ks * BLOCK_K])
            w = w_desc.load([off_n, ks * BLOCK_K])
            acc = tl.dot(x, w.T, acc=acc, input_precision=INPUT_PRECISION)

        tile_out += NUM_SMS
        first_pid_m = (tile_out // pids_per_group) * GROUP_SIZE
        group_rows = min(num_pid_m - first_pid_m, GROUP_SIZE)
        off_m = (first_pid_m + (tile_out % pids_per_group) % group_rows) * BLOCK_M
        off_n = ((tile_out % pids_per_group) // group_rows) * BLOCK_N
        if HAS_BIAS:
            offs_n = off_n + tl.arange(0, BLOCK_N)
            acc += tl.load(b_ptr + offs_n * stride_b, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        # NaN <= 0 is false, so NaN survives (tl.maximum and where(acc > 0, ...) would drop it).
        acc = tl.where(acc <= 0, 0.0, acc)
        if EPILOGUE_SPLIT:
            halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
            left, right = tl.split(halves)
            out_desc.store([off_m, off_n], left.to(out_desc.dtype))
            out_desc.store([off_m, off_n + BLOCK_N // 2], right.to(out_desc.dtype))
        else:
            out_desc.store([off_m, off_n], acc.to(out_desc.dtype))


@autotune(DX, DX_TILES, key=["M", "N", "K", "INPUT_PRECISION"])
@triton.jit
def linear_relu_dx_tma_kernel(
    g_desc, w_desc, dx_desc,
    M, N, K,
    INPUT_PRECISION: tl.constexpr, DTYPE: tl.constexpr, NUM_SMS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_SIZE: tl.constexpr,
    FLATTEN: tl.constexpr, EPILOGUE_SPLIT: tl.constexpr,
):
    """dx[m, k] = sum_n gm[m, n] * w[n, k], persistent over BLOCK_M x BLOCK_K tiles of dx, from the
    masked gradient gm. Each step loads a gm tile (BLOCK_M x BLOCK_N) and a w tile (BLOCK_N x
    BLOCK_K), both fed to the dot from shared memory."""
    start = tl.program_id(0)
    num_pid_m = (M + BLOCK_M - 1) // BLOCK_M
    num_pid_k = (K + BLOCK_K - 1) // BLOCK_K
    n_steps = (N + BLOCK_N - 1) // BLOCK_N
    num_tiles = num_pid_m * num_pid_k
    pids_per_group = GROUP_SIZE * num_pid_k
    tile_out = start - NUM_SMS
    for tile in tl.range(start, num_tiles, NUM_SMS, flatten=FLATTEN):
        first_pid_m = (tile // pids_per_group) * GROUP_SIZE
        group_rows = min(num_pid_m - first_pid_m, GROUP_SIZE)
        off_m = (first_pid_m + (tile % pids_per_group) % group_rows) * BLOCK_M
        off_k = ((tile % pids_per_group) // group_rows) * BLOCK_K
        acc = tl.full((BLOCK_M, BLOCK_K), 0, dtype=tl.float32)
        for ns in range(n_steps):
            g = g_desc.load([off_m, ns * BLOCK_N])
            w = w_desc.load([ns * BLOCK_N, off_k])
            acc = tl.dot(g, w, acc=acc, input_precision=INPUT_PRECISION)

        tile_out += NUM_SMS
        first_pid_m = (tile_out // pids_per_group) * GROUP_SIZE
        group_rows = min(num_pid_m - first_pid_m, GROUP_SIZE)
        off_m = (first_pid_m + (tile_out % pids_per_group) % group_rows) * BLOCK_M
        off_k = ((tile_out % pids_per_group) // group_rows) * BLOCK_K
        if EPILOGUE_SPLIT:
            halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_K // 2)), (0, 2, 1))
            left, right = tl.split(halves)
            dx_desc.store([off_m, off_k], left.to(dx_desc.dtype))
            dx_desc.store([off_m, off_k + BLOCK_K // 2], right.to(dx_desc.dtype))
        else:
            dx_desc.store([off_m, off_k], acc.to(dx_desc.dtype))


@autotune(DW, DW_TILES, key=["M", "N", "K", "COMPUTE_DB", "INPUT_PRECISION"])
@triton.jit
def linear_relu_dw_db_tma_kernel(
    g_desc, x_desc, dw_desc, db_ptr,
    M, N, K, stride_db,
    COMPUTE_DB: tl.constexpr, INPUT_PRECISION: tl.constexpr, DTYPE: tl.constexpr, NUM_SMS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_SIZE: tl.constexpr,
    FLATTEN: tl.constexpr, EPILOGUE_SPLIT: tl.constexpr,
):
    """dw[n, k] = sum_m gm[m, n] * x[m, k] and db[n] = sum_m gm[m, n], persistent over BLOCK_N x
    BLOCK_K tiles of dw, grouped along N, from the masked gradient gm.

    Each step loads a gm tile (BLOCK_M x BLOCK_N) and an x tile (BLOCK_M x BLOCK_K); the gm tile,
    transposed in shared memory, is the dot's left operand. The tiles of the first K column also sum
    their gm tiles over M into db as gm^T @ 1 (a dot with a column of ones: one writer per db entry,
    a fixed order, no atomics, so db is deterministic)."""
    start = tl.program_id(0)
    num_pid_n = (N + BLOCK_N - 1) // BLOCK_N
    num_pid_k = (K + BLOCK_K - 1) // BLOCK_K
    m_steps = (M + BLOCK_M - 1) // BLOCK_M
    num_tiles = num_pid_n * num_pid_k
    pids_per_group = GROUP_SIZE * num_pid_k
    ones = tl.full((BLOCK_M, 16), 1, dtype=g_desc.dtype)  # 16 columns: the narrowest dot the GPU takes
    tile_out = start - NUM_SMS
    for tile in tl.range(start, num_tiles, NUM_SMS, flatten=FLATTEN):
        first_pid_n = (tile // pids_per_group) * GROUP_SIZE
        group_rows = min(num_pid_n - first_pid_n, GROUP_SIZE)
        off_n = (first_pid_n + (tile % pids_per_group) % group_rows) * BLOCK_N
        off_k = ((tile % pids_per_group) // group_rows) * BLOCK_K
        acc = tl.full((BLOCK_N, BLOCK_K), 0, dtype=tl.float32)
        db = tl.full((BLOCK_N, 16), 0, dtype=tl.float32)
        for ms in range(m_steps):
            g_t = tl.trans(g_desc.load([ms * BLOCK_M, off_n]))
            x = x_desc.load([ms * BLOCK_M, off_k])
            acc = tl.dot(g_t, x, acc=acc, input_precision=INPUT_PRECISION)
            if COMPUTE_DB:
                if off_k == 0:  # "ieee": a sum never rounds its terms to TF32
                    db = tl.dot(g_t, ones, acc=db, input_precision="ieee")

        tile_out += NUM_SMS
        first_pid_n = (tile_out // pids_per_group) * GROUP_SIZE
        group_rows = min(num_pid_n - first_pid_n, GROUP_SIZE)
        off_n = (first_pid_n + (tile_out % pids_per_group) % group_rows) * BLOCK_N
        off_k = ((tile_out % pids_per_group) // group_rows) * BLOCK_K
        if EPILOGUE_SPLIT:
            halves = tl.permute(tl.reshape(acc, (BLOCK_N, 2, BLOCK_K // 2)), (0, 2, 1))
            left, right = tl.split(halves)
            dw_desc.store([off_n, off_k], left.to(dw_desc.dtype))
            dw_desc.store([off_n, off_k + BLOCK_K // 2], right.to(dw_desc.dtype))
        else:
            dw_desc.store([off_n, off_k], acc.to(dw_desc.dtype))
        if COMPUTE_DB:
            if off_k == 0:  # column 0 of db holds the sums
                offs_n = off_n + tl.arange(0, BLOCK_N)
                col = tl.arange(0, 16)
                tl.store(
                    db_ptr + offs_n[:, None] * stride_db + col[None, :],
                    db.to(db_ptr.dtype.element_ty),
                    mask=(offs_n[:, None] < N) & (col[None, :] == 0),
                )


KERNELS = {
    linear_relu_fwd_tma_kernel: FWD,
    linear_relu_dx_tma_kernel: DX,
    linear_relu_dw_db_tma_kernel: DW,
}

# ---- eligibility and launching -------------------------------------------------------------------


def tma_compatible(t):
    """TMA's rules for a 2-D operand: no empty dimension, unit last stride, the other stride a
    multiple of 16 bytes (and under 2**40 bytes), a 16-byte aligned base."""
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        return False
    row_bytes = t.stride(0) * t.element_size()
    return t.stride(1) == 1 and row_bytes % 16 == 0 and 0 < row_bytes < 2**40 and t.data_ptr() % 16 == 0


def eligible(kernel, input_precision, *tensors):
    """Whether `kernel` (one of KERNELS) runs these 2-D operands and (pre-allocated) results: TMA's
    layout rules, a device of capability >= 9 with shared memory for one of its configs, fp16 or
    bf16, and float32 only in the forward and only as TF32; the backward kernels only with BACKWARD.
    An IEEE float32 dot has no tensor-core form; TF32 wgmma wants both operands K-major, which the
    backward's w (dx) and x (dw) tiles are not (the compiler copies them through registers and
    serializes the wgmma; seen in the TTGIR)."""
    t = tensors[0]
    if not (ENABLED and HAS_TMA_API and t.device.type == "cuda" and t.dtype in TMA_DTYPES):
        return False
    if kernel is not linear_relu_fwd_tma_kernel and not BACKWARD:
        return False
    if t.dtype == torch.float32 and (kernel is not linear_relu_fwd_tma_kernel or input_precision != "tf32"):
        return False
    shared, _, major = device_limits(t.device.index if t.device.index is not None else torch.cuda.current_device())
    if major < 9 or not kept_configs(kernel, t.dtype, shared):  # (DW_TILES has unflattened ones for db)
        return False
    return all(tma_compatible(u) for u in tensors)


def descriptor(t):
    """A host-side descriptor of 2-D `t`; its block shape is a placeholder until a config's pre_hook
    (or the interpreter's tile) sets it."""
    return TensorDescriptor(t, list(t.shape), list(t.stride()), [16, 16])


def cdiv(a, b):
    return (a + b - 1) // b


def launch(kernel, tiles, device, *args, **meta):
    """Runs a TMA kernel on CUDA over a persistent grid of min(SM count, tiles(config)) programs."""
    index = device.index if device.index is not None or device.type != "cuda" else torch.cuda.current_device()
    num_sms = device_limits(index)[1]

    def grid(m):
        return (min(num_sms, tiles(m)),)

    # triton launches on the current device's current stream (CPU: TRITON_INTERPRET=1 tests only)
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        kernel[grid](*args, NUM_SMS=num_sms, DTYPE=str(args[0].base.dtype), **meta)


# The interpreter's config (tests only): small tiles, few programs, so that CPU tests cross tiles in
# every dimension and each program walks several tiles.
INTERPRETER_META = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_SIZE": 2, "FLATTEN": True, "EPILOGUE_SPLIT": True}
INTERPRETER_PROGRAMS = 3


def run_interpreted(kernel, tiles, device, *args, meta_override=None, **meta):
    """Runs a TMA kernel through Triton's interpreter on CPU tensors, with INTERPRETER_META (updated
    by meta_override) as its config and INTERPRETER_PROGRAMS persistent programs."""
    from triton.runtime.interpreter import InterpretedFunction

    fn = kernel
    while hasattr(fn, "fn"):
        fn = fn.fn
    tile = {**INTERPRETER_META, **(meta_override or {})}
    named = dict(zip(inspect.signature(fn).parameters, args))
    for name, shape in block_shapes(KERNELS[kernel], tile).items():
        named[name].block_shape = shape
    programs = min(INTERPRETER_PROGRAMS, tiles(tile))
    InterpretedFunction(fn)[(programs,)](
        *args, NUM_SMS=programs, DTYPE=str(args[0].base.dtype), **meta, **tile
    )


def forward(x, weight, bias, out, input_precision, runner=None):
    """out (M, N) = relu(x (M, K) @ weight (N, K)^T + bias); all eligible()."""
    (M, K), N = x.shape, weight.shape[0]
    (runner or launch)(  # looked up per call, so tests can spy on launch
        linear_relu_fwd_tma_kernel, lambda m: cdiv(M, m["BLOCK_M"]) * cdiv(N, m["BLOCK_N"]), x.device,
        descriptor(x), descriptor(weight), bias, descriptor(out), M, N, K, bias.stride(0) if bias is not None else 0,
        HAS_BIAS=bias is not None, INPUT_PRECISION=input_precision,
    )
    return out


def grad_x(gm, weight, dx, input_precision, runner=None):
    """dx (M, K) = gm @ weight, from the masked gradient gm (M, N); all eligible()."""
    (M, N), K = gm.shape, weight.shape[1]
    (runner or launch)(  # looked up per call, so tests can spy on launch
        linear_relu_dx_tma_kernel, lambda m: cdiv(M, m["BLOCK_M"]) * cdiv(K, m["BLOCK_K"]), gm.device,
        descriptor(gm), descriptor(weight), descriptor(dx), M, N, K,
        INPUT_PRECISION=input_precision,
    )
    return dx


def grad_weight_bias(gm, x, dw, db, input_precision, runner=None):
    """dw (N, K) = gm^T @ x and, where db is given, db (N,) = gm^T @ 1, from the masked gradient gm
    (M, N); gm, x, dw eligible()."""
    (M, N), K = gm.shape, x.shape[1]
    (runner or launch)(  # looked up per call, so tests can spy on launch
        linear_relu_dw_db_tma_kernel, lambda m: cdiv(N, m["BLOCK_N"]) * cdiv(K, m["BLOCK_K"]), gm.device,
        descriptor(gm), descriptor(x), descriptor(dw), db, M, N, K, db.stride(0) if db is not None else 0,
        COMPUTE_DB=db is not None, INPUT_PRECISION=input_precision,
    )
    return dw, db


# ---- compiling without a GPU (evidence, tests) ---------------------------------------------------

def compile_for(kernel, config, dtype, capability=90, **constexprs):
    """`kernel` under `config` compiled for an sm_<capability> GPU with none present (aot.compile_for).
    Constexprs not given default to the bias/db variants and the dtype's dot precision (TF32 for
    float32, the only float32 this path takes)."""
    consts = {"NUM_SMS": 132, "DTYPE": str(dtype), "INPUT_PRECISION": "tf32" if dtype == torch.float32 else "ieee"}
    consts.update({name: True for name in ("HAS_BIAS", "COMPUTE_DB") if name in kernel.fn.arg_names})
    consts.update(constexprs)
    return aot.compile_for(kernel, config, dtype, capability, block_shapes(KERNELS[kernel], config.kwargs), **consts)


def kept_configs(kernel, dtype, shared_limit=232448, compute_db=False):
    """The configs the pruner keeps for `dtype` on a device with `shared_limit` bytes of shared
    memory per block (H100 and H200: 232448)."""
    spec = KERNELS[kernel]
    kept = [c for c in kernel.configs if keeps(spec, c, dtype.itemsize, shared_limit)]
    if compute_db:
        kept = [c for c in kept if not c.kwargs["FLATTEN"]]
    return kept
