"""Static typing: the stubs shipped with cattn (``py.typed`` + ``*.pyi``).

* ``mypy --strict examples/typed_usage.py`` passes (the example uses the whole
  public API and also lists calls the stubs must reject);
* ``python -m mypy.stubtest cattn`` passes: every stub matches the runtime
  (the compiled modules included);
* the example also runs.

The mypy checks skip when mypy is missing and when ``CATTN_SKIP_SLOW=1``; they
take about 10 s.  They check whichever cattn ``import cattn`` finds: the
source tree (built in place) or an installed wheel.
"""
import importlib.util
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import cattn

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "typed_usage.py"
PKG_PARENT = Path(cattn.__file__).resolve().parents[1]
IN_TREE = PKG_PARENT == ROOT

# The mypy options of both checks: those of the [tool.mypy] snippet in
# pyproject.toml that matter here, as an INI file so that the
# test also runs against an installed wheel, away from pyproject.toml.
# Optional dependencies are not analysed (torch alone would add ~1400 files
# and half a minute).  No warn_unused_configs: stubtest counts its notes as
# build errors.
MYPY_CONFIG = """\
[mypy]

[mypy-threadpoolctl.*,tqdm.*]
ignore_missing_imports = True

[mypy-dask.*,distributed.*,matplotlib.*,torch.*,jax.*]
ignore_missing_imports = True
follow_imports = skip
follow_imports_for_stubs = True
"""

slow = pytest.mark.skipif(
    os.environ.get("CATTN_SKIP_SLOW", "") not in ("", "0"),
    reason="CATTN_SKIP_SLOW is set",
)
needs_mypy = pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None, reason="mypy is not installed"
)
needs_example = pytest.mark.skipif(
    not EXAMPLE.exists(), reason="examples/typed_usage.py is not next to the tests"
)


def _run(args, tmp_path):
    """Run ``python -m <args>`` where mypy and the runtime both resolve
    ``cattn`` to the module this process imported.

    In the source tree, from the source root: mypy checks cattn/__init__.py
    and the stubs it imports as project code, with --strict.  For an
    installed cattn, from an empty directory: mypy finds it in site-packages,
    which needs py.typed, as a user's mypy would.  PYTHONPATH is dropped (some
    tests set it): mypy would silence every error under a PYTHONPATH entry.
    """
    cfg = tmp_path / "mypy.ini"
    cfg.write_text(MYPY_CONFIG)
    cwd = ROOT if IN_TREE else tmp_path
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    proc = subprocess.run(
        [sys.executable, "-m"] + [a.format(cfg=cfg, cache=tmp_path / "cache") for a in args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_stubs_are_shipped():
    pkg = Path(cattn.__file__).resolve().parent
    for name in ("py.typed", "_kernels.pyi", "_openmp_helpers.pyi", "_api.pyi",
                 "_config.pyi", "explain/__init__.pyi", "reference.pyi"):
        assert (pkg / name).is_file(), f"{name} is missing from {pkg}"


@needs_example
def test_example_runs(capsys):
    try:
        runpy.run_path(str(EXAMPLE), run_name="__main__")
    finally:
        cattn.set_num_threads(None)     # the example changes it
    assert "typed_usage: OK" in capsys.readouterr().out


@slow
@needs_mypy
@needs_example
def test_mypy_strict_example(tmp_path):
    rc, out = _run(["mypy", "--config-file", "{cfg}", "--cache-dir", "{cache}",
                    "--strict", "--no-error-summary", str(EXAMPLE)], tmp_path)
    assert rc == 0, out


@slow
@needs_mypy
def test_stubtest(tmp_path):
    allow = tmp_path / "allowlist.txt"
    # The one allowed entry: cattn.dask cannot be imported without its
    # optional dependency, so stubtest cannot compare it then.
    allow.write_text("" if importlib.util.find_spec("dask") else "cattn.dask\n")
    # likewise cattn.torch and cattn.jax without torch / jax
    with allow.open("a") as f:
        for mod in ("torch", "jax"):
            if importlib.util.find_spec(mod) is None:
                f.write(f"cattn.{mod}\n")
    rc, out = _run(["mypy.stubtest", "--mypy-config-file", "{cfg}",
                    "--allowlist", str(allow), "cattn"], tmp_path)
    assert rc == 0, out
