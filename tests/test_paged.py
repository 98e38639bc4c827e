"""cattn.paged_attention and cattn.cache_write: paged K/V over a page pool.

Every result is compared with cattn.reference.paged_attention (pages
gathered, then the float64 oracle) and with cattn.attention on the gathered
contiguous arrays."""
import os
import textwrap

import numpy as np
import pytest

import cattn
import cattn.reference as ref
from _oracle import assert_close
from _subproc import run_code_under_isa

try:
    from hypothesis import given, settings, strategies as st
    HAVE_HYPOTHESIS = True
except ImportError:      # pragma: no cover
    HAVE_HYPOTHESIS = False


def empty_pool(rng, shape, dtype, fill):
    """A page pool holding garbage: ``fill`` everywhere.  dtype "int8": a
    QuantizedKV of random int8 data with ``fill`` in every scale (written
    after construction, past its check of finite scales)."""
    if isinstance(dtype, str) and dtype == "int8":
        pool = cattn.QuantizedKV.zeros(shape)
        pool.data[...] = rng.integers(-128, 128, shape, dtype=np.int8)
        pool.scales[...] = fill
        return pool
    pool = np.empty(shape, dtype)
    pool[...] = fill
    return pool


def make_batch(rng, seq_lens, q_lens, H=4, Hkv=2, D=16, Dv=12, page_size=16,
               dtype=np.float32, spare_pages=3, fill=None, q_dtype=None):
    """A shuffled pool holding the sequences, its block table (unused slots
    -1 or out-of-pool garbage), query_start_loc and the contiguous K/V (for
    dtype "int8", an int8 pool: the float32 K/V before quantization)."""
    need = [-(-s // page_size) for s in seq_lens]
    P = sum(need) + spare_pages
    max_pages = max(need + [1]) + 1
    fill = np.nan if fill is None else fill         # unused rows: NaN unless told
    kc = empty_pool(rng, (P, Hkv, page_size, D), dtype, fill)
    vc = empty_pool(rng, (P, Hkv, page_size, Dv), dtype, fill)
    kv_dtype = np.float32 if isinstance(dtype, str) else dtype
    perm = rng.permutation(P)
    bt = np.full((len(seq_lens), max_pages), -1, np.int64)
    bt[:, -1] = P + 1000                            # garbage past the used pages
    keys, values, c = [], [], 0
    for s, (sl, n) in enumerate(zip(seq_lens, need)):
        bt[s, :n] = perm[c:c + n]
        c += n
        k = rng.standard_normal((sl, Hkv, D)).astype(kv_dtype)
        v = rng.standard_normal((sl, Hkv, Dv)).astype(kv_dtype)
        slots = bt[s, np.arange(sl) // page_size] * page_size + np.arange(sl) % page_size
        cattn.cache_write(k, v, kc, vc, slots)
        keys.append(k)
        values.append(v)
    qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int64)
    qdt = q_dtype or (np.float64 if dtype == np.float64 else np.float32)
    q = rng.standard_normal((int(qsl[-1]), H, D)).astype(qdt)
    return q, kc, vc, bt, np.asarray(seq_lens, np.int64), qsl, keys, values


def check(q, kc, vc, bt, sl, qsl, tol_dtype=np.float32, **kw):
    out, lse = cattn.paged_attention(q, kc, vc, bt, sl, qsl, return_lse=True, **kw)
    kw.pop("num_threads", None)
    e_out, e_lse = ref.paged_attention(q, kc, vc, bt, sl, qsl, return_lse=True, **kw)
    assert out.shape == e_out.shape and lse.shape == e_lse.shape
    assert_close(out, e_out, tol_dtype)
    assert_close(lse, e_lse, tol_dtype)
    return out, lse


PAGE_SIZES = [1, 5, 16, 128]
SEQS = ([0, 1, 37, 300, 129, 2], [0, 1, 3, 120, 12, 2])   # seq_lens, q_lens


@pytest.mark.parametrize("page_size", PAGE_SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (4, 1)])
def test_matches_reference_and_contiguous(page_size, dtype, heads):
    rng = np.random.default_rng(page_size)
    H, Hkv = heads
    q, kc, vc, bt, sl, qsl, keys, values = make_batch(
        rng, *SEQS, H=H, Hkv=Hkv, page_size=page_size, dtype=dtype)
    tol = np.float64 if dtype == np.float64 else np.float32
    for nt in (1, 2):
        out, lse = check(q, kc, vc, bt, sl, qsl, tol, causal=True, num_threads=nt)
        # cattn.attention on the gathered contiguous arrays, sequence by sequence
        for s in range(len(sl)):
            a, b = qsl[s], qsl[s + 1]
            if a == b:
                continue
            o2, l2 = cattn.attention(q[a:b].transpose(1, 0, 2), keys[s].transpose(1, 0, 2),
                                     values[s].transpose(1, 0, 2), causal=True,
                                     return_lse=True)
            np.testing.assert_allclose(out[a:b], o2.transpose(1, 0, 2), rtol=2e-5, atol=2e-5)
            np.testing.assert_allclose(lse[a:b], l2.T, rtol=2e-5, atol=2e-5)


OPTIONS = [
    {},
    {"causal": True, "window": (20, None)},
    {"window": (7, 3)},
    {"causal": True, "softcap": 3.0},
    {"causal": True, "sinks": [0.5, -1.0, 2.0, -np.inf]},
    {"causal": True, "alibi_slopes": [0.5, 0.25, 0.125, 0.0625]},
    {"alibi_slopes": 0.1, "scale": 0.3, "softcap": 2.0, "sinks": 1.0},
]


@pytest.mark.parametrize("kw", OPTIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("page_size", [3, 16])
def test_options(kw, dtype, page_size):
    rng = np.random.default_rng(7)
    q, kc, vc, bt, sl, qsl, _, _ = make_batch(rng, [50, 1, 200, 9, 0], [50, 1, 4, 9, 0],
                                              page_size=page_size, dtype=dtype)
    tol = np.float64 if dtype == np.float64 else np.float32
    for nt in (1, 2):
        check(q, kc, vc, bt, sl, qsl, tol, num_threads=nt, **kw)


def test_many_threads_long_decode_split():
    """A long decode among short ones: split across threads, merged exactly."""
    rng = np.random.default_rng(3)
    q, kc, vc, bt, sl, qsl, _, _ = make_batch(rng, [5000, 3, 700, 40], [1, 1, 600, 2], H=8,
                                              Hkv=2, D=32, Dv=32, page_size=16)
    for nt in (1, 2, 3, 8):
        check(q, kc, vc, bt, sl, qsl, causal=True, num_threads=nt)


def test_mixed_batch_equals_separate_calls():
    rng = np.random.default_rng(4)
    q, kc, vc, bt, sl, qsl, _, _ = make_batch(rng, [400, 33, 1000], [300, 1, 5])
    out = cattn.paged_attention(q, kc, vc, bt, sl, qsl, causal=True, num_threads=2)
    for s in range(3):
        a, b = qsl[s], qsl[s + 1]
        o = cattn.paged_attention(q[a:b], kc, vc, bt[s:s + 1], sl[s:s + 1], [0, b - a],
                                  causal=True, num_threads=1)
        np.testing.assert_allclose(out[a:b], o, rtol=1e-6, atol=1e-6)


def test_garbage_never_leaks():
    """NaN/inf in every unused row and page of the pool, and garbage slots
    past each sequence's pages: the output stays finite and exact."""
    rng = np.random.default_rng(5)
    for fill in (np.nan, np.inf, -np.inf, 1e30):
        q, kc, vc, bt, sl, qsl, _, _ = make_batch(rng, [17, 1, 33], [5, 1, 2], page_size=8,
                                                  fill=fill, spare_pages=4)
        bt[:, -1] = np.iinfo(np.int64).max
        out, _ = check(q, kc, vc, bt, sl, qsl, causal=True)
        assert np.all(np.isfinite(out))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_rows_adjacent_only_at_the_ends_of_four(dtype):
    """page_size 1: pages 3 and 6 hold keys 0 and 3 (a span of four keys
    whose first and last rows are three rows apart in the pool) while keys
    1 and 2 live elsewhere; a kernel that reads four keys as one run when
    only the last row's offset matches would read the wrong keys."""
    rng = np.random.default_rng(9)
    D, P = 17, 16
    kc = rng.standard_normal((P, 1, 1, D)).astype(dtype)
    vc = rng.standard_normal((P, 1, 1, D)).astype(dtype)
    bt = np.array([[3, 11, 9, 6, 0, 12, 7, 8]], np.int64)
    q = rng.standard_normal((1, 1, D)).astype(np.float32)
    sl, qsl = np.array([8]), np.array([0, 1])
    out = cattn.paged_attention(q, kc, vc, bt, sl, qsl)
    assert_close(out, ref.paged_attention(q, kc, vc, bt, sl, qsl), np.float32)


def test_nan_in_attended_key_propagates_masked_does_not():
    rng = np.random.default_rng(6)
    q, kc, vc, bt, sl, qsl, _, _ = make_batch(rng, [40], [10], page_size=16)
    # key 35 is seen only by the queries at positions >= 35 (causal)
    kc[bt[0, 2], :, 3] = np.nan
    out = cattn.paged_attention(q, kc, vc, bt, sl, qsl, causal=True)
    e = ref.paged_attention(q, kc, vc, bt, sl, qsl, causal=True)
    assert_close(out, e, np.float32)
    assert np.isnan(out[5:]).all() and np.isfinite(out[:5]).all()


def test_empty_and_degenerate():
    rng = np.random.default_rng(8)
    # no tokens at all
    q, kc, vc, bt, sl, qsl, _, _ = make_batch(rng, [0, 5], [0, 0])
    out, lse = cattn.paged_attention(q, kc, vc, bt, sl, qsl, return_lse=True)
    assert out.shape == (0, 4, 12) and lse.shape == (0, 4)
    # no sequences
    out = cattn.paged_attention(np.zeros((0, 4, 16), np.float32), kc, vc,
                                np.zeros((0, 2), np.int64), [], [0])
    assert out.shape == (0, 4, 12)
    # a window that leaves a query no key: 0 and lse -inf (or the sink)
    q, kc, vc, bt, sl, qsl, _, _ = make_batch(rng, [30], [2])
    out, lse = cattn.paged_attention(q, kc, vc, bt, sl, qsl, window=(-5, None),
                                     return_lse=True)
    assert np.all(out == 0) and np.all(lse == -np.inf)
    check(q, kc, vc, bt, sl, qsl, window=(-5, None), sinks=0.25)


def test_float16_query_returns_float16():
    rng = np.random.default_rng(9)
    q, kc, vc, bt, sl, qsl, _, _ = make_batch(rng, [20, 3], [4, 1], dtype=np.float16,
                                              q_dtype=np.float16)
    out = cattn.paged_attention(q, kc, vc, bt, sl, qsl)
    assert out.dtype == np.float16
    e = ref.paged_attention(q, kc, vc, bt, sl, qsl)
    np.testing.assert_allclose(out, e, atol=2e-3, rtol=2e-3)


# ----------------------------------------------------------------- cache_write
def test_cache_write_matches_a_loop_and_converts():
    rng = np.random.default_rng(10)
    P, Hkv, ps, D, Dv = 6, 2, 4, 8, 5
    kc = np.zeros((P, Hkv, ps, D), np.float16)
    vc = np.zeros((P, Hkv, ps, Dv), np.float16)
    k = rng.standard_normal((9, Hkv, D)).astype(np.float32)
    v = rng.standard_normal((9, Hkv, Dv)).astype(np.float32)
    slots = rng.choice(P * ps, 9, replace=False)
    cattn.cache_write(k, v, kc, vc, slots)
    ek, ev = np.zeros_like(kc), np.zeros_like(vc)
    for t, sl in enumerate(slots):
        ek[sl // ps, :, sl % ps] = k[t].astype(np.float16)
        ev[sl // ps, :, sl % ps] = v[t].astype(np.float16)
    np.testing.assert_array_equal(kc, ek)
    np.testing.assert_array_equal(vc, ev)


@pytest.mark.parametrize("slot, msg", [(-1, "slot_mapping"), (24, "slot_mapping"),
                                       (10**18, "slot_mapping")])
def test_cache_write_bad_slot(slot, msg):
    kc = np.zeros((3, 1, 8, 4), np.float32)
    vc = np.zeros((3, 1, 8, 4), np.float32)
    with pytest.raises(ValueError, match=msg):
        cattn.cache_write(np.ones((2, 1, 4)), np.ones((2, 1, 4)), kc, vc, [0, slot])
    assert not kc.any()


def test_cache_write_bad_arguments():
    kc = np.zeros((3, 2, 8, 4), np.float32)
    vc = np.zeros((3, 2, 8, 6), np.float32)
    k, v = np.ones((2, 2, 4)), np.ones((2, 2, 6))
    with pytest.raises(ValueError, match="key"):
        cattn.cache_write(np.ones((2, 1, 4)), v, kc, vc, [0, 1])
    with pytest.raises(ValueError, match="value"):
        cattn.cache_write(k, np.ones((3, 2, 6)), kc, vc, [0, 1])
    with pytest.raises(ValueError, match="slot_mapping"):
        cattn.cache_write(k, v, kc, vc, [0])
    with pytest.raises(TypeError, match="slot_mapping"):
        cattn.cache_write(k, v, kc, vc, [0.0, 1.0])
    ro = kc.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="key_cache"):
        cattn.cache_write(k, v, ro, vc, [0, 1])
    with pytest.raises(TypeError, match="key_cache"):
        cattn.cache_write(k, v, kc.tolist(), vc, [0, 1])


# ----------------------------------------------------------------- validation
def _good():
    rng = np.random.default_rng(11)
    q, kc, vc, bt, sl, qsl, _, _ = make_batch(rng, [20, 5], [4, 1], page_size=8)
    return dict(query=q, key_cache=kc, value_cache=vc, block_table=bt, seq_lens=sl,
                query_start_loc=qsl)


def _bad(name, value):
    a = _good()
    a[name] = value(a) if callable(value) else value
    return a


@pytest.mark.parametrize("args, err, msg", [
    (_bad("block_table", lambda a: np.where(a["block_table"] == a["block_table"][0, 0],
                                            99, a["block_table"])), ValueError, "block_table"),
    (_bad("block_table", lambda a: np.where(a["block_table"] == a["block_table"][1, 0],
                                            -1, a["block_table"])), ValueError, "block_table"),
    (_bad("block_table", lambda a: a["block_table"][:1]), ValueError, "block_table"),
    (_bad("block_table", lambda a: a["block_table"].astype(float)), TypeError, "block_table"),
    (_bad("seq_lens", [20, 100]), ValueError, "seq_lens"),
    (_bad("seq_lens", [20, -1]), ValueError, "seq_lens"),
    (_bad("seq_lens", [20, 0]), ValueError, "seq_len"),       # q_len 1 > seq_len 0
    (_bad("query_start_loc", [0, 5, 4]), ValueError, "query_start_loc"),
    (_bad("query_start_loc", [0, 3, 3]), ValueError, "query_start_loc"),
    (_bad("query_start_loc", [1, 4, 5]), ValueError, "query_start_loc"),
    (_bad("query_start_loc", [0, 5]), ValueError, "query_start_loc"),
    (_bad("query", lambda a: a["query"][:, :3]), ValueError, "heads"),
    (_bad("query", lambda a: a["query"][..., :5]), ValueError, "head_dim"),
    (_bad("query", lambda a: a["query"][0]), ValueError, "query"),
    (_bad("query", lambda a: a["query"].astype(complex)), TypeError, "query"),
    (_bad("key_cache", lambda a: np.zeros(a["key_cache"].shape, np.int32)), TypeError, "key_cache"),
    (_bad("key_cache", lambda a: a["key_cache"][:, :, ::2]), ValueError, "key_cache"),
    (_bad("key_cache", lambda a: a["key_cache"][:, :, :4].copy()), ValueError, "value_cache"),
    (_bad("key_cache", lambda a: a["key_cache"][0]), ValueError, "key_cache"),
    (_bad("value_cache", lambda a: a["value_cache"].astype(np.float16)), TypeError,
     "value_cache"),
    (_bad("value_cache", lambda a: np.asfortranarray(a["value_cache"])), ValueError,
     "value_cache"),
])
def test_bad_arguments_are_named(args, err, msg):
    with pytest.raises(err, match=msg):
        cattn.paged_attention(**args)


@pytest.mark.parametrize("kw, msg", [({"sinks": [1.0, 2.0]}, "sinks"),
                                     ({"sinks": np.nan}, "sinks"),
                                     ({"alibi_slopes": [np.inf] * 4}, "alibi_slopes"),
                                     ({"softcap": -1.0}, "softcap"),
                                     ({"window": (1, 2, 3)}, "window"),
                                     ({"scale": np.inf}, "scale"),
                                     ({"num_threads": 0}, "num_threads")])
def test_bad_options_are_named(kw, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        cattn.paged_attention(**_good(), **kw)


# ----------------------------------------------------------------- properties
if HAVE_HYPOTHESIS:
    try:
        import ml_dtypes
        _POOLS = [np.float32, np.float16, "int8", np.dtype(ml_dtypes.bfloat16)]
    except ImportError:      # pragma: no cover
        _POOLS = [np.float32, np.float16, "int8"]

    @settings(max_examples=60, deadline=None)
    @given(seed=st.integers(0, 2**32 - 1),
           n_seqs=st.integers(1, 5),
           page_size=st.sampled_from([1, 2, 7, 16, 33]),
           heads=st.sampled_from([(1, 1), (2, 1), (4, 2), (6, 3)]),
           causal=st.booleans(),
           window=st.sampled_from([None, (4, None), (3, 2), (None, 0)]),
           pool=st.sampled_from(_POOLS), threads=st.sampled_from([1, 2, 3]))
    def test_random_batches(seed, n_seqs, page_size, heads, causal, window, pool, threads):
        """Random ragged batches over every pool format (float32, float16,
        int8, bfloat16) against the reference on the gathered pages."""
        rng = np.random.default_rng(seed)
        seq_lens = rng.integers(0, 90, n_seqs)
        q_lens = [int(rng.integers(0, s + 1)) if rng.random() < 0.5
                  else int(min(s, rng.integers(0, 3))) for s in seq_lens]
        H, Hkv = heads
        q, kc, vc, bt, sl, qsl, _, _ = make_batch(
            rng, list(seq_lens), q_lens, H=H, Hkv=Hkv, D=int(rng.integers(1, 70)),
            Dv=int(rng.integers(1, 70)), page_size=page_size, dtype=pool)
        check(q, kc, vc, bt, sl, qsl, causal=causal, window=window, num_threads=threads)


# ----------------------------------------------------------------- ISA variants
ISA_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np, cattn
    from cattn import reference as ref
    from test_paged import make_batch
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float16, np.float64):
        for ps in (1, 16, 128):
            q, kc, vc, bt, sl, qsl, _, _ = make_batch(rng, [300, 1, 90], [70, 1, 3], H=4,
                                                      Hkv=2, D=40, Dv=24, page_size=ps,
                                                      dtype=dt)
            for kw in ({"causal": True}, {"window": (9, 2), "softcap": 2.0,
                                          "alibi_slopes": 0.1, "sinks": 0.3}):
                o, l = cattn.paged_attention(q, kc, vc, bt, sl, qsl, return_lse=True,
                                             num_threads=2, **kw)
                eo, el = ref.paged_attention(q, kc, vc, bt, sl, qsl, return_lse=True, **kw)
                tol = 1e-10 if dt == np.float64 else 1e-4
                err = max(np.abs(o - eo).max(), np.abs(l - el).max())
                assert err < tol, (dt, ps, kw, err)
    print(cattn._kernels.isa_name())
    """
)


@pytest.mark.parametrize("isa", ["generic", "haswell", "skylake"])
def test_isa_variants(isa):
    res = run_code_under_isa(isa, ISA_SCRIPT, os.path.dirname(__file__))
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("page_size", [1, 5, 16, 128])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, "int8"])
@pytest.mark.parametrize("kw", [{"causal": True}, {"window": (9, 2)},
                                {"causal": True, "softcap": 2.0, "alibi_slopes": 0.2,
                                 "sinks": 0.5}])
def test_decode_items_over_every_kv_head(page_size, dtype, kw):
    """Decodes whose rows for all heads fit one item (q_len * H <= 64) are
    planned as one item over every K/V head; longer ones per K/V head.
    Both against the oracle, a window making the rows of one chunk see
    different keys."""
    from cattn._paged import plan_paged
    from cattn._validate_paged import validate_paged
    rng = np.random.default_rng(page_size)
    H, Hkv = 16, 4
    # q_len 1 and 4: one item (16 and 64 rows); 5: per K/V head (20 rows)
    q_lens = [1, 4, 5, 1, 0]
    q, kc, vc, bt, sl, qsl, _, _ = make_batch(rng, [300, 90, 200, 1, 0], q_lens, H=H,
                                              Hkv=Hkv, D=40, Dv=24, page_size=page_size,
                                              dtype=dtype)
    opts = dict(scale=None, causal=False, window=None, softcap=None, sinks=None,
                alibi_slopes=None, return_lse=False, num_threads=1)
    call = validate_paged(q, kc, vc, bt, sl, qsl, **{**opts, **kw})
    work, fin, _, _ = plan_paged(call, 1)
    nh = {int(f[0]): set() for f in fin}
    for f in fin:
        nh[int(f[0])].add((int(f[1]), int(f[2])))
    assert nh[0] == {(0, H)} and nh[1] == {(0, H)}
    assert nh[2] == {(g * 4, 4) for g in range(Hkv)}
    tol = np.float64 if dtype == np.float64 else np.float32
    for nt in (1, 2):
        check(q, kc, vc, bt, sl, qsl, tol, num_threads=nt, **kw)


def _plan(q, kc, vc, bt, sl, qsl, n_threads, **kw):
    from cattn._paged import plan_paged
    from cattn._validate_paged import validate_paged
    opts = dict(scale=None, causal=False, window=None, softcap=None, sinks=None,
                alibi_slopes=None, return_lse=False, num_threads=n_threads)
    return plan_paged(validate_paged(q, kc, vc, bt, sl, qsl, **{**opts, **kw}), n_threads)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, "int8"])
def test_decode_items_mixed_paths_split_heads_and_minus_inf(dtype):
    """One item over every K/V head whose chunks go both ways (a window:
    interior chunks page run by page run, its edges head by head), items
    splitting one K/V head's query heads (q_len * H / Hkv > 64), and keys
    whose scores are -inf (skipped, never multiplied)."""
    rng = np.random.default_rng(11)
    H, Hkv = 20, 2                     # 10 query heads per K/V head
    seq_lens, q_lens = [700, 300, 650], [3, 8, 1]
    q, kc, vc, bt, sl, qsl, _, _ = make_batch(rng, seq_lens, q_lens, H=H, Hkv=Hkv, D=32,
                                              Dv=16, page_size=16, dtype=dtype)
    _, fin, _, _ = _plan(q, kc, vc, bt, sl, qsl, 1)
    items = {int(s): sorted((int(h0), int(n)) for s2, h0, n, _, _ in fin if s2 == s)
             for s in range(3)}
    assert items[0] == [(0, H)] and items[2] == [(0, H)]
    assert items[1] == [(0, 8), (8, 2), (10, 8), (18, 2)]
    tol = np.float64 if dtype == np.float64 else np.float32
    for nt in (1, 2):
        check(q, kc, vc, bt, sl, qsl, tol, num_threads=nt, window=(130, 3), sinks=0.5)
    if dtype == "int8":
        return
    # -inf scores: a positive query against keys of -inf (sequence 2's
    # keys 100..139 and 600, in both K/V heads), whose values are NaN: a
    # weight of 0 times NaN would show
    q = np.abs(q)
    for j in list(range(100, 140)) + [600]:
        kc[bt[2, j // 16], :, j % 16, :] = -np.inf
        vc[bt[2, j // 16], :, j % 16, :] = np.nan
    for nt in (1, 2):
        check(q, kc, vc, bt, sl, qsl, tol, num_threads=nt, causal=True)


@pytest.mark.parametrize("keys, n_threads, at_least", [(300, 16, 2), (2048, 16, 16),
                                                       (1000, 2, 8)])
def test_decode_items_over_every_kv_head_still_split(keys, n_threads, at_least):
    """An item over every K/V head splits its keys as finely as the per-head
    items did: one sequence still feeds the threads."""
    rng = np.random.default_rng(0)
    q, kc, vc, bt, sl, qsl, _, _ = make_batch(rng, [keys], [1], H=32, Hkv=8, D=16, Dv=16,
                                              page_size=16)
    work, fin, _, _ = _plan(q, kc, vc, bt, sl, qsl, n_threads)
    assert fin.shape[0] == 1 and fin[0, 2] == 32
    assert work.shape[0] >= at_least
    check(q, kc, vc, bt, sl, qsl, num_threads=n_threads)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, "int8"])
@pytest.mark.parametrize("page_size", [1, 16])
def test_decode_item_at_the_row_limit(dtype, page_size):
    """64 heads without GQA, one new token: one item of 64 rows over 64 K/V
    heads, whose chunk offsets fill the kernel's offset buffers."""
    rng = np.random.default_rng(page_size)
    q, kc, vc, bt, sl, qsl, _, _ = make_batch(rng, [150, 64], [1, 1], H=64, Hkv=64, D=16,
                                              Dv=8, page_size=page_size, dtype=dtype)
    _, fin, _, _ = _plan(q, kc, vc, bt, sl, qsl, 1)
    assert sorted(fin[:, 2].tolist()) == [64, 64]
    for nt in (1, 2):
        check(q, kc, vc, bt, sl, qsl, num_threads=nt, causal=True)
