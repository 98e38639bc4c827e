"""Concurrent stage calls leave BLAS at its thread count.

``cattn.scores`` limits BLAS threads (threadpoolctl) around its work; 8
Python threads x 200 calls at once must leave BLAS with the thread count
it had before (a fresh process: BLAS at its default, as in a user's
program).  Prints the counts before and after; an assertion error if they
differ.  Needs threadpoolctl.

Run by the test-suite (tests/test_reliability_threads.py) and by hand, from
the repository root, with cattn importable (installed, or ``PYTHONPATH=.``
in a built checkout)::

    python tests/scripts/blas_threads_race.py
"""
import threading
import numpy as np, cattn, threadpoolctl
def blas():
    return sorted({d["num_threads"] for d in threadpoolctl.threadpool_info()
                   if d["user_api"] == "blas"})
q = np.random.default_rng(0).standard_normal((4, 64, 32))
before = blas()
def work():
    for _ in range(200):
        cattn.scores(q, q, num_threads=2)
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("BLAS threads before", before, "after", blas())
assert blas() == before
