"""The command line: `twolayer-ops train | bench | check`.

    twolayer-ops train optim                       # the seed's Adam program on the fused op
    twolayer-ops train all --steps 200             # every recipe, one table
    twolayer-ops train grad_accum --plot loss.png --print-every 50
    torchrun --nproc_per_node=2 -m twolayer_ops.train optim --ddp
    twolayer-ops bench --device cpu                # kernel + trainer benchmarks, CSV, plots, report
    twolayer-ops check                             # the kernels against the reference, every backend here
"""
import argparse
import os
import sys

import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _rank0():
    return int(os.environ.get("RANK", "0")) == 0


def _train_one(name, args, show_progress):
    from tqdm import tqdm

    from .trainers import RECIPES

    kwargs = dict(steps=args.steps, seed=args.seed, device=args.device, backend=args.backend, dtype=DTYPES[args.dtype])
    if args.lr is not None:
        kwargs["lr"] = args.lr
    if args.ddp:
        kwargs["ddp"] = True
    if args.fused_step:
        kwargs["fused_step"] = True
    bars = []  # made at the first log, so argument errors print before any bar

    def on_log(first_step, losses):
        if not bars:
            bars.append(tqdm(total=args.steps, desc=name, unit="step", disable=not show_progress, file=sys.stderr, leave=False))
        bar = bars[0]
        if args.print_every and _rank0():
            for i in range(args.print_every - 1, len(losses), args.print_every):
                tqdm.write(f"{first_step + i} {losses[i]:.6g}")
        bar.update(len(losses))
        bar.set_postfix(loss=f"{losses[-1]:.4g}")

    # Losses are fetched from the device once per chunk, never every step unless asked.
    kwargs["log_every"] = args.print_every or max(1, args.steps // 20)
    kwargs["on_log"] = on_log
    result = RECIPES[name](**kwargs)
    for bar in bars:
        bar.close()
    return result


def _plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in results:
        ax.plot(range(1, r.steps + 1), r.losses, label=f"{r.recipe} ({r.backend})")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (sum of squares)")
    ax.set_title(f"twolayer_ops: seed net 64x1000 -> 100 -> 10 on {results[0].device}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_train(args):
    from .trainers import DDP_RECIPES, FUSED_STEP_RECIPES, RECIPES

    names = list(RECIPES) if args.recipe == "all" else [args.recipe]
    if args.fused_step:
        if args.recipe == "all":
            names = list(FUSED_STEP_RECIPES)
        bad = [n for n in names if n not in FUSED_STEP_RECIPES]
        if bad:
            return _fail(f"--fused-step runs the two-layer recipes ({', '.join(FUSED_STEP_RECIPES)}), not {', '.join(bad)}")
    # Every argument is checked before any process group starts or any step runs.
    if args.steps <= 0:
        return _fail(f"--steps must be positive, got {args.steps}")
    if args.print_every < 0:
        return _fail(f"--print-every must be 0 (off) or positive, got {args.print_every}")
    plot_dir = os.path.dirname(os.path.abspath(args.plot)) if args.plot else None
    if args.plot and (not args.plot.lower().endswith(".png") or not os.path.isdir(plot_dir)):
        return _fail(f"--plot wants a .png file in an existing folder, got {args.plot}")
    if args.ddp:
        bad = [n for n in names if n not in DDP_RECIPES]
        if bad:
            return _fail(f"--ddp runs the recipes with an nn.Module ({', '.join(DDP_RECIPES)}), not {', '.join(bad)}")
        if args.device.startswith("cuda:"):  # every rank would take that one GPU
            return _fail(f"--ddp puts each rank on the GPU of its LOCAL_RANK: use --device cuda, not {args.device}")
        try:
            _init_distributed(args.device)
        except (RuntimeError, ValueError) as e:  # a device it cannot use: said as the other bad arguments are
            return _fail(f"--ddp on --device {args.device}: {e}")
    show = _rank0() and not args.quiet
    results = []
    for name in names:
        try:
            results.append(_train_one(name, args, show))
        except ValueError as e:
            return _fail(f"{name}: {e}")
    if _rank0():
        if len(results) == 1:
            r = results[0]
            print(
                f"{r.recipe}: final loss {r.final_loss:.6g} after {r.steps} steps, {r.wall_time_s * 1e3:.1f} ms "
                f"({r.steps_per_s:.0f} steps/s), backend {r.backend}, device {r.device}"
            )
        else:
            print("| recipe | final loss | wall ms | steps/s | backend | device |")
            print("|---|---:|---:|---:|---|---|")
            for r in results:
                print(f"| {r.recipe} | {r.final_loss:.6g} | {r.wall_time_s * 1e3:.1f} | {r.steps_per_s:.0f} | {r.backend} | {r.device} |")
        if args.plot:
            _plot(results, args.plot)
            print(f"loss curve written to {args.plot}")
    return 0


def _init_distributed(device):
    import torch.distributed as dist

    if "RANK" not in os.environ:
        raise SystemExit("error: --ddp needs a launcher that sets RANK and WORLD_SIZE, e.g. torchrun --nproc_per_node=2")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # The group is left to the process's exit: with torch 2.14.1's gloo, destroy_process_group() at the
    # end aborted a rank ("terminate called without an active exception") in 5 of 65 two-rank torchrun
    # runs on a 2-core machine, against none of 52 without it (2026-11-28).
    dist.init_process_group("nccl" if cuda else "gloo")


def cmd_check(args):
    """Each backend's kernels against the float64 reference, forward and gradients."""
    from .backends import available_backends
    from .functional import linear_relu
    from .ops import cpu_isa

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    failures = 0
    in_use, best = cpu_isa()
    print(f"native CPU GEMM kernels: {in_use} (this CPU has up to {best}; none: BLAS runs)")
    print("| device | backend | dtype | check | result |")
    print("|---|---|---|---|---|")
    for device in devices:
        for backend in available_backends(device):
            for dtype in (torch.float64, torch.float32):
                g = torch.Generator().manual_seed(0)
                x, w, b = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((7, 33), (5, 33), (5,)))
                ref = torch.relu(torch.nn.functional.linear(x, w, b))
                args_ = [t.to(device, dtype).requires_grad_() for t in (x, w, b)]
                out = linear_relu(*args_, backend=backend)
                err = ((out.double().cpu() - ref).norm() / ref.norm()).item()
                ok = err < (1e-12 if dtype == torch.float64 else 1e-5)
                failures += not ok
                print(f"| {device} | {backend} | {dtype} | forward rel. error {err:.1e} | {'ok' if ok else 'FAIL'} |")
            inputs = [t.to(device).requires_grad_() for t in (x, w, b)]
            ok = torch.autograd.gradcheck(lambda *a: linear_relu(*a, backend=backend), inputs, raise_exception=False)
            failures += not ok
            print(f"| {device} | {backend} | torch.float64 | gradcheck | {'ok' if ok else 'FAIL'} |")
    print("all checks passed" if not failures else f"{failures} check(s) FAILED")
    return 1 if failures else 0


def cmd_bench(args):
    """The benchmark suite lives beside the package, in the source checkout (benchmarks/)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isdir(os.path.join(root, "benchmarks")):
        return _fail("the benchmarks ship with the source checkout: install it with `pip install -e .` from a clone")
    sys.path.insert(0, root)
    from benchmarks import report

    report.main(args.bench_args, prog="twolayer-ops bench")
    return 0


def _fail(message):
    print(f"error: {message}", file=sys.stderr)
    return 2


def build_parser():
    from .backends import BACKEND_NAMES
    from .trainers import RECIPES

    parser = argparse.ArgumentParser(prog="twolayer-ops", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run a recipe of the seed (or all of them)")
    train.add_argument("recipe", choices=[*RECIPES, "all"])
    train.add_argument("--steps", type=int, default=500)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    train.add_argument("--backend", default="auto", choices=BACKEND_NAMES)
    train.add_argument("--dtype", default="float32", choices=list(DTYPES))
    train.add_argument("--lr", type=float, help="learning rate (default: the seed program's)")
    train.add_argument("--print-every", type=int, default=0, metavar="N", help="print the loss every N steps")
    train.add_argument("--plot", metavar="FILE", help="write the loss curve to this PNG")
    train.add_argument("--ddp", action="store_true", help="DistributedDataParallel under torchrun (gloo on CPU, nccl on CUDA)")
    train.add_argument("--fused-step", action="store_true",
                       help="each step one fused op call: forward, loss, backward and update (nn, grad_accum, optim, module)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)
    bench = sub.add_parser("bench", help="run the benchmark suite (its arguments: twolayer-ops bench --help)",
                           add_help=False)
    bench.set_defaults(func=cmd_bench)
    check = sub.add_parser("check", help="check every available backend against the reference")
    check.set_defaults(func=cmd_check)
    return parser


def main(argv=None):
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = rest  # all of them belong to benchmarks.report
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
