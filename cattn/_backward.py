"""The backward pass of attention: ``attention_backward``.

Layers as for the forward: the call is validated by ``_validate`` (the
same keywords as ``attention``) plus the backward's own operands here;
``_plan`` supplies the compute dtype (its float32 range policy) and the
thread count; the kernels (``_kernels.flash_backward``, C in
``_src/flash_bwd_impl.h``) recompute the weights tile by tile from Q, K
and the forward's log-sum-exp, so nothing of size Lq x Lk is kept between
forward and backward.

What runs where:

* dot / scaled_dot: all in the C kernel (dQ, dK, dV, dS for a bias).
* cosine: the C kernel on the normalised q and k, then the normalisation's
  Jacobian here (O(L D)).
* additive: the C kernel gives dV and dS (an (N, Lq, Lk) buffer); the
  tanh Jacobian for dQ, dK and the weights is NumPy here, in chunks of
  queries -- a slower path with O(Lq Lk) memory.
* scale, sinks: their gradients are reductions of what the kernel returns
  (``sum_i q_i . dQ_i / scale``-free form, ``-sum_i P_sink_i delta_i``).
* bias: dS (an (N, Lq, Lk) buffer, only when a bias is given), summed
  down to the bias's shape.
"""
import math
from typing import NamedTuple, Optional

import numpy as np

from . import _kernels
from ._operands import lead_offsets
from ._plan import _range_policy, kernel_window
from ._run import _in, _matrix, _pair, _sequence, _unit_last, as_strided_dtype
from ._threads import threads_for
from ._validate import validate_attention

__all__ = ["Gradients", "attention_backward"]

# Query rows per block and key rows per key block of the backward.
BWD_BLOCK_Q = 64
BWD_BLOCK_K = 64
# dQ: per-thread partials (one Lq x D buffer per extra thread, merged once)
# up to this many bytes of partials, a second pass over query blocks above.
DQ_PARTIAL_BYTES = 8 << 20   # measured at (1,16,1024,1024,64) float32: partials 387 ms, dQ pass 580 ms (1 thread); 672 vs 810 ms (2 threads)
_COSINE_EPS = 1e-8


class Gradients(NamedTuple):
    """Gradients of ``attention``'s output; None where an input is absent
    (or given as a plain number rather than an array)."""
    dq: np.ndarray
    dk: np.ndarray
    dv: np.ndarray
    dbias: Optional[np.ndarray]
    dscale: Optional[np.ndarray]
    dsinks: Optional[np.ndarray]
    dadditive_weight: Optional[np.ndarray]


def diagonal_shift(call):
    """Per batch item, the key position of query 0 for causal and window
    masks (query i sits at i + shift), as the forward aligns them: at each
    sequence's own end, kv_len - q_len, when lengths are given (or the
    caller's q_pos); None (the kernels use Lk - Lq) without lengths."""
    if call.q_pos is not None:
        return np.ascontiguousarray(call.q_pos, dtype=np.int64)
    if call.kv_len is None and call.q_len is None:
        return None
    kv = call.kv_len if call.kv_len is not None else call.Lk
    q = call.q_len if call.q_len is not None else call.Lq
    return np.ascontiguousarray(np.broadcast_to(np.asarray(kv - q, dtype=np.int64), (call.N,)))


def _is_array(x):
    return x is not None and (isinstance(x, np.ndarray) or np.ndim(x) > 0
                              or hasattr(x, "__dlpack__"))


def _unbroadcast(g, shape):
    """Sum ``g`` down to ``shape`` (NumPy broadcasting run backwards)."""
    shape = tuple(shape)
    extra = g.ndim - len(shape)
    if extra > 0:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, (n, m) in enumerate(zip(shape, g.shape)) if n == 1 and m != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def _operand_array(x, name, shape, dtype):
    from ._operands import as_real_array
    a = as_real_array(x, name)
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (as attention returned "
                         f"it); got {a.shape}")
    return a.astype(dtype, copy=False)


