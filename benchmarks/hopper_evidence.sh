#!/usr/bin/env bash
# Evidence for the Hopper (sm_90a) path of the native backend, on an H100 / H200, in one call:
#   bash benchmarks/hopper_evidence.sh OUT_DIR
# 1. per kernel and cubin arch (an sm_90a one must be there): registers, stack, local memory and the
#    HGMMA / UTMALDG / USETMAXREG / LDL / STL counts (`python -m benchmarks.machine_code`);
#    the ptxas lines of the sm90 kernels when a build log is at hand (OUT_DIR/build.log or $BUILD_LOG);
# 2. a quick correctness check of the sm90 path (relative error vs float64 on sampled rows);
# 3. timings in one run, triton.testing.do_bench medians: the sm90 path in each GEMM variant (the
#    default; two-block clusters, set_cluster; the TMA-store epilogue, set_tma_store; both; 16-byte
#    register stores, set_wide_stores; dX and dW in one launch, set_merged_backward; stream-K for the
#    last waves, set_stream_k; the masked gradient written during the first backward GEMM,
#    set_overlap_mask), the
#    portable native kernels, cuBLAS (torch.mm: 1 GEMM forward, 3 for forward + backward) and eager
#    PyTorch, bf16 8192x4096 -> 4096, forward and forward + backward; the sm90 forward under each group
#    height of its persistent order (set_group_m: 1 to 64 tile-rows), without and with clusters; plus
#    the masking pass's bytes timed as torch.where (the cost of writing the masked gradient once); then
#    TF32 float32 4096^3, forward (each variant) and backward against cuBLAS TF32, with the TF32
#    backward's mask pass and transposed copies timed alone. Prints short tables last. About a minute
#    and a half of GPU time once built.
# HOPPER_VARIANTS=clusters,tma_store,... limits the variants (default: all; a trapping one ends the run).
# Builds the extension first (into OUT_DIR/build.log) only when twolayer_ops._C is not importable.
set -uo pipefail
out=${1:?usage: hopper_evidence.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.." || exit 1
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

if ! "$PY" -c "import twolayer_ops._C" 2>/dev/null; then
  echo "== building (log: $out/build.log)"
  "$PY" -m pip install --no-build-isolation --no-deps -v -e . >"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
fi
so=$("$PY" -c "import twolayer_ops._C as c; print(c.__file__)")
echo "extension: $so"

# Per kernel and arch: registers, stack, local memory and the HGMMA / UTMALDG / USETMAXREG / LDL / STL counts.
"$PY" -m benchmarks.machine_code --so "$so" >"$out/machine_code.txt" 2>&1
log=${BUILD_LOG:-$out/build.log}
if [[ -f $log ]]; then
  grep -B1 -A3 "sm90" "$log" | grep -E "Compiling entry|Used|spill" >"$out/ptxas_sm90.txt" || true
  grep -E "C7508|serializ|Potential Performance Loss" "$log" >"$out/ptxas_warnings.txt" || true
fi

"$PY" - "$out" <<'EOF' 2>&1 | tee "$out/timing.log"
import json, math, os, sys
import torch, torch.nn.functional as F
import triton.testing
import twolayer_ops
from twolayer_ops import linear_relu

out_dir = sys.argv[1]
sm90 = torch.ops.twolayer_ops_sm90
print(torch.__version__, torch.cuda.get_device_name(), "info() =", sm90.info())
M, K, N, dt = 8192, 4096, 4096, torch.bfloat16
g = torch.Generator(device="cuda").manual_seed(0)
x = torch.randn(M, K, device="cuda", generator=g).to(dt).requires_grad_()
w = (torch.randn(N, K, device="cuda", generator=g) / math.sqrt(K)).to(dt).requires_grad_()
b = torch.randn(N, device="cuda", generator=g).to(dt).requires_grad_()
go = torch.randn(M, N, device="cuda", generator=g).to(dt)

def rel(a, r):
    a, r = a.double(), r.double()
    return ((a - r).norm() / r.norm()).item()

# The GEMM variants that are off by default: (blocks per cluster, TMA-store epilogue, 16-byte register
# stores, merged backward, stream-K, overlapped mask). HOPPER_VARIANTS (comma-separated names) keeps some:
# a variant that traps ends this process, so a rerun leaves it out.
VARIANTS = {"default": (1, 0, 0, 0, 0, 0), "clusters": (2, 0, 0, 0, 0, 0), "tma_store": (1, 1, 0, 0, 0, 0),
            "clusters+tma_store": (2, 1, 0, 0, 0, 0), "wide_stores": (1, 0, 1, 0, 0, 0),
            "merged_backward": (1, 0, 0, 1, 0, 0), "stream_k": (1, 0, 0, 0, 1, 0), "overlap_mask": (1, 0, 0, 0, 0, 1)}
keep = os.environ.get("HOPPER_VARIANTS")
if keep:
    VARIANTS = {name: VARIANTS[name] for name in ["default"] + keep.split(",") if name in VARIANTS}
print("variants:", list(VARIANTS))

def use(variant):
    cluster, tma_store, wide, merged, stream_k, overlap = VARIANTS[variant]
    sm90.set_cluster(cluster)
    sm90.set_tma_store(tma_store)
    sm90.set_wide_stores(wide)
    sm90.set_merged_backward(merged)
    sm90.set_stream_k(stream_k)
    sm90.set_overlap_mask(overlap)

def use_env():
    sm90.set_cluster(-1)
    sm90.set_tma_store(-1)
    sm90.set_wide_stores(-1)
    sm90.set_merged_backward(-1)
    sm90.set_stream_k(-1)
    sm90.set_overlap_mask(-1)

# Correctness on sampled rows / the full weight gradient, sm90 path on, in every variant.
sm90.set_mode(1)
rows = torch.arange(0, M, 37, device="cuda")
xd, wd, bd, god = x.detach().double(), w.detach().double(), b.detach().double(), go.double()
pre = xd @ wd.t() + bd
ref = torch.relu(pre)
gm = torch.where(ref <= 0, 0, god)
ref_gx, ref_gw, ref_gb = (gm[rows] @ wd), gm.t() @ xd, gm.sum(0)  # float64 once, for every variant
errs, wrong_variants = {}, []
for variant in VARIANTS:
    use(variant)
    y = linear_relu(x, w, b, backend="native")
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), go)
    torch.cuda.synchronize()
    errs[variant] = {"out": rel(y[rows], ref[rows]), "grad_x": rel(gx[rows], ref_gx), "grad_w": rel(gw, ref_gw),
                     "grad_b": rel(gb, ref_gb)}
    wrong = not all(e <= 2e-2 for e in errs[variant].values())  # (NaN too) bf16's own is ~2e-3: its times mean nothing
    if wrong:
        wrong_variants.append(variant)
    print(f"{variant}: info() =", sm90.info(), " rel errors vs float64:",
          {k: f"{v:.2e}" for k, v in errs[variant].items()}, " WRONG" if wrong else "")
