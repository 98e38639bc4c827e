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

from . import _bf16
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
           "check_qkv_shapes", "check_lengths_alignment", "default_scale"]


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
    # (N,) int64: the key position of query 0 per item, overriding the
    # kv_len - q_len alignment (chunked callers: cattn.dask), or None
    q_pos: Optional[np.ndarray] = None


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


def check_lengths_alignment(window, Lq, Lk, kv_len, q_lengths_given):
    """Causal/window with ``kv_lengths`` alone on Lq == Lk > 1 and some
    0 < kv_len < Lk: a ValueError naming ``q_lengths``.

    With lengths the diagonal sits at each sequence's own end (query i at
    key position i + kv_len - q_len); without ``q_lengths`` the Lq queries
    are the last Lq positions of the kv_len keys, which for Lq == Lk and
    kv_len < Lk leaves the first queries without keys and shifts the
    others: that is a padded self-attention batch missing its
    ``q_lengths`` (the call that was right before 0.2.0), not a decode
    step (Lq new tokens need kv_len >= Lq).  ``kv_len`` is an integer array
    (any shape) or None."""
    if (window == (None, None) or q_lengths_given or kv_len is None
            or Lq != Lk or Lq <= 1):
        return
    kv = np.asarray(kv_len)
    short = kv[(kv > 0) & (kv < Lk)]
    if short.size:
        raise ValueError(
            f"causal/window with kv_lengths but no q_lengths, and Lq == Lk == {Lk}: "
            f"with lengths the queries sit at each sequence's end (query i at key "
            f"position i + kv_len - q_len, q_len = Lq when q_lengths is not given), "
            f"so with kv_lengths = {int(short.min())} < {Lk} the first queries would "
            f"see no key.  For a padded self-attention batch pass q_lengths too "
            f"(usually q_lengths=kv_lengths); to mean queries at the end, pass a mask")


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


_INT64_MAX = np.iinfo(np.int64).max


def _fits_int64(arr):
    """Whether casting ``arr`` to int64 keeps every id exactly."""
    if arr.dtype.kind == "b" or (arr.dtype.kind == "i" and arr.dtype.itemsize <= 8):
        return True
    if arr.dtype.kind == "u" and arr.dtype.itemsize < 8:
        return True
    return not arr.size or int(arr.max()) <= _INT64_MAX


def segment_ids(q_seg, kv_seg):
    """Query and key segment ids as int64 arrays that are equal exactly
    where the given ids are equal.

    The kernels compare int64 ids.  A plain cast wraps uint64 ids above
    2**63 - 1 onto negative int64 ids (2**64 - 1 would equal -1), so when
    the ids do not all fit in int64 both sides are replaced by dense codes
    of their union: negative ids first, then the non-negative ones, each
    group sorted in its own exact integer dtype (never through float64,
    NumPy's common type of int64 and uint64).  The usual ids (any signed
    or small unsigned dtype, or uint64 below 2**63) are only cast, without
    a copy when they are int64 already.
    """
    if _fits_int64(q_seg) and _fits_int64(kv_seg):
        return q_seg.astype(np.int64, copy=False), kv_seg.astype(np.int64, copy=False)
    neg_parts, pos_parts = [], []
    for a in (q_seg, kv_seg):
        flat = a.reshape(-1)
        if a.dtype.kind == "u":
            pos_parts.append(flat.astype(np.uint64, copy=False))
        else:
            flat = flat.astype(np.int64, copy=False)
            neg_parts.append(flat[flat < 0])
            pos_parts.append(flat[flat >= 0].astype(np.uint64))
    negs = np.unique(np.concatenate(neg_parts)) if neg_parts else np.empty(0, np.int64)
    poss = np.unique(np.concatenate(pos_parts))
    coded = []
    for a in (q_seg, kv_seg):
        code = np.empty(a.shape, dtype=np.int64)
        if a.dtype.kind == "u":
            code[...] = len(negs) + np.searchsorted(poss, a.astype(np.uint64, copy=False))
        else:
            s = a.astype(np.int64, copy=False)
            neg = s < 0
            code[neg] = np.searchsorted(negs, s[neg])
            code[~neg] = len(negs) + np.searchsorted(poss, s[~neg].astype(np.uint64))
        coded.append(code)
    return coded[0], coded[1]


