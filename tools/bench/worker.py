"""A worker process of the side-by-side runner (``tools/bench/runner.py``).

Started by the runner as ``python -m tools.bench.worker IMPL THREADS`` in the
repository root, with the thread variables of the environment set to
THREADS; it imports only the library it times (a numpy or torch worker never
loads cattn and its OpenMP runtime).  It reads one JSON request per line on
stdin and writes one JSON answer per line on stdout; whatever the libraries
print goes to stderr.  A failed request is answered with
``{"error": "Type: message"}`` and the worker keeps serving.
"""
import json
import math
import os
import sys
import time

from benchmarks.common import (BackwardImpl, import_cattn, keep_mask, make_qkv,
                               naive_attention)

STAGES = ("forward", "fwd_bwd", "bwd")

class _Runner:
    """Lives in a worker process; answers the parent's requests."""

    def __init__(self, impl, threads):
        import numpy as np
        self.np = np
        self.impl, self.threads = impl, threads
        self.key = self.inputs = self.plan = self.fn = self.bimpl = None
        self.bw_array = None
        self.info = {"impl": impl, "threads": threads, "numpy": np.__version__,
                     "pid": os.getpid()}
        try:
            from threadpoolctl import threadpool_limits, threadpool_info
            self._limits = threadpool_limits(limits=threads, user_api="blas")
            self.info["blas"] = ["%s %s (%s)" % (d.get("internal_api"), d.get("version"),
                                                 d.get("threading_layer"))
                                 for d in threadpool_info() if d.get("user_api") == "blas"]
        except ImportError:
            self._limits = None
        self._fn_for = None       # (variant, Lq, Lk) -> fn(q, k, v)
        if impl == "numpy":
            def numpy_fn(variant, Lq, Lk):
                mask = keep_mask(Lq, Lk, variant)       # built once, not timed
                return lambda q, k, v: naive_attention(q, k, v, variant, mask)
            self._fn_for = numpy_fn
        elif impl == "torch":
            import torch
            import torch.nn.functional as F
            torch.set_num_threads(threads)
            self.info["torch"] = torch.__version__
            self.info["torch_threads"] = torch.get_num_threads()
            sdpa = F.scaled_dot_product_attention
            frm = torch.from_numpy

            def torch_fn(variant, Lq, Lk):
                if variant == "plain":
                    return lambda q, k, v: sdpa(frm(q), frm(k), frm(v)).numpy()
                if Lq == Lk:        # is_causal is top-left aligned: the same when square
                    return lambda q, k, v: sdpa(frm(q), frm(k), frm(v), is_causal=True).numpy()
                mask = frm(keep_mask(Lq, Lk, variant))
                return lambda q, k, v: sdpa(frm(q), frm(k), frm(v), attn_mask=mask).numpy()
            self._fn_for = torch_fn
        elif impl == "cattn":
            cattn = import_cattn(tries=20)
            self.info["cattn"] = getattr(cattn, "__version__", "?")
            self.info["cattn_path"] = os.path.dirname(os.path.abspath(cattn.__file__))
            attention = cattn.attention

            def cattn_fn(variant, Lq, Lk):
                causal = variant == "causal"
                return lambda q, k, v: attention(q, k, v, causal=causal, num_threads=threads)
            self._fn_for = cattn_fn
        elif impl != "bw":
            raise ValueError("unknown implementation %r" % impl)

    def handle(self, req):
        op = req["op"]
        if op == "case":
            return self._case(req)
        if op == "gemm":
            return self._gemm(req)
        if op == "bw_alloc":
            self.bw_array = None
            n = max(1, int(req["nbytes"]) // 4)
            self.bw_array = self.np.ones(n, dtype=self.np.float32)   # touched: not lazy
            self.np.dot(self.bw_array, self.bw_array)
            return {"nbytes": self.bw_array.nbytes}
        if op == "bw_run":
            x, dot = self.bw_array, self.np.dot
            t0 = time.perf_counter()
            for _ in range(int(req["reps"])):
                dot(x, x)
            return {"elapsed": time.perf_counter() - t0, "nbytes": x.nbytes * int(req["reps"])}
        raise ValueError("unknown op %r" % op)

    def drop(self):
        """Forget the current case (its inputs, calibration and state)."""
        if self.bimpl is not None:
            self.bimpl.close()
        self.key = self.inputs = self.plan = self.fn = self.bimpl = None

    def _setup(self, req):
        """Inputs and the timed function of a case: ``fn(*self.inputs)``.
        Stage "forward" times attention on (q, k, v); "fwd_bwd" and "bwd"
        time forward + backward and the backward alone
        (``benchmarks.common.BackwardImpl``, which holds its inputs)."""
        dims = req["dims"]
        variant = req.get("variant", "plain")
        stage = req.get("stage", "forward")
        if variant not in ("plain", "causal"):
            raise ValueError("unknown variant %r" % variant)
        if stage not in STAGES:
            raise ValueError("unknown stage %r" % stage)
        if stage == "forward":
            self.inputs = make_qkv(dims, req["dtype"], seed=req.get("seed", 0))
            self.fn = self._fn_for(variant, dims[2], dims[3])
        else:
            self.bimpl = BackwardImpl(self.impl, self.threads, variant, dims, req["dtype"],
                                      seed=req.get("seed", 0))
            self.inputs = ()
            self.fn = getattr(self.bimpl, stage)

    def _case(self, req):
        if req["key"] != self.key:
            self.drop()
            self._setup(req)
            self.key = req["key"]
        args = self.inputs
        fn = self.fn
        if self.plan is None:                 # first visit: warm up, calibrate
            t0 = time.perf_counter()
            fn(*args)
            est = time.perf_counter() - t0
            if est > req["max_call_s"]:
                self.plan = {"skip": "one call took %.1f s > --max-call %.0f s"
                                     % (est, req["max_call_s"])}
            else:
                if est < 0.5:                 # the 2nd call is the cleaner estimate
                    t0 = time.perf_counter()
                    fn(*args)
                    est = time.perf_counter() - t0
                self.plan = {"inner": max(1, int(math.ceil(req["min_time"] / max(est, 1e-7))))}
        if "skip" in self.plan:
            return dict(self.plan)
        inner = self.plan["inner"]
        t0 = time.perf_counter()
        for _ in range(inner):
            fn(*args)
        return {"t": (time.perf_counter() - t0) / inner, "inner": inner}

    def _gemm(self, req):
        np = self.np
        n, reps = int(req["n"]), int(req["reps"])
        rng = np.random.default_rng(1)
        a = rng.standard_normal((n, n), dtype=np.dtype(req["dtype"]))
        b = rng.standard_normal((n, n), dtype=np.dtype(req["dtype"]))
        c = np.empty_like(a)
        np.matmul(a, b, out=c)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            times.append(time.perf_counter() - t0)
        return {"times": times}


def _worker_main(argv):
    impl, threads = argv[0], int(argv[1])
    # stdout carries the protocol (one JSON object per line); anything the
    # libraries print goes to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    runner = None
    try:
        runner = _Runner(impl, threads)
        send({"ready": True, "info": runner.info})
    except Exception as exc:
        send({"ready": False, "error": "%s: %s" % (type(exc).__name__, exc)})
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("op") == "quit":
            break
        if runner is None:
            send({"error": "worker not ready"})
            continue
        try:
            send(runner.handle(req))
        except BaseException as exc:  # MemoryError included: report, keep serving
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            try:
                runner.drop()
            except Exception:
                runner.key = runner.inputs = runner.plan = runner.fn = runner.bimpl = None
            send({"error": "%s: %s" % (type(exc).__name__, exc)})
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
