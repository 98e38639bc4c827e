"""The int8 K/V cache (``cattn.quantize_kv`` / ``cattn.QuantizedKV``): the
format, its hostile inputs, and every path and option of ``attention`` over
it against ``cattn.reference`` over the dequantized cache (the kernel adds
no error beyond quantization: the project's float32 bound holds)."""
import textwrap
import tracemalloc

import numpy as np
import pytest

import cattn
import cattn.reference as ref
from _oracle import assert_close, check_attention
from _subproc import run_code_under_isa


def _qkv(rng, lead_q, lead_kv, Lq, Lk, D, Dv, dtype=np.float32):
    q = rng.standard_normal(lead_q + (Lq, D)).astype(dtype)
    k = rng.standard_normal(lead_kv + (Lk, D)).astype(np.float32)
    v = rng.standard_normal(lead_kv + (Lk, Dv)).astype(np.float32)
    return q, k, v


# ------------------------------------------------------------------ format
@pytest.mark.parametrize("D", [1, 7, 32, 40, 64, 128, 129])
@pytest.mark.parametrize("src", [np.float16, np.float32, np.float64])
def test_format_round_trip(D, src):
    rng = np.random.default_rng(D)
    x = (rng.standard_normal((2, 3, 17, D)) * rng.uniform(0.01, 100, (2, 3, 17, 1))).astype(src)
    qx = cattn.quantize_kv(x, dtype="int8")
    nb = -(-D // 32)
    assert isinstance(qx, cattn.QuantizedKV)
    assert qx.data.dtype == np.int8 and qx.data.shape == x.shape and qx.shape == x.shape
    assert qx.scales.dtype == np.float32 and qx.scales.shape == x.shape[:-1] + (nb,)
    assert qx.dtype == np.int8 and qx.block == 32
    assert np.abs(qx.data.astype(int)).max() <= 127
    xf = x.astype(np.float64)
    pad = np.zeros(x.shape[:-1] + (nb * 32 - D,))
    blocks = np.concatenate([xf, pad], -1).reshape(x.shape[:-1] + (nb, 32))
    # the scale is max|x| / 127 of its block (rounded to float32)
    np.testing.assert_allclose(qx.scales, np.abs(blocks).max(-1) / 127, rtol=1e-6)
    # each value within half a step of its block's scale
    s = np.repeat(qx.scales.astype(np.float64), 32, -1)[..., :D]
    deq = qx.dequantize()
    assert deq.dtype == np.float32 and deq.shape == x.shape
    assert np.all(np.abs(qx.dequantize(np.float64) - xf) <= 0.5 * s * (1 + 1e-5) + 1e-30)
    np.testing.assert_array_equal(qx.dequantize(np.float64),
                                  qx.data.astype(np.float64) * s)


def test_zero_rows_empty_and_hostile_inputs():
    x = np.zeros((3, 64), np.float32)
    x[1, 40] = 2.0
    qx = cattn.quantize_kv(x)
    assert np.all(qx.scales[[0, 2]] == 0) and np.all(qx.data[[0, 2]] == 0)
    np.testing.assert_array_equal(qx.dequantize(), x)
    # L = 0 and D = 0
    assert cattn.quantize_kv(np.zeros((2, 0, 16))).scales.shape == (2, 0, 1)
    assert cattn.quantize_kv(np.zeros((4, 0))).scales.shape == (4, 0)
    for bad in (np.nan, np.inf, -np.inf):
        y = np.ones((4, 8))
        y[2, 3] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            cattn.quantize_kv(y)
    with pytest.raises(ValueError, match="float32's range"):
        cattn.quantize_kv(np.full((2, 4), 1e300))
    with pytest.raises(ValueError, match="dtype must be 'int8'"):
        cattn.quantize_kv(np.ones((2, 4)), dtype="int4")
    with pytest.raises(ValueError, match="dtype must be 'int8'"):
        cattn.quantize_kv(np.ones((2, 4)), dtype=np.float16)
    with pytest.raises(TypeError, match="real numbers"):
        cattn.quantize_kv(np.ones((2, 4), complex))
    with pytest.raises(ValueError, match=r"\(\.\.\., L, D\)"):
        cattn.quantize_kv(np.ones(4))
    # integers quantize (as float32)
    got = cattn.quantize_kv(np.arange(8).reshape(2, 4)).dequantize()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np.arange(8).reshape(2, 4), atol=7 / 254 * 1.0001)


