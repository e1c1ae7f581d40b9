"""Microbenchmark of the fused op against what a user would run instead, all in one run.

    python -m benchmarks.linear_relu                                  # CPU: fp32, seed sizes and 1024^3
    python -m benchmarks.linear_relu --device cuda --dtypes bfloat16 --shapes 8192x4096x4096
    python -m benchmarks.linear_relu --device cuda --cases "tf32:4096x4096x4096;bfloat16:8192x4096x4096+8192x8192x8192"

Providers: native, triton (the backends); eager relu(F.linear(...)) (the reference every speedup
is taken against); addmm_act (torch._addmm_activation, the cuBLASLt ReLU epilogue: CUDA, forward
only); compile (torch.compile of eager); mm (plain torch.mm: one GEMM forward, two backward,
three for both: the ceiling a fused kernel should reach). Asked for by name only: native_nobias,
triton_nobias, eager_nobias (the same without the bias: what the bias term costs, in the same
run). Shapes are MxKxN (x is M x K, weight N x K). Modes: fwd, bwd (the backward alone, after
one untimed forward), fwdbwd.

GPU times are triton.testing.do_bench medians with p20/p80, and the inputs rotate through enough
copies to spill L2 when one set would fit; CPU times are torch.utils.benchmark medians over 5
rounds that interleave the providers. The first call (autotuning, compilation) is timed apart and
reported as the "warmup" metric.

--cuda-graph captures each provider's steps over all its input sets in one CUDA graph and reports a
replay's time per step: PyTorch's CUDA-graph path, the GPU's time without the host's launch cost
(modes fwd+graph, bwd+graph, fwdbwd+graph; ratios against the same run's graphed mm and eager).
"""
import argparse
import itertools
import math
import sys
import time

import torch
from tqdm import tqdm

import twolayer_ops
from tests.reference import linear_relu_ref

from .results import Row, device_name, print_markdown, write_csv

