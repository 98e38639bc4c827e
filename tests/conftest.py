"""Fixtures and pytest settings of the cattn test-suite.

The shared helpers (the oracle comparison, its tolerance rule, random
inputs) are in tests/_oracle.py; running the scripts under tests/scripts/
in a subprocess is tests/_subproc.py.
"""

import os

import numpy as np
import pytest

# tests/scripts/ holds programs the tests run in subprocesses (and that run
# by hand); importing one runs it, so `--doctest-modules` must not collect them.
collect_ignore = ["scripts"]


@pytest.fixture
def rng():
    """A seeded random generator (deterministic per test)."""
    return np.random.default_rng(12345)


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run the tests marked slow (or set CATTN_SLOW=1)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow") or os.environ.get("CATTN_SLOW", "") not in ("", "0"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow or CATTN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
