"""Side-by-side timings of cattn, naive NumPy and PyTorch.

Run from the root of a source checkout (with cattn built in place,
``python setup.py build_ext --inplace``, or installed)::

    python -m tools.bench --quick
    python -m tools.bench --shapes 4k decode4k --threads 1 2 --repeat 9 --json run.json
    python -m tools.bench --quick --plot scaling.png
    python -m tools.bench --backward --shapes h16_1k 4k --causal --threads 1 2
    python -m tools.bench --help

The workers run in the same directory, so they time the cattn that
``import cattn`` finds there (the report prints its path).  Shape names are
those of ``benchmarks/common.py`` (``SHAPES``).

How it measures (a 2-core machine lies easily, see the notes below):

* **One worker process per implementation** (cattn, numpy, torch) and per
  thread count ``t`` (``tools/bench/worker.py``).  Each worker starts with
  ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` set to
  ``t``, ``OMP_WAIT_POLICY=PASSIVE`` and ``OPENBLAS_THREAD_TIMEOUT=4``, so
  the idle thread pools of the workers that are not being timed sleep
  instead of spinning on a core; cattn gets ``num_threads=t``, torch
  ``torch.set_num_threads(t)``, NumPy's BLAS ``threadpoolctl`` limits.
  Workers never import the other libraries (no second OpenMP runtime).
* **Alternation**: for every shape the implementations are timed in turn,
  the order rotated on each of the ``--repeat`` rounds, and each figure is
  the **median** of its rounds.  A round times as many back-to-back calls as
  fill ``--min-time`` seconds (after one or two warm-up calls).  Ratios
  measured side by side are reliable; absolute times drift by +-30 %.
* **Machine figures, same run**: per thread count, the GFLOP/s of a NumPy
  ``4096 x 4096`` float32 matmul (sgemm) and float64 matmul (dgemm), median
  of a few calls in the numpy worker; and the streaming read bandwidth of
  ``t`` processes, each running ``np.dot(x, x)`` (single-threaded BLAS, reads
  ``x`` once) over a private float32 array, all started together; the
  bandwidth is the bytes read by all of them over the slowest one's time,
  median of a few rounds.  The array is as large as the K+V of each decode
  shape (``Lq == 1``), so cache effects match.

Columns: ``cattn/torch`` and ``cattn/numpy`` are *time* ratios (< 1: cattn
is faster).  GFLOP/s counts ``4*B*H*Lq*Lk*D`` (two matmuls); ``% GEMM`` is
that over the same-dtype GEMM GFLOP/s at the same thread count.  ``GB/s``
(decode rows only) counts the compulsory traffic q + k + v + out; ``% BW``
is that over the measured read bandwidth.  With ``--causal`` the shapes with
``Lq == Lk`` are also timed with a causal mask (rows marked ``causal``;
torch: ``is_causal=True``, numpy: a boolean mask built before timing).  A
cell that reads ``err`` or ``skip`` carries a footnote mark; the notes under
the table give the reason (the exception, or the time of the one call).

``--backward`` times training instead (``benchmarks.common.BackwardImpl``):
per case, forward + backward and the backward alone (from a forward run
once) of cattn and torch (numpy's naive analytic backward on request), in
the same workers, rounds and medians; the table puts both side by side
with their time ratios and cattn's backward GFLOP/s, counted as 2.5x the
forward's ``4*B*H*Lq*Lk*D``, and its share of the GEMM rate.

"numpy" is the naive float-preserving NumPy a user writes::

    s = q @ k.swapaxes(-1, -2) * (D ** -0.5)   # Python float: float32 stays float32
    p = exp(s - s.max(-1)); p /= p.sum(-1); out = p @ v

This module imports only the standard library and ``benchmarks.common``
(which imports only the standard library at the top): the workers import
NumPy / torch / cattn themselves.
"""
import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

from benchmarks.common import (BACKWARD_SHAPES, DEFAULT_SHAPES, SHAPES, backward_flops,
                               usable_cpus)

__all__ = ["main", "build_parser"]

