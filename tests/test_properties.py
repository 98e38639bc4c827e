"""Hypothesis property tests: agreement with the oracle and documented invariants."""

import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cattn
import cattn.reference as ref
from _oracle import SCORES, assert_close, check_attention

# CATTN_HYPOTHESIS_EXAMPLES raises the example count for a longer soak run.
SETTINGS = settings(max_examples=int(os.environ.get("CATTN_HYPOTHESIS_EXAMPLES", "50")),
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw, allow_causal=True):
    """A random attention problem: arrays plus keyword arguments."""
    b = draw(st.integers(0, 2))
    h = draw(st.integers(1, 4))
    hkv = draw(st.sampled_from([x for x in range(1, h + 1) if h % x == 0]))
    lq = draw(st.integers(0, 9))
    lk = draw(st.integers(0, 12))
    d = draw(st.integers(1, 6))
    dv = draw(st.integers(0, 5))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    magnitude = draw(st.sampled_from([0.1, 1.0, 5.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((b, h, lq, d)) * magnitude).astype(dtype)
    k = (rng.standard_normal((b, hkv, lk, d)) * magnitude).astype(dtype)
    v = rng.standard_normal((b, hkv, lk, dv)).astype(dtype)

    kw = {"score": draw(st.sampled_from(SCORES))}
    if kw["score"] == "additive" and draw(st.booleans()):
        kw["additive_weight"] = rng.standard_normal(d).astype(dtype)
    scale_kind = draw(st.sampled_from(["none", "scalar", "per_head"]))
    if scale_kind == "scalar":
        kw["scale"] = draw(st.floats(0.01, 10.0))
    elif scale_kind == "per_head":
        kw["scale"] = rng.uniform(0.05, 3.0, h)
    mask_kind = draw(st.sampled_from(["none", "full", "per_head", "keys_only"]))
    if mask_kind == "full":
        kw["mask"] = rng.random((b, h, lq, lk)) < 0.7
    elif mask_kind == "per_head":
        kw["mask"] = rng.random((h, 1, lk)) < 0.7
    elif mask_kind == "keys_only":
        kw["mask"] = rng.random(lk) < 0.6
    if draw(st.booleans()):
        bias = rng.standard_normal((lq, lk)).astype(dtype)
        bias[rng.random((lq, lk)) < draw(st.sampled_from([0.0, 0.2]))] = -np.inf
        kw["bias"] = bias
    if allow_causal:
        if draw(st.booleans()):
            kw["causal"] = True
        if draw(st.booleans()):
            side = st.one_of(st.none(), st.integers(0, 6))
            kw["window"] = (draw(side), draw(side))
    return q, k, v, kw


@SETTINGS
@given(problems())
def test_agrees_with_reference(problem):
    q, k, v, kw = problem
    res = cattn.attention(q, k, v, return_weights=True, return_lse=True, **kw)
    check_attention(res, q, k, v, return_weights=True, return_lse=True, **kw)
    out = cattn.attention(q, k, v, **kw)
    assert out.dtype == q.dtype
    check_attention(out, q, k, v, **kw)


@SETTINGS
@given(problems())
def test_invariants(problem):
    q, k, v, kw = problem
    out, w, lse = cattn.attention(q, k, v, return_weights=True, return_lse=True, **kw)
    # finite inputs: nothing is NaN
    assert not np.isnan(out).any()
    assert not np.isnan(w).any()
    assert not np.isnan(lse).any()
    # weights are in [0, 1]; each row sums to 1, or is all 0 exactly when lse is -inf
    tol = 1e-12 if q.dtype == np.float64 else 1e-5
    assert np.all(w >= 0) and np.all(w <= 1 + tol)
    sums = w.astype(np.float64).sum(-1)
    empty = lse == -np.inf
    assert np.all(np.abs(sums[~empty] - 1) <= tol * max(1, w.shape[-1]))
    assert np.all(w[empty] == 0)
    assert np.all(out[empty] == 0)
    # the output is a convex combination of value rows
    if v.size and out.size:
        vmax = np.abs(v).max()
        assert np.all(np.abs(out) <= vmax * (1 + tol) + tol)


@SETTINGS
@given(problems(allow_causal=False), st.data())
def test_key_permutation_invariance(problem, data):
    q, k, v, kw = problem
    lk = k.shape[-2]
    perm = np.array(data.draw(st.permutations(range(lk))), dtype=np.intp)
    pkw = dict(kw)
    if "mask" in kw:
        pkw["mask"] = np.asarray(kw["mask"])[..., perm]
    if "bias" in kw:
        pkw["bias"] = np.asarray(kw["bias"])[..., perm]
    a = cattn.attention(q, k, v, return_lse=True, **kw)
    b = cattn.attention(q, k[..., perm, :], v[..., perm, :], return_lse=True, **pkw)
    for x, y in zip(a, b):
        assert_close(x, y.astype(np.float64), q.dtype)


@SETTINGS
@given(problems(allow_causal=False), st.data())
def test_merge_of_key_shards(problem, data):
    q, k, v, kw = problem
    lk = k.shape[-2]
    cut = data.draw(st.integers(0, lk))
    parts = []
    for sl in (slice(0, cut), slice(cut, lk)):
        skw = dict(kw)
        for name in ("mask", "bias"):
            if name in kw:
                skw[name] = np.asarray(kw[name])[..., sl]
        parts.append(cattn.attention(q, k[..., sl, :], v[..., sl, :], return_lse=True, **skw))
    out, lse = cattn.merge([p[0] for p in parts], [p[1] for p in parts])
    check_attention((out, lse), q, k, v, return_lse=True, **kw)


@SETTINGS
@given(st.integers(0, 5), st.integers(0, 7), st.sampled_from([np.float32, np.float64]),
       st.integers(0, 2**32 - 1), st.floats(0.0, 0.5), st.floats(-50, 50))
def test_softmax_properties(rows, cols, dtype, seed, p_neginf, shift):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, cols)) * 4).astype(dtype)
    x[rng.random((rows, cols)) < p_neginf] = -np.inf
    got = cattn.softmax(x)
    assert got.shape == x.shape and got.dtype == dtype
    assert not np.isnan(got).any()
    assert_close(got, ref.softmax(x), dtype)
    sums = got.astype(np.float64).sum(-1)
    dead = np.all(x == -np.inf, axis=-1)
    assert np.all(got[dead] == 0)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert np.all(np.abs(sums[~dead] - 1) <= tol * max(1, cols))
    # shift invariance
    if dtype == np.float64:
        shifted = cattn.softmax(x + shift)
        assert_close(shifted, got, dtype, err_msg="softmax not shift invariant")


@SETTINGS
@given(problems(allow_causal=False))
def test_composition_identity(problem):
    q, k, v, kw = problem
    score_kw = {n: kw[n] for n in ("score", "scale", "additive_weight") if n in kw}
    s = cattn.scores(q, k, **score_kw)
    assert_close(s, ref.scores(q, k, **score_kw), q.dtype)
    composed = cattn.aggregate(cattn.softmax(s), v)
    check_attention(composed, q, k, v, **score_kw)
