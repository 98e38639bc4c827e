#!/usr/bin/env python
"""Side-by-side timings of cattn, naive NumPy and PyTorch (the goal table).

A thin wrapper around ``cattn._bench`` (the code behind ``cattn bench``),
usable from a source checkout without installing cattn::

    python benchmarks/compare.py --quick
    python benchmarks/compare.py --shapes 4k decode4k --threads 1 2 --repeat 9 --json run.json
    python benchmarks/compare.py --quick --plot scaling.png
    python benchmarks/compare.py --help

Each implementation runs in its own worker process, alternating, median of
repeats; the same run measures the GEMM GFLOP/s and the read bandwidth that
the % columns refer to (see the docstring of ``cattn/_bench.py``).
"""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)     # the checkout's cattn (in-place build)

# asv imports every module of benchmarks/ while discovering: nothing here
# runs on import, and there is nothing named time_* / peakmem_* to collect.

if __name__ == "__main__":
    from cattn._bench import main
    sys.exit(main(sys.argv[1:]))
