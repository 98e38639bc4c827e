"""Production features: variable lengths, segments, softcap, sinks, key mass,
mixed-precision K/V.

The build under test may not support these keyword arguments yet: a test is
skipped only when the call raises TypeError for an *unexpected keyword
argument* (see :func:`_oracle.call_or_skip`); any other failure fails.
"""

import numpy as np
import pytest

import cattn
import cattn.reference as ref
from _oracle import (FLOAT_DTYPES, SCORES, assert_close, call_or_skip,
                      check_attention, make_qkv, naive_attention, randn)

IDS = ["f32", "f64"]


def attn(*args, **kw):
    return call_or_skip(cattn.attention, *args, **kw)


# ---------------------------------------------------------------------------
# kv_lengths / q_lengths
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=IDS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_kv_lengths_1d(causal, dtype, rng):
    q, k, v = make_qkv(rng, (3, 2), 6, 11, 5, 4, dtype)
    kv_len = np.array([11, 4, 0])
    kw = {"kv_lengths": kv_len, "causal": causal}
    res = attn(q, k, v, return_weights=True, return_lse=True, **kw)
    check_attention(res, q, k, v, return_weights=True, return_lse=True, **kw)
    out, w, lse = res
    assert np.all(w[1, ..., 4:] == 0)
    assert np.all(out[2] == 0) and np.all(lse[2] == -np.inf) and np.all(w[2] == 0)
    # same as slicing the keys of each sequence
    for b in range(2):
        sl = slice(0, kv_len[b])
        if not causal:
            one = cattn.attention(q[b], k[b, :, sl], v[b, :, sl])
            assert_close(out[b], one.astype(np.float64), dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=IDS)
def test_kv_lengths_per_head(dtype, rng):
    q, k, v = make_qkv(rng, (2, 3), 5, 9, 4, 3, dtype)
    kv_len = np.array([[9, 1, 5], [0, 7, 3]])
    res = attn(q, k, v, kv_lengths=kv_len, return_lse=True)
    check_attention(res, q, k, v, kv_lengths=kv_len, return_lse=True)
    # broadcasting (B, 1) against (B, H)
    kv_len = np.array([[3], [8]])
    res = attn(q, k, v, kv_lengths=kv_len, return_lse=True)
    check_attention(res, q, k, v, kv_lengths=kv_len, return_lse=True)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_kv_lengths_padding_does_not_leak(bad, rng):
    q, k, v = make_qkv(rng, (2, 2), 4, 8, 5, 3)
    k[0, :, 5:] = bad
    v[0, :, 5:] = bad
    k[1, :, 2:] = bad
    v[1, :, 2:] = bad
    out, lse = attn(q, k, v, kv_lengths=np.array([5, 2]), return_lse=True)
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    check_attention((out, lse), q, k, v, kv_lengths=np.array([5, 2]), return_lse=True)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=IDS)
def test_q_lengths(dtype, rng):
    q, k, v = make_qkv(rng, (3, 2), 7, 9, 5, 4, dtype)
    q_len = np.array([7, 3, 0])
    q[1, :, 3:] = np.nan                     # padded queries must not matter
    kw = {"q_lengths": q_len}
    out, w, lse = attn(q, k, v, return_weights=True, return_lse=True, **kw)
    assert np.all(out[1, :, 3:] == 0) and np.all(w[1, :, 3:] == 0)
    assert np.all(lse[1, :, 3:] == -np.inf)
    assert np.all(out[2] == 0) and np.all(lse[2] == -np.inf)
    assert not np.isnan(out).any()
    check_attention((out, w, lse), q, k, v, return_weights=True, return_lse=True, **kw)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=IDS)
def test_q_and_kv_lengths_causal_gqa(dtype, rng):
    q, _, _ = make_qkv(rng, (2, 4), 6, 10, 8, 5, dtype)
    _, k, v = make_qkv(rng, (2, 2), 6, 10, 8, 5, dtype)
    kw = {"q_lengths": np.array([6, 2]), "kv_lengths": np.array([10, 5]), "causal": True}
    res = attn(q, k, v, return_weights=True, return_lse=True, **kw)
    check_attention(res, q, k, v, return_weights=True, return_lse=True, **kw)


