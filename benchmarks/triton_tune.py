"""Tuning sweep of the Triton backend's Hopper (TMA, persistent) kernels against cuBLAS, in one run.

    python -m benchmarks.triton_tune [--out DIR] [--budget-s 220] [--quick]   # GPU machine
    python -m benchmarks.triton_tune --compile [--out DIR]                     # no GPU needed

The sweep, at the issue's target shapes (MxKxN: x is M x K, weight N x K):
  bf16, fp16   8192x4096x4096, 8192x4096x16384, 8192x8192x8192
  fp32 tf32    4096x4096x4096 (allow_tf32 on)       fp32 ieee  4096x4096x4096 (allow_tf32 off)
times, in the same process and on the same inputs:
  cublas      torch.mm(x, w.t()) for the forward; mm(x, w.t()) + mm(g, w) + mm(g.t(), x) for fwd+bwd
  portable    the portable Triton kernels (linear_relu.py), autotuned over their large tiles
  tma <cfg>   each Hopper config alone: forward, grad-x, and grad-w+db (each against the cuBLAS
              GEMM it replaces)
  tma auto    the Hopper kernels autotuned over all their configs, forward and fwd+bwd through the
              public op, as users call it
  tma tf32x3  (fp32 ieee only, an experiment) the forward as three TF32 products: near-fp32 error on
              tensor cores; its relative error is printed beside it
Each time is a triton.testing.do_bench median (L2 flushed between runs); the relative error of
each result against float64 on sampled rows/columns is printed beside it; the table goes last.
A time budget skips what would not fit (it says so) so that the table always prints.

--compile compiles every kept Hopper config for sm_90 without a GPU (hopper.compile_for) and
prints shared memory, wgmma and TMA instruction counts, and registers and spills from the cubin.
"""
import argparse
import csv
import os
import re
import sys
import time

import torch
import triton

from benchmarks import machine_code
from twolayer_ops.triton_kernels import hopper
from twolayer_ops.triton_kernels import linear_relu as tk

ops = torch.ops.twolayer_ops
SHAPES_16 = [(8192, 4096, 4096), (8192, 4096, 16384), (8192, 8192, 8192)]
SHAPES_32 = [(4096, 4096, 4096)]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32, "ieee": torch.float32}
# The portable kernels' tiles the sweep autotunes over: the three meant for these large shapes.
PORTABLE_TILES = 3
DEVICE = "cuda"  # a dry run of the sweep's logic sets "cpu" under TRITON_INTERPRET=1


# ---- compile report (no GPU) ---------------------------------------------------------------------

def machine_code_report(cubin):
    """(registers, local memory bytes, LDL/STL in the k-loop) of a compiled kernel, or Nones where
    no cuobjdump is at hand."""
    if machine_code.find_cuobjdump() is None:
        return None, None, None
    (k,) = machine_code.read_cubin(cubin)
    return k.regs, k.stack + k.local, k.hot_loop_local_traffic


def config_name(spec, config):
    kw = config.kwargs
    flags = ("F" if kw["FLATTEN"] else "") + ("S" if kw["EPILOGUE_SPLIT"] else "")
    return f"{kw[spec['rows']]}x{kw[spec['cols']]}x{kw[spec['step']]} w{config.num_warps} s{config.num_stages}" + (
        f" {flags}" if flags else "")


