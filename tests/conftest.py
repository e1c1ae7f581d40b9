"""Hypothesis profiles for the property tests: "repeatable" (the default: the same examples every run,
so CI is reproducible) and "explore" (fresh random examples: `pytest --hypothesis-profile=explore`).
And the CUDA emulation library (tests/emulation.py), built once per session."""
import pytest
from hypothesis import settings

from .emulation import CXX, load_library

settings.register_profile("repeatable", derandomize=True, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile("repeatable")  # --hypothesis-profile, read after this file, overrides it


@pytest.fixture(scope="session")
def emulation(tmp_path_factory):
    if CXX is None:
        pytest.skip("no C++ compiler (g++) for the CUDA emulation")
    return load_library(tmp_path_factory.mktemp("emulation") / "cuda_emulation.so")
