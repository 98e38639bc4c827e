"""Reliability, hostile inputs: results follow the oracle, or a clean error.

Promise 6 of docs/reliability.md ("Guarantees"): hypothesis properties
against ``cattn.reference`` (any shape, layout, dtype and keyword value,
NaN/inf anywhere), the regressions of the numerical bugs, and a short run
of the fuzz target tests/fuzz_attention.py (in a subprocess with a
timeout).

Tests whose docstring names a BUG-n are regressions of the bugs found while
writing these tests (docs/reliability.md); all are fixed.  A newly found bug
gets an ``xfail(strict=True)`` test, which turns into a loud XPASS once it is
fixed.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cattn
import cattn.reference as ref
from _oracle import assert_close, logit_magnitude, naive_attention
from _subproc import TESTS, assert_ok, describe, run_script


# CATTN_HYPOTHESIS_EXAMPLES raises the example count; CATTN_HYPOTHESIS_RANDOM=1
# draws new examples each run (soak runs) instead of the fixed, derandomized set.
HYP = settings(max_examples=int(os.environ.get("CATTN_HYPOTHESIS_EXAMPLES", "60")),
               deadline=None, derandomize=os.environ.get("CATTN_HYPOTHESIS_RANDOM") != "1",
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SCALES = [None, 0.0, -0.0, -1.0, -3.7, 1e-30, 0.37, 8.0, 1e6, -1e6]
# Beyond float32's range (zero or inf once rounded to float32: BUG-8); used
# with float64 compute only, and by test_extreme_scales with finite inputs.
SCALES_F64 = [1e100, -1e100, 1e-300, 5e-324]


def _layout(draw, x, name):
    """``x`` (its values) in a random memory layout."""
    kind = draw(st.sampled_from(["c", "f", "reversed", "strided", "transposed",
                                 "broadcast"]), label=f"{name} layout")
    if x.ndim == 0 or x.size == 0:
        return x
    if kind == "f":
        return np.asfortranarray(x)
    if kind == "reversed":
        ax = draw(st.integers(0, x.ndim - 1))
        return np.flip(np.flip(x, ax).copy(), ax)           # same values, negative stride
    if kind == "strided":
        wide = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    if kind == "transposed" and x.ndim >= 2:
        return np.swapaxes(np.swapaxes(x, -1, -2).copy(), -1, -2)
    if kind == "broadcast":
        # repeat one slice along a leading axis, stride 0 (values change: same for all)
        ax = draw(st.integers(0, x.ndim - 1))
        idx = [slice(None)] * x.ndim
        idx[ax] = slice(0, 1)
        return np.broadcast_to(x[tuple(idx)], x.shape)
    return x


@st.composite
def hostile_problems(draw):
    b = draw(st.integers(0, 2))
    h = draw(st.integers(1, 3))
    hkv = draw(st.sampled_from([x for x in range(1, h + 1) if h % x == 0]))
    lq, lk = draw(st.integers(0, 10)), draw(st.integers(0, 12))
    d, dv = draw(st.integers(0, 6)), draw(st.integers(0, 5))
    dtypes = draw(st.sampled_from([
        (np.float64,) * 3, (np.float32,) * 3, (np.float16,) * 3,
        (np.float32, np.float16, np.float16), (np.float64, np.float32, np.int32),
        (np.bool_, np.float64, np.float64)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mag = draw(st.sampled_from([1.0, 1.0, 0.0, 1e-30, 4.0, 30.0]))

    def arr(shape, dt):
        x = rng.standard_normal(shape) * mag
        if np.dtype(dt).kind == "b":
            return x > 0
        if np.dtype(dt).kind in "iu":
            return np.round(x * 3).astype(dt)
        return x.astype(dt)
    q = arr((b, h, lq, d), dtypes[0])
    k = arr((b, hkv, lk, d), dtypes[1])
    v = arr((b, hkv, lk, dv), dtypes[2])
    kw = {"score": draw(st.sampled_from(["scaled_dot", "dot", "cosine", "additive"]))}
    cdt = np.result_type(q, k, v)
    if kw["score"] == "cosine" and draw(st.booleans()):
        # vectors beyond the square root of the largest float (their squared
        # norms overflow): 3e19 (float32), 1e160 (float64)
        big = 1e160 if cdt == np.float64 else 3e19
        for x in (q, k):
            if x.dtype in (np.float32, np.float64) and draw(st.booleans()):
                with np.errstate(over="ignore"):     # inf entries are wanted too
                    x *= x.dtype.type(big)
    scales = SCALES + (SCALES_F64 if cdt == np.float64 else [])
    sk = draw(st.sampled_from(["none", "scalar", "per_head"]))
    if sk == "scalar":
        s = draw(st.sampled_from(scales))
        if s is not None:
            kw["scale"] = s
    elif sk == "per_head":
        tiny = 1e-300 if cdt == np.float64 else 1e-30
        kw["scale"] = rng.choice([0.0, -1.0, tiny, 0.5, 3.0], size=h)
    mk = draw(st.sampled_from(["none", "full", "keys", "rows", "all_false", "all_true"]))
    if mk == "full":
        kw["mask"] = rng.random((b, h, lq, lk)) < 0.6
    elif mk == "keys":
        kw["mask"] = rng.random(lk) < 0.6
    elif mk == "rows":
        kw["mask"] = rng.random((lq, 1)) < 0.6
    elif mk == "all_false":
        kw["mask"] = np.zeros((lq, lk), bool)
    elif mk == "all_true":
        kw["mask"] = np.ones((1, lk), bool)
    if draw(st.booleans()):
        kw["bias"] = arr((lq, lk), cdt if cdt.kind == "f" else np.float64)
    if draw(st.booleans()):
        kw["causal"] = True
    if draw(st.booleans()):
        side = st.one_of(st.none(), st.integers(-3, 6), st.sampled_from([2**62, -2**62]))
        kw["window"] = (draw(side), draw(side))
    if draw(st.booleans()):
        kw["kv_lengths"] = rng.integers(0, lk + 1, size=b)
    if draw(st.booleans()):
        kw["q_lengths"] = rng.integers(0, lq + 1, size=(b, 1))
    if draw(st.booleans()):
        kw["q_segments"] = np.sort(rng.integers(0, 3, size=lq))
        kw["kv_segments"] = np.sort(rng.integers(0, 3, size=lk))
    if draw(st.booleans()):
        kw["softcap"] = draw(st.sampled_from([0.5, 5.0, 50.0]))
    if draw(st.booleans()):
        kw["sinks"] = draw(st.sampled_from([0.0, -2.0, 3.0, -np.inf]))
    if lk and d and draw(st.booleans()):
        # a key whose scores are -inf (all -inf, q positive) with an inf value
        j = draw(st.integers(0, lk - 1))
        if q.dtype.kind == "f" and k.dtype.kind == "f":
            q[...] = np.abs(q) + 1
            k[..., j, :] = -np.inf
            if v.dtype.kind == "f" and dv:
                v[..., j, 0] = np.inf
    # NaN / inf placements, anywhere (attended or not)
    arrays = {"q": q, "k": k, "v": v}
    if "bias" in kw:
        arrays["bias"] = kw["bias"]
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(sorted(arrays)))
        x = arrays[name]
        if x.size and x.dtype.kind == "f":
            x.reshape(-1)[draw(st.integers(0, x.size - 1))] = draw(
                st.sampled_from([np.nan, np.inf, -np.inf]))
    q, k, v = (_layout(draw, x, n) for x, n in ((q, "q"), (k, "k"), (v, "v")))
    return q, k, v, kw


def _compute_dtype(q, k, v):
    dt = np.result_type(q, k, v)
    return np.dtype(np.float32) if dt == np.float16 else dt


def check_semantics(q, k, v, kw, return_weights, return_lse):
    """The documented semantics, checked against the oracle:

    * output: NaN and +-inf at exactly the oracle's places; elsewhere within
      the float64 / naive-float32 tolerance of tests/_oracle.py;
    * lse: -inf exactly where the oracle says no key was attended; close
      where the oracle is finite; non-finite where the oracle is +inf/NaN
      (NaN allowed for +inf: BUG-7);
    * weights: rows the oracle computes without NaN match it exactly in
      pattern and within tolerance; a row with NaN in the oracle has NaN in
      cattn too.  (Within such rows the two differ: the oracle gives NaN to
      masked keys as well -- against its own "weight exactly 0" rule -- and
      cattn gives NaN to every key of a row with a +inf logit, BUG-7.)
    """
    res = cattn.attention(q, k, v, return_weights=return_weights, return_lse=return_lse, **kw)
    exp = ref.attention(q, k, v, return_weights=return_weights, return_lse=return_lse, **kw)
    res = res if isinstance(res, tuple) else (res,)
    exp = exp if isinstance(exp, tuple) else (exp,)
    assert len(res) == len(exp)
    rdt = np.result_type(q, k, v)
    rdt = rdt if rdt.kind == "f" else np.dtype(np.float64)
    for r in res:
        assert r.dtype == rdt
    if rdt == np.float16:      # float16 results: the oracle's, rounded (|x| > 65504 -> inf)
        with np.errstate(over="ignore"):
            exp = tuple(e.astype(np.float16).astype(np.float64) for e in exp)
    cdt = _compute_dtype(q, k, v)
    base = None
    lmag = 0.0
    with np.errstate(all="ignore"):
        if cdt != np.float64:
            nkw = {n: x for n, x in kw.items()}
            variants = [naive_attention(q, k, v, np.float32, variant=var, **nkw)
                        for var in (0, 1, 2)]
            base = variants
            lmag = logit_magnitude(q, k, **kw)
    with np.errstate(all="ignore"):
        all_mag = logit_magnitude(q, k, **kw)
    if cdt == np.float64 and all_mag > 1e8:
        # ill-conditioned: float64 rounding of the scores (eps * |logit| > 1e-8)
        # reorders near-ties; only the structure is checked
        for r, e in zip(res, exp):
            assert np.array_equal(np.isnan(r), np.isnan(e)) or not np.isfinite(e).all()
        return
    # weights are exp(s - lse): error ~ eps * |logit| (BUG-12 when it reaches 1)
    huge = all_mag > (2.0**20 if cdt != np.float64 else 1e4)
    bo = None if base is None else [b[0] for b in base]
    out, e_out = np.asarray(res[0], np.float64), np.array(exp[0], np.float64)
    if not np.isfinite(np.asarray(v, np.float64)).all():
        # an inf value whose weight underflows (below the smallest normal
        # number: float32 ~1e-38, float64 ~2e-308) gives 0 * inf = NaN where
        # the oracle still has a tiny weight times inf = inf (documented)
        e_out[np.isinf(e_out) & np.isnan(out)] = np.nan
    assert_close(out, e_out, rdt, bo, err_msg="(output)", logit_mag=lmag)
    i = 1
    if return_weights:
        w, ew = np.asarray(res[i], np.float64), exp[i]
        assert w.shape == ew.shape
        clean = ~np.isnan(ew).any(axis=-1)
        if clean.any() and not huge:
            bw = None if base is None else [b[1][..., :, :][np.broadcast_to(
                clean[..., None], b[1].shape)] for b in base]
            assert_close(w[np.broadcast_to(clean[..., None], w.shape)],
                         ew[np.broadcast_to(clean[..., None], ew.shape)], rdt, bw,
                         err_msg="(weights, NaN-free rows)", logit_mag=lmag)
        nan_rows = ~clean
        assert np.isnan(w).any(axis=-1)[nan_rows].all(), "a NaN row of the oracle has no NaN"
        i += 1
    if return_lse:
        lse, el = np.asarray(res[i], np.float64), exp[i]
        assert np.array_equal(lse == -np.inf, el == -np.inf), "empty rows differ"
        fin = np.isfinite(el)
        bl = None if base is None else [b[2][fin] for b in base]
        assert_close(lse[fin], el[fin], rdt, bl, err_msg="(lse)", logit_mag=lmag)
        assert not np.isfinite(lse[~fin]).any()
        assert np.array_equal(np.isnan(lse[np.isnan(el)]), np.ones(np.isnan(el).sum(), bool))


def _float32_overflow(q, k, kw):
    """Logits outside float32's range: no comparison (BUG-8)."""
    if _compute_dtype(q, k, k) == np.float64:
        return False
    with np.errstate(all="ignore"):
        qm = np.nanmax(np.abs(np.where(np.isfinite(q), q, 0)), initial=0)
        km = np.nanmax(np.abs(np.where(np.isfinite(k), k, 0)), initial=0)
    s = np.abs(np.asarray(kw.get("scale", 1.0), np.float64)).max(initial=1.0)
    if kw.get("score") == "cosine":
        return float(s) > 1e30          # cosines are bounded by the scale
    return float(s) * (float(qm) * float(km) * max(q.shape[-1], 1) + 1) > 1e30


