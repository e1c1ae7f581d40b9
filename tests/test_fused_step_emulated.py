"""The fused CUDA step's kernel code, run on the CPU: CI's check of the CUDA step without a GPU.

csrc/cuda/train_step_kernel.h (the work split and the kernel body of csrc/cuda/train_step.cu) is
compiled with the host emulation in tests/cuda_emulation.cpp: one OS thread per CUDA thread,
barriers for __syncthreads, the grid barrier and the warp shuffles, NaN-filled shared memory and
scratch. The emulated op takes the CUDA op's arguments and is checked as test_fused_step_cuda.py
checks the real one, against the CPU op on the same calls, on small grids (max_blocks plays the SM
count, smem_limit the shared memory per block) chosen so that every part of the work split runs:
a split over H and over D_in, several batch rows per block, the hidden gradient staged in chunks;
and once the seed net on an H100's grid.
What the emulation cannot show: the GPU's own floating-point contraction (the host does not fuse
multiply-adds), timing, and errors of the host code that launches the kernel.
"""
import ctypes
import subprocess
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from .cases import phases
from .emulation import compile_emulation
from .test_fused_step_cuda import N_STATE, SIZES, compare, make_case, run_steps, run_train, to

H100_SHARED_MEMORY = 232448
OPTIMIZERS = {"sgd": 0, "momentum": 1, "adam": 2}
LAUNCH_TIMEOUT_S = 120  # a launch never finishes where some threads skip a barrier the others wait at


class EmulatedOps:
    """two_layer_step and two_layer_train with the CUDA op's signatures and semantics (train_step.cu:
    two_layer_step_cuda, two_layer_train_cuda), run by the emulated kernel on CPU tensors."""

    def __init__(self, lib, max_blocks=6, smem_limit=H100_SHARED_MEMORY):
        self.lib, self.max_blocks, self.smem_limit = lib, max_blocks, smem_limit
        self.plans = []  # (pj, pk, nc, shared memory per block) of every launch

    def two_layer_step(self, x, y, params, grads, state, optimizer, lr, momentum, beta1, beta2, eps, step, loss_scale,
                       update):
        loss = x.new_empty(1)
        self._launch(x, y, params, grads, state, optimizer, (lr, momentum, beta1, beta2, eps), loss, steps=1,
                     single=True, update=update, step=step, calls_done=0, acc=1, loss_scale=loss_scale)
        return loss[0]

    def two_layer_train(self, x, y, params, grads, state, optimizer, lr, momentum, beta1, beta2, eps, calls_done, steps,
                        accumulation_steps):
        losses = x.new_empty(steps)
        self._launch(x, y, params, grads, state, optimizer, (lr, momentum, beta1, beta2, eps), losses, steps=steps,
                     single=False, update=False, step=0, calls_done=calls_done, acc=accumulation_steps,
                     loss_scale=1.0 / accumulation_steps)
        return losses

    def plan(self, size, optimizer, dtype):
        """(pj, pk, nc, shared memory per block) of the split for these sizes, or None where none fits."""
        n, d_in, h, d_out = size
        empty = [torch.empty(0, dtype=dtype)] * 16
        return self._call(dtype, optimizer, n, d_in, h, d_out, empty[0], empty[0], empty[:4], empty[4:8], empty[8:],
                          empty[0], (0.0,) * 5, 0, False, False, 0, 0, 1, 1.0)

    def _launch(self, x, y, params, grads, state, optimizer, hyper, losses, *, steps, single, update, step, calls_done,
                acc, loss_scale):
        tensors = [x, y, *params, *grads, *state, losses]
        assert all(t.device.type == "cpu" and t.dtype == x.dtype for t in tensors)
        assert all(t.is_contiguous() for t in [*params, *grads, *state, losses]), "the op updates these in place"
        assert len(state) == N_STATE[optimizer]
        n, d_in, h, d_out = x.shape[0], x.shape[1], params[0].shape[0], y.shape[1]
        plan = self._call(x.dtype, optimizer, n, d_in, h, d_out, x.contiguous(), y.contiguous(), params, grads, state,
                          losses, hyper, steps, single, update, step, calls_done, acc, loss_scale)
        if plan is None:
            raise RuntimeError("two_layer_step: exceeds the on-chip limits of the fused CUDA step (emulated)")
        self.plans.append(plan)

    def _call(self, dtype, optimizer, n, d_in, h, d_out, x, y, params, grads, state, losses, hyper, steps, single,
              update, step, calls_done, acc, loss_scale):
        pointers = (ctypes.c_void_p * 16)(*[t.data_ptr() for t in [*params, *grads, *state]])
        state_at = ctypes.cast(ctypes.byref(pointers, 8 * ctypes.sizeof(ctypes.c_void_p)), ctypes.c_void_p)
        grads_at = ctypes.cast(ctypes.byref(pointers, 4 * ctypes.sizeof(ctypes.c_void_p)), ctypes.c_void_p)
        plan = (ctypes.c_int64 * 4)()
        i64 = ctypes.c_int64
        args = (
            ctypes.c_int(torch.empty(0, dtype=dtype).element_size()), ctypes.c_int(OPTIMIZERS[optimizer]),
            i64(n), i64(d_in), i64(h), i64(d_out), ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(y.data_ptr()),
            pointers, grads_at, state_at, ctypes.c_void_p(losses.data_ptr()), i64(steps), ctypes.c_int(single),
            ctypes.c_int(update), i64(step), i64(calls_done), i64(acc), ctypes.c_double(loss_scale),
            (ctypes.c_double * 5)(*hyper), i64(self.max_blocks), i64(self.smem_limit), plan,
        )
        result = []
        worker = threading.Thread(target=lambda: result.append(self.lib.emulated_launch(*args)), daemon=True)
        worker.start()
        worker.join(LAUNCH_TIMEOUT_S)
        if worker.is_alive():
            pytest.fail(f"the emulated launch did not finish in {LAUNCH_TIMEOUT_S} s: some threads never reach a "
                        "barrier that the others wait at")
        return None if result[0] else tuple(plan)