def sinks_per_batch(sinks, out_lead):
    sk = np.asarray(sinks)
    if sk.dtype.kind not in "iuf":
        raise TypeError(f"sinks must be real numbers; got dtype {sk.dtype}")
    arr = broadcast_lead(sk, out_lead, "sinks", np.float64, extra_ok=((1, 1),))
    check_sinks_values(arr, sinks)
    return arr


#: Bound on the candidate solutions ``np.shares_memory`` may try when the
#: extents of ``out`` and an input intersect.  Exact overlap of two strided
#: views is an integer program: crafted views of one buffer took 7 s
#: (float32) and 21 s (float16) unbounded, in C, with Ctrl-C ignored.
#: Bounded at 10**5 it took at most 18 ms over 20,000 random pairs of
#: strided float16/float32 views (2-4 dims) of one buffer.
OVERLAP_MAX_WORK = 100_000

#: Largest ``out`` whose element offsets are listed to decide whether it
#: overlaps itself when its strides do not nest (1 M elements: ~20 ms).
SELF_OVERLAP_LIST = 1 << 20


# NumPy 2 moved it; NumPy 1.23-1.26 has it at the top level
_TooHardError = getattr(getattr(np, "exceptions", None), "TooHardError", None) \
    or getattr(np, "TooHardError")


def _self_overlaps(out):
    """Whether two elements of ``out`` share memory (zero strides, rows
    that overlap); None when that cannot be decided cheaply."""
    if out.size <= 1 or out.flags.c_contiguous or out.flags.f_contiguous:
        return False            # contiguous: every element has its own bytes
    if any(st == 0 and n > 1 for st, n in zip(out.strides, out.shape)):
        return True
    axes = sorted((abs(st), n) for st, n in zip(out.strides, out.shape) if n > 1)
    span = out.itemsize
    for st, n in axes:
        if st < span:
            break
        span = st * (n - 1) + span
    else:
        return False            # strides nest: every element has its own bytes
    if out.size > SELF_OVERLAP_LIST:
        return None
    offsets = np.zeros(1, dtype=np.int64)
    for st, n in zip(out.strides, out.shape):
        offsets = (offsets[:, None] + np.arange(n, dtype=np.int64) * st).reshape(-1)
    offsets.sort()
    return bool(np.any(np.diff(offsets) < out.itemsize))


def _overlap(out, x):
    """Whether ``out`` and array ``x`` share memory; None when undecidable
    within ``OVERLAP_MAX_WORK``.  (NumPy compares the byte extents first:
    disjoint ones, the common case, never reach the solver.)"""
    if out.size == 0 or x.size == 0:
        return False
    try:
        return bool(np.shares_memory(out, x, max_work=OVERLAP_MAX_WORK))
    except _TooHardError:
        return None


def check_out(out, shape, dtype, inputs):
    """``out=``: a writeable ndarray of exact shape and dtype whose elements
    do not overlap each other and that shares no memory with any input.

    ``inputs`` are the arrays every argument became (NumPy arrays made from
    torch tensors, memoryviews, lists ...), so memory shared through any of
    them is seen.
    """
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array; got {type(out).__name__}")
    if out.shape != shape or (out.dtype != dtype and not (
            dtype.name == "bfloat16" and out.dtype == np.float32)):   # bf16: float32 on request
        raise ValueError(
            f"out must have shape {shape} and dtype {dtype}; got shape {out.shape} "
            f"and dtype {out.dtype}"
        )
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    self_overlap = _self_overlaps(out)
    if self_overlap:
        raise ValueError(
            f"out must not overlap itself: its strides {out.strides} make elements "
            f"share memory")
    if self_overlap is None:
        raise ValueError(
            f"out (strides {out.strides}): whether its elements overlap cannot be "
            f"decided cheaply; pass a contiguous out")
    for x in inputs:
        if not isinstance(x, np.ndarray):
            continue
        shared = _overlap(out, x)
        if shared:
            raise ValueError("out must not overlap an input array")
        if shared is None:
            raise ValueError(
                "out: whether it overlaps an input array cannot be decided cheaply "
                "(strided views of one buffer); pass a contiguous out")


def _abs_max(scale_b, given):
    if not scale_b.size:
        return 0.0
    if given is None or np.ndim(given) == 0:
        return abs(float(scale_b[0]))     # one value: no scan
    return float(np.abs(scale_b).max())


