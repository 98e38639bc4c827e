"""Low-precision page pools for cattn.paged_attention and cattn.cache_write:
bfloat16 (ml_dtypes arrays) and int8 (a QuantizedKV whose data and scales
are the pools).

Every result is compared with cattn.reference.paged_attention (the pages
gathered -- int8 rows dequantized -- then the float64 oracle) and with
cattn.attention on the gathered contiguous cache (bfloat16 arrays, or a
QuantizedKV of the gathered data and scales)."""
import os
import textwrap

import numpy as np
import pytest

import cattn
import cattn.reference as ref
from _oracle import assert_close
from _subproc import run_code_under_isa
from test_paged import OPTIONS, SEQS, check, make_batch

try:
    import ml_dtypes
    BF = np.dtype(ml_dtypes.bfloat16)
except ImportError:      # pragma: no cover
    BF = None

needs_bf16 = pytest.mark.skipif(BF is None, reason="bfloat16 needs ml_dtypes")
FORMATS = [pytest.param("bf16", marks=needs_bf16), "int8"]


def _dtype(fmt):
    return BF if fmt == "bf16" else fmt


def gathered(pool, table_row, seq_len):
    """One sequence's (Hkv, seq_len, C) cache, as cattn.attention takes it:
    a bfloat16 array, or a QuantizedKV of the gathered data and scales."""
    if isinstance(pool, cattn.QuantizedKV):
        return cattn.QuantizedKV(ref.gather_pages(pool.data, table_row, seq_len),
                                 ref.gather_pages(pool.scales, table_row, seq_len))
    return ref.gather_pages(pool, table_row, seq_len)


def check_contiguous(q, kc, vc, bt, sl, qsl, out, lse, **kw):
    """paged == cattn.attention on each sequence's gathered cache.

    A bfloat16 cache: the paged kernels widen it and compute in float32,
    so they match attention on the widened cache to float32 rounding; with
    the bfloat16 arrays themselves attention may take its bfloat16 products
    (VDPBF16PS on the cooperlake variant: P and Q rounded to bfloat16), so
    that comparison gets its bound (test_bf16.py: two bfloat16 half-ulps of
    the output's magnitude, plus 1e-3)."""
    for s in range(len(sl)):
        a, b = qsl[s], qsl[s + 1]
        if a == b:
            continue
        qs = q[a:b].transpose(1, 0, 2)
        k, v = gathered(kc, bt[s], sl[s]), gathered(vc, bt[s], sl[s])
        o2, l2 = cattn.attention(qs, k, v, return_lse=True, **kw)
        if BF is not None and k.dtype == BF:
            amax = float(np.abs(out[a:b]).max(initial=0))
            np.testing.assert_allclose(out[a:b], o2.transpose(1, 0, 2).astype(np.float32),
                                       rtol=0, atol=2 * amax * 2.0 ** -8 + 1e-3)
            o2, l2 = cattn.attention(qs, k.astype(np.float32), v.astype(np.float32),
                                     return_lse=True, **kw)
        np.testing.assert_allclose(out[a:b], o2.transpose(1, 0, 2), rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(lse[a:b], l2.T, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("page_size", [1, 5, 16, 128])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (4, 1)])
def test_matches_reference_and_contiguous(page_size, fmt, heads):
    """seq_lens 0 and 1, decodes and prefill chunks in one batch, GQA/MQA."""
    rng = np.random.default_rng(page_size)
    H, Hkv = heads
    q, kc, vc, bt, sl, qsl, _, _ = make_batch(rng, *SEQS, H=H, Hkv=Hkv, D=40, Dv=24,
                                              page_size=page_size, dtype=_dtype(fmt))
    for nt in (1, 2):
        out, lse = check(q, kc, vc, bt, sl, qsl, causal=True, num_threads=nt)
        check_contiguous(q, kc, vc, bt, sl, qsl, out, lse, causal=True)