def _padded_without_q_lengths(q, k, kw):
    """Causal/window with kv_lengths alone on Lq == Lk > 1 and a sequence
    shorter than Lk: rejected (a padded batch missing its q_lengths)."""
    lq, lk = q.shape[-2], k.shape[-2]
    aligned = kw.get("causal") or (kw.get("window") is not None
                                   and tuple(kw["window"]) != (None, None))
    if not aligned or "kv_lengths" not in kw or "q_lengths" in kw or lq != lk or lq <= 1:
        return False
    kvl = np.asarray(kw["kv_lengths"])
    return bool(((kvl > 0) & (kvl < lk)).any())


@HYP
@given(hostile_problems(), st.sampled_from([False, True, "key_mass"]), st.booleans())
def test_hostile_inputs_follow_reference(problem, return_weights, return_lse):
    q, k, v, kw = problem
    if _padded_without_q_lengths(q, k, kw):
        with pytest.raises(ValueError, match="q_lengths"):
            cattn.attention(q, k, v, return_weights=return_weights, **kw)
        return
    if _float32_overflow(q, k, kw):
        res = cattn.attention(q, k, v, return_lse=True, **kw)        # no crash, that's all
        assert res[0].shape == q.shape[:-1] + (v.shape[-1],)
        return
    if return_weights == "key_mass":
        out, mass = cattn.attention(q, k, v, return_weights="key_mass", num_threads=2, **kw)
        # deterministic: the same bits from the same threaded call (item 15)
        _, mass2 = cattn.attention(q, k, v, return_weights="key_mass", num_threads=2, **kw)
        assert np.array_equal(mass, mass2, equal_nan=True)
        e_out, e_w = ref.attention(q, k, v, return_weights=True, **kw)
        cdt = _compute_dtype(q, k, v)
        with np.errstate(all="ignore"):
            mag = logit_magnitude(q, k, **kw)
        if np.isnan(e_w).any() or mag > (2.0**20 if cdt != np.float64 else 1e4):
            return                                     # NaN rows; BUG-12
        base, lmag = None, 0.0
        if cdt != np.float64:
            with np.errstate(all="ignore"):
                base = [naive_attention(q, k, v, np.float32, variant=var, **kw)[1].sum(-2)
                        for var in (0, 1, 2)]
                lmag = logit_magnitude(q, k, **kw)
        rdt = np.float16 if np.result_type(q, k, v) == np.float16 else cdt
        assert_close(mass, e_w.sum(-2), rdt, base, err_msg="(key mass)", logit_mag=lmag)
        return
    check_semantics(q, k, v, kw, return_weights, return_lse)


