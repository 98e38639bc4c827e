"""Planning: how a validated call is computed.

``plan_attention`` chooses the compute dtype (with the float32 range
policy), the K/V storage format, the path (tile, decode or nothing to
compute), block sizes, decode splits, the thread count and the GQA-decode
folding -- and nothing else: it computes no attention and never calls
``attention`` again.  Every choice that was measured says so here.
"""
from typing import NamedTuple, Optional, Tuple

import numpy as np

from . import _kernels
from ._bf16 import is_bf16, is_bf16_dtype, widen
from ._threads import threads_for
from ._validate import AttentionCall

__all__ = ["Plan", "plan_attention", "tile_blocks", "BLOCK_K", "TILES"]

BLOCK_Q = 64      # measured: 64 and 128 tie at D = 64, 64 wins by 14% at D = 128
# float64 with D <= 64: 256-query blocks read each K/V tile for 4x more
# queries (measured at 2 threads: cross (2,8,256,2048,64) 13.2 -> 12.0 ms,
# b4_512 12.7 -> 12.3, 1k_h16 23.8 -> 23.2, 4k within 2%) -- but not when
# causal/window/segments skip tiles: coarser blocks skip fewer (b4_512
# causal, 1 thread: 16 -> 22 ms)
BLOCK_Q_F64_NARROW = 256
BLOCK_K = 128
# A window (causal included) under which a query sees at most SHORT_SPAN
# keys: 32-query blocks, so the partial tiles along the diagonal waste
# half as much.  Measured (1 thread, float32 causal, min of rounds, ms):
# (1,8,64,64,64) 0.109 -> 0.090, (1,8,128,128,64) 0.302 -> 0.265 (float64
# 0.588 -> 0.514; 2 threads 0.165 -> 0.141), (1,8,256,256,64) 0.936 ->
# 0.872, (4,8,512,512,64) 25.9 -> 25.4, (1,16,1024,1024,64) 47.8 -> 46.4,
# (1,8,2048,2048,64) 90.2 -> 88.6 (medians tie), (1,8,4096,4096,64) 336 ->
# 361 (worse: hence the bound); window (128, 0) at 4096 keys 37.3 -> 34.9,
# (512, 0) and (2048, 0) tie.  Plain calls: 64 and 32 tie at 128 keys.
BLOCK_Q_SHORT_SPAN = 32
SHORT_SPAN = 1024

_F32_MAX = float(np.finfo(np.float32).max)
_F32_TINY = float(np.finfo(np.float32).tiny)


class Plan(NamedTuple):
    """How to compute ``call`` (possibly a GQA-folded form of the user's)."""
    call: AttentionCall
    cdt: np.dtype                     # the kernels' dtype
    kv_format: int                    # _kernels.KV_NATIVE, KV_F16, KV_BF16 or KV_I8
    path: str                         # "tile", "decode" or "empty"
    block_q: int
    block_k: int
    n_split: int                      # decode: key splits per batch item
    n_threads: int
    scale: np.ndarray                 # (N,) float64, clipped to the compute range
    softcap: float                    # 0: none
    sinks: Optional[np.ndarray]
    window: Tuple[int, int]           # kernel terms: UNBOUNDED for None
    gqa_fold: int                     # > 1: query heads folded into queries
    q_format: int = _kernels.IO_NATIVE    # IO_F16: the kernels read a float16 q
    out_format: int = _kernels.IO_NATIVE  # IO_F16/IO_BF16: and write out narrow


#: The block policy, shared with the plain path of ``_kernels`` (one
#: implementation: ``TilePolicy.tile_blocks``).
TILES = _kernels.TilePolicy(BLOCK_Q, BLOCK_Q_F64_NARROW, BLOCK_K, BLOCK_Q_SHORT_SPAN,
                            SHORT_SPAN)


def tile_blocks(N, Lq, n_threads, cdt=None, D=None, skips_tiles=False, preferred=(0, 0),
                span=-1):
    """Query/key block sizes: BLOCK_Q queries a block (float64 with D <= 64
    and nothing that skips tiles: BLOCK_Q_F64_NARROW; the kernel's own
    ``preferred`` (block_q, block_k) where it names one, over these; a
    window that lets a query see at most SHORT_SPAN keys (``span``, -1: no
    window): BLOCK_Q_SHORT_SPAN, over all) unless that leaves threads idle
    (then smaller blocks, down to 32)."""
    return TILES.tile_blocks(N, Lq, n_threads, cdt == np.float64,
                             -1 if D is None else D, skips_tiles, span, *preferred)


