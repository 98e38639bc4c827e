"""cattn.attention against NumPy (reference oracle and naive) and PyTorch.

Every suite is parametrised over implementation x shape (or variant) x
dtype x threads and has a ``time_attention`` and a ``peakmem_attention``
twin (see ``benchmarks/common.py`` for the implementations, the shape
names and the skipping rules).
"""
from .common import (
    DTYPES,
    IMPLS,
    MAX_THREADS,
    SHAPES,
    THREADS,
    _AttentionSuite,
    parse_shape,
    shape_id,
)

# the standard shapes (common.SHAPES) timed by IssueShapes, by name
ISSUE_SHAPES = ["small", "batch4_512", "h16_1k", "4k", "d128_2k", "cross",
                "decode4k", "decode64k"]


class IssueShapes(_AttentionSuite):
    """Plain scaled-dot attention at the standard shapes (``shape`` is a name
    of ``common.SHAPES``: small (1,8,128,128,64), batch4_512 (4,8,512,512,64),
    h16_1k (1,16,1024,1024,64), 4k (1,8,4096,4096,64), d128_2k
    (1,12,2048,2048,128), cross (2,8,256,2048,64), decode4k (1,32,1,4096,128),
    decode64k (1,1,1,65536,128))."""

    params = [IMPLS, ISSUE_SHAPES, DTYPES, THREADS]
    param_names = ["impl", "shape", "dtype", "threads"]

    def args_of(self, impl, shape, dtype, threads):
        return impl, SHAPES[shape], dtype, threads, "plain"


class Masked(_AttentionSuite):
    """Causal and sliding-window (512 keys back, causal) attention at the
    ``4k`` shape (1, 8, 4096, 4096, 64).  The float64 oracle is skipped here
    (its masking takes 8-25 s a call)."""

    shape = SHAPES["4k"]
    limits = {"numpy_ref": 0, "numpy_naive": 1.1e10}
    params = [IMPLS, ["causal", "window"], DTYPES, THREADS]
    param_names = ["impl", "variant", "dtype", "threads"]

    def args_of(self, impl, variant, dtype, threads):
        return impl, self.shape, dtype, threads, variant


class ScoreFunctions(_AttentionSuite):
    """Cosine similarity against scaled dot product at (1, 8, 1024, 1024, 64)."""

    shape = (1, 8, 1024, 1024, 64)
    params = [IMPLS, ["scaled_dot", "cosine"], DTYPES, THREADS]
    param_names = ["impl", "score", "dtype", "threads"]

    def args_of(self, impl, score, dtype, threads):
        return impl, self.shape, dtype, threads, score


class Additive(_AttentionSuite):
    """Additive (tanh) scores; the NumPy baselines materialise
    (Lq, Lk, D) and only run at the small size."""

    params = [["cattn", "numpy_ref", "numpy_naive"],
              [shape_id(1, 8, 256, 256, 64), shape_id(1, 8, 1024, 1024, 64)],
              DTYPES, THREADS]
    param_names = ["impl", "shape", "dtype", "threads"]
    limits = {"numpy_ref": 5e7, "numpy_naive": 5e7, ("numpy_ref", "float32"): 5e7}

    def args_of(self, impl, shape, dtype, threads):
        return impl, parse_shape(shape), dtype, threads, "additive"


class Tiny(_AttentionSuite):
    """The ``tiny`` shape (1, 1, 16, 16, 64): per-call overhead."""

    shape = SHAPES["tiny"]
    params = [IMPLS, DTYPES, THREADS]
    param_names = ["impl", "dtype", "threads"]

    def args_of(self, impl, dtype, threads):
        return impl, self.shape, dtype, threads, "plain"


class SmallCalls(_AttentionSuite):
    """cattn's small calls as a caller with a preallocated output makes
    them (``out=``): ``tiny`` (1, 1, 16, 16, 64) and ``small``
    (1, 8, 128, 128, 64), plain and causal.  What they cost besides the
    kernel is the per-call overhead; the peers' rows are in Tiny and
    IssueShapes."""

    params = [["tiny", "small"], ["plain", "causal"], DTYPES, THREADS]
    param_names = ["shape", "variant", "dtype", "threads"]

    def args_of(self, shape, variant, dtype, threads):
        return "cattn", SHAPES[shape], dtype, threads, variant

    def setup(self, *params):
        import numpy as np      # not at import: the runner's parent only reads params
        super().setup(*params)
        q, _, v = self.qkv
        out = np.empty(q.shape[:-1] + v.shape[-1:], q.dtype)
        fn = self.fn
        self.fn = lambda q, k, v: fn(q, k, v, out=out)
        self.fn(*self.qkv)


def _status_kb(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1])
    raise KeyError(key)


class Memory(_AttentionSuite):
    """The ``mem16k`` shape, Lq = Lk = 16384, D = 64, one head: peak memory.  A naive float32
    NumPy builds several 1 GiB score matrices; cattn and torch do not.

    ``track_extra_mib``: growth of the peak RSS (VmHWM, reset through
    /proc/self/clear_refs) during one call, in MiB (Linux only)."""

    shape = SHAPES["mem16k"]
    params = [IMPLS, ["float32"], [MAX_THREADS]]
    param_names = ["impl", "dtype", "threads"]
    limits = {"numpy_ref": 1e10, "numpy_naive": 2e10}   # the float64 oracle (~8 GiB): skipped
    time_attention = None                                # memory only

    def args_of(self, impl, dtype, threads):
        return impl, self.shape, dtype, threads, "plain"

    def setup(self, *params):
        try:
            _status_kb("VmHWM")
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except (OSError, KeyError):
            self.can_track = False
        else:
            self.can_track = True
        super().setup(*params)

    def track_extra_mib(self, *params):
        if not self.can_track:
            return float("nan")
        rss0 = _status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")                                # VmHWM := VmRSS
        self.fn(*self.qkv)
        return (_status_kb("VmHWM") - rss0) / 1024.0

    track_extra_mib.unit = "MiB"
