"""Running the programs under tests/scripts/ in a subprocess, for the tests.

Everything that could crash, hang or exhaust memory runs in a fresh
interpreter with a timeout (:func:`run_script`); a timeout fails the test
as a hang.  Also the platform conditions the reliability tests skip on
(:data:`needs_linux`, :data:`no_asan`).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz_attention import _under_asan

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SCRIPTS = TESTS / "scripts"
TIMEOUT = 60        # seconds a subprocess may take before it counts as a hang
LINUX = sys.platform.startswith("linux")

ASAN = _under_asan()
needs_linux = pytest.mark.skipif(not LINUX, reason="uses /proc and Linux rlimits")
no_asan = pytest.mark.skipif(ASAN, reason="AddressSanitizer reserves the whole address "
                                          "space (RLIMIT_AS tests do not apply)")


def run_script(script, *args, timeout=TIMEOUT, env=None):
    """Run ``python script args...`` (cwd = repository root, the root first
    on ``PYTHONPATH``); a timeout is reported as a hang.

    ``script`` is a file name in tests/scripts/ or a path.
    """
    script = Path(script)
    if not script.is_absolute():
        script = SCRIPTS / script
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in full_env.get("PYTHONPATH", "").split(os.pathsep) if p])
    full_env.update(env or {})
    cmd = [sys.executable, str(script), *map(str, args)]
    try:
        return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"subprocess hung (> {timeout} s); output so far:\n"
                    f"{exc.stdout}\n{exc.stderr}")


def run_code_under_isa(isa, code, *args, timeout=300):
    """``python -c code args...`` with ``CATTN_ISA=isa`` (that kernel
    variant) and the repository root first on ``PYTHONPATH``."""
    env = dict(os.environ, CATTN_ISA=isa)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code, *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def describe(proc):
    """How a finished subprocess ended, with the tails of its output."""
    how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
           else f"exit code {proc.returncode}")
    return f"{how}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


def assert_ok(proc):
    assert proc.returncode == 0, describe(proc)
