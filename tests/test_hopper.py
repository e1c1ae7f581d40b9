"""The Hopper (sm_90a) path of the native CUDA backend (csrc/cuda/linear_relu_sm90.cu).

The path is on by default (TWOLAYER_OPS_SM90=0 turns it off, read once; or torch.ops.twolayer_ops_sm90.set_mode).
Its float32 path on TF32 wgmma runs where torch.backends.cuda.matmul.allow_tf32 is set (TWOLAYER_OPS_SM90_TF32=0
or set_tf32(0) turns it off); the tf32 cases switch it on explicitly.
The GPU checks run in a worker process started with the variable set to 1: a kernel that traps or hangs there (its
barrier waits trap after a few seconds) fails these tests instead of poisoning the CUDA context of the
whole session. The worker runs every case once, writes one result per case to a JSON file as it goes,
and each parametrized test below reports one case. Run the worker alone with
    TWOLAYER_OPS_SM90=1 python -m tests.test_hopper OUT.json [CASE_SUBSTRING]
(the optional filter keeps runs under compute-sanitizer short, e.g. `ragged`; TWOLAYER_OPS_SM90_CLUSTER=2,
TWOLAYER_OPS_SM90_TMA_STORE=1, TWOLAYER_OPS_SM90_WIDE_STORES=1, TWOLAYER_OPS_SM90_MERGED_BACKWARD=1,
TWOLAYER_OPS_SM90_STREAM_K=1 and TWOLAYER_OPS_SM90_OVERLAP_MASK=1 switch on the GEMM variants that
test_sm90_path_variants runs every case under;
TWOLAYER_OPS_SM90_GRID=n caps the persistent grid).
Each case checks, against a float64 reference, the forward and the three gradients, and that the sm90
kernels ran (or, for ineligible inputs, did not) through the extension's call counters.
"""
import ctypes
import json
import math
import os
import subprocess
import sys
import traceback

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sm90_ops():
    """torch.ops.twolayer_ops_sm90, or None where the extension was built without CUDA."""
    import twolayer_ops  # noqa: F401  (loads _C)

    try:
        return torch.ops.twolayer_ops_sm90 if hasattr(torch.ops.twolayer_ops_sm90, "info") else None
    except (AttributeError, RuntimeError):
        return None


def _is_sm90():
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


# ---- the worker's cases ------------------------------------------------------------------------------

def _counts():
    info = torch.ops.twolayer_ops_sm90.info()
    return info[3], info[4]


