"""Fuzz target: cattn's argument parsing and shape logic.

Random (and hostile) shapes, strides, dtypes and keyword arguments, wrong
ones included, are thrown at ``cattn.attention`` (and ``scores``,
``softmax``, ``aggregate``, ``merge``).  The only acceptable outcomes are a
result or ``ValueError`` / ``TypeError`` / ``MemoryError``; anything else
(another exception, a segfault, an abort) is a crash.

Two drivers share one input generator:

* atheris (coverage-guided, libFuzzer flags)::

      pip install atheris
      python tests/fuzz_attention.py -atheris_runs=20000 -seed=1
      python tests/fuzz_attention.py -max_total_time=600 /tmp/corpus

* a plain random loop, used automatically when atheris is not importable
  (or with ``--plain``)::

      python tests/fuzz_attention.py --plain --runs 20000 --seed 0

Options of the plain driver: ``--check`` also compares every successful
tame call (float64, finite, moderate values) with ``cattn.reference``;
``--include-known`` also generates the inputs of known, still open bugs
(``KNOWN_BUGS`` below, none at the moment), which are otherwise avoided so
that a short run tests for *new* crashes.  Inputs that crashed or hung
cattn before their fix are generated as usual (``out=`` aliasing
``kv_lengths``: BUG-1; a logically huge query axis with no keys: a hang
before 5b62fcf; ``num_threads`` >= 2**31: OverflowError before 5b62fcf).

Argument kinds and aliasing: arguments are also passed as memoryviews,
lists and (when torch is importable) torch tensors; ``out=`` is made to
share memory with any one argument (or to interleave with it without
sharing), inputs share memory with each other, and segment ids come in
mixed integer dtypes at both ends of their range.  A call that returns
with an ``out`` overlapping an argument cattn reads in place is a failure;
with ``--check`` the oracle reads the inputs as they were before the call.

Memory: before fuzzing, the address space is capped (``RLIMIT_AS``) at the
current size + ``CATTN_FUZZ_MEM_MB`` (default 1536) so that a request for a
huge array raises MemoryError instead of paging the machine out (skipped
under AddressSanitizer, whose shadow memory needs the whole address space).
Calls whose logical work would take long with an allocatable output are
skipped (counted as ``skipped_work``).

The test-suite runs short runs in a subprocess
(``tests/test_reliability_inputs.py::test_fuzz_short_run_plain`` and
``test_fuzz_short_run_atheris``).
"""
import argparse
import os
import random
import resource
import sys

import numpy as np

ACCEPTABLE = (ValueError, TypeError, MemoryError)

# Open bugs whose inputs are generated only with --include-known
# (name -> description; see docs/reliability.md).  Empty: the ones found
# while writing this target (BUG-1, BUG-4, BUG-11, the Lk = 0 hang, the
# num_threads OverflowError) are fixed, and their inputs are generated.
KNOWN_BUGS = {}

MAX_WORK = 2e7          # logical multiply-adds a call may take (when its output fits)
_STATS = {}
_LAST = [""]            # description of the call in progress (for reports)
_ALIASED = [None]       # the input an out= of this call was made to overlap
_ECHO = [False]         # print each call before making it (replay)


def describe(x):
    """Short text of an argument: arrays by shape, dtype and strides."""
    if isinstance(x, np.ndarray):
        extra = "" if x.flags.writeable else ", read-only"
        return f"array(shape={x.shape}, dtype={x.dtype}, strides={x.strides}{extra})"
    if isinstance(x, (list, tuple)) and len(repr(x)) > 80:
        return f"{type(x).__name__}(len={len(x)})"
    return repr(x)


def _count(key):
    _STATS[key] = _STATS.get(key, 0) + 1


# ---------------------------------------------------------------------------
# a source of random decisions: atheris' FuzzedDataProvider or random.Random
# ---------------------------------------------------------------------------
class Draw:
    def __init__(self, fdp=None, rng=None):
        self.fdp = fdp
        self.rng = rng
        self.tame = False   # tame: well-formed arguments with hostile values

    def int(self, lo, hi):
        if self.fdp is not None:
            return self.fdp.ConsumeIntInRange(lo, hi)
        return self.rng.randint(lo, hi)

    def bool(self, p=0.5):
        if self.fdp is not None:
            return self.fdp.ConsumeProbability() < p
        return self.rng.random() < p

    def choice(self, seq):
        return seq[self.int(0, len(seq) - 1)]

    def seed(self):
        return self.int(0, 2**32 - 1)


# ---------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------
HOSTILE_FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-300, -1e-300, 5e-324, 1e-45, 1e30,
                  -1e30, 3.5e38, 1e300, -1e300, np.inf, -np.inf, np.nan, 2.0**63]
FINITE_FLOATS = [x for x in HOSTILE_FLOATS if np.isfinite(x)]
HOSTILE_INTS = [0, 1, 2, 3, -1, 7, 2**31 - 1, 2**31, -2**31, 2**62, 2**63 - 1, 2**64]
FLOAT_DTYPES = [np.float16, np.float32, np.float64]
try:                      # bfloat16 (ml_dtypes) q/k/v, out= and the plain path's
    import ml_dtypes
    FLOAT_DTYPES.append(np.dtype(ml_dtypes.bfloat16))
except ImportError:       # pragma: no cover
    pass
SEGMENT_DTYPES = [np.int64, np.int64, np.uint64, np.int32, np.int8, np.uint8, np.bool_]
OTHER_DTYPES = [np.int8, np.int32, np.int64, np.uint8, np.uint64, np.bool_,
                np.complex64, np.longdouble, object, "U3", "V8", "datetime64[s]"]


def _values(d, shape, dtype):
    rng = np.random.default_rng(d.seed())
    n = int(np.prod(shape, dtype=np.int64))
    mag = d.choice([1.0, 1.0, 1.0, 0.0, 1e-300, 1e-30, 1e4, 3e19, 1e30, 1e160, 1e300])
    x = rng.standard_normal(n) * mag
    if n and len(shape) >= 2 and shape[-1] and d.bool(0.05):
        # a whole row -inf (a key whose scores are -inf)
        row = d.int(0, n // shape[-1] - 1) if n >= shape[-1] else 0
        x[row * shape[-1]:(row + 1) * shape[-1]] = -np.inf
    if n and d.bool(0.25):                      # NaN / inf placements
        for _ in range(d.int(1, 3)):
            x[d.int(0, n - 1)] = d.choice([np.nan, np.inf, -np.inf])
    dt = np.dtype(dtype)
    with np.errstate(all="ignore"):
        if dt.kind == "f" or dt.name == "bfloat16":
            return x.astype(dt).reshape(shape)
        if dt.kind in "iu":
            return np.nan_to_num(x * 3, posinf=5, neginf=-5).clip(-100, 100).astype(dt).reshape(shape)
        if dt.kind == "b":
            return (x > 0).reshape(shape)
        if dt.kind == "c":
            return (x + 1j).astype(dt).reshape(shape)
        if dt.kind == "O":
            return x.astype(object).reshape(shape)
        return np.zeros(shape, dt)


def _shape(d, ndim, base=None):
    dims = []
    for ax in range(ndim):
        if base is not None and ax < len(base) and d.bool(0.7):
            dims.append(base[ax])
        else:
            dims.append(d.choice([0, 1, 1, 2, 3, 4, 5, 8, 17]))
    return tuple(dims)


def _restride(d, a):
    """Same values, other memory layout: reversed, sliced, transposed,
    Fortran order, unaligned-ish views, broadcast (zero stride), huge."""
    if not isinstance(a, np.ndarray) or a.ndim == 0:
        return a
    kind = d.int(0, 8)
    if kind == 6 and d.tame:
        kind = 0
    if kind == 1:
        ax = d.int(0, a.ndim - 1)
        return np.flip(a, ax)
    if kind == 2:
        big = np.repeat(a, 2, axis=-1) if a.shape[-1] else a
        return big[..., ::2] if a.shape[-1] else a
    if kind == 3 and a.ndim >= 2:
        return np.swapaxes(np.ascontiguousarray(np.swapaxes(a, -1, -2)), -1, -2)
    if kind == 4:
        return np.asfortranarray(a)
    if kind == 5 and a.size:
        ax = d.int(0, a.ndim - 1)
        idx = [slice(None)] * a.ndim
        idx[ax] = slice(0, 1)
        shp = list(a.shape)
        shp[ax] = a.shape[ax] if d.tame else d.choice([a.shape[ax], 3, 6])
        return np.broadcast_to(a[tuple(idx)], shp)          # read-only, stride 0
    if kind == 6 and a.size:
        # a logically huge axis with stride 0 (no memory behind it)
        ax = d.int(0, a.ndim - 1)
        shp = list(a.shape)
        shp[ax] = d.choice([2**20, 2**31 + 3, 2**40])
        st = list(a.strides)
        st[ax] = 0
        try:
            return np.lib.stride_tricks.as_strided(a, shape=shp, strides=st, writeable=False)
        except ValueError:
            return a
    if kind == 7:
        a = a.copy()
        a.flags.writeable = False
        return a
    return a


def _array(d, shape, dtype=None):
    if dtype is None:
        r = d.int(0, 19)
        dtype = d.choice(FLOAT_DTYPES) if (r < 16 or d.tame) else d.choice(OTHER_DTYPES)
    return _restride(d, _values(d, shape, dtype))


def _junk(d):
    return d.choice([None, "x", 1, 1.5, True, [1, [2, 3]], {"a": 1}, object(), b"ab",
                     np.float64(np.nan), 1 + 2j, (), [[]]])


def _param(d, good):
    """A keyword value: usually plausible (``good()``), sometimes hostile."""
    if d.tame:
        return good()
    r = d.int(0, 9)
    if r < 7:
        return good()
    if r < 9:
        return d.choice(HOSTILE_FLOATS + HOSTILE_INTS)
    return _junk(d)


# ---------------------------------------------------------------------------
# one attention call
# ---------------------------------------------------------------------------
def _qkv(d):
    nd = d.choice([2, 2, 3, 3, 4, 4, 5] + ([] if d.tame else [1, 0]))
    lead = _shape(d, max(nd - 2, 0))
    Lq, Lk = d.choice([0, 1, 2, 5, 9, 17, 40]), d.choice([0, 1, 3, 8, 17, 64])
    D, Dv = d.choice([0, 1, 3, 4, 8, 16]), d.choice([0, 1, 2, 5, 8])
    kv_lead = lead
    if len(lead) >= 1 and d.bool(0.3):            # GQA / broadcast / mismatch
        h = lead[-1]
        kv_lead = lead[:-1] + (d.choice([x for x in range(1, h + 1) if h % x == 0] or [h])
                               if d.tame else d.choice([1, 2, 3, h]),)
    if d.bool(0.1) and not d.tame:
        kv_lead = _shape(d, d.int(0, 3))
    if nd < 2:
        shapes = [_shape(d, nd) for _ in range(3)]
    else:
        off = [0] if d.tame else [0, 0, 0, 1]
        shapes = [lead + (Lq, D), kv_lead + (Lk, D + d.choice(off)),
                  kv_lead + (Lk + d.choice(off), Dv)]
    dt = d.choice(FLOAT_DTYPES) if d.bool(0.8) else None
    same = d.bool(0.6)
    arrs = [_array(d, s, dt if same else None) for s in shapes]
    if d.tame:
        pass
    elif d.bool(0.05):
        arrs[d.int(0, 2)] = _junk(d)
    elif d.bool(0.05):
        arrs[0] = (arrs[0].tolist() if isinstance(arrs[0], np.ndarray) and 0 < arrs[0].size < 200
                   else arrs[0])
    return arrs, (lead, Lq, Lk, D, Dv)


def _kwargs(d, geom, arrs, include_known):
    lead, Lq, Lk, D, Dv = geom
    kw = {}
    if d.bool(0.4):
        kw["score"] = _param(d, lambda: d.choice(["dot", "scaled_dot", "cosine", "additive"]))
        if d.bool(0.1) and not d.tame:
            kw["score"] = d.choice(["DOT", "", "softmax", None, 3])
    if d.bool(0.4):
        kw["scale"] = _param(d, lambda: d.choice(
            [d.choice(FINITE_FLOATS if d.tame else HOSTILE_FLOATS), np.float32(2.0), 3,
             _array(d, _shape(d, d.int(0, 3), lead[-1:] if lead else None), np.float64)]))
    if d.bool(0.3):
        kw["mask"] = _param(d, lambda: _array(d, _pair_shape(d, lead, Lq, Lk), np.bool_)
                            if d.tame else _array(
            d, _shape(d, d.int(0, len(lead) + 2), lead + (Lq, Lk))[-d.int(1, len(lead) + 2):],
            d.choice([np.bool_, np.bool_, np.bool_, np.uint8, np.float32])))
    if d.bool(0.3):
        kw["bias"] = _param(d, lambda: _array(d, _pair_shape(d, lead, Lq, Lk)) if d.tame
                            else _array(d, _shape(d, d.int(0, 3), (Lq, Lk))))
    if d.bool(0.3):
        kw["causal"] = _param(d, lambda: d.choice([True, False, np.bool_(True)]))
    if d.bool(0.3):
        sides = [None, 0, 1, 2, 5, -1, -3, 2**62, -2**62, 2**70, -2**70]
        if not d.tame:
            sides += [1.5, True, "1"]
        side = lambda: d.choice(sides)
        kw["window"] = _param(d, lambda: d.choice(
            [(side(), side()), [side(), side()]] + ([] if d.tame else [(side(),), (1, 2, 3), "ab"])))
    if d.bool(0.15) and (not d.tame or kw.get("score") == "additive"):
        kw["additive_weight"] = _param(d, lambda: _array(d, (d.choice([D, D, D + 1]),)))
    if d.bool(0.3):
        kw["return_weights"] = _param(d, lambda: d.choice(
            [True, False, "key_mass", np.bool_(True)] + ([] if d.tame else [1, 0, "keys"])))
    if d.bool(0.3):
        kw["return_lse"] = _param(d, lambda: d.choice(
            [True, False, np.bool_(True)] + ([] if d.tame else [1])))
    if d.bool(0.3):
        bad = [0, -1, 1.5, "2", True, np.int64(2), -2**64, 2**31, 2**63, 2**64 + 1]
        kw["num_threads"] = d.choice([None, 1, 2, 3, 4] + ([] if d.tame else bad))
    if d.bool(0.25):
        kw["kv_lengths"] = _lengths(d, lead, Lk)
    if d.bool(0.25):
        kw["q_lengths"] = _lengths(d, lead, Lq)
    if d.bool(0.2):
        kw["q_segments"] = _segments(d, lead, Lq)
        if d.tame or d.bool(0.9):
            kw["kv_segments"] = _segments(d, lead, Lk)
    if d.bool(0.15):
        kw["softcap"] = _param(d, lambda: d.choice([0.5, 5.0, 30.0, 1e4, 1e-3]))
    if d.bool(0.15):
        kw["sinks"] = _param(d, lambda: d.choice(
            [0.0, -1.0, 2.5, -np.inf, _array(d, _shape(d, d.int(0, 2), lead[-1:] if lead else None),
                                    np.float64)]))
    if d.bool(0.25):
        kw["out"] = _out(d, geom, arrs, kw, include_known)
    return kw


def _pair_shape(d, lead, Lq, Lk):
    """A shape that broadcasts to the scores' shape lead + (Lq, Lk)."""
    full = tuple(lead) + (Lq, Lk)
    shp = list(full[-d.int(1, len(full)):])
    for ax in range(len(shp)):
        if d.bool(0.3):
            shp[ax] = 1
    return tuple(shp)


def _lengths(d, lead, L):
    def good():
        shp = d.choice([(), lead[:1], lead] + ([] if d.tame else [lead[-1:], (d.int(0, 4),)]))
        rng = np.random.default_rng(d.seed())
        return rng.integers(0, L + 1, size=shp).astype(d.choice([np.int64, np.int32, np.uint8]))
    if d.tame:
        return good()
    return _param(d, lambda: d.choice([good(), good(), np.array([-1]), np.array([L + 1]),
                                       np.array([1.0]), [L], np.array([True])]))


def _segments(d, lead, L):
    def good():
        shp = d.choice([(L,), lead + (L,), lead[:1] + (1,) * max(len(lead) - 1, 0) + (L,)]
                       + ([] if d.tame else [(L + 1,), ()]))
        rng = np.random.default_rng(d.seed())
        dt = np.dtype(d.choice(SEGMENT_DTYPES))
        if not shp:
            return dt.type(1)
        if dt.kind == "b":
            return rng.integers(0, 2, size=shp).astype(bool)
        info = np.iinfo(dt)
        # ids at both ends of the dtype: uint64 2**64 - 1 must not equal -1
        ends = np.array([info.min, info.max, 0, 1, info.max - 1], dtype=dt)
        ids = ends[rng.integers(0, len(ends), size=shp)]
        return np.sort(ids, axis=-1) if d.bool() else ids
    return _param(d, good)


def _out(d, geom, arrs, kw, include_known):
    lead, Lq, Lk, D, Dv = geom
    q = arrs[0]
    try:
        dt = np.result_type(*[a for a in arrs if isinstance(a, np.ndarray)])
    except Exception:
        dt = np.float64
    shape = tuple(lead) + (Lq, Dv)
    kind = 0 if d.tame else d.int(0, 7)
    if kind == 0:
        return np.empty(shape, dt)
    if kind == 1:
        return np.empty(shape, np.float32 if dt != np.float32 else np.float64)
    if kind == 2:
        return np.empty(shape[:-1] + (Dv + 1,), dt)
    if kind == 3:
        o = np.empty(shape, dt)
        o.flags.writeable = False
        return o
    if kind == 4 and isinstance(q, np.ndarray) and q.shape == shape:
        return q                                     # overlaps the query
    if kind == 5 and isinstance(arrs[2], np.ndarray) and arrs[2].size:
        v = arrs[2]
        try:                                          # a view of the value's buffer
            return np.lib.stride_tricks.as_strided(v, shape=shape, strides=(0,) * len(shape))
        except Exception:
            return np.empty(shape, dt)
    if kind == 6 and "kv_lengths" in kw:
        # out sharing memory with kv_lengths (a segfault before a7fb2ac)
        o = np.zeros(shape, dt)
        flat = o.reshape(-1)
        if flat.dtype == np.float64 and flat.size >= 1:
            kvl = flat.view(np.int64)[:1]
            kvl[:] = Lk
            kw["kv_lengths"] = kvl
        return o
    return [[0.0]]


def _work(arrs, geom, kw, include_known=False):
    """Logical multiply-adds of the call and bytes of its outputs, or None."""
    lead, Lq, Lk, D, Dv = geom
    try:
        shapes = [a.shape for a in arrs if isinstance(a, np.ndarray)]
        if len(shapes) != 3 or any(len(s) < 2 for s in shapes):
            return None
        n = 1
        for s in shapes:
            n = max(n, int(np.prod(s[:-2], dtype=object)) if len(s) > 2 else 1)
        Lq, D = shapes[0][-2:]
        Lk = shapes[1][-2]
        Dv = shapes[2][-1]
    except Exception:
        return None
    work = n * Lq * max(Lk, 1) * max(D + Dv, 1)
    # bytes the call must allocate: a huge request is expected to fail fast
    rw = kw.get("return_weights", False)
    out_bytes = n * Lq * Dv * 8
    if rw is not False or kw.get("return_lse", False) is not False:
        out_bytes += n * Lq * 8
    if rw is True:          # allocated before any work since 5555b6c (BUG-4)
        out_bytes += n * Lq * Lk * 8
    return work, out_bytes


# ---------------------------------------------------------------------------
# the target
# ---------------------------------------------------------------------------
def one_call(d, include_known=False, check=False):
    import cattn
    d.tame = d.bool(0.5)
    which = d.int(0, 19)
    if which >= 16:
        return _stage_call(d, which)
    arrs, geom = _qkv(d)
    kw = _kwargs(d, geom, arrs, include_known)
    _ALIASED[0] = None
    if d.bool(0.15):
        _alias_out(d, arrs, kw)
    elif d.bool(0.1):
        _alias_inputs(d, arrs)
    plain = (list(arrs), dict(kw))      # the NumPy arrays, before other kinds
    if d.bool(0.3):
        arrs, kw = _other_kinds(d, arrs, kw)
    w = _work(arrs, geom, kw, include_known)
    if w is not None and w[0] > MAX_WORK and w[1] < (256 << 20):
        _count("skipped_work")
        return
    _LAST[0] = "attention(" + ", ".join(
        [describe(a) for a in arrs] + [f"{k_}={describe(v_)}" for k_, v_ in kw.items()]) + ")"
    if _ECHO[0]:
        print("call:", _LAST[0], flush=True)
    before = None
    if check:       # the oracle reads the inputs as they were before the call
        snap = lambda x: np.array(x) if isinstance(x, np.ndarray) and x.size < 10**6 else x
        before = ([snap(a) for a in plain[0]], {k_: snap(v_) for k_, v_ in plain[1].items()})
    try:
        res = cattn.attention(*arrs, **kw)
    except ACCEPTABLE as exc:
        _count(type(exc).__name__)
        return
    _count("result")
    _check_no_overlap(plain, kw)
    _check_result(res, plain[0], plain[1], check, include_known, before)
    if kw.get("return_weights") == "key_mass" and "out" not in kw:
        # deterministic (threads add block sums in a fixed order): the same bits again
        again = cattn.attention(*arrs, **kw)
        again = again if isinstance(again, tuple) else (again,)
        parts = res if isinstance(res, tuple) else (res,)
        for a_, b_ in zip(parts, again):
            assert np.array_equal(a_, b_, equal_nan=True), "key mass differs between calls"
        _count("key_mass_repeat")


def _stage_call(d, which):
    import cattn
    shape = _shape(d, d.int(0, 4))
    a = _array(d, shape)
    _LAST[0] = f"stage {which} on {describe(a)}"
    try:
        if which == 16:
            b = _array(d, shape[:-2] + (d.choice([3, 0, 5]),) + shape[-1:] if len(shape) >= 2 else shape)
            kw = {"score": d.choice(["dot", "cosine", "additive", "scaled_dot", "bad"])}
            if d.bool(0.3):
                kw["scale"] = d.choice(HOSTILE_FLOATS)
            w = a.size * (b.shape[-2] if b.ndim >= 2 else 1) if hasattr(b, "shape") else 0
            if w > MAX_WORK:
                _count("skipped_work")
                return
            cattn.scores(a, b, num_threads=d.choice([None, 1, 2]), **kw)
        elif which == 17:
            cattn.softmax(a, axis=d.choice([-1, 0, 1, -3, 5, 1.0, None, True]))
        elif which == 18:
            b = _array(d, shape[-1:] + (d.choice([1, 2, 4]),) if shape else (1,))
            if getattr(a, "size", 0) * 4 > MAX_WORK:
                _count("skipped_work")
                return
            cattn.aggregate(a, b)
        else:
            lse = _array(d, shape[:-1] if shape else ())
            cattn.merge([a, a] if d.bool() else [a], [lse, lse] if d.bool() else [lse])
    except ACCEPTABLE as exc:
        _count(type(exc).__name__)
        return
    _count("result")


# ---------------------------------------------------------------------------
# argument kinds and aliasing
# ---------------------------------------------------------------------------
ARRAY_KWARGS = ("mask", "bias", "kv_lengths", "q_lengths", "q_segments", "kv_segments",
                "sinks", "scale", "additive_weight")


def _torch():
    try:
        import torch
        return torch
    except Exception:
        return None


def _other_kind(d, x):
    """``x`` as a memoryview, a list or a torch tensor (the same memory
    except for the list), or ``x`` when that kind cannot hold it."""
    if not isinstance(x, np.ndarray):
        return x
    kind = d.choice(["memoryview", "list", "torch"])
    try:
        if kind == "memoryview":
            return memoryview(x)
        # (a list of an array with a zero-length axis loses the axes after
        # it: [[], []] is (2, 0) whatever the array was)
        if kind == "list" and 0 < x.size < 500:
            if x is _ALIASED[0]:
                _ALIASED[0] = None          # a list is a copy: nothing shared
            return x.tolist()
        torch = _torch()
        if torch is not None and x.flags.writeable and x.dtype.kind in "fiub":
            return torch.from_numpy(x)
    except Exception:      # a layout or dtype the kind cannot hold
        pass
    return x


def _other_kinds(d, arrs, kw):
    arrs = [_other_kind(d, a) if d.bool(0.5) else a for a in arrs]
    kw = {k_: (_other_kind(d, v_) if k_ in ARRAY_KWARGS and d.bool(0.5) else v_)
          for k_, v_ in kw.items()}
    return arrs, kw


def _sharing(shape, dtype, target, d):
    """(a view of ``target``'s values in new memory, an array of ``shape``
    and ``dtype`` in the same memory that overlaps it, or not)."""
    dt = np.dtype(dtype)
    nt, no = target.nbytes, int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if target.dtype.kind not in "biuf" or dt.kind not in "biuf" or nt == 0 or no == 0 or nt + no > (8 << 20):
        return target, None
    align = max(dt.itemsize, target.itemsize)
    buf = np.zeros(nt + no + 2 * align, dtype=np.uint8)
    start = d.choice([0, align, (nt // 2) // align * align])   # where out starts
    t = buf[:nt].view(target.dtype).reshape(target.shape)
    t[...] = target
    o = buf[start:start + no].view(dt).reshape(shape)
    if d.bool(0.2):        # interleaved, disjoint: extents meet, memory does not
        o = buf[nt + align:nt + align + no].view(dt).reshape(shape)
    return t, o


def _alias_out(d, arrs, kw):
    """Make ``out`` share memory with one input (any argument)."""
    out = kw.get("out")
    if not isinstance(out, np.ndarray) or out.size == 0:
        return
    names = [i for i, a in enumerate(arrs) if isinstance(a, np.ndarray)] + \
        [k_ for k_ in ARRAY_KWARGS if isinstance(kw.get(k_), np.ndarray)]
    if not names:
        return
    which = d.choice(names)
    target = arrs[which] if isinstance(which, int) else kw[which]
    t, o = _sharing(out.shape, out.dtype, target, d)
    if o is None:
        return
    # arguments cattn reads in place (the others it may copy first: then
    # an out in their memory overwrites nothing cattn reads)
    in_place = (which in (0, 1, 2, "bias") and t.dtype.kind == "f") or \
        (which == "mask" and t.dtype == np.bool_) or which in ("q_segments", "kv_segments")
    _ALIASED[0] = t if in_place else None
    if isinstance(which, int):
        arrs[which] = t
    else:
        kw[which] = t
    kw["out"] = o


def _alias_inputs(d, arrs):
    """Inputs that share memory with each other (allowed): k = q, v = k, or
    a shifted view of one buffer."""
    q, k, v = arrs
    if not all(isinstance(a, np.ndarray) and a.ndim >= 2 for a in arrs):
        return
    if d.bool() and k.shape[-1:] == q.shape[-1:] and k.dtype == q.dtype:
        arrs[1] = q if d.bool() else q[..., ::-1, :]
    if v.shape == arrs[1].shape and v.dtype == arrs[1].dtype:
        arrs[2] = arrs[1]


def _check_no_overlap(plain, kw):
    """A call that returned must not have written into an input."""
    out = kw.get("out")
    x, _ALIASED[0] = _ALIASED[0], None
    if not isinstance(out, np.ndarray) or x is None:
        return
    if x.size < 10**6 and out.size < 10**6:
        try:
            shared = np.shares_memory(out, x, max_work=10**6)
        except Exception:      # too hard to decide here: cattn must have said so
            return
        assert not shared, "out= overlapping an input was accepted"


def _check_result(res, arrs, kw, check, include_known=False, before=None):
    """A result must have the documented structure; with ``check`` its
    values must match the float64 oracle for tame inputs (``before``: the
    inputs as they were before the call)."""
    parts = res if isinstance(res, tuple) else (res,)
    want = 1 + bool(kw.get("return_weights", False)) + bool(kw.get("return_lse", False))
    assert len(parts) == want, f"expected {want} results, got {len(parts)}"
    for p in parts:
        assert isinstance(p, np.ndarray), type(p)
    if not check:
        return
    if before is not None:
        arrs, kw = before
    q, k, v = (np.asarray(x) for x in arrs)
    tame = all(x.dtype == np.float64 and x.size < 10**5 and np.isfinite(x).all()
               and (x.size == 0 or np.abs(x).max() < 1e3) for x in (q, k, v))
    for name in ("scale", "softcap", "sinks", "bias"):
        val = kw.get(name)
        if val is not None:
            val = np.asarray(val)
            if val.dtype.kind not in "iuf" or not np.all(np.isfinite(val)) or np.abs(val).max(initial=0) > 1e3:
                tame = False
    if kw.get("softcap") is not None and kw["softcap"] < 1e-2:
        tame = False
    if not tame:
        return
    import cattn
    ref_kw = {k_: v_ for k_, v_ in kw.items() if k_ not in ("out", "num_threads")}
    try:
        exp = cattn.reference.attention(q, k, v, **ref_kw)
    except Exception:
        return
    exp = exp if isinstance(exp, tuple) else (exp,)
    for got, e in zip(parts, exp):
        g = np.asarray(got, np.float64)
        assert g.shape == e.shape, (g.shape, e.shape)
        assert np.array_equal(np.isnan(g), np.isnan(e)), "NaN pattern differs from the oracle"
        fin = np.isfinite(g) & np.isfinite(e)
        assert np.array_equal(np.isinf(g), np.isinf(e)), "inf pattern differs from the oracle"
        err = np.max(np.abs(g - e)[fin], initial=0.0)
        assert err <= 1e-8 * max(1.0, np.max(np.abs(e)[fin], initial=0.0)), f"error {err}"
    _count("checked")


# ---------------------------------------------------------------------------
# drivers
# ---------------------------------------------------------------------------
def _under_asan():
    try:
        with open("/proc/self/maps") as f:
            return "libasan" in f.read()
    except OSError:
        return False


def guard_memory(extra_mb=None):
    """Cap the address space at its current size + ``extra_mb`` MiB."""
    import cattn
    q = np.ones((4, 64, 8))
    cattn.attention(q, q, q, num_threads=2)      # start the OpenMP team first
    cattn.scores(q, q, num_threads=2)
    if _under_asan() or not hasattr(resource, "RLIMIT_AS"):
        return None
    extra_mb = int(os.environ.get("CATTN_FUZZ_MEM_MB", "1536")) if extra_mb is None else extra_mb
    with open("/proc/self/statm") as f:
        vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = vm + (extra_mb << 20)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return limit


def run_plain(runs, seed, include_known=False, check=False, log=None, verbose=False):
    """The fallback driver: ``runs`` inputs from ``random.Random(seed)``.
    Returns the outcome counts.  An unacceptable exception propagates (with
    the iteration number in the message); ``log`` gets the iteration number
    before each call so a hard crash can be replayed."""
    import warnings
    warnings.simplefilter("ignore")
    master = random.Random(seed)
    for it in range(runs):
        s = master.getrandbits(64)
        if log is not None:
            log.write(f"{it} {s}\n")
            log.flush()
        d = Draw(rng=random.Random(s))
        try:
            with np.errstate(all="ignore"):
                one_call(d, include_known, check)
        except Exception as exc:
            raise AssertionError(
                f"unacceptable outcome at iteration {it} (replay: --replay {s}"
                f"{' --include-known' if include_known else ''}): "
                f"{type(exc).__name__}: {exc}\n  call: {_LAST[0]}") from exc
        if verbose and (it + 1) % 1000 == 0:
            print(it + 1, dict(sorted(_STATS.items())), flush=True)
    return dict(_STATS)


def replay(s, include_known=False, check=False):
    """Re-run one plain-driver input (the number printed by a failure)."""
    d = Draw(rng=random.Random(s))
    _ECHO[0] = True
    with np.errstate(all="ignore"):
        one_call(d, include_known, check)


def main(argv=None):
    argv = list(sys.argv if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=True)
    p.add_argument("--plain", action="store_true", help="random loop, no atheris")
    p.add_argument("--runs", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", action="store_true", help="compare tame results with the oracle")
    p.add_argument("--include-known", action="store_true", help="also generate known bugs")
    p.add_argument("--replay", type=int, default=None)
    p.add_argument("--log", default=None, help="file receiving each input's seed")
    args, rest = p.parse_known_args(argv[1:])
    try:
        import atheris
    except ImportError:
        atheris = None
    if args.replay is not None:
        guard_memory()
        try:
            replay(args.replay, args.include_known, args.check)
        finally:
            print("call:", _LAST[0], flush=True)
        print("replay: acceptable outcome", dict(_STATS))
        return 0
    if atheris is None or args.plain:
        if atheris is None:
            print("atheris is not installed: running the plain random-input loop instead")
        guard_memory()
        log = open(args.log, "w") if args.log else None
        stats = run_plain(args.runs, args.seed, args.include_known, args.check, log,
                          verbose=True)
        print(f"plain fuzz: {args.runs} inputs, outcomes {dict(sorted(stats.items()))}")
        return 0

    with atheris.instrument_imports(include=["cattn"]):
        import cattn  # noqa: F401
    guard_memory()

    import atexit
    atexit.register(lambda: print("atheris outcomes:", dict(sorted(_STATS.items())),
                                  flush=True))

    def test_one_input(data):
        d = Draw(fdp=atheris.FuzzedDataProvider(data))
        with np.errstate(all="ignore"):
            one_call(d, args.include_known, args.check)

    import warnings
    warnings.simplefilter("ignore")
    atheris.Setup([argv[0]] + rest, test_one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    # run as a script from anywhere: the repository root holds the package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
