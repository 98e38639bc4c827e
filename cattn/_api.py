"""The public functions: validation, dtype choice and dispatch.

A thin layer: every check and every broadcast decision is made here, in
Python, on shapes and small per-batch arrays; all O(L^2) work happens in the
typed kernels of ``_kernels.pyx`` with the GIL released.
"""
import math
import numbers
import os
import threading

import numpy as np

from . import _kernels
from ._openmp_helpers import (
    _openmp_effective_n_threads,
    _set_user_n_threads,
)
from ._operands import (
    as_real_array,
    batch_shape,
    broadcast_lead,
    check_num_threads,
    compute_dtype,
    element_strides,
    lead_offsets,
    trailing_strides,
)

__all__ = ["attention", "scores", "softmax", "aggregate", "merge",
           "get_num_threads", "set_num_threads"]

_SCORES = ("dot", "scaled_dot", "cosine", "additive")


def _serial_work(wait_policy):
    """Below this many score-entry x feature operations (B*H*Lq*Lk*D) a call
    runs on the calling thread: a team would cost more than it saves.

    Calibrated on a 2-core host (1 vs 2 threads, float32, D = 64; the
    numbers are in the README's Threads section): with OpenMP's default
    spinning workers two threads win from 2**19 on; with
    OMP_WAIT_POLICY=PASSIVE a sleeping worker takes ~60 us to wake, and
    two threads win only from 2**23 on.  libgomp reads the policy once, at
    load, so it is read once here too.
    """
    if wait_policy.strip().upper() == "PASSIVE":
        return 1 << 23
    return 1 << 18


_SERIAL_WORK = _serial_work(os.environ.get("OMP_WAIT_POLICY", ""))

_BLOCK_Q = 64     # measured: 64 and 128 tie at D = 64, 64 wins by 14% at D = 128
# float64 with D <= 64: 256-query blocks read each K/V tile for 4x more
# queries (measured at 2 threads: cross (2,8,256,2048,64) 13.2 -> 12.0 ms,
# b4_512 12.7 -> 12.3, 1k_h16 23.8 -> 23.2, 4k within 2%) -- but not when
# causal/window/segments skip tiles: coarser blocks skip fewer (b4_512
# causal, 1 thread: 16 -> 22 ms)
_BLOCK_Q_F64_NARROW = 256
_BLOCK_K = 128


# ----------------------------------------------------------------- threads
def get_num_threads():
    """Number of threads a cattn call with ``num_threads=None`` uses now.

    Resolved at call time: the value given to :func:`set_num_threads` if
    any, else ``OMP_NUM_THREADS``, else the usable cores; threadpoolctl's
    OpenMP limits cap it.

    Examples
    --------
    >>> import cattn
    >>> cattn.get_num_threads() >= 1
    True
    """
    return _openmp_effective_n_threads(None)


def set_num_threads(n):
    """Set the default thread count of cattn's calls; returns the previous
    thread count (what :func:`get_num_threads` gave).  ``None`` goes back to
    the default resolution.

    Examples
    --------
    >>> import cattn
    >>> previous = cattn.set_num_threads(1)
    >>> cattn.get_num_threads()
    1
    >>> _ = cattn.set_num_threads(None)
    """
    n = check_num_threads(n)
    previous = get_num_threads()
    _set_user_n_threads(n)
    return previous


def _threads(num_threads, work):
    """Threads for a call doing ``work`` score-entry x feature operations:
    the resolved count, or 1 below the serial threshold (whatever was asked:
    a team costs more than such a call)."""
    n = check_num_threads(num_threads)
    if work < _SERIAL_WORK:
        return 1
    return _openmp_effective_n_threads(n)


_blas_controller = None
_blas_lock = threading.RLock()


class _blas_limit:
    """Context manager holding BLAS to ``n`` threads (threadpoolctl) while a
    cattn stage call runs.  threadpoolctl's limits are process-wide, and a
    limit set on one thread must be restored on that same thread (OpenBLAS
    otherwise keeps the changed count), so stage calls hold one lock for the
    whole BLAS section: concurrent ``scores``/``aggregate`` calls from
    several Python threads run one after the other (each already uses all
    the threads it was given).  The fused ``attention`` kernel never takes
    this lock."""

    def __init__(self, n):
        self.n = n
        self.limiter = None

    def __enter__(self):
        global _blas_controller
        _blas_lock.acquire()
        try:
            if _blas_controller is None:
                from threadpoolctl import ThreadpoolController
                _blas_controller = ThreadpoolController()
            self.limiter = _blas_controller.limit(limits=self.n, user_api="blas")
        except BaseException:
            _blas_lock.release()
            raise
        return self

    def __exit__(self, *exc):
        try:
            self.limiter.restore_original_limits()
        finally:
            _blas_lock.release()
        return False


# -------------------------------------------------------------- validation
def _check_score(score):
    if not isinstance(score, str) or score not in _SCORES:
        raise ValueError(f"score must be one of {_SCORES}; got {score!r}")
    return score