def _kv_groups(call):
    """Items sharing a K/V pair: (group_start, group_items, key index per
    group, value index per group), indices into the flattened leading dims
    of key/value."""
    lead = call.out_lead

    def index(x, name):
        nlead = x.ndim - 2
        ix = np.arange(math.prod(x.shape[:nlead]), dtype=np.int64).reshape(
            x.shape[:nlead] + (1, 1))
        return lead_offsets(ix, 2, lead, *call.groups.get(name, (None, 1)))

    ki, vi = index(call.k, "key"), index(call.v, "value")
    nv = max(int(vi.max(initial=0)) + 1, 1)
    pair_id = ki * nv + vi
    uniq, inverse = np.unique(pair_id, return_inverse=True)
    order = np.argsort(inverse, kind="stable").astype(np.int64)
    counts = np.bincount(inverse, minlength=len(uniq))
    start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return start, order, uniq // nv, uniq % nv, inverse


def _scatter_groups(g_arr, rep, shape):
    """Per-group gradients (G, L, C) summed into an array of ``shape``
    (``g_arr`` itself when every item has its own K/V in order: no copy)."""
    if len(rep) == math.prod(shape[:-2]) and np.array_equal(rep, np.arange(len(rep))):
        return g_arr.reshape(shape)
    flat = np.zeros((math.prod(shape[:-2]),) + tuple(shape[-2:]), dtype=g_arr.dtype)
    if len(np.unique(rep)) == len(rep):
        flat[rep] = g_arr
    else:
        np.add.at(flat, rep, g_arr)
    return flat.reshape(shape)


def _items(x, call, name, L, C, dt):
    """(N, L, C) per-item copy of a q/k/v-like operand (slow paths only)."""
    x = np.asarray(x, dtype=dt)
    grp = call.groups.get(name)
    if grp is not None:
        x = np.repeat(x, grp[1], axis=-3)
    return np.broadcast_to(x, call.out_lead + (L, C)).reshape(call.N, L, C)


def _normalise(x):
    n = np.sqrt(np.einsum("...d,...d->...", x, x, dtype=np.float64))[..., None]
    n = np.maximum(n, _COSINE_EPS).astype(x.dtype)
    with np.errstate(invalid="ignore"):
        return x / n, n


def _cosine_jacobian(g, unit, norm):
    """Gradient through x -> x / max(|x|, eps) (x = unit * norm)."""
    with np.errstate(invalid="ignore"):
        radial = np.einsum("...d,...d->...", g, unit)[..., None]
        big = norm > _COSINE_EPS
        return np.where(big, (g - unit * radial), g) / norm


