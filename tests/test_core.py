"""Core behaviour of cattn.attention and its building blocks vs the float64 oracle."""

import threading

import numpy as np
import pytest

import cattn
import cattn.reference as ref
from _oracle import (FLOAT_DTYPES, SCORES, assert_close, check_attention,
                      make_qkv, naive_attention, randn)


# ---------------------------------------------------------------------------
# score x dtype x mask kind
# ---------------------------------------------------------------------------

MASK_KINDS = [
    "none",
    "mask_over_heads",      # (B, 1, Lq, Lk) bool mask broadcast over heads
    "mask_over_queries",    # (B, 1, 1, Lk) bool mask broadcast over heads and queries
    "bias",                 # finite bias (Lq, Lk)
    "bias_neginf",          # bias with -inf entries, broadcast over batch
    "causal_lq_lt_lk",
    "causal_lq_gt_lk",
    "window",
    "window_left_none",
    "window_right_none",
]


def _mask_case(kind, rng, b, h, dtype):
    lq, lk = (29, 13) if kind == "causal_lq_gt_lk" else (13, 29)
    kw = {}
    if kind == "mask_over_heads":
        kw["mask"] = rng.random((b, 1, lq, lk)) < 0.7
    elif kind == "mask_over_queries":
        kw["mask"] = rng.random((b, 1, 1, lk)) < 0.6
    elif kind == "bias":
        kw["bias"] = randn(rng, (lq, lk), dtype)
    elif kind == "bias_neginf":
        bias = randn(rng, (h, lq, lk), dtype)
        bias[rng.random((h, lq, lk)) < 0.3] = -np.inf
        kw["bias"] = bias
    elif kind.startswith("causal"):
        kw["causal"] = True
    elif kind == "window":
        kw["window"] = (3, 2)
    elif kind == "window_left_none":
        kw["window"] = (None, 1)
    elif kind == "window_right_none":
        kw["window"] = (4, None)
    return lq, lk, kw


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("score", SCORES)
def test_grid(score, dtype, kind, rng):
    b, h, d, dv = 2, 3, 8, 5
    lq, lk, kw = _mask_case(kind, rng, b, h, dtype)
    q, k, v = make_qkv(rng, (b, h), lq, lk, d, dv, dtype)
    kw["score"] = score
    if score == "additive":
        kw["additive_weight"] = randn(rng, (d,), dtype)
    out = cattn.attention(q, k, v, **kw)
    assert out.dtype == dtype
    check_attention(out, q, k, v, **kw)
    res = cattn.attention(q, k, v, return_weights=True, return_lse=True, **kw)
    check_attention(res, q, k, v, return_weights=True, return_lse=True, **kw)


# ---------------------------------------------------------------------------
# tile tails, decode shapes, broadcasting, GQA
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("score", SCORES)
def test_tile_tails(score, dtype, rng):
    q, k, v = make_qkv(rng, (1, 2), 143, 587, 21, 19, dtype)
    out, lse = cattn.attention(q, k, v, score=score, return_lse=True)
    check_attention((out, lse), q, k, v, score=score, return_lse=True)


@pytest.mark.parametrize("kw", [
    {"causal": True},
    {"window": (50, 7)},
    {"mask": "random"},
    {"bias": "random"},
], ids=["causal", "window", "mask", "bias"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
def test_tile_tails_masked(kw, dtype, rng):
    lq, lk = 143, 587
    q, k, v = make_qkv(rng, (1, 2), lq, lk, 21, 19, dtype)
    kw = dict(kw)
    if kw.get("mask") == "random":
        kw["mask"] = rng.random((lq, lk)) < 0.5
    if kw.get("bias") == "random":
        kw["bias"] = randn(rng, (1, 1, lq, lk), dtype)
    res = cattn.attention(q, k, v, return_weights=True, return_lse=True, **kw)
    check_attention(res, q, k, v, return_weights=True, return_lse=True, **kw)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2)], ids=["mha", "gqa"])
def test_decode_long_kv(heads, dtype, rng):
    hq, hkv = heads
    q = randn(rng, (1, hq, 1, 64), dtype)
    k = randn(rng, (1, hkv, 5000, 64), dtype)
    v = randn(rng, (1, hkv, 5000, 64), dtype)
    out, lse = cattn.attention(q, k, v, return_lse=True)
    assert out.shape == (1, hq, 1, 64)
    check_attention((out, lse), q, k, v, return_lse=True)


