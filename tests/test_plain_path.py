"""The plain path of ``cattn.attention`` (``_kernels.attention_plain``).

Plain calls (contiguous float32/float64 -- or bfloat16 -- arrays of one dtype with equal
leading dims, a dot/scaled_dot/cosine score, at most ``causal``,
``return_lse``, ``out=`` and ``num_threads`` as options) skip the
validate -> plan -> run layers.  Checked here: the results against the
float64 oracle and, bit for bit, against the general layers run on the same
call; every hostile argument raises what the general path raises; anything
not plain (strided, byte-swapped, subclassed, overlapping ``out`` ...) is
handed on and still computed or rejected correctly.
"""
import itertools
import os

import numpy as np
import pytest

import cattn
from cattn import _kernels, _plan, _run, _threads, _validate
from _oracle import check_attention, make_qkv, randn
from _subproc import run_code_under_isa

_DEFAULTS = dict(score="scaled_dot", scale=None, mask=None, bias=None, causal=False,
                 window=None, additive_weight=None, return_weights=False, return_lse=False,
                 num_threads=None, out=None, kv_lengths=None, q_lengths=None,
                 q_segments=None, kv_segments=None, softcap=None, sinks=None)


def general(q, k, v, **kw):
    """The same call through validate -> plan -> run (never the plain path)."""
    call = _validate.validate_attention(q, k, v, **{**_DEFAULTS, **kw})
    return _run.run_attention(call, _plan.plan_attention(call))


def plain(q, k, v, **kw):
    """``_kernels.attention_plain`` as ``cattn.attention`` calls it."""
    kw = {**_DEFAULTS, **kw}
    return _kernels.attention_plain(q, k, v, kw["score"], kw["scale"], kw["causal"],
                                    kw["return_lse"], kw["num_threads"], kw["out"],
                                    _plan.TILES, _threads.SERIAL_WORK)


def _same(a, b):
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
        return
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


# (lead, Lq, Lk, D, Dv): causal with Lq < Lk (a chunk at the end), Lq > Lk
# (the first queries see no key), one and several query blocks
SHAPES = [((2, 3), 16, 16, 8, 8), ((1,), 40, 70, 16, 12), ((3,), 70, 40, 8, 16),
          ((), 130, 130, 32, 32), ((2, 1, 2), 9, 200, 4, 4)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[0] + s[1:])))
@pytest.mark.parametrize("causal,return_lse,with_out",
                         list(itertools.product([False, True], repeat=3)))
def test_plain_matches_oracle_and_general_path(rng, dtype, shape, causal, return_lse,
                                               with_out):
    lead, lq, lk, d, dv = shape
    q, k, v = make_qkv(rng, lead, lq, lk, d, dv, dtype)
    kw = dict(causal=causal, return_lse=return_lse)
    out = np.full(lead + (lq, dv), np.nan, dtype) if with_out else None
    res = plain(q, k, v, out=out, **kw)
    assert res is not None, "a plain call was not taken by the plain path"
    got = res[0] if return_lse else res
    if with_out:
        assert got is out
    check_attention(res, q, k, v, **kw)
    _same(res, general(q, k, v, **kw))
    _same(res, cattn.attention(q, k, v, **kw))


@pytest.mark.parametrize("score,scale", [("dot", None), ("cosine", None), ("cosine", 3.0),
                                         ("scaled_dot", 0.25), ("dot", -1e4)])
def test_plain_scores_and_scales(rng, score, scale):
    q, k, v = make_qkv(rng, (2,), 20, 33, 8, 8, np.float32)
    kw = dict(score=score, scale=scale, causal=True, return_lse=True)
    res = plain(q, k, v, **kw)
    assert res is not None
    check_attention(res, q, k, v, **kw)
    _same(res, general(q, k, v, **kw))


