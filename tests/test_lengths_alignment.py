"""Causal and window aligned at each sequence's filled length.

With ``kv_lengths`` / ``q_lengths`` given, query i sits at key position
``p = i + kv_len - q_len`` (``kv_len`` = kv_lengths, else Lk; ``q_len`` =
q_lengths, else Lq): ``causal`` keeps ``j <= p`` and the window is centred
on ``p``.  Every case is checked against the float64 oracle and against
the same call on arrays sliced to their real lengths (without lengths),
which must give the same result: padding is invisible.
"""
import numpy as np
import pytest

import cattn
from cattn import _kernels
from cattn import reference as ref
from cattn._plan import plan_attention
from cattn._validate import validate_attention

from _oracle import check_attention

DEC = _kernels.DECODE_MAX_LQ
TOL64 = 1e-10


def _sliced(q, k, v, kv_lengths, q_lengths, return_weights=False, **kw):
    """The oracle run on each sequence's real rows only (no lengths), padded
    back to the full shapes: output 0, weights 0, lse -inf past the
    lengths.  q, k, v: (B, H, L, D) (k/v heads may divide q's: GQA)."""
    B, H, Lq = q.shape[:3]
    Lk, Dv = k.shape[2], v.shape[3]
    out = np.zeros((B, H, Lq, Dv))
    lse = np.full((B, H, Lq), -np.inf)
    w = np.zeros((B, H, Lq, Lk))
    for b in range(B):
        kvl = Lk if kv_lengths is None else int(kv_lengths[b])
        ql = Lq if q_lengths is None else int(q_lengths[b])
        if kvl == 0 or ql == 0:
            continue
        res = ref.attention(q[b, :, :ql], k[b, :, :kvl], v[b, :, :kvl],
                            return_weights=True, return_lse=True, **kw)
        out[b, :, :ql], w[b, :, :ql, :kvl], lse[b, :, :ql] = res
    if return_weights == "key_mass":
        return out, w.sum(axis=-2), lse
    return out, w, lse


def _both(q, k, v, kv_lengths=None, q_lengths=None, return_weights=False, dtype=None,
          num_threads=None, **kw):
    """cattn against the oracle (tolerances of tests/_oracle.py) and the
    oracle against the sliced arrays (float64: exact up to rounding)."""
    lens = {}
    if kv_lengths is not None:
        lens["kv_lengths"] = kv_lengths
    if q_lengths is not None:
        lens["q_lengths"] = q_lengths
    res = cattn.attention(q, k, v, return_weights=return_weights, return_lse=True,
                          num_threads=num_threads, **lens, **kw)
    exp = check_attention(res, q, k, v, dtype=dtype, return_weights=return_weights,
                          return_lse=True, **lens, **kw)
    sl = _sliced(np.asarray(q, np.float64), np.asarray(k, np.float64),
                 np.asarray(v, np.float64), kv_lengths, q_lengths, return_weights, **kw)
    exp = exp if return_weights else (exp[0], None, exp[1])
    np.testing.assert_allclose(exp[0], sl[0], atol=TOL64, rtol=TOL64)
    if return_weights:
        np.testing.assert_allclose(exp[1], sl[1], atol=TOL64, rtol=TOL64)
    assert np.array_equal(np.isneginf(exp[2]), np.isneginf(sl[2]))
    fin = np.isfinite(sl[2])
    np.testing.assert_allclose(exp[2][fin], sl[2][fin], atol=TOL64, rtol=TOL64)
    return res


def _qkv(rng, B, H, Lq, Lk, D=16, Dv=8, Hkv=None, dtype=np.float64, kv_dtype=None):
    Hkv = H if Hkv is None else Hkv
    kv_dtype = dtype if kv_dtype is None else kv_dtype
    return (rng.standard_normal((B, H, Lq, D)).astype(dtype),
            rng.standard_normal((B, Hkv, Lk, D)).astype(kv_dtype),
            rng.standard_normal((B, Hkv, Lk, Dv)).astype(kv_dtype))


