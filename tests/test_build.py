"""The build compiled what the machine can compile: CI proves every .cu file builds this way."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from twolayer_ops import ops


@pytest.mark.skipif(os.environ.get("TWOLAYER_OPS_NO_CUDA", "0") not in ("", "0"), reason="CUDA build switched off")
def test_cuda_kernels_built_where_nvcc_exists():
    """CUDA kernels wherever nvcc is found and torch is a CUDA build (a CPU build has nothing to link them to)."""
    has_nvcc = shutil.which("nvcc") is not None or bool(os.environ.get("CUDA_HOME"))
    expected = has_nvcc and torch.version.cuda is not None
    assert ops.HAS_CUDA_KERNELS == expected, (
        f"nvcc {'found' if has_nvcc else 'absent'}, torch {torch.__version__}, but CUDA kernels "
        f"{'' if ops.HAS_CUDA_KERNELS else 'not '}registered"
    )


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("readelf") is None, reason="needs Linux and readelf")
def test_extension_uses_the_process_libstdcxx():
    """A toolchain that finds only libstdc++.a gave the extension a second libstdc++ whose locale facets are not
    torch's: numbers formatted into error messages vanished (here) or segfaulted (the GPU image). setup.py
    links the shared one there; the extension must depend on it."""
    so = importlib.util.find_spec("twolayer_ops._C").origin
    dynamic = subprocess.run(["readelf", "-d", so], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dynamic)
    assert "libstdc++.so.6" in needed, f"{so} does not link libstdc++.so.6 (NEEDED: {needed})"
