"""Validation: the arguments of an attention call become an ``AttentionCall``.

One place checks everything a user passes (types, shapes, broadcasting,
values) and turns it into a typed, immutable description of the call:
operands as NumPy arrays, per-batch-item parameters flattened over the
broadcast leading dims, options in canonical form.  ``_plan`` decides how
to compute it and ``_run`` computes it; neither re-checks anything.
``cattn.dask`` shares the scalar options (``validate_options``) and the
shape rules (``check_qkv_shapes``).
"""
import math
from typing import Any, NamedTuple, Optional, Tuple

import numpy as np

from ._operands import as_real_array, batch_shape, broadcast_lead
from ._quant import QuantizedKV
from ._options import (
    check_flag,
    check_ndim,
    check_num_threads,
    check_return_weights,
    check_score,
    check_segments_pair,
    check_sinks_values,
    check_softcap,
    result_dtypes,
    window_bounds,
)

__all__ = ["Options", "AttentionCall", "validate_options", "validate_attention",
           "check_qkv_shapes", "default_scale"]


class Options(NamedTuple):
    """The scalar options of an attention call, checked and canonical."""
    score: str
    window: Tuple[Optional[int], Optional[int]]   # (left, right), causal folded in
    softcap: Optional[float]
    return_weights: Any                           # False, True or "key_mass"
    return_lse: bool
    num_threads: Optional[int]


class AttentionCall(NamedTuple):
    """A validated attention call (see ``validate_attention``)."""
    q: np.ndarray                 # (..., Lq, D), real, not yet cast
    k: np.ndarray                 # (..., Lk, D), or a QuantizedKV (int8 cache)
    v: np.ndarray                 # (..., Lk, Dv), or a QuantizedKV
    options: Options
    Lq: int
    Lk: int
    D: int
    Dv: int
    out_lead: Tuple[int, ...]     # the broadcast leading dims
    groups: dict                  # {"key"/"value": (axis, group)} for GQA
    N: int                        # batch items: prod(out_lead)
    cdt: np.dtype                 # compute dtype by promotion
    rdt: np.dtype                 # result dtype
    scale: np.ndarray             # (N,) float64
    scale_max: float              # max |scale|
    add_w: Optional[np.ndarray]   # (D,) in cdt, additive score only
    mask: Optional[np.ndarray]    # uint8 view, broadcastable to (..., Lq, Lk)
    bias: Optional[np.ndarray]    # real, broadcastable to (..., Lq, Lk)
    kv_len: Optional[np.ndarray]  # (N,) int64
    q_len: Optional[np.ndarray]   # (N,) int64
    q_seg: Optional[np.ndarray]   # int64 (..., Lq), broadcastable
    kv_seg: Optional[np.ndarray]  # int64 (..., Lk), broadcastable
    sinks: Optional[np.ndarray]   # (N,) float64
    out: Optional[np.ndarray]     # the user's destination


def validate_options(*, score, causal, window, softcap, return_weights, return_lse,
                     num_threads, q_segments, kv_segments):
    """The scalar options, checked (shared with ``cattn.dask``)."""
    score = check_score(score)
    return_weights = check_return_weights(return_weights)
    return_lse = check_flag(return_lse, "return_lse")
    window = window_bounds(window, causal)
    softcap = check_softcap(softcap)
    check_segments_pair(q_segments, kv_segments)
    return Options(score=score, window=window, softcap=softcap,
                   return_weights=return_weights, return_lse=return_lse,
                   num_threads=check_num_threads(num_threads))


def check_qkv_shapes(q, k, v):
    """(Lq, D, Lk, Dv) of query/key/value shapes (anything with ``.shape``)."""
    for name, x in (("query", q), ("key", k), ("value", v)):
        check_ndim(x.shape, name)
    (Lq, D), (Lk, Dk), (Lkv, Dv) = q.shape[-2:], k.shape[-2:], v.shape[-2:]
    if D != Dk:
        raise ValueError(
            f"query and key must share the feature dim D: query {q.shape}, key {k.shape}")
    if Lk != Lkv:
        raise ValueError(
            f"key and value must have the same number of keys Lk: key {k.shape}, "
            f"value {v.shape}")
    return Lq, D, Lk, Dv


def leading_dims(named):
    """Broadcast leading dims and GQA groups of (name, array) pairs, with
    the GQA rule named when heads do not divide."""
    try:
        return batch_shape(named)
    except ValueError as exc:
        q = named[0][1]
        heads = [(n, a.shape[-3]) for n, a in named[1:] if a.ndim >= 3 and q.ndim >= 3]
        if any(h not in (1, q.shape[-3]) and h > 0 and q.shape[-3] % h for _, h in heads):
            raise ValueError(
                f"{exc}; grouped-query attention needs the heads axis (-3) of key/value "
                f"to divide the query's ({q.shape[-3]} query heads)"
            ) from None
        raise


def default_scale(score, D):
    if score == "scaled_dot" and D > 0:
        return 1.0 / math.sqrt(D)
    return 1.0


def scale_per_batch(scale, score, D, out_lead):
    if scale is None:
        return np.full(math.prod(out_lead), default_scale(score, D), dtype=np.float64)
    if isinstance(scale, (bool, np.bool_)):
        raise TypeError(f"scale must be a real number or array; got {scale!r}")
    arr = np.asarray(scale)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"scale must be a real number or array; got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"scale must be finite; got {scale!r}")
    return broadcast_lead(arr, out_lead, "scale", np.float64, extra_ok=((1, 1),))