use_env()
del xd, wd, bd, god, pre, ref, gm, ref_gx, ref_gw, ref_gb, y, gx, gw, gb

def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=200, quantiles=[0.5, 0.2, 0.8])

def native_fwd():
    with torch.no_grad():
        return linear_relu(x, w, b, backend="native")

def native_fwdbwd():
    return torch.autograd.grad(linear_relu(x, w, b, backend="native"), (x, w, b), go)

out_saved = torch.relu(F.linear(x.detach(), w.detach(), b.detach()))
rows_out = []
def row(name, mode, fn):
    t = bench(fn)
    rows_out.append((name, mode, t))

for mode, nat, mm in (
    ("fwd", native_fwd, lambda: torch.mm(x.detach(), w.detach().t())),
    ("fwd+bwd", native_fwdbwd, lambda: (torch.mm(x.detach(), w.detach().t()), torch.mm(go, w.detach()), torch.mm(go.t(), x.detach()))),
):
    row("cuBLAS mm", mode, mm)
    sm90.set_mode(1)
    for variant in VARIANTS:
        if mode == "fwd" and variant == "overlap_mask":
            continue  # a backward variant: its forward is the default's
        use(variant)
        row("sm90" if variant == "default" else f"sm90 {variant}", mode, nat)
    use_env()
    sm90.set_mode(0); row("portable", mode, nat)
    sm90.set_mode(-1)
    if mode == "fwd":
        with torch.no_grad():
            row("eager linear+relu", mode, lambda: torch.relu(F.linear(x, w, b)))
    else:
        row("eager linear+relu", mode, lambda: torch.autograd.grad(torch.relu(F.linear(x, w, b)), (x, w, b), go))