# ------------------------------------------------------------- the cases
@pytest.mark.parametrize("threads", [1, 2])
def test_speculative_decode_over_preallocated_cache(threads):
    """4 new tokens at positions filled-4 .. filled-1 of a 4096 cache:
    query 0 sees keys up to filled-4, never its own future."""
    rng = np.random.default_rng(0)
    q, k, v = _qkv(rng, 3, 2, 4, 4096)
    filled = np.array([1000, 4, 4096])
    out = _both(q, k, v, kv_lengths=filled, causal=True, num_threads=threads)[0]
    # query 0 of sequence 0 attends keys 0..996 only: changing keys 997..
    # (its future) leaves it alone
    k2, v2 = k.copy(), v.copy()
    k2[0, :, 997:] += 5.0
    v2[0, :, 997:] += 5.0
    out2 = cattn.attention(q, k2, v2, kv_lengths=filled, causal=True, num_threads=threads)
    np.testing.assert_array_equal(out2[0, :, 0], out[0, :, 0])
    assert not np.allclose(out2[0, :, 1], out[0, :, 1])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sliding_window_decode_over_preallocated_cache(dtype):
    """Cache 64, 20 keys filled, window (8, 0), one query: keys 11..19."""
    rng = np.random.default_rng(1)
    q, k, v = _qkv(rng, 1, 1, 1, 64, dtype=dtype)
    out, lse = cattn.attention(q, k, v, window=(8, 0), kv_lengths=[20], return_lse=True)
    assert np.isfinite(lse).all() and np.abs(out).max() > 0
    exp = ref.attention(q[0, 0], k[0, 0, 11:20], v[0, 0, 11:20])
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(out[0, 0], exp, atol=tol, rtol=tol)
    _both(q, k, v, kv_lengths=np.array([20]), window=(8, 0))
    # a batch of fill levels, both sides of the window, float16 cache
    q, k, v = _qkv(rng, 4, 3, 1, 64)
    for window in [(8, 0), (8, 2), (None, -3), (0, 0)]:
        _both(q, k, v, kv_lengths=np.array([20, 0, 64, 1]), window=window)