_PROG = "python -m tools.bench"
# the repository root: the workers run there as "python -m tools.bench.worker"
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SWEEP_L = (256, 512, 1024, 2048, 4096)    # --plot: (1, 8, L, L, 64), float32
IMPLS = ("cattn", "numpy", "torch")
BACKWARD_IMPLS = ("cattn", "torch")      # --backward's default (numpy on request)
DTYPES = ("float32", "float64")
ENV_FIX = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "4"}
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
_ITEMSIZE = {"float32": 4, "float64": 8}


# ============================================================== parent side
def _worker_env(threads):
    env = dict(os.environ)
    env.update(ENV_FIX)
    for var in _THREAD_VARS:
        env[var] = str(threads)
    return env


class _Worker:
    def __init__(self, impl, threads):
        self.impl, self.threads = impl, threads
        self.info, self.error = {}, None
        self._err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.bench.worker", impl, str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
            text=True, env=_worker_env(threads), cwd=_ROOT, bufsize=1)

    def wait_ready(self):
        msg = self._read()
        if msg.get("ready"):
            self.info = msg["info"]
        else:
            self.error = msg.get("error", "worker failed to start")
        return self.error is None

    def _stderr_tail(self):
        try:
            self._err.seek(0)
            lines = [ln for ln in self._err.read().splitlines() if ln.strip()]
            return lines[-1] if lines else ""
        except Exception:
            return ""

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            return {"error": "worker exited (rc %s) %s" % (self.proc.returncode, self._stderr_tail())}
        return json.loads(line)

    def request(self, obj):
        if self.error is not None:
            return {"error": self.error}
        self.send(obj)
        return self.receive()

    def send(self, obj):
        try:
            self.proc.stdin.write(json.dumps(obj) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            self.error = "worker died: %s %s" % (exc, self._stderr_tail())

    def receive(self):
        if self.error is not None:
            return {"error": self.error}
        msg = self._read()
        if "error" in msg and self.proc.poll() is not None:
            self.error = msg["error"]
        return msg

    def close(self):
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.stdin.close()
                self.proc.wait(timeout=20)
        except Exception:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._err.close()


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    if not n:
        return None
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _cpu_account():
    """(busy CPU seconds of the whole machine, CPU seconds of this process and
    its waited-for children); None where /proc/stat is missing."""
    try:
        import resource
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
        tick = os.sysconf("SC_CLK_TCK")
        busy = (f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] if len(f) > 7 else 0)) / tick
        own = sum(getattr(resource.getrusage(w), a)
                  for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                  for a in ("ru_utime", "ru_stime"))
        return busy, own
    except Exception:
        return None


def _foreign_cpu_pct(a, b, elapsed, ncpu):
    """Share of the machine's CPU time other processes (or the hypervisor:
    steal) took during the run."""
    if a is None or b is None or elapsed <= 0:
        return None
    return max(0.0, 100.0 * ((b[0] - a[0]) - (b[1] - a[1])) / (elapsed * ncpu))


