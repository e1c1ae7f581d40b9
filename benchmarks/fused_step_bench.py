"""The fused training step against PyTorch's own paths: 500 Adam steps of the seed net
(N=64, D_in=1000, H=100, D_out=10, float32, MSE-sum loss, lr 1e-4), all in one run on one device.

    python -m benchmarks.fused_step_bench [--device cuda|cpu] [--steps 500] [--repeats 7] [--csv out.csv]

providers (each from the same initial net and data):
  fused_run    FusedTwoLayerStep.run(x, y, steps): one cooperative kernel launch for all steps (CPU:
               one op call)
  fused_step   `steps` FusedTwoLayerStep calls: one launch (CPU: one op call) per step
  eager        nn.Sequential + torch.optim.Adam, the seed's loop (forward, loss, zero_grad, backward, step)
  compile      the same loop on torch.compile(model) (compiled during setup)
  graph        that eager step captured once as a CUDA graph (Adam capturable=True), replayed `steps`
               times (CUDA only)
Each cell is the wall time of the whole `steps` run (on CUDA, host time from before the first launch
until torch.cuda.synchronize() returns after the last), best and median of --repeats rounds that each
run every provider once, after a warm-up run; building the net's copy, the optimizer, the compilation
and the graph capture are setup, not timed.
Ratios are provider time / fused_run time (> 1: fused_run is faster). The issue's targets: fused_run
<= 10 ms for 500 steps on an H200; on a 2-core CPU, eager / fused_run >= 3. A last check trains each
provider once more and prints how far their loss curves and final weights are from eager's (float32
rounding only; not a test).
On CUDA it needs the extension's CUDA kernels; no network.
"""
import argparse
import copy
import statistics
import sys
import time

import torch
from torch import nn

from twolayer_ops.fused_step import FusedTwoLayerStep

from .results import Row, device_name, write_csv

N, D_IN, H, D_OUT = 64, 1000, 100, 10
LR = 1e-4