def test_constructor_checks_and_repr_and_slicing():
    rng = np.random.default_rng(1)
    qx = cattn.quantize_kv(rng.standard_normal((2, 5, 20, 40)))
    r = repr(qx)
    assert "QuantizedKV" in r and "(2, 5, 20, 40)" in r and "int8" in r
    part = qx[..., 3:11, :]
    assert part.shape == (2, 5, 8, 40) and np.shares_memory(part.data, qx.data)
    np.testing.assert_array_equal(part.dequantize(), qx.dequantize()[..., 3:11, :])
    np.testing.assert_array_equal(qx[1].dequantize(), qx.dequantize()[1])
    with pytest.raises(IndexError):
        qx[..., 3]
    with pytest.raises(IndexError):
        qx[..., 0:3]          # the D axis stays whole
    with pytest.raises(ValueError, match="scales must have shape"):
        cattn.QuantizedKV(qx.data, qx.scales[..., :1])
    with pytest.raises(TypeError, match="int8"):
        cattn.QuantizedKV(qx.data.astype(np.int16), qx.scales)
    with pytest.raises(TypeError, match="float32"):
        cattn.QuantizedKV(qx.data, qx.scales.astype(np.float64))
    bad = qx.scales.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        cattn.QuantizedKV(qx.data, bad)


def test_elsewhere_a_clear_typeerror():
    kq = cattn.quantize_kv(np.ones((2, 4, 8)))
    for f in (lambda: np.asarray(kq), lambda: cattn.scores(np.ones((2, 4, 8)), kq),
              lambda: cattn.aggregate(np.ones((2, 4, 4)), kq)):
        with pytest.raises(TypeError, match="dequantize"):
            f()


def test_validation_names_key_and_value():
    rng = np.random.default_rng(2)
    q, k, v = _qkv(rng, (1, 4), (1, 4), 1, 30, 64, 64)
    with pytest.raises(ValueError, match="key"):
        cattn.attention(q, cattn.quantize_kv(k[..., :32]), v)        # D differs
    with pytest.raises(ValueError, match="value"):
        cattn.attention(q, k, cattn.quantize_kv(v[..., :29, :]))     # Lk differs
    with pytest.raises(ValueError, match="key"):
        cattn.attention(q, cattn.quantize_kv(k[:, :3]), v)           # heads
    deep = cattn.QuantizedKV(np.zeros((1,) * 31 + (30, 64), np.int8),
                             np.zeros((1,) * 31 + (30, 2), np.float32))
    with pytest.raises(ValueError, match="key has 33 dims"):
        cattn.attention(q, deep, v)
    with pytest.raises(ValueError, match="value has 33 dims"):
        cattn.attention(q, k, deep)


# ----------------------------------------------- attention against the oracle
OPTIONS = [
    {},
    {"causal": True},
    {"window": (7, 2)},
    {"mask": "mask"},
    {"bias": "bias"},
    {"kv_lengths": np.array([13])},
    {"q_lengths": np.array([1])},
    {"q_segments": "seg", "kv_segments": "seg"},
    {"softcap": 3.0},
    {"sinks": 0.7},
    {"score": "cosine"},
    {"score": "additive"},
    {"score": "dot", "scale": 0.05},
    {"return_lse": True},
    {"return_weights": True},
    {"return_weights": "key_mass"},
]


