"""The ops inside CUDA graphs. The seed's layers are launch-bound, and a graph is how PyTorch users run
such layers fast, so the op must capture: forward and backward recorded once (after a warmup on a
side stream, as torch.cuda.graphs asks), then replayed on new values copied into the captured
inputs, each replay against the float64 reference of those values."""
import pytest
import torch

from twolayer_ops import linear_relu, relu
from twolayer_ops.modules import TwoLayerNet

from .cases import kernel_cases
from .reference import assert_close_to_ref, linear_relu_ref

pytestmark = pytest.mark.parametrize("device,backend", kernel_cases(devices=("cuda",)))

# (M, K, N), dtype: the seed's layers (64x1000->100 splits K on the native backend: a workspace and a
# second kernel), and a 16-bit product large enough for the Hopper path of both backends.
CASES = [((64, 1000, 100), torch.float32), ((64, 100, 10), torch.float32), ((256, 512, 384), torch.bfloat16)]


def _values(m, k, n, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(m, k, device="cuda", generator=g)
    w = torch.randn(n, k, device="cuda", generator=g) / k**0.5
    b = torch.randn(n, device="cuda", generator=g)
    go = torch.randn(m, n, device="cuda", generator=g)
    return [t.to(dtype) for t in (x, w, b, go)]


def _capture(step, warmups=3):
    """step() recorded in a CUDA graph after `warmups` calls on a side stream (autotuning, lazy init)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmups):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step()
    return graph, outputs


def _hopper_calls(backend, monkeypatch):
    """A function giving how many forward (and, native, backward) calls have taken the Hopper kernels
    so far: the sm90 path's own counts (info()[3:5]), or a spy on the Triton TMA launcher."""
    if backend == "native":
        return lambda: tuple(torch.ops.twolayer_ops_sm90.info()[3:5])
    from twolayer_ops.triton_kernels import hopper

    forwards = []
    real = hopper.launch

    def spy(kernel, *args, **meta):
        forwards.append(kernel is hopper.linear_relu_fwd_tma_kernel)
        return real(kernel, *args, **meta)

    monkeypatch.setattr(hopper, "launch", spy)
    return lambda: (sum(forwards),)


@pytest.mark.parametrize("shape,dtype", CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_forward_and_backward_replay_on_new_values(device, backend, shape, dtype, monkeypatch):
    """The bf16 case on an H100 / H200 must take the Hopper kernels (the sm90 path; Triton's TMA
    forward) in each of the 3 warmup calls and in the captured one."""
    m, k, n = shape
    x, w, b, go = _values(m, k, n, dtype, seed=0)
    inputs = [t.requires_grad_() for t in (x, w, b)]

    def step():
        out = linear_relu(*inputs, backend=backend)
        return (out, *torch.autograd.grad(out, inputs, go))

    hopper = dtype == torch.bfloat16 and torch.cuda.get_device_capability() == (9, 0)
    calls = _hopper_calls(backend, monkeypatch) if hopper else lambda: ()
    before = calls()
    graph, captured = _capture(step)
    assert all(after - was == 4 for was, after in zip(before, calls())), (before, calls())
    for seed in (1, 2):  # two different value sets through the same graph
        values = _values(m, k, n, dtype, seed)
        with torch.no_grad():
            for static, value in zip((*inputs, go), values):
                static.copy_(value)
        graph.replay()
        torch.cuda.synchronize()
        ref_in = [t.double().requires_grad_() for t in values[:3]]
        ref_out = linear_relu_ref(*ref_in)
        ref_grads = torch.autograd.grad(ref_out, ref_in, values[3].double())
        for name, got, want in zip(("output", "grad_x", "grad_weight", "grad_bias"), captured, (ref_out, *ref_grads)):
            assert_close_to_ref(got, want.to(dtype), dtype, f"replay {seed}: {name}")


def test_relu_replays(device, backend):
    x = torch.randn(64, 100, device="cuda", requires_grad=True)
    go = torch.randn(64, 100, device="cuda")

    def step():
        out = relu(x, backend=backend)
        return out, torch.autograd.grad(out, x, go)[0]

    graph, (out, grad_x) = _capture(step)
    with torch.no_grad():
        x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, torch.relu(x.detach()))
    assert torch.equal(grad_x, torch.where(x.detach() > 0, go, 0))


def test_compile_reduce_overhead_trains_like_eager(device, backend):
    """torch.compile's CUDA-graph mode over the seed's net: each step's loss and gradients as eager,
    and the op keeps no graph of it from being captured."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    net = TwoLayerNet(1000, 100, 10, backend=backend).cuda()
    ref = TwoLayerNet(1000, 100, 10, backend="torch").cuda()
    ref.load_state_dict(net.state_dict())
    for p in (*net.parameters(), *ref.parameters()):  # accumulated in place: no graph-owned memory kept as .grad
        p.grad = torch.zeros_like(p)
    compiled = torch.compile(net, mode="reduce-overhead")
    for step in range(4):  # the graph is recorded on an early call and replayed after
        x, y = torch.randn(64, 1000, device="cuda"), torch.randn(64, 10, device="cuda")
        for model in (compiled, ref):
            model.zero_grad(set_to_none=False)
            loss = (model(x) - y).pow(2).sum()
            loss.backward()
            if model is compiled:
                got_loss = loss.detach().clone()
        torch.testing.assert_close(got_loss, loss.detach(), rtol=1e-4, atol=1e-3, msg=f"step {step}: loss")
        for (name, p), q in zip(net.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4, msg=f"step {step}: {name}.grad")
    assert counters["inductor"]["cudagraph_skips"] == 0, "inductor skipped CUDA graphs (its log says why)"
