"""cattn in forked children: every child finishes, with the parent's results.

A parallel call first (the parent's OpenMP team is up), then ``os.fork()``,
a fork of a fork, forks while another thread of the parent is inside a
parallel region, a ``multiprocessing`` "fork" pool, then "spawn" and
"forkserver" pools.  A forked child must see itself as one (cattn runs it
serially: ``get_num_threads() == 1``) and get the parent's results on every
path; spawned children are fresh processes with full threads.  The parent
still runs in parallel afterwards.  Prints ``FORK-OK`` when all holds (an
assertion error or a child's non-zero exit otherwise).

Run by the test-suite (tests/test_reliability_fork.py) and by hand, from the
repository root, with cattn importable (installed, or ``PYTHONPATH=.`` in a
built checkout)::

    python tests/scripts/fork_children.py
"""
import multiprocessing as mp, os, sys, threading, traceback
import numpy as np, cattn
from cattn import _openmp_helpers as oh

rng = np.random.default_rng(0)
q = rng.standard_normal((2, 4, 300, 32)); k = rng.standard_normal((2, 2, 400, 32))
v = rng.standard_normal((2, 2, 400, 16))
EXPECT = cattn.attention(q, k, v, num_threads=2)     # the parent's OpenMP team is up
EXPECT_DEC = cattn.attention(q[..., :2, :], k, v, num_threads=2)


def work(i=0):
    "Everything a child may call; returns a list of failures."
    bad = []
    if not oh._in_forked_child():
        return ["not flagged as a forked child"]
    if cattn.get_num_threads() != 1:
        bad.append(f"get_num_threads() = {cattn.get_num_threads()} in a forked child")
    for nt in (None, 1, 2, 8):
        out = cattn.attention(q, k, v, num_threads=nt)
        if not np.allclose(out, EXPECT, rtol=1e-12, atol=1e-12):
            bad.append(f"attention(num_threads={nt}) differs")
    if not np.allclose(cattn.attention(q[..., :2, :], k, v, num_threads=2), EXPECT_DEC,
                       rtol=1e-12, atol=1e-12):
        bad.append("decode path differs")
    out, w, lse = cattn.attention(q, k, v, return_weights=True, return_lse=True, num_threads=2)
    if not np.allclose(out, EXPECT, rtol=1e-10, atol=1e-12):
        bad.append("weights path differs")
    s = cattn.scores(q, np.repeat(k, 2, axis=1), num_threads=2)
    a = cattn.aggregate(cattn.softmax(s, num_threads=2), np.repeat(v, 2, axis=1), num_threads=2)
    if not np.allclose(a, EXPECT, rtol=1e-10, atol=1e-12):
        bad.append("scores/softmax/aggregate differ")
    return bad


def fork_and_check(label, target=work):
    pid = os.fork()
    if pid == 0:
        try:
            bad = target()
            if bad:
                print(label, bad, flush=True)
            os._exit(0 if not bad else 3)
        except BaseException:
            traceback.print_exc()
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (label, status)


def grandchild():
    fork_and_check("grandchild")
    return work()


def check_spawned(i):
    # spawn / forkserver children are fresh processes: not "forked", full threads
    out = cattn.attention(q, k, v, num_threads=2)
    return (not oh._in_forked_child(), bool(np.allclose(out, EXPECT, rtol=1e-12, atol=1e-12)))


if __name__ == "__main__":
    fork_and_check("os.fork")
    fork_and_check("fork of a fork", grandchild)
    # fork while another thread of the parent is inside a parallel region
    stop = threading.Event()
    def spin():
        big = rng.standard_normal((2, 4, 512, 64)).astype(np.float32)
        while not stop.is_set():
            cattn.attention(big, big, big, num_threads=2)
    t = threading.Thread(target=spin)
    t.start()
    try:
        for _ in range(5):
            fork_and_check("fork during a parallel call")
    finally:
        stop.set()
        t.join()
    with mp.get_context("fork").Pool(2) as pool:
        for bad in pool.map(work, range(4)):
            assert not bad, ("multiprocessing fork", bad)
    for method in ("spawn", "forkserver"):
        with mp.get_context(method).Pool(1) as pool:
            assert pool.map(check_spawned, [0]) == [(True, True)], method
    # and the parent still runs in parallel afterwards
    assert not oh._in_forked_child()
    assert oh._threads_in_region(2) == 2 or not oh._openmp_enabled()
    assert np.array_equal(cattn.attention(q, k, v, num_threads=2), EXPECT)
    print("FORK-OK")
