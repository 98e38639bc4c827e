"""The public entry points: ``cattn.attention`` as validate -> plan -> run.

The layers (see the package docstring for the whole picture):

* ``_validate``: arguments -> ``AttentionCall`` (typed, immutable);
* ``_plan``: ``AttentionCall`` -> ``Plan`` (dtype, path, blocks, threads);
* ``_run``: ``Plan`` -> the typed kernel contract -> results.

A plain call (``_kernels.attention_plain``: contiguous float32/float64
arrays -- or bfloat16 ones with a dot-product score --, at most causal,
return_lse and out= as options) skips all three:
its checks are a predicate on exact types and shapes, and any other call
goes the long way, which raises the errors.
"""
from . import _kernels
from ._plan import TILES, plan_attention
from ._run import run_attention
from ._stages import aggregate, merge, scores, softmax
from ._threads import SERIAL_WORK, get_num_threads, set_num_threads
from ._validate import validate_attention

__all__ = ["attention", "scores", "softmax", "aggregate", "merge",
           "get_num_threads", "set_num_threads"]


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
        Query i sees key j iff ``j <= p``, where ``p = i + kv_len - q_len``
        is the query's key position: the diagonal sits at each sequence's
        own end (``kv_len`` = ``kv_lengths`` if given, else Lk; ``q_len`` =
        ``q_lengths`` if given, else Lq).  Without lengths this is the
        bottom-right alignment ``p = i + Lk - Lq``.  A decode step over a
        preallocated cache passes ``kv_lengths`` alone (its queries are the
        last Lq positions of each sequence); a padded self-attention batch
        passes both ``q_lengths`` and ``kv_lengths``.
    window : (left, right), optional
        Keep keys with ``p - left <= j <= p + right``, ``p`` as for
        ``causal``; None on a side is unbounded.
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
        get output 0.  They also place the causal diagonal and the window
        (see ``causal``).  Causal/window with ``kv_lengths`` alone on
        Lq == Lk > 1 and some 0 < kv_len < Lk raises ValueError: that is a
        padded self-attention batch missing its ``q_lengths``.
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
    if (mask is None and bias is None and window is None and additive_weight is None
            and return_weights is False and kv_lengths is None and q_lengths is None
            and q_segments is None and kv_segments is None and softcap is None
            and sinks is None):
        res = _kernels.attention_plain(query, key, value, score, scale, causal, return_lse,
                                       num_threads, out, TILES, SERIAL_WORK)
        if res is not None:
            return res
    call = validate_attention(
        query, key, value, score=score, scale=scale, mask=mask, bias=bias, causal=causal,
        window=window, additive_weight=additive_weight, return_weights=return_weights,
        return_lse=return_lse, num_threads=num_threads, out=out, kv_lengths=kv_lengths,
        q_lengths=q_lengths, q_segments=q_segments, kv_segments=kv_segments,
        softcap=softcap, sinks=sinks, keep_bf16_q=True)
    return run_attention(call, plan_attention(call))


def _attention_at(query, key, value, q_pos, *, score="scaled_dot", scale=None, mask=None,
                  bias=None, causal=False, window=None, additive_weight=None,
                  return_weights=False, return_lse=False, num_threads=None,
                  kv_lengths=None, q_lengths=None, q_segments=None, kv_segments=None,
                  softcap=None, sinks=None):
    """``attention`` with query 0 of each item at key position ``q_pos``
    (broadcast against the leading dims) instead of ``kv_len - q_len``:
    for callers that run one (query chunk, key chunk) piece of a larger
    call (``cattn.dask``) and keep the whole call's alignment."""
    call = validate_attention(
        query, key, value, score=score, scale=scale, mask=mask, bias=bias, causal=causal,
        window=window, additive_weight=additive_weight, return_weights=return_weights,
        return_lse=return_lse, num_threads=num_threads, out=None, kv_lengths=kv_lengths,
        q_lengths=q_lengths, q_segments=q_segments, kv_segments=kv_segments,
        softcap=softcap, sinks=sinks, q_pos=q_pos, keep_bf16_q=True)
    return run_attention(call, plan_attention(call))
