"""The helpers the cattn tests share: the oracle comparison and its tolerance.

Every test compares the compiled :mod:`cattn` API with :mod:`cattn.reference`,
the float64 oracle.  Tolerance rule (see :func:`tolerance`):

* float64 results: about 1e-10 relative to the magnitude of the result;
* float32 (and float16-in, float32-compute) results: the error against the
  float64 oracle may be at most twice the error of a *naive float32 NumPy
  baseline* (scores -> softmax -> @V, all in float32, see
  :func:`naive_attention`) plus a tiny absolute floor.

Also random inputs (:func:`randn`, :func:`make_qkv`), the dtype and score
lists the tests parametrize over, and :func:`call_or_skip`.  Test modules
import them with ``from _oracle import ...``: pytest puts the directory of
each test module (tests/, which has no ``__init__.py``) on ``sys.path``,
both in the repository and where tests/ is copied on its own (the wheel
builds' test step, see pyproject.toml).
"""

import numpy as np
import pytest

import cattn.reference as ref

EPS32 = float(np.finfo(np.float32).eps)
EPS16 = float(np.finfo(np.float16).eps)

FLOAT_DTYPES = [np.float32, np.float64]
SCORES = ["dot", "scaled_dot", "cosine", "additive"]


# ---------------------------------------------------------------------------
# random inputs
# ---------------------------------------------------------------------------

def randn(rng, shape, dtype=np.float64):
    """Standard-normal array of the given shape and dtype."""
    return rng.standard_normal(shape).astype(dtype)


def make_qkv(rng, lead, lq, lk, d, dv, dtype=np.float64, kv_lead=None):
    """Random (query, key, value) with leading dims ``lead`` (``kv_lead`` for K/V)."""
    lead = tuple(lead)
    kv_lead = lead if kv_lead is None else tuple(kv_lead)
    q = randn(rng, lead + (lq, d), dtype)
    k = randn(rng, kv_lead + (lk, d), dtype)
    v = randn(rng, kv_lead + (lk, dv), dtype)
    return q, k, v


# ---------------------------------------------------------------------------
# the naive float32 baseline
# ---------------------------------------------------------------------------