# ---------------------------------------------------------------------------
# segments
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=IDS)
@pytest.mark.parametrize("layout", ["per_batch", "shared"])
def test_segments(layout, dtype, rng):
    q, k, v = make_qkv(rng, (2, 3), 8, 8, 5, 4, dtype)
    if layout == "per_batch":
        qs = np.array([[0, 0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 1, 1, 3, 3]])[:, None, :]
        ks = qs.copy()
    else:
        qs = np.array([0, 0, 1, 1, 1, 2, 2, 5])
        ks = np.array([0, 1, 1, 1, 2, 2, 2, 2])    # query segment 5 sees nothing
    kw = {"q_segments": qs, "kv_segments": ks}
    res = attn(q, k, v, return_weights=True, return_lse=True, **kw)
    check_attention(res, q, k, v, return_weights=True, return_lse=True, **kw)
    res_c = attn(q, k, v, causal=True, return_lse=True, **kw)
    check_attention(res_c, q, k, v, causal=True, return_lse=True, **kw)


@pytest.mark.parametrize("which", ["q_segments", "kv_segments"])
def test_segments_need_both(which, rng):
    q, k, v = make_qkv(rng, (2,), 4, 4, 3, 2)
    with pytest.raises(ValueError, match="segments"):
        attn(q, k, v, **{which: np.zeros(4, np.int64)})


# ---------------------------------------------------------------------------
# softcap and sinks
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=IDS)
@pytest.mark.parametrize("score", SCORES)
def test_softcap(score, dtype, rng):
    q, k, v = make_qkv(rng, (2, 3), 7, 9, 6, 4, dtype)
    q = (q * 4).astype(dtype)
    bias = randn(rng, (7, 9), dtype)
    kw = {"softcap": 2.5, "score": score, "bias": bias, "scale": 0.8}
    res = attn(q, k, v, return_weights=True, return_lse=True, **kw)
    check_attention(res, q, k, v, return_weights=True, return_lse=True, **kw)
    lse = res[2]
    # capped scores lie in (-c + bias, c + bias): lse <= c + max bias + log(Lk)
    assert np.all(lse <= 2.5 + bias.max() + np.log(9) + 1e-5)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=IDS)
def test_sinks(dtype, rng):
    q, k, v = make_qkv(rng, (2, 3), 6, 8, 5, 4, dtype)
    sinks = np.array([-1.0, 0.5, 3.0])
    mask = rng.random((6, 8)) < 0.6
    mask[2] = False                             # a row with no key
    kw = {"sinks": sinks, "mask": mask}
    out, w, lse = attn(q, k, v, return_weights=True, return_lse=True, **kw)
    check_attention((out, w, lse), q, k, v, return_weights=True, return_lse=True, **kw)
    # empty row: output 0, weights 0, lse = sink
    assert np.all(out[..., 2, :] == 0) and np.all(w[..., 2, :] == 0)
    np.testing.assert_allclose(lse[..., 2], np.broadcast_to(sinks, (2, 3)), rtol=1e-6)
    # the sink takes mass: rows sum to less than 1
    assert np.all(w.astype(np.float64).sum(-1) < 1)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=IDS)
def test_sinks_per_batch_and_head(dtype, rng):
    q, k, v = make_qkv(rng, (2, 3), 5, 7, 4, 3, dtype)
    sinks = rng.standard_normal((2, 3))
    res = attn(q, k, v, sinks=sinks, causal=True, return_lse=True)
    check_attention(res, q, k, v, sinks=sinks, causal=True, return_lse=True)


# ---------------------------------------------------------------------------
# key mass
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=IDS)
@pytest.mark.parametrize("kw", [{}, {"causal": True}, {"window": (2, 1)}],
                         ids=["plain", "causal", "window"])
