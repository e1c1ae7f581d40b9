"""Builds twolayer_ops._C: the C++ CPU kernels always, and the CUDA kernels wherever nvcc is found
and torch is a CUDA build.

Environment:
  TWOLAYER_OPS_NO_CUDA=1   build the CPU kernels only, even where nvcc exists (a CPU build of torch
                           always does).
  CUDA_HOME                the CUDA toolkit root; found from nvcc when unset.
  TORCH_CUDA_ARCH_LIST     the GPU archs; the visible GPU's, or 9.0 (sm_90) when none is visible.
                           Compute capability 9.0 machine code is always built as sm_90a (see _nvcc_arch_flags).
"""
import glob
import os
import re
import shutil
import subprocess
import sys

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
    # Plain `import torch` leaves torch.utils.cpp_extension (which reads CUDA_HOME once) unimported.
    import torch

    if torch.version.cuda is None:  # a CPU build of torch has no CUDA libraries to link against
        if shutil.which("nvcc"):
            print(f"setup.py: torch {torch.__version__} is a CPU build; building the CPU kernels only")
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


def _nvcc_arch_flags():
    """torch's -gencode flags for TORCH_CUDA_ARCH_LIST, with the 9.0 machine code built as sm_90a.

    The Hopper path (csrc/cuda/linear_relu_sm90.cu) needs wgmma and setmaxnreg, which exist only in the
    arch-specific sm_90a target. Every compute capability 9.0 GPU (H100, H200, GH200) runs sm_90a code, so
    the plain sm_90 cubin is replaced rather than kept beside it: one cubin per arch leaves the driver no
    choice to make, and the portable kernels compile once, as before. sm_90a is added even when the list
    names no 9.0 arch, so that an H100 always finds it. PTX (+PTX) and the other archs stay as listed.
    Passing any arch flag ourselves stops torch from adding its own, hence the whole list is built here.
    """
    try:
        from torch.utils.cpp_extension import _get_cuda_arch_flags  # the list torch would have used
    except ImportError:  # a private helper (torch 2.11 to 2.14 have it): without it, torch's own choice
        print("setup.py: torch has no _get_cuda_arch_flags; building without sm_90a (no Hopper path)")
        return []
    sm90a = "-gencode=arch=compute_90a,code=sm_90a"
    flags = [f for f in _get_cuda_arch_flags() if f != "-gencode=arch=compute_90,code=sm_90"]
    return flags + ([sm90a] if sm90a not in flags else [])


def _shared_libstdcxx_flags():
    """Links the process's libstdc++ where the C++ compiler would find only the static one.

    Some toolchains (the GPU image's relocated GCC, CXX=/opt/gcc/bin/g++) have libstdc++.a but no
    libstdc++.so on their link path, so the extension silently carried its own copy of libstdc++. Its
    locale facets are not the ones torch's streams were set up with, and the first number formatted into
    an error message (TORCH_CHECK(..., "got ", step)) segfaulted. Naming the shared library resolves
    every libstdc++ symbol there first; where the compiler finds it anyway, nothing changes."""
    cxx = os.environ.get("CXX", "c++")
    try:
        found = subprocess.run([*cxx.split(), "-print-file-name=libstdc++.so"], capture_output=True, text=True).stdout
    except OSError:
        return []
    return [] if os.path.isabs(found.strip()) else ["-l:libstdc++.so.6"]


here = os.path.dirname(os.path.abspath(__file__))
cxx_flags = ["-O3"]  # the C++ standard is torch's own choice (C++20 for torch 2.14)
link_flags = []
if sys.platform.startswith("linux"):
    # at::parallel_for is an inline OpenMP region: compiled without -fopenmp it silently runs on one
    # thread. The libgomp linked here has the soname of torch's own, so the process keeps one runtime.
    cxx_flags.append("-fopenmp")
    link_flags.append("-fopenmp")
    link_flags += _shared_libstdcxx_flags()
sources = sorted(os.path.relpath(p, here) for p in glob.glob(os.path.join(here, "csrc", "*.cpp")))
if BUILD_CUDA:
    sources += sorted(os.path.relpath(p, here) for p in glob.glob(os.path.join(here, "csrc", "cuda", "*.cu")))
    extension = CUDAExtension(
        "twolayer_ops._C",
        sources,
        include_dirs=[os.path.join(here, "csrc")],
        extra_compile_args={
            "cxx": cxx_flags,
            "nvcc": ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "-Xptxas=-v", *_nvcc_arch_flags()],
        },
        extra_link_args=link_flags,
    )
else:
    extension = CppExtension(
        "twolayer_ops._C",
        sources,
        include_dirs=[os.path.join(here, "csrc")],
        extra_compile_args=cxx_flags,
        extra_link_args=link_flags,
    )

setup(
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension},
)
