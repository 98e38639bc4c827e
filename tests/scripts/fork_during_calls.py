"""Forking while another thread is inside any cattn call: the child finishes.

For each call kind (the fused attention paths, ``scores``, ``softmax``,
``aggregate``, ``merge``), a second thread runs that call in a loop while
the main thread forks repeatedly; every child must run one of each call
kind and exit 0 within ``CHILD_TIMEOUT`` s.  Then the deterministic case:
a thread holds the BLAS limiter's lock (as ``scores``/``aggregate`` do for
their whole GEMM section) while the process forks; the child's ``scores``
must not wait for a lock whose holder does not exist in it.  A child that
hangs is killed and reported.  Prints ``FORK-DURING-OK`` when all holds.

Run by the test-suite (tests/test_reliability_fork.py) and by hand, from
the repository root, with cattn importable (installed, or ``PYTHONPATH=.``
in a built checkout)::

    python tests/scripts/fork_during_calls.py
"""
import os, signal, sys, threading, time
import numpy as np, cattn
from cattn import _threads

CHILD_TIMEOUT = 8.0
rng = np.random.default_rng(0)
q = rng.standard_normal((2, 2, 96, 32)); k = rng.standard_normal((2, 2, 128, 32))
v = rng.standard_normal((2, 2, 128, 16))
s = cattn.scores(q, k, num_threads=2)
w = cattn.softmax(s)
o1, l1 = cattn.attention(q, k[..., :64, :], v[..., :64, :], return_lse=True)
o2, l2 = cattn.attention(q, k[..., 64:, :], v[..., 64:, :], return_lse=True)
KINDS = {
    "attention": lambda: cattn.attention(q, k, v, num_threads=2),
    "decode": lambda: cattn.attention(q[..., :1, :], k, v, num_threads=2),
    "weights": lambda: cattn.attention(q, k, v, return_weights="key_mass", num_threads=2),
    "scores": lambda: cattn.scores(q, k, num_threads=2),
    "softmax": lambda: cattn.softmax(s, num_threads=2),
    "aggregate": lambda: cattn.aggregate(w, v, num_threads=2),
    "merge": lambda: cattn.merge([o1, o2], [l1, l2]),
}
EXPECT = {name: f() for name, f in KINDS.items()}


def child():
    try:
        for name, f in KINDS.items():
            got = f()
            want = EXPECT[name]
            pairs = zip(got, want) if isinstance(got, tuple) else [(got, want)]
            for a, b in pairs:
                if not np.allclose(a, b, rtol=1e-10, atol=1e-12, equal_nan=True):
                    os._exit(3)
        os._exit(0)
    except BaseException:
        os._exit(4)


def fork_and_wait(label, failures):
    pid = os.fork()
    if pid == 0:
        child()
    deadline = time.monotonic() + CHILD_TIMEOUT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                failures.append(f"{label}: child exit {code}")
            return
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            failures.append(f"{label}: child hung (killed after {CHILD_TIMEOUT:.0f} s)")
            return
        time.sleep(0.01)


failures = []
for name, f in KINDS.items():
    stop = threading.Event()

    def loop(f=f):
        while not stop.is_set():
            f()

    t = threading.Thread(target=loop)
    t.start()
    for i in range(4):
        time.sleep(0.003 * i)
        fork_and_wait(f"fork during {name} #{i}", failures)
    stop.set()
    t.join()

# deterministic: the BLAS limiter's lock held by another thread at fork
held, release = threading.Event(), threading.Event()


def hold():
    with _threads.blas_limit(1):
        held.set()
        release.wait()


t = threading.Thread(target=hold)
t.start()
held.wait()
fork_and_wait("fork while the BLAS lock is held", failures)
release.set()
t.join()

if failures:
    print("\n".join(failures))
    sys.exit(1)
print("FORK-DURING-OK")
