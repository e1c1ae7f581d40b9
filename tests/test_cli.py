"""The command line, as a user runs it: exit codes, messages, plots; never a traceback."""
import os
import subprocess
import sys

import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "twolayer_ops.cli", *args], capture_output=True, text=True, timeout=600)


def test_train_prints_summary_and_writes_plot(tmp_path):
    plot = tmp_path / "loss.png"
    proc = run("train", "optim", "--steps", "20", "--print-every", "10", "--plot", str(plot), "--quiet")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("9 ") and lines[1].startswith("19 ")
    assert "optim: final loss" in proc.stdout and "backend native, device cpu" in proc.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_all_prints_one_table():
    proc = run("train", "all", "--steps", "3", "--quiet", "--backend", "native")
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "recipe" not in line]
    assert len(rows) == 9


def test_fused_step_flag():
    proc = run("train", "grad_accum", "--steps", "16", "--fused-step", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "backend fused_step" in proc.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "nope"], "invalid choice: 'nope'"),
        (["train", "optim", "--steps", "0"], "--steps must be positive"),
        (["train", "optim", "--backend", "cutlass"], "invalid choice: 'cutlass'"),
        (["train", "optim", "--device", "tpu"], "device must be cpu or cuda"),
        (["train", "dynamic", "--fused-step"], "--fused-step runs the two-layer recipes"),
        (["train", "numpy", "--ddp"], "--ddp runs the recipes with an nn.Module"),
        (["train", "nn", "--ddp", "--device", "cuda:1"], "--ddp puts each rank on the GPU of its LOCAL_RANK"),
        (["train", "optim", "--bogus"], "unrecognized arguments: --bogus"),
        (["train", "optim", "--dtype", "float16", "--backend", "native"], "no kernel for torch.float16 on cpu"),
        (["train", "optim", "--fused-step", "--dtype", "bfloat16"], "the fused step trains float32 and float64 only"),
        (["train", "optim", "--fused-step", "--print-every", "-1"], "--print-every must be 0 (off) or positive"),
        (["train", "optim", "--steps", "5", "--plot", "/nonexistent/loss.png"], "--plot wants a .png file"),
        (["train", "optim", "--steps", "5", "--plot", "loss.txt"], "--plot wants a .png file"),
    ],
)
def test_bad_arguments_exit_nonzero_without_traceback(args, message):
    proc = run(*args)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_passes_on_this_machine():
    proc = run("check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all checks passed" in proc.stdout and "| cpu | native |" in proc.stdout
    assert "native CPU GEMM kernels: " in proc.stdout


def test_ddp_on_a_device_it_cannot_use_is_an_error_line():
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29541"}
    proc = subprocess.run([sys.executable, "-m", "twolayer_ops.cli", "train", "nn", "--ddp", "--device", "tpu", "--steps", "2"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode != 0
    assert "--ddp on --device tpu" in proc.stderr and "Traceback" not in proc.stderr