DTYPES = {"float32": torch.float32, "tf32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODES = ("fwd", "bwd", "fwdbwd")
CPU_ROUNDS = 5  # interleaved timing rounds per case on the CPU
GPU_SHAPES = "64x1000x100,64x100x10,1024x1024x1024,4096x4096x4096,8192x4096x4096,8192x4096x16384,8192x8192x8192"
DEFAULTS = {
    "cpu": {"shapes": "64x1000x100,64x100x10,1024x1024x1024", "dtypes": "float32"},
    "cuda": {"shapes": GPU_SHAPES, "dtypes": "float32,tf32,bfloat16,float16"},
}
# The GPU report's cases: the seed layers, the fp32 and TF32 square GEMM, the LLM-MLP sizes in 16 bits.
GPU_REPORT_CASES = (
    "float32:64x1000x100+64x100x10+4096x4096x4096;tf32:4096x4096x4096;"
    "bfloat16:8192x4096x4096+8192x4096x16384+8192x8192x8192;float16:8192x4096x4096"
)
# Timed again from CUDA graphs in the GPU report: the seed's layers, where the host's launch cost hides the GPU's.
GPU_GRAPH_CASES = "float32:64x1000x100+64x100x10"


def _mm_ceiling(mode):
    """The GEMMs of each mode, with nothing else: torch.mm (cuBLAS / BLAS)."""
    if mode == "fwd":
        return lambda x, w, b, g: torch.mm(x, w.t())
    if mode == "bwd":
        return lambda x, w, b, g: (torch.mm(g, w), torch.mm(g.t(), x))
    return lambda x, w, b, g: (torch.mm(x, w.t()), torch.mm(g, w), torch.mm(g.t(), x))


def providers(device, names=None):
    """name -> f(x, w, b) for the differentiable providers; "mm" and "addmm_act" are handled apart."""
    found = {"eager": linear_relu_ref}
    for backend in twolayer_ops.available_backends(device):
        if backend != "torch" and (device == "cuda" or backend != "triton"):  # interpreted triton is no timing path
            found[backend] = lambda x, w, b, backend=backend: twolayer_ops.linear_relu(x, w, b, backend=backend)
    if names and "triton" in names and "triton" not in found and "triton" in twolayer_ops.available_backends(device):
        found["triton"] = lambda x, w, b: twolayer_ops.linear_relu(x, w, b, backend="triton")
    found["compile"] = torch.compile(linear_relu_ref, dynamic=False)
    for name in names or ():  # "<provider>_nobias": that provider with bias None (its gradient then None too)
        base = name.removesuffix("_nobias")
        if name != base and found.get(base) is not None:
            found[name] = lambda x, w, b, fn=found[base]: fn(x, w, None)
    if device == "cuda":
        found["addmm_act"] = lambda x, w, b: torch._addmm_activation(b, x, w.t(), use_gelu=False)
    found["mm"] = None
    return found


def make_sets(m, k, n, dtype, device, requires_grad, copies):
    """`copies` input sets (x, w, b, grad_out), drawn on the device itself (fast for large shapes)."""
    g = torch.Generator(device=device).manual_seed(0)
    sets = []
    for _ in range(copies):
        x = torch.randn(m, k, generator=g, device=device).to(dtype).requires_grad_(requires_grad)
        w = (torch.randn(n, k, generator=g, device=device) / math.sqrt(max(k, 1))).to(dtype).requires_grad_(requires_grad)
        b = torch.randn(n, generator=g, device=device).to(dtype).requires_grad_(requires_grad)
        sets.append((x, w, b, torch.randn(m, n, generator=g, device=device).to(dtype)))
    return sets


def copies_to_spill_l2(m, k, n, dtype, device):
    if device != "cuda":
        return 1
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    bytes_per_set = (m * k + n * k + n + 2 * m * n) * torch.empty(0, dtype=dtype).element_size()
    return 1 if bytes_per_set > l2 else min(64, math.ceil(2 * l2 / bytes_per_set))


def workload(name, fn, mode, sets):
    """A zero-argument callable doing one `mode` step, taking the next input set each call."""
    if name == "mm":
        gemms = _mm_ceiling(mode)
        cycle = itertools.cycle(sets)
        return lambda: gemms(*next(cycle))
    if mode == "fwd":
        cycle = itertools.cycle(sets)

        def fwd():
            x, w, b, _ = next(cycle)
            return fn(x, w, b)

        return fwd
    if mode == "fwdbwd":
        cycle = itertools.cycle(sets)

        def fwdbwd():
            x, w, b, g = next(cycle)
            return torch.autograd.grad(fn(x, w, b), (x, w, b), g, allow_unused=True)  # b: unused by *_nobias

        return fwdbwd
    graphs = itertools.cycle([(fn(x, w, b), (x, w, b), g) for x, w, b, g in sets])  # forward outside the timing
    return lambda: torch.autograd.grad(*next(graphs), retain_graph=True, allow_unused=True)


def graphed(run, calls):
    """`calls` steps of run() (each takes the next input set) captured back to back in one CUDA graph,
    after three warmup calls on a side stream as torch.cuda.graphs asks. Returns the graph's replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            run()
    return graph.replay


def time_us(runs, device):
    """{provider: (p50, p20, p80)} in microseconds for {provider: zero-argument callable}.

    On the CPU the providers are timed in interleaved rounds and the quantiles taken over all
    rounds, so that the drift of a shared machine's speed (15-40% over seconds) falls on every
    provider alike instead of on whichever ran during a slow spell."""
    if device == "cuda":
        import triton.testing

        return {name: tuple(t * 1e3 for t in triton.testing.do_bench(run, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8]))
                for name, run in runs.items()}
    import torch.utils.benchmark as benchmark

    times = {name: [] for name in runs}
    for _ in range(CPU_ROUNDS):
        for name, run in runs.items():
            timer = benchmark.Timer(stmt="run()", globals={"run": run}, num_threads=torch.get_num_threads())
            times[name] += timer.blocked_autorange(min_run_time=0.1).times
    quantiles = {}
    for name, ts in times.items():
        ts.sort()
        quantiles[name] = tuple(ts[min(len(ts) - 1, int(q * len(ts)))] * 1e6 for q in (0.5, 0.2, 0.8))
    return quantiles


def saved_bytes(fn, x, w, b):
    """Bytes autograd keeps for backward across one forward (inputs that are saved count too)."""
    total = []

    def pack(t):
        total.append(t.untyped_storage().nbytes() if t.numel() else 0)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x, w, b)
    return sum(total)


def peak_bytes(run, device):
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def flops(m, k, n, mode):
    return 2 * m * k * n * {"fwd": 1, "bwd": 2, "fwdbwd": 3}[mode]


def applicable(name, mode, device):
    return not (name == "addmm_act" and mode != "fwd")


def run(device, cases, modes, provider_names=None, progress=True, cuda_graph=False):
    """cases: [((M, K, N), dtype name)]; every provider, every mode, in one process. cuda_graph (CUDA
    only): each provider's steps replayed from a CUDA graph (graphed()); the rows' modes read fwd+graph, ..."""
    if cuda_graph and device != "cuda":
        raise ValueError("cuda_graph needs device='cuda'")
    found = providers(device, provider_names)
    names = provider_names or list(found)
    unknown = [p for p in names if p not in found]
    if unknown:
        raise SystemExit(f"provider(s) {', '.join(unknown)} not available on {device}; available: {', '.join(found)}")
    names = list(dict.fromkeys(["eager", "mm", *names]))  # the two references of every ratio
    groups = [(s, dt, mode) for s, dt in cases for mode in modes]
    rows = []
    cache = {}  # the input sets of the current shape and dtype, shared by its providers and modes
    for (m, k, n), dt_name, mode in tqdm(groups, desc="linear_relu", unit="case", file=sys.stderr, disable=not progress):
        dtype = DTYPES[dt_name]
        torch.backends.cuda.matmul.allow_tf32 = dt_name == "tf32"
        key = (m, k, n, dtype, mode != "fwd")
        if key not in cache:
            cache = {k_: v for k_, v in cache.items() if k_[:4] == key[:4]}  # drop other shapes' sets
            cache[key] = make_sets(m, k, n, dtype, device, mode != "fwd", copies_to_spill_l2(m, k, n, dtype, device))
        sets = cache[key]
        runs, warm_ms = {}, {}
        for name in [p for p in names if applicable(p, mode, device)]:
            runs[name] = workload(name, found[name], mode, sets)
            start = time.perf_counter()
            runs[name]()  # autotuning / compilation / lazy init: timed apart
            if device == "cuda":
                torch.cuda.synchronize()
            warm_ms[name] = (time.perf_counter() - start) * 1e3
            if cuda_graph:
                try:
                    runs[name] = graphed(runs[name], len(sets))
                except RuntimeError as err:  # a provider that cannot be captured is a finding, not the end of the run
                    tqdm.write(f"{m}x{k}x{n} {dt_name} {mode}: {name} cannot be captured in a CUDA graph: {err}",
                               file=sys.stderr)
                    del runs[name]
                    torch.cuda.synchronize()
        timed = time_us(runs, device)
        if cuda_graph:  # a replay runs one step per input set
            timed = {name: tuple(t / len(sets) for t in times) for name, times in timed.items()}
        label = f"{mode}+graph" if cuda_graph else mode
        if progress:  # each case as it ends, so a run cut short still reports what it measured
            mm_us = timed["mm"][0]
            tqdm.write(f"{m}x{k}x{n} {dt_name} {label}: " + ", ".join(
                f"{name} {t[0]:.1f} us ({t[0] / mm_us:.3f}x mm)" for name, t in timed.items()), file=sys.stderr)
        for name, (p50, p20, p80) in timed.items():
            key = dict(op="linear_relu", provider=name, mode=label, shape=f"{m}x{k}x{n}", dtype=dt_name, tf32=dt_name == "tf32")
            rows.append(Row(**key, metric="time", unit="us", p50=p50, p20=p20, p80=p80))
            rows.append(Row(**key, metric="tflops", unit="TFLOP/s", p50=flops(m, k, n, mode) / p50 / 1e6))
            rows.append(Row(**key, metric="warmup", unit="ms", p50=warm_ms[name]))
            if mode == "fwd" and name not in ("mm", "addmm_act"):
                x, w, b, _ = sets[0]
                with torch.enable_grad():
                    xs = [t.detach().requires_grad_() for t in (x, w, b)]
                    rows.append(Row(**key, metric="saved_for_backward", unit="MB", p50=saved_bytes(found[name], *xs) / 2**20))
            peak = None if cuda_graph else peak_bytes(runs[name], device)  # a replay allocates nothing
            if peak is not None:
                rows.append(Row(**key, metric="peak_memory", unit="MB", p50=peak / 2**20))
        del runs
    add_ratios(rows)
    return rows


def add_ratios(rows):
    """time over the same run's torch.mm time (1.00: as fast as the GEMMs alone) and speedup over eager."""
    times = {(r.shape, r.dtype, r.mode, r.provider): r.p50 for r in rows if r.metric == "time"}
    for r in [r for r in rows if r.metric == "time"]:
        key = dict(op=r.op, provider=r.provider, mode=r.mode, shape=r.shape, dtype=r.dtype, tf32=r.tf32)
        mm = times.get((r.shape, r.dtype, r.mode, "mm"))
        eager = times.get((r.shape, r.dtype, r.mode, "eager"))
        if mm:
            rows.append(Row(**key, metric="time_over_mm", unit="x", p50=r.p50 / mm))
        if eager:
            rows.append(Row(**key, metric="speedup_vs_eager", unit="x", p50=eager / r.p50))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--shapes", help="comma-separated MxKxN (default depends on the device)")
    parser.add_argument("--dtypes", help="comma-separated from float32, tf32, bfloat16, float16")
    parser.add_argument("--cases", help='dtype:shape+shape;dtype:... pairs instead of --shapes x --dtypes')
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--providers", help="comma-separated subset (default: all available)")
    parser.add_argument("--csv", help="write the rows to this CSV file")
    parser.add_argument("--cuda-graph", action="store_true", help="time each provider's step replayed from CUDA graphs")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    if args.cuda_graph and args.device != "cuda":
        parser.error("--cuda-graph needs --device cuda")
    d = DEFAULTS[args.device]
    shape = lambda s: tuple(int(v) for v in s.split("x"))  # noqa: E731
    try:
        if args.cases:
            args.cases = [(shape(s), dt) for group in args.cases.split(";") for dt, shapes in [group.split(":")]
                          for s in shapes.split("+")]
        else:
            dtypes = (args.dtypes or d["dtypes"]).split(",")
            args.cases = [(shape(s), dt) for dt in dtypes for s in (args.shapes or d["shapes"]).split(",")]
    except ValueError:
        parser.error("shapes are MxKxN, cases dtype:MxKxN+MxKxN;dtype:...")
    args.modes = args.modes.split(",")
    args.providers = args.providers.split(",") if args.providers else None
    bad = [dt for _, dt in args.cases if dt not in DTYPES] + [m for m in args.modes if m not in MODES]
    if bad or any(len(s) != 3 for s, _ in args.cases):
        parser.error(f"bad dtypes, modes or shapes: {', '.join(bad) or args.cases}")
    if args.device == "cpu" and any(dt != "float32" for _, dt in args.cases):
        parser.error("the CPU run measures float32 (the native CPU kernels' fast dtype)")
    return args


def main(argv=None):
    args = parse_args(argv)
    rows = run(args.device, args.cases, args.modes, args.providers, cuda_graph=args.cuda_graph)
    print(f"\n{device_name(args.device)}\n")
    print_markdown(rows)
    if args.csv:
        write_csv(rows, args.csv, args.device)


if __name__ == "__main__":
    main()
