"""Paged K/V: ``paged_attention`` and ``cache_write`` (validate -> plan -> run).

The plan is a list of work items for one parallel loop over a mixed batch:

* a sequence with at most ``DECODE_MAX_LQ`` new tokens is *decoded*: its
  query heads are folded into the rows of one item -- all of them where
  they fit (``PAGED_MAX_ROWS``: a page's rows of every K/V head lie
  together in the pool and are read as one run), else those sharing a K/V
  head (each page is read once per K/V head, not once per query head) --
  and its key range is split so that every thread gets work (split-KV,
  partials merged by the log-sum-exp rule);
* a longer chunk (chunked prefill) runs the tile path per (head, query
  block), K/V tiles gathered page by page.

Items are costed (keys x rows x features), long decodes split to about an
even share, and the list sorted longest first for the dynamic schedule:
one long sequence does not leave a core idle.
"""
import numpy as np

from . import _bf16, _kernels
from ._quant import QuantizedKV, quantize_kv
from ._threads import threads_for
from ._validate_paged import validate_cache_write, validate_paged

__all__ = ["paged_attention", "cache_write"]

PAGED_BLOCK_Q = 64
PAGED_BLOCK_K = 128
# a decode split never has fewer keys than this per K/V head it covers (the
# partials' merge and the per-item setup cost about as much as streaming a
# few hundred keys)
MIN_SPLIT_KEYS = 256
# work items per thread the splitting aims for
ITEMS_PER_THREAD = 4


def _key_range(seq_len, q_len, window, first, last):
    """[lo, hi) of the keys queries first..last (token indices) may see."""
    shift = seq_len - q_len
    lo, hi = 0, seq_len
    if window[0] is not None:
        lo = np.maximum(lo, first + shift - window[0])
    if window[1] is not None:
        hi = np.minimum(hi, last + shift + window[1] + 1)
    return lo, hi