# The persistent order's group height (tile-rows that sweep the columns together; default 16).
sm90.set_mode(1)
for variant in [v for v in ("default", "clusters") if v in VARIANTS]:
    use(variant)
    for group_m in (2, 4, 8, 16, 32, 64) if variant == "clusters" else (1, 2, 4, 8, 16, 32, 64):
        sm90.set_group_m(group_m)
        row(f"sm90 {variant} group_m={group_m}", "fwd", native_fwd)
sm90.set_group_m(0)
use_env()
sm90.set_mode(-1)
row("mask pass proxy: torch.where(out<=0,0,g)", "bwd", lambda: torch.where(out_saved <= 0, 0, go))
sm90.set_mode(1)
bwd_bf16 = lambda: torch.ops.twolayer_ops.linear_relu_backward(go, out_saved, x.detach(), w.detach(), [True, True, True])
row("sm90 bwd alone", "bwd", bwd_bf16)
if "overlap_mask" in VARIANTS:  # the same backward with no pass: Gm written during dX
    use("overlap_mask")
    row("sm90 bwd alone overlap_mask", "bwd", bwd_bf16)
    use_env()
sm90.set_mode(-1)
row("cuBLAS 2 mm (bwd)", "bwd", lambda: (torch.mm(go, w.detach()), torch.mm(go.t(), x.detach())))

bf16_rows, rows_out = rows_out, []

# TF32 float32 4096^3: the forward and the backward against cuBLAS TF32, and the backward's passes
# besides its two GEMMs (TF32 wgmma reads K-major operands only, so it masks g and copies three
# operands transposed), each timed alone.
Mt = Kt = Nt = 4096
torch.backends.cuda.matmul.allow_tf32 = True
xt = torch.randn(Mt, Kt, device="cuda", generator=g)
wt = torch.randn(Nt, Kt, device="cuda", generator=g) / math.sqrt(Kt)
bt = torch.randn(Nt, device="cuda", generator=g)
got = torch.randn(Mt, Nt, device="cuda", generator=g)
out_t = torch.relu(F.linear(xt, wt, bt))
gm_t = torch.where(out_t <= 0, 0, got)
row("cuBLAS TF32 mm", "fwd", lambda: torch.mm(xt, wt.t()))
with torch.no_grad():
    for variant in (v for v in VARIANTS if v != "overlap_mask"):  # (a 16-bit backward variant)
        use(variant)
        row("sm90 TF32" if variant == "default" else f"sm90 TF32 {variant}", "fwd",
            lambda: linear_relu(xt, wt, bt, backend="native"))
    use_env()
row("cuBLAS TF32 2 mm", "bwd", lambda: (torch.mm(got, wt), torch.mm(got.t(), xt)))
bwd_tf32 = lambda: torch.ops.twolayer_ops.linear_relu_backward(got, out_t, xt, wt, [True, True, True])
row("sm90 TF32 bwd alone", "bwd", bwd_tf32)
row("  mask: torch.where(out<=0,0,g)", "bwd", lambda: torch.where(out_t <= 0, 0, got))
row("  W^T copy", "bwd", lambda: wt.t().contiguous())
row("  x^T copy", "bwd", lambda: xt.t().contiguous())
row("  masked g^T copy", "bwd", lambda: gm_t.t().contiguous())
# The two backwards kernel by kernel (the profiler's CUDA times, mean of 10 calls): what the masking pass,
# db and the transposed copies cost next to the GEMMs.
def kernel_breakdown(title, fn, reps=10):
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    us = lambda e: (getattr(e, "device_time_total", 0) or getattr(e, "cuda_time_total", 0)) / reps  # noqa: E731
    print(f"\n{title}: kernels per call (mean of {reps} calls)")
    for e in sorted(kernels, key=us, reverse=True):
        print(f"  {us(e):9.1f} us  x{e.count // reps}  {e.key[:110]}")
    print(f"  {sum(us(e) for e in kernels):9.1f} us  in all")