def _parse_shape(text):
    if text in SHAPES:
        return text, SHAPES[text]
    parts = text.lower().replace(",", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 5 or min(dims) < 1:
        raise argparse.ArgumentTypeError(
            "unknown shape %r: use a name (%s) or BxHxLqxLkxD" % (text, ", ".join(SHAPES)))
    return text, dims


def _file_name(text):
    """argparse type of --plot / --json: a non-empty file name."""
    if not text.strip():
        raise argparse.ArgumentTypeError("needs a file name (got an empty string)")
    return text


def _check_writable(path):
    """None when ``path`` can be written, else the reason.  Tried before the
    run, so that a bad path fails in a second rather than after the run; a
    file created by the check is removed again."""
    if os.path.isdir(path):
        return "it is a directory"
    existed = os.path.exists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    if not existed:
        try:
            os.remove(path)
        except OSError:
            pass
    return None


def build_parser():
    p = argparse.ArgumentParser(
        prog=_PROG,
        description="Time cattn.attention against naive NumPy and PyTorch's "
                    "scaled_dot_product_attention, each in its own process, "
                    "alternating, median of repeats; also measures the machine's "
                    "GEMM GFLOP/s and read bandwidth in the same run.",
        epilog="Shapes (B,H,Lq,Lk,D): " + "; ".join(
            "%s=%s" % (n, ",".join(map(str, d))) for n, d in SHAPES.items())
            + ".  Ratios are time ratios (< 1: cattn faster).")
    p.add_argument("--shapes", nargs="+", metavar="SHAPE", default=None,
                   help="shape names or BxHxLqxLkxD specs; 'all' = every named "
                        "shape (default: %s; --backward: see there)" % " ".join(DEFAULT_SHAPES))
    p.add_argument("--dtypes", nargs="+", choices=DTYPES, default=None,
                   help="default: float32 float64 (--quick: float32)")
    p.add_argument("--threads", nargs="+", type=int, default=None, metavar="N",
                   help="thread counts (default: 1 and the usable CPUs; --quick: the usable CPUs)")
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=None,
                   help="implementations to time (default: all; --backward: cattn torch)")
    p.add_argument("--repeat", type=int, default=None, metavar="N",
                   help="alternating rounds per shape, median reported (default 7; --quick 3)")
    p.add_argument("--min-time", type=float, default=None, metavar="S",
                   help="seconds of back-to-back calls per timing (default 0.1; --quick 0.02)")
    p.add_argument("--max-call", type=float, default=60.0, metavar="S",
                   help="drop an implementation/shape whose one call exceeds S seconds (default 60)")
    p.add_argument("--gemm-n", type=int, default=4096, metavar="N",
                   help="matrix size of the GEMM peak measurement (default 4096)")
    p.add_argument("--quick", action="store_true",
                   help="float32, the usable CPUs as threads, 3 rounds, short timings")
    p.add_argument("--causal", action="store_true",
                   help="also time the shapes with Lq == Lk with a causal mask")
    p.add_argument("--backward", action="store_true",
                   help="time training instead of the forward: forward + backward "
                        "(cattn.attention + cattn.attention_backward; torch: SDPA + "
                        ".backward) and the backward alone, with the backward's GFLOP/s "
                        "(2.5x the forward's flops); default shapes: %s"
                        % " ".join(BACKWARD_SHAPES))
    p.add_argument("--plot", metavar="FILE.png", default=None, type=_file_name,
                   help="also time (1,8,L,L,64) float32 for L in %s and plot time vs L "
                        "into FILE.png (needs matplotlib)" % (SWEEP_L,))
    p.add_argument("--json", metavar="FILE", default=None, type=_file_name,
                   help="save all results as JSON to FILE")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


class _Progress:
    def __init__(self, total, enabled):
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, file=sys.stderr, leave=False,
                                dynamic_ncols=True, unit="run")
            except Exception:
                self.bar = None

    def step(self, desc=None, n=1):
        if self.bar is not None:
            if desc:
                self.bar.set_description_str(desc, refresh=False)
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _fmt_ms(s):
    if s is None:
        return "-"
    ms = s * 1e3
    if ms >= 100:
        return "%.0f" % ms
    return "%.3g" % ms


class _Notes:
    """The footnotes of the report: ``mark(text)`` gives the number of
    ``text`` (one number per distinct text)."""

    def __init__(self):
        self.texts = []

    def mark(self, text):
        if text not in self.texts:
            self.texts.append(text)
        return self.texts.index(text) + 1

    def print(self):
        if self.texts:
            print("\nnotes:")
            for n, text in enumerate(self.texts, 1):
                print("[%d] %s" % (n, text))


def _cell(res, notes, impl=None):
    """A time cell: ms, "-" (not run), or "skip [n]" / "err [n]" with the
    reason in footnote n."""
    if res is None:
        return "-"
    if "median_s" in res:
        return _fmt_ms(res["median_s"])
    who = "%s: " % impl if impl else ""
    if "skip" in res:
        return "skip [%d]" % notes.mark("%sskipped, %s" % (who, res["skip"]))
    return "err [%d]" % notes.mark("%s%s" % (who, res.get("error") or "failed (no message)"))