def test_plain_threaded_call_matches_general_path(rng):
    # above the serial threshold: the plain path runs a team like the general one
    lq = lk = 128
    d = 64
    q, k, v = make_qkv(rng, (1, 8), lq, lk, d, d, np.float32)
    assert 8 * lq * lk * d >= _threads.SERIAL_WORK
    for causal in (False, True):
        kw = dict(causal=causal, return_lse=True, num_threads=2)
        res = plain(q, k, v, **kw)
        assert res is not None
        check_attention(res, q, k, v, **kw)
        _same(res, general(q, k, v, **kw))
        _same(res, plain(q, k, v, causal=causal, return_lse=True, num_threads=1))


class _Sub(np.ndarray):
    pass


def _not_plain_cases(rng):
    q, k, v = make_qkv(rng, (2,), 20, 24, 8, 8, np.float32)
    swapped = q.astype(q.dtype.newbyteorder())
    buf = np.zeros(q.nbytes + 1, np.uint8)[1:]
    unaligned = np.frombuffer(buf, np.float32).reshape(q.shape)
    unaligned[...] = q
    yield "strided query", (q[:, ::-1], k, v), {}
    yield "byte-swapped query", (swapped, k, v), {}
    yield "unaligned query", (unaligned, k, v), {}
    yield "subclass", (q.view(_Sub), k, v), {}
    yield "mixed dtypes", (q, k.astype(np.float64), v), {}
    yield "float16", (q.astype(np.float16), k.astype(np.float16), v.astype(np.float16)), {}
    yield "broadcast leading dims", (q, k[:1], v[:1]), {}
    yield "list", (q.tolist(), k, v), {}
    yield "decode-sized", (q[:, :2], k, v), {}
    yield "numpy scale", (q, k, v), {"scale": np.float64(0.5)}
    yield "int scale", (q, k, v), {"scale": 1}
    yield "huge scale", (q, k, v), {"scale": 1e5}
    yield "numpy bool causal", (q, k, v), {"causal": np.bool_(True)}
    yield "numpy int threads", (q, k, v), {"num_threads": np.int64(1)}
    yield "additive score", (q, k, v), {"score": "additive"}
    yield "strided out", (q, k, v), {"out": np.empty((2, 20, 16), np.float32)[..., ::2]}


def test_not_plain_calls_take_the_general_path(rng):
    for name, args, kw in _not_plain_cases(rng):
        assert plain(*args, **kw) is None, name
        want = general(*args, **kw)
        got = cattn.attention(*args, **kw)
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_out_overlapping_an_input_is_rejected(rng):
    q, k, v = make_qkv(rng, (2,), 20, 20, 8, 8, np.float32)
    for x in (q, k, v):
        with pytest.raises(ValueError, match="out must not overlap an input"):
            cattn.attention(q, k, v, out=x)
    # a view into the middle of one input's buffer
    kk = np.zeros((3, 20, 8), np.float32)
    kk[:2] = k
    with pytest.raises(ValueError, match="out must not overlap an input"):
        cattn.attention(q, kk[:2], v, out=kk[1:])
    # disjoint halves of one buffer are fine
    buf = np.zeros((4, 20, 8), np.float32)
    buf[:2] = q
    res = cattn.attention(buf[:2], k, v, out=buf[2:])
    assert res is not None and np.shares_memory(res, buf)
    check_attention(res, q, k, v)


def _raised(fn):
    try:
        fn()
    except (TypeError, ValueError) as exc:
        return type(exc), str(exc)
    return None