def _inputs(m, k, n, dtype, *, bias=True, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(m, k, device="cuda", generator=g).to(dtype)
    w = (torch.randn(n, k, device="cuda", generator=g) / math.sqrt(k)).to(dtype)
    b = torch.randn(n, device="cuda", generator=g).to(dtype) if bias else None
    go = torch.randn(m, n, device="cuda", generator=g).to(dtype)
    return x, w, b, go


def _check(x, w, b, go, *, sm90_fwd=True, sm90_bwd=True):
    """Forward and gradients of the native backend vs float64; asserts which calls took the sm90 path."""
    from twolayer_ops import linear_relu

    from .cases import poison_allocator
    from .reference import assert_close_to_ref, linear_relu_ref

    dtype = x.dtype
    ins = [t.detach().requires_grad_() if t is not None else None for t in (x, w, b)]  # strides kept
    ref_ins = [t.detach().double().requires_grad_() if t is not None else None for t in (x, w, b)]
    n = w.shape[0]
    f0, b0 = _counts()
    poison_allocator((*x.shape[:-1], n), dtype, "cuda")
    out = linear_relu(*ins, backend="native")
    torch.cuda.synchronize()
    f1, _ = _counts()
    assert f1 - f0 == int(sm90_fwd), f"forward: sm90 calls {f1 - f0}, expected {int(sm90_fwd)}"
    ref = linear_relu_ref(*ref_ins)
    assert_close_to_ref(out.detach(), ref.detach().to(dtype), dtype, "output")
    assert out.is_contiguous()

    params = [t for t in ins if t is not None]
    names = ["grad_x", "grad_weight", "grad_bias"][: len(params)]
    for t in params:
        poison_allocator(t.shape, dtype, "cuda")
    grads = torch.autograd.grad(out, params, go)
    torch.cuda.synchronize()
    _, b1 = _counts()
    assert b1 - b0 == int(sm90_bwd), f"backward: sm90 calls {b1 - b0}, expected {int(sm90_bwd)}"
    ref_grads = torch.autograd.grad(ref, [t for t in ref_ins if t is not None], go.double())
    for name, got, want in zip(names, grads, ref_grads):
        assert_close_to_ref(got, want.to(dtype), dtype, name)  # grads carry no graph
    return out, grads


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _shape_case(m, k, n, *, bias=True, x_lead=None):
    def run(dtype):
        x, w, b, go = _inputs(m, k, n, dtype, bias=bias)
        if x_lead is not None:  # x (..., K) with leading dims: the op flattens them
            x, go = x.view(*x_lead, k), go.view(*x_lead, n)
        _check(x, w, b, go)

    return run


def _case_big(dtype):
    """The benchmark shape 8192x4096 -> 4096, checked in full against float64 (on the GPU)."""
    _check(*_inputs(8192, 4096, 4096, dtype, seed=1))


def _case_padded_strides(dtype):
    """x and W as column slices of wider matrices (row strides past K, still 16-byte multiples), and a
    transposed grad_out (the masking pass reads any strides)."""
    x, w, b, go = _inputs(512, 1024, 768, dtype, seed=2)
    xw = torch.zeros(512, 1024 + 64, device="cuda", dtype=dtype)
    ww = torch.zeros(768, 1024 + 32, device="cuda", dtype=dtype)
    xw[:, :1024], ww[:, :1024] = x, w
    go_t = go.t().contiguous().t()
    _check(xw[:, :1024], ww[:, :1024], b, go_t)


def _case_odd_n(dtype):
    """N odd: the forward still qualifies (element stores), the backward does not (N % 8 != 0)."""
    _check(*_inputs(512, 1024, 1001, dtype, seed=3), sm90_fwd=True, sm90_bwd=False)


def _case_ineligible(dtype):
    """Portable fallbacks, unchanged results: transposed x; K not a multiple of 8; a small problem."""
    x, w, b, go = _inputs(384, 512, 256, dtype, seed=4)
    _check(x.t().contiguous().t(), w, b, go, sm90_fwd=False, sm90_bwd=False)
    _check(*_inputs(256, 1001, 512, dtype, seed=5), sm90_fwd=False, sm90_bwd=False)
    _check(*_inputs(64, 1000, 100, dtype, seed=6), sm90_fwd=False, sm90_bwd=False)


def _case_nan_and_zero(dtype):
    """NaN in a pre-activation gives NaN out and passes its gradient; an exact zero gives 0 and gradient 0."""
    x, w, b, go = _inputs(1000, 1024, 1000, dtype, seed=7)
    x[3, 5] = float("nan")  # row 3 of the output is NaN everywhere; dW[:, 5] is NaN
    w[7].zero_()
    b[7] = 0  # column 7: pre-activation exactly 0 (except row 3)
    out, (gx, gw, gb) = _check(x, w, b, go)
    assert torch.isnan(out[3]).all()
    rows = torch.arange(out.shape[0], device="cuda") != 3
    assert (out[rows, 7] == 0).all()
    # Column 7's gradient is masked except in the NaN row 3, whose gradient passes.
    assert gb[7].item() == pytest.approx(go[3, 7].float().item(), rel=1e-2, abs=1e-2)


def _case_deterministic(dtype):
    """Two backward runs on the same inputs agree bit for bit (db has no atomics, nor do the GEMMs)."""
    from twolayer_ops import linear_relu

    x, w, b, go = _inputs(1000, 1024, 1000, dtype, seed=8)
    runs = []
    for _ in range(2):
        ins = [t.detach().clone().requires_grad_() for t in (x, w, b)]
        runs.append(torch.autograd.grad(linear_relu(*ins, backend="native"), ins, go))
    for a, c in zip(*runs):
        assert torch.equal(a, c)


def _case_kernels_ran(dtype):
    """The profiler sees the sm90 kernels by name, and set_mode(0) switches the path off."""
    from torch.profiler import ProfilerActivity, profile

    from twolayer_ops import linear_relu

    info = torch.ops.twolayer_ops_sm90.info()
    assert info[1] == 1 and info[2] == 1, f"info() = {info}: expected env on and the sm_90a image loaded"
    x, w, b, go = _inputs(1024, 1024, 1024, dtype, seed=9)
    ins = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        torch.autograd.grad(linear_relu(*ins, backend="native"), ins, go)
        torch.cuda.synchronize()
    names = " ".join(e.key for e in prof.key_averages())
    overlap = info[16] == 1 and info[12] == 0  # the first GEMM writes the masked gradient (unmerged): no pass
    assert "sm90_gemm_kernel" in names and ("sm90_mask_grad_kernel" in names) != overlap, names[:2000]
    torch.ops.twolayer_ops_sm90.set_mode(0)
    try:
        _check(x, w, b, go, sm90_fwd=False, sm90_bwd=False)
    finally:
        torch.ops.twolayer_ops_sm90.set_mode(-1)
    _check(x, w, b, go)


def _bias_views(n, dtype, seed):
    """The bias as a stride-2 view and as a view one element past an aligned start: the epilogue cannot
    load its column pairs as one word (TileBias), so it loads them element by element."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    wide = torch.randn(2 * n + 2, device="cuda", generator=g).to(dtype)
    return wide[::2][:n], wide[1 : n + 1]


def _case_bias_layouts(dtype):
    x, w, _, go = _inputs(512, 1024, 768, dtype, seed=10)
    for b in _bias_views(768, dtype, seed=10):
        _check(x, w, b, go)


def _case_one_operand_frozen(dtype):
    """x needing no gradient (a first layer: dW and db, the weight reaching the backward as a
    placeholder), then a frozen weight (dX and db, x a placeholder): each stays on the sm90 path."""
    from twolayer_ops import linear_relu

    from .reference import assert_close_to_ref, linear_relu_ref

    x, w, b, go = _inputs(512, 1024, 768, dtype, seed=11)
    for need_x in (False, True):
        ins = [x.detach().requires_grad_(need_x), w.detach().requires_grad_(not need_x), b.detach().requires_grad_()]
        ref_ins = [t.detach().double().requires_grad_(t.requires_grad) for t in ins]
        f0, b0 = _counts()
        out = linear_relu(*ins, backend="native")
        grads = torch.autograd.grad(out, [t for t in ins if t.requires_grad], go)
        torch.cuda.synchronize()
        f1, b1 = _counts()
        assert (f1 - f0, b1 - b0) == (1, 1), f"need_x={need_x}: sm90 calls {(f1 - f0, b1 - b0)}, expected (1, 1)"
        ref_grads = torch.autograd.grad(linear_relu_ref(*ref_ins), [t for t in ref_ins if t.requires_grad], go.double())
        for got, want in zip(grads, ref_grads):
            assert_close_to_ref(got, want.to(dtype), dtype, f"need_x={need_x}")


CASES = {
    "tiles_256x512x384": _shape_case(256, 512, 384),
    "ragged_1000x1024x1000": _shape_case(1000, 1024, 1000),
    "ktail_520x1000x1000": _shape_case(520, 1000, 1000),
    "mtail_300x4096x520": _shape_case(300, 4096, 520),
    "no_bias_256x512x384": _shape_case(256, 512, 384, bias=False),
    "leading_dims_4x250x1024x1000": _shape_case(1000, 1024, 1000, x_lead=(4, 250)),
    "big_8192x4096x4096": _case_big,
    "padded_strides": _case_padded_strides,
    "odd_n": _case_odd_n,
    "ineligible": _case_ineligible,
    "nan_and_zero": _case_nan_and_zero,
    "deterministic": _case_deterministic,
    "kernels_ran": _case_kernels_ran,
    "bias_layouts": _case_bias_layouts,
    "one_operand_frozen": _case_one_operand_frozen,
}


def _check_tf32(x, w, b, go, *, sm90_fwd=True, sm90_bwd=True):
    """float32 with TF32 allowed and the sm90 TF32 switch on: forward and gradients of the native backend
    against float64, and which calls took the sm90 path. A GEMM on that path shows TF32's error (above
    float32's bound, below 5e-3); the portable kernels, and db (a float32 column sum), float32's."""
    from twolayer_ops import linear_relu

    from .reference import REL_TOL, linear_relu_ref, rel_error

    def assert_error(got, want, tf32, what):
        assert got.dtype == torch.float32 and got.shape == want.shape, what
        assert torch.equal(torch.isnan(got), torch.isnan(want)), f"{what}: NaN at different places"
        assert torch.equal(torch.isinf(got), torch.isinf(want)), f"{what}: inf at different places"
        err = rel_error(got, want)
        if tf32:
            assert REL_TOL[torch.float32] < err < 5e-3, f"{what}: relative error {err:.3g}, not TF32's"
        else:
            assert err <= REL_TOL[torch.float32], f"{what}: relative error {err:.3g}"

    ins = [t.detach().requires_grad_() if t is not None else None for t in (x, w, b)]
    params = [t for t in ins if t is not None]
    ops, flag = torch.ops.twolayer_ops_sm90, torch.backends.cuda.matmul.allow_tf32
    ops.set_tf32(1)
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        f0, b0 = _counts()
        out = linear_relu(*ins, backend="native")
        torch.cuda.synchronize()
        f1, _ = _counts()
        grads = torch.autograd.grad(out, params, go)
        torch.cuda.synchronize()
        _, b1 = _counts()
    finally:
        ops.set_tf32(-1)
        torch.backends.cuda.matmul.allow_tf32 = flag
    assert f1 - f0 == int(sm90_fwd), f"forward: sm90 calls {f1 - f0}, expected {int(sm90_fwd)}"
    assert b1 - b0 == int(sm90_bwd), f"backward: sm90 calls {b1 - b0}, expected {int(sm90_bwd)}"
    ref = linear_relu_ref(*(t.detach().double() for t in params))
    assert out.is_contiguous()
    assert_error(out.detach(), ref, sm90_fwd, "output")
    # The backward differentiates ReLU at the output it computed (the op saves it), so the reference
    # gradients take that output's mask. Against the float64 forward's mask, a TF32 forward flips about
    # 1e-4 of the signs near zero, and each flip moves a whole row of grad_x: 1-2% that is not the GEMMs'.
    gm = torch.where(out.detach().double() <= 0, 0, go.double())
    ref_grads = (gm @ w.double(), gm.t() @ x.double(), gm.sum(0))
    for name, got, want in zip(("grad_x", "grad_weight", "grad_bias"), grads, ref_grads):
        assert_error(got, want, sm90_bwd and name != "grad_bias", name)
    return out.detach(), grads


def _tf32_shape_case(m, k, n, *, bias=True):
    def run():
        _check_tf32(*_inputs(m, k, n, torch.float32, bias=bias, seed=m + k + n))

    return run


def _case_tf32_switches():
    """The TF32 path runs only with allow_tf32 and the switch both on; otherwise float32 stays IEEE
    (the portable kernels), forward and backward."""
    from twolayer_ops import linear_relu

    from .reference import REL_TOL, linear_relu_ref, rel_error

    x, w, b, go = _inputs(512, 1024, 512, torch.float32, seed=11)
    ops, flag = torch.ops.twolayer_ops_sm90, torch.backends.cuda.matmul.allow_tf32
    try:
        for allow, switch in ((False, 1), (True, 0), (False, 0)):
            torch.backends.cuda.matmul.allow_tf32 = allow
            ops.set_tf32(switch)
            ins = [t.detach().clone().requires_grad_() for t in (x, w, b)]
            f0, b0 = _counts()
            out = linear_relu(*ins, backend="native")
            torch.autograd.grad(out, ins, go)
            torch.cuda.synchronize()
            assert _counts() == (f0, b0), f"allow_tf32={allow}, set_tf32({switch}): the sm90 path ran"
            err = rel_error(out.detach(), linear_relu_ref(x.double(), w.double(), b.double()))
            assert err <= REL_TOL[torch.float32], f"allow_tf32={allow}, set_tf32({switch}): relative error {err:.3g}"
    finally:
        ops.set_tf32(-1)
        torch.backends.cuda.matmul.allow_tf32 = flag


def _case_tf32_specials():
    """TF32: NaN and an exact-zero column with odd N (element stores; the backward needs N % 4: portable);
    x a column slice (padded rows); x transposed and K not a multiple of 4 (not TMA-readable: a portable
    forward, while the backward copies its operands and still runs)."""
    x, w, b, go = _inputs(1000, 1024, 1001, torch.float32, seed=12)
    x[3, 5] = float("nan")
    w[7].zero_()
    b[7] = 0
    out, _ = _check_tf32(x, w, b, go, sm90_bwd=False)
    assert torch.isnan(out[3]).all() and (out[torch.arange(1000, device="cuda") != 3, 7] == 0).all()
    x, w, _, go = _inputs(512, 1024, 768, torch.float32, seed=13)
    xw = torch.zeros(512, 1024 + 4, device="cuda")
    xw[:, :1024] = x
    _check_tf32(xw[:, :1024], w, None, go)
    _check_tf32(x.t().contiguous().t(), w, None, go, sm90_fwd=False)
    _check_tf32(*_inputs(256, 1001, 512, torch.float32, seed=14), sm90_fwd=False)


def _case_tf32_bias_layouts():
    x, w, _, go = _inputs(512, 1024, 768, torch.float32, seed=15)
    for b in _bias_views(768, torch.float32, seed=15):
        _check_tf32(x, w, b, go)


TF32_CASES = {
    "tf32_tiles_256x512x384": _tf32_shape_case(256, 512, 384),
    "tf32_ragged_1000x1024x1000": _tf32_shape_case(1000, 1024, 1000),
    "tf32_ktail_520x1000x1000": _tf32_shape_case(520, 1000, 1000),
    "tf32_no_bias_300x4096x520": _tf32_shape_case(300, 4096, 520, bias=False),
    "tf32_big_4096x4096x4096": _tf32_shape_case(4096, 4096, 4096),
    "tf32_specials": _case_tf32_specials,
    "tf32_switches": _case_tf32_switches,
    "tf32_bias_layouts": _case_tf32_bias_layouts,
}
CASE_IDS = [f"{name}-{dt}" for name in CASES for dt in DTYPES] + [f"{name}-tf32" for name in TF32_CASES]


def worker(out_path, only=None):
    """Runs every case (or those whose id contains `only`), writing {case id: "ok" | traceback}, and at the
    end the variant switches and launch counts under "variants" (info()[6:18]: cluster, cluster launches,
    tma_store, tma_store launches, wide_stores, wide-store launches, merged_backward, merged launches,
    stream_k, stream-K launches, overlap_mask, overlapped-mask launches). Returns the results."""
    import twolayer_ops  # noqa: F401  (loads _C, for info() even where no case ran)

    results = {}
    for case_id in CASE_IDS:
        if only and only not in case_id:
            continue
        name, dt = case_id.rsplit("-", 1)
        try:
            TF32_CASES[name]() if dt == "tf32" else CASES[name](DTYPES[dt])
            results[case_id] = "ok"
        except Exception:  # noqa: BLE001  (every failure is reported, the next case still runs)
            results[case_id] = traceback.format_exc(limit=6)
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)
        print(f"{case_id}: {'ok' if results[case_id] == 'ok' else 'FAILED'}", flush=True)
    results["variants"] = torch.ops.twolayer_ops_sm90.info()[6:18]
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)
    return results


# ---- the tests -----------------------------------------------------------------------------------------

# The GEMM variants that are off by default, as the worker's environment: two-block clusters sharing B by
# TMA multicast, the TMA-store epilogue, both, 16-byte stores from the registers, the backward's two
# products in one launch (alone and in clusters), stream-K for the last waves (on the whole GPU, where
# the big cases share tiles out; and on a grid of 7 blocks, where most cases do, the TMA-store epilogue on),
# and the masked gradient written during the backward's first GEMM (on the whole GPU; in clusters; on 7
# blocks, where each block's 3 writers take many chunks and the producers wait on them, with stream-K on
# in the launches that do not write Gm).
DEFAULT_SWITCHES = {"TWOLAYER_OPS_SM90_CLUSTER": "1", "TWOLAYER_OPS_SM90_TMA_STORE": "0",
                    "TWOLAYER_OPS_SM90_WIDE_STORES": "0", "TWOLAYER_OPS_SM90_MERGED_BACKWARD": "0",
                    "TWOLAYER_OPS_SM90_STREAM_K": "0", "TWOLAYER_OPS_SM90_GRID": "0",
                    "TWOLAYER_OPS_SM90_OVERLAP_MASK": "0"}
VARIANTS = {
    "clusters": {"TWOLAYER_OPS_SM90_CLUSTER": "2"},
    "tma_store": {"TWOLAYER_OPS_SM90_TMA_STORE": "1"},
    "clusters_tma_store": {"TWOLAYER_OPS_SM90_CLUSTER": "2", "TWOLAYER_OPS_SM90_TMA_STORE": "1"},
    "wide_stores": {"TWOLAYER_OPS_SM90_WIDE_STORES": "1"},
    "merged_backward": {"TWOLAYER_OPS_SM90_MERGED_BACKWARD": "1"},
    "clusters_merged_backward": {"TWOLAYER_OPS_SM90_CLUSTER": "2", "TWOLAYER_OPS_SM90_MERGED_BACKWARD": "1"},
    "stream_k": {"TWOLAYER_OPS_SM90_STREAM_K": "1"},
    "stream_k_grid7_tma_store": {"TWOLAYER_OPS_SM90_STREAM_K": "1", "TWOLAYER_OPS_SM90_GRID": "7",
                                 "TWOLAYER_OPS_SM90_TMA_STORE": "1"},
    "overlap_mask": {"TWOLAYER_OPS_SM90_OVERLAP_MASK": "1"},
    "clusters_overlap_mask": {"TWOLAYER_OPS_SM90_CLUSTER": "2", "TWOLAYER_OPS_SM90_OVERLAP_MASK": "1"},
    "overlap_mask_grid7_stream_k": {"TWOLAYER_OPS_SM90_OVERLAP_MASK": "1", "TWOLAYER_OPS_SM90_GRID": "7",
                                    "TWOLAYER_OPS_SM90_STREAM_K": "1"},
}


def _run_worker(out, variant):
    """The worker in a fresh process with the path on and the variant's switches: (results, log)."""
    env = {**os.environ, "TWOLAYER_OPS_SM90": "1", "PYTHONUNBUFFERED": "1", **DEFAULT_SWITCHES, **variant}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.test_hopper", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=200,  # under the GPU check's tests step (260 s): a hung worker costs one test
        )
        log = f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    except subprocess.TimeoutExpired as err:
        log = f"worker timed out after {err.timeout} s\n{err.stdout}\n{err.stderr}"
    results = json.loads(out.read_text()) if out.exists() else {}
    return results, log


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory):
    return _run_worker(tmp_path_factory.mktemp("sm90") / "results.json", {})


