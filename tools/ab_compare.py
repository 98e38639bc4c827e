"""Time two cattn installs side by side: before/after a change.

Usage:
    python tools/ab_compare.py PYTHON_A PYTHON_B [--rounds 5] [--threads 1 2]

PYTHON_A and PYTHON_B are the interpreters of two environments, each with
its own cattn installed (e.g. two virtual environments built from two
commits).  Each round runs one process per (interpreter, thread count), in
alternating order, and each process times every case (median of repeated
calls after a warm-up).  The report gives the median over rounds of each
side and the ratio B/A, with the CPU and thread counts.  Also times the
per-call overhead of the plain path (1,1,16,16,64) and of the general path
(the same call with kv_lengths, an option only the general path takes).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

CASES = [
    # name, (B, H, Lq, Lk, D), dtype, options
    ("tiny", (1, 1, 16, 16, 64), "float32", {}),
    ("tiny_general", (1, 1, 16, 16, 64), "float32", {"kv_lengths": [16]}),
    ("small", (1, 8, 128, 128, 64), "float32", {}),
    ("small_causal", (1, 8, 128, 128, 64), "float32", {"causal": True}),
    ("batch4_512", (4, 8, 512, 512, 64), "float32", {}),
    ("h16_1k", (1, 16, 1024, 1024, 64), "float32", {}),
    ("4k", (1, 8, 4096, 4096, 64), "float32", {}),
    ("4k_causal", (1, 8, 4096, 4096, 64), "float32", {"causal": True}),
    ("d128_2k", (1, 12, 2048, 2048, 128), "float32", {}),
    ("cross", (2, 8, 256, 2048, 64), "float32", {}),
    ("decode4k", (1, 32, 1, 4096, 128), "float32", {}),
    ("decode4k_f16", (1, 32, 1, 4096, 128), "float16kv", {}),
    ("batch4_512_f64", (4, 8, 512, 512, 64), "float64", {}),
    ("h16_1k_f64", (1, 16, 1024, 1024, 64), "float64", {}),
    ("decode4k_f64", (1, 32, 1, 4096, 128), "float64", {}),
]

WORKER = r"""
import json, sys, time
import numpy as np
import cattn
cases, threads = json.loads(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
res = {}
for name, (B, H, Lq, Lk, D), dt, opts in cases:
    qdt = np.float64 if dt == "float64" else np.float32
    kdt = np.float16 if dt == "float16kv" else qdt
    q = rng.standard_normal((B, H, Lq, D)).astype(qdt)
    k = rng.standard_normal((B, H, Lk, D)).astype(kdt)
    v = rng.standard_normal((B, H, Lk, D)).astype(kdt)
    f = lambda: cattn.attention(q, k, v, num_threads=threads, **opts)
    f()
    t0 = time.perf_counter(); f(); one = time.perf_counter() - t0
    n = max(3, min(2000, int(0.4 / max(one, 1e-7))))
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    ts.sort()
    res[name] = ts[len(ts) // 2]
print(json.dumps(res))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("python_a")
    ap.add_argument("python_b")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cases", nargs="*", help="names of the cases to run (default: all)")
    ap.add_argument("--json", help="write the raw medians here")
    args = ap.parse_args(argv)
    cases = [c for c in CASES if not args.cases or c[0] in args.cases]
    runs = {(side, t): [] for side in "AB" for t in args.threads}
    for r in range(args.rounds):
        order = [("A", args.python_a), ("B", args.python_b)]
        if r % 2:
            order.reverse()
        for t in args.threads:
            for side, py in order:
                out = subprocess.run([py, "-c", WORKER, json.dumps(cases), str(t)],
                                     capture_output=True, text=True, cwd="/",
                                     env={**os.environ, "OMP_NUM_THREADS": str(t)})
                if out.returncode:
                    sys.exit(out.stderr)
                runs[side, t].append(json.loads(out.stdout))
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{args.rounds} rounds, median of per-process medians (ms)")
    print(f"{'case':<16} {'thr':>3} {'A':>10} {'B':>10} {'B/A':>6}")
    report = {}
    for t in args.threads:
        for name, *_ in cases:
            a = statistics.median(x[name] for x in runs["A", t]) * 1e3
            b = statistics.median(x[name] for x in runs["B", t]) * 1e3
            report[f"{name}/{t}"] = (a, b)
            print(f"{name:<16} {t:>3} {a:>10.4f} {b:>10.4f} {b / a:>6.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