HOSTILE = [
    ("causal int", {"causal": 1}),
    ("causal str", {"causal": "yes"}),
    ("return_lse None", {"return_lse": None}),
    ("threads 0", {"num_threads": 0}),
    ("threads -1", {"num_threads": -1}),
    ("threads bool", {"num_threads": True}),
    ("threads float", {"num_threads": 2.0}),
    ("score bad", {"score": "dott"}),
    ("score not str", {"score": 3}),
    ("scale nan", {"scale": float("nan")}),
    ("scale inf", {"scale": float("inf")}),
    ("scale str", {"scale": "1"}),
    ("scale bool", {"scale": True}),
    ("out wrong dtype", {"out": np.empty((2, 20, 8), np.float64)}),
    ("out wrong shape", {"out": np.empty((2, 20, 9), np.float32)}),
    ("out read-only", {"out": np.empty((2, 20, 8), np.float32)}),
    ("out list", {"out": [[0.0]]}),
    ("out self-overlapping",
     {"out": np.lib.stride_tricks.as_strided(np.empty(8, np.float32), (2, 20, 8), (0, 0, 4))}),
]


@pytest.mark.parametrize("name,kw", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_options_raise_as_the_general_path(rng, name, kw):
    q, k, v = make_qkv(rng, (2,), 20, 24, 8, 8, np.float32)
    kw = dict(kw)
    if name == "out read-only":
        kw["out"].flags.writeable = False
    for extra in ({}, {"causal": True, "return_lse": True}):
        kw2 = {**extra, **kw}
        want = _raised(lambda: general(q, k, v, **kw2))
        assert want is not None, name
        assert _raised(lambda: cattn.attention(q, k, v, **kw2)) == want


@pytest.mark.parametrize("shapes", [
    ((2, 20, 8), (2, 24, 7), (2, 24, 8)),       # D differs
    ((2, 20, 8), (2, 24, 8), (2, 25, 8)),       # Lk differs
    ((2, 20, 8), (3, 24, 8), (3, 24, 8)),       # leading dims do not broadcast
    ((20,), (24,), (24,)),                      # 1-D
    ((1,) * 31 + (20, 8), (1,) * 31 + (24, 8), (1,) * 31 + (24, 8)),   # 33 dims
])
def test_hostile_shapes_raise_as_the_general_path(rng, shapes):
    q, k, v = (randn(rng, s, np.float32) for s in shapes)
    want = _raised(lambda: general(q, k, v))
    assert want is not None and want[0] is ValueError
    for causal in (False, True):
        assert _raised(lambda: cattn.attention(q, k, v, causal=causal)) == want


def test_plain_nonfinite_inputs_propagate_like_the_general_path(rng):
    q, k, v = make_qkv(rng, (2,), 20, 20, 8, 8, np.float32)
    v[0, 5, 3] = np.inf        # a key the first five queries cannot see (causal)
    k[1, 2, 0] = np.nan
    for causal in (False, True):
        res = plain(q, k, v, causal=causal, return_lse=True)
        _same(res, general(q, k, v, causal=causal, return_lse=True))
    out = plain(q, k, v, causal=True)
    assert np.isfinite(out[0, :5]).all()


@pytest.mark.parametrize("N", [1, 2, 3, 8, 64])
@pytest.mark.parametrize("Lq", [1, 9, 16, 17, 32, 64, 100, 128, 1000])
@pytest.mark.parametrize("n_threads", [1, 2, 4, 16])
def test_tile_block_policy(N, Lq, n_threads):
    rup16 = -(-Lq // 16) * 16
    for cdt, D, span, base in [(np.float32, 64, -1, _plan.BLOCK_Q),
                               (np.float64, 64, -1, _plan.BLOCK_Q_F64_NARROW),
                               (np.float32, 64, 128, _plan.BLOCK_Q_SHORT_SPAN),
                               (np.float32, 64, 4096, _plan.BLOCK_Q)]:
        bq, bk = _plan.tile_blocks(N, Lq, n_threads, cdt, D, span >= 0, span=span)
        assert bk == _plan.BLOCK_K
        first = min(base, max(16, rup16))
        if n_threads == 1:
            assert bq == first             # one thread: blocks are never split
        else:
            # split only while threads lack a block, never below 32
            assert bq <= first and (bq == first or bq >= 32)
            if bq > 32:
                assert N * -(-Lq // bq) >= 2 * n_threads
            if bq < first:
                assert N * -(-Lq // (2 * bq)) < 2 * n_threads


def _bf16_or_skip():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    return np.dtype(ml_dtypes.bfloat16)


def _bits(x):
    return x.view(np.uint16) if x.dtype.kind == "V" else x


@pytest.mark.parametrize("shape", SHAPES[:3], ids=lambda s: "x".join(map(str, s[0] + s[1:])))
@pytest.mark.parametrize("causal,return_lse,out_dtype",
                         [(False, False, None), (True, True, None), (False, True, "bf16"),
                          (True, False, "bf16"), (False, True, np.float32)])
def test_plain_bfloat16(rng, shape, causal, return_lse, out_dtype):
    """bfloat16 q, k, v (ml_dtypes) take the plain path too: read and written
    as bfloat16 by the kernels, bit for bit what the general layers give
    (which widen q in NumPy), lse in float32, out= bfloat16 or float32."""
    bf = _bf16_or_skip()
    lead, lq, lk, d, dv = shape
    q, k, v = (x.astype(bf) for x in make_qkv(rng, lead, lq, lk, d, dv, np.float32))
    odt = bf if out_dtype == "bf16" else out_dtype
    out = None if odt is None else np.full(lead + (lq, dv), np.nan, odt)
    kw = dict(causal=causal, return_lse=return_lse)
    res = plain(q, k, v, out=out, **kw)
    assert res is not None, "a plain bfloat16 call was not taken by the plain path"
    got = res[0] if return_lse else res
    assert got.dtype == (bf if odt is None else odt)
    if out is not None:
        assert got is out
    if return_lse:
        assert res[1].dtype == np.float32
    want = general(q, k, v, out=None if out is None else np.empty_like(out), **kw)
    for a, b in zip(res if return_lse else (res,), want if return_lse else (want,)):
        np.testing.assert_array_equal(_bits(a), _bits(b))
    # and near the float64 oracle on the bfloat16 values (bfloat16 products)
    e = cattn.reference.attention(*(x.astype(np.float64) for x in (q, k, v)), causal=causal)
    g = got.astype(np.float64)
    assert np.linalg.norm(g - e) <= 1e-2 * np.linalg.norm(e) + 1e-6


def test_bfloat16_calls_not_plain_are_handed_on(rng):
    bf = _bf16_or_skip()
    q, k, v = make_qkv(rng, (2,), 20, 24, 8, 8, np.float32)
    qb, kb, vb = q.astype(bf), k.astype(bf), v.astype(bf)
    cases = [("cosine score", (qb, kb, vb), {"score": "cosine"}),
             ("float32 query", (q, kb, vb), {}),
             ("strided key", (qb, kb[:, ::-1], vb), {})]
    for name, args, kw in cases:
        assert plain(*args, **kw) is None, name
        got = cattn.attention(*args, **kw)
        want = general(*args, **kw)
        np.testing.assert_array_equal(_bits(got), _bits(want), err_msg=name)
    bad = np.empty((2, 20, 8), np.float16)        # refused as the general path does
    assert plain(qb, kb, vb, out=bad) is None
    with pytest.raises(ValueError, match="out must have"):
        cattn.attention(qb, kb, vb, out=bad)


_BF16_ISA_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import test_plain_path as t
rng = np.random.default_rng(5)
for shape in t.SHAPES[:3]:
    t.test_plain_bfloat16(rng, shape, True, True, "bf16")
    t.test_plain_bfloat16(rng, shape, False, False, None)
t.test_bfloat16_calls_not_plain_are_handed_on(rng)
"""


@pytest.mark.parametrize("isa", ["generic", "haswell", "skylake", "cooperlake"])
def test_plain_bfloat16_isa_variants(isa):
    """The widening kernels (no VDPBF16PS) read the bfloat16 query too."""
    _bf16_or_skip()
    res = run_code_under_isa(isa, _BF16_ISA_SCRIPT, os.path.dirname(__file__))
    assert res.returncode == 0, res.stderr