def make_net(device, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(N, D_IN, device=device)
    y = torch.randn(N, D_OUT, device=device)
    model = nn.Sequential(nn.Linear(D_IN, H), nn.ReLU(), nn.Linear(H, D_OUT)).to(device)
    return x, y, model


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loss_fn(model, x, y):
    return nn.functional.mse_loss(model(x), y, reduction="sum")


# Each provider is setup(record) -> (run, out): setup builds a fresh copy of the net (and whatever the
# provider prepares once: optimizer, graph capture), untimed; run() trains `steps` steps with no host
# sync inside and is what gets timed; afterwards out["net"] holds the trained net and, with record=True,
# out["losses"] the (steps,) loss curve.

def fused_run(x, y, model, steps):
    def setup(record=False):
        net = copy.deepcopy(model)
        step = FusedTwoLayerStep(net[0], net[2], "adam", lr=LR)
        out = {"net": net}

        def run():
            out["losses"] = step.run(x, y, steps)

        return run, out

    return setup


def fused_step(x, y, model, steps):
    def setup(record=False):
        net = copy.deepcopy(model)
        step = FusedTwoLayerStep(net[0], net[2], "adam", lr=LR)
        out = {"net": net}

        def run():
            losses = [step(x, y) for _ in range(steps)]
            if record:
                out["losses"] = torch.stack(losses)

        return run, out

    return setup


def eager(x, y, model, steps, compile_model=False):
    """The seed's loop with torch.optim.Adam; compile_model: on torch.compile(model) (ENGINEERING.md's
    anchor), compiled during setup."""
    def setup(record=False):
        net = copy.deepcopy(model)
        forward = net
        if compile_model:
            forward = torch.compile(net)
            loss_fn(forward, x, y).backward()  # compiles (or finds the cached graphs) here, untimed
            net.zero_grad(set_to_none=True)
        optimizer = torch.optim.Adam(net.parameters(), lr=LR)
        out = {"net": net, "losses": torch.empty(steps, device=x.device)}

        def run():
            for i in range(steps):
                loss = loss_fn(forward, x, y)
                if record:
                    out["losses"][i] = loss.detach()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

        return run, out

    return setup


def compiled(x, y, model, steps):
    return eager(x, y, model, steps, compile_model=True)


def graph(x, y, model, steps):
    def setup(record=False):
        net = copy.deepcopy(model)
        optimizer = torch.optim.Adam(net.parameters(), lr=LR, capturable=True)
        # Warm up on a side stream (lazy optimizer state, allocator, cuBLAS handles) with lr = 0, so
        # that the weights stay as they are; then reset Adam's state and capture one whole step.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for group in optimizer.param_groups:
                group["lr"] = 0.0
            for _ in range(3):
                optimizer.zero_grad(set_to_none=True)
                loss_fn(net, x, y).backward()
                optimizer.step()
            for group in optimizer.param_groups:
                group["lr"] = LR
            for st in optimizer.state.values():
                for key in ("step", "exp_avg", "exp_avg_sq"):
                    st[key].zero_()
        torch.cuda.current_stream().wait_stream(side)
        static_loss = torch.empty((), device=x.device)
        g = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(g):
            loss = loss_fn(net, x, y)
            static_loss.copy_(loss.detach())
            loss.backward()
            optimizer.step()
        out = {"net": net, "losses": torch.empty(steps, device=x.device)}

        def run():
            for i in range(steps):
                g.replay()
                if record:
                    out["losses"][i] = static_loss

        return run, out

    return setup


def time_ms(setups, repeats, device):
    """{name: (best, median)} wall ms of each provider's run() over `repeats` rounds, after a warm-up
    run each; every round runs every provider once, so that a slow spell of a shared machine falls on
    all of them. Setup is not timed."""
    for setup in setups.values():
        run, _ = setup()
        run()
    times = {name: [] for name in setups}
    for round_ in range(repeats):
        for name, setup in setups.items():
            run, _ = setup()
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            times[name].append((time.perf_counter() - start) * 1e3)
        print(f"round {round_ + 1}/{repeats}: " + ", ".join(f"{n} {t[-1]:.3f} ms" for n, t in times.items()),
              file=sys.stderr)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def measure(device, steps=500, repeats=7):
    """({provider: (best, median) ms}, {provider: (losses, parameters)}): the timings, then one more
    recorded run of each provider for the agreement check."""
    x, y, model = make_net(device)
    providers = {"fused_run": fused_run, "fused_step": fused_step, "eager": eager, "compile": compiled}
    if device.type == "cuda":
        providers["graph"] = graph
    results = time_ms({name: make(x, y, model, steps) for name, make in providers.items()}, repeats, device)
    curves = {}
    for name, make in providers.items():
        run, out = make(x, y, model, steps)(record=True)
        run()
        curves[name] = (out["losses"].double().cpu(), [p.detach().double().cpu() for p in out["net"].parameters()])
    return results, curves


def print_tables(device, steps, repeats, results, curves, file=None):
    """The timing table with the issue's target line, then the agreement table."""
    base = results["fused_run"][0]
    print(f"{steps} Adam steps, seed net {N}x{D_IN}->{H}->{D_OUT} fp32, on {device_name(device.type)}, "
          f"torch {torch.__version__}; wall ms per whole run, best (median) of {repeats}\n", file=file)
    print("| provider | ms | median ms | per step | time / fused_run |", file=file)
    print("|---|---:|---:|---:|---:|", file=file)
    for name, (best, med) in results.items():
        print(f"| {name} | {best:.3f} | {med:.3f} | {best / steps * 1e3:.2f} us | {best / base:.2f}x |", file=file)
    if device.type == "cuda":
        target = 10.0 * steps / 500
        print(f"\nfused_run target <= {target:g} ms: {'met' if base <= target else 'NOT met'} ({base:.3f} ms)", file=file)
    else:
        ratio = results["eager"][0] / base
        print(f"\nfused_run target >= 3x eager: {'met' if ratio >= 3 else 'NOT met'} ({ratio:.2f}x)", file=file)

    # Agreement (float32 rounding only), against eager.
    ref_losses, ref_params = curves["eager"]
    print("\n| provider | max rel. loss diff vs eager | max rel. weight diff vs eager (norm) | final loss |", file=file)
    print("|---|---:|---:|---:|", file=file)
    for name, (losses, params) in curves.items():
        dl = ((losses - ref_losses).abs() / ref_losses.abs().clamp_min(1e-30)).max().item()
        dp = max(((p - q).norm() / q.norm()).item() for p, q in zip(params, ref_params))
        print(f"| {name} | {dl:.2e} | {dp:.2e} | {losses[-1].item():.6g} |", file=file)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--csv", help="write the rows to this CSV file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: --device cpu")
    device = torch.device(args.device)
    results, curves = measure(device, args.steps, args.repeats)
    print()
    print_tables(device, args.steps, args.repeats, results, curves)
    if args.csv:
        write_csv([Row("train_step", name, f"{args.steps} adam steps", f"{N}x{D_IN}x{H}x{D_OUT}", "float32", "time", "ms",
                       p50=med, p20=best) for name, (best, med) in results.items()], args.csv, device.type)


if __name__ == "__main__":
    main()