def plan_paged(call, n_threads):
    """(work (n, 7) int64 sorted by cost, finish (m, 5) int64, acc_rows)."""
    T, H, D = call.query.shape
    Hkv, Dv = call.key_cache.shape[1], call.value_cache.shape[3]
    G = H // Hkv
    sl, qs = call.seq_lens, call.q_start
    q_len = np.diff(qs)
    feat = D + Dv
    dec = np.nonzero((q_len > 0) & (q_len <= _kernels.DECODE_MAX_LQ))[0]
    pre = np.nonzero(q_len > _kernels.DECODE_MAX_LQ)[0]
    max_rows = _kernels.PAGED_MAX_ROWS
    # prefill items: (s, h, qb), cost = queries x visible keys x features
    tiles, tile_cost = [], []
    if pre.size:
        nb = -(-q_len[pre] // PAGED_BLOCK_Q)
        s_of = np.repeat(pre, nb)
        qb = np.arange(nb.sum()) - np.repeat(np.cumsum(nb) - nb, nb)
        first = qb * PAGED_BLOCK_Q
        last = np.minimum(first + PAGED_BLOCK_Q, q_len[s_of]) - 1
        lo, hi = _key_range(sl[s_of], q_len[s_of], call.window, first, last)
        c = (last - first + 1) * np.maximum(hi - lo, 1) * feat
        s_h = np.repeat(s_of, H)
        h_h = np.tile(np.arange(H), s_of.size)
        qb_h = np.repeat(qb, H)
        z = np.zeros_like(s_h)
        tiles = np.stack([np.full_like(s_h, _kernels.PAGED_TILE), s_h, h_h, qb_h, z, z, z], 1)
        tile_cost = np.repeat(c, H)
    # decode items: (s, h0, nh) over key ranges, split to an even share
    dec_rows, fin_rows = [], []
    total = float(np.sum(tile_cost)) if len(tile_cost) else 0.0
    per = []
    for s in dec:
        ql = int(q_len[s])
        nh = G if ql * G <= max_rows else max(1, max_rows // ql)
        lo, hi = _key_range(int(sl[s]), ql, call.window, 0, ql - 1)
        keys = max(int(hi) - int(lo), 0)
        if Hkv > 1 and ql * H <= max_rows:
            # every K/V head in one item: a page's rows of all heads lie
            # together, and are read together (paged_chunk_mg)
            cost = keys * feat * Hkv * (2 + ql * G)
            per.append((s, 0, H, ql, int(lo), int(hi), keys, cost))
            total += cost
            continue
        for g in range(Hkv):
            for h0 in range(g * G, (g + 1) * G, nh):
                n = min(nh, (g + 1) * G - h0)
                cost = keys * feat * (2 + ql * n)
                per.append((s, h0, n, ql, int(lo), int(hi), keys, cost))
                total += cost
    target = total / max(1, n_threads * ITEMS_PER_THREAD)
    acc_row = 0
    dec_cost = []
    for s, h0, n, ql, lo, hi, keys, cost in per:
        n_split = 1
        if n_threads > 1 and target > 0:
            # an item over several K/V heads does that many heads' work per
            # key: it may split as finely as the per-head items would
            kv_heads = max(1, n // G)
            n_split = int(max(1, min(-(-cost // target), keys * kv_heads // MIN_SPLIT_KEYS)))
        rows = ql * n
        step = -(-max(keys, 1) // n_split)
        step = -(-step // 64) * 64
        n_split = max(1, -(-keys // step))
        fin_rows.append((s, h0, n, n_split, acc_row))
        for sp in range(n_split):
            js = lo + sp * step
            dec_rows.append((_kernels.PAGED_DECODE, s, h0, n, js, min(hi, js + step),
                             acc_row + sp * rows))
            dec_cost.append(cost / n_split)
        acc_row += n_split * rows
    parts = []
    costs = []
    if len(tiles):
        parts.append(tiles)
        costs.append(tile_cost)
    if dec_rows:
        parts.append(np.array(dec_rows, dtype=np.int64))
        costs.append(np.array(dec_cost))
    if not parts:
        return np.zeros((0, 7), np.int64), np.zeros((0, 5), np.int64), 0, 0.0
    work = np.concatenate(parts).astype(np.int64)
    cost = np.concatenate(costs)
    order = np.argsort(-cost, kind="stable")
    fin = np.array(fin_rows, dtype=np.int64).reshape(-1, 5)
    return np.ascontiguousarray(work[order]), fin, acc_row, float(cost.sum())


def paged_attention(query, key_cache, value_cache, block_table, seq_lens, query_start_loc, *,
                    scale=None, causal=False, window=None, softcap=None, sinks=None,
                    alibi_slopes=None, return_lse=False, num_threads=None):
    """Attention over a paged K/V cache, for a ragged batch of sequences.

    The keys and values of many sequences share one pool of pages (vLLM's
    CPU layout).  Each sequence's new tokens are the last ``q_len`` of its
    ``seq_len`` keys; prefill chunks and single-token decodes run in one
    call, scheduled across threads by their work.

    Parameters
    ----------
    query : array_like, shape (total_tokens, num_heads, head_dim)
        The new tokens of every sequence, one after the other.
    key_cache : ndarray or QuantizedKV, shape (num_pages, num_kv_heads, page_size, head_dim)
    value_cache : ndarray or QuantizedKV, shape (num_pages, num_kv_heads, page_size, head_dim_v)
        The page pool, C-contiguous, read in place: float32, float16 or
        float64; bfloat16 (``ml_dtypes.bfloat16``); or int8, a
        :class:`cattn.QuantizedKV` whose ``data`` is the pool and whose
        ``scales`` are float32 ``(num_pages, num_kv_heads, page_size,
        ceil(head_dim / 32))`` (allocate one with ``QuantizedKV.zeros``,
        fill it with :func:`cache_write`).  float16 and bfloat16 rows are
        widened and int8 rows dequantized as they are read, computing in
        float32.  Both pools have one format.  ``num_kv_heads`` divides
        ``num_heads`` (GQA/MQA: query head h reads K/V head ``h //
        (num_heads // num_kv_heads)``).
    block_table : array_like of int, shape (num_seqs, max_pages_per_seq)
        Key j of sequence s is in page ``block_table[s, j // page_size]``,
        row ``j % page_size``.  Slots past a sequence's last page are never
        read (they may hold anything).
    seq_lens : array_like of int, shape (num_seqs,)
        Keys per sequence, the new tokens included.  Keys at or past
        ``seq_len`` are never read: unused page rows may hold anything.
    query_start_loc : array_like of int, shape (num_seqs + 1,)
        Sequence s owns query tokens ``[query_start_loc[s],
        query_start_loc[s + 1])`` (cumulative, as ``cu_seqlens``).
    scale : float, optional
        Score scale (default ``1 / sqrt(head_dim)``).
    causal : bool
        Token t of a sequence sits at key position ``p = t + seq_len - q_len``
        and sees keys ``j <= p``.
    window : (left, right), optional
        Keep keys with ``p - left <= j <= p + right`` (None: unbounded).
    softcap : float, optional
        Scores become ``softcap * tanh(s / softcap)``.
    sinks : float or array_like, shape (num_heads,), optional
        Per-head logits joining every row's softmax denominator.
    alibi_slopes : float or array_like, shape (num_heads,), optional
        ALiBi: ``-slope * |p - j|`` is added to the (capped) score, as in
        FlashAttention (under ``causal``: ``slope * (j - p)``, vLLM's form).
    return_lse : bool
        Also return the (total_tokens, num_heads) log-sum-exp.
    num_threads : int, optional

    Returns
    -------
    out : ndarray, shape (total_tokens, num_heads, head_dim_v)
        float32 (float64 if the query or the cache is float64; float16 for a
        float16 query over a float16/32 pool).  Over a bfloat16 or int8
        pool, as :func:`cattn.attention` with that cache: bfloat16 when
        query and pool are (lse stays float32), else float32 (float64 for a
        float64 or integer query).  A token with no visible key gets 0 (lse
        -inf, or the sink logit).
    lse : ndarray, shape (total_tokens, num_heads), if ``return_lse``

    Examples
    --------
    >>> import numpy as np, cattn
    >>> kc = np.zeros((4, 1, 2, 2), np.float32); vc = np.zeros((4, 1, 2, 1), np.float32)
    >>> k = np.array([[[1, 0]], [[0, 1]], [[1, 1]]], np.float32)
    >>> v = np.array([[[1]], [[2]], [[3]]], np.float32)
    >>> cattn.cache_write(k, v, kc, vc, [6, 7, 2])    # pages 3, 3, 1
    >>> q = np.array([[[1, 0]]], np.float32)
    >>> out = cattn.paged_attention(q, kc, vc, [[3, 1]], [3], [0, 1], scale=1.0)
    >>> want = cattn.attention(q[:, 0], k[:, 0], v[:, 0], scale=1.0)
    >>> bool(np.allclose(out[:, 0], want))
    True
    """
    call = validate_paged(query, key_cache, value_cache, block_table, seq_lens,
                          query_start_loc, scale=scale, causal=causal, window=window,
                          softcap=softcap, sinks=sinks, alibi_slopes=alibi_slopes,
                          return_lse=return_lse, num_threads=num_threads)
    return run_paged(call)


def kernel_pools(call):
    """(key pool, value pool, kv_format, key scales, value scales) as the
    kernels read them: float16 and bfloat16 pools as their bits under
    float32 math, int8 as data + scales, otherwise the compute dtype."""
    kc, vc, cdt = call.key_cache, call.value_cache, call.cdt
    if isinstance(kc, QuantizedKV):
        return kc.data, vc.data, _kernels.KV_I8, kc.scales, vc.scales
    if cdt == np.float32 and kc.dtype == np.float16:
        return kc, vc, _kernels.KV_F16, None, None
    if cdt == np.float32 and _bf16.is_bf16(kc):
        return _bf16.bits(kc), _bf16.bits(vc), _kernels.KV_BF16, None, None
    # a 16-bit or float32 pool under float64 math: widened once per call
    if _bf16.is_bf16(kc):
        kc, vc = _bf16.widen(kc, cdt), _bf16.widen(vc, cdt)
    elif kc.dtype != cdt:
        kc, vc = kc.astype(cdt), vc.astype(cdt)
    return kc, vc, _kernels.KV_NATIVE, None, None


def run_paged(call):
    cdt = call.cdt
    T, H, D = call.query.shape
    Dv = call.value_cache.shape[3]
    kc, vc, kv_format, k_scale, v_scale = kernel_pools(call)
    query = _bf16.widen(call.query) if _bf16.is_bf16(call.query) else call.query
    q = np.ascontiguousarray(query, dtype=cdt)
    out = np.empty((T, H, Dv), dtype=cdt)
    lse = np.empty((H, T), dtype=cdt) if call.return_lse else None
    # threads: decided on the call's whole work
    q_len = np.diff(call.q_start)
    work_est = int(np.sum(q_len * call.seq_lens)) * H * max(D, 1)
    n_threads = threads_for(call.num_threads, work_est)
    work, fin, acc_rows, _ = plan_paged(call, n_threads)
    unb = _kernels.UNBOUNDED
    wl, wr = (unb if x is None else max(-unb + 1, min(int(x), unb)) for x in call.window)
    softcap = call.softcap or 0.0
    sinks = call.sinks
    if cdt == np.float32 and sinks is not None:
        big = float(np.finfo(np.float32).max)
        sinks = np.where(np.isfinite(sinks), np.clip(sinks, -big, big), sinks)
    if out.size or lse is not None:
        if work.shape[0] == 0:
            out.fill(0)
            if lse is not None:
                lse.fill(-np.inf)
        _kernels.paged(q, kc, vc, call.block_table, call.seq_lens, call.q_start, out, lse,
                       call.scale, softcap, sinks, call.alibi_slopes, wl, wr, kv_format,
                       PAGED_BLOCK_Q, PAGED_BLOCK_K, work, fin, acc_rows, n_threads,
                       k_scale, v_scale)
    rdt = call.rdt
    with np.errstate(over="ignore"):
        res = out if rdt == cdt else out.astype(rdt)
        if lse is None:
            return res
        # a bfloat16 result: the output only, lse stays float32 (as attention)
        ldt = cdt if _bf16.is_bf16_dtype(rdt) else rdt
        return res, np.ascontiguousarray(lse.T).astype(ldt, copy=False)


def cache_write(key, value, key_cache, value_cache, slot_mapping):
    """Write new tokens' keys and values into a page pool (vLLM's
    ``reshape_and_cache``): token t goes to page ``slot_mapping[t] //
    page_size``, row ``slot_mapping[t] % page_size``, converted to the
    cache's format.  float16 and bfloat16 pools round to nearest even
    (values past the range become inf; bfloat16 as ml_dtypes converts, a
    float64 value through float32).  An int8 pool (a ``QuantizedKV``) gets
    each row quantized by :func:`cattn.quantize_kv`'s rule -- int8 data
    and a float32 scale per 32 values written at the slot; NaN or inf
    there is a ValueError and nothing is written.

    Parameters
    ----------
    key : array_like, shape (num_tokens, num_kv_heads, head_dim)
    value : array_like, shape (num_tokens, num_kv_heads, head_dim_v)
    key_cache, value_cache : ndarray or QuantizedKV, (num_pages, num_kv_heads, page_size, ...)
        Written in place (C-contiguous, writeable).
    slot_mapping : array_like of int, shape (num_tokens,)
        ``page * page_size + offset`` per token; each in
        ``[0, num_pages * page_size)``.  When two tokens name one slot the
        later one is kept.
    """
    k, v, page, off = validate_cache_write(key, value, key_cache, value_cache, slot_mapping)
    # converted (quantized) before anything is written: a bad row leaves
    # both pools untouched
    k = _pool_rows(k, key_cache, "key")
    v = _pool_rows(v, value_cache, "value")
    with np.errstate(over="ignore", invalid="ignore"):
        _put_rows(key_cache, page, off, k)
        _put_rows(value_cache, page, off, v)


def _pool_rows(x, cache, name):
    """New rows in the pool's format: a QuantizedKV for an int8 pool."""
    if not isinstance(cache, QuantizedKV):
        return x
    try:
        return quantize_kv(x)
    except ValueError as exc:
        raise ValueError(f"{name} cannot go into an int8 pool: {exc}") from None


def _put_rows(cache, page, off, rows):
    # advanced indices around a slice: the indexed view is (tokens, Hkv, D)
    if isinstance(cache, QuantizedKV):
        cache.data[page, :, off, :] = rows.data
        cache.scales[page, :, off, :] = rows.scales
    else:
        cache[page, :, off, :] = rows