def additive_weights(additive_weight, score, D, cdt):
    if additive_weight is None:
        return np.ones(D, dtype=cdt) if score == "additive" else None
    if score != "additive":
        raise ValueError("additive_weight is only used with score='additive'")
    w = np.ascontiguousarray(as_real_array(additive_weight, "additive_weight"), dtype=cdt)
    if w.shape != (D,):
        raise ValueError(f"additive_weight must have shape (D,) = ({D},); got {w.shape}")
    return w


def pair_operand(x, name, out_lead, Lq, Lk):
    """A mask (bool, as uint8) or bias broadcastable to (..., Lq, Lk),
    never expanded."""
    if name == "mask":
        arr = np.asarray(x)
        if arr.dtype != np.bool_:
            raise TypeError(
                f"mask must be a bool array (True = attend); got dtype {arr.dtype}"
            )
        arr = arr.view(np.uint8)
    else:
        arr = as_real_array(x, name)
    check_ndim(arr.shape, name, least=0)
    while arr.ndim < 2:
        arr = arr[np.newaxis]
    want = tuple(out_lead) + (Lq, Lk)
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


def lengths(x, name, out_lead, L):
    """Per-sequence lengths in [0, L]: a 1-D array runs along the first
    leading dim, otherwise it broadcasts against the leading dims."""
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


def segments(x, name, out_lead, L):
    """Segment ids of shape (..., L), broadcastable against the leading dims."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "iub":
        raise TypeError(f"{name} must be an integer array; got dtype {arr.dtype}")
    if arr.ndim < 1 or arr.shape[-1] != L:
        raise ValueError(
            f"{name} must have shape (..., {L}); got {arr.shape}"
        )
    check_ndim(arr.shape, name, least=1)
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
    return arr


def sinks_per_batch(sinks, out_lead):
    sk = np.asarray(sinks)
    if sk.dtype.kind not in "iuf":
        raise TypeError(f"sinks must be real numbers; got dtype {sk.dtype}")
    arr = broadcast_lead(sk, out_lead, "sinks", np.float64, extra_ok=((1, 1),))
    check_sinks_values(arr, sinks)
    return arr


def check_out(out, shape, dtype, inputs):
    """``out=``: a writeable ndarray of exact shape and dtype that shares no
    memory with any input (every input already an array)."""
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


def _abs_max(scale_b, given):
    if not scale_b.size:
        return 0.0
    if given is None or np.ndim(given) == 0:
        return abs(float(scale_b[0]))     # one value: no scan
    return float(np.abs(scale_b).max())


def validate_attention(query, key, value, *, score, scale, mask, bias, causal, window,
                       additive_weight, return_weights, return_lse, num_threads, out,
                       kv_lengths, q_lengths, q_segments, kv_segments, softcap, sinks):
    """Check every argument of ``cattn.attention``; the ``AttentionCall``."""
    opts = validate_options(score=score, causal=causal, window=window, softcap=softcap,
                            return_weights=return_weights, return_lse=return_lse,
                            num_threads=num_threads, q_segments=q_segments,
                            kv_segments=kv_segments)
    q = as_real_array(query, "query")
    k = key if isinstance(key, QuantizedKV) else as_real_array(key, "key")
    v = value if isinstance(value, QuantizedKV) else as_real_array(value, "value")
    Lq, D, Lk, Dv = check_qkv_shapes(q, k, v)
    # an int8 cache promotes as float32 (its values are int8 x float32 scale)
    cdt, rdt = result_dtypes(*(np.dtype(np.float32) if isinstance(x, QuantizedKV) else x
                               for x in (q, k, v)))
    out_lead, groups = leading_dims([("query", q), ("key", k), ("value", v)])
    out_lead = tuple(out_lead)
    mask_a = None if mask is None else pair_operand(mask, "mask", out_lead, Lq, Lk)
    bias_a = None if bias is None else pair_operand(bias, "bias", out_lead, Lq, Lk)
    kv_len = None if kv_lengths is None else lengths(kv_lengths, "kv_lengths", out_lead, Lk)
    q_len = None if q_lengths is None else lengths(q_lengths, "q_lengths", out_lead, Lq)
    q_seg = kv_seg = None
    if q_segments is not None:
        q_seg = segments(q_segments, "q_segments", out_lead, Lq)
        kv_seg = segments(kv_segments, "kv_segments", out_lead, Lk)
    scale_b = scale_per_batch(scale, opts.score, D, out_lead)
    call = AttentionCall(
        q=q, k=k, v=v, options=opts, Lq=Lq, Lk=Lk, D=D, Dv=Dv, out_lead=out_lead,
        groups=groups, N=math.prod(out_lead), cdt=cdt, rdt=rdt,
        scale=scale_b, scale_max=_abs_max(scale_b, scale),
        add_w=additive_weights(additive_weight, opts.score, D, cdt),
        mask=mask_a, bias=bias_a, kv_len=kv_len, q_len=q_len, q_seg=q_seg, kv_seg=kv_seg,
        sinks=None if sinks is None else sinks_per_batch(sinks, out_lead), out=out)
    if out is not None:
        check_out(out, out_lead + (Lq, Dv), rdt,
                  (q, k, v, mask_a, bias_a, kv_len, q_len, q_seg, kv_seg, call.add_w,
                   call.scale, call.sinks)
                  + tuple(a for x in (k, v) if isinstance(x, QuantizedKV)
                          for a in (x.data, x.scales)))
    return call
