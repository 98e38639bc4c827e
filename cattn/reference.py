"""Plain NumPy reference implementation of attention (the float64 oracle).

This module is the *specification by example* for :mod:`cattn`.  It computes
everything in float64, line by line, following the three stages of
attention as they are usually taught:

1. **similarity** -- a score ``s[i, j]`` saying how well query ``i`` matches
   key ``j``;
2. **softmax** -- the scores of each query row are turned into weights that
   are non-negative and sum to 1;
3. **aggregation** -- the output of query ``i`` is the weighted sum of the
   value vectors, ``out[i] = sum_j w[i, j] * v[j]``.

It is deliberately simple and slow (it materialises the full score matrix)
and never imports the compiled extension, so that the test-suite can use it
as an independent oracle.  All results are returned as float64 arrays.

Conventions
-----------
* ``query`` has shape ``(..., Lq, D)``, ``key`` ``(..., Lk, D)``, ``value``
  ``(..., Lk, Dv)`` and the output ``(..., Lq, Dv)``.  The leading dimensions
  ``...`` broadcast with the usual NumPy rules.
* Grouped-query attention: when the inputs have at least three dimensions
  and the head axis (axis -3) of ``key``/``value`` divides that of
  ``query``, query head ``h`` uses key/value head ``h // (Hq // Hkv)``.
* A key that is masked out is *skipped*: it gets weight exactly 0 and its
  key/value entries are never multiplied, so NaN or inf stored there cannot
  leak into the result.
* A query row with no key left gives output 0, weights 0 and a log-sum-exp
  of ``-inf`` (or the sink logit when ``sinks`` is given).
"""

import math

import numpy as np

from ._options import SCORES

__all__ = ["attention", "scores", "softmax", "aggregate", "merge"]

_COSINE_EPS = 1e-8


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------

def _to_float64(x, name):
    """Return ``x`` as a float64 array (with at least two dimensions).

    Parameters
    ----------
    x : array_like
        Real numeric input (bool, int, float16/32/64, bfloat16 ...), or an
        int8 cache (``cattn.QuantizedKV``), dequantized.
    name : str
        Argument name, used in error messages.

    Returns
    -------
    numpy.ndarray
        A float64 copy/view of ``x``.
    """
    if type(x).__module__.startswith("torch") and str(getattr(x, "dtype", "")) == "torch.bfloat16":
        x = x.detach().float().numpy()     # exact: bfloat16 widens to float32
    if hasattr(x, "dequantize") and hasattr(x, "scales"):
        # an int8 cache (cattn.QuantizedKV): its values int8 x scale, exact
        # in float64
        x = x.dequantize(np.float64)
    arr = np.asarray(x)
    # bfloat16 (ml_dtypes) converts to float64 exactly
    if arr.dtype.kind not in "biuf" and arr.dtype.name != "bfloat16":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim < 2:
        raise ValueError(f"{name} must have at least 2 dimensions, got {arr.ndim}")
    return arr.astype(np.float64)


def _expand_kv_heads(query_like, kv, name):
    """Repeat the head axis of ``kv`` for grouped-query attention.

    Parameters
    ----------
    query_like : numpy.ndarray
        Array whose axis -3 holds the query heads ``Hq``.
    kv : numpy.ndarray
        Key or value array whose axis -3 holds ``Hkv`` heads.
    name : str
        Argument name, used in error messages.

    Returns
    -------
    numpy.ndarray
        ``kv`` with every head repeated ``Hq // Hkv`` times along axis -3
        when ``Hkv`` divides ``Hq`` (and differs from it); otherwise ``kv``
        unchanged, left to ordinary broadcasting.
    """
    if query_like.ndim < 3 or kv.ndim < 3:
        return kv
    n_q_heads = query_like.shape[-3]
    n_kv_heads = kv.shape[-3]
    if n_kv_heads == n_q_heads or n_kv_heads in (0, 1):
        return kv
    if n_q_heads % n_kv_heads != 0:
        # Not a grouped-query layout; let broadcasting decide (and fail).
        return kv
    group = n_q_heads // n_kv_heads
    return np.repeat(kv, group, axis=-3)