@pytest.mark.parametrize("shapes", [
    ((2, 3), (3,), (1, 3)),
    ((3,), (2, 1), (2, 3)),
    ((), (), ()),
    ((2, 1, 3), (4, 1), (1, 4, 3)),
], ids=["q-full", "kv-full", "2d", "5d"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
def test_broadcast_leading_dims(shapes, dtype, rng):
    lq_lead, k_lead, v_lead = shapes
    q = randn(rng, lq_lead + (7, 6), dtype)
    k = randn(rng, k_lead + (11, 6), dtype)
    v = randn(rng, v_lead + (11, 4), dtype)
    out = cattn.attention(q, k, v)
    lead = np.broadcast_shapes(lq_lead, k_lead, v_lead)
    assert out.shape == lead + (7, 4)
    check_attention(out, q, k, v)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("kw", [{}, {"causal": True}, {"mask": "heads"}],
                         ids=["plain", "causal", "mask"])
def test_gqa(kw, dtype, rng):
    b, hq, hkv, lq, lk = 2, 8, 2, 9, 15
    q, _, _ = make_qkv(rng, (b, hq), lq, lk, 8, 6, dtype)
    _, k, v = make_qkv(rng, (b, hkv), lq, lk, 8, 6, dtype)
    kw = dict(kw)
    if kw.get("mask") == "heads":
        kw["mask"] = rng.random((b, hq, lq, lk)) < 0.7
    res = cattn.attention(q, k, v, return_weights=True, return_lse=True, **kw)
    assert res[0].shape == (b, hq, lq, 6)
    check_attention(res, q, k, v, return_weights=True, return_lse=True, **kw)
    # same as explicitly repeating the K/V heads: head h uses kv head h // 4
    rep = cattn.attention(q, np.repeat(k, 4, axis=1), np.repeat(v, 4, axis=1), **kw)
    assert_close(res[0], rep.astype(np.float64), dtype)


# ---------------------------------------------------------------------------
# memory layouts
# ---------------------------------------------------------------------------

def _layout(x, kind):
    if kind == "fortran":
        return np.asfortranarray(x)
    if kind == "noncontig":
        big = np.zeros(x.shape[:-1] + (2 * x.shape[-1] + 1,), x.dtype)
        big[..., 1::2] = x
        view = big[..., 1::2]
        assert not view.flags.c_contiguous
        return view
    if kind == "negstride_rows":
        return np.ascontiguousarray(x[..., ::-1, :])[..., ::-1, :]
    if kind == "negstride_cols":
        return np.ascontiguousarray(x[..., ::-1])[..., ::-1]
    if kind == "swapped_lead":
        return np.ascontiguousarray(np.swapaxes(x, 0, 1)).swapaxes(0, 1)
    if kind == "readonly":
        y = x.copy()
        y.flags.writeable = False
        return y
    raise AssertionError(kind)


LAYOUTS = ["fortran", "noncontig", "negstride_rows", "negstride_cols",
           "swapped_lead", "readonly"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
def test_layouts(layout, dtype, rng):
    q, k, v = make_qkv(rng, (2, 3), 10, 17, 6, 5, dtype)
    mask = rng.random((10, 17)) < 0.8
    bias = randn(rng, (3, 10, 17), dtype)
    kw = {"mask": mask, "bias": bias, "causal": True}
    expected = cattn.attention(q, k, v, return_lse=True, **kw)
    lkw = {"mask": _layout(mask, layout), "bias": _layout(bias, layout), "causal": True}
    got = cattn.attention(_layout(q, layout), _layout(k, layout), _layout(v, layout),
                          return_lse=True, **lkw)
    for g, e in zip(got, expected):
        assert_close(g, e.astype(np.float64), dtype)
    check_attention(got, q, k, v, return_lse=True, **kw)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
def test_reversed_view_keys(dtype, rng):
    """x[..., ::-1, :] views are read correctly (not as the unreversed data)."""
    q, k, v = make_qkv(rng, (2, 3), 10, 17, 6, 5, dtype)
    kr, vr = k[..., ::-1, :], v[..., ::-1, :]
    got = cattn.attention(q[..., ::-1, :], kr, vr, causal=True)
    expected = cattn.attention(np.ascontiguousarray(q[..., ::-1, :]),
                               np.ascontiguousarray(kr), np.ascontiguousarray(vr),
                               causal=True)
    assert_close(got, expected.astype(np.float64), dtype)
    check_attention(got, q[..., ::-1, :], kr, vr, causal=True)


# ---------------------------------------------------------------------------
# fully masked rows, non-finite values, huge logits
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("how", ["mask", "bias", "causal", "window"])
def test_fully_masked_rows(how, dtype, rng):
    lq, lk = 6, 4
    q, k, v = make_qkv(rng, (2, 2), lq, lk, 5, 3, dtype)
    if how == "mask":
        mask = rng.random((lq, lk)) < 0.7
        mask[[0, 3]] = False
        kw = {"mask": mask}
        dead = [0, 3]
    elif how == "bias":
        bias = np.zeros((lq, lk), dtype)
        bias[[1, 5]] = -np.inf
        kw = {"bias": bias}
        dead = [1, 5]
    elif how == "causal":
        kw = {"causal": True}          # Lq > Lk: first Lq - Lk rows see nothing
        dead = [0, 1]
    else:
        kw = {"window": (0, 0)}         # p = i - 2: rows 0 and 1 are outside [0, Lk)
        dead = [0, 1]
    out, w, lse = cattn.attention(q, k, v, return_weights=True, return_lse=True, **kw)
    assert not np.isnan(out).any() and not np.isnan(w).any() and not np.isnan(lse).any()
    assert np.all(out[..., dead, :] == 0)
    assert np.all(w[..., dead, :] == 0)
    assert np.all(lse[..., dead] == -np.inf)
    check_attention((out, w, lse), q, k, v, return_weights=True, return_lse=True, **kw)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("how", ["mask", "causal", "window", "bias"])
def test_masked_nonfinite_does_not_leak(how, dtype, bad, rng):
    lq, lk = 5, 9
    q, k, v = make_qkv(rng, (2, 3), lq, lk, 6, 4, dtype)
    k, v = k.copy(), v.copy()
    rows = slice(None)                  # query rows that must stay finite
    if how == "mask":
        mask = np.ones((lq, lk), bool)
        mask[:, [2, 7]] = False
        kw = {"mask": mask}
        bad_keys = [2, 7]
    elif how == "causal":
        # p = i + 4: the last key is attended by the last query only
        kw = {"causal": True}
        bad_keys = [lk - 1]
        rows = slice(0, lq - 1)
    elif how == "window":
        kw = {"window": (2, 0)}         # p = i + 4: keys 0 and 1 are seen by no query
        bad_keys = [0, 1]
    else:
        bias = np.zeros((lq, lk), dtype)
        bias[:, [3, 8]] = -np.inf       # a -inf bias masks the key; poison V only
        kw = {"bias": bias}
        bad_keys = [3, 8]
    if how != "bias":
        k[..., bad_keys, :] = bad
    v[..., bad_keys, :] = bad
    out, w, lse = cattn.attention(q, k, v, return_weights=True, return_lse=True, **kw)
    assert np.isfinite(out[..., rows, :]).all(), "non-finite masked K/V leaked into the output"
    assert np.isfinite(w[..., rows, :]).all()
    assert np.isfinite(lse[..., rows]).all()
    e_out, e_w, e_lse = ref.attention(q, k, v, return_weights=True, return_lse=True, **kw)
    assert_close(out[..., rows, :], e_out[..., rows, :], dtype,
                 naive_attention(q, k, v, **kw)[0][..., rows, :])
    assert_close(lse[..., rows], e_lse[..., rows], dtype,
                 naive_attention(q, k, v, **kw)[2][..., rows])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
def test_nan_in_query_propagates_to_its_row_only(dtype, rng):
    q, k, v = make_qkv(rng, (2, 3), 6, 8, 5, 4, dtype)
    q = q.copy()
    q[1, 2, 3, 0] = np.nan
    out, w, lse = cattn.attention(q, k, v, return_weights=True, return_lse=True)
    assert np.isnan(out[1, 2, 3]).all()
    assert np.isnan(lse[1, 2, 3])
    rest = np.ones(out.shape[:-1], bool)
    rest[1, 2, 3] = False
    assert np.isfinite(out[rest]).all()
    assert np.isfinite(lse[rest]).all()
    check_attention((out, w, lse), q, k, v, return_weights=True, return_lse=True)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
def test_nan_in_attended_key_and_value(dtype, rng):
    q, k, v = make_qkv(rng, (1, 2), 6, 8, 5, 4, dtype)
    k, v = k.copy(), v.copy()
    k[0, 0, 5, 1] = np.nan        # every query of head 0 attends key 5 (no causal)
    v[0, 1, 2, 3] = np.nan        # head 1: column 3 of the output becomes NaN
    out = cattn.attention(q, k, v)
    assert np.isnan(out[0, 0]).all()
    assert np.isnan(out[0, 1, :, 3]).all()
    assert np.isfinite(out[0, 1, :, :3]).all()
    check_attention(out, q, k, v)
    # with causal, key 5 of 8 (Lq 6 -> p = i + 2) is seen only by rows i >= 3
    out = cattn.attention(q, k, v, causal=True)
    assert np.isfinite(out[0, 0, :3]).all() and np.isnan(out[0, 0, 3:]).all()
    check_attention(out, q, k, v, causal=True)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", ["scale_1e30", "inputs_1e4"])
def test_huge_logits_stay_finite(case, dtype, rng):
    q, k, v = make_qkv(rng, (2, 2), 7, 11, 8, 3, dtype)
    kw = {}
    if case == "scale_1e30":
        kw["scale"] = 1e30
    else:
        q = (q * 1e4).astype(dtype)
        k = (k * 1e4).astype(dtype)
    out, w, lse = cattn.attention(q, k, v, return_weights=True, return_lse=True, **kw)
    assert np.isfinite(out).all() and np.isfinite(w).all() and np.isfinite(lse).all()
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    if dtype == np.float64:
        e_out, e_w, e_lse = ref.attention(q, k, v, return_weights=True, return_lse=True, **kw)
        np.testing.assert_allclose(out, e_out, atol=1e-6)
        np.testing.assert_allclose(lse, e_lse, rtol=1e-10)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("scale_shape", [(3,), (2, 3), (2, 1)])
def test_per_head_scale(scale_shape, dtype, rng):
    q, k, v = make_qkv(rng, (2, 3), 7, 9, 6, 4, dtype)
    scale = rng.uniform(0.2, 2.0, scale_shape)
    out, lse = cattn.attention(q, k, v, scale=scale, return_lse=True)
    check_attention((out, lse), q, k, v, scale=scale, return_lse=True)
    # head-by-head scalar calls agree
    full = np.broadcast_to(scale, (2, 3))
    for bi in range(2):
        for hi in range(3):
            one = cattn.attention(q[bi, hi], k[bi, hi], v[bi, hi], scale=float(full[bi, hi]))
            assert_close(out[bi, hi], one.astype(np.float64), dtype)


@pytest.mark.parametrize("score", SCORES)
def test_scalar_scale(score, rng):
    q, k, v = make_qkv(rng, (2,), 5, 6, 4, 3)
    out = cattn.attention(q, k, v, score=score, scale=0.37)
    check_attention(out, q, k, v, score=score, scale=0.37)


# ---------------------------------------------------------------------------
# building blocks: scores, softmax, aggregate
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("score", SCORES)
def test_scores(score, dtype, rng):
    q, k, _ = make_qkv(rng, (2, 3), 7, 9, 6, 4, dtype)
    aw = randn(rng, (6,), dtype) if score == "additive" else None
    s = cattn.scores(q, k, score=score, additive_weight=aw)
    assert s.shape == (2, 3, 7, 9) and s.dtype == dtype
    expected = ref.scores(q, k, score=score, additive_weight=aw)
    assert_close(s, expected, dtype)
    s2 = cattn.scores(q, k, score=score, scale=np.array([0.5, 1.0, 2.0]), additive_weight=aw)
    assert_close(s2, ref.scores(q, k, score=score, scale=np.array([0.5, 1.0, 2.0]),
                                additive_weight=aw), dtype)


def test_scores_gqa(rng):
    q = randn(rng, (2, 8, 5, 4))
    k = randn(rng, (2, 2, 7, 4))
    assert_close(cattn.scores(q, k), ref.scores(q, k), np.float64)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax(axis, dtype, rng):
    x = randn(rng, (4, 6, 5), dtype) * 3
    x[1, 2, :] = -np.inf
    x[:, 3, :] = -np.inf
    x[2, 0, 1] = 1e30 if dtype == np.float64 else 1e30
    got = cattn.softmax(x, axis=axis)
    assert got.dtype == dtype and got.shape == x.shape
    assert not np.isnan(got).any()
    assert_close(got, ref.softmax(x, axis=axis), dtype)


def test_softmax_all_neginf_row_is_zero():
    x = np.array([[-np.inf, -np.inf, -np.inf], [0.0, 1.0, 2.0]])
    got = cattn.softmax(x)
    assert np.all(got[0] == 0)
    np.testing.assert_allclose(got[1].sum(), 1.0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
def test_aggregate(dtype, rng):
    w = rng.random((2, 3, 7, 9)).astype(dtype)
    v = randn(rng, (2, 3, 9, 4), dtype)
    got = cattn.aggregate(w, v)
    assert got.dtype == dtype and got.shape == (2, 3, 7, 4)
    assert_close(got, ref.aggregate(w, v), dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("score", SCORES)
def test_composition_identity(score, dtype, rng):
    q, k, v = make_qkv(rng, (2, 3), 7, 9, 6, 4, dtype)
    composed = cattn.aggregate(cattn.softmax(cattn.scores(q, k, score=score)), v)
    direct = cattn.attention(q, k, v, score=score)
    assert_close(composed, direct.astype(np.float64), dtype)
    # and the oracle's own composition identity
    assert_close(ref.aggregate(ref.softmax(ref.scores(q, k, score=score)), v),
                 ref.attention(q, k, v, score=score), np.float64)


# ---------------------------------------------------------------------------
# return flags
# ---------------------------------------------------------------------------

def test_return_flags_order_and_shapes(rng):
    q, k, v = make_qkv(rng, (2, 3), 7, 9, 6, 4)
    out = cattn.attention(q, k, v)
    assert isinstance(out, np.ndarray) and out.shape == (2, 3, 7, 4)
    res = cattn.attention(q, k, v, return_weights=True)
    assert isinstance(res, tuple) and len(res) == 2
    assert res[0].shape == (2, 3, 7, 4) and res[1].shape == (2, 3, 7, 9)
    res = cattn.attention(q, k, v, return_lse=True)
    assert isinstance(res, tuple) and len(res) == 2
    assert res[0].shape == (2, 3, 7, 4) and res[1].shape == (2, 3, 7)
    res = cattn.attention(q, k, v, return_weights=True, return_lse=True)
    assert len(res) == 3
    assert res[0].shape == (2, 3, 7, 4) and res[1].shape == (2, 3, 7, 9)
    assert res[2].shape == (2, 3, 7)
    check_attention(res, q, k, v, return_weights=True, return_lse=True)
    np.testing.assert_allclose(res[1].sum(-1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
def test_returned_dtypes(dtype, rng):
    q, k, v = make_qkv(rng, (2,), 4, 5, 3, 2, dtype)
    out, w, lse = cattn.attention(q, k, v, return_weights=True, return_lse=True)
    assert out.dtype == dtype and w.dtype == dtype and lse.dtype == dtype


# ---------------------------------------------------------------------------
# merge
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("kw", [{}, {"causal": True}], ids=["plain", "causal"])
def test_merge_shards(kw, dtype, rng):
    lq, lk = 6, 20
    q, k, v = make_qkv(rng, (2, 3), lq, lk, 5, 4, dtype)
    mask = rng.random((lq, lk)) < 0.8
    full_out, full_lse = cattn.attention(q, k, v, mask=mask, return_lse=True, **kw)
    cuts = [(0, 7), (7, 7), (7, 13), (13, 20)]          # includes an empty shard
    outs, lses = [], []
    for a, b in cuts:
        # causal alignment depends on Lk, so express it as a mask on the shard
        m = mask[:, a:b].copy()
        if kw.get("causal"):
            m &= np.arange(a, b)[None, :] <= np.arange(lq)[:, None] + (lk - lq)
        o, l_ = cattn.attention(q, k[..., a:b, :], v[..., a:b, :], mask=m, return_lse=True)
        outs.append(o)
        lses.append(l_)
    assert np.all(lses[1] == -np.inf) and np.all(outs[1] == 0)
    out, lse = cattn.merge(outs, lses)
    assert_close(out, full_out.astype(np.float64), dtype)
    assert_close(lse, full_lse.astype(np.float64), dtype)
    check_attention((out, lse), q, k, v, mask=mask, return_lse=True, **kw)
    r_out, r_lse = ref.merge(outs, lses)
    assert_close(out, r_out, dtype)
    assert_close(lse, r_lse, dtype)


def test_merge_all_neginf():
    outs = [np.full((2, 3, 4), np.nan), np.zeros((2, 3, 4))]
    lses = [np.full((2, 3), -np.inf), np.full((2, 3), -np.inf)]
    out, lse = cattn.merge(outs, lses)
    assert np.all(out == 0) and np.all(lse == -np.inf)


def test_merge_skips_neginf_shard_with_garbage(rng):
    o1 = randn(rng, (3, 4))
    l1 = randn(rng, (3,))
    out, lse = cattn.merge([o1, np.full((3, 4), np.inf)], [l1, np.full(3, -np.inf)])
    assert_close(out, o1, np.float64)
    assert_close(lse, l1, np.float64)


# ---------------------------------------------------------------------------
# dtype rules
# ---------------------------------------------------------------------------

def test_float16_in_float16_out(rng):
    q, k, v = make_qkv(rng, (2, 3), 9, 13, 8, 5, np.float16)
    out, lse = cattn.attention(q, k, v, return_lse=True)
    assert out.dtype == np.float16
    check_attention(out, q, k, v, dtype=np.float16)
    check_attention((out, lse), q, k, v, dtype=np.float16, return_lse=True)


@pytest.mark.parametrize("in_dtype", [np.int32, np.int64, np.uint8, np.bool_])
def test_ints_and_bools_give_float64(in_dtype, rng):
    q = rng.integers(0, 3, (2, 5, 4)).astype(in_dtype)
    k = rng.integers(0, 3, (2, 6, 4)).astype(in_dtype)
    v = rng.integers(0, 3, (2, 6, 3)).astype(in_dtype)
    out = cattn.attention(q, k, v)
    assert out.dtype == np.float64
    check_attention(out, q, k, v)


@pytest.mark.parametrize("dts", [
    (np.float32, np.float64, np.float32),
    (np.float64, np.float32, np.float32),
    (np.float32, np.float32, np.float64),
    (np.int64, np.float64, np.float64),
])
def test_mixed_dtypes_promote_like_numpy(dts, rng):
    q = randn(rng, (2, 5, 4), dts[0]) if dts[0] != np.int64 else rng.integers(-2, 3, (2, 5, 4))
    k = randn(rng, (2, 6, 4), dts[1])
    v = randn(rng, (2, 6, 3), dts[2])
    out = cattn.attention(q, k, v)
    assert out.dtype == np.result_type(*dts)
    check_attention(out, q, k, v)


@pytest.mark.parametrize("bad", ["complex", "object", "str"])
@pytest.mark.parametrize("which", ["query", "key", "value"])
def test_unsupported_dtypes_raise_typeerror(bad, which, rng):
    args = dict(zip(["query", "key", "value"], make_qkv(rng, (2,), 3, 4, 2, 2)))
    x = args[which]
    if bad == "complex":
        args[which] = x.astype(np.complex128)
    elif bad == "object":
        args[which] = x.astype(object)
    else:
        args[which] = x.astype(str)
    with pytest.raises(TypeError):
        cattn.attention(args["query"], args["key"], args["value"])


def test_lists_accepted(rng):
    q, k, v = make_qkv(rng, (2,), 3, 4, 2, 2)
    out = cattn.attention(q.tolist(), k.tolist(), v.tolist())
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    check_attention(out, q, k, v)


# ---------------------------------------------------------------------------
# out=
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
def test_out_argument(dtype, rng):
    q, k, v = make_qkv(rng, (2, 3), 7, 9, 6, 4, dtype)
    buf = np.full((2, 3, 7, 4), np.nan, dtype)
    res = cattn.attention(q, k, v, out=buf)
    assert res is buf
    check_attention(buf, q, k, v)
    buf2 = np.full((2, 3, 7, 4), np.nan, dtype)
    res = cattn.attention(q, k, v, out=buf2, return_lse=True)
    assert res[0] is buf2
    check_attention(res, q, k, v, return_lse=True)


@pytest.mark.parametrize("problem", ["shape", "dtype", "readonly"])
def test_out_argument_invalid(problem, rng):
    q, k, v = make_qkv(rng, (2, 3), 7, 9, 6, 4)
    if problem == "shape":
        buf = np.empty((2, 3, 7, 5))
    elif problem == "dtype":
        buf = np.empty((2, 3, 7, 4), np.float32)
    else:
        buf = np.empty((2, 3, 7, 4))
        buf.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        cattn.attention(q, k, v, out=buf)


# ---------------------------------------------------------------------------
# zero-size dimensions
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("dims", [
    (0, 3, 5, 7, 4, 3),     # B = 0
    (2, 3, 0, 7, 4, 3),     # Lq = 0
    (2, 3, 5, 7, 4, 0),     # Dv = 0
], ids=["B0", "Lq0", "Dv0"])
def test_zero_size(dims, dtype, rng):
    b, h, lq, lk, d, dv = dims
    q, k, v = make_qkv(rng, (b, h), lq, lk, d, dv, dtype)
    out, w, lse = cattn.attention(q, k, v, return_weights=True, return_lse=True)
    assert out.shape == (b, h, lq, dv) and out.dtype == dtype
    assert w.shape == (b, h, lq, lk) and lse.shape == (b, h, lq)
    check_attention((out, w, lse), q, k, v, return_weights=True, return_lse=True)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
def test_zero_keys(dtype, rng):
    q, k, v = make_qkv(rng, (2, 3), 5, 0, 4, 3, dtype)
    out, w, lse = cattn.attention(q, k, v, return_weights=True, return_lse=True)
    assert out.shape == (2, 3, 5, 3) and np.all(out == 0)
    assert w.shape == (2, 3, 5, 0)
    assert lse.shape == (2, 3, 5) and np.all(lse == -np.inf)


@pytest.mark.parametrize("score", ["dot", "scaled_dot"])
def test_zero_feature_dim(score, rng):
    """D = 0: every score is 0, so each output row is the mean of V."""
    q, k, v = make_qkv(rng, (2,), 3, 5, 0, 4)
    out = cattn.attention(q, k, v, score=score)
    assert out.shape == (2, 3, 4)
    np.testing.assert_allclose(out, np.broadcast_to(v.mean(-2, keepdims=True), out.shape),
                               rtol=1e-12)
    check_attention(out, q, k, v, score=score)


# ---------------------------------------------------------------------------
# threads
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
def test_num_threads_agree(dtype, rng):
    q, k, v = make_qkv(rng, (2, 4), 70, 90, 16, 8, dtype)
    one = cattn.attention(q, k, v, causal=True, num_threads=1, return_lse=True)
    two = cattn.attention(q, k, v, causal=True, num_threads=2, return_lse=True)
    for a, b in zip(one, two):
        assert_close(a, b.astype(np.float64), dtype)
    check_attention(two, q, k, v, causal=True, return_lse=True)


def test_get_set_num_threads():
    before = cattn.get_num_threads()
    assert isinstance(before, int) and before >= 1
    try:
        prev = cattn.set_num_threads(2)
        assert prev == before
        assert cattn.get_num_threads() == 2
        prev = cattn.set_num_threads(1)
        assert prev == 2
        assert cattn.get_num_threads() == 1
    finally:
        cattn.set_num_threads(before)
    assert cattn.get_num_threads() == before


def test_concurrent_python_threads(rng):
    cases = [make_qkv(rng, (2, 3), 31, 47, 8, 5, dt)
             for dt in (np.float32, np.float64, np.float32, np.float64)]
    expected = [ref.attention(*c, causal=True) for c in cases]
    results = [[] for _ in cases]
    errors = []
    barrier = threading.Barrier(len(cases))

    def work(idx):
        try:
            barrier.wait()
            for _ in range(10):
                results[idx].append(cattn.attention(*cases[idx], causal=True))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for idx, (c, e) in enumerate(zip(cases, expected)):
        dt = c[0].dtype
        base = naive_attention(*c, np.float32, causal=True)[0] if dt == np.float32 else None
        assert len(results[idx]) == 10
        for r in results[idx]:
            assert_close(r, e, dt, base)


def test_serial_threshold_follows_wait_policy():
    """Calls below the threshold run serially; the threshold is higher when
    OpenMP workers sleep (OMP_WAIT_POLICY=PASSIVE), where waking one costs
    more than a small call."""
    from cattn import _threads
    assert _threads._serial_work("") == 1 << 18
    assert _threads._serial_work("ACTIVE") == 1 << 18
    assert _threads._serial_work(" passive ") == 1 << 23
    small = _threads.SERIAL_WORK - 1
    assert _threads.threads_for(4, small) == 1
    assert _threads.threads_for(2, _threads.SERIAL_WORK) == 2