def compile_report(out_dir):
    rows = []
    print(f"triton {triton.__version__}: every kept Hopper config compiled for sm_90 (limit 232448 B of shared memory)")
    print("| kernel | dtype | config (F flatten, S split epilogue) | db | shared B (estimate) | wgmma | TMA ld/st "
          "| regs | local B | LDL/STL in k-loop |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for kernel, spec in hopper.KERNELS.items():
        name = tk.python_function(kernel).__name__.replace("linear_relu_", "").replace("_tma_kernel", "")
        dtypes = [torch.bfloat16, torch.float16] + ([torch.float32] if name == "fwd" else [])
        for dtype in dtypes:
            for db in ([True, False] if name == "dw_db" else [None]):
                for config in hopper.kept_configs(kernel, dtype, compute_db=bool(db)):
                    extra = {} if db is None else {"COMPUTE_DB": db}
                    t0 = time.time()
                    compiled = hopper.compile_for(kernel, config, dtype, **extra)
                    ptx, ttgir = compiled.asm["ptx"], compiled.asm["ttgir"]
                    regs, local, loop_spills = machine_code_report(compiled.asm["cubin"])
                    est = hopper.shared_memory_bytes(spec, config.kwargs, config.num_stages, dtype.itemsize)
                    row = dict(
                        kernel=name, dtype=str(dtype).replace("torch.", ""), config=config_name(spec, config),
                        db="" if db is None else str(db), shared=compiled.metadata.shared, estimate=est,
                        wgmma=len(re.findall(r"wgmma\.mma_async", ptx)),
                        warp_group_dot="warp_group_dot" in ttgir,
                        tma_load=len(re.findall(r"cp\.async\.bulk\.tensor\.\dd\.shared[:a-z]*\.global", ptx)),
                        tma_store=len(re.findall(r"cp\.async\.bulk\.tensor\.\dd\.global\.shared", ptx)),
                        mma_sync=len(re.findall(r"\bmma\.sync", ptx)), regs=regs, local=local, loop_spills=loop_spills,
                        seconds=round(time.time() - t0, 1),
                    )
                    rows.append(row)
                    print(f"| {row['kernel']} | {row['dtype']} | {row['config']} | {row['db']} | {row['shared']} ({est}) | "
                          f"{row['wgmma']}{'' if row['warp_group_dot'] else ' (no warp_group_dot)'} | "
                          f"{row['tma_load']}/{row['tma_store']} | {regs} | {local} | {loop_spills} |", flush=True)
    if out_dir:
        write_csv(os.path.join(out_dir, f"compile_sm90_triton{triton.__version__}.csv"), rows)
    bad = [r for r in rows
           if r["shared"] > 232448 or not r["wgmma"] or not r["tma_load"] or not r["tma_store"] or r["mma_sync"]]
    print(f"{len(rows)} configs compiled; {len(bad)} without wgmma, TMA loads and stores, or over the limit")
    return not bad


def write_csv(path, rows):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# ---- the GPU sweep --------------------------------------------------------------------------------

def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3  # microseconds


def rel(got, want):
    got, want = got.double(), want.double()
    return ((got - want).norm() / want.norm()).item()


class Sweep:
    def __init__(self, budget_s):
        self.rows, self.deadline, self.skipped = [], time.time() + budget_s, []

    def left(self):
        return self.deadline - time.time()

    def add(self, case, impl, config, mode, us, base_us, flops, err):
        row = dict(case=case, impl=impl, config=config, mode=mode, us=round(us, 1),
                   ratio=round(us / base_us, 3) if base_us else "", tflops=round(flops / us / 1e6, 1),
                   rel_err=f"{err:.2e}" if err is not None else "")
        self.rows.append(row)
        print(f"  {impl:10s} {config:28s} {mode:6s} {us:9.1f} us  x{row['ratio']}  {row['tflops']} TFLOP/s  "
              f"err {row['rel_err']}", flush=True)


def run_case(sweep, label, shape, configs_per_kernel):
    M, K, N = shape
    dtype = DTYPES[label]
    case = f"{label} {M}x{K}x{N}"
    print(f"== {case} ({sweep.left():.0f} s left)", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = label == "tf32"
    precision = tk.input_precision(torch.empty(0, dtype=dtype, device=DEVICE))
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(M, K, device=DEVICE, generator=gen).to(dtype)
    w = (torch.randn(N, K, device=DEVICE, generator=gen) / K**0.5).to(dtype)
    b = torch.randn(N, device=DEVICE, generator=gen).to(dtype)
    g = torch.randn(M, N, device=DEVICE, generator=gen).to(dtype)
    # float64 references on 512 sampled rows of out/dx and 512 sampled rows of dw/db.
    rows = torch.cat([torch.arange(256), torch.arange(M - 256, M)]).to(DEVICE)
    nrows = torch.cat([torch.arange(256), torch.arange(N - 256, N)]).to(DEVICE)
    x64, w64 = x.double(), w.double()
    ref_out = torch.relu(x64[rows] @ w64.t() + b.double())

    def ref_grads(out):
        gm = torch.where(out <= 0, 0, g).double()
        return gm[rows] @ w64, gm[:, nrows].t() @ x64, gm[:, nrows].sum(0)

    f_fwd, f_all = 2 * M * N * K, 6 * M * N * K
    mm_fwd = bench(lambda: torch.mm(x, w.t()))
    mm_dx = bench(lambda: torch.mm(g, w))
    mm_dw = bench(lambda: torch.mm(g.t(), x))
    mm_all = bench(lambda: (torch.mm(x, w.t()), torch.mm(g, w), torch.mm(g.t(), x)))
    sweep.add(case, "cublas", "mm", "fwd", mm_fwd, mm_fwd, f_fwd, None)
    sweep.add(case, "cublas", "mm g@w", "dx", mm_dx, mm_dx, f_fwd, None)
    sweep.add(case, "cublas", "mm g^T@x", "dw", mm_dw, mm_dw, f_fwd, None)
    sweep.add(case, "cublas", "3 mm", "fwdbwd", mm_all, mm_all, f_all, None)

    def fwdbwd():
        out = ops.linear_relu_triton(x, w, b)
        return ops.linear_relu_backward_triton(g, out, x, w, [True, True, True])

    def check_all(out):
        dx, dw, db = ops.linear_relu_backward_triton(g, out, x, w, [True, True, True])
        rdx, rdw, rdb = ref_grads(out)
        return max(rel(out[rows], ref_out), rel(dx[rows], rdx), rel(dw[nrows], rdw), rel(db[nrows], rdb))

    # The portable kernels, autotuned over their large tiles.
    hopper.ENABLED = False
    portable = [tk.linear_relu_fwd_kernel, tk.linear_relu_dx_kernel, tk.linear_relu_dw_db_kernel]
    saved = {k: k.configs for k in portable}
    try:
        for k in portable:
            k.configs = k.configs[:PORTABLE_TILES]
        out = ops.linear_relu_triton(x, w, b)
        sweep.add(case, "portable", "autotuned", "fwd", bench(lambda: ops.linear_relu_triton(x, w, b)), mm_fwd, f_fwd,
                  rel(out[rows], ref_out))
        if sweep.left() > 30:
            sweep.add(case, "portable", "autotuned", "fwdbwd", bench(fwdbwd), mm_all, f_all, check_all(out))
    finally:
        for k, c in saved.items():
            k.configs = c

    hopper.ENABLED = hopper.BACKWARD = True  # the autotuned fwdbwd row then times (and checks) the TMA backward
    if label == "ieee":  # not eligible: an experiment with 3xTF32 products on the forward kernel
        kernel = hopper.linear_relu_fwd_tma_kernel
        for config in hopper.kept_configs(kernel, dtype)[:configs_per_kernel]:
            saved_configs, kernel.configs = kernel.configs, [config]
            try:
                out = torch.empty(M, N, dtype=dtype, device=DEVICE)
                run = lambda: hopper.forward(x, w, b, out, "tf32x3")  # noqa: E731
                run()  # (3 dots a step: 128x256 tiles need 245792 B of shared memory with triton 3.8)
                sweep.add(case, "tma tf32x3", config_name(hopper.FWD, config), "fwd", bench(run), mm_fwd, f_fwd,
                          rel(out[rows], ref_out))
            except Exception as e:
                print(f"  tma tf32x3 {config_name(hopper.FWD, config)}: {type(e).__name__}: {str(e)[:200]}", flush=True)
            finally:
                kernel.configs = saved_configs
        return

    # Each Hopper config alone, kernel by kernel, against the cuBLAS GEMM it replaces.
    out_ref = ops.linear_relu_triton(x, w, b)  # any correct output: the backward's mask
    gm = torch.where(out_ref <= 0, 0, g)  # the backward kernels take the masked gradient
    rdx, rdw, rdb = ref_grads(out_ref)
    per_kernel = [(hopper.linear_relu_fwd_tma_kernel, "fwd", mm_fwd)]
    if dtype != torch.float32:
        per_kernel += [(hopper.linear_relu_dx_tma_kernel, "dx", mm_dx),
                       (hopper.linear_relu_dw_db_tma_kernel, "dw+db", mm_dw)]
    for kernel, mode, base in per_kernel:
        spec = hopper.KERNELS[kernel]
        limit = hopper.device_limits(torch.cuda.current_device() if DEVICE == "cuda" else 0)[0]
        kept = hopper.kept_configs(kernel, dtype, limit, compute_db=mode == "dw+db")
        for config in kept[:configs_per_kernel]:
            if sweep.left() < 20:
                sweep.skipped.append(f"{case} {mode} {config_name(spec, config)}")
                continue
            saved_configs, kernel.configs = kernel.configs, [config]
            try:
                if mode == "fwd":
                    out = torch.empty(M, N, dtype=dtype, device=DEVICE)
                    run = lambda: hopper.forward(x, w, b, out, precision)  # noqa: E731
                    run()
                    err = rel(out[rows], ref_out)
                elif mode == "dx":
                    dx = torch.empty(M, K, dtype=dtype, device=DEVICE)
                    run = lambda: hopper.grad_x(gm, w, dx, precision)  # noqa: E731
                    run()
                    err = rel(dx[rows], rdx)
                else:
                    dw, db = torch.empty(N, K, dtype=dtype, device=DEVICE), torch.empty(N, dtype=dtype, device=DEVICE)
                    run = lambda: hopper.grad_weight_bias(gm, x, dw, db, precision)  # noqa: E731
                    run()
                    err = max(rel(dw[nrows], rdw), rel(db[nrows], rdb))
                sweep.add(case, "tma", config_name(spec, config), mode, bench(run), base, f_fwd, err)
            except Exception as e:  # a config that fails to compile or launch is a finding, not a crash
                print(f"  tma {config_name(spec, config)} {mode}: {type(e).__name__}: {str(e)[:200]}", flush=True)
            finally:
                kernel.configs = saved_configs

    # Autotuned over every config, through the public op.
    if sweep.left() < 30:
        sweep.skipped.append(f"{case} tma autotuned")
        return
    out = ops.linear_relu_triton(x, w, b)
    sweep.add(case, "tma", "autotuned", "fwd", bench(lambda: ops.linear_relu_triton(x, w, b)), mm_fwd, f_fwd,
              rel(out[rows], ref_out))
    if dtype != torch.float32:
        sweep.add(case, "tma", "autotuned", "fwdbwd", bench(fwdbwd), mm_all, f_all, check_all(out))


def report(sweep, seconds):
    """The table: cuBLAS rows, the best config of each implementation and mode, the autotuned rows."""
    print(f"\n{seconds:.0f} s; ratio = time / cuBLAS time for the same work (fwd: mm; dx, dw: its mm; "
          "fwdbwd: 3 mm); err = relative error against float64 on sampled rows")
    if sweep.skipped:
        print("skipped for time: " + "; ".join(sweep.skipped))
    best = {}
    for r in sweep.rows:
        if r["impl"] != "cublas":
            k = (r["case"], r["impl"].split()[0], r["mode"])
            if k not in best or r["us"] < best[k]["us"]:
                best[k] = r
    print("| case | impl | config | mode | us | x cuBLAS | TFLOP/s | rel err |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in sweep.rows:
        shown = r["impl"] == "cublas" or r["config"] == "autotuned"
        if shown or best.get((r["case"], r["impl"].split()[0], r["mode"])) is r:
            print(f"| {r['case']} | {r['impl']} | {r['config']} | {r['mode']} | {r['us']} | {r['ratio']} "
                  f"| {r['tflops']} | {r['rel_err']} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compile", action="store_true", help="compile report for sm_90; no GPU needed")
    parser.add_argument("--out", help="folder for the CSV")
    parser.add_argument("--budget-s", type=float, default=220, help="stop starting new measurements after this")
    parser.add_argument("--quick", action="store_true", help="bf16 and fp32 only, two configs per kernel")
    args = parser.parse_args()
    if args.compile:
        sys.exit(0 if compile_report(args.out) else 1)
    if not (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9 and hopper.HAS_TMA_API):
        sys.exit("needs a CUDA GPU of capability >= 9 and a triton with tensor descriptors")

    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}, triton {triton.__version__}")
    sweep = Sweep(args.budget_s)
    cases = [("bf16", s) for s in SHAPES_16]
    if not args.quick:
        cases += [("fp16", s) for s in SHAPES_16]
    cases += [("tf32", s) for s in SHAPES_32] + [("ieee", s) for s in SHAPES_32]
    per_kernel = 2 if args.quick else 8
    t0 = time.time()
    for label, shape in cases:
        if sweep.left() < 25:
            sweep.skipped.append(f"{label} {shape}")
            continue
        run_case(sweep, label, shape, per_kernel)
        torch.cuda.empty_cache()
    if args.out:
        write_csv(os.path.join(args.out, "triton_tune.csv"), sweep.rows)

    report(sweep, time.time() - t0)


if __name__ == "__main__":
    main()