def squeeze_shared_memory(emulated, size, optimizer, dtype):
    """Lowers emulated.smem_limit to the least shared memory per block that some split still fits."""
    plan = emulated.plan(size, optimizer, dtype)
    assert plan is not None, f"no split of {size} fits {emulated.smem_limit} bytes"
    while plan is not None and plan[3] < emulated.smem_limit:
        emulated.smem_limit = plan[3]
        plan = emulated.plan(size, optimizer, dtype)
    return emulated.plan(size, optimizer, dtype)


def check_against_cpu(emulated, size, optimizer, dtype, accumulation_steps=1, mode="train", calls_done=0, steps=4):
    initial = make_case(size, optimizer, dtype, kink_safe=dtype == torch.float32)
    cpu_case, emulated_case = to("cpu", initial), to("cpu", initial)
    cpu_losses = run_steps(cpu_case, optimizer, accumulation_steps, steps=steps, calls_done=calls_done)
    if mode == "train":
        chunks = (steps // 2, steps - steps // 2)
        got = run_train(emulated_case, optimizer, accumulation_steps, chunks=chunks, calls_done=calls_done, op=emulated)
    else:
        got = run_steps(emulated_case, optimizer, accumulation_steps, steps=steps, calls_done=calls_done, op=emulated)
    assert got.shape == (steps,) and got.dtype == dtype
    compare(cpu_case, emulated_case, initial, cpu_losses, got, dtype)


@pytest.mark.parametrize("mode", ["step", "train"])
@pytest.mark.parametrize("accumulation_steps", [1, 3])
@pytest.mark.parametrize("optimizer", list(N_STATE))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_matches_cpu(emulation, dtype, optimizer, accumulation_steps, mode):
    """The "odd" size on up to 6 blocks: H is split over 5 of them."""
    emulated = EmulatedOps(emulation, max_blocks=6)
    check_against_cpu(emulated, SIZES["odd"], optimizer, dtype, accumulation_steps, mode, calls_done=1)
    assert all(plan[0] > 1 for plan in emulated.plans), emulated.plans


# (size, max_blocks, least shared memory, what the split must show): rows of the batch on several
# blocks with D_out above the warps per block; D_in split (partial pre-activations summed over blocks).
SPLITS = {
    "rows": ((20, 12, 37, 12), 4, False, lambda pj, pk, n: pj * pk < n),
    "d_in": ((11, 200, 8, 10), 4, True, lambda pj, pk, n: pk > 1),
}


@pytest.mark.parametrize("optimizer", list(N_STATE))
@pytest.mark.parametrize("split", list(SPLITS))
def test_work_splits_match_cpu(emulation, split, optimizer):
    size, max_blocks, squeeze, shows = SPLITS[split]
    emulated = EmulatedOps(emulation, max_blocks=max_blocks)
    pj, pk, _, _ = (squeeze_shared_memory if squeeze else EmulatedOps.plan)(emulated, size, optimizer, torch.float64)
    assert shows(pj, pk, size[0]), f"the {split} case no longer splits that way: pj={pj} pk={pk}"
    check_against_cpu(emulated, size, optimizer, torch.float64, accumulation_steps=2, calls_done=1)


@pytest.mark.parametrize("optimizer", list(N_STATE))
def test_hidden_gradient_in_chunks_matches_cpu(emulation, optimizer):
    """Shared memory one byte short of staging all N rows of gh: phase C stages them 32 at a time."""
    size = (40, 9, 40, 3)
    full = EmulatedOps(emulation, max_blocks=2).plan(size, optimizer, torch.float64)
    assert full[2] == size[0]
    emulated = EmulatedOps(emulation, max_blocks=2, smem_limit=full[3] - 1)
    plan = emulated.plan(size, optimizer, torch.float64)
    assert plan is not None and plan[2] < size[0], plan
    check_against_cpu(emulated, size, optimizer, torch.float64, steps=3)


def test_seed_net_on_an_h100_grid(emulation):
    """The seed net (64x1000 -> 100 -> 10, Adam, float32) as an H100 or H200 runs it: the split for
    132 SMs of 232448 bytes spreads the work over 125 blocks (32,000 threads here); two steps."""
    emulated = EmulatedOps(emulation, max_blocks=132)
    pj, pk, nc, smem = emulated.plan(SIZES["seed"], "adam", torch.float32)
    assert pj * pk >= 100 and nc == 64, (pj, pk, nc, smem)
    check_against_cpu(emulated, SIZES["seed"], "adam", torch.float32, steps=2)


@pytest.mark.parametrize("accumulation_steps", [1, 3])
def test_train_equals_steps_bitwise(emulation, accumulation_steps):
    emulated = EmulatedOps(emulation, max_blocks=6)
    initial = make_case(SIZES["odd"], "adam", torch.float32)
    a, b = to("cpu", initial), to("cpu", initial)
    losses_a = run_steps(a, "adam", accumulation_steps, steps=5, calls_done=2, op=emulated)
    losses_b = run_train(b, "adam", accumulation_steps, chunks=(5,), calls_done=2, op=emulated)
    assert torch.equal(losses_a, losses_b), (losses_a, losses_b)
    for ta, tb in zip(a[2] + a[3] + a[4], b[2] + b[3] + b[4]):
        assert torch.equal(ta, tb)


@pytest.mark.parametrize("size", [(3, 1, 1, 1), (4, 0, 5, 2), (4, 6, 0, 2), (4, 6, 5, 0), (0, 6, 5, 2)],
                         ids=["ones", "d_in0", "h0", "d_out0", "n0"])
def test_degenerate_sizes(emulation, size):
    check_against_cpu(EmulatedOps(emulation, max_blocks=4), size, "adam", torch.float64, steps=2)


def test_sizes_beyond_the_limits_raise_and_touch_nothing(emulation):
    emulated = EmulatedOps(emulation, max_blocks=2, smem_limit=4096)
    initial = make_case((16, 300, 20, 3), "adam", torch.float64)
    case = to("cpu", initial)
    with pytest.raises(RuntimeError, match="exceeds the on-chip limits"):
        run_train(case, "adam", 1, chunks=(2,), op=emulated)
    for got, want in zip(case[2] + case[3] + case[4], initial[2] + initial[3] + initial[4]):
        assert torch.equal(got, want)


@settings(max_examples=12, deadline=None, phases=phases("cpu"))
@given(
    n=st.integers(1, 24), d_in=st.integers(1, 40), h=st.integers(1, 40), d_out=st.integers(1, 12),
    optimizer=st.sampled_from(list(N_STATE)), accumulation_steps=st.integers(1, 3), max_blocks=st.integers(1, 6),
    tight=st.booleans(),
)
def test_any_sizes_match_cpu(emulation, n, d_in, h, d_out, optimizer, accumulation_steps, max_blocks, tight):
    """Drawn sizes and grids, float64; `tight` gives the least shared memory that still fits a split."""
    size = (n, d_in, h, d_out)
    emulated = EmulatedOps(emulation, max_blocks=max_blocks)
    assert emulated.plan(size, optimizer, torch.float64) is not None, f"no split of {size} fits an H100 block"
    if tight:
        squeeze_shared_memory(emulated, size, optimizer, torch.float64)
    check_against_cpu(emulated, size, optimizer, torch.float64, accumulation_steps, calls_done=1, steps=3)


def test_no_data_race_under_thread_sanitizer(emulation, tmp_path):
    """The launches of the emulation's main() (every optimizer; splits over H, over D_in and rows;
    gh in chunks) under ThreadSanitizer: every shared-memory and scratch access is ordered by a barrier."""
    program = tmp_path / "cuda_emulation_tsan"
    done, cmd = compile_emulation(program, "-g", "-fsanitize=thread", "-DEMULATION_MAIN")
    if done.returncode != 0:
        if "tsan" in done.stderr.lower():
            pytest.skip(f"this compiler cannot link ThreadSanitizer: {done.stderr.strip().splitlines()[-1]}")
        pytest.fail(f"{' '.join(cmd)} failed:\n{done.stderr[-4000:]}")
    run = subprocess.run([str(program)], capture_output=True, text=True, timeout=600)
    assert "ThreadSanitizer" not in run.stderr, run.stderr[-6000:]
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert run.stdout.count(" ok") == 3, run.stdout
