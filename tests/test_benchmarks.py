"""The benchmark drivers run end to end on tiny problems and produce the rows the report needs; the
GPU-only scripts at least parse."""
import pathlib
import re
import subprocess

import pytest

from benchmarks import fused_step_bench, linear_relu, trainers

SCRIPTS = sorted(pathlib.Path(__file__).resolve().parent.parent.glob("benchmarks/*.sh"))


def test_kernel_benchmark_rows_and_ratios():
    rows = linear_relu.run("cpu", [((8, 16, 4), "float32")], ["fwd", "fwdbwd"], ["native", "eager"], progress=False)
    times = {(r.mode, r.provider): r.p50 for r in rows if r.metric == "time"}
    assert set(times) == {(m, p) for m in ("fwd", "fwdbwd") for p in ("native", "eager", "mm")}
    assert all(t > 0 for t in times.values())
    speedups = {(r.mode, r.provider): r.p50 for r in rows if r.metric == "speedup_vs_eager"}
    for (mode, provider), s in speedups.items():
        assert abs(s - times[mode, "eager"] / times[mode, provider]) < 1e-9


def test_nobias_providers_drop_the_bias(monkeypatch):
    """native_nobias is native called with bias None, in every mode; asked for by name only."""
    assert "native_nobias" not in linear_relu.providers("cpu")
    seen = []
    real = linear_relu.twolayer_ops.linear_relu
    monkeypatch.setattr(linear_relu.twolayer_ops, "linear_relu", lambda x, w, b, **kw: seen.append(b) or real(x, w, b, **kw))
    rows = linear_relu.run("cpu", [((8, 16, 4), "float32")], ["fwd", "bwd", "fwdbwd"], ["native_nobias"], progress=False)
    assert {(r.mode, r.provider) for r in rows if r.metric == "time"} >= {
        (m, "native_nobias") for m in ("fwd", "bwd", "fwdbwd")}
    assert seen and all(b is None for b in seen)


def test_cuda_graph_mode_refuses_the_cpu():
    with pytest.raises(SystemExit):
        linear_relu.parse_args(["--device", "cpu", "--cuda-graph"])
    with pytest.raises(ValueError, match="cuda_graph needs device='cuda'"):
        linear_relu.run("cpu", [((8, 16, 4), "float32")], ["fwd"], ["native"], progress=False, cuda_graph=True)


def test_trainer_benchmark_rows():
    rows = trainers.run(["optim"], ["native", "fused_step"], "cpu", steps=3, repeats=1, progress=False)
    times = {r.provider: r.p50 for r in rows if r.metric == "time"}
    assert set(times) == {"seed", "native", "fused_step"} and all(t > 0 for t in times.values())
    speedups = {r.provider: r.p50 for r in rows if r.metric == "speedup_vs_seed"}
    assert speedups["seed"] == 1.0
    assert abs(speedups["fused_step"] - times["seed"] / times["fused_step"]) < 1e-9


def test_fused_step_benchmark_on_cpu(capsys):
    fused_step_bench.main(["--device", "cpu", "--steps", "3", "--repeats", "1"])
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")}
    assert {"fused_run", "fused_step", "eager", "compile"} <= rows and "graph" not in rows
    assert "fused_run target >= 3x eager" in out


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_gpu_scripts_parse(script):
    """The GPU machine is the only place these run: bash and the Python they embed (<<'EOF' blocks)
    must at least parse here, so that no GPU time goes to a syntax error."""
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for block in re.findall(r"<<'EOF'[^\n]*\n(.*?)\nEOF\n", script.read_text(), flags=re.S):
        compile(block, f"{script.name} (embedded Python)", "exec")