@pytest.mark.parametrize("kw", OPTIONS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("page_size", [3, 16])
def test_options(kw, fmt, page_size):
    """causal/window, softcap, sinks, ALiBi, scale."""
    rng = np.random.default_rng(7)
    q, kc, vc, bt, sl, qsl, _, _ = make_batch(rng, [50, 1, 200, 9, 0], [50, 1, 4, 9, 0],
                                              page_size=page_size, dtype=_dtype(fmt))
    for nt in (1, 2):
        out, lse = check(q, kc, vc, bt, sl, qsl, num_threads=nt, **kw)
    if "alibi_slopes" not in kw:       # cattn.attention has no ALiBi option
        check_contiguous(q, kc, vc, bt, sl, qsl, out, lse, **kw)


def _garbage_pools(rng, fmt, kc, vc, fill):
    """Garbage in every unused row: for bfloat16 ``fill``, or random bit
    patterns (NaN and inf among them) when fill is None; for int8 random
    data with ``fill`` as the scale."""
    for pool in (kc, vc):
        if fmt == "int8":
            pool.data[...] = rng.integers(-128, 128, pool.shape, dtype=np.int8)
            pool.scales[...] = fill
        elif fill is None:
            bits = rng.integers(0, 1 << 16, pool.shape, dtype=np.uint16)
            bits.flat[:4] = [0x7f80, 0xff80, 0x7fc0, 0xffff]      # +-inf, NaNs
            pool.view(np.uint16)[...] = bits
        else:
            pool[...] = fill


@pytest.mark.parametrize("fmt, fill", [
    pytest.param("bf16", None, marks=needs_bf16), pytest.param("bf16", np.nan, marks=needs_bf16),
    pytest.param("bf16", np.inf, marks=needs_bf16), pytest.param("bf16", -np.inf, marks=needs_bf16),
    ("int8", 3e38), ("int8", np.nan), ("int8", np.inf)])
@pytest.mark.parametrize("page_size", [1, 8, 64])
def test_garbage_never_leaks(fmt, fill, page_size):
    """Unused rows and pages of garbage (int8: scales of 3e38 turn any
    row into inf; NaN/inf written past QuantizedKV's check) and garbage
    block-table slots: the output stays finite and exact."""
    rng = np.random.default_rng(5)
    seqs, q_lens = [17, 1, 33, 130], [5, 1, 2, 70]
    q, kc, vc, bt, sl, qsl, k, v = make_batch(rng, seqs, q_lens, page_size=page_size,
                                              dtype=_dtype(fmt), spare_pages=4)
    _garbage_pools(rng, fmt, kc, vc, fill)
    for s, n in enumerate(seqs):     # the sequences' rows again, over the garbage
        cattn.cache_write(k[s], v[s], kc, vc, bt[s, np.arange(n) // page_size] * page_size
                          + np.arange(n) % page_size)
    bt[:, -1] = np.iinfo(np.int64).max
    for nt in (1, 2):
        out, _ = check(q, kc, vc, bt, sl, qsl, causal=True, num_threads=nt)
        assert np.all(np.isfinite(out))


# ------------------------------------------------------------- result dtypes
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("qdt", ["bf16", np.float16, np.float32, np.float64, np.int32])
def test_result_dtypes_follow_attention(fmt, qdt):
    """The output and lse dtypes of cattn.attention with that cache and
    query dtype; a float64 query computes in float64."""
    if qdt == "bf16" and BF is None:
        pytest.skip("bfloat16 needs ml_dtypes")
    rng = np.random.default_rng(13)
    q, kc, vc, bt, sl, qsl, _, _ = make_batch(rng, [20, 3], [4, 1], D=40, Dv=24,
                                              dtype=_dtype(fmt))
    q = (q * 3).astype(BF if qdt == "bf16" else qdt)
    out, lse = cattn.paged_attention(q, kc, vc, bt, sl, qsl, return_lse=True)
    o2, l2 = cattn.attention(q[:4].transpose(1, 0, 2), gathered(kc, bt[0], 20),
                             gathered(vc, bt[0], 20), return_lse=True)
    assert (out.dtype, lse.dtype) == (o2.dtype, l2.dtype)
    e_out, e_lse = ref.paged_attention(q, kc, vc, bt, sl, qsl, return_lse=True)
    if out.dtype == np.float64:
        assert_close(out, e_out, np.float64)
        assert_close(lse, e_lse, np.float64)
    elif qdt == "bf16" and fmt == "bf16":
        # the float32 result rounded once: the same call with the query
        # widened (exactly) to float32, rounded to bfloat16
        o32 = cattn.paged_attention(q.astype(np.float32), kc, vc, bt, sl, qsl)
        np.testing.assert_array_equal(out.view(np.uint16), o32.astype(BF).view(np.uint16))
        assert_close(lse, e_lse, np.float32)
    else:
        assert out.dtype == np.float32
        assert_close(out, e_out, np.float32)
        assert_close(lse, e_lse, np.float32)


# --------------------------------------------------------------- cache_write
@needs_bf16
@pytest.mark.parametrize("src", [np.float32, np.float16, np.float64, "bf16", np.int64])
def test_cache_write_bfloat16_rounds_as_ml_dtypes(src):
    """Each row converted as ml_dtypes converts (to nearest even; ties,
    overflow to inf, NaN kept), written at its slot; other rows untouched;
    the later of two tokens naming one slot is kept."""
    rng = np.random.default_rng(14)
    P, Hkv, ps, D, Dv = 5, 2, 4, 8, 3
    kc = np.full((P, Hkv, ps, D), -7, BF)
    vc = np.full((P, Hkv, ps, Dv), -7, BF)
    k = rng.standard_normal((6, Hkv, D)) * 1000
    if src not in (np.int64, "bf16"):
        # exact ties of bfloat16 (1 + 2^-8 and 1 + 3 * 2^-8), past its range, NaN
        k[0, 0, :4] = [1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, 3.4e38 * 2, np.nan]
    with np.errstate(over="ignore"):
        k = k.astype(BF if src == "bf16" else src)
    v = rng.standard_normal((6, Hkv, Dv)).astype(BF if src == "bf16" else src)
    slots = np.array([3, 17, 0, 9, 19, 17])
    cattn.cache_write(k, v, kc, vc, slots)
    ek, ev = np.full_like(kc, -7), np.full_like(vc, -7)
    with np.errstate(over="ignore"):
        for t, s in enumerate(slots):
            ek[s // ps, :, s % ps] = k[t].astype(BF)
            ev[s // ps, :, s % ps] = v[t].astype(BF)
    np.testing.assert_array_equal(kc.view(np.uint16), ek.view(np.uint16))
    np.testing.assert_array_equal(vc.view(np.uint16), ev.view(np.uint16))
    if src in (np.float32, np.float64):
        # slot 3 (page 0, row 3) holds token 0: the ties went to the even neighbour
        assert list(kc[0, 0, 3, :3].astype(np.float64)) == [1.0, 1 + 2.0 ** -6, np.inf]


@pytest.mark.parametrize("src", [np.float32, np.float16, np.float64, "bf16"])
@pytest.mark.parametrize("D", [7, 32, 40])
def test_cache_write_int8_quantizes_each_row(src, D):
    """Each new row quantized by quantize_kv's rule (data and scales at its
    slot); the other rows and scales untouched."""
    if src == "bf16" and BF is None:
        pytest.skip("bfloat16 needs ml_dtypes")
    rng = np.random.default_rng(15)
    P, Hkv, ps, Dv = 4, 2, 3, 5
    kc = cattn.QuantizedKV.zeros((P, Hkv, ps, D))
    vc = cattn.QuantizedKV.zeros((P, Hkv, ps, Dv))
    for pool in (kc, vc):
        pool.data[...] = 99
        pool.scales[...] = 0.5
    k = (rng.standard_normal((5, Hkv, D)) * rng.uniform(0.01, 100, (5, Hkv, 1)))
    k = k.astype(BF if src == "bf16" else src)
    v = rng.standard_normal((5, Hkv, Dv)).astype(BF if src == "bf16" else src)
    slots = np.array([11, 0, 4, 6, 11])
    cattn.cache_write(k, v, kc, vc, slots)
    for pool, x in ((kc, k), (vc, v)):
        want = cattn.quantize_kv(x.astype(np.float32) if src == "bf16" else x)
        kept = [t for t, s in enumerate(slots) if s not in slots[t + 1:]]
        pages, rows = slots[kept] // ps, slots[kept] % ps
        np.testing.assert_array_equal(pool.data[pages, :, rows], want.data[kept])
        np.testing.assert_array_equal(pool.scales[pages, :, rows], want.scales[kept])
        untouched = np.ones((P, ps), bool)
        untouched[pages, rows] = False
        assert np.all(pool.data.transpose(0, 2, 1, 3)[untouched] == 99)
        assert np.all(pool.scales.transpose(0, 2, 1, 3)[untouched] == 0.5)


def test_cache_write_int8_rejects_nonfinite_rows_and_writes_nothing():
    kc = cattn.QuantizedKV.zeros((3, 1, 4, 8))
    vc = cattn.QuantizedKV.zeros((3, 1, 4, 8))
    k, v = np.ones((2, 1, 8)), np.ones((2, 1, 8))
    v[1, 0, 3] = np.inf
    with pytest.raises(ValueError, match="value"):
        cattn.cache_write(k, v, kc, vc, [0, 1])
    with pytest.raises(ValueError, match="key"):
        cattn.cache_write(k * 1e300, k, kc, vc, [0, 1])    # past float32's range
    for pool in (kc, vc):
        assert not pool.data.any() and not pool.scales.any()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("slot", [-1, 24, 10**18])
def test_cache_write_bad_slot(fmt, slot):
    kc = make_pool(fmt, (3, 1, 8, 4))
    vc = make_pool(fmt, (3, 1, 8, 4))
    with pytest.raises(ValueError, match="slot_mapping"):
        cattn.cache_write(np.ones((2, 1, 4)), np.ones((2, 1, 4)), kc, vc, [0, slot])
    for pool in (kc, vc):
        assert not (pool.data if fmt == "int8" else pool.astype(np.float32)).any()


def make_pool(fmt, shape):
    return cattn.QuantizedKV.zeros(shape) if fmt == "int8" else np.zeros(shape, BF)


def test_zeros_allocator():
    kv = cattn.QuantizedKV.zeros((4, 2, 16, 40))
    assert kv.data.shape == (4, 2, 16, 40) and kv.data.dtype == np.int8
    assert kv.scales.shape == (4, 2, 16, 2) and kv.scales.dtype == np.float32
    assert not kv.data.any() and not kv.scales.any()
    np.testing.assert_array_equal(kv.dequantize(), np.zeros((4, 2, 16, 40), np.float32))
    with pytest.raises(TypeError, match="shape"):
        cattn.QuantizedKV.zeros((4, 2.5))
    with pytest.raises(ValueError, match="shape"):
        cattn.QuantizedKV.zeros((4,))
    with pytest.raises(ValueError, match="shape"):
        cattn.QuantizedKV.zeros((4, -1, 8))


# ---------------------------------------------------------------- validation
def _good(fmt):
    rng = np.random.default_rng(11)
    q, kc, vc, bt, sl, qsl, _, _ = make_batch(rng, [20, 5], [4, 1], D=40, page_size=8,
                                              dtype=_dtype(fmt))
    return dict(query=q, key_cache=kc, value_cache=vc, block_table=bt, seq_lens=sl,
                query_start_loc=qsl)


def _swap(fmt, name, make):
    a = _good(fmt)
    a[name] = make(a[name])
    return a


def _scales(make):
    """The (fresh) pool with its scales replaced after construction."""
    def swap(pool):
        pool.scales = make(pool.scales)
        return pool
    return swap


def _data(make):
    def swap(pool):
        pool.data = make(pool.data)
        return pool
    return swap


INT8_BAD = [
    ("value_cache", lambda c: c.dequantize(), TypeError, "value_cache"),
    ("key_cache", lambda c: c.dequantize().astype(np.float16), TypeError, "value_cache"),
    ("key_cache", lambda c: c.data, TypeError, "key_cache"),             # bare int8 data
    ("key_cache", _scales(lambda s: s[..., :1].copy()), ValueError, r"key_cache\.scales"),
    ("value_cache", _scales(lambda s: s[:, :, :4].copy()), ValueError, r"value_cache\.scales"),
    ("key_cache", _scales(lambda s: s.astype(np.float64)), TypeError, r"key_cache\.scales"),
    ("key_cache", _scales(lambda s: np.asfortranarray(s)), ValueError, r"key_cache\.scales"),
    ("key_cache", _scales(lambda s: s.tolist()), TypeError, r"key_cache\.scales"),
    ("key_cache", _data(lambda d: d.astype(np.int16)), TypeError, r"key_cache\.data"),
    ("key_cache", _data(lambda d: d[:, :, ::2]), ValueError, "key_cache"),
    ("value_cache", _data(lambda d: d[0]), ValueError, "value_cache"),
]
BF16_BAD = [
    ("value_cache", lambda c: c.astype(np.float32), TypeError, "value_cache"),
    ("key_cache", lambda c: c.astype(np.float16), TypeError, "value_cache"),
    ("value_cache", lambda c: cattn.QuantizedKV.zeros(c.shape), TypeError, "value_cache"),
    ("key_cache", lambda c: c.view(np.uint16), TypeError, "key_cache"),
    ("key_cache", lambda c: c[:, :, ::2], ValueError, "key_cache"),
    ("query", lambda x: x.astype(np.complex64), TypeError, "query"),
]


@pytest.mark.parametrize("fmt, name, make, err, msg",
                         [("int8",) + b for b in INT8_BAD]
                         + [pytest.param("bf16", *b, marks=needs_bf16) for b in BF16_BAD])
def test_bad_pools_are_named(fmt, name, make, err, msg):
    with pytest.raises(err, match=msg):
        cattn.paged_attention(**_swap(fmt, name, make))


@pytest.mark.parametrize("fmt", FORMATS)
def test_cache_write_hostile(fmt):
    kc, vc = make_pool(fmt, (3, 2, 8, 4)), make_pool(fmt, (3, 2, 8, 6))
    k, v = np.ones((2, 2, 4)), np.ones((2, 2, 6))
    with pytest.raises(ValueError, match="key"):
        cattn.cache_write(np.ones((2, 1, 4)), v, kc, vc, [0, 1])
    with pytest.raises(TypeError, match="value"):
        cattn.cache_write(k, v.astype(complex), kc, vc, [0, 1])
    if fmt == "int8":
        ro = cattn.QuantizedKV(kc.data, kc.scales.copy())
        ro.scales.flags.writeable = False
        bad = cattn.QuantizedKV(kc.data, kc.scales)
        bad.scales = kc.scales[..., :0]
        with pytest.raises(ValueError, match=r"key_cache\.scales"):
            cattn.cache_write(k, v, bad, vc, [0, 1])
    else:
        ro = kc.copy()
        ro.flags.writeable = False
    with pytest.raises(ValueError, match="key_cache"):
        cattn.cache_write(k, v, ro, vc, [0, 1])


# ---------------------------------------------------------------- properties
# (random batches over every pool format: test_paged.test_random_batches)


# ---------------------------------------------------------------- ISA variants
ISA_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np, cattn
    from cattn import reference as ref
    from test_paged import make_batch
    try:
        import ml_dtypes
        formats = ["int8", np.dtype(ml_dtypes.bfloat16)]
    except ImportError:
        formats = ["int8"]
    rng = np.random.default_rng(0)
    for fmt in formats:
        for ps in (1, 16, 128):
            q, kc, vc, bt, sl, qsl, _, _ = make_batch(rng, [300, 1, 90], [70, 1, 3], H=4,
                                                      Hkv=2, D=40, Dv=24, page_size=ps,
                                                      dtype=fmt)
            for qdt in (np.float32, np.float64):
                for kw in ({"causal": True}, {"window": (9, 2), "softcap": 2.0,
                                              "alibi_slopes": 0.1, "sinks": 0.3}):
                    o, l = cattn.paged_attention(q.astype(qdt), kc, vc, bt, sl, qsl,
                                                 return_lse=True, num_threads=2, **kw)
                    eo, el = ref.paged_attention(q.astype(qdt), kc, vc, bt, sl, qsl,
                                                 return_lse=True, **kw)
                    tol = 1e-10 if qdt == np.float64 else 1e-4
                    err = max(np.abs(o - eo).max(), np.abs(l - el).max())
                    assert err < tol, (fmt, ps, qdt, kw, err)
    print(cattn._kernels.isa_name())
    """
)


@pytest.mark.parametrize("isa", ["generic", "haswell", "skylake", "cooperlake"])
def test_isa_variants(isa):
    res = run_code_under_isa(isa, ISA_SCRIPT, os.path.dirname(__file__))
    assert res.returncode == 0, res.stderr
