"""Builds twolayer_ops._C: the C++ CPU kernels always, the CUDA kernels whenever nvcc is found.

Environment:
  TWOLAYER_OPS_NO_CUDA=1   build the CPU kernels only, even where nvcc exists.
  CUDA_HOME                the CUDA toolkit root; found from nvcc when unset.
  TORCH_CUDA_ARCH_LIST     the GPU archs; the visible GPU's, or 9.0 (sm_90) when none is visible.
"""
import glob
import os
import re
import shutil
import subprocess

from setuptools import setup


def _cuda_home():
    """The toolkit root. Asks nvcc itself, since the nvcc on PATH may be a wrapper script
    outside the toolkit, which misleads torch's own guess (and then -lcudart fails to link)."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return "/usr/local/cuda" if os.path.exists("/usr/local/cuda/bin/nvcc") else None
    try:
        # A dry run prints the driver's settings, TOP (the toolkit root) among them; nothing is compiled.
        cmd = [nvcc, "--dryrun", "-c", "twolayer_ops_probe.cu", "-o", os.devnull]
        dryrun = subprocess.run(cmd, capture_output=True, text=True).stderr
    except OSError:
        return None
    top = re.search(r"^#\$ TOP=(.+)$", dryrun, re.M)
    return os.path.realpath(top.group(1)) if top else os.path.dirname(os.path.dirname(nvcc))


def _build_cuda():
    if os.environ.get("TWOLAYER_OPS_NO_CUDA", "0") not in ("", "0"):
        return False
    home = _cuda_home()
    if home is None or not os.path.exists(os.path.join(home, "bin", "nvcc")):
        return False
    os.environ["CUDA_HOME"] = home  # read by torch.utils.cpp_extension at import
    return True


BUILD_CUDA = _build_cuda()

# Imported after CUDA_HOME is settled.
import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

if BUILD_CUDA and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
    os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"

here = os.path.dirname(os.path.abspath(__file__))
cxx_flags = ["-O3"]  # the C++ standard is torch's own choice (C++20 for torch 2.14)
sources = sorted(os.path.relpath(p, here) for p in glob.glob(os.path.join(here, "csrc", "*.cpp")))
if BUILD_CUDA:
    sources += sorted(os.path.relpath(p, here) for p in glob.glob(os.path.join(here, "csrc", "cuda", "*.cu")))
    extension = CUDAExtension(
        "twolayer_ops._C",
        sources,
        include_dirs=[os.path.join(here, "csrc")],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "-Xptxas=-v"]},
    )
else:
    extension = CppExtension(
        "twolayer_ops._C", sources, include_dirs=[os.path.join(here, "csrc")], extra_compile_args=cxx_flags
    )

setup(
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension},
)
