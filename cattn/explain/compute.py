"""The three stages of attention for a small example, with cattn's kernels.

:func:`prepare` checks and shapes the inputs, :func:`split_options` sorts
the keyword options, :func:`compute` runs stage 1 (:func:`cattn.scores`),
the masking (:func:`cattn.reference.mask_scores`, the oracle's own), stage 2
(:func:`cattn.softmax`) and stage 3 (:func:`cattn.aggregate`), and compares
the result with the fused :func:`cattn.attention`.
"""

import numpy as np

from .._options import SCORES
from ..reference import mask_scores

__all__ = ["SCORES", "KERNEL_OPTIONS", "MASK_OPTIONS", "prepare", "split_options",
           "apply_masking", "compute", "share", "argmax_index", "argmax_label",
           "make_labels", "is_masked"]

#: the similarity functions :func:`cattn.explain.explain` knows how to describe

#: options forwarded to the kernels
KERNEL_OPTIONS = ("scale", "additive_weight", "num_threads")
#: options applied to the scores between stage 1 and stage 2
MASK_OPTIONS = ("mask", "bias", "causal", "window")


def _as_float(x, name):
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    dtype = np.float32 if arr.dtype == np.float32 else np.float64
    return np.ascontiguousarray(arr, dtype=dtype)


def make_labels(given, n, prefix, name):
    """``given`` as a list of ``n`` strings, or ``prefix1, prefix2, ...``."""
    if given is None:
        return [f"{prefix}{i + 1}" for i in range(n)]
    out = [str(x) for x in given]
    if len(out) != n:
        raise ValueError(f"{name} has {len(out)} entries but there are {n}")
    return out


def prepare(query, keys, values, labels, value_labels, query_labels):
    """Check the inputs; return 2-D arrays, shape flags and the labels."""
    q = _as_float(query, "query")
    k = _as_float(keys, "keys")
    v = _as_float(values, "values")
    if q.ndim not in (1, 2):
        raise ValueError(f"query must be 1-D (D,) or 2-D (Lq, D), got shape {q.shape}")
    if k.ndim != 2:
        raise ValueError(f"keys must be 2-D (Lk, D), got shape {k.shape}")
    if v.ndim not in (1, 2):
        raise ValueError(f"values must be 1-D (Lk,) or 2-D (Lk, Dv), got shape {v.shape}")
    single = q.ndim == 1
    q2 = q[None, :] if single else q
    scalar_values = v.ndim == 1
    v2 = v[:, None] if scalar_values else v
    if q2.shape[1] != k.shape[1]:
        raise ValueError(f"query and keys must have the same feature size D, "
                         f"got {q2.shape[1]} and {k.shape[1]}")
    if v2.shape[0] != k.shape[0]:
        raise ValueError(f"keys and values must have the same number of rows, "
                         f"got {k.shape[0]} and {v2.shape[0]}")
    if k.shape[0] == 0:
        raise ValueError("explain needs at least one key")
    # one common floating dtype: float32 only if everything is float32
    dtype = np.float32 if q2.dtype == k.dtype == v2.dtype == np.float32 else np.float64
    q2, k, v2 = (a.astype(dtype, copy=False) for a in (q2, k, v2))
    labels = make_labels(labels, k.shape[0], "k", "labels")
    vlabels = None if value_labels is None else make_labels(
        value_labels, v2.shape[1], "d", "value_labels")
    qlabels = make_labels(query_labels, q2.shape[0], "q", "query_labels")
    return q2, k, v2, single, scalar_values, labels, vlabels, qlabels


def split_options(kwargs):
    """``(kernel options, masking options)`` of explain's ``**kwargs``."""
    unknown = sorted(set(kwargs) - set(KERNEL_OPTIONS) - set(MASK_OPTIONS))
    if unknown:
        raise TypeError(f"explain() got unexpected keyword argument(s) {unknown}; "
                        f"supported: {list(KERNEL_OPTIONS + MASK_OPTIONS)}")
    kernel = {k: v for k, v in kwargs.items() if k in KERNEL_OPTIONS and v is not None}
    masking = {k: v for k, v in kwargs.items()
               if k in MASK_OPTIONS and v is not None and v is not False}
    if "mask" in masking and np.asarray(masking["mask"]).dtype != np.bool_:
        raise TypeError("mask must be a bool array (True = attend)")
    return kernel, masking


