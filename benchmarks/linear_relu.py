"""Microbenchmark of the fused op against PyTorch, every provider timed in the same run.

    python -m benchmarks.linear_relu                       # CPU: the seed layer and 1024^3, float32
    python -m benchmarks.linear_relu --device cuda --dtype bfloat16 --shapes 8192x4096x4096

Shapes are MxKxN (x is M x K, weight N x K). Each row reports the median time and its ratio to
eager relu(F.linear(...)) measured in the same process; > 1 means faster than eager.
GPU times are triton.testing.do_bench medians (p20/p80 alongside); CPU times are
torch.utils.benchmark medians. Warm-up runs are excluded.
"""
import argparse
import csv
import datetime
import platform
import sys

import torch
from tqdm import tqdm

import twolayer_ops
from tests.reference import linear_relu_ref

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEFAULT_SHAPES = {"cpu": "64x1000x100,1024x1024x1024", "cuda": "64x1000x100,8192x4096x4096,4096x4096x4096"}


def providers(device):
    """name -> f(x, w, b). "eager" is the reference every ratio is taken against."""
    found = {"eager": linear_relu_ref}
    for backend in twolayer_ops.available_backends(device):
        if backend != "torch":
            found[backend] = lambda x, w, b, backend=backend: twolayer_ops.linear_relu(x, w, b, backend=backend)
    return found


def make_inputs(m, k, n, dtype, device, requires_grad):
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(m, k, generator=g).to(device, dtype)
    w = (torch.randn(n, k, generator=g) / k**0.5).to(device, dtype)
    b = torch.randn(n, generator=g).to(device, dtype)
    for t in (x, w, b):
        t.requires_grad_(requires_grad)
    return x, w, b, torch.randn(m, n, generator=g).to(device, dtype)


def workload(fn, mode, x, w, b, grad):
    if mode == "fwd":
        return lambda: fn(x, w, b)
    return lambda: torch.autograd.grad(fn(x, w, b), (x, w, b), grad)


def time_us(run, device):
    """(p50, p20, p80) in microseconds."""
    if device == "cuda":
        import triton.testing

        p50, p20, p80 = triton.testing.do_bench(run, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
        return p50 * 1e3, p20 * 1e3, p80 * 1e3
    import torch.utils.benchmark as benchmark

    m = benchmark.Timer(stmt="run()", globals={"run": run}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=0.5
    )
    times = sorted(m.times)
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]  # noqa: E731
    return m.median * 1e6, pick(0.2) * 1e6, pick(0.8) * 1e6


def flops(m, k, n, mode):
    return 2 * m * k * n * (1 if mode == "fwd" else 3)


def run(args):
    device = args.device
    dtype = DTYPES[args.dtype]
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    found = providers(device)
    chosen = [p for p in args.providers.split(",")] if args.providers else list(found)
    unknown = [p for p in chosen if p not in found]
    if unknown:
        sys.exit(f"provider(s) {', '.join(unknown)} not available on {device}; available: {', '.join(found)}")
    if "eager" not in chosen:
        chosen.insert(0, "eager")
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    jobs = [(s, mode, p) for s in shapes for mode in args.modes.split(",") for p in chosen]
    rows = []
    for (m, k, n), mode, name in tqdm(jobs, desc="benchmark", unit="case", file=sys.stderr):
        x, w, b, grad = make_inputs(m, k, n, dtype, device, requires_grad=(mode != "fwd"))
        p50, p20, p80 = time_us(workload(found[name], mode, x, w, b, grad), device)
        rows.append(
            {"shape": f"{m}x{k}x{n}", "mode": mode, "provider": name, "dtype": args.dtype, "p50_us": p50,
             "p20_us": p20, "p80_us": p80, "tflops": flops(m, k, n, mode) / p50 / 1e6}
        )
    eager = {(r["shape"], r["mode"]): r["p50_us"] for r in rows if r["provider"] == "eager"}
    for r in rows:
        r["speedup_vs_eager"] = eager[(r["shape"], r["mode"])] / r["p50_us"]
    return rows


def device_name(device):
    return torch.cuda.get_device_name() if device == "cuda" else f"{platform.processor() or platform.machine()} CPU x{torch.get_num_threads()} threads"


def print_table(rows, device):
    print(f"\n{device_name(device)}, torch {torch.__version__}, {datetime.date.today()}\n")
    print("| shape MxKxN | mode | provider | dtype | p50 us | TFLOP/s | speedup vs eager |")
    print("|---|---|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['shape']} | {r['mode']} | {r['provider']} | {r['dtype']} | {r['p50_us']:.1f} | "
            f"{r['tflops']:.3f} | {r['speedup_vs_eager']:.2f}x |"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--tf32", action="store_true", help="allow TF32 for float32 matmuls (CUDA)")
    parser.add_argument("--shapes", help="comma-separated MxKxN (default depends on the device)")
    parser.add_argument("--modes", default="fwd,fwdbwd")
    parser.add_argument("--providers", help="comma-separated subset (default: all available)")
    parser.add_argument("--csv", help="also write the rows to this CSV file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    args.shapes = args.shapes or DEFAULT_SHAPES[args.device]
    rows = run(args)
    print_table(rows, args.device)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) + ["device"])
            writer.writeheader()
            writer.writerows({**r, "device": device_name(args.device)} for r in rows)


if __name__ == "__main__":
    main()
