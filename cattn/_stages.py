"""The stage functions: ``scores``, ``softmax``, ``aggregate`` and ``merge``.

Whole-matrix forms of the three stages (the fused kernel never builds
them): validation through ``_validate``, GEMMs through SciPy's BLAS under
``_threads.blas_limit``, the additive scores and the softmax through the
typed kernels.
"""
import math
import numbers

import numpy as np

from . import _kernels
from ._operands import as_real_array, element_strides, lead_offsets
from ._options import check_ndim, check_num_threads, check_score, promote, result_dtypes
from ._plan import tile_blocks
from ._run import as_strided_dtype
from ._threads import blas_limit, threads_for
from ._validate import additive_weights, leading_dims, scale_per_batch

__all__ = ["scores", "softmax", "aggregate", "merge"]



def _row_norm(x):
    """Euclidean norm of each row (last axis) in float64, without overflow:
    scaled by a power of two (exact) before squaring."""
    x = np.asarray(x, np.float64)
    with np.errstate(all="ignore"):
        amax = np.max(np.abs(x), axis=-1, keepdims=True, initial=0.0)
        e = np.frexp(np.where(np.isfinite(amax) & (amax > 0), amax, 1.0))[1]
        y = np.ldexp(x, -e)
        return np.ldexp(np.sqrt(np.sum(y * y, axis=-1, keepdims=True)), e)

def _matrices(**named):
    """Validate (name=array_like) operands of shape (..., L, D): real arrays
    with at least 2 dims.  Returns them in order."""
    out = []
    for name, x in named.items():
        arr = as_real_array(x, name)
        check_ndim(arr.shape, name)
        out.append(arr)
    return out


def _batch(named, num_threads, work_per_item):
    """Compute/result dtypes, broadcast leading dims, GQA groups, number of
    batch items and the threads for a call over ``named`` operands."""
    cdt, rdt = result_dtypes(*(x for _, x in named))
    out_lead, groups = leading_dims(named)
    N = math.prod(out_lead)
    return (cdt, rdt, out_lead, groups, N,
            threads_for(check_num_threads(num_threads), N * work_per_item))


def _check_same(n1, n2, what, name1, x1, name2, x2):
    if n1 != n2:
        raise ValueError(f"{what}: {name1} {x1.shape}, {name2} {x2.shape}")


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
    # SciPy's BLAS is looked up at the first GEMM: loaded before blas_limit
    # first lists the BLAS libraries it caps
    _kernels.load_blas()
    if n_threads > 1 and N > 1:
        with blas_limit(1):
            _kernels.gemm_batched(Af, A_off, lda, Bf, B_off, ldb, Cf, m * n, ldc,
                                  trans_a, m, n, kdim, alpha, n_threads)
    else:
        with blas_limit(n_threads):
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
    score = check_score(score)
    q, k = _matrices(query=query, key=key)
    (Lq, D), (Lk, Dk) = q.shape[-2:], k.shape[-2:]
    _check_same(D, Dk, "query and key must share the feature dim D", "query", q, "key", k)
    cdt, rdt, out_lead, groups, N, n_threads = _batch(
        [("query", q), ("key", k)], num_threads, Lq * max(Lk, 1) * max(D, 1))
    scale_b = scale_per_batch(scale, score, D, out_lead)
    add_w = additive_weights(additive_weight, score, D, cdt)

    if score == "additive":
        res = _additive_scores(q, k, cdt, out_lead, groups, scale_b, add_w, n_threads)
    else:
        q = np.ascontiguousarray(q, dtype=cdt)
        k = np.ascontiguousarray(k, dtype=cdt)
        if score == "cosine":
            # the norm in float64, power-of-two scaled (np.linalg.norm
            # overflowed at |q| >= 2e19 in float32: every cosine 0)
            with np.errstate(invalid="ignore"):
                q = (q / np.maximum(_row_norm(q), 1e-8)).astype(cdt)
                k = (k / np.maximum(_row_norm(k), 1e-8)).astype(cdt)
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
    q = as_strided_dtype(q, cdt)
    k = as_strided_dtype(k, cdt)
    if k.shape[-1] > 1 and k.strides[-1] != k.dtype.itemsize:
        k = np.ascontiguousarray(k)
    res = np.zeros((N, Lq, Lk), dtype=cdt)
    if N == 0 or Lq == 0 or Lk == 0:
        return res
    bq, bk = tile_blocks(N, Lq, n_threads)
    q_rs, q_cs = element_strides(q)[-2:]
    k_op = _kernels.Operand(k, lead_offsets(k, 2, out_lead, *groups.get("key", (None, 1))),
                            element_strides(k)[-2])
    args = _kernels.KernelArgs(
        n_batch=N, Lq=Lq, Lk=Lk, D=D, Dv=0, block_q=bq, block_k=bk,
        score_kind=_kernels.SCORE_KINDS["additive"], scale=scale_b, add_w=add_w,
        q=_kernels.Operand(q, lead_offsets(q, 2, out_lead), q_rs, q_cs),
        k=k_op, v=_kernels.Operand(k, np.zeros(N, np.int64), 0), weights=res)
    _kernels.flash(args, _kernels.MODE_SCORES, n_threads)
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
    check_ndim(arr.shape, "x", least=1)
    if not -arr.ndim <= axis < arr.ndim:
        raise ValueError(f"axis {axis} is out of bounds for x with {arr.ndim} dims")
    cdt, rdt = result_dtypes(arr)
    moved = np.moveaxis(arr, axis, -1)
    work = np.array(moved, dtype=cdt, order="C", copy=True)
    C = work.shape[-1]
    rows = work.reshape(-1, C) if work.size else work.reshape(-1, max(C, 1))[:0]
    n_threads = threads_for(check_num_threads(num_threads), work.size * 16)
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
    dt = promote(*outputs, *lses)
    L = np.stack([s.astype(dt, copy=False) for s in lses])
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
