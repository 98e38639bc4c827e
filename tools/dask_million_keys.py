"""Attention of 2048 queries over 1,000,000 keys on a Dask cluster.

    python tools/dask_million_keys.py                 # LocalCluster, 2 workers
    python tools/dask_million_keys.py --scheduler tcp://host:8786

Keys and values (D = 64, float32; 256 MB each) are generated chunk by chunk
on the workers, never gathered: each (query chunk, key chunk) task runs the
fused kernel and the partial results are merged with the log-sum-exp rule
in a tree.  Reports the wall time and the peak resident memory of every
worker process (``ru_maxrss``, which covers the worker's whole life: start
it fresh for a clean number), which must stay under 1 GiB.

With ``--check`` the keys are also gathered on the client and the first
queries are compared with ``cattn.attention`` run in one process.
"""
import argparse
import os
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
GIB = 1 << 30


def peak_rss():
    """Peak resident memory of the calling process, in bytes."""
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def worker_omp_threads():
    import cattn.dask
    return cattn.dask.task_threads()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lq", type=int, default=2048)
    p.add_argument("--lk", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--query-chunk", type=int, default=2048)
    p.add_argument("--key-chunk", type=int, default=62_500)
    p.add_argument("--split-every", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads-per-worker", type=int, default=1)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--scheduler", default=None,
                   help="address of a running Dask scheduler (default: start a "
                        "LocalCluster on loopback)")
    p.add_argument("--check", action="store_true",
                   help="gather keys/values and compare 16 queries with cattn.attention")
    p.add_argument("--graph-png", default=None,
                   help="write the task graph of a small version to this PNG "
                        "(needs graphviz)")
    args = p.parse_args(argv)

    # the spawned workers import cattn from this source tree
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [x for x in [os.environ.get("PYTHONPATH")] if x])
    sys.path.insert(0, str(ROOT))

    import dask
    import dask.array as da
    import distributed

    import cattn
    import cattn.dask

    if args.scheduler:
        cluster = None
        client = distributed.Client(args.scheduler)
    else:
        from dask.system import CPU_COUNT
        # Dask's nanny starts workers with OMP_NUM_THREADS=1; share the cores
        # between the worker threads instead (cattn.dask.task_threads applies
        # the same rule: worker threads x OpenMP threads <= cores).
        omp = max(1, CPU_COUNT // (args.workers * args.threads_per_worker))
        dask.config.set({"distributed.nanny.pre-spawn-environ.OMP_NUM_THREADS": omp})
        cluster = distributed.LocalCluster(
            n_workers=args.workers, threads_per_worker=args.threads_per_worker,
            processes=True, dashboard_address=None, host="127.0.0.1")
        client = distributed.Client(cluster)
    try:
        nworkers = len(client.scheduler_info()["workers"])
        omp = sorted(set(client.run(worker_omp_threads).values()))
        print(f"cluster: {nworkers} workers, "
              f"{sum(client.nthreads().values())} worker threads, "
              f"OpenMP threads per task: {omp}")

        rng = da.random.default_rng(0)
        f32 = np.float32
        q = rng.standard_normal((args.lq, args.d), chunks=(args.query_chunk, -1), dtype=f32)
        k = rng.standard_normal((args.lk, args.d), chunks=(args.key_chunk, -1), dtype=f32)
        v = rng.standard_normal((args.lk, args.d), chunks=(args.key_chunk, -1), dtype=f32)
        out, lse = cattn.dask.attention(q, k, v, causal=args.causal, return_lse=True,
                                        split_every=args.split_every)
        g = dict(out.__dask_graph__())
        n_part = sum(1 for key in g if isinstance(key, tuple)
                     and str(key[0]).startswith("cattn-attn-partial"))
        n_merge = sum(1 for key in g if isinstance(key, tuple)
                      and str(key[0]).startswith("cattn-attn-merge"))
        print(f"Lq={args.lq} Lk={args.lk:,} D={args.d} float32; "
              f"{len(q.chunks[0])} query chunks x {len(k.chunks[0])} key chunks of "
              f"{args.key_chunk:,}: {n_part} kernel tasks, {n_merge} merge tasks")

        t = time.perf_counter()
        client.compute([k.sum(), v.sum()], sync=True)
        t_gen = time.perf_counter() - t
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            res, res_lse = client.compute([out, lse], sync=True)
            times.append(time.perf_counter() - t)
        best = min(times)
        flops = 4.0 * args.lq * args.lk * args.d * (0.5 if args.causal else 1.0)
        print(f"time: {best:.2f} s (best of {len(times)}; generating k and v alone: "
              f"{t_gen:.2f} s), {flops / best / 1e9:.1f} GFLOP/s")
        assert res.shape == (args.lq, args.d) and np.isfinite(res).all()

        peaks = client.run(peak_rss)
        worst = max(peaks.values())
        for addr, b in sorted(peaks.items()):
            print(f"  worker {addr}: peak RSS {b / 2**20:.0f} MiB")
        print(f"peak memory per worker: max {worst / 2**20:.0f} MiB "
              f"({'OK, under' if worst < GIB else 'OVER'} 1 GiB)")

        if args.check:
            qn, kn, vn = client.compute([q[:16], k, v], sync=True)
            ref = cattn.attention(qn, kn, vn, causal=False)
            if args.causal:  # bottom-right alignment: row i sees keys <= i + Lk - Lq
                ref = np.stack([cattn.attention(qn[i:i + 1], kn[:i + 1 + args.lk - args.lq],
                                                vn[:i + 1 + args.lk - args.lq])[0]
                                for i in range(16)])
            err = float(np.max(np.abs(res[:16] - ref)))
            print(f"check against cattn.attention (16 queries): max abs error {err:.2e}")
            assert err < 1e-4

        if args.graph_png:
            small = cattn.dask.attention(q[:8].rechunk((4, -1)), k[:40].rechunk((10, -1)),
                                         v[:40].rechunk((10, -1)), causal=True,
                                         split_every=2)
            small.visualize(filename=args.graph_png)
            print(f"task graph of a small version written to {args.graph_png}")
        return 0 if worst < GIB else 1
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


if __name__ == "__main__":
    sys.exit(main())