def window_span(window, Lk):
    """The most keys one query may see through the kernel window (left,
    right): Lk with one side bounded (causal), left + right + 1 (at most
    Lk) with both, -1 when neither is."""
    unb = _kernels.UNBOUNDED
    left, right = window
    if left >= unb and right >= unb:
        return -1
    if left >= unb or right >= unb:
        return Lk
    return max(0, min(Lk, left + right + 1))


_PREFERRED: "dict[tuple[bool, int], tuple[int, int]]" = {}


def _preferred_blocks(is_double, kv_format):
    """The kernel table's preferred tile (fixed for the process: cached)."""
    key = (bool(is_double), int(kv_format))
    if key not in _PREFERRED:
        _PREFERRED[key] = _kernels.preferred_blocks(*key)
    return _PREFERRED[key]


def decode_splits(N, Lk, n_threads):
    """Key splits per batch item on the decode path: enough work items to
    feed every thread (4 per thread), never splits under 512 keys."""
    if n_threads <= 1:
        return 1
    want = -(-4 * n_threads // max(N, 1))
    return max(1, min(want, Lk // 512))


def kernel_window(window):
    """(left, right) with None as UNBOUNDED, clipped to the kernel's range."""
    unb = _kernels.UNBOUNDED
    return tuple(unb if x is None else max(-unb + 1, min(x, unb)) for x in window)


def _per_group(x, out_lead, g):
    """A per-item array over out_lead (..., H) as one value per group of g
    heads (..., H // g), or None when the values differ inside a group."""
    if x is None:
        return None
    a = x.reshape(out_lead[:-1] + (out_lead[-1] // g, g))
    if not np.all(a == a[..., :1]):
        return False
    return np.ascontiguousarray(a[..., 0].reshape(-1))


def fold_gqa_decode(call):
    """GQA decode: the g query heads sharing a key/value head become g
    queries of one item, so each K/V head is streamed once, not g times
    (causal is a no-op with one query: it sits at its sequence's last key,
    kv_len - 1).  Returns (folded call, g), or (call, 1) when the call is
    not a plain one-query GQA call."""
    g = call.groups.get("key", (None, 1))[1]
    o = call.options
    if not (call.Lq == 1 and g > 1 and call.groups.get("value", (None, 1))[1] == g
            and call.q.ndim >= 3 and call.mask is None and call.bias is None
            and call.out is None and o.return_weights is False and call.q_len is None
            and call.q_seg is None and o.window[0] is None and o.window[1] in (None, 0)):
        return call, 1
    if call.q_pos is not None:
        # an explicit position: causal is a no-op only where the query sits
        # at or past its last key
        kv_last = (call.Lk if call.kv_len is None else call.kv_len) - 1
        if not np.all(call.q_pos >= kv_last):
            return call, 1
    lead = call.out_lead[:-1] + (call.out_lead[-1] // g,)
    folded = {n: _per_group(getattr(call, n), call.out_lead, g)
              for n in ("scale", "sinks", "kv_len")}
    if any(x is False for x in folded.values()):
        return call, 1
    q = call.q
    s = q.strides
    qf = np.lib.stride_tricks.as_strided(
        q, q.shape[:-3] + (q.shape[-3] // g, g, call.D), s[:-3] + (g * s[-3], s[-3], s[-1]),
        writeable=False)
    options = call.options._replace(window=(None, None))
    return call._replace(q=qf, Lq=g, out_lead=lead, N=call.N // g, groups={},
                         options=options, q_pos=None, **folded), g


def _abs_max(x):
    return float(np.abs(widen(x) if is_bf16(x) else x).max())


def _abs_max_kv(k):
    """max |k| (an int8 cache: bounded by 127 x its largest scale)."""
    if hasattr(k, "scales"):
        return 127.0 * float(np.abs(k.scales).max()) if k.scales.size else 0.0
    return _abs_max(k)


def _range_policy(call):
    """float32 kernels keep their parameters inside float32's range; a call
    whose scaled scores would overflow float32 computes in float64 (a rare,
    huge scale: the scan of q and k runs only for |scale| > 1e4)."""
    cdt, scale, smax = call.cdt, call.scale, call.scale_max
    q, k = call.q, call.k
    if (cdt == np.float32 and smax > 1e4 and q.size and k.size
            and smax * _abs_max(q) * _abs_max_kv(k)
            * max(call.D, 1) > 1e37):
        cdt = np.dtype(np.float64)
    softcap = call.options.softcap or 0.0
    sinks = call.sinks
    if cdt == np.float32:
        # the result is the same softmax; rounding them would give inf/0
        if smax > _F32_MAX:
            scale = np.clip(scale, -_F32_MAX, _F32_MAX)
        if softcap:
            softcap = min(max(softcap, _F32_TINY), _F32_MAX)
        if sinks is not None:
            sinks = np.where(np.isfinite(sinks), np.clip(sinks, -_F32_MAX, _F32_MAX), sinks)
    return cdt, scale, softcap, sinks


def io_formats(call, cdt):
    """How the kernels hold q and out: a float16/bfloat16 query is read as
    such and a float16/bfloat16 result written narrow by the kernels
    (float32 math, dot-product scores), so neither has a float32 copy;
    anything else is converted in NumPy."""
    if cdt != np.float32 or call.options.score not in ("dot", "scaled_dot"):
        return _kernels.IO_NATIVE, _kernels.IO_NATIVE
    q_fmt = (_kernels.IO_F16 if call.q.dtype == np.float16
             else _kernels.IO_BF16 if is_bf16_dtype(call.q.dtype) else _kernels.IO_NATIVE)
    rdt = call.rdt if call.out is None else call.out.dtype    # out= may ask for float32
    out_fmt = (_kernels.IO_F16 if rdt == np.float16
               else _kernels.IO_BF16 if is_bf16_dtype(rdt) else _kernels.IO_NATIVE)
    return q_fmt, out_fmt


def plan_attention(call):
    """The ``Plan`` of a validated call."""
    call, g = fold_gqa_decode(call)
    o = call.options
    cdt, scale, softcap, sinks = _range_policy(call)
    # A float16 K/V cache with float32 math is read as float16 (half the
    # bytes); the kernel widens each tile it touches.
    half = (call.k.dtype == np.float16 and call.v.dtype == np.float16
            and cdt == np.float32)
    # a bfloat16 cache likewise (validation left K/V bfloat16 only then)
    bf16 = is_bf16(call.k) and is_bf16(call.v) and cdt == np.float32
    # An int8 cache (QuantizedKV key and/or value) is read as int8 with its
    # scales; a float operand beside it is read in the compute type.
    int8 = call.k.dtype == np.int8 or call.v.dtype == np.int8
    kv_format = (_kernels.KV_I8 if int8 else _kernels.KV_F16 if half
                 else _kernels.KV_BF16 if bf16 else _kernels.KV_NATIVE)
    n_threads = threads_for(o.num_threads,
                            call.N * call.Lq * max(call.Lk, 1) * max(call.D, 1))
    window = kernel_window(o.window)
    need_lse = o.return_lse or bool(o.return_weights)
    if (call.Lk == 0 or (call.Dv == 0 and not need_lse) or call.N == 0 or call.Lq == 0):
        path = "empty"
    elif call.Lq <= _kernels.DECODE_MAX_LQ and not o.return_weights:
        # with weights asked for, both passes take the tile path so the
        # weights see bit-identical scores to the lse they are divided by
        path = "decode"
    else:
        path = "tile"
    unb = _kernels.UNBOUNDED
    skips = (window[0] < unb or window[1] < unb or call.q_seg is not None
             or call.q_len is not None)
    bq, bk = tile_blocks(call.N, call.Lq, n_threads, cdt, call.D, skips,
                         _preferred_blocks(cdt == np.float64, kv_format),
                         window_span(window, call.Lk))
    q_format, out_format = io_formats(call, cdt)
    return Plan(call=call, cdt=cdt, kv_format=kv_format, q_format=q_format,
                out_format=out_format,
                path=path, block_q=bq, block_k=bk,
                n_split=decode_splits(call.N, call.Lk, n_threads) if path == "decode" else 1,
                n_threads=n_threads, scale=scale, softcap=softcap, sinks=sinks,
                window=window, gqa_fold=g)
