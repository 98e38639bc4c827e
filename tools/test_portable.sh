#!/usr/bin/env bash
# Build the standard-C kernels (CATTN_PORTABLE=1: one lane, no vector
# extensions -- what an MSVC build compiles) in a scratch copy of the tree
# and run the kernel test suites against them.  Used by .ci/run.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$root"
git ls-files -z | xargs -0 cp --parents -t "$work"
cd "$work"
python -m pip install -q "cython>=3" setuptools numpy scipy ml_dtypes
CATTN_PORTABLE=1 python setup.py -q build_ext --inplace >/dev/null
python -c "import cattn; assert cattn._kernels.isa_name() == 'portable'"
python -m pytest -q -p no:cacheprovider tests/test_core.py tests/test_production.py \
    tests/test_gqa_decode.py tests/test_isa.py tests/test_backward.py tests/test_bf16.py \
    tests/test_int8_cache.py tests/test_paged.py tests/test_paged_formats.py \
    tests/test_decode_rows.py tests/test_io_formats.py
