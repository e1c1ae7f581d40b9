"""Building tests/cuda_emulation.cpp: CUDA kernels' portable cores on host threads (see that file)."""
import ctypes
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("cuda_emulation.cpp")
CXX = shutil.which("g++") or shutil.which("c++")


def compile_emulation(out, *flags):
    """(CompletedProcess, command) of building the emulation into `out` with `flags`."""
    cmd = [CXX, "-std=c++20", "-O1", "-pthread", *flags, str(SOURCE), "-o", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True), cmd


def load_library(out):
    """The emulation as a ctypes library at `out`: emulated_launch (the fused step), emulated_gemm,
    emulated_grads, emulated_quad_transpose, emulated_stream_k."""
    done, cmd = compile_emulation(out, "-fPIC", "-shared")
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr[-4000:]}"
    lib = ctypes.CDLL(str(out))
    lib.emulated_launch.restype = ctypes.c_int
    lib.emulated_gemm.restype = ctypes.c_int64
    lib.emulated_grads.restype = ctypes.c_int64
    return lib