def apply_masking(s, masking):
    """Scores that the softmax sees: bias added, masked keys set to -inf.

    The bias and the masks are applied by :func:`cattn.reference.mask_scores`,
    the step :func:`cattn.reference.attention` uses.
    """
    if not masking:
        return s
    s_biased, attend = mask_scores(s, **masking)
    with np.errstate(invalid="ignore", over="ignore"):
        s_biased = np.asarray(s_biased).astype(s.dtype)
    out = np.where(attend, s_biased, np.asarray(-np.inf, dtype=s.dtype))
    return np.array(np.broadcast_to(out, s.shape), dtype=s.dtype)


def is_masked(masked_scores):
    """True where the softmax saw ``-inf``: the key is masked for that query."""
    return np.isneginf(masked_scores)


def compute(q2, k, v2, score, kernel, masking, check):
    """Run the three stages with cattn's kernels and compare with the fused one.

    Returns ``(scores, masked scores, weights, output, max |difference|)``,
    all 2-D (one row per query); the difference is None when ``check`` is
    False.
    """
    import cattn  # at call time: avoids a circular import with cattn/__init__

    nt = {"num_threads": kernel["num_threads"]} if "num_threads" in kernel else {}
    if score != "additive":  # the additive weights only mean something there
        kernel = {key: val for key, val in kernel.items() if key != "additive_weight"}
    sc_opts = {key: kernel[key] for key in ("scale", "additive_weight") if key in kernel}
    s = np.asarray(cattn.scores(q2, k, score=score, **sc_opts, **nt))
    s_used = apply_masking(s, masking)
    a = np.asarray(cattn.softmax(s_used, axis=-1, **nt))
    o = _aggregate_attended(cattn, a, v2, is_masked(s_used), nt)
    diff = None
    if check:
        fused = np.asarray(cattn.attention(q2, k, v2, score=score, **kernel, **masking))
        if fused.shape != o.shape:
            raise RuntimeError(f"cattn.attention returned shape {fused.shape}, "
                               f"the three stages gave {o.shape}")
        with np.errstate(invalid="ignore"):       # inf - inf where both are inf
            gap = np.abs(fused.astype(np.float64) - o)
            gap[(fused == o) | (np.isnan(fused) & np.isnan(o))] = 0.0
        diff = float(np.max(gap)) if o.size else 0.0
        finite_v = np.abs(v2[np.isfinite(v2)])
        magnitude = max(1.0, float(np.max(finite_v)) if finite_v.size else 1.0)
        if o.dtype == np.float32 or fused.dtype == np.float32:
            ok = np.allclose(o, fused, rtol=1e-3, atol=1e-5 * magnitude, equal_nan=True)
        else:
            ok = np.allclose(o, fused, rtol=1e-7, atol=1e-10 * magnitude, equal_nan=True)
        if not ok:
            raise RuntimeError(
                "the three stages (cattn.scores -> cattn.softmax -> cattn.aggregate) "
                f"and the fused cattn.attention disagree: max |difference| = {diff:.3g}")
    return s, s_used, a, o, diff


def _aggregate_attended(cattn, a, v2, masked, nt):
    """Stage 3 over the attended keys only.

    A masked-out key has weight 0, but 0 * NaN and 0 * inf are NaN: a
    masked-out value holding NaN or inf would poison the whole row of
    ``weights @ values``, whereas attention never reads what is masked out
    (the fused kernel skips it).  Rows that mask out a non-finite value
    are therefore aggregated over their attended keys alone.
    """
    o = np.asarray(cattn.aggregate(a, v2, **nt))
    bad_keys = ~np.all(np.isfinite(v2), axis=1)
    if not np.any(bad_keys):
        return o
    o = np.array(o)
    for i in np.flatnonzero(np.any(masked & bad_keys[None, :], axis=1)):
        keep = ~masked[i]
        if np.any(keep):
            o[i] = np.asarray(cattn.aggregate(a[i:i + 1, keep], v2[keep], **nt))[0]
        else:
            o[i] = 0
    return o


def share(weights_row, values2):
    """L1 share of each term a_i * v_i in V'."""
    # a masked-out key (weight 0) contributes 0 even where its value is NaN/inf
    attended = weights_row[:, None] != 0
    with np.errstate(invalid="ignore", over="ignore"):
        contrib = np.where(attended, np.abs(weights_row[:, None] * values2), 0).sum(axis=1)
    total = contrib.sum()
    if not np.isfinite(total) or total <= 0:
        return np.zeros_like(contrib)
    return contrib / total


def argmax_index(weights_row):
    """Index of the largest weight, None when no key has a positive weight."""
    if weights_row.size == 0 or not np.any(weights_row > 0):
        return None
    return int(np.nanargmax(weights_row))


def argmax_label(weights_row, labels):
    """Label of the largest weight (None when every key is masked)."""
    j = argmax_index(weights_row)
    return None if j is None else labels[j]