def _check_matrix(x, name):
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have at least 2 dims (..., L, D); got shape {x.shape}"
        )


def _matrices(**named):
    """Validate (name=array_like) operands of shape (..., L, D): real arrays
    with at least 2 dims.  Returns them in order."""
    out = []
    for name, x in named.items():
        arr = as_real_array(x, name)
        _check_matrix(arr, name)
        out.append(arr)
    return out


def _batch(named, num_threads, work_per_item):
    """Compute/result dtypes, broadcast leading dims, GQA groups, number of
    batch items and the threads for a call over ``named`` operands."""
    cdt, rdt = compute_dtype(*(x for _, x in named))
    out_lead, groups = batch_shape(named)
    N = math.prod(out_lead)
    return cdt, rdt, out_lead, groups, N, _threads(num_threads, N * work_per_item)


def _check_same(n1, n2, what, name1, x1, name2, x2):
    if n1 != n2:
        raise ValueError(f"{what}: {name1} {x1.shape}, {name2} {x2.shape}")


def _additive_weights(additive_weight, score, D, cdt):
    if additive_weight is None:
        return np.ones(D, dtype=cdt) if score == "additive" else None
    if score != "additive":
        raise ValueError("additive_weight is only used with score='additive'")
    w = np.ascontiguousarray(as_real_array(additive_weight, "additive_weight"), dtype=cdt)
    if w.shape != (D,):
        raise ValueError(f"additive_weight must have shape (D,) = ({D},); got {w.shape}")
    return w


def _default_scale(score, D):
    if score == "scaled_dot" and D > 0:
        return 1.0 / math.sqrt(D)
    return 1.0


def _scale_per_batch(scale, score, D, out_lead):
    if scale is None:
        s = _default_scale(score, D)
        return np.full(math.prod(out_lead), s, dtype=np.float64)
    if isinstance(scale, (bool, np.bool_)):
        raise TypeError(f"scale must be a real number or array; got {scale!r}")
    arr = np.asarray(scale)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"scale must be a real number or array; got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"scale must be finite; got {scale!r}")
    return broadcast_lead(arr, out_lead, "scale", np.float64, extra_ok=((1, 1),))


def window_bounds(window, causal):
    """Validated (left, right) key window, ints or None (unbounded), with
    ``causal`` folded in as ``right <= 0``.  Shared with ``cattn.dask``."""
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be True or False; got {causal!r}")
    left = right = None
    if window is not None:
        if not isinstance(window, (tuple, list)) or len(window) != 2:
            raise ValueError(
                f"window must be a pair (left, right) of ints or None; got {window!r}"
            )
        left, right = window
        for side, v in (("left", left), ("right", right)):
            if v is not None and (isinstance(v, (bool, np.bool_))
                                  or not isinstance(v, numbers.Integral)):
                raise ValueError(f"window {side} must be an int or None; got {v!r}")
        left = None if left is None else int(left)
        right = None if right is None else int(right)
    if causal:
        right = 0 if right is None else min(right, 0)
    return left, right


def _check_window(window, causal):
    """The window in the kernel's terms (UNBOUNDED for None)."""
    left, right = window_bounds(window, causal)
    unb = _kernels.UNBOUNDED
    wl = unb if left is None else max(-unb + 1, min(left, unb))
    wr = unb if right is None else max(-unb + 1, min(right, unb))
    return wl, wr


def _pair_mask_like(x, name, out_lead, Lq, Lk, kind):
    """A mask or bias broadcastable to (..., Lq, Lk), never expanded."""
    if kind == "mask":
        arr = np.asarray(x)
        if arr.dtype != np.bool_:
            raise TypeError(
                f"mask must be a bool array (True = attend); got dtype {arr.dtype}"
            )
        arr = arr.view(np.uint8)
    else:
        arr = as_real_array(x, name)
    while arr.ndim < 2:
        arr = arr[np.newaxis]
    want = tuple(out_lead) + (Lq, Lk)
    ok = True
    try:
        ok = np.broadcast_shapes(arr.shape, want) == want
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name} of shape {np.shape(x)} does not broadcast to the scores' "
            f"shape {want}"
        )
    return arr


