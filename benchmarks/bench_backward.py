"""Forward + backward, cattn against PyTorch's CPU scaled_dot_product_attention,
side by side: each measurement in its own process, the two implementations
interleaved round by round, medians reported.

    python benchmarks/bench_backward.py [--threads 1 2] [--rounds 3] [--dtype float32]
        [--shapes 1,8,128,128,64 4,8,512,512,64 ...] [--causal]

Prints, per shape and thread count: cattn forward+backward, its backward
alone (and its rate in GFLOP/s counting 2.5x the forward's 4 B H Lq Lk D
flops), torch forward+backward, and the ratio cattn / torch.  Without torch
only cattn's numbers are printed.
"""
import argparse
import json
import os
import subprocess
import sys
import time

DEFAULT_SHAPES = ["1,8,128,128,64", "4,8,512,512,64", "1,16,1024,1024,64",
                  "1,12,2048,2048,128", "2,8,256,2048,64", "1,8,4096,4096,64",
                  "1,2,8192,8192,64"]


def _worker(impl, shape, nt, dtype, causal, reps):
    import numpy as np
    B, H, Lq, Lk, D = shape
    rng = np.random.default_rng(0)
    q = rng.standard_normal((B, H, Lq, D)).astype(dtype)
    k = rng.standard_normal((B, H, Lk, D)).astype(dtype)
    v = rng.standard_normal((B, H, Lk, D)).astype(dtype)
    dO = rng.standard_normal((B, H, Lq, D)).astype(dtype)
    res = {}
    if impl == "cattn":
        import cattn
        run_f = lambda: cattn.attention(q, k, v, return_lse=True, causal=causal, num_threads=nt)
        out, lse = run_f()
        run_b = lambda: cattn.attention_backward(dO, q, k, v, out, lse, causal=causal,
                                                 num_threads=nt)

        def both():
            o, l_ = run_f()
            cattn.attention_backward(dO, q, k, v, o, l_, causal=causal, num_threads=nt)
        run_b()
        ts = []
        for _ in range(reps):
            t = time.perf_counter(); run_b(); ts.append(time.perf_counter() - t)
        res["bwd"] = sorted(ts)[len(ts) // 2]
    else:
        import torch
        torch.set_num_threads(nt)
        tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
        tdo = torch.from_numpy(dO)

        def both():
            o = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
            o.backward(tdo)
    both()
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); both(); ts.append(time.perf_counter() - t)
    res["fwd_bwd"] = sorted(ts)[len(ts) // 2]
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
    try:
        import torch  # noqa: F401
        impls = ["cattn", "torch"]
    except ImportError:
        impls = ["cattn"]
    print(f"dtype {a.dtype}, causal {a.causal}, {a.rounds} rounds, medians (ms)")
    for shape in a.shapes:
        B, H, Lq, Lk, D = map(int, shape.split(","))
        flops_bwd = 2.5 * 4 * B * H * Lq * Lk * D * (0.5 if a.causal else 1)
        for nt in a.threads:
            got = {i: [] for i in impls}
            bwd = []
            for _ in range(a.rounds):
                for impl in impls:
                    env = dict(os.environ, OMP_NUM_THREADS=str(nt))
                    r = subprocess.run(
                        [sys.executable, __file__, "--worker", impl, shape, str(nt), a.dtype,
                         "1" if a.causal else "0", str(a.reps)],
                        capture_output=True, text=True, env=env, check=True)
                    res = json.loads(r.stdout.strip().splitlines()[-1])
                    got[impl].append(res["fwd_bwd"])
                    if "bwd" in res:
                        bwd.append(res["bwd"])
            med = {i: sorted(x)[len(x) // 2] * 1e3 for i, x in got.items()}
            b = sorted(bwd)[len(bwd) // 2]
            line = (f"{shape:>20} t={nt}: cattn fwd+bwd {med['cattn']:9.2f}  bwd {b * 1e3:9.2f}"
                    f" ({flops_bwd / b / 1e9:6.1f} GFLOP/s)")
            if "torch" in med:
                line += f"  torch {med['torch']:9.2f}  ratio {med['cattn'] / med['torch']:.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
