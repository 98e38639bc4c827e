"""Reliability, fork: cattn after ``os.fork()`` finishes.

Promise 1 of docs/reliability.md ("Guarantees"): cattn after ``os.fork()`` /
multiprocessing "fork" finishes (children run serially); spawn and
forkserver work too.  The checks are tests/scripts/fork_children.py, run in
a subprocess with a timeout.

Tests whose docstring names a BUG-n are regressions of the bugs found while
writing these tests (docs/reliability.md); all are fixed.  A newly found bug
gets an ``xfail(strict=True)`` test, which turns into a loud XPASS once it is
fixed.
"""
import os

import pytest

from _subproc import assert_ok, run_script


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
def test_fork_children_finish():
    proc = run_script("fork_children.py")
    assert_ok(proc)
    assert "FORK-OK" in proc.stdout



@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
def test_fork_during_every_call_kind_from_another_thread():
    """A child forked while another thread was inside ``scores``/``aggregate``
    inherited the BLAS limiter's lock held and blocked on it for ever."""
    proc = run_script("fork_during_calls.py")
    assert_ok(proc)
    assert "FORK-DURING-OK" in proc.stdout
