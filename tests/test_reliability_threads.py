"""Reliability, threads: concurrent calls are exact; threadpoolctl applies.

Promise 5 of docs/reliability.md ("Guarantees"): 8 Python threads x 200
mixed calls equal a serial run; concurrent stage calls leave BLAS's thread
count as it was (tests/scripts/blas_threads_race.py, in a subprocess: a
fresh BLAS); threadpoolctl sees and limits cattn's OpenMP.

Tests whose docstring names a BUG-n are regressions of the bugs found while
writing these tests (docs/reliability.md); all are fixed.  A newly found bug
gets an ``xfail(strict=True)`` test, which turns into a loud XPASS once it is
fixed.
"""
import os
import threading

import numpy as np
import pytest

import cattn
from cattn import _openmp_helpers as omp_helpers
from _subproc import TIMEOUT, assert_ok, needs_linux, run_script


def _call_specs(rng):
    """Mixed shapes, dtypes, options and entry points, each a closure."""
    specs = []
    for i, dt in enumerate([np.float32, np.float64, np.float16, np.float64]):
        lead = [(2, 3), (4,), (1, 2), (3, 2)][i]
        q = rng.standard_normal(lead + (33 + 7 * i, 16)).astype(dt)
        k = rng.standard_normal(lead + (45 + 5 * i, 16)).astype(dt)
        v = rng.standard_normal(lead + (45 + 5 * i, 8)).astype(dt)
        specs += [
            lambda q=q, k=k, v=v: cattn.attention(q, k, v),
            lambda q=q, k=k, v=v: cattn.attention(q, k, v, causal=True, num_threads=2),
            lambda q=q, k=k, v=v: cattn.attention(q[..., :2, :], k, v, num_threads=2),
            lambda q=q, k=k, v=v: cattn.attention(q, k, v, score="cosine", window=(3, 1),
                                                  return_lse=True),
            lambda q=q, k=k, v=v: cattn.attention(q, k, v, return_weights=True, num_threads=2),
            lambda q=q, k=k: cattn.scores(q, k, num_threads=2),
            lambda q=q: cattn.softmax(q, axis=-2),
        ]
    q = rng.standard_normal((2, 4, 70, 32)).astype(np.float32)
    kv = rng.standard_normal((2, 2, 600, 32)).astype(np.float16)
    specs.append(lambda: cattn.attention(q, kv, kv, num_threads=2))               # GQA f16 K/V
    specs.append(lambda: cattn.attention(q[..., :1, :], kv, kv))                  # decode
    big = rng.standard_normal((1, 2, 400, 32))
    specs.append(lambda: cattn.attention(big, big, big))                          # team path
    bias = rng.standard_normal((400, 400))
    specs.append(lambda: cattn.attention(big, big, big, mask=big[0, 0, :, :1] > 0, bias=bias,
                                         kv_lengths=np.array([300])))
    logits = big @ np.swapaxes(big, -1, -2)
    specs.append(lambda: cattn.aggregate(cattn.softmax(logits), big, num_threads=2))
    return specs


def test_8_threads_x_200_calls_equal_serial():
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=None, user_api="blas"):   # BUG-6 may change BLAS threads
        _8_threads_x_200_calls()


def _8_threads_x_200_calls():
    specs = _call_specs(np.random.default_rng(7))
    expect = [spec() for spec in specs]              # the serial run
    n_threads, n_calls = 8, 200
    barrier = threading.Barrier(n_threads)
    errors = []

    def worker(t):
        try:
            barrier.wait()
            for i in range(n_calls):
                j = (t * 7 + i) % len(specs)
                got = specs[j]()
                exp = expect[j]
                got = got if isinstance(got, tuple) else (got,)
                ex = exp if isinstance(exp, tuple) else (exp,)
                for a, b in zip(got, ex):
                    if not np.array_equal(a, b, equal_nan=True):
                        errors.append(f"thread {t} call {i}: spec {j} differs")
        except Exception as exc:         # pragma: no cover - reported below
            errors.append(f"thread {t}: {type(exc).__name__}: {exc}")
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    assert not errors, errors[:5]