def validate_attention(query, key, value, *, score, scale, mask, bias, causal, window,
                       additive_weight, return_weights, return_lse, num_threads, out,
                       kv_lengths, q_lengths, q_segments, kv_segments, softcap, sinks,
                       q_pos=None, keep_bf16_q=False):
    """Check every argument of ``cattn.attention``; the ``AttentionCall``.
    ``q_pos`` (private, for chunked callers): the key position of query 0
    per item, broadcast against the leading dims, replacing the
    kv_len - q_len alignment.  ``keep_bf16_q``: a bfloat16 query stays
    bfloat16 (the forward's run reads or widens it; the backward's does
    not)."""
    opts = validate_options(score=score, causal=causal, window=window, softcap=softcap,
                            return_weights=return_weights, return_lse=return_lse,
                            num_threads=num_threads, q_segments=q_segments,
                            kv_segments=kv_segments)
    q = as_real_array(query, "query", bf16_ok=True)
    k = key if isinstance(key, QuantizedKV) else as_real_array(key, "key", bf16_ok=True)
    v = value if isinstance(value, QuantizedKV) else as_real_array(value, "value", bf16_ok=True)
    Lq, D, Lk, Dv = check_qkv_shapes(q, k, v)
    if isinstance(k, QuantizedKV) or isinstance(v, QuantizedKV):
        # an int8 cache promotes as float32 (its values are int8 x float32
        # scale); a bfloat16 operand beside it is computed from float32
        q, k, v = (x if isinstance(x, QuantizedKV) else _bf16.widen(x) if _bf16.is_bf16(x)
                   else x for x in (q, k, v))
        cdt, rdt = result_dtypes(*(np.dtype(np.float32) if isinstance(x, QuantizedKV) else x
                                   for x in (q, k, v)))
    else:
        q, k, v, bf16_dtypes = _bf16.normalize_qkv(q, k, v, keep_q=keep_bf16_q)
        cdt, rdt = bf16_dtypes or result_dtypes(q, k, v)
    out_lead, groups = leading_dims([("query", q), ("key", k), ("value", v)])
    out_lead = tuple(out_lead)
    mask_a = None if mask is None else pair_operand(mask, "mask", out_lead, Lq, Lk)
    bias_a = None if bias is None else pair_operand(bias, "bias", out_lead, Lq, Lk)
    kv_len = None if kv_lengths is None else lengths(kv_lengths, "kv_lengths", out_lead, Lk)
    q_len = None if q_lengths is None else lengths(q_lengths, "q_lengths", out_lead, Lq)
    if q_pos is None:
        check_lengths_alignment(opts.window, Lq, Lk, kv_len, q_len is not None)
    else:
        q_pos = broadcast_lead(q_pos, out_lead, "q_pos", np.int64)
    q_seg = kv_seg = None
    given_seg = ()
    if q_segments is not None:
        q_seg = segments(q_segments, "q_segments", out_lead, Lq)
        kv_seg = segments(kv_segments, "kv_segments", out_lead, Lk)
        given_seg = (q_seg, kv_seg)       # out must not overwrite the caller's ids
        q_seg, kv_seg = segment_ids(q_seg, kv_seg)
    scale_b = scale_per_batch(scale, opts.score, D, out_lead)
    call = AttentionCall(
        q=q, k=k, v=v, options=opts, Lq=Lq, Lk=Lk, D=D, Dv=Dv, out_lead=out_lead,
        groups=groups, N=math.prod(out_lead), cdt=cdt, rdt=rdt,
        scale=scale_b, scale_max=_abs_max(scale_b, scale),
        add_w=additive_weights(additive_weight, opts.score, D, cdt),
        mask=mask_a, bias=bias_a, kv_len=kv_len, q_len=q_len, q_seg=q_seg, kv_seg=kv_seg,
        sinks=None if sinks is None else sinks_per_batch(sinks, out_lead), out=out,
        q_pos=q_pos)
    if out is not None:
        check_out(out, out_lead + (Lq, Dv), rdt,
                  (q, k, v, mask_a, bias_a, kv_len, q_len, q_seg, kv_seg, call.add_w,
                   call.scale, call.sinks) + given_seg
                  + tuple(a for x in (k, v) if isinstance(x, QuantizedKV)
                          for a in (x.data, x.scales)))
    return call
