"""The GQA decode fold: with one query, the query heads sharing a key/value
head are computed as one item.  Every supported option, and the cases that
must not be folded, against the float64 oracle."""
import numpy as np
import pytest

import cattn
from cattn import reference as ref


@pytest.mark.parametrize("kw", [
    {}, {"causal": True}, {"score": "cosine", "softcap": 3.0, "sinks": 0.25},
    {"score": "additive"}, {"scale": 0.7},
])
def test_fold_matches_reference(kw, rng=np.random.default_rng(0)):
    q = rng.standard_normal((3, 8, 1, 16))
    k = rng.standard_normal((3, 2, 70, 16))
    v = rng.standard_normal((3, 2, 70, 12))
    lengths = np.array([5, 70, 0])
    out, lse = cattn.attention(q, k, v, kv_lengths=lengths, return_lse=True, **kw)
    e_out, e_lse = ref.attention(q, k, v, kv_lengths=lengths, return_lse=True, **kw)
    assert out.shape == (3, 8, 1, 12) and lse.shape == (3, 8, 1)
    np.testing.assert_allclose(out, e_out, atol=1e-12, rtol=1e-10)
    np.testing.assert_allclose(lse, e_lse, atol=1e-12, rtol=1e-10)


def test_per_head_lengths_and_other_layouts():
    rng = np.random.default_rng(1)
    # 3-D: a 1-D kv_lengths runs along the (query) heads, so no folding
    q = rng.standard_normal((8, 1, 16))
    k = rng.standard_normal((2, 50, 16))
    v = rng.standard_normal((2, 50, 8))
    lengths = np.arange(1, 9) * 5
    np.testing.assert_allclose(cattn.attention(q, k, v, kv_lengths=lengths),
                               ref.attention(q, k, v, kv_lengths=lengths), atol=1e-12)
    # a strided (non-contiguous) query and float32
    q4 = rng.standard_normal((2, 8, 3, 16))[:, :, 1:2].astype(np.float32)
    k4 = rng.standard_normal((2, 4, 40, 16)).astype(np.float32)
    v4 = rng.standard_normal((2, 4, 40, 16)).astype(np.float32)
    np.testing.assert_allclose(cattn.attention(q4, k4, v4), ref.attention(q4, k4, v4),
                               atol=2e-6, rtol=1e-5)
    # a window depends on the query position: must give the unfolded result
    np.testing.assert_allclose(cattn.attention(q4, k4, v4, window=(3, 0)),
                               ref.attention(q4, k4, v4, window=(3, 0)), atol=2e-6, rtol=1e-5)
