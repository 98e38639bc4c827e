"""Validation of the paged K/V entry points (``paged_attention``,
``cache_write``): arguments -> ``PagedCall`` (typed, immutable).

Every check a user can trip is here, each a ValueError/TypeError naming
the argument.  What the kernels rely on (paged.h): every page index of a
key below ``seq_len`` lies in the pool, ``seq_len <= max_pages *
page_size``, ``0 <= q_len <= seq_len``, and every array is contiguous.

A page pool is an ndarray (float16, float32, float64 or ml_dtypes'
bfloat16) or an int8 ``QuantizedKV`` whose ``data`` is the pool and whose
``scales`` are ``(num_pages, num_kv_heads, page_size, ceil(head_dim /
32))``.  Both pools of a call have one format.
"""
import math
import numbers
from typing import NamedTuple, Optional, Tuple

import numpy as np

from . import _bf16
from ._options import (check_flag, check_num_threads, check_sinks_values, check_softcap,
                       window_bounds)
from ._quant import QBLOCK, QuantizedKV

__all__ = ["PagedCall", "validate_paged", "validate_cache_write"]

_CACHE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


class PagedCall(NamedTuple):
    query: np.ndarray            # (T, H, D), any real dtype
    key_cache: np.ndarray        # (P, Hkv, page_size, D), C-contiguous, or a QuantizedKV
    value_cache: np.ndarray      # (P, Hkv, page_size, Dv), the key_cache's format
    block_table: np.ndarray      # (S, max_pages) int64 (slots past a sequence's pages unchecked)
    seq_lens: np.ndarray         # (S,) int64
    q_start: np.ndarray          # (S + 1,) int64
    scale: float
    softcap: Optional[float]
    window: Tuple[Optional[int], Optional[int]]   # causal folded in
    sinks: Optional[np.ndarray]  # (H,) float64
    alibi_slopes: Optional[np.ndarray]   # (H,) float64
    return_lse: bool
    num_threads: Optional[int]
    cdt: np.dtype                # compute dtype
    rdt: np.dtype                # result dtype


def _array(x, name):
    if x is None:
        raise TypeError(f"{name} must be an array; got None")
    try:
        return np.asarray(x)
    except Exception as exc:     # ragged lists and the like
        raise TypeError(f"{name} must be an array: {exc}") from None


def _ints(x, name, ndim):
    a = _array(x, name)
    if a.dtype.kind not in "iu" and not (a.size == 0 and a.dtype.kind == "f"):
        raise TypeError(f"{name} must hold integers; got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dim(s); got shape {a.shape}")
    if a.dtype.kind == "u" and a.size and int(a.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name} holds values past int64")
    return np.ascontiguousarray(a, dtype=np.int64)


def _pool_layout(x, name):
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (num_pages, num_kv_heads, page_size, "
                         f"head_dim); got shape {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (the pool is read in place, "
                         f"never copied)")