def _scale_array(scale, default):
    """Return the score scale as something broadcasting against (..., Lq, Lk).

    Parameters
    ----------
    scale : None, float or array_like
        User scale.  An array holds one value per leading index (e.g. per
        head) and is reshaped to ``scale[..., None, None]``.
    default : float
        Scale used when ``scale`` is None.

    Returns
    -------
    float or numpy.ndarray
    """
    if scale is None:
        return default
    scale = np.asarray(scale, dtype=np.float64)
    if not np.all(np.isfinite(scale)):
        raise ValueError("scale must be finite")
    if scale.ndim == 0:
        return float(scale)
    return scale[..., None, None]


def _row_norm(x):
    """Euclidean norm of each row (last axis), without overflow: the row is
    scaled by a power of two (exact) before squaring, so a row of huge
    finite values has its true norm.  inf in a row gives inf, NaN NaN."""
    with np.errstate(all="ignore"):
        amax = np.max(np.abs(x), axis=-1, keepdims=True, initial=0.0)
        e = np.frexp(np.where(np.isfinite(amax) & (amax > 0), amax, 1.0))[1]
        y = np.ldexp(x, -e)
        return np.ldexp(np.sqrt(np.sum(y * y, axis=-1, keepdims=True)), e)


def _raw_scores(query, key, score, additive_weight):
    """Similarity of every query with every key, before scaling.

    Parameters
    ----------
    query : numpy.ndarray, shape (..., Lq, D)
    key : numpy.ndarray, shape (..., Lk, D)
    score : {"dot", "scaled_dot", "cosine", "additive"}
    additive_weight : None or array_like, shape (D,)

    Returns
    -------
    numpy.ndarray, shape (..., Lq, Lk)
    """
    key_t = np.swapaxes(key, -1, -2)                     # (..., D, Lk)
    if score in ("dot", "scaled_dot"):
        with np.errstate(invalid="ignore", over="ignore"):
            return query @ key_t
    if score == "cosine":
        q_norm = _row_norm(query)
        k_norm = _row_norm(key)
        # An inf entry gives inf / inf = NaN: the direction of such a vector
        # is undefined, so its scores are NaN (and propagate, or are masked).
        with np.errstate(invalid="ignore"):
            q_unit = query / np.maximum(q_norm, _COSINE_EPS)
            k_unit = key / np.maximum(k_norm, _COSINE_EPS)
        return q_unit @ np.swapaxes(k_unit, -1, -2)
    if score == "additive":
        d = query.shape[-1]
        if additive_weight is None:
            w = np.ones(d)
        else:
            w = np.asarray(additive_weight, dtype=np.float64)
            if w.shape != (d,):
                raise ValueError(
                    f"additive_weight must have shape ({d},), got {w.shape}")
        # tanh(q_i + k_j) for every pair (i, j): shape (..., Lq, Lk, D);
        # inf + -inf is NaN, as the kernels give
        with np.errstate(invalid="ignore"):
            pair = np.tanh(query[..., :, None, :] + key[..., None, :, :])
        return pair @ w
    raise ValueError(f"unknown score {score!r}; expected one of {SCORES}")


def _default_scale(score, d):
    """Default multiplier of the raw score: 1/sqrt(D) for scaled_dot, else 1."""
    if score == "scaled_dot" and d > 0:
        return 1.0 / math.sqrt(d)
    return 1.0


def _per_leading(arr, n_leading, name):
    """Reshape a per-sequence integer array so it broadcasts against (..., L).

    A 1-D array applies along the *first* leading dimension (shape ``(B,)``
    for ``(B, H, L, D)`` inputs); any other array has as many dimensions as
    the leading dims and broadcasts against them.

    Parameters
    ----------
    arr : array_like
    n_leading : int
        Number of leading (batch/head) dimensions.
    name : str

    Returns
    -------
    numpy.ndarray
        Array with ``n_leading`` dimensions (a trailing axis of length 1 is
        *not* added).
    """
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biu":
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.ndim == 1 and n_leading >= 1:
        arr = arr.reshape(arr.shape + (1,) * (n_leading - 1))
    return arr


