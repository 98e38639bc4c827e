"""The BLAS thread limit of ``scores``/``aggregate`` holds on every thread,
and leaves a user's own threadpoolctl limits working.

threadpoolctl (>= 3.6) lets one "controlling" Python thread change
OpenBLAS's thread count and silently drops the limits of the others.  In a
fresh process (nothing has taken the control yet):

1. inside the stage calls' limiter, BLAS runs on the asked thread count
   whichever thread asks (the main thread, then two worker threads);
2. ``scores``/``aggregate`` from a worker thread are bitwise equal to the
   same calls on the main thread, for ``num_threads`` 1 and 2;
3. after those calls, a user's ``threadpool_limits(1, "blas")`` in yet
   another thread still takes effect there, and BLAS is back to its
   default afterwards.

Prints ``BLAS-LIMITS-OK`` (an assertion error otherwise); skipped with
``NO-BLAS`` when threadpoolctl sees no BLAS.

Run by the test-suite (tests/test_reliability_threads.py) and by hand, from
the repository root, with cattn importable (installed, or ``PYTHONPATH=.``
in a built checkout)::

    python tests/scripts/blas_limits_other_threads.py
"""
import sys, threading
import numpy as np, cattn
from threadpoolctl import threadpool_info, threadpool_limits
from cattn._threads import blas_limit


def blas():
    return sorted({d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"})


default = blas()
if not default:
    print("NO-BLAS")
    sys.exit(0)


def in_thread(f):
    box = []
    t = threading.Thread(target=lambda: box.append(f()))
    t.start()
    t.join(60)
    assert not t.is_alive(), "worker thread hung"
    return box[0]


def limited(n):
    with blas_limit(n):
        return blas()


# 1. the limiter applies on any thread
assert limited(1) == [1], limited(1)
for n in (1, 2):
    got = in_thread(lambda n=n: limited(n))
    assert got == [n], f"blas_limit({n}) in a worker thread gave BLAS {got}"
assert blas() == default, (blas(), default)

# 2. stage calls from a worker equal the main thread's, bit for bit
rng = np.random.default_rng(0)
q = rng.standard_normal((3, 200, 64)).astype(np.float32)
k = rng.standard_normal((3, 300, 64)).astype(np.float32)
v = rng.standard_normal((3, 300, 48)).astype(np.float32)
w = cattn.softmax(cattn.scores(q, k))
for n in (1, 2):
    main = (cattn.scores(q, k, num_threads=n), cattn.aggregate(w, v, num_threads=n))
    worker = in_thread(lambda n=n: (cattn.scores(q, k, num_threads=n),
                                    cattn.aggregate(w, v, num_threads=n)))
    for a, b, name in zip(main, worker, ("scores", "aggregate")):
        assert np.array_equal(a, b), f"{name}(num_threads={n}) differs in a worker thread"

# 3. the user's own limit in another thread still works
def users_limit():
    with threadpool_limits(1, user_api="blas"):
        inside = blas()
    return inside, blas()


inside, after = in_thread(users_limit)
assert inside == [1], f"the user's threadpool_limits(1) gave BLAS {inside}"
assert after == default and blas() == default, (after, blas(), default)
print("BLAS-LIMITS-OK")