def _additive_grads(call, qc, kc, ds, scale, w, dt, groups_of_item, G):
    """dQ, dK (per group), d(additive_weight), d(scale) per item of the
    additive score from dS (w.r.t. scale * raw) -- NumPy, by query chunks."""
    N, Lq, Lk, D = call.N, call.Lq, call.Lk, call.D
    qi = _items(qc, call, "query", Lq, D, dt)
    ki = _items(kc, call, "key", Lk, D, dt)
    dq = np.zeros((N, Lq, D), dt)
    dk = np.zeros((G, Lk, D), dt)
    dw = np.zeros(D, np.float64)
    dscale = np.zeros(N, np.float64)
    chunk = max(1, (4 << 20) // max(Lk * D, 1))
    for b in range(N):
        g = groups_of_item[b]
        for i0 in range(0, Lq, chunk):
            d = ds[b, i0:i0 + chunk]                          # (c, Lk)
            if not np.any(d):
                continue
            with np.errstate(invalid="ignore", over="ignore"):
                t = np.tanh(qi[b, i0:i0 + chunk, None, :] + ki[b, None, :, :])
                live = (d != 0)[..., None]
                dt_ = np.where(live, d[..., None] * (w * (1 - t * t)), 0)
                dq[b, i0:i0 + chunk] += scale[b] * dt_.sum(axis=1)
                dk[g] += scale[b] * dt_.sum(axis=0)
                dtw = np.where(live, d[..., None] * t, 0).sum(axis=(0, 1))
            dw += scale[b] * dtw
            dscale[b] += float(dtw @ w)
    return dq, dk, dw, dscale


def attention_backward(dout, query, key, value, out, lse, *, score="scaled_dot", scale=None,
                       mask=None, bias=None, causal=False, window=None, additive_weight=None,
                       num_threads=None, kv_lengths=None, q_lengths=None, q_segments=None,
                       kv_segments=None, softcap=None, sinks=None, return_weights=False,
                       return_lse=False):
    """Gradients of ``attention(query, key, value, **options)`` given the
    gradient ``dout`` of its output.

    Parameters
    ----------
    dout : array_like, shape (..., Lq, Dv)
        Gradient of the loss with respect to the output.
    query, key, value :
        As passed to :func:`cattn.attention`.
    out, lse : array_like
        What ``attention(..., return_lse=True)`` returned for these inputs.
    score, scale, mask, bias, causal, window, additive_weight, num_threads,
    kv_lengths, q_lengths, q_segments, kv_segments, softcap, sinks :
        The forward call's options (``return_weights``/``return_lse`` are
        accepted and ignored, so the forward's keywords can be passed
        unchanged).

    Returns
    -------
    Gradients
        ``(dq, dk, dv, dbias, dscale, dsinks, dadditive_weight)``, each in
        the shape and dtype of its input (a broadcast input gets its
        gradient summed over the broadcast dims; GQA key/value heads over
        the query heads that share them).  ``dbias``, ``dscale``,
        ``dsinks`` and ``dadditive_weight`` are None when that option is
        absent or a plain number.  Masked pairs, padded queries and rows
        with no key get zero gradient; NaN/inf in masked-out keys, values
        or queries never reaches a gradient.
    """
    call = validate_attention(
        query, key, value, score=score, scale=scale, mask=mask, bias=bias, causal=causal,
        window=window, additive_weight=additive_weight, return_weights=False,
        return_lse=True, num_threads=num_threads, out=None, kv_lengths=kv_lengths,
        q_lengths=q_lengths, q_segments=q_segments, kv_segments=kv_segments,
        softcap=softcap, sinks=sinks)
    cdt, scale_b, softcap_k, sinks_b = _range_policy(call)
    N, Lq, Lk, D, Dv, lead = call.N, call.Lq, call.Lk, call.D, call.Dv, call.out_lead
    o_shape = lead + (Lq, Dv)
    dO = _operand_array(dout, "dout", o_shape, cdt)
    O = _operand_array(out, "out", o_shape, cdt)
    L = _operand_array(lse, "lse", lead + (Lq,), cdt)
    sc = call.options.score

    # the kernels' operands in the compute dtype
    q = np.asarray(call.q, dtype=cdt)
    k = np.asarray(call.k, dtype=cdt)
    if sc == "cosine":
        q, q_norm = _normalise(q)
        k, k_norm = _normalise(k)
    qa = as_strided_dtype(q, cdt)
    ka = _unit_last(k, cdt)
    va = _unit_last(call.v, cdt)
    delta = np.ascontiguousarray(
        np.einsum("...d,...d->...", dO, O).reshape(N, Lq), dtype=cdt)
    lse_c = np.ascontiguousarray(L.reshape(N, Lq), dtype=cdt)
    start, items, rep_k, rep_v, inverse = _kv_groups(call)
    G = len(rep_k)
    dk_g = np.empty((G, Lk, D), cdt)
    dv_g = np.empty((G, Lk, Dv), cdt)
    want_dbias = call.bias is not None and _is_array(bias)
    dbias_buf = np.zeros((N, Lq, Lk), cdt) if want_dbias else None
    dscore_buf = np.zeros((N, Lq, Lk), cdt) if sc == "additive" else None

    mask_o = bias_o = qseg_o = kvseg_o = None
    if call.mask is not None:
        mask_o = _pair(as_strided_dtype(call.mask, call.mask.dtype), lead, Lq, Lk)
    if call.bias is not None:
        bias_o = _pair(as_strided_dtype(call.bias, cdt), lead, Lq, Lk)
    if call.q_seg is not None:
        qseg_o = _sequence(as_strided_dtype(call.q_seg, np.int64), lead, Lq)
        kvseg_o = _sequence(as_strided_dtype(call.kv_seg, np.int64), lead, Lk)
    window = kernel_window(call.options.window)
    args = _kernels.KernelArgs(
        n_batch=N, Lq=Lq, Lk=Lk, D=D, Dv=Dv, block_q=BWD_BLOCK_Q, block_k=BWD_BLOCK_K,
        score_kind=_kernels.SCORE_KINDS["dot" if sc == "cosine" else sc], scale=scale_b,
        q=_matrix(qa, lead), k=_matrix(ka, lead, call.groups.get("key", (None, 1))),
        v=_matrix(va, lead, call.groups.get("value", (None, 1))),
        mask=mask_o, bias=bias_o, q_seg=qseg_o, kv_seg=kvseg_o, lse=lse_c,
        add_w=_in(call.add_w, cdt), kv_len=call.kv_len, q_len=call.q_len, sinks=sinks_b,
        softcap=softcap_k, win_left=window[0], win_right=window[1])
    dout_o = _matrix(as_strided_dtype(dO, cdt), lead)
    n_threads = threads_for(call.options.num_threads, 2 * N * Lq * max(Lk, 1) * max(D, 1))
    part_bytes = (n_threads - 1) * N * Lq * D * np.dtype(cdt).itemsize
    if N and Lq and Lk:
        dqu = _kernels.flash_backward(
            args, dout_o, delta, dk_g, dv_g, start, items, n_threads,
            part_bytes > DQ_PARTIAL_BYTES, dbias=dbias_buf, dscore=dscore_buf,
            shift=diagonal_shift(call))
    else:
        dqu = np.zeros((N, Lq, D), cdt)
        dk_g.fill(0)
        dv_g.fill(0)

    dw = dscale_items = None
    if sc == "additive":
        dqu, dk_g, dw, dscale_items = _additive_grads(
            call, q, k, dscore_buf, scale_b, call.add_w.astype(np.float64), cdt,
            inverse, G)
        dq_items = dqu
    else:
        if _is_array(scale):
            dscale_items = _dscale_items(q, dqu, lead, N, Lq, D)
        # in place: dqu is this call's own buffer (a copy would be one more
        # (N, Lq, D) array at the backward's peak)
        dqu *= scale_b.astype(cdt)[:, None, None]
        dq_items = dqu

    # back to the inputs' shapes and dtypes
    dq = _unbroadcast(dq_items.reshape(lead + (Lq, D)), q.shape)
    dk = _scatter_groups(dk_g, rep_k, call.k.shape)
    dv = _scatter_groups(dv_g, rep_v, call.v.shape)
    if sc == "cosine":
        dq = _cosine_jacobian(dq, q, q_norm)
        dk = _cosine_jacobian(dk, k, k_norm)
    res_dt = lambda x: np.asarray(x).dtype if np.asarray(x).dtype.kind == "f" else np.float64
    dq = dq.astype(call.q.dtype, copy=False)
    dk = dk.astype(call.k.dtype, copy=False)
    dv = dv.astype(call.v.dtype, copy=False)
    dbias = None
    if want_dbias:
        g = dbias_buf.reshape(lead + (Lq, Lk))
        dbias = _unbroadcast(g, np.shape(bias)).astype(res_dt(bias), copy=False)
    dscale = None
    if _is_array(scale):
        dscale = _per_item_grad(dscale_items, lead, np.shape(scale), res_dt(scale))
    dsinks = None
    if _is_array(sinks):
        with np.errstate(invalid="ignore", over="ignore"):
            live = np.isfinite(lse_c) | np.isnan(lse_c)
            psink = np.where(live, np.exp(sinks_b[:, None] - lse_c.astype(np.float64)), 0)
            ds_items = -np.sum(np.where(live, psink * delta, 0), axis=1)
        dsinks = _per_item_grad(ds_items, lead, np.shape(sinks), res_dt(sinks))
    dadd = None
    if sc == "additive" and _is_array(additive_weight):
        dadd = dw.astype(res_dt(additive_weight))
    return Gradients(dq, dk, dv, dbias, dscale, dsinks, dadd)


def _dscale_items(q, dqu, lead, N, Lq, D):
    """Per item, sum_i q_i . dQ_i (dQ before its scale): the scale's gradient."""
    qi = np.broadcast_to(q, lead + (Lq, D)).reshape(N, Lq, D)
    with np.errstate(invalid="ignore", over="ignore"):
        # a query row that attended nothing has dQ = 0: its q (maybe NaN) stays out
        live = (dqu != 0).any(axis=-1)[..., None]
        return np.einsum("bid,bid->b", np.where(live, qi, 0), dqu, dtype=np.float64)


def _per_item_grad(g_items, lead, shape, dtype):
    """A per-item gradient (N,) summed down to a per-leading-dims parameter
    of ``shape`` (which may end in (1, 1), as scale and sinks allow)."""
    shape = tuple(shape)
    core = shape
    if len(shape) > len(lead) and shape[-2:] == (1, 1):
        core = shape[:-2]
    g = _unbroadcast(np.asarray(g_items, np.float64).reshape(lead), core)
    return g.reshape(shape).astype(dtype)