def mask_scores(s, *, bias=None, mask=None, causal=False, window=None, q_pos=None):
    """Add ``bias`` to the scores and say which keys each query attends.

    This is the masking step between stage 1 and stage 2 of :func:`attention`
    (which calls it), shared with :mod:`cattn.explain` so that both mask
    keys the same way.

    Parameters
    ----------
    s : numpy.ndarray, shape (..., Lq, Lk)
        Scores (already scaled and capped).
    bias, mask, causal, window
        As in :func:`attention`.
    q_pos : int or array_like of int, optional
        Key position of query 0, where ``causal`` and ``window`` align:
        query ``i`` sits at ``p = i + q_pos``.  An array broadcasts against
        the leading dims of ``s``.  Default ``Lk - Lq`` (bottom-right);
        :func:`attention` passes ``kv_len - q_len`` per sequence.

    Returns
    -------
    s : numpy.ndarray
        ``s + bias`` (``s`` itself without a bias).
    attend : numpy.ndarray of bool, broadcastable against ``s``
        False where the key is masked: by ``mask``, ``causal``, ``window``,
        a ``-inf`` bias or a score of ``-inf``.
    """
    n_q, n_k = s.shape[-2], s.shape[-1]
    # Keys that are attended; start with "all" and remove what is masked.
    attend = np.ones(s.shape, dtype=bool)
    if bias is not None:
        with np.errstate(invalid="ignore", over="ignore"):
            b = np.asarray(bias, dtype=np.float64)
            s = s + b
            attend = attend & (b != -np.inf)        # -inf bias masks the key
    # A score of -inf (whatever its origin) means the key is skipped.
    attend = attend & (s != -np.inf)
    i = np.arange(n_q)[:, None]          # query index, column vector
    j = np.arange(n_k)[None, :]          # key index, row vector
    if q_pos is None:
        p = i + (n_k - n_q)              # query position aligned bottom-right
    else:                                # per sequence: (..., Lq, 1)
        p = i + np.asarray(q_pos, dtype=np.int64)[..., None, None]
    if mask is not None:
        m = np.asarray(mask)
        if m.dtype != np.bool_:
            raise TypeError(f"mask must be a bool array, got dtype {m.dtype}")
        attend = attend & m
    if causal:
        attend = attend & (j <= p)
    if window is not None:
        left, right = window
        if left is not None:
            attend = attend & (j >= p - left)
        if right is not None:
            attend = attend & (j <= p + right)
    return s, attend


# ---------------------------------------------------------------------------
# public building blocks
# ---------------------------------------------------------------------------

def scores(query, key, *, score="scaled_dot", scale=None, additive_weight=None):
    """Scaled similarity scores of queries with keys (stage 1).

    Parameters
    ----------
    query : array_like, shape (..., Lq, D)
    key : array_like, shape (..., Lk, D)
    score : {"dot", "scaled_dot", "cosine", "additive"}, optional
        ``"dot"``: ``q . k``; ``"scaled_dot"``: ``q . k / sqrt(D)``;
        ``"cosine"``: ``q . k / (max(|q|, 1e-8) max(|k|, 1e-8))``;
        ``"additive"``: ``sum_d w_d tanh(q_d + k_d)``.
    scale : float or array_like, optional
        Multiplies the score and replaces the default (``1/sqrt(D)`` for
        ``"scaled_dot"``, 1 otherwise).  An array is one value per leading
        index (e.g. per head).
    additive_weight : array_like, shape (D,), optional
        Weights ``w`` of the additive score (default all ones).

    Returns
    -------
    numpy.ndarray, shape (..., Lq, Lk), float64
    """
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; expected one of {SCORES}")
    q = _to_float64(query, "query")
    k = _to_float64(key, "key")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"query and key must have the same last dimension D, "
            f"got {q.shape[-1]} and {k.shape[-1]}")
    k = _expand_kv_heads(q, k, "key")
    raw = _raw_scores(q, k, score, additive_weight)
    with np.errstate(invalid="ignore", over="ignore"):
        return raw * _scale_array(scale, _default_scale(score, q.shape[-1]))


