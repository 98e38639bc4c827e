"""MemoryError, not a crash, when the address space runs out (RLIMIT_AS).

After warming every path, the address space is capped at its current size
+ 256 MiB; then a 1 GiB output, 1 GiB of weights, 4 GiB of per-thread
scratch (2 threads, 1 thread, the num_threads=1 fast path) and a ``scores``
copy must each raise MemoryError.  300 more failing calls may grow RSS by
less than 8 MiB, and a call afterwards is still exact.  Prints
``RLIMIT-OK`` when all holds.  Linux; not under AddressSanitizer (which
reserves the whole address space).

Run by the test-suite (tests/test_reliability_memory.py) and by hand, from
the repository root, with cattn importable (installed, or ``PYTHONPATH=.``
in a built checkout)::

    python tests/scripts/rlimit_memoryerror.py
"""
import os, resource, gc
import numpy as np, cattn
from numpy.lib.stride_tricks import as_strided

def vm():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
def zs(shape, base):
    return as_strided(base, shape=shape, strides=(0,) * (len(shape) - 1) + (base.strides[-1],),
                      writeable=False)

rng = np.random.default_rng(0)
small = rng.standard_normal((2, 4, 100, 16))
expect = cattn.attention(small, small, small, num_threads=2)
# warm every path (and the OpenMP team) before the cap
cattn.attention(small, small, small, num_threads=2, return_weights=True)
cattn.attention(small[..., :2, :], small, small, num_threads=2)
cattn.attention(small[0, 0], small[0, 0], small[0, 0], num_threads=1)
cattn.scores(small, small, num_threads=2)

row = rng.standard_normal(8)
D = 2**22                                    # 32 MiB of float64 features
feat = rng.standard_normal(D)
q_wide = zs((1, 1024, D), feat)              # 1024 queries, one buffer
k_wide = feat.reshape(1, 1, D)
v_one = np.ones((1, 1, 4))
q_fast = rng.standard_normal((1, 9, 2**21))  # contiguous: the num_threads=1 fast path
k_fast = q_fast[:, :1].copy()
v_fast = np.ones((1, 1, 4))

resource.setrlimit(resource.RLIMIT_AS, (vm() + (256 << 20), resource.RLIM_INFINITY))

cases = {
    "output 1 GiB": lambda: cattn.attention(zs((2**27, 1, 8), row), zs((1, 4, 8), row),
                                            zs((1, 4, 8), row)),
    "weights 1 GiB": lambda: cattn.attention(zs((1, 2**14, 8), row), zs((1, 2**13, 8), row),
                                             zs((1, 2**13, 8), row), return_weights=True,
                                             kv_lengths=np.array([0])),
    "scratch, 2 threads": lambda: cattn.attention(q_wide, k_wide, v_one, num_threads=2),
    "scratch, 1 thread": lambda: cattn.attention(q_wide, k_wide, v_one, num_threads=1,
                                                 causal=True),
    "scratch, fast path": lambda: cattn.attention(q_fast, k_fast, v_fast, num_threads=1),
    "scores copy": lambda: cattn.scores(zs((2**12, 2**12, 8), row), zs((1, 2**12, 8), row)),
}
for name, fn in cases.items():
    try:
        fn()
    except MemoryError:
        continue
    raise AssertionError(f"{name}: no MemoryError")

# failing over and over leaks nothing (scratch is freed on the error path)
def fail_all(rounds):
    for _ in range(rounds):
        for fn in cases.values():
            try:
                fn()
            except MemoryError:
                pass
    gc.collect()

fail_all(3)
r0 = rss()
fail_all(50)
grown = rss() - r0
assert grown < (8 << 20), f"RSS grew {grown / 2**20:.1f} MiB over 300 failed calls"
assert np.array_equal(cattn.attention(small, small, small, num_threads=2), expect)
print("RLIMIT-OK")
