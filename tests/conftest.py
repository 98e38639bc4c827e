"""Fixtures and pytest settings of the cattn test-suite.

The shared helpers (the oracle comparison, its tolerance rule, random
inputs) are in tests/_oracle.py; running the scripts under tests/scripts/
in a subprocess is tests/_subproc.py.
"""

import numpy as np
import pytest

# tests/scripts/ holds programs the tests run in subprocesses (and that run
# by hand); importing one runs it, so `--doctest-modules` must not collect them.
collect_ignore = ["scripts"]


@pytest.fixture
def rng():
    """A seeded random generator (deterministic per test)."""
    return np.random.default_rng(12345)