def softmax(x, axis=-1):
    """Numerically stable softmax (stage 2).

    The maximum of each slice is subtracted before exponentiating, so huge
    values do not overflow.  A slice whose entries are all ``-inf`` gives all
    zeros (not NaN).  NaN in a slice propagates to that slice.

    Parameters
    ----------
    x : array_like
    axis : int, optional
        Axis along which the weights sum to 1 (default last).

    Returns
    -------
    numpy.ndarray, float64, same shape as ``x``
    """
    x = np.asarray(x, dtype=np.float64)
    if x.shape[axis] == 0:
        return np.zeros(x.shape)
    row_max = np.max(x, axis=axis, keepdims=True)
    # An all -inf slice has max -inf: shift by 0 instead so exp gives 0.
    shift = np.where(row_max == -np.inf, 0.0, row_max)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(x - shift)
    total = np.sum(e, axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, e / np.where(total > 0, total, 1.0),
                        np.where(np.isnan(total), np.nan, 0.0))


def aggregate(weights, value):
    """Weighted sum of the values (stage 3): ``weights @ value``.

    Parameters
    ----------
    weights : array_like, shape (..., Lq, Lk)
    value : array_like, shape (..., Lk, Dv)
        With grouped-query layouts the head axis of ``value`` is repeated to
        match that of ``weights``.

    Returns
    -------
    numpy.ndarray, shape (..., Lq, Dv), float64
    """
    w = _to_float64(weights, "weights")
    v = _to_float64(value, "value")
    if w.shape[-1] != v.shape[-2]:
        raise ValueError(
            f"weights has {w.shape[-1]} keys but value has {v.shape[-2]}")
    v = _expand_kv_heads(w, v, "value")
    return w @ v


def merge(outputs, lses):
    """Combine attention results computed on disjoint shards of the keys.

    If shard ``s`` gave output ``o_s`` and log-sum-exp ``l_s``, the result
    over all keys is ``out = sum_s exp(l_s - L) o_s`` with
    ``L = log(sum_s exp(l_s))``.

    Parameters
    ----------
    outputs : sequence of array_like, each (..., Lq, Dv)
    lses : sequence of array_like, each (..., Lq)

    Returns
    -------
    out : numpy.ndarray, (..., Lq, Dv), float64
    lse : numpy.ndarray, (..., Lq), float64
        Shards with ``lse == -inf`` contribute nothing; if every shard has
        ``-inf`` the output is 0 and the lse ``-inf``.
    """
    outputs = [np.asarray(o, dtype=np.float64) for o in outputs]
    lses = [np.asarray(l, dtype=np.float64) for l in lses]
    if len(outputs) != len(lses) or len(outputs) == 0:
        raise ValueError("outputs and lses must be non-empty sequences of equal length")
    # Largest lse of each row, over the shards.
    lse_max = lses[0]
    for l in lses[1:]:
        lse_max = np.maximum(lse_max, l)
    shift = np.where(np.isfinite(lse_max), lse_max, 0.0)
    total = np.zeros(np.broadcast_shapes(*[l.shape for l in lses]))
    acc = 0.0
    for o, l in zip(outputs, lses):
        w = np.where(l == -np.inf, 0.0, np.exp(l - shift))     # (..., Lq)
        total = total + w
        # Skip (not multiply) empty shards so NaN/inf stored there cannot leak.
        with np.errstate(invalid="ignore", over="ignore"):
            acc = acc + np.where((l == -np.inf)[..., None], 0.0, w[..., None] * o)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where((total > 0)[..., None],
                       acc / np.where(total > 0, total, 1.0)[..., None], 0.0)
        out = np.where(np.isnan(total)[..., None], np.nan, out)
        lse = np.where(total > 0, shift + np.log(np.where(total > 0, total, 1.0)),
                       -np.inf)
        lse = np.where(np.isnan(total), np.nan, lse)
    return out, lse