def test_key_mass(kw, dtype, rng):
    q, k, v = make_qkv(rng, (2, 3), 9, 13, 6, 4, dtype)
    res = attn(q, k, v, return_weights="key_mass", return_lse=True, **kw)
    assert len(res) == 3
    out, mass, lse = res
    assert mass.shape == (2, 3, 13)
    check_attention(res, q, k, v, return_weights="key_mass", return_lse=True, **kw)
    _, w = cattn.attention(q, k, v, return_weights=True, **kw)
    assert_close(mass, w.astype(np.float64).sum(-2), dtype)
    np.testing.assert_allclose(mass.astype(np.float64).sum(-1), 9,
                               rtol=1e-10 if dtype == np.float64 else 1e-5)


def test_key_mass_tile_tail(rng):
    q, k, v = make_qkv(rng, (1, 2), 143, 587, 21, 19, np.float32)
    res = attn(q, k, v, return_weights="key_mass", causal=True)
    check_attention(res, q, k, v, return_weights="key_mass", causal=True)


# ---------------------------------------------------------------------------
# float16 K/V with float32 Q
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [((1, 8), (1, 2), 1, 700), ((2, 4), (2, 4), 37, 129)],
                         ids=["decode_gqa", "prefill"])
def test_float16_kv_float32_q(shape, rng):
    q_lead, kv_lead, lq, lk = shape
    q = randn(rng, q_lead + (lq, 32), np.float32)
    k = randn(rng, kv_lead + (lk, 32), np.float16)
    v = randn(rng, kv_lead + (lk, 16), np.float16)
    out, lse = attn(q, k, v, return_lse=True)
    assert out.dtype == np.float32
    check_attention((out, lse), q, k, v, dtype=np.float32, return_lse=True)
    # identical (within float32 rounding) to upcasting K/V first
    up = cattn.attention(q, k.astype(np.float32), v.astype(np.float32))
    assert_close(out, up.astype(np.float64), np.float32)


@pytest.mark.parametrize("D, Dv", [(128, 130), (64, 64), (7, 257)])
def test_float16_decode_wide_rows_with_mask(D, Dv, rng):
    """The float16 decode path with value rows wide enough for its
    register-blocked P.V (8 vectors and more, plus a tail), a mask, and
    NaN/inf in the masked value rows, which must not leak."""
    lk = 1100
    q = randn(rng, (2, 4, 3, D), np.float32)
    k = randn(rng, (2, 2, lk, D), np.float16)
    v = randn(rng, (2, 2, lk, Dv), np.float16)
    mask = rng.random((3, lk)) > 0.4
    mask[:, 200:330] = False                     # two whole chunks of no key
    dead = np.flatnonzero(~mask.any(axis=0))     # keys no query sees
    v[..., dead[::2], :] = np.nan
    v[..., dead[1::2], 0] = np.inf
    k[..., dead[::3], :] = np.nan
    vmasked = np.where(mask.any(axis=0)[:, None], v, 0).astype(np.float16)
    kmasked = np.where(mask.any(axis=0)[:, None], k, 0).astype(np.float16)
    out = attn(q, k, v, mask=mask)
    assert np.isfinite(out).all()
    check_attention(out, q, kmasked, vmasked, dtype=np.float32, mask=mask)
    # unmasked, finite rows: the plain path through the same blocks
    out = attn(q, kmasked, vmasked)
    check_attention(out, q, kmasked, vmasked, dtype=np.float32)


# ---------------------------------------------------------------------------
# everything at once
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=IDS)
def test_all_features_together(dtype, rng):
    q, _, _ = make_qkv(rng, (2, 4), 9, 12, 6, 5, dtype)
    _, k, v = make_qkv(rng, (2, 2), 9, 12, 6, 5, dtype)
    kw = {
        "kv_lengths": np.array([12, 7]),
        "q_lengths": np.array([9, 5]),
        "q_segments": np.array([[0] * 4 + [1] * 5, [0] * 9])[:, None, :],
        "kv_segments": np.array([[0] * 6 + [1] * 6, [0] * 12])[:, None, :],
        "softcap": 3.0,
        "sinks": np.array([0.0, -1.0, 1.0, 2.0]),
        "causal": True,
        "bias": randn(rng, (9, 12), dtype),
        "scale": np.array([0.3, 0.5, 0.7, 0.9]),
    }
    res = attn(q, k, v, return_weights=True, return_lse=True, **kw)
    check_attention(res, q, k, v, return_weights=True, return_lse=True, **kw)