@st.composite
def masked_garbage(draw):
    """A problem whose NaN/inf sit only where no query may look: masked-out
    keys, keys past kv_lengths, padded queries, keys outside the window."""
    b, h = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    lq, lk = draw(st.integers(1, 9)), draw(st.integers(1, 12))
    d, dv = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    dt = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    q = rng.standard_normal((b, h, lq, d)).astype(dt)
    k = rng.standard_normal((b, h, lk, d)).astype(dt)
    v = rng.standard_normal((b, h, lk, dv)).astype(dt)
    kw = {"score": draw(st.sampled_from(["scaled_dot", "cosine", "additive"]))}
    bad = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    how = draw(st.sampled_from(["mask", "kv_lengths", "q_lengths", "window", "bias"]))
    if how == "mask":
        dead = rng.random(lk) < 0.4
        kw["mask"] = ~dead
        k[..., dead, :] = bad
        v[..., dead, :] = bad
    elif how == "kv_lengths":
        kvl = rng.integers(0, lk + 1, size=b)
        kw["kv_lengths"] = kvl
        for i in range(b):
            k[i, :, kvl[i]:] = bad
            v[i, :, kvl[i]:] = bad
    elif how == "q_lengths":
        ql = rng.integers(0, lq + 1, size=b)
        kw["q_lengths"] = ql
        for i in range(b):
            q[i, :, ql[i]:] = bad
    elif how == "bias":
        bias = np.zeros((lq, lk), dt)
        dead = rng.random(lk) < 0.4
        bias[:, dead] = -np.inf
        kw["bias"] = bias
        k[..., dead, :] = bad
        v[..., dead, :] = bad
    else:
        kw["window"] = (0, 0)                     # query i sees key i + lk - lq only
        kw["causal"] = draw(st.booleans())
        seen = np.arange(lq) + lk - lq
        dead = np.ones(lk, bool)
        dead[seen[(seen >= 0) & (seen < lk)]] = False
        k[..., dead, :] = bad
        v[..., dead, :] = bad
    return q, k, v, kw