# ---------------------------------------------------------------------------
# the full attention
# ---------------------------------------------------------------------------

def attention(query, key, value, *, score="scaled_dot", scale=None, mask=None,
              bias=None, causal=False, window=None, additive_weight=None,
              return_weights=False, return_lse=False, kv_lengths=None,
              q_lengths=None, q_segments=None, kv_segments=None,
              softcap=None, sinks=None):
    """Attention of ``query`` over ``key``/``value``, computed in float64.

    Parameters
    ----------
    query : array_like, shape (..., Lq, D)
    key : array_like, shape (..., Lk, D)
    value : array_like, shape (..., Lk, Dv)
    score : {"dot", "scaled_dot", "cosine", "additive"}, optional
        Similarity function, see :func:`scores`.
    scale : float or array_like, optional
        Multiplier of the raw score (one per leading index if an array).
    mask : array_like of bool, optional
        Broadcastable to ``(..., Lq, Lk)``; True means *attend*.
    bias : array_like, optional
        Added to the (scaled, capped) scores, broadcastable to
        ``(..., Lq, Lk)``; ``-inf`` masks the key.
    causal : bool, optional
        Causal mask aligned at each sequence's end: query ``i`` sits at key
        position ``p = i + kv_len - q_len`` and attends key ``j`` iff
        ``j <= p``, with ``kv_len`` = ``kv_lengths`` if given, else Lk, and
        ``q_len`` = ``q_lengths`` if given, else Lq (without lengths:
        bottom-right, ``p = i + Lk - Lq``).
    window : tuple (left, right), optional
        Local attention: keep keys with ``p - left <= j <= p + right``, ``p``
        as for ``causal``; either side may be None (unbounded).
    additive_weight : array_like, shape (D,), optional
        Weights of the ``"additive"`` score.
    return_weights : bool or "key_mass", optional
        True: also return the ``(..., Lq, Lk)`` weights.  ``"key_mass"``:
        return instead the ``(..., Lk)`` total weight each key received,
        summed over the queries.
    return_lse : bool, optional
        Also return the natural log-sum-exp ``(..., Lq)`` of the final
        scores (including sinks).
    kv_lengths : array_like of int, optional
        Valid key length per sequence; keys ``j >= kv_len`` are masked.  A
        1-D array applies along the first leading dimension; otherwise it has
        as many dims as the leading dims and broadcasts against them.
    q_lengths : array_like of int, optional
        Valid query length per sequence (same layout as ``kv_lengths``);
        queries ``i >= q_len`` give output 0, weights 0, lse ``-inf``.
    q_segments, kv_segments : array_like of int, optional
        Segment ids of shape ``(..., Lq)`` and ``(..., Lk)``; a query attends
        a key only when the ids are equal.  Both or neither must be given.
    softcap : float, optional
        Soft capping ``s = c * tanh(s / c)`` applied after scaling.
    sinks : array_like, optional
        Per-head logits (broadcast against the leading dims) that join the
        softmax denominator of every row without contributing a value.

    Returns
    -------
    out : numpy.ndarray, (..., Lq, Dv), float64
    weights : numpy.ndarray, only if ``return_weights``
        ``(..., Lq, Lk)``, or ``(..., Lk)`` for ``"key_mass"``.
    lse : numpy.ndarray, (..., Lq), only if ``return_lse``
    """
    # ---- inputs ---------------------------------------------------------
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; expected one of {SCORES}")
    q = _to_float64(query, "query")
    k = _to_float64(key, "key")
    v = _to_float64(value, "value")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"query and key must have the same last dimension D, "
            f"got {q.shape[-1]} and {k.shape[-1]}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"key and value must have the same length Lk, "
            f"got {k.shape[-2]} and {v.shape[-2]}")
    if (q_segments is None) != (kv_segments is None):
        raise ValueError("q_segments and kv_segments must be given together")
    k = _expand_kv_heads(q, k, "key")
    v = _expand_kv_heads(q, v, "value")

    # Broadcast the leading (batch, head, ...) dimensions of q, k and v.
    lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    q = np.broadcast_to(q, lead + q.shape[-2:])
    k = np.broadcast_to(k, lead + k.shape[-2:])
    v = np.broadcast_to(v, lead + v.shape[-2:])
    n_q, d = q.shape[-2], q.shape[-1]
    n_k = k.shape[-2]

    # ---- stage 1: similarity scores --------------------------------------
    raw = _raw_scores(q, k, score, additive_weight)            # (..., Lq, Lk)
    with np.errstate(invalid="ignore", over="ignore"):
        s = raw * _scale_array(scale, _default_scale(score, d))
        if softcap is not None:
            c = float(softcap)
            s = c * np.tanh(s / c)

    # ---- masking ----------------------------------------------------------
    # leading dims of the masked scores (a mask or bias may add some)
    n_lead = max([len(lead)] + [np.ndim(x) - 2 for x in (mask, bias) if x is not None])
    kv_len = q_len = None
    if kv_lengths is not None:
        kv_len = _per_leading(kv_lengths, n_lead, "kv_lengths")
    if q_lengths is not None:
        q_len = _per_leading(q_lengths, n_lead, "q_lengths")
    q_pos = None                         # bottom-right: Lk - Lq
    if kv_len is not None or q_len is not None:
        q_pos = ((n_k if kv_len is None else kv_len.astype(np.int64))
                 - (n_q if q_len is None else q_len.astype(np.int64)))
    s, attend = mask_scores(s, bias=bias, mask=mask, causal=causal, window=window,
                            q_pos=q_pos)
    j = np.arange(n_k)[None, :]          # key index, row vector
    if kv_len is not None:
        attend = attend & (j < kv_len[..., None, None])
    if q_segments is not None:
        q_seg = np.asarray(q_segments)
        kv_seg = np.asarray(kv_segments)
        attend = attend & (q_seg[..., :, None] == kv_seg[..., None, :])
    s = np.broadcast_to(s, attend.shape)

    # ---- stage 2: softmax over the attended keys --------------------------
    # Row maximum over the attended entries only (-inf for an empty row).
    row_max = np.max(s, axis=-1, where=attend, initial=-np.inf)   # (..., Lq)
    if sinks is not None:
        sink = np.asarray(sinks, dtype=np.float64)[..., None]     # (..., 1)
        row_max = np.maximum(row_max, sink)
    shift = np.where(np.isfinite(row_max), row_max, 0.0)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.where(attend, np.exp(s - shift[..., None]), 0.0)   # (..., Lq, Lk)
    denom = np.sum(e, axis=-1)                                    # (..., Lq)
    if sinks is not None:
        denom = denom + np.exp(sink - shift)
    has_mass = denom > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        weights = np.where(has_mass[..., None],
                           e / np.where(has_mass, denom, 1.0)[..., None], 0.0)
        weights = np.where(np.isnan(denom)[..., None], np.nan, weights)
        lse = np.where(has_mass, shift + np.log(np.where(has_mass, denom, 1.0)),
                       -np.inf)
        lse = np.where(np.isnan(denom), np.nan, lse)

    # ---- stage 3: weighted sum of the values -------------------------------
    v = np.broadcast_to(v, weights.shape[:-2] + v.shape[-2:])
    if np.all(np.isfinite(v)):
        # Masked weights are exactly 0 and 0 * finite == 0: a plain product.
        out = weights @ v
    else:
        # Only attended (query, key) pairs contribute; masked ones are skipped
        # so that NaN/inf stored in masked-out values cannot leak.
        with np.errstate(invalid="ignore", over="ignore"):
            terms = np.where(attend[..., None],
                             weights[..., :, :, None] * v[..., None, :, :], 0.0)
        out = np.sum(terms, axis=-2)

    # ---- padded queries ----------------------------------------------------
    if q_len is not None:
        valid_q = np.arange(n_q) < q_len[..., None]                # (..., Lq)
        out = np.where(valid_q[..., None], out, 0.0)
        weights = np.where(valid_q[..., None], weights, 0.0)
        lse = np.where(valid_q, lse, -np.inf)

    # ---- results -------------------------------------------------------------
    results = [np.asarray(out, dtype=np.float64)]
    if return_weights == "key_mass":
        results.append(np.sum(weights, axis=-2))
    elif return_weights:
        results.append(np.array(weights, dtype=np.float64))
    if return_lse:
        results.append(np.array(lse, dtype=np.float64))
    return results[0] if len(results) == 1 else tuple(results)