def test_padded_self_attention_passes_both_lengths():
    rng = np.random.default_rng(2)
    for L in (7, 40, 150):                  # decode path, tile path, several blocks
        q, k, v = _qkv(rng, 3, 2, L, L)
        lens = np.array([L, L // 2 + 1, 1])
        for kw in ({"causal": True}, {"window": (3, 0)}, {"window": (2, 5)},
                   {"causal": True, "window": (4, None)}):
            _both(q, k, v, kv_lengths=lens, q_lengths=lens, **kw)


def test_padded_self_attention_without_q_lengths_is_rejected():
    rng = np.random.default_rng(3)
    q, k, v = _qkv(rng, 2, 1, 10, 10)
    for kw in ({"causal": True}, {"window": (3, None)}, {"window": (None, 1)}):
        with pytest.raises(ValueError, match="q_lengths"):
            cattn.attention(q, k, v, kv_lengths=[10, 6], **kw)
    # what is still accepted: full or empty sequences, no causal/window,
    # Lq != Lk (a decode step), both lengths
    for kvl in ([10, 10], [10, 0]):
        _both(q, k, v, kv_lengths=np.array(kvl), causal=True)
    _both(q, k, v, kv_lengths=np.array([10, 6]))
    _both(q, k, v, kv_lengths=np.array([10, 6]), q_lengths=np.array([10, 6]), causal=True)
    _both(q[:, :, :4], k, v, kv_lengths=np.array([10, 6]), causal=True)
    q1, k1, v1 = _qkv(rng, 2, 1, 1, 1)
    _both(q1, k1, v1, kv_lengths=np.array([1, 0]), causal=True)


# ------------------------------------------------------------- across the kernels
@pytest.mark.parametrize("Lq", [1, 3, DEC, DEC + 1, 40, 100])
@pytest.mark.parametrize("kw", [{"causal": True}, {"window": (5, 0)}, {"window": (3, 4)},
                                {"window": (None, -2)}, {"causal": True, "window": (17, 3)}])
def test_paths_against_oracle_and_slicing(Lq, kw):
    """Decode path (Lq <= DECODE_MAX_LQ) and tile path, kv_len below, at and
    above q_len (early queries then see nothing), q_lengths or not."""
    rng = np.random.default_rng(Lq)
    Lk = 300
    q, k, v = _qkv(rng, 5, 2, Lq, Lk)
    kvl = np.array([Lk, 0, 1, max(Lq // 2, 1), 137])
    _both(q, k, v, kv_lengths=kvl, **kw)
    ql = np.minimum(np.array([Lq, Lq, 1, Lq, max(Lq - 2, 0)]), Lq)
    _both(q, k, v, kv_lengths=kvl, q_lengths=ql, **kw)
    _both(q, k, v, q_lengths=ql, **kw)


@pytest.mark.parametrize("threads", [1, 2])
def test_tile_skipping_per_sequence(threads):
    """Small blocks (many key tiles) and sequences of very different fill
    levels in one call: the tiles past each sequence's diagonal are
    skipped, the partial tiles masked per sequence."""
    rng = np.random.default_rng(4)
    q, k, v = _qkv(rng, 4, 1, 70, 520, D=8, Dv=4, dtype=np.float32)
    kvl = np.array([520, 70, 333, 450])
    ql = np.array([70, 70, 12, 64])
    for kw in ({"causal": True}, {"window": (100, 0)}, {"window": (30, 30)}):
        _both(q, k, v, kv_lengths=kvl, q_lengths=ql, num_threads=threads, **kw)
        _both(q, k, v, kv_lengths=kvl, num_threads=threads, **kw)


@pytest.mark.parametrize("rw", [True, "key_mass"])
def test_weights_and_key_mass(rw):
    rng = np.random.default_rng(5)
    for Lq in (3, 33):
        q, k, v = _qkv(rng, 3, 2, Lq, 90)
        kvl = np.array([90, 40, 5])
        _both(q, k, v, kv_lengths=kvl, causal=True, return_weights=rw)
        _both(q, k, v, kv_lengths=kvl, q_lengths=np.array([Lq, 2, Lq]),
              window=(6, 1), return_weights=rw)


def test_gqa():
    rng = np.random.default_rng(6)
    for Lq in (1, 4, 20):
        q, k, v = _qkv(rng, 3, 8, Lq, 200, Hkv=2)
        kvl = np.array([200, 37, 150])
        _both(q, k, v, kv_lengths=kvl, causal=True)
        _both(q, k, v, kv_lengths=kvl, window=(10, 0))


def test_gqa_decode_fold_stays_a_no_op():
    """One query with kv_lengths sits at kv_len - 1 and sees all its keys:
    the fold (which drops causal) still applies and is still exact."""
    rng = np.random.default_rng(7)
    q, k, v = _qkv(rng, 3, 8, 1, 300, Hkv=2)
    kvl = np.array([300, 37, 1])
    call = validate_attention(
        q, k, v, score="scaled_dot", scale=None, mask=None, bias=None, causal=True,
        window=None, additive_weight=None, return_weights=False, return_lse=False,
        num_threads=None, out=None, kv_lengths=kvl, q_lengths=None, q_segments=None,
        kv_segments=None, softcap=None, sinks=None)
    assert plan_attention(call).gqa_fold == 4
    _both(q, k, v, kv_lengths=kvl, causal=True)
    # and with an explicit position that makes causal cut keys: no fold
    call = call._replace(q_pos=np.full(call.N, 10, np.int64))
    assert plan_attention(call).gqa_fold == 1
    call = call._replace(q_pos=np.repeat(kvl - 1, 8).astype(np.int64))
    assert plan_attention(call).gqa_fold == 4


@pytest.mark.parametrize("Lq", [4, 40])
def test_float16_cache(Lq):
    """float32 queries over a float16 K/V cache (read as float16)."""
    rng = np.random.default_rng(8)
    q, k, v = _qkv(rng, 3, 2, Lq, 1100, dtype=np.float32, kv_dtype=np.float16)
    kvl = np.array([1100, 700, Lq])
    for threads in (1, 2):
        _both(q, k, v, kv_lengths=kvl, causal=True, dtype=np.float32, num_threads=threads)
        _both(q, k, v, kv_lengths=kvl, window=(64, 0), dtype=np.float32,
              num_threads=threads)


def test_segments():
    """Packed segments on top of lengths: the segment test and the
    aligned diagonal both apply."""
    rng = np.random.default_rng(9)
    for Lq in (4, 30):
        q, k, v = _qkv(rng, 2, 2, Lq, 64)
        kvl = np.array([64, 41])
        qseg = np.sort(rng.integers(0, 2, (2, 1, Lq)), axis=-1)
        kseg = np.sort(rng.integers(0, 2, (2, 1, 64)), axis=-1)
        res = cattn.attention(q, k, v, kv_lengths=kvl, causal=True, q_segments=qseg,
                              kv_segments=kseg, return_lse=True)
        check_attention(res, q, k, v, kv_lengths=kvl, causal=True, q_segments=qseg,
                        kv_segments=kseg, return_lse=True)
        # slicing: each sequence on its real keys
        for b in range(2):
            e = ref.attention(q[b], k[b, :, :kvl[b]], v[b, :, :kvl[b]], causal=True,
                              q_segments=qseg[b], kv_segments=kseg[b, :, :kvl[b]])
            np.testing.assert_allclose(res[0][b], e, atol=1e-12, rtol=1e-10)


def test_reference_mask_scores_q_pos():
    """The oracle's masking step with an explicit position per sequence."""
    s = np.zeros((2, 3, 6))
    _, att = ref.mask_scores(s, causal=True, q_pos=np.array([0, 3]))
    assert att[0].tolist() == [[j <= i for j in range(6)] for i in range(3)]
    assert att[1].tolist() == [[j <= i + 3 for j in range(6)] for i in range(3)]
    _, att = ref.mask_scores(s, window=(1, 0))          # default: Lk - Lq = 3
    assert att[0, 0].tolist() == [False, False, True, True, False, False]


def test_without_lengths_unchanged():
    """No lengths: bottom-right at the array shapes, as before."""
    rng = np.random.default_rng(10)
    q, k, v = _qkv(rng, 2, 2, 5, 30)
    out = cattn.attention(q, k, v, causal=True, window=(4, 0))
    i = np.arange(5)[:, None] + 25
    j = np.arange(30)[None, :]
    mask = (j <= i) & (j >= i - 4)
    np.testing.assert_allclose(out, ref.attention(q, k, v, mask=mask), atol=1e-12)


# ------------------------------------------------------------- Dask
def _dask_check(Q, K, V, q, k, v, **kw):
    import cattn.dask as cdask
    import dask
    out, lse = cdask.attention(Q, K, V, return_lse=True, **kw)
    got_out, got_lse = dask.compute(out, lse, scheduler="synchronous")
    lens = {n: (np.asarray(x.compute()) if hasattr(x, "compute") else x)
            for n, x in kw.items() if n in ("kv_lengths", "q_lengths")}
    rest = {n: x for n, x in kw.items() if n not in lens}
    e_out, e_lse = ref.attention(q, k, v, return_lse=True, **lens, **rest)
    np.testing.assert_allclose(got_out, e_out, atol=TOL64, rtol=TOL64)
    assert np.array_equal(np.isneginf(got_lse), np.isneginf(e_lse))
    sl = _sliced(q, k, v, lens.get("kv_lengths"), lens.get("q_lengths"), **rest)
    np.testing.assert_allclose(got_out, sl[0], atol=TOL64, rtol=TOL64)
    for rw in (True, "key_mass"):
        _, w = cdask.attention(Q, K, V, return_weights=rw, **kw)
        e = ref.attention(q, k, v, return_weights=rw, **lens, **rest)[1]
        np.testing.assert_allclose(w.compute(scheduler="synchronous"), e,
                                   atol=TOL64, rtol=TOL64)
    return out


def _partial_tasks(arr):
    return sum(1 for key in dict(arr.__dask_graph__())
               if isinstance(key, tuple) and str(key[0]).startswith("cattn-attn-partial"))


@pytest.mark.parametrize("lazy", [False, True])
def test_dask_key_chunks(lazy):
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(11)

    def lengths(x):
        return da.from_array(x, chunks=1) if lazy else x

    # speculative decode: 4 queries, the cache cut in uneven key chunks
    q, k, v = _qkv(rng, 3, 2, 4, 100, D=8, Dv=5)
    kch = (7, 30, 1, 22, 40)
    Q = da.from_array(q, chunks=(1, 1, 2, -1))
    K = da.from_array(k, chunks=(1, 2, kch, -1))
    V = da.from_array(v, chunks=(1, 2, kch, -1))
    kvl = np.array([100, 31, 4])
    for kw in ({"causal": True}, {"window": (8, 0)}, {"window": (3, 2)}):
        _dask_check(Q, K, V, q, k, v, kv_lengths=lengths(kvl), **kw)
    # padded self-attention: both lengths, query and key chunks
    q, k, v = _qkv(rng, 3, 2, 60, 60, D=8, Dv=5)
    Q = da.from_array(q, chunks=(1, 2, (13, 17, 30), -1))
    K = da.from_array(k, chunks=(1, 2, (20, 5, 35), -1))
    V = da.from_array(v, chunks=(1, 2, (20, 5, 35), -1))
    lens = np.array([60, 33, 9])
    for kw in ({"causal": True}, {"window": (6, 0)}, {"window": (None, -1)}):
        _dask_check(Q, K, V, q, k, v, kv_lengths=lengths(lens), q_lengths=lengths(lens),
                    **kw)
    # q_lengths alone
    _dask_check(Q, K, V, q, k, v, q_lengths=lengths(lens), causal=True)
    # GQA decode over a float16-sized cache chunked along keys
    q, k, v = _qkv(rng, 2, 4, 1, 80, D=8, Dv=5, Hkv=2)
    Q = da.from_array(q, chunks=(1, 4, 1, -1))
    K = da.from_array(k, chunks=(1, 2, 16, -1))
    V = da.from_array(v, chunks=(1, 2, 16, -1))
    _dask_check(Q, K, V, q, k, v, kv_lengths=lengths(np.array([80, 21])), causal=True)


def test_dask_sliding_window_decode_prunes_key_chunks():
    """Cache 64 in chunks of 8, 20 keys filled, window (8, 0): only the
    chunks holding keys 11..19 get a task."""
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(12)
    q, k, v = _qkv(rng, 1, 1, 1, 64, D=8, Dv=5)
    Q = da.from_array(q)
    K = da.from_array(k, chunks=(1, 1, 8, -1))
    V = da.from_array(v, chunks=(1, 1, 8, -1))
    out = _dask_check(Q, K, V, q, k, v, kv_lengths=np.array([20]), window=(8, 0))
    assert _partial_tasks(out) == 2


def test_dask_rejects_padded_self_attention_without_q_lengths():
    da = pytest.importorskip("dask.array")
    import cattn.dask as cdask
    rng = np.random.default_rng(13)
    q, k, v = _qkv(rng, 2, 1, 10, 10)
    K = da.from_array(k, chunks=(1, 1, 5, -1))
    with pytest.raises(ValueError, match="q_lengths"):
        cdask.attention(q, K, v, kv_lengths=np.array([10, 6]), causal=True)
    out = cdask.attention(q, K, v, kv_lengths=da.from_array(np.array([10, 6])), causal=True)
    with pytest.raises(ValueError, match="q_lengths"):
        out.compute(scheduler="synchronous")