@pytest.mark.cuda
@pytest.mark.skipif(not _is_sm90(), reason="needs a compute capability 9.0 GPU (H100 / H200)")
@pytest.mark.xdist_group("sm90_worker")  # one process, so one worker run, takes every case
@pytest.mark.parametrize("case", CASE_IDS)
def test_sm90_path(worker_results, case):
    results, log = worker_results
    if case not in results:
        pytest.fail(f"the worker reported nothing for {case} (a crash or a hang before it?):\n{log}")
    assert results[case] == "ok", results[case]


@pytest.mark.cuda
@pytest.mark.skipif(not _is_sm90(), reason="needs a compute capability 9.0 GPU (H100 / H200)")
@pytest.mark.parametrize("variant", VARIANTS)
def test_sm90_path_variants(tmp_path, variant):
    """Every case again under each GEMM variant that is off by default: two-block clusters (odd tile-row
    counts leave a cluster's second block past M; B tiles half past N; the MN-major backward operands;
    TF32), the TMA-store epilogue (tiles past M and N, clipped by TMA; odd N, whose rows TMA cannot
    store, keeps the register stores), the 16-byte stores (16-bit C; rows past M; the last tile-column
    and rows not 16-byte aligned keep the pair stores), the merged backward (dX and dW tiles in one
    grid), stream-K (tiles split between blocks, the partial sums added in block order; the results
    must stay deterministic) and the overlapped mask (Gm written chunk by chunk during dX, or dW where dX
    does not run; a transposed grad_out keeps the pass; db deterministic). One test per variant, so one
    process runs each worker."""
    results, log = _run_worker(tmp_path / "results.json", VARIANTS[variant])
    missing = [c for c in CASE_IDS if c not in results]
    assert not missing, f"the worker reported nothing for {missing} (a crash or a hang?):\n{log}"
    failed = {c: r for c, r in results.items() if c in CASE_IDS and r != "ok"}
    assert not failed, "\n\n".join(f"{c}:\n{r}" for c, r in failed.items())
    (cluster, cluster_launches, tma_store, tma_store_launches, wide, wide_launches, merged, merged_launches, stream_k,
     stream_k_launches, overlap, overlap_launches) = results["variants"]
    want_cluster = "clusters" in variant
    want_tma_store = "tma_store" in variant
    want_wide = "wide_stores" in variant
    want_merged = "merged_backward" in variant
    assert cluster == (2 if want_cluster else 1) and (cluster_launches > 0) == want_cluster, results["variants"]
    assert tma_store == int(want_tma_store) and (tma_store_launches > 0) == want_tma_store, results["variants"]
    assert wide == int(want_wide) and (wide_launches > 0) == want_wide, results["variants"]
    assert merged == int(want_merged) and (merged_launches > 0) == want_merged, results["variants"]
    want_stream_k = "stream_k" in variant
    assert stream_k == int(want_stream_k) and (stream_k_launches > 0) == want_stream_k, results["variants"]
    want_overlap = "overlap_mask" in variant
    assert overlap == int(want_overlap) and (overlap_launches > 0) == want_overlap, results["variants"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_worker_runs_under_the_variant_switches(tmp_path, variant):
    """On any machine: the worker process starts, reports every case (each fails at once, with no GPU
    visible) and sees the variant's switches in info()."""
    if _sm90_ops() is None:
        pytest.skip("extension built without CUDA")
    # No GPU visible, so each case fails at once here too: test_sm90_path_variants runs them on a GPU.
    results, log = _run_worker(tmp_path / "results.json", {**VARIANTS[variant], "CUDA_VISIBLE_DEVICES": ""})
    assert set(CASE_IDS) <= set(results), log
    cluster, _, tma_store, _, wide, _, merged, _, stream_k, _, overlap, _ = results["variants"]
    want = (2 if "clusters" in variant else 1, int("tma_store" in variant), int("wide_stores" in variant),
            int("merged_backward" in variant), int("stream_k" in variant), int("overlap_mask" in variant))
    assert (cluster, tma_store, wide, merged, stream_k, overlap) == want, results["variants"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or _is_sm90(), reason="needs a CUDA GPU other than 9.0")
def test_other_gpus_never_take_the_sm90_path():
    ops = _sm90_ops()
    if ops is None:
        pytest.skip("extension built without CUDA")
    ops.set_mode(1)
    try:
        assert ops.info()[2] == 0
        x, w, b, go = _inputs(512, 1024, 512, torch.float16)
        _check(x, w, b, go, sm90_fwd=False, sm90_bwd=False)
    finally:
        ops.set_mode(-1)


def test_introspection_ops_without_a_gpu_run():
    """The twolayer_ops_sm90 ops load and answer on any machine; a bad mode is a clear error."""
    ops = _sm90_ops()
    if ops is None:
        pytest.skip("extension built without CUDA")
    (mode, env, probe, fwd, bwd, _, cluster, cluster_launches, _, tma_store_launches, _, wide_launches, _,
     merged_launches, _, stream_k_launches, _, overlap_launches) = ops.info()
    assert mode == -1 and env == int(os.environ.get("TWOLAYER_OPS_SM90", "1") != "0")
    assert probe in ((1, 0) if torch.cuda.is_available() else (-1,))
    assert fwd >= 0 and bwd >= 0
    with pytest.raises(RuntimeError, match="mode must be"):
        ops.set_mode(2)
    ops.set_mode(0)
    assert ops.info()[0] == 0
    ops.set_mode(-1)
    with pytest.raises(RuntimeError, match="set_group_m: 0 .the default, 16. or a tile-row count"):
        ops.set_group_m(-1)
    ops.set_group_m(8)
    ops.set_group_m(0)
    assert cluster == (2 if os.environ.get("TWOLAYER_OPS_SM90_CLUSTER") == "2" else 1) and cluster_launches >= 0
    for bad in (0, 3, -2):
        with pytest.raises(RuntimeError, match="set_cluster: -1 .env., 1 .no clusters. or 2"):
            ops.set_cluster(bad)
    ops.set_cluster(2)
    assert ops.info()[6] == 2
    ops.set_cluster(-1)
    assert ops.info()[6] == cluster
    assert min(tma_store_launches, wide_launches, merged_launches, stream_k_launches, overlap_launches) >= 0
    # The on/off switches: (op, info() index, environment variable, on by default). A switch on by default
    # is off when its variable reads "0"; one off by default is on when it reads "1".
    for op, index, variable, default in (("set_tf32", 5, "TWOLAYER_OPS_SM90_TF32", True),
                                         ("set_tma_store", 8, "TWOLAYER_OPS_SM90_TMA_STORE", False),
                                         ("set_wide_stores", 10, "TWOLAYER_OPS_SM90_WIDE_STORES", False),
                                         ("set_merged_backward", 12, "TWOLAYER_OPS_SM90_MERGED_BACKWARD", False),
                                         ("set_stream_k", 14, "TWOLAYER_OPS_SM90_STREAM_K", False),
                                         ("set_overlap_mask", 16, "TWOLAYER_OPS_SM90_OVERLAP_MASK", False)):
        from_env = ops.info()[index]
        flipped = os.environ.get(variable) == ("0" if default else "1")
        assert from_env == int(default != flipped), (variable, from_env)
        with pytest.raises(RuntimeError, match=f"{op}: mode must be"):
            getattr(ops, op)(2)
        for mode in (1, 0):
            getattr(ops, op)(mode)
            assert ops.info()[index] == mode, op
        getattr(ops, op)(-1)
        assert ops.info()[index] == from_env, op


def test_quad_transpose_hands_each_lane_a_column(emulation):
    """The wide-store epilogue's exchange (csrc/cuda/quad_transpose.h), on the CPU emulation of a warp:
    lane 4r + q ends with word q of each lane of its quad, in lane order."""
    words = (ctypes.c_uint32 * 128)(*[0x1000 * lane + i for lane in range(32) for i in range(4)])
    assert emulation.emulated_quad_transpose(words) == 0
    want = [0x1000 * (lane - lane % 4 + p) + lane % 4 for lane in range(32) for p in range(4)]
    assert list(words) == want


if __name__ == "__main__":
    # Exit 1 unless some case ran and every one passed: compute-sanitizer's exit code speaks only of
    # memory errors, so the GPU check's sanitizer steps would pass a wrong result or a case never run.
    results = worker(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
    ran = [r for case, r in results.items() if case != "variants"]
    sys.exit(0 if ran and all(r == "ok" for r in ran) else 1)
