"""Reliability, argument kinds: read-only inputs, exact segment ids, the
ValueError/TypeError contract at the extremes of the scalar options.

Promises of docs/reliability.md ("Guarantees"): read-only inputs work in
every entry point; segment ids compare exactly whatever their integer
dtypes; a bad argument is a ValueError or TypeError naming it.
"""
import numpy as np
import pytest

import cattn
import cattn.reference as ref


@pytest.fixture
def arrays():
    rng = np.random.default_rng(5)
    q = rng.standard_normal((2, 7, 8))
    k = rng.standard_normal((2, 9, 8))
    v = rng.standard_normal((2, 9, 5))
    return q, k, v


def _read_only(x):
    y = x.copy()
    y.flags.writeable = False
    return y


def _memmap_read_only(x, path):
    m = np.memmap(path, dtype=x.dtype, mode="w+", shape=x.shape)
    m[:] = x
    m.flush()
    del m
    return np.memmap(path, dtype=x.dtype, mode="r", shape=x.shape)


@pytest.mark.parametrize("kind", ["writeable=False", "memmap r"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_read_only_inputs_in_every_entry_point(arrays, tmp_path, kind, dtype):
    """``scores`` and ``aggregate`` rejected read-only inputs ("buffer
    source array is read-only": non-const memoryviews in the GEMM kernel)."""
    q, k, v = (a.astype(dtype) for a in arrays)
    w = ref.softmax(ref.scores(q, k)).astype(dtype)
    if kind == "memmap r":
        ro = [_memmap_read_only(x, tmp_path / f"{i}.bin") for i, x in enumerate((q, k, v, w))]
    else:
        ro = [_read_only(x) for x in (q, k, v, w)]
    rq, rk, rv, rw = ro
    assert not any(x.flags.writeable for x in ro)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for score in ("scaled_dot", "cosine", "additive"):
        np.testing.assert_allclose(cattn.scores(rq, rk, score=score),
                                   ref.scores(q, k, score=score), rtol=rtol, atol=rtol)
    for nt in (1, 2):
        np.testing.assert_allclose(cattn.scores(rq, rk, num_threads=nt),
                                   ref.scores(q, k), rtol=rtol, atol=rtol)
        np.testing.assert_allclose(cattn.aggregate(rw, rv, num_threads=nt),
                                   ref.aggregate(w, v), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(cattn.softmax(rw), ref.softmax(w), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(cattn.attention(rq, rk, rv), ref.attention(q, k, v),
                               rtol=rtol * 10, atol=rtol * 10)


def test_mixed_dtype_segment_ids_compare_exactly():
    """uint64 id 2**64 - 1 equalled int64 id -1 after a cast to int64: the
    queries attended the wrong segment."""
    rng = np.random.default_rng(6)
    q = rng.standard_normal((6, 4))
    k = rng.standard_normal((5, 4))
    v = rng.standard_normal((5, 3))
    big = np.uint64(2**64 - 1)
    q_seg = np.array([big, big, 3, 3, 2**63, 0], dtype=np.uint64)
    cases = [
        np.array([-1, -1, 3, 0, 5], dtype=np.int64),              # -1 is not 2**64 - 1
        np.array([2**64 - 1, 2**63, 3, 2**64 - 1, 7], dtype=np.uint64),
        np.array([-1, 0, 3, -(2**63), 0], dtype=np.int64),
        np.array([0, 3, 3, 1, 0], dtype=np.int8),
        np.array([True, False, True, False, True]),
    ]
    for kv_seg in cases:
        attend = q_seg.astype(object)[:, None] == kv_seg.astype(object)[None, :]
        want = ref.attention(q, k, v, mask=attend)
        got = cattn.attention(q, k, v, q_segments=q_seg, kv_segments=kv_seg)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        # swapped roles: the kv side holds the uint64 ids
        attend_t = kv_seg.astype(object)[:, None] == q_seg[:5].astype(object)[None, :]
        got = cattn.attention(k, q[:5], v, q_segments=kv_seg, kv_segments=q_seg[:5])
        np.testing.assert_allclose(got, ref.attention(k, q[:5], v, mask=attend_t),
                                   rtol=1e-12, atol=1e-12)


def test_segment_ids_broadcast_with_codes():
    """Ids beyond int64 keep their broadcasting (a (1, L) row against (H, L))."""
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal((3, 4, 2)) for _ in range(3))
    q_seg = np.array([[2**64 - 1, 1, 1, 2**64 - 1]], dtype=np.uint64)   # (1, Lq)
    kv_seg = np.array([[-1, 1, 0, 1], [1, 1, 1, 1], [-1, -1, -1, -1]])  # (3, Lk)
    attend = q_seg.astype(object)[:, :, None] == kv_seg.astype(object)[:, None, :]
    got = cattn.attention(q, k, v, q_segments=q_seg, kv_segments=kv_seg)
    np.testing.assert_allclose(got, ref.attention(q, k, v, mask=attend.astype(bool)),
                               rtol=1e-12, atol=1e-12)


def test_same_dtype_int64_segments_are_not_copied():
    from cattn._validate import segment_ids
    a = np.arange(5, dtype=np.int64)
    b = np.arange(7, dtype=np.int64)
    qa, kb = segment_ids(a, b)
    assert qa is a and kb is b


@pytest.mark.parametrize("kw, exc", [
    ({"softcap": 10**400}, ValueError),
    ({"softcap": -10**400}, ValueError),
    ({"return_weights": np.array([True, False])}, ValueError),
    ({"return_weights": np.array(True)}, ValueError),
])
def test_extreme_scalar_options_are_clean_errors(arrays, kw, exc):
    """softcap=10**400 raised OverflowError and return_weights=np.array(...)
    NumPy's "truth value is ambiguous"."""
    q, k, v = arrays
    name = next(iter(kw))
    with pytest.raises(exc, match=name):
        cattn.attention(q, k, v, **kw)