def _materialise(opts, rng, Lq, Lk):
    out = {}
    for key, val in opts.items():
        if val == "mask":
            m = rng.random((Lq, Lk)) > 0.4
            m[:, 0] = True
            out[key] = m
        elif val == "bias":
            b = rng.standard_normal((Lq, Lk))
            b[:, 3] = -np.inf
            out[key] = b
        elif val == "seg":
            L = Lq if key == "q_segments" else Lk
            out[key] = (np.arange(L) * 3 // max(L, 1)).astype(np.int64)
        else:
            out[key] = val
    return out


@pytest.mark.parametrize("Lq", [1, 5, 70])         # decode path, tile path
@pytest.mark.parametrize("which", ["kv", "k", "v"])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(o) or "plain")
def test_every_option_and_path(Lq, which, opts):
    rng = np.random.default_rng(Lq * 7 + len(which))
    Lk, D, Dv = 150, 72, 40
    q, k, v = _qkv(rng, (2,), (2,), Lq, Lk, D, Dv)
    kw = _materialise(opts, rng, Lq, Lk)
    if "q_lengths" in kw:
        kw["q_lengths"] = np.array([min(Lq, 3), Lq])
    if "kv_lengths" in kw:
        kw["kv_lengths"] = np.array([13, Lk])
    kq = cattn.quantize_kv(k) if "k" in which else k
    vq = cattn.quantize_kv(v) if "v" in which else v
    kd = kq.dequantize(np.float64) if "k" in which else k
    vd = vq.dequantize(np.float64) if "v" in which else v
    for threads in (1, 2):
        got = cattn.attention(q, kq, vq, num_threads=threads, **kw)
        check_attention(got, q, kd, vd, np.float32, **kw)
    # the reference takes the cache itself
    want = ref.attention(q, kq, vq, **kw)
    want_d = ref.attention(q, kd, vd, **kw)
    for a, b in zip(want if isinstance(want, tuple) else (want,),
                    want_d if isinstance(want_d, tuple) else (want_d,)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape", [(1, 32, 1, 600, 128), (2, 8, 4, 333, 64), (1, 4, 30, 100, 128)])
@pytest.mark.parametrize("hk", [None, 2])
@pytest.mark.parametrize("qdt", [np.float16, np.float32, np.float64])
def test_gqa_dtypes_and_decode_splits(shape, hk, qdt):
    B, H, Lq, Lk, D = shape
    rng = np.random.default_rng(Lk)
    Hk = hk or H
    q, k, v = _qkv(rng, (B, H), (B, Hk), Lq, Lk, D, D, qdt)
    kq, vq = cattn.quantize_kv(k), cattn.quantize_kv(v)
    kd, vd = kq.dequantize(np.float64), vq.dequantize(np.float64)
    rdt = np.result_type(qdt, np.float32)
    for threads in (1, 2):
        out, lse = cattn.attention(q, kq, vq, return_lse=True, num_threads=threads)
        assert out.dtype == rdt
        check_attention((out, lse), q, kd, vd, rdt, return_lse=True)


def test_views_broadcast_and_large_scale():
    rng = np.random.default_rng(5)
    q, k, v = _qkv(rng, (3, 4), (1, 4), 2, 300, 64, 64)
    kq, vq = cattn.quantize_kv(k), cattn.quantize_kv(v)
    # a cache filled to 200 of 300 rows: a view, read in place
    kp, vp = kq[..., :200, :], vq[..., :200, :]
    got = cattn.attention(q, kp, vp)
    check_attention(got, q, kp.dequantize(np.float64), vp.dequantize(np.float64), np.float32)
    # a scale large enough for the float32 range guard (scans max |scale|)
    got = cattn.attention(q, kq, vq, scale=3e4, score="dot")
    check_attention(got, q, kq.dequantize(np.float64), vq.dequantize(np.float64),
                    np.float32, scale=3e4, score="dot")


def test_zero_rows_and_empty_cache():
    rng = np.random.default_rng(6)
    q, k, v = _qkv(rng, (2,), (2,), 1, 64, 32, 32)
    k[:, 10:20] = 0
    v[:, 5:40] = 0
    kq, vq = cattn.quantize_kv(k), cattn.quantize_kv(v)
    got = cattn.attention(q, kq, vq)
    check_attention(got, q, kq.dequantize(np.float64), vq.dequantize(np.float64), np.float32)
    e = cattn.quantize_kv(np.zeros((2, 0, 32), np.float32))
    out, lse = cattn.attention(q, e, e, return_lse=True)
    assert np.all(out == 0) and np.all(lse == -np.inf)


@pytest.mark.parametrize("heads", [(4, 4), (8, 2)])     # one row per K/V head, four
@pytest.mark.parametrize("Lk", [40, 600])                # one chunk, several
def test_plus_inf_score_as_float_cache(heads, Lk):
    """Scores that overflow to +inf: the output is NaN and lse +inf, as the
    float32 decode over the dequantized cache gives (the exp shift at a +inf
    max is the largest finite value, so the sum is +inf, never inf - inf)."""
    rng = np.random.default_rng(11)
    H, Hkv = heads
    k = rng.standard_normal((1, Hkv, Lk, 32)).astype(np.float32)
    v = rng.standard_normal((1, Hkv, Lk, 32)).astype(np.float32)
    k[..., 0] = np.abs(k[..., 0]) + 1.5          # every score overflows
    kq, vq = cattn.quantize_kv(k), cattn.quantize_kv(v)
    q = np.zeros((1, H, 1, 32), np.float32)
    q[..., 0] = 3e38
    out, lse = cattn.attention(q, kq, vq, return_lse=True, scale=1.0)
    e_out, e_lse = cattn.attention(q, kq.dequantize(), vq.dequantize(), return_lse=True,
                                   scale=1.0)
    assert np.isnan(e_out).all() and np.isposinf(e_lse).all()
    assert np.isnan(out).all() and np.isposinf(lse).all()


def test_decode_never_widens_the_cache():
    """A decode call over a 16 MiB int8 cache allocates far less than the
    64 MiB a float32 copy of K alone would take."""
    rng = np.random.default_rng(7)
    k = rng.standard_normal((1, 8, 16384, 128)).astype(np.float32)
    kq = cattn.quantize_kv(k)
    vq = cattn.quantize_kv(k[..., ::-1])
    del k
    q = rng.standard_normal((1, 8, 1, 128)).astype(np.float32)
    cattn.attention(q, kq, vq, num_threads=2)       # warm up
    tracemalloc.start()
    try:
        out = cattn.attention(q, kq, vq, num_threads=2)
        out = cattn.attention(q[..., :1, :].repeat(12, -2), kq, vq, num_threads=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (1, 8, 12, 128)
    assert peak < kq.nbytes // 4, peak


# ------------------------------------------------------------ ISA variants
SCRIPT = textwrap.dedent(
    """
    import numpy as np, cattn
    from cattn import reference as ref
    print(cattn._kernels.isa_name())
    rng = np.random.default_rng(0)
    for Lq, Lk, D, Dv in [(1, 700, 128, 128), (4, 300, 40, 72), (1, 129, 33, 7), (37, 300, 64, 48)]:
        q = rng.standard_normal((2, 4, Lq, D))
        k = rng.standard_normal((2, 2, Lk, D))
        v = rng.standard_normal((2, 2, Lk, Dv))
        kq, vq = cattn.quantize_kv(k), cattn.quantize_kv(v)
        for kw in [{}, {"causal": True}, {"score": "cosine"}, {"softcap": 2.0, "sinks": 0.5},
                   {"mask": rng.random((Lq, Lk)) > 0.3}, {"return_weights": True}]:
            for dt in (np.float64, np.float32):
                got = cattn.attention(q.astype(dt), kq, vq, num_threads=2, **kw)
                want = ref.attention(q.astype(dt), kq, vq, **kw)
                got = got if isinstance(got, tuple) else (got,)
                want = want if isinstance(want, tuple) else (want,)
                tol = 1e-10 if dt == np.float64 else 1e-4
                for a, b in zip(got, want):
                    assert np.max(np.abs(a - b)) < tol, (Lq, Lk, D, kw, dt)
    print("ok")
    """
)


@pytest.mark.parametrize("isa", ["generic", "haswell", "skylake"])
def test_variant_matches_reference(isa):
    res = run_code_under_isa(isa, SCRIPT)
    assert res.returncode == 0, res.stderr
    chosen, status = res.stdout.split("\n")[:2]
    assert status == "ok"
    if chosen != "portable":
        assert chosen == isa or isa == "skylake"
