"""Cost of the Ctrl-C polling in the fused kernel.

cattn's kernel polls for pending signals (every 20 ms, between work items)
only when it is called from the main thread: the same call made from another
Python thread never polls.  Timing a call both ways isolates the overhead of
the polling (the GIL re-acquisition and ``PyErr_CheckSignals``) from the rest.

    python tools/bench_interrupt_overhead.py [--repeat 15] [--quick]

Prints, per shape, the median time on the main thread (polling) and on a
persistent worker thread (no polling), calls alternating with short pauses
(so that neither thread's idle OpenMP team spins while the other computes),
and their relative difference; a difference within the run-to-run noise
(relative standard deviation, last column) means the polling costs nothing
measurable.
"""
import argparse
import os
import queue
import statistics
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cattn  # noqa: E402

SHAPES = [
    # (label, lead, Lq, Lk, D, dtype, kwargs)
    ("prefill 8x1024x64 f32", (1, 8), 1024, 1024, 64, np.float32, {}),
    ("prefill 8x2048x64 f32 causal", (1, 8), 2048, 2048, 64, np.float32, {"causal": True}),
    ("prefill 4x1024x128 f64", (1, 4), 1024, 1024, 128, np.float64, {}),
    ("many small 256x64x64 f32", (256,), 64, 64, 64, np.float32, {}),
    ("decode 64x1x8192x128 f32", (64,), 1, 8192, 128, np.float32, {}),
]


class Worker:
    """A persistent non-main Python thread that times calls on request (its
    OpenMP team is created once, like the main thread's)."""

    def __init__(self):
        self.req = queue.Queue()
        self.res = queue.Queue()
        self.th = threading.Thread(target=self._loop, daemon=True)
        self.th.start()

    def _loop(self):
        while True:
            fn = self.req.get()
            if fn is None:
                return
            t = time.perf_counter()
            fn()
            self.res.put(time.perf_counter() - t)

    def time(self, fn):
        self.req.put(fn)
        return self.res.get()

    def close(self):
        self.req.put(None)
        self.th.join()


def _time_main(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="first two shapes, 5 repeats")
    args = p.parse_args(argv)
    shapes = SHAPES[:2] if args.quick else SHAPES
    repeat = 5 if args.quick else args.repeat
    rng = np.random.default_rng(0)
    print(f"cattn {cattn.__version__}, {cattn.get_num_threads()} threads; median of {repeat}")
    worker = Worker()
    print(f"{'shape':34s} {'main (polls)':>14s} {'worker':>12s} {'diff':>8s} {'noise':>8s}")
    for label, lead, lq, lk, d, dt, kw in shapes:
        q = rng.standard_normal(lead + (lq, d)).astype(dt)
        k = rng.standard_normal(lead + (lk, d)).astype(dt)
        v = rng.standard_normal(lead + (lk, d)).astype(dt)
        fn = lambda: cattn.attention(q, k, v, **kw)  # noqa: E731
        fn()
        worker.time(fn)                          # warm both OpenMP teams
        main_t, work_t = [], []
        for _ in range(repeat):                  # alternate; let idle teams settle
            time.sleep(0.01)
            main_t.append(_time_main(fn))
            time.sleep(0.01)
            work_t.append(worker.time(fn))
        m, w = statistics.median(main_t), statistics.median(work_t)
        noise = max(statistics.pstdev(main_t) / m, statistics.pstdev(work_t) / w)
        print(f"{label:34s} {m * 1e3:11.2f} ms {w * 1e3:9.2f} ms {100 * (m / w - 1):+7.2f}% "
              f"{100 * noise:7.2f}%")
    worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