def _measure_machine(t, numpy_worker, bw_sizes, args, prog):
    """GEMM GFLOP/s in ``numpy_worker`` and read bandwidth of ``t`` processes."""
    out = {"threads": t, "gemm": {}, "bandwidth": {}}
    n = args.gemm_n
    reps = 3 if args.quick else 5
    for dt in DTYPES:
        r = numpy_worker.request({"op": "gemm", "n": n, "dtype": dt, "reps": reps})
        prog.step("%dt gemm %s" % (t, dt))
        if "times" in r:
            med = _median(r["times"])
            out["gemm"][dt] = {"n": n, "median_s": med, "gflops": 2.0 * n ** 3 / med / 1e9,
                               "best_gflops": 2.0 * n ** 3 / min(r["times"]) / 1e9}
        else:
            out["gemm"][dt] = {"error": r.get("error")}
    rounds = 3 if args.quick else 5
    workers = [_Worker("bw", 1) for _ in range(t)]
    try:
        ok = [w.wait_ready() for w in workers]
        for nbytes in sorted(bw_sizes):
            if not all(ok):
                out["bandwidth"][str(nbytes)] = {"error": workers[ok.index(False)].error}
                prog.step(n=rounds)
                continue
            part = max(1 << 16, nbytes // t)
            for w in workers:
                w.send({"op": "bw_alloc", "nbytes": part})
            for w in workers:
                w.receive()
            # ~0.15 s per round at ~30 GB/s
            reps = max(2, int(math.ceil(0.15 * 30e9 / (part * t))))
            vals = []
            for _ in range(rounds):
                for w in workers:                 # started together ...
                    w.send({"op": "bw_run", "reps": reps})
                got = [w.receive() for w in workers]
                if any("elapsed" not in g for g in got):
                    break
                total = sum(g["nbytes"] for g in got)
                vals.append(total / max(g["elapsed"] for g in got) / 1e9)  # ... slowest decides
                prog.step("%dt bandwidth %d MiB" % (t, nbytes >> 20))
            out["bandwidth"][str(nbytes)] = {"nbytes": nbytes, "processes": t,
                                             "gbs": _median(vals), "rounds": vals}
    finally:
        for w in workers:
            w.close()
    return out


def _kv_bytes(dims, dtype):
    B, H, Lq, Lk, D = dims
    return 2 * B * H * Lk * D * _ITEMSIZE[dtype]


def _traffic_bytes(dims, dtype):
    B, H, Lq, Lk, D = dims
    return (2 * B * H * Lq * D + 2 * B * H * Lk * D) * _ITEMSIZE[dtype]


def _flops(dims, stage="forward"):
    """4*B*H*Lq*Lk*D for the forward (two products), 2.5 times that for the
    backward (five), their sum for forward + backward; causal counted in full."""
    B, H, Lq, Lk, D = dims
    fwd = 4.0 * B * H * Lq * Lk * D
    return {"forward": fwd, "bwd": backward_flops(dims),
            "fwd_bwd": fwd + backward_flops(dims)}[stage]


def main(argv=None):
    """Run the benchmark; ``argv`` excludes the program name.  Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    ncpu = usable_cpus()
    if args.quick:
        args.dtypes = args.dtypes or ["float32"]
        args.threads = args.threads or [ncpu]
        args.repeat = args.repeat or 3
        args.min_time = args.min_time if args.min_time is not None else 0.02
    args.dtypes = args.dtypes or list(DTYPES)
    args.threads = args.threads or sorted({1, ncpu})
    args.repeat = max(1, args.repeat or 7)
    args.min_time = args.min_time if args.min_time is not None else 0.1
    if min(args.threads) < 1:
        parser.error("--threads must be >= 1")
    if args.backward and args.plot:
        parser.error("--plot sweeps the forward only; it cannot go with --backward")
    args.impls = args.impls or list(BACKWARD_IMPLS if args.backward else IMPLS)
    for opt, path in (("--json", args.json), ("--plot", args.plot)):
        why = path is not None and _check_writable(path)
        if why:
            parser.error("%s: cannot write %s: %s" % (opt, path, why))
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("%s: error: --plot needs matplotlib (pip install matplotlib)" % _PROG,
                  file=sys.stderr)
            return 1

    names = args.shapes or list(BACKWARD_SHAPES if args.backward else DEFAULT_SHAPES)
    if "all" in names:
        names = list(SHAPES)
    try:
        shapes = [_parse_shape(s) for s in names]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    tmax = max(args.threads)

    # the cases, per thread count: (name, dims, dtype, variant, stage, in_table, in_sweep)
    stages = ("fwd_bwd", "bwd") if args.backward else ("forward",)
    plan = {}
    for t in args.threads:
        cases = {}
        for name, dims in shapes:
            for dt in args.dtypes:
                for variant in ("plain", "causal"):
                    if variant == "causal" and not (args.causal and dims[2] == dims[3]):
                        continue
                    for stage in stages:
                        cases[(dims, dt, variant, stage)] = {
                            "name": name, "dims": dims, "dtype": dt, "variant": variant,
                            "stage": stage, "table": True, "sweep": False}
        if args.plot and t == tmax:
            for L in SWEEP_L:
                dims = (1, 8, L, L, 64)
                c = cases.setdefault((dims, "float32", "plain", "forward"),
                                     {"name": "sweep%d" % L, "dims": dims, "dtype": "float32",
                                      "variant": "plain", "stage": "forward", "table": False})
                c["sweep"] = True
        plan[t] = list(cases.values())

    impls = [i for i in IMPLS if i in args.impls]
    bw_sizes = {}
    for t in args.threads:
        sizes = {_kv_bytes(c["dims"], c["dtype"]) for c in plan[t] if c["dims"][2] == 1}
        bw_sizes[t] = sizes or {128 << 20}
    rounds = 3 if args.quick else 5
    total = sum(2 + rounds * len(bw_sizes[t]) + len(plan[t]) * args.repeat * len(impls)
                for t in args.threads)

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    cpu0 = _cpu_account()
    t_start = time.perf_counter()
    prog = _Progress(total, not args.no_progress)
    machine, rows, infos = {}, [], {}
    try:
        for t in args.threads:
            workers = {i: _Worker(i, t) for i in impls}
            gemm_worker = workers.get("numpy") or _Worker("numpy", t)
            try:
                for w in set(workers.values()) | {gemm_worker}:
                    w.wait_ready()
                for i, w in workers.items():
                    infos.setdefault(i, w.info or {"error": w.error})
                # an implementation that cannot start (torch not installed, cattn
                # not built) is left out: its columns show "-"
                active = [i for i in impls if workers[i].error is None]
                for i in impls:
                    if i not in active:
                        prog.step(n=len(plan[t]) * args.repeat)
                machine[t] = _measure_machine(t, gemm_worker, bw_sizes[t], args, prog)
                for ci, c in enumerate(plan[t]):
                    req = {"op": "case",
                           "key": "%d:%s:%s:%s:%s" % (t, c["dims"], c["dtype"], c["variant"],
                                                      c["stage"]),
                           "dims": list(c["dims"]), "dtype": c["dtype"],
                           "variant": c["variant"], "stage": c["stage"],
                           "min_time": args.min_time, "max_call_s": args.max_call}
                    samples = {i: [] for i in active}
                    last = {i: None for i in active}
                    for r in range(args.repeat if active else 0):
                        order = active[(r + ci) % len(active):] + active[:(r + ci) % len(active)]
                        for i in order:
                            prog.step("%dt %s %s %s %s" % (t, c["name"], c["dtype"], i,
                                                           c["stage"]))
                            if last[i] is not None and "t" not in last[i]:
                                continue          # skipped or failed: don't retry
                            res = workers[i].request(req)
                            last[i] = res
                            if "t" in res:
                                samples[i].append(res["t"])
                    row = dict(c, threads=t, dims=list(c["dims"]), impls={})
                    for i in active:
                        if samples[i]:
                            row["impls"][i] = {"median_s": _median(samples[i]),
                                               "min_s": min(samples[i]), "samples_s": samples[i],
                                               "inner": last[i].get("inner")}
                        elif last[i] is not None:
                            row["impls"][i] = {k: v for k, v in last[i].items()
                                               if k in ("skip", "error")}
                    rows.append(row)
            finally:
                for w in set(workers.values()) | {gemm_worker}:
                    w.close()
    except KeyboardInterrupt:
        prog.close()
        print("%s: interrupted" % _PROG, file=sys.stderr)
        return 130
    prog.close()
    elapsed = time.perf_counter() - t_start

    _derive(rows, machine)
    meta = {"started": started, "elapsed_s": elapsed, "cpu": _cpu_model(),
            "usable_cpus": ncpu, "logical_cpus": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(),
            "threads": args.threads, "dtypes": args.dtypes, "repeat": args.repeat,
            "min_time_s": args.min_time, "env": ENV_FIX, "impls": infos,
            "backward": args.backward,
            "foreign_cpu_pct": _foreign_cpu_pct(cpu0, _cpu_account(), elapsed, ncpu)}
    _print_report(meta, machine, rows, args, impls)
    rc = 0
    if args.json:
        try:
            with open(args.json, "w") as fh:
                json.dump({"meta": meta, "machine": {str(k): v for k, v in machine.items()},
                           "results": rows}, fh, indent=1)
            print("\nwrote %s" % args.json)
        except OSError as exc:
            print("%s: error: cannot write %s: %s" % (_PROG, args.json, exc), file=sys.stderr)
            rc = 1
    if args.plot:
        try:
            _plot(args.plot, [r for r in rows if r["sweep"]], meta, tmax)
            print("wrote %s" % args.plot)
        except OSError as exc:
            print("%s: error: cannot write %s: %s" % (_PROG, args.plot, exc), file=sys.stderr)
            rc = 1
    return rc


def _derive(rows, machine):
    for r in rows:
        dims, dt, t = tuple(r["dims"]), r["dtype"], r["threads"]
        m = machine.get(t, {})
        peak = m.get("gemm", {}).get(dt, {}).get("gflops")
        bw = m.get("bandwidth", {}).get(str(_kv_bytes(dims, dt)), {}).get("gbs")
        for i, d in r["impls"].items():
            if "median_s" not in d:
                continue
            d["gflops"] = _flops(dims, r.get("stage", "forward")) / d["median_s"] / 1e9
            d["pct_gemm"] = 100.0 * d["gflops"] / peak if peak else None
            if dims[2] == 1:
                d["gbs"] = _traffic_bytes(dims, dt) / d["median_s"] / 1e9
                d["pct_bw"] = 100.0 * d["gbs"] / bw if bw else None
        c = r["impls"].get("cattn", {}).get("median_s")
        for other in ("torch", "numpy"):
            o = r["impls"].get(other, {}).get("median_s")
            r["cattn_over_" + other] = c / o if c and o else None


def _table(header, body):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    line = lambda cells: "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"
    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(b) for b in body]
    return "\n".join(out)


def _print_report(meta, machine, rows, args, impls):
    infos = meta["impls"]

    def ver(i, key):
        d = infos.get(i)
        if d is None:
            return "not run"
        return d.get(key) or "unavailable (%s)" % d.get("error", "?")

    print("cattn side-by-side benchmark  %s" % meta["started"])
    print("CPU: %s; %d usable CPUs (%s logical); threads timed: %s"
          % (meta["cpu"], meta["usable_cpus"], meta["logical_cpus"],
             ", ".join(map(str, meta["threads"]))))
    np_info = next((d for d in infos.values() if d and d.get("numpy")), {})
    print("versions: cattn %s%s, numpy %s%s, torch %s; python %s"
          % (ver("cattn", "cattn"),
             " (%s)" % infos["cattn"]["cattn_path"] if infos.get("cattn", {}).get("cattn_path") else "",
             np_info.get("numpy", "?"),
             " [%s]" % "; ".join(np_info["blas"]) if np_info.get("blas") else "",
             ver("torch", "torch"), meta["python"]))
    fc = meta["foreign_cpu_pct"]
    if fc is not None:
        print("other processes took %.0f%% of the CPU time during the run%s" % (
            fc, "  <-- busy machine: expect noisy times" if fc > 10 else ""))
    print("method: one worker process per implementation and thread count (%s, "
          "*_NUM_THREADS=t); implementations alternated in rotated order, median of "
          "%d rounds, each round >= %.3g s of calls"
          % (", ".join("%s=%s" % kv for kv in ENV_FIX.items()), args.repeat, args.min_time))
    if args.backward:
        print("fwd+bwd = one training step's attention: cattn.attention(return_lse=True) + "
              "cattn.attention_backward; torch: scaled_dot_product_attention on tensors that "
              "require grad + .backward(dout); numpy: naive softmax weights + their analytic "
              "gradients.  bwd = the backward alone, from a forward run once (torch: "
              "retain_graph; numpy: the weights kept)")
    else:
        print("numpy = naive NumPy in the input dtype, softmax(q @ k^T * D**-0.5) @ v; "
              "torch = torch.nn.functional.scaled_dot_product_attention")
    notes = _Notes()

    def measured(d, key):
        if d.get(key):
            return "%.1f" % d[key]
        return "err [%d]" % notes.mark(d.get("error") or "no measurement")

    for t in sorted(machine):
        m = machine[t]
        g = m["gemm"]
        gs = ", ".join("%s %s GFLOP/s" % ("sgemm" if dt == "float32" else "dgemm",
                                          measured(g[dt], "gflops"))
                       for dt in DTYPES if dt in g)
        bws = ", ".join("%s GB/s over %d MiB" % (measured(b, "gbs"), int(k) >> 20)
                        for k, b in sorted(m["bandwidth"].items(), key=lambda kv: int(kv[0])))
        print("machine @ %d thread(s): NumPy matmul %d^2 (median): %s; read bandwidth "
              "(%d process(es) x np.dot(x, x), together): %s" % (t, args.gemm_n, gs, t, bws))
    print()
    slower = (_backward_table if args.backward else _forward_table)(rows, notes, impls)
    if "torch" in impls and "torch" in infos and "error" not in infos["torch"]:
        print("cattn slower than torch%s: %s" % (" (forward + backward)" if args.backward
                                                 else "", "; ".join(slower) if slower else "none"))
    for i in impls:
        if "error" in infos.get(i, {}):
            print("%s: not timed (%s)" % (i, infos[i]["error"]))
    sweep = [r for r in rows if r["sweep"]]
    if sweep:
        print("\ntime vs L, (1,8,L,L,64) float32, %d thread(s):" % sweep[0]["threads"])
        print(_table(["L", "cattn ms", "numpy ms", "torch ms"],
                     [[r["dims"][2]] + [_cell(r["impls"].get(i), notes, i) for i in IMPLS]
                      for r in sorted(sweep, key=lambda r: r["dims"][2])]))
    notes.print()
    print("\nelapsed %.0f s" % meta["elapsed_s"])


def _label(r):
    causal = " causal" if r.get("variant") == "causal" else ""
    return "%s%s (%s)" % (r["name"], causal, ",".join(map(str, r["dims"]))), causal


def _fmt(x, fmt):
    return "-" if x is None else fmt % x


def _forward_table(rows, notes, impls):
    """Print the forward's table; returns the rows where cattn is slower than torch."""
    header = ["shape (B,H,Lq,Lk,D)", "dtype", "thr", "cattn ms", "numpy ms", "torch ms",
              "cattn/torch", "cattn/numpy", "cattn GFLOP/s", "% GEMM", "GB/s", "% BW"]
    body, slower = [], []
    f = _fmt
    for r in rows:
        if not r["table"]:
            continue
        im = r["impls"]
        ca = im.get("cattn", {})
        label, causal = _label(r)
        body.append([
            label, r["dtype"], r["threads"],
            _cell(im.get("cattn"), notes, "cattn"), _cell(im.get("numpy"), notes, "numpy"),
            _cell(im.get("torch"), notes, "torch"),
            f(r.get("cattn_over_torch"), "%.3g"), f(r.get("cattn_over_numpy"), "%.3g"),
            f(ca.get("gflops"), "%.1f"), f(ca.get("pct_gemm"), "%.0f%%"),
            f(ca.get("gbs"), "%.1f"), f(ca.get("pct_bw"), "%.0f%%")])
        if r.get("cattn_over_torch") and r["cattn_over_torch"] > 1.0:
            slower.append("%s%s %s %dt (x%.2f)" % (r["name"], causal, r["dtype"], r["threads"],
                                                  r["cattn_over_torch"]))
    print(_table(header, body))
    print("\nratios: time(cattn) / time(other), < 1 = cattn faster.  GFLOP/s = 4*B*H*Lq*Lk*D "
          "/ time; GB/s (Lq = 1) = (q + k + v + out) bytes / time")
    return slower


def _backward_table(rows, notes, impls):
    """Print --backward's table, one line per case: forward + backward and
    the backward alone of each implementation, the ratios, and cattn's
    backward GFLOP/s.  Returns the cases where cattn's forward + backward is
    slower than torch's."""
    others = [i for i in impls if i != "cattn"]
    cases = {}
    for r in rows:
        key = (r["name"], tuple(r["dims"]), r["dtype"], r["variant"], r["threads"])
        cases.setdefault(key, {})[r["stage"]] = r
    header = (["shape (B,H,Lq,Lk,D)", "dtype", "thr"]
              + ["%s fwd+bwd ms" % i for i in impls] + ["%s bwd ms" % i for i in impls]
              + ["fwd+bwd cattn/%s" % o for o in others] + ["bwd cattn/%s" % o for o in others]
              + ["cattn bwd GFLOP/s", "% GEMM"])
    body, slower = [], []
    for stages in cases.values():
        fb, bw = stages.get("fwd_bwd", {}), stages.get("bwd", {})
        r = fb or bw
        label, causal = _label(r)
        ca = bw.get("impls", {}).get("cattn", {})
        body.append(
            [label, r["dtype"], r["threads"]]
            + [_cell(fb.get("impls", {}).get(i), notes, i) for i in impls]
            + [_cell(bw.get("impls", {}).get(i), notes, i) for i in impls]
            + [_fmt(fb.get("cattn_over_" + o), "%.3g") for o in others]
            + [_fmt(bw.get("cattn_over_" + o), "%.3g") for o in others]
            + [_fmt(ca.get("gflops"), "%.1f"), _fmt(ca.get("pct_gemm"), "%.0f%%")])
        if fb.get("cattn_over_torch") and fb["cattn_over_torch"] > 1.0:
            slower.append("%s%s %s %dt (x%.2f)" % (r["name"], causal, r["dtype"], r["threads"],
                                                  fb["cattn_over_torch"]))
    print(_table(header, body))
    print("\nratios: time(cattn) / time(other), < 1 = cattn faster.  backward GFLOP/s = "
          "2.5 * 4*B*H*Lq*Lk*D / time (causal counted in full); % GEMM: of the same-dtype "
          "GEMM rate at that thread count")
    return slower


def _plot(path, sweep, meta, threads):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    labels = {"cattn": "cattn", "numpy": "NumPy (naive)", "torch": "PyTorch SDPA"}
    sweep = sorted(sweep, key=lambda r: r["dims"][2])
    for i in IMPLS:
        pts = [(r["dims"][2], r["impls"][i]["median_s"] * 1e3) for r in sweep
               if "median_s" in r["impls"].get(i, {})]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=labels[i])
    ax.set_xscale("log", base=2)
    ax.set_xticks([r["dims"][2] for r in sweep])
    ax.set_xticklabels([str(r["dims"][2]) for r in sweep])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_yscale("log")
    ax.set_xlabel("sequence length L (Lq = Lk)")
    ax.set_ylabel("time per call (ms, median)")
    ax.set_title("attention (1, 8, L, L, 64) float32, %d thread(s)\n%s" % (threads, meta["cpu"]),
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