def _expand_heads(qlike, kv):
    if qlike.ndim >= 3 and kv.ndim >= 3:
        hq, hkv = qlike.shape[-3], kv.shape[-3]
        if hkv not in (0, 1, hq) and hq % hkv == 0:
            return np.repeat(kv, hq // hkv, axis=-3)
    return kv


def _per_leading(arr, n_lead):
    arr = np.asarray(arr)
    if arr.ndim == 1 and n_lead >= 1:
        arr = arr.reshape(arr.shape + (1,) * (n_lead - 1))
    return arr


def naive_attention(query, key, value, dtype=np.float32, *, score="scaled_dot",
                    scale=None, mask=None, bias=None, causal=False, window=None,
                    additive_weight=None, kv_lengths=None, q_lengths=None,
                    q_segments=None, kv_segments=None, softcap=None, sinks=None,
                    variant=0, **_ignored):
    """Naive attention computed entirely in ``dtype`` (the float32 baseline).

    Parameters
    ----------
    variant : {0, 1, 2}
        Rounding order of the (equally naive) baseline: 0 computes
        ``(q @ k.T) * scale``; 1 pre-scales the query, ``(q * scale) @ k.T``;
        2 sums the feature axis in reverse order.  :func:`check_attention`
        takes the worst of the three as "the baseline error", which is a far
        more stable estimate than a single (possibly lucky) rounding order.

    Returns
    -------
    (out, weights, lse) as float64 arrays holding the ``dtype`` results.
    """
    dt = np.dtype(dtype)
    q = np.asarray(query).astype(dt)
    k = _expand_heads(q, np.asarray(key).astype(dt))
    if variant == 2:
        q, k = q[..., ::-1], k[..., ::-1]
        if additive_weight is not None:
            additive_weight = np.asarray(additive_weight)[::-1]
    v = _expand_heads(q, np.asarray(value).astype(dt))
    lq, d = q.shape[-2], q.shape[-1]
    lk = k.shape[-2]
    with np.errstate(all="ignore"):
        if scale is None:
            sc = dt.type(1.0 / np.sqrt(d)) if (score == "scaled_dot" and d > 0) else dt.type(1.0)
        else:
            sc = np.asarray(scale).astype(dt)
            if sc.ndim:
                sc = sc[..., None, None]
        if score in ("dot", "scaled_dot") and variant == 1:
            raw = (q * sc) @ np.swapaxes(k, -1, -2)
            sc = dt.type(1.0)
        elif score in ("dot", "scaled_dot"):
            raw = q @ np.swapaxes(k, -1, -2)
        elif score == "cosine":
            qn = np.maximum(np.sqrt(np.sum(q * q, -1, keepdims=True)), dt.type(1e-8))
            kn = np.maximum(np.sqrt(np.sum(k * k, -1, keepdims=True)), dt.type(1e-8))
            raw = (q / qn) @ np.swapaxes(k / kn, -1, -2)
        else:
            w = np.ones(d, dt) if additive_weight is None else np.asarray(additive_weight).astype(dt)
            raw = np.tanh(q[..., :, None, :] + k[..., None, :, :]) @ w
        s = raw * sc
        if softcap is not None:
            c = dt.type(softcap)
            s = c * np.tanh(s / c)
        attend = np.ones(s.shape, bool)
        if bias is not None:
            b = np.asarray(bias).astype(dt)
            s = s + b
            attend = attend & (b != -np.inf)
        attend = attend & (s != -np.inf)
        i = np.arange(lq)[:, None]
        j = np.arange(lk)[None, :]
        p = i + lk - lq
        if kv_lengths is not None or q_lengths is not None:
            # aligned at each sequence's end: query i at i + kv_len - q_len
            nl = attend.ndim - 2
            kvl = lk if kv_lengths is None else _per_leading(kv_lengths, nl).astype(np.int64)
            ql = lq if q_lengths is None else _per_leading(q_lengths, nl).astype(np.int64)
            p = i + np.asarray(kvl - ql)[..., None, None]
        if mask is not None:
            attend = attend & np.asarray(mask, bool)
        if causal:
            attend = attend & (j <= p)
        if window is not None:
            if window[0] is not None:
                attend = attend & (j >= p - window[0])
            if window[1] is not None:
                attend = attend & (j <= p + window[1])
        if kv_lengths is not None:
            attend = attend & (j < _per_leading(kv_lengths, attend.ndim - 2)[..., None, None])
        if q_segments is not None:
            attend = attend & (np.asarray(q_segments)[..., :, None]
                               == np.asarray(kv_segments)[..., None, :])
        s = np.broadcast_to(s, attend.shape)
        s = np.where(attend, s, dt.type(-np.inf))
        m = np.max(s, axis=-1, keepdims=True, initial=-np.inf)
        if sinks is not None:
            sk = np.asarray(sinks).astype(dt)[..., None, None]
            m = np.maximum(m, sk)
        m = np.where(np.isfinite(m), m, dt.type(0))
        e = np.where(attend, np.exp(s - m), dt.type(0))
        den = np.sum(e, axis=-1, keepdims=True)
        if sinks is not None:
            den = den + np.exp(sk - m)
        wts = np.where(den > 0, e / np.where(den > 0, den, 1), dt.type(0)).astype(dt)
        vv = np.broadcast_to(v, wts.shape[:-2] + v.shape[-2:])
        out = wts @ np.where(np.isfinite(vv), vv, dt.type(0))
        lse = np.where(den > 0, m + np.log(np.where(den > 0, den, 1)), -np.inf)[..., 0]
        if q_lengths is not None:
            valid = np.arange(lq) < _per_leading(q_lengths, out.ndim - 2)[..., None]
            out = np.where(valid[..., None], out, 0)
            wts = np.where(valid[..., None], wts, 0)
            lse = np.where(valid, lse, -np.inf)
    return (np.asarray(out, np.float64), np.asarray(wts, np.float64),
            np.asarray(lse, np.float64))


# ---------------------------------------------------------------------------
# tolerance
# ---------------------------------------------------------------------------

def fd_grad(f, x, eps=1e-6):
    """Central differences of the scalar f at x, every entry."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    flat, gf = x.reshape(-1), g.reshape(-1)
    for n in range(flat.size):
        old = flat[n]
        flat[n] = old + eps
        hi = f(x)
        flat[n] = old - eps
        lo = f(x)
        flat[n] = old
        gf[n] = (hi - lo) / (2 * eps)
    return g


def _finite_max_abs(x):
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(np.max(np.abs(x))) if x.size else 0.0


def _finite_max_err(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a, b = np.broadcast_arrays(a, b)
    ok = np.isfinite(a) & np.isfinite(b)
    if not ok.any():
        return 0.0
    return float(np.max(np.abs(a[ok] - b[ok])))


def tolerance(expected, dtype, baseline=None, logit_mag=0.0):
    """Allowed max-abs error of a result of ``dtype`` against the float64 oracle.

    Parameters
    ----------
    expected : array_like
        The float64 oracle result.
    dtype : numpy dtype
        Dtype in which the result under test was computed / returned.
    baseline : array_like or list of array_like, optional
        The same quantity computed by the naive float32 NumPy baseline
        (:func:`naive_attention`); its error against ``expected`` sets the
        float32 bound (with a list, the largest error of the variants).
        Without it a fixed bound of 64 float32 ulps is used.
    logit_mag : float, optional
        Largest magnitude of the (scaled, biased) attention logits.  Any
        float32 algorithm, the naive baseline included, rounds the logits to
        float32 and so errs by about ``eps32 * logit_mag`` (relative to the
        result's magnitude); the baseline error is taken as at least that, so
        that a baseline that happens to round luckily on a tiny problem does
        not set an unattainable bound.

    Returns
    -------
    float
    """
    dt = np.dtype(dtype)
    mag = max(1.0, _finite_max_abs(expected))
    if dt == np.float64:
        return 1e-10 * mag
    floor = 8 * EPS32 * mag
    if baseline is None:
        tol = 64 * EPS32 * mag
    else:
        if not isinstance(baseline, (list, tuple)):
            baseline = [baseline]
        base_err = max(_finite_max_err(b, expected) for b in baseline)
        base_err = max(base_err, EPS32 * logit_mag * mag)
        tol = 2 * base_err + floor
    if dt == np.float16:
        # final rounding of the float32 result to float16 (half an ulp)
        tol += EPS16 * mag
    return tol


def assert_close(actual, expected, dtype, baseline=None, err_msg="", logit_mag=0.0):
    """Assert ``actual`` matches the float64 oracle ``expected``.

    NaN and +-inf must appear at exactly the same places; elsewhere the
    max-abs error must be within :func:`tolerance`.
    """
    a = np.asarray(actual)
    e = np.asarray(expected, np.float64)
    assert a.shape == e.shape, f"shape {a.shape} != expected {e.shape} {err_msg}"
    a = a.astype(np.float64)
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    assert np.array_equal(nan_a, nan_e), (
        f"NaN pattern differs: actual has {nan_a.sum()} NaN, expected {nan_e.sum()} {err_msg}")
    inf_a = np.isinf(a)
    inf_e = np.isinf(e)
    assert np.array_equal(inf_a, inf_e) and np.array_equal(a[inf_a], e[inf_e]), (
        f"inf pattern differs {err_msg}")
    tol = tolerance(e, dtype, baseline, logit_mag)
    err = _finite_max_err(a, e)
    assert err <= tol, f"max abs error {err:.3g} > tolerance {tol:.3g} ({np.dtype(dtype)}) {err_msg}"


def logit_magnitude(q, k, *, score="scaled_dot", scale=None, additive_weight=None,
                    softcap=None, bias=None, **_ignored):
    """Largest finite |logit| (scaled, capped, biased score), 0 if none."""
    s = ref.scores(q, k, score=score, scale=scale, additive_weight=additive_weight)
    if softcap is not None:
        s = softcap * np.tanh(s / softcap)
    if bias is not None:
        s = s + np.asarray(bias, np.float64)
    return _finite_max_abs(s)


def check_attention(api_result, q, k, v, dtype=None, **kw):
    """Compare a (possibly tuple) result of ``cattn.attention`` with the oracle.

    ``kw`` are the keyword arguments that were passed to ``cattn.attention``
    (without ``out``/``num_threads``); they are forwarded to the reference and
    to the naive baseline.
    """
    kw = {k_: v_ for k_, v_ in kw.items() if k_ not in ("out", "num_threads")}
    expected = ref.attention(q, k, v, **kw)
    if dtype is None:
        dtype = np.result_type(np.asarray(q).dtype, np.asarray(k).dtype, np.asarray(v).dtype)
    dt = np.dtype(dtype)
    base = None
    if dt != np.float64:
        variants = [naive_attention(q, k, v, np.float32, variant=var, **kw)
                    for var in (0, 1, 2)]
        base = [[bo for bo, _, _ in variants]]
        rw = kw.get("return_weights", False)
        if rw == "key_mass":
            base.append([bw.sum(axis=-2) for _, bw, _ in variants])
        elif rw:
            base.append([bw for _, bw, _ in variants])
        if kw.get("return_lse", False):
            base.append([bl for _, _, bl in variants])
    lmag = logit_magnitude(q, k, **kw) if base is not None else 0.0
    if isinstance(expected, tuple):
        assert isinstance(api_result, tuple) and len(api_result) == len(expected), (
            f"expected a tuple of {len(expected)} results")
        for n, (a, e) in enumerate(zip(api_result, expected)):
            assert_close(a, e, dt, None if base is None else base[n],
                         err_msg=f"(result {n})", logit_mag=lmag)
    else:
        assert not isinstance(api_result, tuple), "expected a single array"
        assert_close(api_result, expected, dt, None if base is None else base[0],
                     logit_mag=lmag)
    return expected


# ---------------------------------------------------------------------------
# skipping not-yet-supported keyword arguments (tests/test_production.py)
# ---------------------------------------------------------------------------

def call_or_skip(fn, *args, **kwargs):
    """Call ``fn``; skip the test only if it rejects an *unknown keyword*.

    Any other exception (including other TypeErrors) propagates and fails
    the test.
    """
    try:
        return fn(*args, **kwargs)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            pytest.skip(f"not supported by this build: {exc}")
        raise
