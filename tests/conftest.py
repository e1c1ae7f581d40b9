"""Hypothesis profiles for the property tests: "repeatable" (the default: the same examples every run,
so CI is reproducible) and "explore" (fresh random examples: `pytest --hypothesis-profile=explore`)."""
from hypothesis import settings

settings.register_profile("repeatable", derandomize=True, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile("repeatable")  # --hypothesis-profile, read after this file, overrides it
