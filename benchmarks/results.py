"""Benchmark rows: one record per measured metric, written as CSV, markdown tables and plots."""
import csv
import datetime
import platform
from dataclasses import asdict, dataclass

import torch

CSV_COLUMNS = ["op", "provider", "mode", "shape", "dtype", "metric", "unit", "p50", "p20", "p80",
               "device", "torch", "triton", "cuda", "tf32", "date"]


@dataclass
class Row:
    op: str
    provider: str
    mode: str
    shape: str
    dtype: str
    metric: str
    unit: str
    p50: float
    p20: float = None
    p80: float = None
    tf32: bool = False


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{cpu_model()}, {torch.get_num_threads()} threads, {cpu_kernels()} kernels"


def cpu_model():
    """The CPU's model name (/proc/cpuinfo on Linux), else the architecture: runs on different
    machines compare only when they say which."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} CPU"


def cpu_kernels():
    """The vector ISA of the native CPU GEMM kernels in use ("BLAS" where none is)."""
    from twolayer_ops.ops import cpu_isa

    in_use = cpu_isa()[0]
    return "BLAS" if in_use == "none" else in_use


def environment(device):
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    return {"device": device_name(device), "torch": torch.__version__, "triton": triton_version,
            "cuda": torch.version.cuda or "", "date": datetime.date.today().isoformat()}


def write_csv(rows, path, device, append=False):
    env = environment(device)
    with open(path, "a" if append else "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        if not append or f.tell() == 0:
            writer.writeheader()
        for r in rows:
            writer.writerow({**env, **asdict(r)})


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def pivot(rows, metric_names):
    """{(op, shape, dtype, mode, provider): {metric: row}} in first-seen order."""
    table = {}
    for r in rows:
        if r.metric in metric_names:
            table.setdefault((r.op, r.shape, r.dtype, r.mode, r.provider), {})[r.metric] = r
    return table


def print_markdown(rows, file=None):
    """One line per (shape, dtype, mode, provider): time with its p20-p80 spread, TFLOP/s, time
    over torch.mm's (1.00 = the GEMM ceiling), speedup over eager, memory."""
    metrics = ("time", "tflops", "time_over_mm", "speedup_vs_eager", "saved_for_backward", "peak_memory", "warmup")
    print("| shape MxKxN | dtype | mode | provider | p50 us | p20-p80 us | TFLOP/s | x mm | vs eager | saved MB | peak MB | warmup ms |", file=file)
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|", file=file)
    for (_, shape, dtype, mode, provider), m in pivot(rows, metrics).items():
        t = m["time"]
        get = lambda name, spec: _fmt(m[name].p50, spec) if name in m else ""  # noqa: E731
        print(
            f"| {shape} | {dtype} | {mode} | {provider} | {t.p50:.1f} | {_fmt(t.p20, '.1f')}-{_fmt(t.p80, '.1f')} | "
            f"{get('tflops', '.3g')} | {get('time_over_mm', '.2f')} | {get('speedup_vs_eager', '.2f')} | "
            f"{get('saved_for_backward', '.3g')} | {get('peak_memory', '.3g')} | {get('warmup', '.0f')} |",
            file=file,
        )


def plot_tflops(rows, path, title):
    """TFLOP/s by shape, one line per provider, one panel per (dtype, mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [r for r in rows if r.metric == "tflops"]
    panels = list(dict.fromkeys((r.dtype, r.mode) for r in data))
    cols = min(3, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.6 * nrows), squeeze=False)
    for ax, (dtype, mode) in zip(axes.flat, panels):
        sub = [r for r in data if (r.dtype, r.mode) == (dtype, mode)]
        shapes = list(dict.fromkeys(r.shape for r in sub))
        for provider in dict.fromkeys(r.provider for r in sub):
            pts = {r.shape: r.p50 for r in sub if r.provider == provider}
            ax.plot([shapes.index(s) for s in pts], list(pts.values()), marker="o", label=provider)
        ax.set_xticks(range(len(shapes)), shapes, rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{dtype} {mode}", fontsize=9)
        ax.set_ylabel("TFLOP/s")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_trainers(rows, path, title):
    """Wall time per recipe, one bar per provider (the seed's own program first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [r for r in rows if r.metric == "time" and r.op == "train"]
    recipes = list(dict.fromkeys(r.shape for r in data))
    providers = list(dict.fromkeys(r.provider for r in data))
    width = 0.8 / len(providers)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(recipes)), 3.8))
    for i, provider in enumerate(providers):
        ms = {r.shape: r.p50 for r in data if r.provider == provider}
        ax.bar([recipes.index(s) + i * width for s in ms], list(ms.values()), width, label=provider)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(recipes))], recipes, rotation=20, fontsize=8)
    ax.set_ylabel("ms for the whole run")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