def _blas_threads():
    from threadpoolctl import threadpool_info
    return sorted({d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"})


# BUG-6 (fixed): interleaved threadpoolctl limits of concurrent stage calls.


def test_interleaved_blas_limits_restore_blas_threads():
    """BUG-6 (fixed): a BLAS limit is set and restored by the same thread, and
    a second thread's stage call waits instead of interleaving with it."""
    import threading
    from threadpoolctl import threadpool_limits
    from cattn._threads import blas_limit as limit
    if not _blas_threads():
        pytest.skip("no BLAS seen")
    with threadpool_limits(3, user_api="blas"):
        a = limit(1)
        a.__enter__()
        entered = threading.Event()

        def other():
            with limit(1):
                entered.set()
        t = threading.Thread(target=other)
        t.start()
        assert not entered.wait(0.2)      # blocked while A holds the section
        a.__exit__(None, None, None)
        t.join(10)
        assert entered.is_set()
        after = _blas_threads()
    assert after == [3]


def test_concurrent_stage_calls_restore_blas_threads():
    # a fresh process: BLAS at its default thread count, as in a user's program
    proc = run_script("blas_threads_race.py")
    assert_ok(proc)


def _thread_cpu_ticks():
    """{tid: utime + stime ticks} of this process's threads."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[int(tid)] = int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return out


@needs_linux
def test_threadpoolctl_controls_cattn_openmp():
    from threadpoolctl import threadpool_info, threadpool_limits
    if not omp_helpers._openmp_enabled():
        pytest.skip("built without OpenMP")
    # threadpoolctl finds the OpenMP runtime cattn's extension is linked to
    with open("/proc/self/maps") as f:
        mapped = {os.path.realpath(ln.split()[-1]) for ln in f if "omp" in ln.split()[-1]}
    omp = [d for d in threadpool_info() if d["user_api"] == "openmp"]
    assert omp, "threadpoolctl does not see an OpenMP runtime after importing cattn"
    assert {os.path.realpath(d["filepath"]) for d in omp} & mapped

    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 4, 1024, 64))
    if cattn.get_num_threads() < 2:
        pytest.skip("one core: nothing to limit")
    with threadpool_limits(1, user_api="openmp"):
        assert cattn.get_num_threads() == 1
        assert omp_helpers._openmp_effective_n_threads(None) == 1
        assert omp_helpers._threads_in_region(cattn.get_num_threads()) == 1
        main = threading.get_native_id()
        t0 = _thread_cpu_ticks()
        for _ in range(20):
            limited = cattn.attention(q, q, q)
        t1 = _thread_cpu_ticks()
        mine = t1.get(main, 0) - t0.get(main, 0)
        others = sum(t1[t] - t0.get(t, 0) for t in t1 if t != main)
        # every cattn thread but the caller stays idle under the limit
        assert others <= max(2, 0.1 * mine), (mine, others)
    assert cattn.get_num_threads() > 1
    np.testing.assert_allclose(limited, cattn.attention(q, q, q), rtol=1e-12, atol=1e-14)


def test_blas_limit_holds_on_every_thread():
    """With threadpoolctl >= 3.6 only one "controlling" thread could change
    OpenBLAS: stage calls from a worker thread ignored ``num_threads``, and
    after one ``cattn.scores`` call a user's own ``threadpool_limits(1,
    "blas")`` in another thread was silently dropped.  A fresh process
    (nothing has taken the control yet)."""
    proc = run_script("blas_limits_other_threads.py")
    assert_ok(proc)
    assert "BLAS-LIMITS-OK" in proc.stdout or "NO-BLAS" in proc.stdout


@needs_linux
@pytest.mark.parametrize("env", [{"OMP_PROC_BIND": "true"}, {"OMP_PLACES": "cores"},
                                 {"OMP_PROC_BIND": "spread", "OMP_PLACES": "threads"}])
def test_thread_binding_keeps_the_default_thread_count(env):
    """With OMP_PROC_BIND (or OMP_PLACES) libgomp pins the main thread when
    it loads, so ``sched_getaffinity`` then reports one CPU and the default
    thread count fell to 1.  The usable cores are those the process had
    before OpenMP bound it."""
    import subprocess
    import sys
    from _subproc import ROOT
    code = ("import os; before = len(os.sched_getaffinity(0)); import cattn; "
            "from cattn import _options; "
            "print(before, _options.cpu_count(), cattn.get_num_threads())")
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("OMP_", "GOMP_"))}
    full.update(env, PYTHONPATH=os.pathsep.join([str(ROOT), full.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full, timeout=TIMEOUT, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    before, cores, default = map(int, proc.stdout.split())
    assert cores == before and default == before, proc.stdout


def test_scipy_blas_loads_at_the_first_stage_call_and_is_capped():
    """``import cattn`` does not import SciPy (its BLAS is looked up at the
    first GEMM); the stage calls' BLAS cap still covers SciPy's BLAS, which
    must therefore be loaded before the cap lists the libraries."""
    import subprocess
    import sys
    from _subproc import ROOT
    code = (
        "import sys, numpy as np, cattn\n"
        "assert 'scipy' not in sys.modules, 'import cattn imported scipy'\n"
        "from threadpoolctl import threadpool_info\n"
        "from cattn._threads import blas_limit\n"
        "q, k = np.ones((2, 3, 5, 8)), np.ones((2, 3, 7, 8))\n"
        "assert np.allclose(cattn.scores(q, k, num_threads=2), 8 / np.sqrt(8))\n"
        "assert 'scipy.linalg.cython_blas' in sys.modules\n"
        "with blas_limit(1):\n"
        "    inside = [d for d in threadpool_info() if d['user_api'] == 'blas']\n"
        "assert len(inside) >= 1, inside\n"
        "assert all(d['num_threads'] == 1 for d in inside), inside\n"
        "print('OK')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=TIMEOUT, cwd=ROOT)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr
