"""Attention over Dask arrays: ``cattn.dask.attention``.

>>> import numpy as np, dask.array as da, cattn, cattn.dask
>>> rng = np.random.default_rng(0)
>>> q = rng.standard_normal((2, 8, 4)); k = rng.standard_normal((2, 30, 4))
>>> v = rng.standard_normal((2, 30, 3))
>>> out = cattn.dask.attention(q, da.from_array(k, chunks=(1, 7, 4)),
...                            da.from_array(v, chunks=(1, 7, 3)), causal=True)
>>> bool(np.allclose(out.compute(), cattn.attention(q, k, v, causal=True)))
True

How the graph is built
----------------------
The output is blocked like the query: every (batch/head block, query chunk)
is computed independently.  For each of them the key axis is cut along the
key's chunks; every (query chunk, key chunk) pair whose keys some query can
see becomes one task that runs the fused kernel (``cattn.attention`` with
``return_lse=True``) on just that pair.  Pairs that causal/window masks (or
NumPy ``kv_lengths``/``q_lengths``) rule out entirely get no task at all.
The partial results of one query chunk are combined with the log-sum-exp
rule (``cattn.merge``) in a tree of fan-in ``split_every`` (default 4), so
one sequence's keys can be spread over any number of workers and no task
ever holds more than ``split_every`` partial outputs.

Threads: every task gives the kernel ``max(1, cores // worker_threads)``
OpenMP threads, capped by ``OMP_NUM_THREADS`` when that is set in the
worker (Dask's nanny sets it to 1 by default), so worker threads x OpenMP
threads never exceed the cores.  See :func:`task_threads`.

Dask is an optional dependency (``pip install cattn[dask]``); importing
``cattn`` alone never imports it.
"""
import math
import numbers
import operator
import os
import sys
import threading

import numpy as np

try:
    import dask
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph
except ImportError as _exc:  # pragma: no cover - exercised without dask only
    raise ImportError(
        "cattn.dask needs Dask: pip install 'cattn[dask]'"
    ) from _exc

from . import _api
from ._options import check_sinks_values, real_dtype, result_dtypes
from ._validate import (check_lengths_alignment, check_qkv_shapes, leading_dims,
                        validate_options)

__all__ = ["attention", "task_threads"]

_KEY_MASS_ELEMS = 1 << 22   # rows x keys of weights held at once for key_mass


# ------------------------------------------------------------------ threads
def _cores():
    from dask.system import CPU_COUNT   # affinity and cgroup quotas respected
    return max(1, int(CPU_COUNT))


def _env_omp():
    val = os.environ.get("OMP_NUM_THREADS", "")
    try:
        # "4" or a nested list "4,2": the outer level counts
        n = int(val.split(",")[0])
    except ValueError:
        return None
    return n if n >= 1 else None


def _current_worker():
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import get_worker
        return get_worker()
    except Exception:   # ValueError: not running on a worker
        return None


def task_threads(num_threads=None, host_threads=None):
    """OpenMP threads one task of :func:`attention` gives the kernel.

    The rule: ``num_threads`` when given; otherwise
    ``max(1, cores // worker_threads)``, capped by ``OMP_NUM_THREADS`` when
    that is set in the process running the task.

    * ``cores`` is ``dask.system.CPU_COUNT`` of that process (CPU affinity
      and cgroup quotas respected).
    * On a ``distributed`` worker, ``worker_threads`` is the number of
      threads of all workers on that machine, as the scheduler reported
      them when the graph was built (``host_threads``), and at least the
      worker's own ``nthreads``.  Dask's nanny sets ``OMP_NUM_THREADS=1`` in
      the workers it starts (config ``distributed.nanny.pre-spawn-environ``),
      which this rule respects: give it a larger value, or drop it, to let
      fewer worker threads each run a multithreaded kernel.
    * With the local threaded scheduler it is ``dask.config["num_workers"]``
      or ``cores``; with the synchronous scheduler (tasks in the main
      thread) it is 1.

    So worker threads x OpenMP threads never exceeds the cores.
    """
    if num_threads is not None:
        return int(num_threads)
    cores = _cores()
    worker = _current_worker()
    if worker is not None:
        state = getattr(worker, "state", None)
        threads = getattr(state, "nthreads", None) or getattr(worker, "nthreads", 1)
        if host_threads:
            try:
                from distributed.comm import get_address_host
                threads = max(threads, host_threads.get(get_address_host(worker.address), 0))
            except Exception:
                pass
    elif threading.current_thread() is threading.main_thread():
        threads = 1
    else:
        threads = dask.config.get("num_workers", None) or cores
    n = max(1, cores // max(1, int(threads)))
    env = _env_omp()
    if env is not None:
        n = min(n, env)
    return n


def _host_threads():
    """{host: total worker threads} of the default distributed client, if any."""
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import default_client
        client = default_client()
    except Exception:
        return None
    try:
        try:
            info = client.scheduler_info(n_workers=-1)
        except TypeError:
            info = client.scheduler_info()
        from distributed.comm import get_address_host
        totals = {}
        for addr, w in info.get("workers", {}).items():
            host = w.get("host") or get_address_host(addr)
            totals[host] = totals.get(host, 0) + int(w.get("nthreads", 1))
        return totals or None
    except Exception:
        return None


# ------------------------------------------------------------ block spec
class _Spec:
    """Everything a block task needs besides its array pieces (opaque to
    Dask's graph parser)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def __getstate__(self):
        return self.__dict__

    def __setstate__(self, state):
        self.__dict__.update(state)


def _visible(left, right, shifts, i0, nq, k0, nk):
    """Whether some query of rows [i0, i0+nq) sees some key of [k0, k0+nk)
    (window/causal only) for some alignment s of ``shifts`` (query i sits
    at key position i + s; s = kv_len - q_len, Lk - Lq without lengths):
    a sorted array of the values, or an inclusive range (lo, hi) when they
    are not known yet (lazy lengths).  Bounds None = unbounded."""
    if nq <= 0 or nk <= 0:
        return False
    if left is not None and right is not None and left + right < 0:
        return False
    # some row sees some key iff max(k0, i0 + s - left) <= min(k0 + nk - 1,
    # i0 + nq - 1 + s + right), i.e. for s in [a, b]
    a = -math.inf if right is None else k0 - (i0 + nq - 1) - right
    b = math.inf if left is None else k0 + nk - 1 - i0 + left
    if isinstance(shifts, tuple):
        return max(a, shifts[0]) <= min(b, shifts[1])
    t = int(np.searchsorted(shifts, a, side="left"))
    return t < len(shifts) and shifts[t] <= b


def _shifts(qlen_np, kvlen_np, q_lazy, kv_lazy, lead_sl, Lq, Lk):
    """The alignments s = kv_len - q_len of the items of one leading block:
    their sorted distinct values, or a range (lo, hi) with lazy lengths."""
    if q_lazy or kv_lazy:
        def bounds(values, lazy, L):
            if lazy:
                return 0, L
            if values is None:
                return L, L
            blk = values[lead_sl]
            return int(blk.min()), int(blk.max())
        q_lo, q_hi = bounds(qlen_np, q_lazy, Lq)
        kv_lo, kv_hi = bounds(kvlen_np, kv_lazy, Lk)
        return (kv_lo - q_hi, kv_hi - q_lo)
    kv = Lk if kvlen_np is None else kvlen_np[lead_sl]
    q = Lq if qlen_np is None else qlen_np[lead_sl]
    return np.unique(np.asarray(kv - q, dtype=np.int64))


def _local_window(left, right, s, i0, nq, k0, nk):
    """The window that, on the sub-block rows [i0, i0+nq) x keys
    [k0, k0+nk) (its own bottom-right alignment), keeps exactly the pairs
    the global window keeps; None when the block is fully visible.  For
    calls without lengths (one alignment ``s = Lk - Lq`` for all items);
    with lengths ``_run`` passes the key position of the rows instead."""
    if left is None and right is None:
        return None
    delta = (i0 - k0) + s - (nk - nq)
    lw = None if left is None else left - delta
    rw = None if right is None else right + delta
    # p' runs over [nk - nq, nk - 1]; beyond these values a bound cuts nothing
    if lw is not None and lw >= nk - 1:
        lw = None
    if rw is not None and rw >= nq - 1:
        rw = None
    if lw is None and rw is None:
        return None
    big = nk + nq + 1
    if lw is not None:
        lw = max(lw, -big)
    if rw is not None:
        rw = max(rw, -big)
    return (lw, rw)


# ------------------------------------------------------------ block tasks
def _clip_len(x, start, n, L, name):
    x = np.asarray(x)
    if x.size and (x.min() < 0 or x.max() > L):
        raise ValueError(
            f"{name} must lie in [0, {L}]; got values in [{x.min()}, {x.max()}]"
        )
    return np.clip(x.astype(np.int64) - start, 0, n)


def _run(q, k, v, mask, bias, qseg, kseg, qlen, kvlen, scale, spec, r0, r1,
         weights):
    """The fused kernel on rows [r0, r1) of one (query chunk, key chunk)
    pair; returns (out, lse) or (out, weights, lse) in the compute dtype."""
    i0 = spec.i0 + r0
    nq = r1 - r0
    if (r0, r1) != (0, spec.nq):
        q = q[..., r0:r1, :]
        if mask is not None and mask.shape[-2] != 1:
            mask = mask[..., r0:r1, :]
        if bias is not None and bias.shape[-2] != 1:
            bias = bias[..., r0:r1, :]
        if qseg is not None:
            qseg = qseg[..., r0:r1]
    cdt = spec.cdt
    if q.dtype != cdt and q.dtype in (np.float16, _bf16_dtype(q.dtype)):
        q = q.astype(cdt)      # float32 partials (bfloat16 K/V are read as they are)
    if k.dtype != cdt and k.dtype == np.float16:
        k = k.astype(cdt)
    if v.dtype != cdt and v.dtype == np.float16:
        v = v.astype(cdt)
    kw = {}
    if qlen is not None:
        kw["q_lengths"] = _clip_len(qlen, i0, nq, spec.Lq, "q_lengths")
    if kvlen is not None:
        kw["kv_lengths"] = _clip_len(kvlen, spec.k0, spec.nk, spec.Lk, "kv_lengths")
    if qseg is not None:
        kw["q_segments"] = qseg
        kw["kv_segments"] = kseg
    if mask is not None:
        kw["mask"] = mask
    if bias is not None:
        kw["bias"] = bias
    if scale is not None:
        kw["scale"] = scale
    if spec.softcap is not None:
        kw["softcap"] = spec.softcap
    if spec.additive_weight is not None:
        kw["additive_weight"] = spec.additive_weight
    threads = task_threads(spec.num_threads, spec.host_threads)
    if (qlen is not None or kvlen is not None) and (
            spec.left is not None or spec.right is not None):
        # The diagonal sits at each sequence's end (kv_len - q_len, whole
        # call): the clipped lengths of the piece would align it elsewhere,
        # so the piece gets its rows' key positions, item by item.
        check_lengths_alignment((spec.left, spec.right), spec.Lq, spec.Lk, kvlen,
                                qlen is not None)
        kv_len = spec.Lk if kvlen is None else np.asarray(kvlen, dtype=np.int64)
        q_len = spec.Lq if qlen is None else np.asarray(qlen, dtype=np.int64)
        q_pos = np.asarray(i0 - spec.k0 + kv_len - q_len, dtype=np.int64)
        return _api._attention_at(
            q, k, v, q_pos, score=spec.score, window=(spec.left, spec.right),
            return_lse=True, return_weights=weights, num_threads=threads, **kw)
    window = _local_window(spec.left, spec.right, spec.s, i0, nq, spec.k0, spec.nk)
    return _api.attention(
        q, k, v, score=spec.score, window=window, return_lse=True,
        return_weights=weights, num_threads=threads, **kw)


def _partial(q, k, v, mask, bias, qseg, kseg, qlen, kvlen, scale, spec):
    return _run(q, k, v, mask, bias, qseg, kseg, qlen, kvlen, scale, spec,
                0, spec.nq, False)


def _bf16_dtype(dt):
    return dt if dt.name == "bfloat16" else None


def _merge(*parts):
    return _api.merge([p[0] for p in parts], [p[1] for p in parts])


def _finalize(part, sinks, qlen, spec):
    """Fold in sinks, fill blocks no key reached, cast to the result dtype.
    Returns (out, lse, lse in the compute dtype)."""
    cdt, rdt = spec.cdt, spec.rdt
    if part is None:
        out = np.zeros(spec.lead + (spec.nq, spec.Dv), dtype=cdt)
        lse = np.full(spec.lead + (spec.nq,), -np.inf, dtype=cdt)
    else:
        out, lse = part
    if sinks is not None:
        ls = np.broadcast_to(np.asarray(sinks, dtype=cdt)[..., None], lse.shape)
        if qlen is not None:
            rows = spec.i0 + np.arange(spec.nq)
            ls = np.where(rows < np.asarray(qlen)[..., None], ls, -np.inf).astype(cdt)
        out, lse = _api.merge([out, np.zeros_like(out)], [lse, ls])
        out, lse = out.astype(cdt, copy=False), lse.astype(cdt, copy=False)
    return out.astype(rdt, copy=False), lse.astype(rdt, copy=False), lse


def _rescale(w, lse_local, lse_final):
    with np.errstate(invalid="ignore", over="ignore"):
        f = np.where(np.isfinite(lse_local) & np.isfinite(lse_final),
                     np.exp(lse_local - lse_final), 0).astype(w.dtype, copy=False)
    return w * f[..., None]


def _weights(q, k, v, mask, bias, qseg, kseg, qlen, kvlen, scale, lse_final, spec):
    _, w, lse = _run(q, k, v, mask, bias, qseg, kseg, qlen, kvlen, scale, spec,
                     0, spec.nq, True)
    return _rescale(w, lse, lse_final).astype(spec.rdt, copy=False)


def _key_mass(q, k, v, mask, bias, qseg, kseg, qlen, kvlen, scale, lse_final, spec):
    lead_n = int(np.prod(spec.lead, dtype=np.int64))
    rows = max(1, _KEY_MASS_ELEMS // max(1, spec.nk * lead_n))
    total = np.zeros(spec.lead + (spec.nk,), dtype=spec.cdt)
    for r0 in range(0, spec.nq, rows):
        r1 = min(spec.nq, r0 + rows)
        _, w, lse = _run(q, k, v, mask, bias, qseg, kseg, qlen, kvlen, scale, spec,
                         r0, r1, True)
        total += _rescale(w, lse, lse_final[..., r0:r1]).sum(axis=-2)
    return total


def _sum(*parts):
    total = parts[0].copy()
    for p in parts[1:]:
        total += p
    return total


def _cast(x, dtype):
    return x.astype(dtype, copy=False)


def _zeros(shape, dtype):
    return np.zeros(shape, dtype=dtype)


def _tree(layer, items, name, prefix, func, split_every):
    """Reduce ``items`` (graph keys) with ``func`` in a tree of fan-in
    ``split_every``; returns the root key."""
    depth = 0
    while len(items) > 1:
        nxt = []
        for g in range(0, len(items), split_every):
            grp = items[g:g + split_every]
            if len(grp) == 1:
                nxt.append(grp[0])
                continue
            key = (name, depth) + prefix + (g // split_every,)
            layer[key] = (func,) + tuple(grp)
            nxt.append(key)
        items = nxt
        depth += 1
    return items[0]


# ------------------------------------------------------------ operands
def _is_dask(x):
    return isinstance(x, da.Array)


def _as_dask(x, name):
    if _is_dask(x):
        if any(math.isnan(c) for cs in x.chunks for c in cs):
            raise ValueError(
                f"{name} has unknown chunk sizes; call .compute_chunk_sizes() first"
            )
        return x
    if hasattr(x, "__dask_graph__"):
        raise TypeError(f"{name} must be a dask array or array-like; got {type(x)}")
    try:
        arr = np.asarray(x)
    except Exception as exc:
        raise TypeError(f"{name} must be array-like of real numbers: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} must hold real numbers (float16/32/64, int or bool); "
            f"got dtype {arr.dtype}"
        )
    chunks = ("auto",) * max(arr.ndim - 1, 0) + ((-1,) if arr.ndim else ())
    return da.from_array(arr, chunks=chunks)


def _lead_modes(shape, out_lead, group_axis=None):
    """Per out-lead axis: 'none' (absent), 'full', 'bcast' or 'group'."""
    nd = len(out_lead)
    off = nd - len(shape)
    modes = []
    for a in range(nd):
        xa = a - off
        if xa < 0:
            modes.append("none")
        elif shape[xa] == out_lead[a]:
            modes.append("full")
        elif a == group_axis:
            modes.append("group")
        else:
            modes.append("bcast")
    return modes


def _lead_chunks(modes, out_chunks, group=1):
    ch = []
    for m, oc in zip(modes, out_chunks):
        if m == "full":
            ch.append(oc)
        elif m == "bcast":
            ch.append((1,))
        elif m == "group":
            ch.append(tuple(c // group for c in oc))
    return ch


def _lead_index(modes, bidx):
    return tuple(0 if m == "bcast" else b for m, b in zip(modes, bidx) if m != "none")


def _check_broadcast(shape, out_lead, name):
    nd = len(out_lead)
    if len(shape) > nd:
        return False
    for s, o in zip(shape[::-1], out_lead[::-1]):
        if s not in (1, o):
            return False
    return True


class _Operand:
    """A dask operand rechunked to the output's blocks, with the rule
    mapping an output block to its own block key."""

    def __init__(self, arr, modes, trailing):
        self.arr = arr
        self.modes = modes
        self.trailing = trailing   # per trailing axis: 'q', 'k', or None (single)

    def key(self, bidx, qi, kj):
        idx = _lead_index(self.modes, bidx)
        for t in self.trailing:
            idx += ((qi if t == "q" else kj if t == "k" else 0),)
        return (self.arr.name,) + idx


def _pair_operand(x, name, out_lead, out_chunks, Lq, Lk, qchunks, kchunks, kind):
    if _is_dask(x):
        if kind == "mask" and x.dtype != np.bool_:
            raise TypeError(f"mask must be a bool array (True = attend); got dtype {x.dtype}")
        if kind == "bias":
            real_dtype(x.dtype, name)
        x = _as_dask(x, name)
    else:
        arr = np.asarray(x)
        if kind == "mask" and arr.dtype != np.bool_:
            raise TypeError(f"mask must be a bool array (True = attend); got dtype {arr.dtype}")
        if kind == "bias":
            real_dtype(arr.dtype, name)
        x = arr
    orig_shape = x.shape
    if x.ndim < 2:
        x = x[(None,) * (2 - x.ndim)]
    ok = (_check_broadcast(x.shape[:-2], out_lead, name)
          and x.shape[-2] in (1, Lq) and x.shape[-1] in (1, Lk))
    if not ok:
        raise ValueError(
            f"{name} of shape {tuple(orig_shape)} does not broadcast to the scores' "
            f"shape {tuple(out_lead) + (Lq, Lk)}"
        )
    modes = _lead_modes(x.shape[:-2], out_lead)
    tq = "q" if x.shape[-2] == Lq else None
    tk = "k" if x.shape[-1] == Lk else None
    chunks = tuple(_lead_chunks(modes, out_chunks)) + (
        qchunks if tq else (1,), kchunks if tk else (1,))
    if _is_dask(x):
        x = x.rechunk(chunks)
    else:
        x = da.from_array(x, chunks=chunks)
    return _Operand(x, modes, (tq, tk))


def _seq_operand(x, name, out_lead, out_chunks, L, lchunks, axis_tag):
    if _is_dask(x):
        x = _as_dask(x, name)
    else:
        x = np.asarray(x)
    if x.dtype.kind not in "iub":
        raise TypeError(f"{name} must be an integer array; got dtype {x.dtype}")
    if x.ndim < 1 or x.shape[-1] != L:
        raise ValueError(f"{name} must have shape (..., {L}); got {tuple(x.shape)}")
    if not _check_broadcast(x.shape[:-1], out_lead, name):
        raise ValueError(
            f"{name} of shape {tuple(x.shape)} does not broadcast against the leading "
            f"dims {tuple(out_lead)}"
        )
    modes = _lead_modes(x.shape[:-1], out_lead)
    chunks = tuple(_lead_chunks(modes, out_chunks)) + (lchunks,)
    x = x.rechunk(chunks) if _is_dask(x) else da.from_array(x, chunks=chunks)
    return _Operand(x, modes, (axis_tag,))


def _lead_param(x, name, out_lead, out_chunks, kind):
    """A per-batch-item parameter (lengths, scale, sinks) as a dask array of
    shape ``out_lead`` blocked like the output; also the NumPy values when
    it was given as NumPy."""
    nd = len(out_lead)
    lazy = _is_dask(x)
    arr = _as_dask(x, name) if lazy else np.asarray(x)
    if kind == "len":
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{name} must be an integer array; got dtype {arr.dtype}")
        if arr.ndim == 1 and nd > 1:
            if arr.shape[0] not in (1, out_lead[0]):
                raise ValueError(
                    f"{name} of shape {tuple(arr.shape)} does not match the first "
                    f"leading dim {out_lead[0]}"
                )
            arr = arr.reshape(arr.shape + (1,) * (nd - 1))
        dtype = np.int64
    else:
        if arr.dtype.kind not in "iuf" or isinstance(x, (bool, np.bool_)):
            raise TypeError(f"{name} must be real numbers; got {x!r}")
        if kind == "scale" and arr.ndim > nd and arr.ndim >= 2 and arr.shape[-2:] == (1, 1):
            arr = arr.reshape(arr.shape[:-2])
        dtype = np.float64
    if not _check_broadcast(arr.shape, out_lead, name):
        raise ValueError(
            f"{name} of shape {np.shape(x)} does not broadcast against the leading "
            f"dims {tuple(out_lead)}"
        )
    values = None
    if lazy:
        arr = da.broadcast_to(arr.astype(dtype), out_lead).rechunk(tuple(out_chunks))
    else:
        values = np.ascontiguousarray(np.broadcast_to(arr.astype(dtype), out_lead))
        if kind == "scale" and not np.all(np.isfinite(values)):
            raise ValueError(f"scale must be finite; got {x!r}")
        if kind == "sinks":
            check_sinks_values(values, x)
        arr = da.from_array(values, chunks=tuple(out_chunks))
    return _Operand(arr, ["full"] * nd, ()), values



def _lengths_param(x, name, out_lead, out_chunks, L):
    """A lengths operand, its NumPy values (None when lazy) range-checked."""
    op, values = _lead_param(x, name, out_lead, out_chunks, "len")
    if values is not None and values.size and (values.min() < 0 or values.max() > L):
        raise ValueError(f"{name} must lie in [0, {L}]; got values in "
                         f"[{values.min()}, {values.max()}]")
    return op, values


# ------------------------------------------------------------ attention
def attention(query, key, value, *, score="scaled_dot", scale=None, mask=None,
              bias=None, causal=False, window=None, additive_weight=None,
              return_weights=False, return_lse=False, num_threads=None, out=None,
              kv_lengths=None, q_lengths=None, q_segments=None, kv_segments=None,
              softcap=None, sinks=None, split_every=None):
    """:func:`cattn.attention` on Dask arrays; returns Dask arrays.

    ``query``, ``key``, ``value`` (and ``mask``, ``bias``, the lengths and
    segment ids) may be Dask or NumPy arrays; NumPy arrays are wrapped with
    ``dask.array.from_array`` (automatic chunks, one chunk along the feature
    axis).  The keyword arguments mean what they mean for
    :func:`cattn.attention`; ``scale``, ``sinks`` and ``additive_weight``
    are small and may be NumPy or Dask.

    Blocking: the output ``(..., Lq, Dv)`` is chunked like ``query`` along
    its leading dims and queries (with grouped-query attention, head chunks
    are widened to whole key/value groups).  The key axis is cut along
    ``key``'s chunks (``value`` and the key-axis of masks/biases/segments
    are rechunked to match); the feature axes become single chunks.  Each
    (query chunk, key chunk) pair that causal/window masks leave visible is
    one task calling the fused kernel; pairs that are masked out entirely
    produce no task.  Per query chunk the partial results are merged with
    :func:`cattn.merge` in a tree of fan-in ``split_every`` (default 4).

    ``num_threads`` fixes the OpenMP threads of every task; by default the
    rule of :func:`task_threads` applies.  ``out=`` is not supported (use
    ``dask.array.store``).  ``return_weights`` (``True`` or ``"key_mass"``)
    is computed in a second pass over the visible pairs, rescaled with the
    final log-sum-exp; the ``(..., Lq, Lk)`` weights are chunked like
    (query chunks, key chunks).

    Returns ``out`` (and ``weights``, ``lse`` when asked, in that order), as
    Dask arrays with ``dtype`` and ``meta`` set: Dask never runs the kernel
    to infer them.
    """
    # ---- scalar arguments: the checks of cattn.attention itself
    opts = validate_options(score=score, causal=causal, window=window, softcap=softcap,
                            return_weights=return_weights, return_lse=return_lse,
                            num_threads=num_threads, q_segments=q_segments,
                            kv_segments=kv_segments)
    if out is not None:
        raise TypeError(
            "out= is not supported by cattn.dask.attention; write the result with "
            "dask.array.store or .compute()"
        )
    if split_every is None:
        split_every = 4
    if isinstance(split_every, (bool, np.bool_)) or not isinstance(
            split_every, numbers.Integral) or split_every < 2:
        raise ValueError(f"split_every must be an integer >= 2; got {split_every!r}")
    split_every = int(split_every)
    score, softcap = opts.score, opts.softcap
    return_weights, return_lse = opts.return_weights, opts.return_lse
    left, right = opts.window
    num_threads = opts.num_threads

    # ---- q, k, v
    q = _as_dask(query, "query")
    k = _as_dask(key, "key")
    v = _as_dask(value, "value")
    Lq, D, Lk, Dv = check_qkv_shapes(q, k, v)
    qdt, kdt, vdt = (real_dtype(x.dtype, n) for n, x in
                     (("query", q), ("key", k), ("value", v)))
    cdt, rdt = result_dtypes(qdt, kdt, vdt)
    out_lead, groups = leading_dims([("query", q), ("key", k), ("value", v)])
    out_lead = tuple(int(n) for n in out_lead)
    nd = len(out_lead)

    if additive_weight is not None:
        if score != "additive":
            raise ValueError("additive_weight is only used with score='additive'")
        add_w = np.asarray(additive_weight)
        if add_w.dtype.kind not in "biuf":
            raise TypeError(f"additive_weight must hold real numbers; got {add_w.dtype}")
        if add_w.shape != (D,):
            raise ValueError(
                f"additive_weight must have shape (D,) = ({D},); got {add_w.shape}")
        add_w = np.ascontiguousarray(add_w, dtype=cdt)
    else:
        add_w = None

    # ---- output blocking
    gaxis = nd - 1 if groups else None
    mode_of = {n: _lead_modes(x.shape[:-2], out_lead, gaxis if n in groups else None)
               for n, x in (("query", q), ("key", k), ("value", v))}
    out_chunks = []
    for a in range(nd):
        for n, x in (("query", q), ("key", k), ("value", v)):
            if mode_of[n][a] == "full":
                out_chunks.append(x.chunks[a - (nd - (x.ndim - 2))])
                break
    if groups:
        g = 1
        for _, gg in groups.values():
            g = g * gg // math.gcd(g, gg)
        hc = out_chunks[-1]
        if any(c % g for c in hc):
            bounds = sorted({(b // g) * g for b in np.cumsum((0,) + hc)} | {out_lead[-1]})
            out_chunks[-1] = tuple(int(b1 - b0) for b0, b1 in zip(bounds, bounds[1:])
                                   if b1 > b0) or (0,)
    out_chunks = [tuple(int(c) for c in ch) for ch in out_chunks]
    qchunks = tuple(int(c) for c in q.chunks[-2])
    kchunks = tuple(int(c) for c in k.chunks[-2])

    def rechunk(x, n, trailing):
        grp = groups.get(n, (None, 1))[1]
        ch = tuple(_lead_chunks(mode_of[n], out_chunks, grp)) + trailing
        return _Operand(x.rechunk(ch), mode_of[n], ("q", None) if n == "query"
                        else ("k", None))

    ops = {
        "q": rechunk(q, "query", (qchunks, (D,))),
        "k": rechunk(k, "key", (kchunks, (D,))),
        "v": rechunk(v, "value", (kchunks, (Dv,))),
    }
    if mask is not None:
        ops["mask"] = _pair_operand(mask, "mask", out_lead, out_chunks, Lq, Lk,
                                    qchunks, kchunks, "mask")
    if bias is not None:
        ops["bias"] = _pair_operand(bias, "bias", out_lead, out_chunks, Lq, Lk,
                                    qchunks, kchunks, "bias")
    if q_segments is not None:
        ops["qseg"] = _seq_operand(q_segments, "q_segments", out_lead, out_chunks,
                                   Lq, qchunks, "q")
        ops["kseg"] = _seq_operand(kv_segments, "kv_segments", out_lead, out_chunks,
                                   Lk, kchunks, "k")
    qlen_np = kvlen_np = None
    if q_lengths is not None:
        ops["qlen"], qlen_np = _lengths_param(q_lengths, "q_lengths", out_lead,
                                              out_chunks, Lq)
    if kv_lengths is not None:
        ops["kvlen"], kvlen_np = _lengths_param(kv_lengths, "kv_lengths", out_lead,
                                                out_chunks, Lk)
    q_lazy = q_lengths is not None and qlen_np is None
    kv_lazy = kv_lengths is not None and kvlen_np is None
    if kvlen_np is not None:     # lazy lengths: checked by the tasks
        check_lengths_alignment(opts.window, Lq, Lk, kvlen_np, q_lengths is not None)
    if scale is not None:
        ops["scale"], _ = _lead_param(scale, "scale", out_lead, out_chunks, "scale")
    if sinks is not None:
        ops["sinks"], _ = _lead_param(sinks, "sinks", out_lead, out_chunks, "sinks")

    # ---- graph
    token = tokenize(
        {n: o.arr.name for n, o in ops.items()}, score, left, right, softcap, add_w,
        return_weights, num_threads, split_every, cdt, rdt)
    part_name = "cattn-attn-partial-" + token
    merge_name = "cattn-attn-merge-" + token
    fin_name = "cattn-attn-final-" + token
    out_name = "cattn-attention-" + token
    lse_name = "cattn-attention-lse-" + token
    w_name = "cattn-attention-weights-" + token
    km_name = "cattn-attention-keymass-" + token
    kmp_name = "cattn-attn-keymass-part-" + token
    host_threads = None if num_threads is not None else _host_threads()
    s = Lk - Lq
    kstarts = np.cumsum((0,) + kchunks)[:-1].tolist()
    qstarts = np.cumsum((0,) + qchunks)[:-1].tolist()
    lead_starts = [np.cumsum((0,) + ch)[:-1].tolist() for ch in out_chunks]

    base = dict(score=score, softcap=softcap, additive_weight=add_w, left=left,
                right=right, s=s, Lq=Lq, Lk=Lk, cdt=cdt, rdt=rdt, Dv=Dv,
                num_threads=num_threads, host_threads=host_threads)

    def op_key(n, bidx, qi, kj):
        o = ops.get(n)
        return None if o is None else o.key(bidx, qi, kj)

    layer = {}
    lse_layer = {}
    wlayer = {}
    kmlayer = {}
    km_parts = {}   # (bidx, kj) -> [keys]
    block_ids = np.ndindex(*[len(ch) for ch in out_chunks])
    for bidx in block_ids:
        lead = tuple(out_chunks[a][b] for a, b in enumerate(bidx))
        lead_sl = tuple(slice(lead_starts[a][b], lead_starts[a][b] + lead[a])
                        for a, b in enumerate(bidx))
        empty_lead = any(n == 0 for n in lead)
        kvmax = None
        if kvlen_np is not None and not empty_lead:
            kvmax = int(kvlen_np[lead_sl].max())
        qmax = None
        if qlen_np is not None and not empty_lead:
            qmax = int(qlen_np[lead_sl].max())
        shifts = None if empty_lead else _shifts(qlen_np, kvlen_np, q_lazy, kv_lazy,
                                                 lead_sl, Lq, Lk)
        for qi, (i0, nq) in enumerate(zip(qstarts, qchunks)):
            visible = []
            if not empty_lead and (qmax is None or qmax > i0):
                for kj, (k0, nk) in enumerate(zip(kstarts, kchunks)):
                    if kvmax is not None and kvmax <= k0:
                        continue
                    if _visible(left, right, shifts, i0, nq, k0, nk):
                        visible.append((kj, k0, nk))
            parts = []
            for kj, k0, nk in visible:
                spec = _Spec(i0=i0, nq=nq, k0=k0, nk=nk, lead=lead, **base)
                args = tuple(op_key(n, bidx, qi, kj) for n in
                             ("q", "k", "v", "mask", "bias", "qseg", "kseg", "qlen",
                              "kvlen", "scale"))
                pkey = (part_name,) + bidx + (qi, kj)
                layer[pkey] = (_partial,) + args + (spec,)
                parts.append(pkey)
            root = _tree(layer, parts, merge_name, bidx + (qi,), _merge,
                         split_every) if parts else None
            fspec = _Spec(i0=i0, nq=nq, lead=lead, **base)
            if root is None or "sinks" in ops or rdt != cdt:
                fin = (fin_name,) + bidx + (qi,)
                layer[fin] = (_finalize, root, op_key("sinks", bidx, qi, 0),
                              op_key("qlen", bidx, qi, 0), fspec)
                lse_c = (operator.getitem, fin, 2)
            else:
                fin = root
                lse_c = (operator.getitem, fin, 1)
            layer[(out_name,) + bidx + (qi, 0)] = (operator.getitem, fin, 0)
            lse_layer[(lse_name,) + bidx + (qi,)] = (operator.getitem, fin, 1)
            if not return_weights:
                continue
            vis = {kj for kj, _, _ in visible}
            for kj, (k0, nk) in enumerate(zip(kstarts, kchunks)):
                spec = _Spec(i0=i0, nq=nq, k0=k0, nk=nk, lead=lead, **base)
                args = tuple(op_key(n, bidx, qi, kj) for n in
                             ("q", "k", "v", "mask", "bias", "qseg", "kseg", "qlen",
                              "kvlen", "scale"))
                if return_weights == "key_mass":
                    if kj in vis:
                        key_ = (kmp_name,) + bidx + (qi, kj)
                        layer[key_] = (_key_mass,) + args + (lse_c, spec)
                        km_parts.setdefault((bidx, kj), []).append(key_)
                    continue
                wkey = (w_name,) + bidx + (qi, kj)
                if kj in vis:
                    wlayer[wkey] = (_weights,) + args + (lse_c, spec)
                else:
                    wlayer[wkey] = (_zeros, lead + (nq, nk), rdt)
        if return_weights == "key_mass":
            for kj, nk in enumerate(kchunks):
                kmkey = (km_name,) + bidx + (kj,)
                parts = km_parts.get((bidx, kj), [])
                if parts:
                    root = _tree(layer, parts, kmp_name + "-sum", bidx + (kj,), _sum,
                                 split_every)
                    kmlayer[kmkey] = (_cast, root, rdt)
                else:
                    kmlayer[kmkey] = (_zeros, lead + (nk,), rdt)

    deps = [o.arr for o in ops.values()]
    graph = HighLevelGraph.from_collections(out_name, layer, dependencies=deps)
    out_chunks_t = tuple(out_chunks)
    result = da.Array(graph, out_name, out_chunks_t + (qchunks, (Dv,)),
                      meta=np.empty((0,) * (nd + 2), dtype=rdt))
    ret = [result]
    if return_weights == "key_mass":
        g = HighLevelGraph.from_collections(km_name, kmlayer, dependencies=[result])
        ret.append(da.Array(g, km_name, out_chunks_t + (kchunks,),
                            meta=np.empty((0,) * (nd + 1), dtype=rdt)))
    elif return_weights:
        g = HighLevelGraph.from_collections(w_name, wlayer, dependencies=[result])
        ret.append(da.Array(g, w_name, out_chunks_t + (qchunks, kchunks),
                            meta=np.empty((0,) * (nd + 2), dtype=rdt)))
    if return_lse:
        g = HighLevelGraph.from_collections(lse_name, lse_layer, dependencies=[result])
        ret.append(da.Array(g, lse_name, out_chunks_t + (qchunks,),
                            meta=np.empty((0,) * (nd + 1), dtype=rdt)))
    return ret[0] if len(ret) == 1 else tuple(ret)
