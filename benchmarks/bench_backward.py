"""Training: forward + backward and the backward alone, cattn against
PyTorch's CPU scaled_dot_product_attention and a naive NumPy backward.

asv suites (the implementations are ``common.BackwardImpl``: ``cattn``,
``torch``, ``numpy``; torch skipped when not importable, the naive NumPy,
which keeps the Lq x Lk weights, only up to h16_1k):

``BackwardShapes``  the standard shapes small, batch4_512, h16_1k, cross
``BackwardCausal``  causal attention at h16_1k (1, 16, 1024, 1024, 64)

each with ``time_forward_backward``, ``time_backward`` and, at the largest
thread count, ``peakmem_forward_backward``.  The large shapes of the issue
(4k plain and causal, d128_2k, (1, 2, 8192, 8192, 64)) take seconds per
call; they are timed by the side-by-side runner
(``python -m tools.bench --backward``) and by this file as a script, which
runs each measurement in its own process, the implementations interleaved
round by round, medians reported::

    python benchmarks/bench_backward.py [--threads 1 2] [--rounds 3] [--dtype float32]
        [--shapes 1,8,128,128,64 4,8,512,512,64 ...] [--causal]

It prints, per shape and thread count: cattn forward+backward, its backward
alone (and its rate in GFLOP/s counting 2.5x the forward's 4 B H Lq Lk D
flops), torch forward+backward, and the ratio cattn / torch.  Without torch
only cattn's numbers are printed.  Importing this file runs nothing.
"""
import argparse
import itertools
import json
import os
import subprocess
import sys
import time

if __package__:
    from .common import (DTYPES, HAVE_TORCH, MAX_THREADS, SHAPES, THREADS, BackwardImpl,
                         backward_flops, work)
else:                 # run as a script: the repository root holds the package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks.common import (DTYPES, HAVE_TORCH, MAX_THREADS, SHAPES, THREADS,
                                   BackwardImpl, backward_flops, work)

IMPLS = ["cattn", "torch", "numpy"]


class _BackwardSuite:
    """Base of the backward suites: subclasses set ``params`` /
    ``param_names`` (with ``impl`` and ``threads``) and ``args_of(*params)
    -> (impl, dims, dtype, threads, variant)``.  ``limits``: the largest
    ``work`` (B*H*Lq*Lk*D) an implementation runs at; above it setup raises
    NotImplementedError."""

    limits = {"numpy": 1.1e9}
    timeout = 300
    repeat = (1, 5, 20.0)
    number = 0
    min_run_count = 1
    warmup_work = 2e9      # one untimed step in setup up to this size (--quick times one call)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)

        def peakmem_forward_backward(self, *params):
            self.impl.fwd_bwd()

        i = cls.param_names.index("threads")
        # memory does not depend on the thread count: the largest only (a
        # function per class: read by asv before setup, as @skip_for_params sets it)
        peakmem_forward_backward.skip_params = [
            p for p in itertools.product(*cls.params) if p[i] != MAX_THREADS]
        cls.peakmem_forward_backward = peakmem_forward_backward

    def args_of(self, *params):
        raise NotImplementedError

    def setup(self, *params):
        impl, dims, dtype, threads, variant = self.args_of(*params)
        limit = self.limits.get(impl)
        if limit is not None and work(dims) > limit:
            raise NotImplementedError("%s skipped at this size (too slow)" % impl)
        if impl == "torch" and not HAVE_TORCH:
            raise NotImplementedError("torch is not installed")
        self.impl = BackwardImpl(impl, threads, variant, dims, dtype)
        if work(dims) <= self.warmup_work:
            self.impl.fwd_bwd()      # thread-team start, first-touch: not timed

    def teardown(self, *params):
        impl = getattr(self, "impl", None)
        if impl is not None:
            impl.close()
        self.impl = None

    def time_forward_backward(self, *params):
        self.impl.fwd_bwd()

    def time_backward(self, *params):
        self.impl.bwd()


class BackwardShapes(_BackwardSuite):
    """Plain scaled-dot attention at small (1,8,128,128,64), batch4_512
    (4,8,512,512,64), h16_1k (1,16,1024,1024,64) and cross
    (2,8,256,2048,64)."""

    params = [IMPLS, ["small", "batch4_512", "h16_1k", "cross"], DTYPES, THREADS]
    param_names = ["impl", "shape", "dtype", "threads"]

    def args_of(self, impl, shape, dtype, threads):
        return impl, SHAPES[shape], dtype, threads, "plain"


class BackwardCausal(_BackwardSuite):
    """Causal attention at h16_1k (1, 16, 1024, 1024, 64): the kernels skip
    the key tiles above the diagonal; the naive NumPy masks a full matrix."""

    params = [IMPLS, DTYPES, THREADS]
    param_names = ["impl", "dtype", "threads"]

    def args_of(self, impl, dtype, threads):
        return impl, SHAPES["h16_1k"], dtype, threads, "causal"


# ------------------------------------------------------------ the script
DEFAULT_SHAPES = ["1,8,128,128,64", "4,8,512,512,64", "1,16,1024,1024,64",
                  "1,12,2048,2048,128", "2,8,256,2048,64", "1,8,4096,4096,64",
                  "1,2,8192,8192,64"]


def _median(xs):
    return sorted(xs)[len(xs) // 2]


def _worker(impl, shape, nt, dtype, causal, reps):
    """One process's measurement: median of ``reps`` calls of each pass
    (after a warm-up step), printed as JSON."""
    b = BackwardImpl(impl, nt, "causal" if causal else "plain", shape, dtype)
    res = {}
    for name, fn in (("fwd_bwd", b.fwd_bwd), ("bwd", b.bwd)):
        fn()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        res[name] = _median(ts)
    b.close()
    print(json.dumps(res))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--worker", nargs=6)
    a = ap.parse_args()
    if a.worker:
        impl, shape, nt, dtype, causal, reps = a.worker
        return _worker(impl, tuple(map(int, shape.split(","))), int(nt), dtype,
                       causal == "1", int(reps))
    impls = ["cattn", "torch"] if HAVE_TORCH else ["cattn"]
    print(f"dtype {a.dtype}, causal {a.causal}, {a.rounds} rounds, medians (ms)")
    for shape in a.shapes:
        dims = tuple(map(int, shape.split(",")))
        flops_bwd = backward_flops(dims) * (0.5 if a.causal else 1)
        for nt in a.threads:
            got = {i: [] for i in impls}
            bwd = []
            for _ in range(a.rounds):
                for impl in impls:
                    env = dict(os.environ, OMP_NUM_THREADS=str(nt))
                    r = subprocess.run(
                        [sys.executable, os.path.abspath(__file__), "--worker", impl, shape,
                         str(nt), a.dtype, "1" if a.causal else "0", str(a.reps)],
                        capture_output=True, text=True, env=env, check=True)
                    res = json.loads(r.stdout.strip().splitlines()[-1])
                    got[impl].append(res["fwd_bwd"])
                    if impl == "cattn":
                        bwd.append(res["bwd"])
            med = {i: _median(x) * 1e3 for i, x in got.items()}
            b = _median(bwd)
            line = (f"{shape:>20} t={nt}: cattn fwd+bwd {med['cattn']:9.2f}  bwd {b * 1e3:9.2f}"
                    f" ({flops_bwd / b / 1e9:6.1f} GFLOP/s)")
            if "torch" in med:
                line += f"  torch {med['torch']:9.2f}  ratio {med['cattn'] / med['torch']:.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