def _int8_cache(x, name):
    """An int8 pool: the QuantizedKV's arrays checked again (its attributes
    can be replaced after construction)."""
    data, sc = x.data, x.scales
    if not isinstance(data, np.ndarray) or data.dtype != np.int8:
        raise TypeError(f"{name}.data must be an int8 array; got {type(data).__name__} "
                        f"{getattr(data, 'dtype', '')}")
    if not isinstance(sc, np.ndarray) or sc.dtype != np.float32:
        raise TypeError(f"{name}.scales must be a float32 array; got {type(sc).__name__} "
                        f"{getattr(sc, 'dtype', '')}")
    _pool_layout(data, name)
    want = data.shape[:3] + (-(-data.shape[3] // QBLOCK),)
    if sc.shape != want:
        raise ValueError(f"{name}.scales must have shape {want} (one per {QBLOCK} values "
                         f"of a row); got {sc.shape}")
    if not sc.flags.c_contiguous:
        raise ValueError(f"{name}.scales must be C-contiguous")
    return x


def _cache(x, name):
    if isinstance(x, QuantizedKV):
        return _int8_cache(x, name)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array or a QuantizedKV (the page pool); "
                        f"got {type(x).__name__}")
    if x.dtype not in _CACHE_DTYPES and not _bf16.is_bf16_dtype(x.dtype):
        raise TypeError(f"{name} must be float16, float32, float64, bfloat16 (ml_dtypes) or "
                        f"an int8 QuantizedKV; got dtype {x.dtype}")
    _pool_layout(x, name)
    return x


_INT8 = "int8 (QuantizedKV)"


def cache_format(x):
    """A pool's format, for comparing and naming: its dtype, or a name for
    an int8 QuantizedKV."""
    return _INT8 if isinstance(x, QuantizedKV) else x.dtype


def _writeable(x, name):
    arrays = (x.data, x.scales) if isinstance(x, QuantizedKV) else (x,)
    if not all(a.flags.writeable for a in arrays):
        raise ValueError(f"{name} is read-only")


def _per_head(x, name, H):
    a = _array(x, name)
    if a.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be real numbers; got dtype {a.dtype}")
    if a.ndim > 1 or (a.ndim == 1 and a.shape[0] not in (1, H)):
        raise ValueError(f"{name} must be a scalar or have shape ({H},) (one per query "
                         f"head); got shape {a.shape}")
    return np.ascontiguousarray(np.broadcast_to(a.astype(np.float64), (H,)))


def _dtypes(q, kc):
    """(compute, result) dtypes.  A bfloat16 or int8 pool follows
    ``cattn.attention`` with such a cache: the pool counts as float32, a
    bfloat16 query as float32, and the result is bfloat16 only when query
    and pool both are.  A float16/32/64 pool keeps its own rule (a float16
    query gives float16)."""
    q_bf16 = _bf16.is_bf16(q)
    qdt = (np.dtype(np.float64) if q.dtype.kind in "biu"
           else np.dtype(np.float32) if q_bf16 else q.dtype)
    fmt = cache_format(kc)
    low = fmt is _INT8 or _bf16.is_bf16_dtype(fmt)
    kdt = np.dtype(np.float32) if low else kc.dtype
    cdt = np.dtype(np.float64) if np.float64 in (qdt, kdt) else np.dtype(np.float32)
    if low:
        rdt = fmt if (q_bf16 and fmt is not _INT8) else cdt
    else:
        rdt = np.dtype(np.float16) if (qdt == np.float16 and cdt == np.float32) else cdt
    return cdt, rdt


def validate_paged(query, key_cache, value_cache, block_table, seq_lens, query_start_loc, *,
                   scale, causal, window, softcap, sinks, alibi_slopes, return_lse,
                   num_threads):
    """Checked arguments of ``paged_attention``."""
    q = _array(query, "query")
    q_bf16 = _bf16.is_bf16(q)
    if not q_bf16 and (q.dtype.kind not in "biuf"
                       or (q.dtype.kind == "f" and q.dtype.itemsize > 8)):
        raise TypeError(f"query must hold real numbers; got dtype {q.dtype}")
    if q.ndim != 3:
        raise ValueError(f"query must have shape (total_tokens, num_heads, head_dim); "
                         f"got shape {q.shape}")
    kc = _cache(key_cache, "key_cache")
    vc = _cache(value_cache, "value_cache")
    if cache_format(vc) != cache_format(kc):
        raise TypeError(f"value_cache must have key_cache's format {cache_format(kc)}; "
                        f"got {cache_format(vc)}")
    T, H, D = q.shape
    P, Hkv, ps, Dk = kc.shape
    if vc.shape[:3] != kc.shape[:3]:
        raise ValueError(f"value_cache must have key_cache's (num_pages, num_kv_heads, "
                         f"page_size) = {kc.shape[:3]}; got {vc.shape[:3]}")
    if Dk != D:
        raise ValueError(f"key_cache head_dim {Dk} differs from query's {D}")
    if ps < 1:
        raise ValueError("key_cache page_size must be >= 1")
    if Hkv < 1 or H % Hkv:
        raise ValueError(f"key_cache has {Hkv} KV heads, which must divide query's {H} heads")
    bt = _ints(block_table, "block_table", 2)
    sl = _ints(seq_lens, "seq_lens", 1)
    qs = _ints(query_start_loc, "query_start_loc", 1)
    S = sl.shape[0]
    if bt.shape[0] != S:
        raise ValueError(f"block_table has {bt.shape[0]} rows for {S} seq_lens")
    if qs.shape[0] != S + 1:
        raise ValueError(f"query_start_loc must have num_seqs + 1 = {S + 1} entries; "
                         f"got {qs.shape[0]}")
    if qs[0] != 0 or qs[-1] != T:
        raise ValueError(f"query_start_loc must start at 0 and end at total_tokens = {T}; "
                         f"got {qs[0]} ... {qs[-1]}")
    q_len = np.diff(qs)
    if np.any(q_len < 0):
        s = int(np.argmax(q_len < 0))
        raise ValueError(f"query_start_loc must be non-decreasing; it falls at entry {s + 1}")
    if np.any(sl < 0):
        raise ValueError(f"seq_lens must be >= 0; got {int(sl.min())}")
    cap = bt.shape[1] * ps
    if np.any(sl > cap):
        s = int(np.argmax(sl > cap))
        raise ValueError(f"seq_lens[{s}] = {int(sl[s])} is more than its block_table row "
                         f"holds ({bt.shape[1]} pages of {ps} = {cap} keys)")
    if np.any(q_len > sl):
        s = int(np.argmax(q_len > sl))
        raise ValueError(f"sequence {s} has {int(q_len[s])} query tokens (query_start_loc) "
                         f"but seq_lens[{s}] = {int(sl[s])} keys: the new tokens are among "
                         f"its keys, so q_len <= seq_len")
    # the pages a kernel reads: those of keys below seq_len
    used = np.arange(bt.shape[1])[None, :] < ((sl + ps - 1) // ps)[:, None]
    bad = used & ((bt < 0) | (bt >= P))
    if np.any(bad):
        s, j = map(int, np.argwhere(bad)[0])
        raise ValueError(f"block_table[{s}, {j}] = {int(bt[s, j])} is outside the pool of "
                         f"{P} pages")
    if scale is None:
        scale = 1.0 / math.sqrt(D) if D else 1.0
    else:
        if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real):
            raise TypeError(f"scale must be a float; got {scale!r}")
        scale = float(scale)
        if not math.isfinite(scale):
            raise ValueError(f"scale must be finite; got {scale!r}")
    window = window_bounds(window, causal)
    softcap = check_softcap(softcap)
    if sinks is not None:
        given = sinks
        sinks = _per_head(sinks, "sinks", H)
        check_sinks_values(sinks, given)
    if alibi_slopes is not None:
        alibi_slopes = _per_head(alibi_slopes, "alibi_slopes", H)
        if not np.all(np.isfinite(alibi_slopes)):
            raise ValueError("alibi_slopes must be finite")
    return_lse = check_flag(return_lse, "return_lse")
    num_threads = check_num_threads(num_threads)
    cdt, rdt = _dtypes(q, kc)
    return PagedCall(q, kc, vc, bt, sl, qs, scale, softcap, window, sinks, alibi_slopes,
                     return_lse, num_threads, cdt, rdt)


def validate_cache_write(key, value, key_cache, value_cache, slot_mapping):
    """(key, value, pages, offsets) of a checked ``cache_write``."""
    kc = _cache(key_cache, "key_cache")
    vc = _cache(value_cache, "value_cache")
    _writeable(kc, "key_cache")
    _writeable(vc, "value_cache")
    if vc.shape[:3] != kc.shape[:3]:
        raise ValueError(f"value_cache must have key_cache's (num_pages, num_kv_heads, "
                         f"page_size) = {kc.shape[:3]}; got {vc.shape[:3]}")
    P, Hkv, ps, D = kc.shape
    Dv = vc.shape[3]
    k = _array(key, "key")
    v = _array(value, "value")
    # bfloat16 rows: widened (exactly) to float32, then converted as float32
    k = _bf16.widen(k) if _bf16.is_bf16(k) else k
    v = _bf16.widen(v) if _bf16.is_bf16(v) else v
    for x, name, width in ((k, "key", D), (v, "value", Dv)):
        if x.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers; got dtype {x.dtype}")
        if x.ndim != 3 or x.shape[1:] != (Hkv, width):
            raise ValueError(f"{name} must have shape (num_tokens, {Hkv}, {width}); "
                             f"got shape {x.shape}")
    if v.shape[0] != k.shape[0]:
        raise ValueError(f"value has {v.shape[0]} tokens, key {k.shape[0]}")
    slots = _ints(slot_mapping, "slot_mapping", 1)
    if slots.shape[0] != k.shape[0]:
        raise ValueError(f"slot_mapping has {slots.shape[0]} entries for {k.shape[0]} tokens")
    if slots.size and (slots.min() < 0 or slots.max() >= P * ps):
        bad = int(np.argmax((slots < 0) | (slots >= P * ps)))
        raise ValueError(f"slot_mapping[{bad}] = {int(slots[bad])} is outside the pool's "
                         f"{P * ps} slots ({P} pages of {ps})")
    return k, v, slots // ps, slots % ps