@HYP
@given(masked_garbage(), st.booleans())
def test_nonfinite_where_nobody_looks_never_leaks(problem, decode):
    q, k, v, kw = problem
    if decode:                                   # the few-query path
        if "window" in kw:
            return
        q = q[..., :2, :]
        if "q_lengths" in kw:
            kw["q_lengths"] = np.minimum(kw["q_lengths"], q.shape[-2])
        if "bias" in kw:
            kw["bias"] = kw["bias"][:2]
    out, lse = cattn.attention(q, k, v, return_lse=True, **kw)
    assert np.isfinite(out).all(), "NaN/inf from a key or query no one attends leaked"
    assert not np.isnan(lse).any() and not (lse == np.inf).any()
    check_semantics(q, k, v, kw, True, True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("scale", [0.0, -0.0, -2.0, 1e-300, 5e-324, 1e-30, 1e4, -1e4],
                         ids=lambda s: repr(s))
@pytest.mark.parametrize("lq", [2, 20], ids=["decode", "tile"])
def test_extreme_scales(scale, dtype, lq):
    rng = np.random.default_rng(5)
    q = rng.standard_normal((2, lq, 6)).astype(dtype)
    k = rng.standard_normal((2, 9, 6)).astype(dtype)
    v = rng.standard_normal((2, 9, 3)).astype(dtype)
    for score in ("scaled_dot", "cosine", "additive"):
        check_semantics(q, k, v, {"scale": scale, "score": score, "causal": True}, True, True)


def test_huge_scale_float64_matches_reference():
    rng = np.random.default_rng(6)
    q, k, v = (rng.standard_normal((2, n, 5)) for n in (20, 9, 9))
    for s in (1e300, -1e300, 1e100):
        check_semantics(q, k, v, {"scale": s}, True, True)


def test_plus_inf_logit_lse_is_inf():
    """BUG-7 (fixed): a +inf logit gave lse NaN and an all-NaN weight row."""
    q = np.ones((1, 3, 4)); k = np.ones((1, 5, 4)); v = np.ones((1, 5, 2))
    q[0, 1, 0] = np.inf
    _, w, lse = cattn.attention(q, k, v, return_weights=True, return_lse=True)
    _, ew, else_ = ref.attention(q, k, v, return_weights=True, return_lse=True)
    assert lse[0, 1] == else_[0, 1] == np.inf
    assert np.array_equal(np.isnan(w), np.isnan(ew))


@pytest.mark.parametrize("kw", [
    {"scale": 1e300},
    {"softcap": 1e-300}, {"softcap": 1e300}, {"sinks": 1e300}], ids=lambda d: repr(d))
def test_float32_parameter_out_of_range(kw):
    rng = np.random.default_rng(8)
    q, k, v = (rng.standard_normal((2, n, 4)).astype(np.float32) for n in (5, 7, 7))
    out = cattn.attention(q, k, v, **kw)
    assert np.isfinite(out).all() or not np.isfinite(ref.attention(q, k, v, **kw)).all()
    assert_close(out, ref.attention(q, k, v, **kw), np.float32, logit_mag=1e3)


@pytest.mark.parametrize("dtype,cap", [(np.float32, 1e6), (np.float64, 1e10)],
                         ids=["f32", "f64"])
def test_large_softcap_is_accurate(dtype, cap):
    rng = np.random.default_rng(9)
    q, k, v = (rng.standard_normal((2, 3, 40, 16)).astype(dtype) for _ in range(3))
    got = cattn.attention(q, k, v, softcap=cap)
    exp = ref.attention(q, k, v, softcap=cap)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(got, exp, rtol=tol, atol=tol)


def test_infinite_sink():
    """BUG-10 (fixed in 5555b6c): sinks=+inf gave NaN outputs (the oracle: 0
    with lse +inf); now rejected, as is NaN."""
    rng = np.random.default_rng(10)
    q, k, v = (rng.standard_normal((2, n, 4)) for n in (5, 7, 7))
    for bad in (np.inf, np.nan):
        try:
            out, lse = cattn.attention(q, k, v, sinks=bad, return_lse=True)
        except ValueError:
            continue                             # rejecting it is fine
        e_out, e_lse = ref.attention(q, k, v, sinks=bad, return_lse=True)
        assert np.array_equal(out, e_out, equal_nan=True)
        assert np.array_equal(lse, e_lse, equal_nan=True)


@pytest.mark.parametrize("dtype,scale", [(np.float32, 2.0**20), (np.float64, 2.0**54)],
                         ids=["f32", "f64"])
def test_weights_normalised_at_huge_logits(dtype, scale):
    """BUG-12 (fixed): weights were exp(s - lse) and lse = m + log(l) rounds
    to m at huge logits; the kernel now keeps m and log(l) apart."""
    q = np.ones((1, 12, 4), dtype); k = np.ones((1, 2, 4), dtype); v = np.ones((1, 2, 3), dtype)
    _, w = cattn.attention(q, k, v, score="dot", scale=scale, return_weights=True)
    np.testing.assert_allclose(w, 0.5, rtol=1e-6)


@pytest.mark.parametrize("lq", [3, 20], ids=["decode", "tile"])
def test_no_keys_with_sinks(lq):
    """BUG-11 (introduced by 5b62fcf, fixed in 5555b6c): with no key at all,
    lse was -inf instead of the sink logit."""
    q = np.ones((2, lq, 4)); k = np.ones((2, 0, 4)); v = np.ones((2, 0, 3))
    sinks = np.array([1.5, -2.0])[:, None]
    out, lse = cattn.attention(q, k, v, sinks=np.array([1.5, -2.0]), return_lse=True,
                               q_lengths=np.array([lq, 1]))
    e_out, e_lse = ref.attention(q, k, v, sinks=np.array([1.5, -2.0]), return_lse=True,
                                 q_lengths=np.array([lq, 1]))
    assert np.array_equal(out, e_out)
    assert np.array_equal(lse, e_lse)
    assert lse[0, 0] == sinks[0, 0] and lse[1, 1] == -np.inf


# ---------------------------------------------------------------------------
# the fuzz target, short runs
# ---------------------------------------------------------------------------
FUZZ = TESTS / "fuzz_attention.py"


def test_fuzz_short_run_plain():
    proc = run_script(FUZZ, "--plain", "--runs", "1500", "--seed", "20240611", "--check",
                      timeout=120)
    assert_ok(proc)
    assert "plain fuzz: 1500 inputs" in proc.stdout


def test_fuzz_short_run_atheris():
    pytest.importorskip("atheris")
    proc = run_script(FUZZ, "-atheris_runs=500", "-seed=7", timeout=120)
    assert proc.returncode == 0, describe(proc)


# ---------------------------------------------------------------------------
# issue 12: extreme parameter values (items 4, 9, 10, 15, 17)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("lq", [3, 20], ids=["decode", "tile"])
@pytest.mark.parametrize("return_weights", [False, True, "key_mass"])
def test_minus_inf_sink_with_empty_rows(lq, return_weights):
    """Item 4: sinks=-inf is no sink; a row without keys (causal, Lq > Lk)
    gave NaN output, lse, weights and key mass (exp(-inf - -inf))."""
    rng = np.random.default_rng(12)
    q, k, v = (rng.standard_normal((2, n, 4)) for n in (lq, 2, 2))
    kw = {"causal": True, "sinks": np.array([-np.inf, 0.5])}
    got = cattn.attention(q, k, v, return_lse=True, return_weights=return_weights, **kw)
    exp = ref.attention(q, k, v, return_lse=True,
                        return_weights=bool(return_weights), **kw)
    if return_weights == "key_mass":
        exp = (exp[0], exp[1].sum(-2), exp[2])
    for g, e in zip(got, exp):
        assert not np.isnan(g).any()
        assert np.array_equal(g == -np.inf, e == -np.inf)
        fin = np.isfinite(e)
        np.testing.assert_allclose(g[fin], e[fin], rtol=1e-12, atol=1e-12)
    check_semantics(q, k, v, kw, bool(return_weights), True)


@pytest.mark.parametrize("lq", [1, 9, 40], ids=["decode", "tile", "tiles"])
@pytest.mark.parametrize("how", ["k_inf", "overflow", "mask_all_true"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_minus_inf_score_never_multiplies_its_value(lq, how, dtype):
    """Item 9: a key whose score is -inf (K = -inf, or a finite product that
    overflows) has weight 0 and its inf value must not be multiplied
    (0 * inf = NaN on the full-tile path)."""
    q = np.ones((lq, 2), dtype)
    k = np.array([[0, 0], [-np.inf, -np.inf]], dtype)
    if how == "overflow":
        k[1] = -np.finfo(dtype).max
    v = np.array([[1.0], [np.inf]], dtype)
    kw = {"score": "dot"}
    if how == "mask_all_true":
        kw["mask"] = np.ones((lq, 2), bool)
    out = cattn.attention(q, k, v, **kw)
    if not (how == "overflow" and dtype == np.float32):
        # (the float64 oracle's score is finite there: weight 0, 0 * inf = NaN)
        np.testing.assert_array_equal(out, ref.attention(q, k, v, **kw))
    np.testing.assert_array_equal(out, 1.0)


@pytest.mark.parametrize("lq", [2, 20], ids=["decode", "tile"])
@pytest.mark.parametrize("dtype,mag", [(np.float32, 3e19), (np.float32, 1e37),
                                       (np.float64, 1e160), (np.float64, 1e300)],
                         ids=["f32-3e19", "f32-1e37", "f64-1e160", "f64-1e300"])
@pytest.mark.parametrize("which", ["q", "k", "both"])
def test_cosine_of_huge_vectors(lq, dtype, mag, which):
    """Item 10: the norm's sum of squares overflowed (|q| >= 2e19 in float32)
    and every cosine became 0 (uniform weights)."""
    rng = np.random.default_rng(13)
    q = rng.standard_normal((2, lq, 6))
    k = rng.standard_normal((2, 9, 6))
    v = rng.standard_normal((2, 9, 3)).astype(dtype)
    if which in ("q", "both"):
        q = q * mag
    if which in ("k", "both"):
        k = k * mag
    q, k = q.astype(dtype), k.astype(dtype)
    for scale in (None, 3.0):
        kw = {"score": "cosine", "scale": scale}
        out, lse = cattn.attention(q, k, v, return_lse=True, **kw)
        e_out, e_lse = ref.attention(q, k, v, return_lse=True, **kw)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(out, e_out, rtol=tol, atol=tol)
        np.testing.assert_allclose(lse, e_lse, rtol=tol, atol=tol)
    s = cattn.scores(q, k, score="cosine")
    np.testing.assert_allclose(s, ref.scores(q, k, score="cosine"),
                               rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_key_mass_deterministic_with_threads():
    """Item 15: key mass from several query blocks was added with atomic
    float adds in whatever order the threads ran (3-10% of repeated calls
    differed); it is now reduced in a fixed order."""
    rng = np.random.default_rng(14)
    q = rng.standard_normal((3, 700, 16)).astype(np.float32)
    k = rng.standard_normal((3, 300, 16)).astype(np.float32)
    _, w = ref.attention(q, k, k, return_weights=True)
    first = None
    for rep in range(20):
        out, mass = cattn.attention(q, k, k, return_weights="key_mass", num_threads=2)
        if first is None:
            first = mass
            assert_close(mass, w.sum(-2), np.float32, logit_mag=10)
        assert np.array_equal(mass, first), f"call {rep} differs from the first"


@pytest.mark.parametrize("lq", [1, 20], ids=["decode", "tile"])
def test_nan_and_plus_inf_logits_give_nan_lse(lq):
    """Item 17: a row with both a NaN and a +inf logit gave lse +inf; the
    oracle (and now cattn) give NaN.  A +inf logit alone still gives +inf."""
    q = np.ones((1, lq, 2))
    k = np.zeros((1, 3, 2))
    k[0, 1, 0] = np.nan
    k[0, 2, 0] = np.inf
    v = np.ones((1, 3, 1))
    for keys, want in (([0, 1, 2], np.nan), ([0, 2], np.inf)):
        out, lse = cattn.attention(q, k[:, keys], v[:, keys], score="dot", return_lse=True)
        e_out, e_lse = ref.attention(q, k[:, keys], v[:, keys], score="dot", return_lse=True)
        np.testing.assert_array_equal(lse, want)
        np.testing.assert_array_equal(lse, e_lse)
        assert np.isnan(out).all() and np.isnan(e_out).all()


@pytest.mark.parametrize("lq", [1, 20], ids=["decode", "tile"])
def test_float64_weight_underflow_with_inf_value(lq):
    """Item 17, a documented choice: weights below the smallest normal number
    flush to 0 in float64 as in float32 (docs/reliability.md), so an
    attended inf value whose weight is that small gives NaN (0 * inf) where
    the oracle's subnormal weight gives inf.  Above it, the weight is exact."""
    q = np.ones((lq, 1))
    v = np.array([[1.0], [np.inf]])
    k = np.array([[0.0], [-720.0]])           # weight exp(-720) ~ 1e-313
    assert np.isnan(cattn.attention(q, k, v, score="dot")).all()
    assert (ref.attention(q, k, v, score="dot") == np.inf).all()
    k = np.array([[0.0], [-700.0]])           # exp(-700) ~ 1e-304: normal
    np.testing.assert_array_equal(cattn.attention(q, k, v, score="dot"), np.inf)


def test_additive_weights_follow_a_float64_plan():
    """float32 inputs whose huge scale makes the plan compute in float64:
    the additive weights are handed to the kernel in float64 too (they were
    float32, and the float64 kernel read past their end)."""
    rng = np.random.default_rng(5)
    q = rng.standard_normal((2, 40, 16)).astype(np.float32)
    k = rng.standard_normal((2, 3, 16)).astype(np.float32)
    v = rng.standard_normal((2, 3, 2)).astype(np.float32)
    w = rng.standard_normal(16).astype(np.float32)
    for kw in ({}, {"additive_weight": w}):
        got = cattn.attention(q, k, v, score="additive", scale=9.2e18, softcap=30.0, **kw)
        want = ref.attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64),
                             score="additive", scale=9.2e18, softcap=30.0, **kw)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
