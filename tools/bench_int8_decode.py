"""Side-by-side decode timing: an int8 cache (cattn.quantize_kv) against a
float16 cache, and the streaming read rate of the same machine, each in its
own process, alternating, medians.

    python tools/bench_int8_decode.py [--rounds 5] [--threads 1 2] [--markdown]

Cases: decode (1, 32, 1, Lk, 128) with Lk = 4096 and 32768, 32 query heads
over 32 or 8 key/value heads (GQA).  GB/s counts the bytes of K and V the
call reads (int8: the int8 rows and their float32 block scales).  The read
rate is np.max over a 512 MiB float32 array split among the threads (each
thread reduces its part; NumPy's max is vectorised and releases the GIL).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CASES = [(32, 32, 4096), (32, 32, 32768), (32, 8, 4096), (32, 8, 32768)]
D = 128


def worker(fmt, H, Hk, Lk, threads, reps):
    import numpy as np
    import cattn
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, H, 1, D), dtype=np.float32)
    k = rng.standard_normal((1, Hk, Lk, D), dtype=np.float32)
    v = rng.standard_normal((1, Hk, Lk, D), dtype=np.float32)
    if fmt == "int8":
        k, v = cattn.quantize_kv(k), cattn.quantize_kv(v)
        nbytes = k.nbytes + v.nbytes
    else:
        k, v = k.astype(fmt), v.astype(fmt)
        nbytes = k.nbytes + v.nbytes
    for _ in range(3):
        cattn.attention(q, k, v, num_threads=threads)
    ts = []
    t_end = time.perf_counter() + 0.5
    while len(ts) < reps or (time.perf_counter() < t_end and len(ts) < 200):
        t0 = time.perf_counter()
        cattn.attention(q, k, v, num_threads=threads)
        ts.append(time.perf_counter() - t0)
    return {"s": statistics.median(ts), "bytes": nbytes}


def read_rate(threads, reps):
    import threading
    import numpy as np
    x = np.ones(2 ** 27, dtype=np.float32)
    parts = np.array_split(x, threads)

    def once():
        th = [threading.Thread(target=p.max) for p in parts]
        t0 = time.perf_counter()
        for t in th:
            t.start()
        for t in th:
            t.join()
        return time.perf_counter() - t0
    once()
    return {"s": statistics.median(once() for _ in range(reps)), "bytes": x.nbytes}


def run_child(args):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "_child"] + args,
                         stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", nargs="?", default="bench")
    ap.add_argument("child", nargs="*")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    if args.mode == "_child":
        kind = args.child[0]
        if kind == "read":
            res = read_rate(int(args.child[1]), args.reps)
        else:
            H, Hk, Lk, t = (int(x) for x in args.child[1:5])
            res = worker(kind, H, Hk, Lk, t, args.reps)
        json.dump(res, sys.stdout)
        return
    import platform
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), platform.processor())
    print(f"CPU: {cpu}; {args.rounds} alternating rounds, medians; "
          f"{time.strftime('%Y-%m-%d')}\n")
    print("| case (B,H,Lq,Lk,D), kv heads | threads | float16 ms | int8 ms | int8/f16 | "
          "int8 GB/s | read GB/s | int8 % of read |")
    print("|---|---|---|---|---|---|---|---|")
    for t in args.threads:
        for H, Hk, Lk in CASES:
            f16, i8, rd = [], [], []
            for _ in range(args.rounds):
                f16.append(run_child(["float16", str(H), str(Hk), str(Lk), str(t)]))
                i8.append(run_child(["int8", str(H), str(Hk), str(Lk), str(t)]))
                rd.append(run_child(["read", str(t)]))
            ms16 = statistics.median(r["s"] for r in f16) * 1e3
            ms8 = statistics.median(r["s"] for r in i8) * 1e3
            gb8 = i8[0]["bytes"] / (ms8 / 1e3) / 1e9
            gbr = statistics.median(r["bytes"] / r["s"] for r in rd) / 1e9
            print(f"| (1,{H},1,{Lk},{D}), {Hk} | {t} | {ms16:.3f} | {ms8:.3f} | "
                  f"{ms8 / ms16:.2f} | {gb8:.1f} | {gbr:.1f} | {100 * gb8 / gbr:.0f}% |",
                  flush=True)


if __name__ == "__main__":
    main()
