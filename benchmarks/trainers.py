"""Trainer benchmark: each recipe next to the seed's own program, in one run.

    python -m benchmarks.trainers                          # CPU, 500 steps, every recipe
    python -m benchmarks.trainers --device cuda --recipes optim,autograd

Each cell is the wall time of one whole call (setup included) for 500 steps, the best of --repeats
rounds that each run every job once;
the ratio is seed program time / recipe time, so > 1 means the recipe is faster.
"""
import argparse
import sys
import time

import torch
from tqdm import tqdm

import twolayer_ops
from tests import seed_programs
from twolayer_ops.trainers import FUSED_STEP_RECIPES, RECIPES

from .results import Row, device_name, write_csv


def wall_ms(fn, device):
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def run(recipes, backends, device, steps, repeats, progress=True):
    """Each run's best wall time over `repeats` rounds; a round runs every job once, so that a slow
    spell of a shared machine falls on all of them rather than on one job's repeats."""
    jobs = {}
    for recipe in recipes:
        for backend in ["seed", *backends]:
            if backend == "seed":
                kwargs = {"steps": steps} if recipe == "numpy" else {"steps": steps, "device": device}
                jobs[recipe, backend] = lambda r=recipe, kw=kwargs: seed_programs.PROGRAMS[r](**kw)
            elif backend == "fused_step":
                if recipe in FUSED_STEP_RECIPES:
                    jobs[recipe, backend] = lambda r=recipe: RECIPES[r](steps=steps, device=device, fused_step=True)
            else:
                jobs[recipe, backend] = lambda r=recipe, b=backend: RECIPES[r](steps=steps, device=device, backend=b)
    best = {job: float("inf") for job in jobs}
    # The first round is the warm-up (autotuning, lazy init, allocator growth) and is not timed.
    bar = tqdm(total=len(jobs) * (repeats + 1), desc="trainers", unit="run", file=sys.stderr, disable=not progress)
    for round_ in range(repeats + 1):
        for job, fn in jobs.items():
            ms = wall_ms(fn, device)
            if round_:
                best[job] = min(best[job], ms)
            bar.update()
    bar.close()
    rows = [Row("train", backend, f"{steps} steps", recipe, "float32", "time", "ms", ms) for (recipe, backend), ms in best.items()]
    seed = {r.shape: r.p50 for r in rows if r.provider == "seed"}
    rows += [Row("train", r.provider, r.mode, r.shape, r.dtype, "speedup_vs_seed", "x", seed[r.shape] / r.p50) for r in list(rows)]
    return rows


def print_table(rows, file=None):
    """One line per recipe: the seed program's time, then each provider's time and speedup."""
    times = {(r.shape, r.provider): r.p50 for r in rows if r.metric == "time"}
    providers = [p for p in dict.fromkeys(r.provider for r in rows) if p != "seed"]
    print("| recipe | seed program ms | " + " | ".join(f"{p} ms | seed/{p}" for p in providers) + " |", file=file)
    print("|---|---:|" + "---:|---:|" * len(providers), file=file)
    for recipe in dict.fromkeys(r.shape for r in rows):
        seed = times[(recipe, "seed")]
        cells = [f"{times[(recipe, p)]:.1f} | {seed / times[(recipe, p)]:.2f}x" if (recipe, p) in times else " | "
                 for p in providers]
        print(f"| {recipe} | {seed:.1f} | " + " | ".join(cells) + " |", file=file)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--recipes", default=",".join(r for r in RECIPES if r != "numpy"))
    parser.add_argument("--backends", help="default: native, torch and fused_step (and triton on CUDA)")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--csv", help="write the rows to this CSV file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    available = twolayer_ops.available_backends(args.device)
    default = [b for b in available if b != "triton" or args.device == "cuda"]  # the interpreter is no timing path
    backends = args.backends.split(",") if args.backends else default + ["fused_step"]
    recipes = args.recipes.split(",")
    bad = [r for r in recipes if r not in RECIPES] + [b for b in backends if b not in available + ["fused_step"]]
    if bad:
        parser.error(f"unknown or unavailable here: {', '.join(bad)}")
    rows = run(recipes, backends, args.device, args.steps, args.repeats)
    print(f"\n{args.steps} steps on {device_name(args.device)}, torch {torch.__version__}; ms per whole run, best of {args.repeats}\n")
    print_table(rows)
    if args.csv:
        write_csv(rows, args.csv, args.device)


if __name__ == "__main__":
    main()
