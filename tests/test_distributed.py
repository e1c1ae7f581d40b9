"""DDP with 2 gloo ranks on loopback: the sharded run equals one process on the global batch."""
import os
import socket
import subprocess
import sys
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from twolayer_ops.trainers import RECIPES
from twolayer_ops.trainers.common import D_IN, D_OUT, N

WORLD = 2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, port, recipe, steps, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        result = RECIPES[recipe](steps=steps, seed=0, ddp=True, log_every=None)
        model = result.model
        # One more full-batch gradient through DDP, to look at the all-reduced bias gradient itself.
        torch.manual_seed(0)
        x, y = torch.randn(N, D_IN), torch.randn(N, D_OUT)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        loss = torch.nn.functional.mse_loss(ddp(x.chunk(WORLD)[rank]), y.chunk(WORLD)[rank], reduction="sum")
        (loss * WORLD).backward()
        torch.save(
            {"losses": result.losses, "params": model.state_dict(), "bias_grad": model[0].bias.grad.clone()},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def single_process_reference(recipe, steps):
    result = RECIPES[recipe](steps=steps, seed=0)
    model = result.model
    model.zero_grad()
    torch.manual_seed(0)
    x, y = torch.randn(N, D_IN), torch.randn(N, D_OUT)
    torch.nn.functional.mse_loss(model(x), y, reduction="sum").backward()
    return result.losses, model.state_dict(), model[0].bias.grad


@pytest.mark.parametrize("recipe,steps", [("optim", 6), ("grad_accum", 16)])
def test_two_ranks_match_one_process(recipe, steps, tmp_path):
    try:
        mp.spawn(worker, args=(free_port(), recipe, steps, str(tmp_path)), nprocs=WORLD, join=True)
    except mp.ProcessExitedException as err:
        # gloo can abort a rank as it shuts down ("terminate called without an active exception": one CI
        # run in about 13). Results saved before that are checked all the same; a crash before is not excused.
        if not all((tmp_path / f"rank{rank}.pt").exists() for rank in range(WORLD)):
            raise
        warnings.warn(f"a rank exited abnormally after saving its results: {err}")
    want_losses, want_params, want_bias_grad = single_process_reference(recipe, steps)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(want_losses), rtol=1e-4, atol=1e-3)
        for name, want in want_params.items():
            torch.testing.assert_close(got["params"][name], want, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
        assert got["bias_grad"].abs().sum() > 0, "the fused layer's bias gradient came back zero-filled"
        torch.testing.assert_close(got["bias_grad"], want_bias_grad, rtol=1e-4, atol=1e-3)


def test_torchrun_cli_prints_from_rank_0_only():
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "twolayer_ops.train", "optim", "--ddp", "--steps", "5", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    summaries = [line for line in proc.stdout.splitlines() if line.startswith("optim: final loss")]
    if proc.returncode != 0:
        # As in test_two_ranks_match_one_process: gloo can abort a rank as it shuts down (SIGABRT; one
        # CI run of 2026-11-28). A run that printed its summary is checked all the same; any other
        # failure, or a crash before the summary, is not excused.
        assert len(summaries) == 1 and "SIGABRT" in proc.stderr, proc.stderr[-2000:]
        warnings.warn(f"a rank aborted after the run printed its summary: {proc.stderr[-500:]}")
    assert len(summaries) == 1, proc.stdout