# ---------------------------------------------------------------- attention
def attention(query, key, value, *, score="scaled_dot", scale=None, mask=None,
              bias=None, causal=False, window=None, additive_weight=None,
              return_weights=False, return_lse=False, num_threads=None, out=None,
              kv_lengths=None, q_lengths=None, q_segments=None, kv_segments=None,
              softcap=None, sinks=None):
    """Attention of ``query`` over ``key``/``value``: softmax(scores) @ value.

    The three stages (similarity scores, softmax, weighted sum) are fused
    into one tiled kernel that never builds the (Lq, Lk) score matrix
    unless the weights are asked for.

    Parameters
    ----------
    query : array_like, shape (..., Lq, D)
    key : array_like, shape (..., Lk, D)
    value : array_like, shape (..., Lk, Dv)
        Leading dims broadcast (NumPy rules).  Grouped-query attention: when
        the heads axis (-3) of key/value divides that of query, query head h
        uses key/value head ``h // (Hq // Hkv)``.
    score : {"scaled_dot", "dot", "cosine", "additive"}
        Similarity of a query q with a key k: ``q.k/sqrt(D)``, ``q.k``,
        ``q.k / (max(|q|, 1e-8) max(|k|, 1e-8))`` or
        ``sum_d w_d tanh(q_d + k_d)``.
    scale : float or array_like, optional
        Multiplies the score, replacing the default (1/sqrt(D) for
        scaled_dot, 1 otherwise).  An array broadcasts against the leading
        dims (one temperature per head).
    mask : bool array_like, optional
        Broadcastable to (..., Lq, Lk); True = attend.
    bias : array_like, optional
        Added to the scaled score; broadcastable to (..., Lq, Lk); -inf masks.
    causal : bool
        Bottom-right aligned: query i sees key j iff ``j <= i + Lk - Lq``.
    window : (left, right), optional
        Keep keys with ``p - left <= j <= p + right``, ``p = i + Lk - Lq``;
        None on a side is unbounded.
    additive_weight : array_like, shape (D,), optional
        ``w`` of the additive score (default ones).
    return_weights : bool or "key_mass"
        Also return the (..., Lq, Lk) weights, or with ``"key_mass"`` the
        (..., Lk) total weight each key received.
    return_lse : bool
        Also return the (..., Lq) natural-log log-sum-exp of the scores.
    num_threads : int, optional
        Threads for this call (default: :func:`get_num_threads`).
    out : ndarray, optional
        Destination of exact shape and dtype, writeable, not overlapping an
        input.
    kv_lengths, q_lengths : array_like of int, optional
        Number of leading real keys / queries per sequence; a 1-D array runs
        along the first leading dim, otherwise it broadcasts against the
        leading dims.  Keys past the length are never read; queries past it
        get output 0.
    q_segments, kv_segments : array_like of int, optional
        Segment ids of shape (..., Lq) / (..., Lk); a query attends only keys
        with its id (packed sequences).
    softcap : float, optional
        Scores become ``softcap * tanh(s / softcap)`` after scaling.
    sinks : float or array_like, optional
        Per-head logits that join every row's softmax denominator.

    Returns
    -------
    out : ndarray, shape (..., Lq, Dv)
    weights : ndarray, shape (..., Lq, Lk) or (..., Lk), if requested
    lse : ndarray, shape (..., Lq), if requested

    Notes
    -----
    A row left with no key gives output 0, weights 0 and lse -inf (never
    NaN).  Masked keys are skipped, never multiplied by zero, so NaN or inf
    in masked-out keys/values cannot leak; NaN in attended inputs
    propagates.  float32/float64 run natively; float16 computes in float32
    and returns float16; ints and bools become float64.

    Examples
    --------
    >>> import numpy as np, cattn
    >>> q = np.array([[1.0, 0.0]]); k = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> v = np.array([[10.0], [20.0]])
    >>> out, w = cattn.attention(q, k, v, score="dot", return_weights=True)
    >>> np.round(w, 3)
    array([[0.731, 0.269]])
    >>> np.round(out, 3)
    array([[12.689]])
    """
    if (mask is None and bias is None and causal is False and window is None
            and additive_weight is None and return_weights is False
            and return_lse is False and out is None and kv_lengths is None
            and q_lengths is None and q_segments is None and kv_segments is None
            and softcap is None and sinks is None):
        res = _attention_fast(query, key, value, score, scale, num_threads)
        if res is not None:
            return res
    score = _check_score(score)
    if return_weights not in (False, True, "key_mass") or \
            isinstance(return_weights, (int, float)) and not isinstance(return_weights, bool):
        raise ValueError(
            f"return_weights must be False, True or 'key_mass'; got {return_weights!r}"
        )
    if not isinstance(return_lse, (bool, np.bool_)):
        raise TypeError(f"return_lse must be True or False; got {return_lse!r}")
    q, k, v = _matrices(query=query, key=key, value=value)
    (Lq, D), (Lk, Dk), (Lkv, Dv) = q.shape[-2:], k.shape[-2:], v.shape[-2:]
    _check_same(D, Dk, "query and key must share the feature dim D", "query", q, "key", k)
    _check_same(Lk, Lkv, "key and value must have the same number of keys Lk",
                "key", k, "value", v)
    cdt, rdt, out_lead, groups, N, n_threads = _batch(
        [("query", q), ("key", k), ("value", v)], num_threads, Lq * max(Lk, 1) * max(D, 1))
    g = groups.get("key", (None, 1))[1]
    if (Lq == 1 and g > 1 and groups.get("value", (None, 1))[1] == g and q.ndim >= 3
            and window is None and mask is None and bias is None and out is None
            and return_weights is False and q_lengths is None and q_segments is None
            and np.ndim(scale) == 0 and np.ndim(sinks) == 0
            and (kv_lengths is None or np.ndim(kv_lengths) == 1 and len(out_lead) >= 2)):
        # GQA decode: the g query heads sharing a key/value head become g
        # queries of one item, so each K/V head is streamed once, not g times
        # (causal is a no-op with one query; nothing else depends on it).
        s = q.strides
        qf = np.lib.stride_tricks.as_strided(
            q, q.shape[:-3] + (q.shape[-3] // g, g, D), s[:-3] + (g * s[-3], s[-3], s[-1]),
            writeable=False)
        res = attention(qf, k, v, score=score, scale=scale, additive_weight=additive_weight,
                        return_lse=return_lse, num_threads=num_threads,
                        kv_lengths=kv_lengths, softcap=softcap, sinks=sinks)
        if return_lse:
            o, lse = res
            return (o.reshape(o.shape[:-3] + (q.shape[-3], 1, Dv)),
                    lse.reshape(lse.shape[:-2] + (q.shape[-3], 1)))
        return res.reshape(res.shape[:-3] + (q.shape[-3], 1, Dv))
    wl, wr = _check_window(window, causal)
    scale_b = _scale_per_batch(scale, score, D, out_lead)
    add_w = _additive_weights(additive_weight, score, D, cdt)

    if softcap is not None:
        if isinstance(softcap, (bool, np.bool_)) or not isinstance(softcap, numbers.Real):
            raise TypeError(f"softcap must be a positive float; got {softcap!r}")
        if not (math.isfinite(softcap) and softcap > 0):
            raise ValueError(f"softcap must be a finite float > 0; got {softcap!r}")

    out_shape = tuple(out_lead) + (Lq, Dv)
    if out is not None:
        _check_out(out, out_shape, rdt, (query, key, value, mask, bias, scale, additive_weight,
                                          kv_lengths, q_lengths, q_segments, kv_segments,
                                          sinks))

    smax = (abs(float(scale_b[0])) if scale is None or np.ndim(scale) == 0
            else float(np.abs(scale_b).max())) if scale_b.size else 0.0
    if (cdt == np.float32 and smax > 1e4 and q.size and k.size
            and smax * float(np.abs(q).max()) * float(np.abs(k).max()) * max(D, 1) > 1e37):
        # scaled scores would leave float32's range: compute in float64 and
        # return float32 (a rare, huge scale; the scan is skipped otherwise)
        cdt = np.dtype(np.float64)
    if cdt == np.float32:
        # float32 kernels: parameters beyond float32's range are clipped to it
        # (the result is the same softmax; rounding them would give inf/0)
        big, tiny = _F32_MAX, _F32_TINY
        if smax > big:
            scale_b = np.clip(scale_b, -big, big)
        if softcap is not None:
            softcap = min(max(float(softcap), tiny), big)
        if sinks is not None:
            sk = np.asarray(sinks, dtype=np.float64)
            sinks = np.where(np.isfinite(sk), np.clip(sk, -big, big), sk)
    a = {"n_batch": N, "Lq": Lq, "Lk": Lk, "D": D, "Dv": Dv,
         "score_kind": _kernels.SCORE_KINDS[score], "mode": _kernels.MODE_ATTENTION,
         "scale": scale_b, "add_w": add_w, "win_left": wl, "win_right": wr,
         "softcap": float(softcap) if softcap is not None else 0.0}

    # q: any strides; k, v: unit stride along their last axis.
    # A float16 K/V cache with float32 math is read as float16 (half the
    # bytes); the kernel widens each tile it touches.
    kv_half = k.dtype == np.float16 and v.dtype == np.float16 and cdt == np.float32
    a["kv_half"] = int(kv_half)
    q = _strided(q, cdt)
    k = _unit_last(k, k.dtype if kv_half else cdt)
    v = _unit_last(v, v.dtype if kv_half else cdt)
    a["q"] = q
    a["q_off"] = lead_offsets(q, 2, out_lead)
    a["q_rs"], a["q_cs"] = element_strides(q)[-2:]
    a["k"] = k
    a["k_off"] = lead_offsets(k, 2, out_lead, *groups.get("key", (None, 1)))
    a["k_rs"] = element_strides(k)[-2]
    a["v"] = v
    a["v_off"] = lead_offsets(v, 2, out_lead, *groups.get("value", (None, 1)))
    a["v_rs"] = element_strides(v)[-2]

    if mask is not None:
        m = _pair_mask_like(mask, "mask", out_lead, Lq, Lk, "mask")
        m = _strided(m, m.dtype)
        a["mask"] = m
        a["mask_off"] = lead_offsets(m, 2, out_lead)
        a["mask_rs"], a["mask_cs"] = trailing_strides(m, (Lq, Lk))
    if bias is not None:
        bb = _pair_mask_like(bias, "bias", out_lead, Lq, Lk, "bias")
        bb = _strided(bb, cdt)
        a["bias"] = bb
        a["bias_off"] = lead_offsets(bb, 2, out_lead)
        a["bias_rs"], a["bias_cs"] = trailing_strides(bb, (Lq, Lk))
    if kv_lengths is not None:
        a["kv_len"] = _lengths(kv_lengths, "kv_lengths", out_lead, Lk)
    if q_lengths is not None:
        a["q_len"] = _lengths(q_lengths, "q_lengths", out_lead, Lq)
    if (q_segments is None) != (kv_segments is None):
        raise ValueError("q_segments and kv_segments must be given together")
    if q_segments is not None:
        for name, seg, L, pre in (("q_segments", q_segments, Lq, "q_seg"),
                                  ("kv_segments", kv_segments, Lk, "kv_seg")):
            s = _segments(seg, name, out_lead, L)
            a[pre] = s
            a[pre + "_off"] = lead_offsets(s, 1, out_lead)
            a[pre + "_s"] = trailing_strides(s, (L,))[0]
    if sinks is not None:
        sk = np.asarray(sinks)
        if sk.dtype.kind not in "iuf":
            raise TypeError(f"sinks must be real numbers; got dtype {sk.dtype}")
        a["sinks"] = broadcast_lead(sk, out_lead, "sinks", np.float64, extra_ok=((1, 1),))
        if np.any(np.isnan(a["sinks"]) | (a["sinks"] == np.inf)):
            raise ValueError(f"sinks must be finite or -inf (no sink); got {sinks!r}")

    # destination
    direct = (out is not None and out.dtype == cdt and element_strides(out) is not None)
    res = out if direct else np.empty(out_shape, dtype=cdt)
    a["out"] = res
    a["out_off"] = lead_offsets(res, 2, out_lead)
    a["out_rs"], a["out_cs"] = element_strides(res)[-2:]
    need_lse = return_lse or bool(return_weights)
    lse = np.empty((N, Lq), dtype=cdt) if need_lse else None
    a["lse"] = lse
    if return_weights:
        # the weights pass divides by exp(lse) as exp(m) * l, kept apart
        a["lse_m"] = np.empty((N, Lq), dtype=cdt)
        a["lse_logl"] = np.empty((N, Lq), dtype=cdt)
    skips = (wl < _kernels.UNBOUNDED or wr < _kernels.UNBOUNDED
             or q_segments is not None or q_lengths is not None)
    bq, bk = _blocks(N, Lq, n_threads, cdt, D, skips)
    a["block_q"], a["block_k"] = bq, bk
    # every output is allocated before any work: a MemoryError comes first
    weights = None
    if return_weights == "key_mass":
        weights = np.zeros((N, Lk), dtype=cdt)
    elif return_weights:
        weights = np.zeros((N, Lq, Lk), dtype=cdt)
    if Lk == 0 or (Dv == 0 and not need_lse) or N == 0 or Lq == 0:
        # nothing to attend to, or nothing to compute: zeros, and lse -inf
        # (or the sink logit: a sink is all a row without keys has)
        res.fill(0)
        if lse is not None:
            lse[...] = -np.inf if sinks is None else a["sinks"][:, None]
            if q_lengths is not None:
                lse[np.arange(Lq)[None, :] >= a["q_len"][:, None]] = -np.inf
    else:
        # With weights asked for, both passes take the tile path so the
        # weights see bit-identical scores to the lse they are divided by.
        if Lq <= _kernels.DECODE_MAX_LQ and not return_weights:
            _kernels.flash_decode(a, n_threads, _decode_splits(N, Lk, n_threads))
        else:
            _kernels.flash(a, n_threads)
        if return_weights == "key_mass":
            a["mode"], a["key_mass"] = _kernels.MODE_KEY_MASS, weights
            _kernels.flash(a, n_threads)
        elif return_weights:
            a["mode"], a["weights"] = _kernels.MODE_WEIGHTS, weights
            _kernels.flash(a, n_threads)

    if out is not None:
        if not direct:
            out[...] = res
        result = out
    else:
        with np.errstate(over="ignore"):
            result = res if rdt == cdt else res.astype(rdt)
    ret = [result]
    with np.errstate(over="ignore"):     # float16 results: overflow is inf, as it should be
        if return_weights:
            shape = tuple(out_lead) + ((Lk,) if return_weights == "key_mass" else (Lq, Lk))
            ret.append(weights.reshape(shape).astype(rdt, copy=False))
        if return_lse:
            ret.append(lse.reshape(tuple(out_lead) + (Lq,)).astype(rdt, copy=False))
    return ret[0] if len(ret) == 1 else tuple(ret)


_FAST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_F32_MAX = float(np.finfo(np.float32).max)
_F32_TINY = float(np.finfo(np.float32).tiny)


def _attention_fast(q, k, v, score, scale, num_threads):
    """The plainest small call, served without the general machinery:
    returns None whenever anything is not plain (the general path then
    validates and runs it)."""
    if not (type(q) is np.ndarray and type(k) is np.ndarray and type(v) is np.ndarray):
        return None
    dt = q.dtype
    nd = q.ndim
    if (dt not in _FAST_DTYPES or k.dtype != dt or v.dtype != dt or nd < 2
            or k.ndim != nd or v.ndim != nd):
        return None
    qs, ks, vs = q.shape, k.shape, v.shape
    if qs[:-2] != ks[:-2] or qs[:-2] != vs[:-2] or qs[-1] != ks[-1] or ks[-2] != vs[-2]:
        return None
    if not (q.flags.c_contiguous and k.flags.c_contiguous and v.flags.c_contiguous):
        return None
    if q.size == 0 or k.size == 0 or v.size == 0 or qs[-2] <= _kernels.DECODE_MAX_LQ:
        return None
    if not (num_threads is None or type(num_threads) is int and num_threads >= 1):
        return None
    if q.size // qs[-1] * ks[-2] * qs[-1] >= _SERIAL_WORK:
        return None
    if score == "scaled_dot":
        kind = 0
        s = 1.0 / math.sqrt(qs[-1]) if scale is None else scale
    elif score == "dot" or score == "cosine":
        kind = 0 if score == "dot" else 1
        s = 1.0 if scale is None else scale
    else:
        return None
    if type(s) is not float or not math.isfinite(s) or abs(s) > 1e4:
        return None      # (a huge scale takes the general path: overflow guard)
    return _kernels.flash_serial_contiguous(q, k, v, s, kind)


def _blocks(N, Lq, n_threads, cdt=None, D=None, skips_tiles=False):
    """Query/key block sizes: _BLOCK_Q queries a block (float64 with D <= 64
    and nothing that skips tiles: _BLOCK_Q_F64_NARROW) unless that leaves
    threads idle (then smaller blocks, down to 16)."""
    wide = cdt == np.float64 and D is not None and D <= 64 and not skips_tiles
    base = _BLOCK_Q_F64_NARROW if wide else _BLOCK_Q
    bq = min(base, max(16, -(-Lq // 16) * 16))
    while bq > 16 and N * -(-Lq // bq) < 2 * n_threads:
        bq //= 2
    return max(bq, 1), _BLOCK_K


def _decode_splits(N, Lk, n_threads):
    """Key splits per batch item on the decode path: enough work items to
    feed every thread (4 per thread), never splits under 512 keys."""
    if n_threads <= 1:
        return 1
    want = -(-4 * n_threads // max(N, 1))
    return max(1, min(want, Lk // 512))


def _strided(x, dtype):
    """``x`` in ``dtype`` keeping its strides when no cast is needed."""
    x = np.asarray(x, dtype=dtype)
    if element_strides(x) is None:
        x = np.ascontiguousarray(x)
    return x


def _unit_last(x, dtype):
    x = _strided(x, dtype)
    if x.shape[-1] > 1 and x.strides[-1] != x.dtype.itemsize:
        x = np.ascontiguousarray(x)
    return x


def _lengths(x, name, out_lead, L):
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array; got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > L):
        raise ValueError(
            f"{name} must lie in [0, {L}]; got values in [{arr.min()}, {arr.max()}]"
        )
    if arr.ndim == 1 and len(out_lead) > 1:
        if arr.shape[0] != out_lead[0] and arr.shape[0] != 1:
            raise ValueError(
                f"{name} of shape {arr.shape} does not match the first leading dim "
                f"{out_lead[0]}"
            )
        arr = arr.reshape(arr.shape + (1,) * (len(out_lead) - 1))
    return broadcast_lead(arr, out_lead, name, np.int64)


def _segments(x, name, out_lead, L):
    arr = np.asarray(x)
    if arr.dtype.kind not in "iub":
        raise TypeError(f"{name} must be an integer array; got dtype {arr.dtype}")
    if arr.ndim < 1 or arr.shape[-1] != L:
        raise ValueError(
            f"{name} must have shape (..., {L}); got {arr.shape}"
        )
    arr = arr.astype(np.int64, copy=False)
    try:
        ok = np.broadcast_shapes(arr.shape[:-1], tuple(out_lead)) == tuple(out_lead)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name} of shape {arr.shape} does not broadcast against the leading dims "
            f"{tuple(out_lead)}"
        )
    return _strided(arr, np.int64)


def _check_out(out, shape, dtype, inputs):
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array; got {type(out).__name__}")
    if out.shape != shape or out.dtype != dtype:
        raise ValueError(
            f"out must have shape {shape} and dtype {dtype}; got shape {out.shape} "
            f"and dtype {out.dtype}"
        )
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    for x in inputs:
        if isinstance(x, np.ndarray) and np.shares_memory(out, x):
            raise ValueError("out must not overlap an input array")


# ---------------------------------------------------------------- the stages
def _batched_gemm(A, B, out_lead, groups, cdt, n_threads, trans_a, m, n, kdim,
                  alpha, C_shape, names):
    """C[b] = alpha op(A[b]) B[b] for every batch item (column-major view)."""
    N = int(np.prod(out_lead, dtype=np.int64))
    C = np.empty((N,) + C_shape, dtype=cdt)
    if N == 0 or C.size == 0:
        return C
    A_off = lead_offsets(A, 2, out_lead, *groups.get(names[0], (None, 1)))
    B_off = lead_offsets(B, 2, out_lead, *groups.get(names[1], (None, 1)))
    lda = max(A.shape[-1], 1)
    ldb = max(B.shape[-1], 1)
    ldc = max(C_shape[-1], 1)
    Af, Bf = A.reshape(-1), B.reshape(-1)
    if Af.size == 0 or Bf.size == 0:
        C.fill(0)
        return C
    Cf = C.reshape(-1)
    if n_threads > 1 and N > 1:
        with _blas_limit(1):
            _kernels.gemm_batched(Af, A_off, lda, Bf, B_off, ldb, Cf, m * n, ldc,
                                  trans_a, m, n, kdim, alpha, n_threads)
    else:
        with _blas_limit(n_threads):
            _kernels.gemm_batched(Af, A_off, lda, Bf, B_off, ldb, Cf, m * n, ldc,
                                  trans_a, m, n, kdim, alpha, 1)
    return C


def scores(query, key, *, score="scaled_dot", scale=None, additive_weight=None,
           num_threads=None):
    """Stage 1: the similarity of every query with every key.

    Parameters
    ----------
    query : array_like, shape (..., Lq, D)
    key : array_like, shape (..., Lk, D)
    score, scale, additive_weight, num_threads
        As in :func:`attention`.

    Returns
    -------
    ndarray, shape (..., Lq, Lk)
        The scaled scores.

    Examples
    --------
    >>> import numpy as np, cattn
    >>> cattn.scores(np.array([[1.0, 2.0]]), np.array([[3.0, 4.0], [1.0, 0.0]]), score="dot")
    array([[11.,  1.]])
    """
    score = _check_score(score)
    q, k = _matrices(query=query, key=key)
    (Lq, D), (Lk, Dk) = q.shape[-2:], k.shape[-2:]
    _check_same(D, Dk, "query and key must share the feature dim D", "query", q, "key", k)
    cdt, rdt, out_lead, groups, N, n_threads = _batch(
        [("query", q), ("key", k)], num_threads, Lq * max(Lk, 1) * max(D, 1))
    scale_b = _scale_per_batch(scale, score, D, out_lead)
    add_w = _additive_weights(additive_weight, score, D, cdt)

    if score == "additive":
        res = _additive_scores(q, k, cdt, out_lead, groups, scale_b, add_w, n_threads)
    else:
        q = np.ascontiguousarray(q, dtype=cdt)
        k = np.ascontiguousarray(k, dtype=cdt)
        if score == "cosine":
            q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), cdt.type(1e-8))
            k = k / np.maximum(np.linalg.norm(k, axis=-1, keepdims=True), cdt.type(1e-8))
        uniform = bool(np.all(scale_b == scale_b[0])) if scale_b.size else True
        alpha = float(scale_b[0]) if (uniform and scale_b.size) else 1.0
        # row-major S (Lq x Lk) is column-major S^T = K^T' . Q
        res = _batched_gemm(k, q, out_lead, groups, cdt, n_threads, True, Lk, Lq, D,
                            alpha, (Lq, Lk), ("key", "query"))
        if not uniform:
            res *= scale_b.astype(cdt)[:, None, None]
    res = res.reshape(tuple(out_lead) + (Lq, Lk))
    return res if rdt == cdt else res.astype(rdt)


def _additive_scores(q, k, cdt, out_lead, groups, scale_b, add_w, n_threads):
    N = int(np.prod(out_lead, dtype=np.int64))
    Lq, D = q.shape[-2:]
    Lk = k.shape[-2]
    q = _strided(q, cdt)
    k = _unit_last(k, cdt)
    res = np.zeros((N, Lq, Lk), dtype=cdt)
    if N == 0 or Lq == 0 or Lk == 0:
        return res
    bq, bk = _blocks(N, Lq, n_threads)
    a = {"n_batch": N, "Lq": Lq, "Lk": Lk, "D": D, "Dv": 0, "block_q": bq,
         "block_k": bk, "score_kind": _kernels.SCORE_KINDS["additive"],
         "mode": _kernels.MODE_SCORES, "scale": scale_b, "add_w": add_w,
         "q": q, "q_off": lead_offsets(q, 2, out_lead),
         "k": k, "k_off": lead_offsets(k, 2, out_lead, *groups.get("key", (None, 1))),
         "k_rs": element_strides(k)[-2], "v": k, "v_off": np.zeros(N, np.int64),
         "v_rs": 0, "weights": res}
    a["q_rs"], a["q_cs"] = element_strides(q)[-2:]
    _kernels.flash(a, n_threads)
    return res


def softmax(x, axis=-1, *, num_threads=None):
    """Stage 2: the numerically stable softmax along ``axis``.

    Subtracts each slice's maximum before exponentiating, so huge scores do
    not overflow.  A slice that is entirely -inf (every key masked) gives
    zeros, not NaN.

    Examples
    --------
    >>> import numpy as np, cattn
    >>> cattn.softmax(np.array([0.0, np.log(3.0)]))
    array([0.25, 0.75])
    """
    arr = as_real_array(x, "x")
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an int; got {axis!r}")
    if arr.ndim == 0:
        raise ValueError("x must have at least 1 dim")
    if not -arr.ndim <= axis < arr.ndim:
        raise ValueError(f"axis {axis} is out of bounds for x with {arr.ndim} dims")
    cdt, rdt = compute_dtype(arr)
    moved = np.moveaxis(arr, axis, -1)
    work = np.array(moved, dtype=cdt, order="C", copy=True)
    C = work.shape[-1]
    rows = work.reshape(-1, C) if work.size else work.reshape(-1, max(C, 1))[:0]
    n_threads = _threads(num_threads, work.size * 16)
    if work.size:
        _kernels.softmax_rows(rows, n_threads)
    res = np.moveaxis(work, -1, axis)
    return res if rdt == cdt else res.astype(rdt)


def aggregate(weights, value, *, num_threads=None):
    """Stage 3: the weighted sum of the values, ``weights @ value``.

    Parameters
    ----------
    weights : array_like, shape (..., Lq, Lk)
    value : array_like, shape (..., Lk, Dv)

    Returns
    -------
    ndarray, shape (..., Lq, Dv)

    Examples
    --------
    >>> import numpy as np, cattn
    >>> cattn.aggregate(np.array([[0.25, 0.75]]), np.array([[0.0, 4.0], [8.0, 0.0]]))
    array([[6., 1.]])
    """
    w, v = _matrices(weights=weights, value=value)
    (Lq, Lk), (Lkv, Dv) = w.shape[-2:], v.shape[-2:]
    _check_same(Lk, Lkv, "weights' last dim and value's keys must match",
                "weights", w, "value", v)
    cdt, rdt, out_lead, groups, N, n_threads = _batch(
        [("weights", w), ("value", v)], num_threads, Lq * max(Lk, 1) * max(Dv, 1))
    w = np.ascontiguousarray(w, dtype=cdt)
    v = np.ascontiguousarray(v, dtype=cdt)
    # row-major O (Lq x Dv) is column-major O^T = V^T . W^T
    res = _batched_gemm(v, w, out_lead, groups, cdt, n_threads, False, Dv, Lq, Lk, 1.0,
                        (Lq, Dv), ("value", "weights"))
    res = res.reshape(tuple(out_lead) + (Lq, Dv))
    return res if rdt == cdt else res.astype(rdt)


def merge(outputs, lses):
    """Combine attention results computed over disjoint shards of the keys.

    With ``out_s, lse_s = attention(q, k_s, v_s, return_lse=True)`` for key
    shards s, returns ``(out, lse)`` equal to attention over all keys (the
    log-sum-exp rule).  Shards with lse -inf (no key attended) contribute
    nothing; if all are -inf the result is 0 with lse -inf.

    Examples
    --------
    >>> import numpy as np, cattn
    >>> q, k, v = np.ones((1, 2)), np.eye(2), np.array([[1.0], [3.0]])
    >>> a = cattn.attention(q, k[:1], v[:1], return_lse=True)
    >>> b = cattn.attention(q, k[1:], v[1:], return_lse=True)
    >>> out, lse = cattn.merge([a[0], b[0]], [a[1], b[1]])
    >>> bool(np.allclose(out, cattn.attention(q, k, v)))
    True
    """
    outputs = [as_real_array(o, "outputs") for o in outputs]
    lses = [as_real_array(s, "lses") for s in lses]
    if len(outputs) != len(lses) or not outputs:
        raise ValueError(
            f"merge needs as many outputs as lses, at least one; got {len(outputs)} "
            f"and {len(lses)}"
        )
    for o, s in zip(outputs, lses):
        if o.ndim < 1 or o.shape[:-1] != s.shape:
            raise ValueError(
                f"each output must have shape lse.shape + (Dv,); got {o.shape} with "
                f"lse {s.shape}"
            )
        if o.shape != outputs[0].shape:
            raise ValueError(f"outputs differ in shape: {outputs[0].shape} vs {o.shape}")
    dt = np.result_type(*outputs, *lses)
    L = np.stack(lses).astype(dt, copy=False)
    m = np.max(L, axis=0)
    m_safe = np.where(np.isneginf(m), 0, m)
    with np.errstate(invalid="ignore", over="ignore"):
        w = np.where(np.isneginf(L), 0, np.exp(L - m_safe))
    total = w.sum(axis=0)
    out = np.zeros(outputs[0].shape, dtype=dt)
    for o, wi, li in zip(outputs, w, L):
        with np.errstate(invalid="ignore", over="ignore"):
            out += np.where(np.isneginf(li)[..., None], 0, wi[..., None] * o)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where((total == 0)[..., None], 0, out / total[..., None])
        lse = np.where(total == 0, -np.inf, m_safe + np.log(total))
    return out.astype(dt, copy=False), lse.astype(dt, copy=False)
