"""The performance report: kernel microbenchmarks, trainer benchmarks and the fused-step benchmark
in one run, written as CSV, markdown and PNG plots, and optionally into docs/PERFORMANCE.md.

    python -m benchmarks.report --device cpu --out out/bench-cpu --docs
    python -m benchmarks.report --device cuda --out out/bench-gpu --docs
"""
import argparse
import datetime
import io
import os
import re
import shutil

import torch

from . import fused_step_bench, linear_relu, trainers
from .results import device_name, plot_tflops, plot_trainers, print_markdown, write_csv

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def section(device, kernel_rows, trainer_rows, fused_step, plots, command):
    out = io.StringIO()
    when = datetime.date.today().isoformat()
    print(f"## {device_name(device)}, {when}\n", file=out)
    print(f"torch {torch.__version__}. Reproduce: `{command}`\n", file=out)
    print("### Kernels\n", file=out)
    print("`x mm` is the time over the same run's torch.mm time for the same GEMMs (1.00: as fast as PyTorch's GEMMs alone; below 1.00: faster than them);", file=out)
    print("`vs eager` is the speedup over eager `relu(F.linear(...))`, > 1 is faster.\n", file=out)
    print_markdown(kernel_rows, file=out)
    print(f"\n![TFLOP/s by shape]({plots[0]})\n", file=out)
    print("### Trainers (the seed's programs, 500 steps)\n", file=out)
    trainers.print_table(trainer_rows, file=out)
    print(f"\n![trainer time per recipe]({plots[1]})\n", file=out)
    print("### The fused training step against PyTorch's own paths\n", file=out)
    fused_step_bench.print_tables(torch.device(device), *fused_step, file=out)
    print(file=out)
    return out.getvalue()


def update_docs(device, text):
    """Replaces this device's section of docs/PERFORMANCE.md, keeping the others."""
    path = os.path.join(DOCS, "PERFORMANCE.md")
    begin, end = f"<!-- {device}:begin -->", f"<!-- {device}:end -->"
    block = f"{begin}\n{text}{end}"
    doc = open(path).read() if os.path.exists(path) else "# Performance\n"
    if begin in doc:
        doc = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, doc, flags=re.S)
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(doc)
    return path


def main(argv=None, prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", default=None, help="folder for the CSVs, plots and report.md (default out/bench-DEVICE)")
    parser.add_argument("--docs", action="store_true", help="also write this device's section of docs/PERFORMANCE.md")
    parser.add_argument("--cases", help="kernel cases, dtype:MxKxN+MxKxN;dtype:... (default depends on the device)")
    parser.add_argument("--trainer-steps", type=int, default=500)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    out = args.out or os.path.join("out", f"bench-{args.device}")
    os.makedirs(out, exist_ok=True)

    cases = args.cases or (linear_relu.GPU_REPORT_CASES if args.device == "cuda" else None)
    k = linear_relu.parse_args(["--device", args.device] + (["--cases", cases] if cases else []))
    kernel_rows = linear_relu.run(k.device, k.cases, k.modes)
    if args.device == "cuda" and not args.cases:
        g = linear_relu.parse_args(["--device", "cuda", "--cases", linear_relu.GPU_GRAPH_CASES, "--cuda-graph"])
        kernel_rows += linear_relu.run("cuda", g.cases, g.modes, cuda_graph=True)
    backends = [b for b in linear_relu.providers(args.device) if b in ("native", "triton")] + ["torch", "fused_step"]
    recipes = [r for r in trainers.RECIPES if r != "numpy"]
    trainer_rows = trainers.run(recipes, backends, args.device, args.trainer_steps, repeats=3)
    fused_step = (args.trainer_steps, 5, *fused_step_bench.measure(torch.device(args.device), args.trainer_steps, 5))

    write_csv(kernel_rows, os.path.join(out, "linear_relu.csv"), args.device)
    write_csv(trainer_rows, os.path.join(out, "trainers.csv"), args.device)
    title = f"{device_name(args.device)}, torch {torch.__version__}"
    names = [f"{args.device}_tflops.png", f"{args.device}_trainers.png"]
    plot_tflops(kernel_rows, os.path.join(out, names[0]), f"linear_relu, {title}")
    plot_trainers(trainer_rows, os.path.join(out, names[1]), f"seed programs vs recipes, {title}")
    command = f"python -m benchmarks.report --device {args.device} --docs"
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(section(args.device, kernel_rows, trainer_rows, fused_step, names, command))
    text = section(args.device, kernel_rows, trainer_rows, fused_step, [f"img/{n}" for n in names], command)
    print(text)
    if args.docs:
        os.makedirs(os.path.join(DOCS, "img"), exist_ok=True)
        for name in names:
            shutil.copy(os.path.join(out, name), os.path.join(DOCS, "img", name))
        print(f"updated {update_docs(args.device, text)}")


if __name__ == "__main__":
    main()
