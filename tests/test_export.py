"""Deployment: torch.export keeps the op as one call of the backend's op (no decomposition into
matmul and relu), the exported program saves, loads and runs at other batch sizes, and
AOTInductor packages it. Importing twolayer_ops registers the ops a loaded program calls."""
import pytest
import torch

from twolayer_ops.modules import TwoLayerNet

from .cases import kernel_cases

pytestmark = pytest.mark.parametrize("device,backend", kernel_cases())

OP_NAMES = {"native": "linear_relu", "triton": "linear_relu_triton"}


def _exported(device, backend):
    torch.manual_seed(0)
    net = TwoLayerNet(16, 8, 4, backend=backend).to(device)
    x = torch.randn(5, 16, device=device)
    program = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    return net, program


def _assert_runs_like(run, net, device):
    for rows in (1, 5, 9):
        x = torch.randn(rows, 16, device=device)
        torch.testing.assert_close(run(x), net(x))


def test_export_keeps_the_op_and_round_trips(device, backend, tmp_path):
    net, program = _exported(device, backend)
    calls = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert getattr(torch.ops.twolayer_ops, OP_NAMES[backend]).default in calls, calls
    assert torch.ops.aten.relu.default not in calls, calls
    torch.export.save(program, tmp_path / "net.pt2")
    loaded = torch.export.load(tmp_path / "net.pt2")
    _assert_runs_like(loaded.module(), net, device)


def test_aot_inductor_package_runs(device, backend, tmp_path):
    net, program = _exported(device, backend)
    package = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "net.pt2"))
    _assert_runs_like(torch._inductor.aoti_load_package(package), net, device)
