"""float16 queries read as float16, float16/bfloat16 results written
narrow, by the kernels (cattn_io_format): the same bits as widening q and
narrowing the float32 result in NumPy, with no float32 copy of either."""
import tracemalloc

import numpy as np
import pytest

import cattn
from cattn import reference as ref
from _oracle import assert_close

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = ml_dtypes.bfloat16


def _numpy_path(q, k, v, **kw):
    """What the call computed before: q widened to float32, the float32
    result narrowed by NumPy."""
    res = cattn.attention(q.astype(np.float32), k, v, **kw)
    if isinstance(res, tuple):
        return (res[0].astype(q.dtype),) + tuple(r.astype(q.dtype) for r in res[1:])
    return res.astype(q.dtype)


CASES = [
    ((2, 4, 150, 48), (2, 4, 170, 48), {}),                         # tile path
    ((2, 4, 150, 48), (2, 4, 170, 48), {"causal": True, "return_lse": True}),
    ((1, 8, 1, 64), (1, 2, 300, 64), {}),                            # GQA decode, folded
    ((3, 2, 5, 32), (3, 2, 90, 32), {"window": (20, 0), "softcap": 4.0}),   # decode
    ((2, 2, 40, 16), (2, 2, 40, 16), {"return_weights": True}),     # weights pass
]


@pytest.mark.parametrize("qs,ks,kw", CASES)
@pytest.mark.parametrize("threads", [1, 2])
def test_float16_same_bits_as_numpy_path(qs, ks, kw, threads):
    rng = np.random.default_rng(len(qs) + qs[2])
    q = rng.standard_normal(qs).astype(np.float16)
    k = rng.standard_normal(ks).astype(np.float16)
    v = rng.standard_normal(ks[:-1] + (24,)).astype(np.float16)       # Dv != D
    got = cattn.attention(q, k, v, num_threads=threads, **kw)
    exp = _numpy_path(q, k, v, num_threads=threads, **kw)
    got, exp = (got, exp) if isinstance(got, tuple) else ((got,), (exp,))
    for g, e in zip(got, exp):
        assert g.dtype == np.float16
        np.testing.assert_array_equal(g.view(np.uint16), e.view(np.uint16))
    assert_close(got[0], ref.attention(q, k, v, **{a: b for a, b in kw.items()
                                                   if a not in ("return_lse",
                                                                "return_weights")}),
                 np.float16)


def test_float16_rounding_ties_subnormals_and_specials():
    """Outputs in the subnormal range, exact ties (two keys, equal
    weights), inf and NaN: round to nearest even exactly as NumPy."""
    rng = np.random.default_rng(9)
    q = np.zeros((1, 1, 64, 8), np.float16)          # equal weights for every key
    k = rng.standard_normal((1, 1, 2, 8)).astype(np.float16)
    v = rng.standard_normal((1, 1, 2, 8)).astype(np.float16)
    v[..., 0, :] = np.float16(1.0)
    v[..., 1, :] = np.array([1 + 2 ** -10, 1 + 3 * 2 ** -10, 2 ** -24, 3 * 2 ** -24,
                             65504, -65504, np.inf, np.nan], np.float16)
    v[..., 0, 2:4] = 0
    got = cattn.attention(q, k, v)
    np.testing.assert_array_equal(got.view(np.uint16)[~np.isnan(got)],
                                  _numpy_path(q, k, v).view(np.uint16)[~np.isnan(got)])
    assert np.isnan(got[..., 7]).all() and np.isposinf(got[..., 6]).all()
    small = (rng.standard_normal((1, 2, 40, 8)) * 2.0 ** -18).astype(np.float16)
    qq = rng.standard_normal((1, 2, 30, 8)).astype(np.float16)
    np.testing.assert_array_equal(cattn.attention(qq, small, small).view(np.uint16),
                                  _numpy_path(qq, small, small).view(np.uint16))


def test_bfloat16_result_same_bits():
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal(s).astype(BF16)
               for s in ((2, 3, 70, 32), (2, 3, 90, 32), (2, 3, 90, 32)))
    got = cattn.attention(q, k, v, causal=True)
    f32 = cattn.attention(q, k, v, causal=True, out=np.empty(got.shape, np.float32))
    assert got.dtype == BF16
    np.testing.assert_array_equal(got.view(np.uint16), f32.astype(BF16).view(np.uint16))


def test_out_arguments():
    """out= of float16, strided; out= of float32 for a float16 call is
    refused or honoured exactly as before."""
    rng = np.random.default_rng(4)
    q = rng.standard_normal((2, 2, 33, 16)).astype(np.float16)
    k = rng.standard_normal((2, 2, 50, 16)).astype(np.float16)
    v = rng.standard_normal((2, 2, 50, 16)).astype(np.float16)
    big = np.zeros((2, 2, 33, 40), np.float16)
    out = big[..., ::2][..., :16]
    assert cattn.attention(q, k, v, out=out) is out
    np.testing.assert_array_equal(out, _numpy_path(q, k, v))
    assert (big[..., 1::2] == 0).all()


def test_no_float32_copy_of_query_or_result():
    """A float16 call allocates its float16 result and nothing of q's or the
    result's size in float32 (tracemalloc sees NumPy's allocations)."""
    rng = np.random.default_rng(5)
    q = rng.standard_normal((1, 4, 2048, 64)).astype(np.float16)    # 1 MiB
    k = rng.standard_normal((1, 4, 256, 64)).astype(np.float16)
    v = rng.standard_normal((1, 4, 256, 64)).astype(np.float16)
    cattn.attention(q, k, v)
    tracemalloc.start()
    try:
        out = cattn.attention(q, k, v)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.dtype == np.float16
    # the result (1 MiB) and small per-call arrays; a float32 copy of q or
    # of the result would add 2 MiB
    assert peak < out.nbytes + (512 << 10), peak