sm90.set_mode(1)
kernel_breakdown(f"sm90 TF32 backward {Mt}x{Kt}->{Nt}", bwd_tf32)
torch.backends.cuda.matmul.allow_tf32 = False
kernel_breakdown(f"sm90 bf16 backward {M}x{K}->{N}", bwd_bf16)
if "overlap_mask" in VARIANTS:
    use("overlap_mask")
    kernel_breakdown(f"sm90 bf16 backward {M}x{K}->{N}, overlapped mask", bwd_bf16)
    use_env()
sm90.set_mode(-1)
print("sm90 calls after the TF32 rows (fwd, bwd):", sm90.info()[3:5])

def table(title, rows, m, k, n):
    flops = {"fwd": 2 * m * n * k, "fwd+bwd": 6 * m * n * k, "bwd": 4 * m * n * k}
    base = {mode: t[0] for name, mode, t in rows if name.startswith("cuBLAS")}
    print()
    print(f"| {title} | mode | p50 us | p20 | p80 | TFLOP/s | x cuBLAS |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, mode, (p50, p20, p80) in rows:
        tf = flops[mode] / (p50 * 1e-3) / 1e12
        ratio = p50 / base[mode] if mode in base else float("nan")
        print(f"| {name} | {mode} | {p50 * 1e3:.1f} | {p20 * 1e3:.1f} | {p80 * 1e3:.1f} | {tf:.0f} | {ratio:.3f} |")

table(f"bf16 {M}x{K}->{N}", bf16_rows, M, K, N)
table(f"tf32 {Mt}x{Kt}->{Nt}", rows_out, Mt, Kt, Nt)

# Each variant against the default of the same run (p50 ratios; below 1 is faster), and whether its results
# were right: what to set as the default in linear_relu_sm90.cu (one run of one shape: a hint, not a verdict).
p50 = {(name, mode): t[0] for name, mode, t in bf16_rows + rows_out}
print("\n| variant | bf16 fwd | bf16 fwd+bwd | bf16 bwd alone | TF32 fwd | results | hint |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for variant in (v for v in VARIANTS if v != "default"):
    pairs = [(f"sm90 {variant}", "sm90", "fwd"), (f"sm90 {variant}", "sm90", "fwd+bwd"),
             (f"sm90 bwd alone {variant}", "sm90 bwd alone", "bwd"), (f"sm90 TF32 {variant}", "sm90 TF32", "fwd")]
    ratios = [p50[(a, m)] / p50[(b, m)] if (a, m) in p50 and (b, m) in p50 else None for a, b, m in pairs]
    timed = [r for r in ratios if r is not None]
    ok = variant not in wrong_variants
    hint = "candidate default" if ok and timed and max(timed) < 0.995 else "keep off" if timed else "not timed"
    cells = " | ".join("-" if r is None else f"{r:.3f}" for r in ratios)
    print(f"| {variant} | {cells} | {'ok' if ok else 'WRONG'} | {hint} |")
json.dump({"errors": errs, "rows": [[n, m, t] for n, m, t in bf16_rows + rows_out], "device": torch.cuda.get_device_name()},
          open(f"{out_dir}/timing.json", "w"), indent=1)
if wrong_variants:
    sys.exit(f"WRONG results (relative error > 2e-2 vs float64) in the variants: {', '.join(wrong_variants)}")
EOF
status=$?  # the timing run's (pipefail): a crash there fails the script once the tables are printed

echo
echo "== machine code (sm90 kernels; all kernels in machine_code.txt)"
grep -E "^\| (kernel|sm90_)|^local memory|cuobjdump" "$out/machine_code.txt"
[[ -s $out/ptxas_sm90.txt ]] && { echo "== ptxas (sm90)"; sort "$out/ptxas_sm90.txt" | uniq -c | grep -v Compiling; }
[[ -s $out/ptxas_warnings.txt ]] && { echo "== ptxas warnings"; cat "$out/ptxas_warnings.txt"; }
echo "== timing"; sed -n '/^| bf16/,$p' "$out/timing.log"
((status == 0)) || echo "the timing run failed (exit $status): see $out/timing.log"
exit $status