def gather_pages(cache, block_table, seq_len):
    """The first ``seq_len`` rows of one sequence from a page pool
    ``(num_pages, Hkv, page_size, C)``: ``(Hkv, seq_len, C)``.  An int8 pool
    (``cattn.QuantizedKV``) is gathered as data and scales, then
    dequantized in float64 (only the sequence's own rows: unused rows may
    hold anything)."""
    if hasattr(cache, "dequantize") and hasattr(cache, "scales"):
        data = gather_pages(cache.data, block_table, seq_len)
        scales = gather_pages(cache.scales, block_table, seq_len)
        s = np.repeat(scales.astype(np.float64), cache.block, axis=-1)[..., :data.shape[-1]]
        return data.astype(np.float64) * s
    cache = np.asarray(cache)
    ps = cache.shape[2]
    n = -(-int(seq_len) // ps)
    pages = cache[np.asarray(block_table[:n], dtype=np.int64)]       # (n, Hkv, ps, C)
    return pages.transpose(1, 0, 2, 3).reshape(cache.shape[1], n * ps, cache.shape[3])[:, :seq_len]


def paged_attention(query, key_cache, value_cache, block_table, seq_lens, query_start_loc, *,
                    scale=None, causal=False, window=None, softcap=None, sinks=None,
                    alibi_slopes=None, return_lse=False):
    """The paged form of :func:`attention`, in float64: each sequence's
    pages are gathered into contiguous keys/values, then the plain
    reference runs on them (token t of a sequence at key position
    ``t + seq_len - q_len``; ALiBi as the bias ``-slope * |p - j|``).
    Shapes as ``cattn.paged_attention``; returns out (total_tokens, H, Dv)
    and, if asked, lse (total_tokens, H)."""
    q = _to_float64(query, "query")
    T, H, D = q.shape
    Dv = value_cache.shape[3] if hasattr(value_cache, "scales") else np.asarray(value_cache).shape[3]
    out = np.zeros((T, H, Dv))
    lse = np.full((T, H), -np.inf)
    qs = np.asarray(query_start_loc, dtype=np.int64)
    bt = np.asarray(block_table)
    for s, sl in enumerate(np.asarray(seq_lens, dtype=np.int64)):
        a, b = int(qs[s]), int(qs[s + 1])
        if b == a:
            continue
        k = gather_pages(key_cache, bt[s], sl).astype(np.float64)
        v = gather_pages(value_cache, bt[s], sl).astype(np.float64)
        qq = q[a:b].transpose(1, 0, 2)                                # (H, q_len, D)
        bias = None
        if alibi_slopes is not None:
            pos = np.arange(b - a)[:, None] + int(sl) - (b - a)
            dist = np.abs(pos - np.arange(int(sl))[None, :])
            slopes = np.broadcast_to(np.asarray(alibi_slopes, dtype=np.float64), (H,))
            bias = -slopes[:, None, None] * dist
        sk = None if sinks is None else np.broadcast_to(np.asarray(sinks, np.float64), (H,))
        if sl == 0:
            o = np.zeros((H, b - a, Dv))
            l = np.full((H, b - a), -np.inf if sk is None else 0.0)
            if sk is not None:
                l = np.broadcast_to(sk[:, None], (H, b - a))
        else:
            o, l = attention(qq, k, v, scale=scale, causal=causal, window=window,
                             softcap=softcap, sinks=sk, bias=bias, return_lse=True)
        out[a:b] = o.transpose(1, 0, 2)
        lse[a:b] = l.T
    return (out, lse) if return_lse else out
