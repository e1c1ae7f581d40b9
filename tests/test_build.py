"""The build compiled what the machine can compile: CI proves every .cu file builds this way."""
import os
import shutil

import pytest

from twolayer_ops import ops


@pytest.mark.skipif(os.environ.get("TWOLAYER_OPS_NO_CUDA", "0") not in ("", "0"), reason="CUDA build switched off")
def test_cuda_kernels_built_where_nvcc_exists():
    has_nvcc = shutil.which("nvcc") is not None or bool(os.environ.get("CUDA_HOME"))
    assert ops.HAS_CUDA_KERNELS == has_nvcc, (
        f"nvcc {'found' if has_nvcc else 'absent'} but CUDA kernels {'' if ops.HAS_CUDA_KERNELS else 'not '}registered"
    )
