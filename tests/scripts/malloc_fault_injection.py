"""Every malloc of cattn's kernels failed on purpose: MemoryError, nothing worse.

Needs the LD_PRELOAD shim tests/scripts/failmalloc.c, which makes ``malloc``
fail when called from cattn's ``_kernels`` module: for every call, or for
the call with a given number.  Seven call kinds (fast path, serial,
parallel, decode, weights, key mass, additive scores) are run with every
malloc failing (each call must raise MemoryError), then with none failing
(the mallocs are counted), then with each malloc failing once, alone: that
must be a MemoryError of exactly one call, the other calls staying exact.
Prints ``FAULTS {json}`` with the malloc count.  Linux; not under
AddressSanitizer.

Run by the test-suite (tests/test_reliability_memory.py), which builds the
shim itself, and by hand, from the repository root, with cattn importable
(installed, or ``PYTHONPATH=.`` in a built checkout)::

    cc -O1 -shared -fPIC -o /tmp/failmalloc.so tests/scripts/failmalloc.c -ldl
    LD_PRELOAD=/tmp/failmalloc.so python tests/scripts/malloc_fault_injection.py
"""
import ctypes, json, sys
import numpy as np, cattn
shim = ctypes.CDLL(None)
if not hasattr(shim, "failmalloc_set"):
    sys.exit("the malloc shim tests/scripts/failmalloc.c is not preloaded (see the docstring)")
rng = np.random.default_rng(0)
q = rng.standard_normal((2, 3, 40, 16)); k = rng.standard_normal((2, 3, 50, 16))
v = rng.standard_normal((2, 3, 50, 8))
big = rng.standard_normal((1, 4, 600, 32))
calls = {
    "fast path": lambda: cattn.attention(q, k, v),
    "serial": lambda: cattn.attention(q, k, v, causal=True, num_threads=1),
    "parallel": lambda: cattn.attention(big, big, big, num_threads=2),
    "decode": lambda: cattn.attention(big[..., :2, :], big, big, num_threads=2),
    "weights": lambda: cattn.attention(big, big, big, return_weights=True, num_threads=2),
    "key mass": lambda: cattn.attention(big, big, big, return_weights="key_mass"),
    "additive scores": lambda: cattn.scores(q, k, score="additive", num_threads=2),
}
expect = {n: f() for n, f in calls.items()}

def run_all():
    failed = []
    for name, fn in calls.items():
        try:
            got = fn()
        except MemoryError:
            failed.append(name)
            continue
        for a, b in zip(got if isinstance(got, tuple) else (got,),
                        expect[name] if isinstance(expect[name], tuple) else (expect[name],)):
            assert np.allclose(a, b, rtol=1e-12, atol=1e-14), name
    return failed

shim.failmalloc_set(-1)                       # every cattn malloc fails
assert run_all() == list(calls), "a call survived a failed malloc?"
all_failed = shim.failmalloc_failed()
shim.failmalloc_set(-2)                       # none fails: count the mallocs
assert run_all() == []
n = shim.failmalloc_seen()
for t in range(n):                            # each malloc fails once, alone
    shim.failmalloc_set(t)
    failed = run_all()
    assert shim.failmalloc_failed() == 1 and len(failed) == 1, (t, failed)
shim.failmalloc_set(-3)
assert run_all() == []
print("FAULTS " + json.dumps({"mallocs": n, "failed_all_mode": all_failed, "single": n}))
