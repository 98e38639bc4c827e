"""Soak test: 10,000 cattn calls and a flat resident set size.

Every path is exercised in rotation: the fused kernel (tile and decode
paths, float16 K/V, masks, lengths, segments, weights, key mass, ``out=``),
the three stages, calls rejected by validation (ValueError/TypeError),
calls that cannot allocate their result (MemoryError, zero-stride inputs),
calls whose scratch cannot be allocated (MemoryError under an address-space
cap, ``--rlimit``) and calls interrupted by a signal mid-kernel (the
KeyboardInterrupt path, via SIGALRM).  RSS is sampled every ``--report``
calls; after the warm-up it must not grow by more than ``--max-growth-mib``.

    python tools/soak_leak.py                  # 10,000 calls
    python tools/soak_leak.py --calls 100000 --rlimit

Exit status 0 when RSS stayed flat, 1 otherwise.  The test-suite runs a
2,000-call version (tests/test_reliability_memory.py::test_no_leak_over_2000_calls).
"""
import argparse
import gc
import os
import resource
import signal
import sys
import time

import numpy as np
from numpy.lib.stride_tricks import as_strided

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cattn  # noqa: E402


def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def vm_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


class Interrupted(Exception):
    pass


def _alarm(signum, frame):
    raise Interrupted()


def build_calls(rng):
    q = rng.standard_normal((2, 3, 40, 16)); k = rng.standard_normal((2, 3, 50, 16))
    v = rng.standard_normal((2, 3, 50, 8))
    q32, k32, v32 = (x.astype(np.float32) for x in (q, k, v))
    mask = rng.random((40, 50)) < 0.7
    out = np.empty((2, 3, 40, 8))
    one = np.ones(1)
    huge = as_strided(one, shape=(2**40, 4, 8), strides=(0, 0, 0))
    long_q = rng.standard_normal((1, 4, 1024, 64)).astype(np.float32)
    calls = {
        "plain": lambda: cattn.attention(q, k, v),
        "f32 2 threads": lambda: cattn.attention(q32, k32, v32, num_threads=2),
        "decode": lambda: cattn.attention(q[..., :3, :], k, v, num_threads=2),
        "mask causal weights lse": lambda: cattn.attention(q, k, v, mask=mask, causal=True,
                                                           return_weights=True,
                                                           return_lse=True),
        "f16 K/V lengths sinks": lambda: cattn.attention(
            q32, k32.astype(np.float16), v32.astype(np.float16),
            kv_lengths=np.array([50, 7]), sinks=0.5, num_threads=2),
        "out= key mass": lambda: cattn.attention(q, k, v, out=out, return_weights="key_mass"),
        "fast path": lambda: cattn.attention(q[0, 0], k[0, 0], v[0, 0], num_threads=1),
        "segments softcap": lambda: cattn.attention(q, k, v, q_segments=np.arange(40) % 3,
                                                    kv_segments=np.arange(50) % 3,
                                                    softcap=5.0),
        "scores": lambda: cattn.scores(q, k, num_threads=2),
        "softmax": lambda: cattn.softmax(q),
        "aggregate": lambda: cattn.aggregate(np.abs(q @ np.swapaxes(k, -1, -2)), v),
        "ValueError": lambda: cattn.attention(q, k[..., :3], v),
        "TypeError": lambda: cattn.attention(q.astype(complex), k, v),
        "overlap": lambda: cattn.attention(q, k, v, out=q[..., :8]),
        "MemoryError output": lambda: cattn.attention(huge, huge, huge),
        "interrupted": lambda: _interrupted_call(long_q),
    }
    return calls


def scratch_failure(rng):
    """A call whose per-thread scratch (4 GiB each) cannot be allocated under
    the address-space cap.  Never run it without the cap: the allocation may
    succeed and the kernel would touch it all."""
    feat = rng.standard_normal(2**22)
    q_wide = as_strided(feat, shape=(1, 1024, 2**22), strides=(0, 0, 8))
    k_wide = feat.reshape(1, 1, -1)
    return lambda: cattn.attention(q_wide, k_wide, np.ones((1, 1, 4)), num_threads=2)


def _interrupted_call(q):
    """A call that SIGALRM interrupts inside the kernel (scratch freed on that
    path too)."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.005)
    try:
        cattn.attention(q, q, q, num_threads=2)
        return "completed"
    except Interrupted:
        return "interrupted"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=10000)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--report", type=int, default=1000)
    p.add_argument("--max-growth-mib", type=float, default=4.0)
    p.add_argument("--rlimit", action="store_true",
                   help="cap the address space (VM + 512 MiB) and add scratch failures")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    calls = build_calls(rng)
    names = list(calls)
    counts = {}

    def one(i):
        name = names[i % len(names)]
        try:
            res = calls[name]()
            outcome = res if name == "interrupted" else "ok"
        except (ValueError, TypeError, MemoryError) as exc:
            outcome = type(exc).__name__
        counts[(name, outcome)] = counts.get((name, outcome), 0) + 1

    for i in range(args.warmup):
        one(i)
    if args.rlimit:
        resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + (512 << 20),
                                                resource.RLIM_INFINITY))
        calls["MemoryError scratch"] = scratch_failure(rng)
        names.append("MemoryError scratch")
        for i in range(len(names)):
            one(i)
    counts.clear()
    gc.collect()
    base = rss_mib()
    peak = base
    t0 = time.perf_counter()
    print(f"cattn {cattn.__version__}, {len(names)} call kinds, RSS after warm-up "
          f"{base:.1f} MiB")
    for i in range(args.calls):
        one(i)
        if (i + 1) % args.report == 0:
            gc.collect()
            now = rss_mib()
            peak = max(peak, now)
            print(f"{i + 1:>8} calls  RSS {now:8.1f} MiB  growth {now - base:+6.2f} MiB  "
                  f"{time.perf_counter() - t0:6.1f} s", flush=True)
    gc.collect()
    growth = rss_mib() - base
    print("outcomes:", ", ".join(f"{n}: {o} x{c}" for (n, o), c in sorted(counts.items())))
    ok = growth <= args.max_growth_mib
    print(f"{'FLAT' if ok else 'GROWING'}: {args.calls} calls, RSS growth {growth:+.2f} MiB "
          f"(limit {args.max_growth_mib} MiB), peak {peak:.1f} MiB")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
