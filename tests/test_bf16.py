"""bfloat16: ml_dtypes arrays and torch/DLPack tensors in, a bfloat16 K/V
cache read in place (VDPBF16PS products on the cooperlake variant, widening
elsewhere), every option, against the float64 oracle (which widens the
bfloat16 inputs exactly)."""
import textwrap

import numpy as np
import pytest

import cattn
from cattn import _bf16
from cattn import reference as ref
from _subproc import run_code_under_isa

ml_dtypes = pytest.importorskip("ml_dtypes")
BF = np.dtype(ml_dtypes.bfloat16)
# The documented bound (README): norm-wise relative error <= 4e-3 against
# float64; max abs error <= that of PyTorch's own bf16 SDPA (torch test
# below), and here <= 2 bf16 half-ulps of the largest output + 1e-3.
REL = 4e-3


def _rnd(shape, rng, dt=BF):
    return rng.standard_normal(shape).astype(dt)


def _err(got, exp):
    got = np.asarray(got, dtype=np.float64)
    exp = np.asarray(exp, dtype=np.float64)
    finite = np.isfinite(exp)
    with np.errstate(invalid="ignore"):
        d = np.where(finite, got - exp, 0)
    rel = np.linalg.norm(d) / max(np.linalg.norm(np.where(finite, exp, 0)), 1e-30)
    return rel, float(np.abs(d).max(initial=0))


def _check(got, exp):
    rel, mx = _err(got, exp)
    amax = float(np.abs(np.where(np.isfinite(exp), exp, 0)).max(initial=0))
    assert rel <= REL, rel
    assert mx <= 2 * amax * 2.0 ** -8 + 1e-3, (mx, amax)


@pytest.mark.parametrize("shape", [(1, 8, 128, 128, 64), (2, 4, 200, 300, 64),
                                   (1, 4, 256, 256, 128), (2, 3, 77, 130, 21)])
def test_accuracy_shapes(shape):
    B, H, Lq, Lk, D = shape
    rng = np.random.default_rng(0)
    q, k, v = _rnd((B, H, Lq, D), rng), _rnd((B, H, Lk, D), rng), _rnd((B, H, Lk, D), rng)
    out = cattn.attention(q, k, v)
    assert out.dtype == BF
    _check(out, ref.attention(q, k, v))


OPTIONS = [
    {}, {"causal": True}, {"window": (20, 3)}, {"score": "dot", "scale": 0.05},
    {"score": "cosine"}, {"score": "additive"}, {"softcap": 2.0}, {"sinks": 0.7},
    {"kv_lengths": [50, 90]}, {"q_lengths": [10, 70]},
    {"q_segments": np.arange(70) // 20, "kv_segments": np.arange(90) // 25},
]


@pytest.mark.parametrize("kw", OPTIONS, ids=lambda kw: "-".join(kw) or "plain")
@pytest.mark.parametrize("Lq", [70, 3])     # tile and decode paths
def test_options(kw, Lq):
    rng = np.random.default_rng(1)
    if Lq != 70:
        kw = {n: (x[:Lq] if n == "q_segments" else x) for n, x in kw.items()}
        if "q_lengths" in kw:
            kw["q_lengths"] = [1, 3]
    q = _rnd((2, 4, Lq, 32), rng)
    k, v = _rnd((2, 2, 90, 32), rng), _rnd((2, 2, 90, 24), rng)    # GQA 4/2
    out, lse = cattn.attention(q, k, v, return_lse=True, **kw)
    e_out, e_lse = ref.attention(q, k, v, return_lse=True, **kw)
    assert out.dtype == BF and lse.dtype == np.float32
    _check(out, e_out)
    assert _err(lse, e_lse)[1] < 2e-2


def test_mask_bias_weights():
    rng = np.random.default_rng(2)
    q, k, v = _rnd((2, 2, 40, 16), rng), _rnd((2, 2, 60, 16), rng), _rnd((2, 2, 60, 16), rng)
    mask = rng.random((40, 60)) > 0.3
    bias = _rnd((40, 60), rng)
    for kw in ({"mask": mask}, {"bias": bias}):
        out, w = cattn.attention(q, k, v, return_weights=True, **kw)
        e_out, e_w = ref.attention(q, k, v, return_weights=True, **kw)
        _check(out, e_out)
        assert w.dtype == np.float32 and _err(w, e_w)[1] < 1e-2
        out, km = cattn.attention(q, k, v, return_weights="key_mass", **kw)
        e_out, e_km = ref.attention(q, k, v, return_weights="key_mass", **kw)
        assert km.dtype == np.float32 and _err(km, e_km)[0] < 1e-2


def test_masked_nonfinite_values_do_not_leak():
    rng = np.random.default_rng(3)
    q, k, v = _rnd((1, 1, 40, 16), rng), _rnd((1, 1, 64, 16), rng), _rnd((1, 1, 64, 16), rng)
    v[..., 50:, :] = np.inf
    k[..., 55:, :] = np.nan
    out = cattn.attention(q, k, v, kv_lengths=[50])
    assert np.isfinite(out.astype(np.float32)).all()
    mask = np.ones((40, 64), bool)
    mask[:, 50:] = False
    out = cattn.attention(q, k, v, mask=mask)
    _check(out, ref.attention(q, k, v, mask=mask))


def test_mixed_dtypes_and_float32_output():
    rng = np.random.default_rng(4)
    q, k, v = _rnd((2, 3, 50, 32), rng), _rnd((2, 3, 80, 32), rng), _rnd((2, 3, 80, 32), rng)
    exp = ref.attention(q, k, v)
    # a float32 query over a bfloat16 cache: float32 result, no output rounding
    o = cattn.attention(q.astype(np.float32), k, v)
    assert o.dtype == np.float32 and _err(o, exp)[0] < 2e-3
    # float32 on request for an all-bfloat16 call: out= of float32
    out = np.empty((2, 3, 50, 32), np.float32)
    assert cattn.attention(q, k, v, out=out) is out
    assert _err(out, exp)[0] < 2e-3
    # float64 anywhere: float64 math (bfloat16 widened exactly)
    o = cattn.attention(q.astype(np.float64), k, v)
    assert o.dtype == np.float64 and _err(o, exp)[1] < 1e-12
    # one of K/V bfloat16
    o = cattn.attention(q, k, v.astype(np.float32))
    assert o.dtype == np.float32 and _err(o, exp)[0] < 2e-3
    with pytest.raises(ValueError, match="out"):
        cattn.attention(q, k, v, out=np.empty((2, 3, 50, 32), np.float64))


def test_bits_without_ml_dtypes(monkeypatch):
    """Without ml_dtypes a DLPack bfloat16 tensor is viewed as uint16 bits:
    the cache is read in place and the result is float32."""
    rng = np.random.default_rng(5)
    q, k, v = _rnd((1, 2, 30, 16), rng), _rnd((1, 2, 40, 16), rng), _rnd((1, 2, 40, 16), rng)
    monkeypatch.setattr(_bf16, "bf16_dtype", lambda: None)
    qb, kb, vb = (x.view(np.uint16).view(_bf16.BF16Bits) for x in (q, k, v))
    o = cattn.attention(qb, kb, vb, causal=True)
    assert o.dtype == np.float32
    assert _err(o, ref.attention(q, k, v, causal=True))[0] < 2e-3


def test_stages_and_merge():
    rng = np.random.default_rng(6)
    q, k, v = _rnd((2, 2, 30, 16), rng), _rnd((2, 2, 50, 16), rng), _rnd((2, 2, 50, 8), rng)
    s = cattn.scores(q, k)
    assert s.dtype == BF and _err(s, ref.scores(q, k))[0] < REL
    w = cattn.softmax(s.astype(np.float32))
    a = cattn.aggregate(w.astype(BF), v)
    assert a.dtype == BF and _err(a, ref.attention(q, k, v))[0] < 1e-2
    o1, l1 = cattn.attention(q, k[..., :20, :], v[..., :20, :], return_lse=True)
    o2, l2 = cattn.attention(q, k[..., 20:, :], v[..., 20:, :], return_lse=True)
    m, _ = cattn.merge([o1, o2], [l1, l2])
    assert _err(m, ref.attention(q, k, v))[0] < 2 * REL



@pytest.mark.parametrize("out_dt,lse_dt", [(BF, np.float16), (np.float16, BF), (BF, np.float32)])
def test_merge_mixed_with_float16(out_dt, lse_dt):
    """bfloat16 beside float16 has no common NumPy type (np.result_type
    raises): merge computes in float32, which holds both, and returns it."""
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal(s) for s in ((3, 4, 8), (3, 10, 8), (3, 10, 5)))
    parts = [cattn.attention(q, k[:, s], v[:, s], return_lse=True)
             for s in (slice(0, 6), slice(6, 10))]
    out, lse = cattn.merge([o.astype(out_dt) for o, _ in parts],
                           [l.astype(lse_dt) for _, l in parts])
    assert out.dtype == np.float32 and lse.dtype == np.float32
    e_out, e_lse = ref.attention(q, k, v, return_lse=True)
    # the inputs were rounded to 8 (bfloat16) or 11 (float16) bits
    np.testing.assert_allclose(out, e_out, atol=2e-2)
    np.testing.assert_allclose(lse, e_lse, atol=2e-2 * np.abs(e_lse).max())


def test_stages_mixed_with_float16():
    """The stage functions promote bfloat16 beside float16 to float32 too
    (np.result_type raises for the pair)."""
    rng = np.random.default_rng(4)
    q, k = rng.standard_normal((2, 6, 8)), rng.standard_normal((2, 9, 8))
    w, v = rng.random((2, 6, 9)), rng.standard_normal((2, 9, 5))
    s = cattn.scores(q.astype(BF), k.astype(np.float16))
    assert s.dtype == np.float32 and _err(s, ref.scores(q, k))[0] < REL
    a = cattn.aggregate(w.astype(np.float16), v.astype(BF))
    assert a.dtype == np.float32
    np.testing.assert_allclose(a, w @ v, atol=3e-2 * np.abs(w @ v).max())

def test_dask():
    da = pytest.importorskip("dask.array")
    import cattn.dask
    rng = np.random.default_rng(7)
    q, k, v = _rnd((2, 2, 60, 16), rng), _rnd((2, 2, 90, 16), rng), _rnd((2, 2, 90, 16), rng)
    qd = da.from_array(q, chunks=(1, 2, 30, 16))
    kd = da.from_array(k, chunks=(1, 2, 30, 16))
    vd = da.from_array(v, chunks=(1, 2, 30, 16))
    r = cattn.dask.attention(qd, kd, vd, causal=True).compute()
    assert r.dtype == BF
    _check(r, ref.attention(q, k, v, causal=True))


def test_torch_bf16_without_copy_and_against_sdpa():
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 8, 256, 64, generator=g).to(torch.bfloat16) for _ in range(3))
    arr = _bf16.from_dlpack(k, "key")
    assert arr.__array_interface__["data"][0] == k.data_ptr()      # the tensor's memory
    out = cattn.attention(q, k, v, causal=True)
    exp = ref.attention(q, k, v, causal=True)
    ours = _err(out, exp)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    theirs = _err(sdpa.float().numpy(), exp)
    assert ours[0] <= REL and ours[1] <= theirs[1] * 1.5 + 1e-3, (ours, theirs)


VARIANT = textwrap.dedent(
    """
    import numpy as np, ml_dtypes, cattn
    from cattn import reference as ref
    bf = ml_dtypes.bfloat16
    print(cattn._kernels.isa_name())
    rng = np.random.default_rng(0)
    for Lq, Lk in [(143, 587), (5, 300), (40, 40)]:
        q = rng.standard_normal((2, 4, Lq, 21)).astype(bf)
        k = rng.standard_normal((2, 2, Lk, 21)).astype(bf)
        v = rng.standard_normal((2, 2, Lk, 19)).astype(bf)
        mask = rng.random((Lq, Lk)) > 0.3
        for kw in [{}, {"causal": True}, {"mask": mask}, {"score": "cosine"},
                   {"score": "additive", "window": (50, 3)}, {"softcap": 2.0, "sinks": 0.5}]:
            out = np.zeros((2, 4, Lq, 19), np.float32)
            cattn.attention(q, k, v, out=out, num_threads=2, **kw)
            e = ref.attention(q, k, v, **kw)
            rel = np.linalg.norm(out - e) / np.linalg.norm(e)
            assert rel < 4e-3, (Lq, Lk, kw, rel)
    print("ok")
    """
)


@pytest.mark.parametrize("isa", ["generic", "haswell", "skylake", "cooperlake"])
def test_variants(isa):
    res = run_code_under_isa(isa, VARIANT)
    assert res.returncode == 0, res.stderr
    chosen, status = res.stdout.split("\n")[:2]
    assert status == "ok"
    if chosen != "portable":
        order = ["generic", "haswell", "skylake", "cooperlake"]
        assert order.index(chosen) <= order.index(isa)


@pytest.mark.parametrize("kw", [dict(window=(5, 0)), dict(kv_lengths=np.array([30, 17])),
                                dict(softcap=3.0, causal=True), dict(sinks=0.5)])
@pytest.mark.parametrize("Lq", [1, 4, 40])           # decode (GQA fold), decode, tile
def test_general_path_reads_the_bfloat16_query(kw, Lq):
    """With an option the plain path does not take, a bfloat16 query still
    reaches the kernels as bfloat16 (no float32 copy): bit for bit the call
    on the query widened to float32, whose float32 result rounded to
    bfloat16 is what the kernels write (out=None on both: the same GQA
    decode fold)."""
    rng = np.random.default_rng(9)
    q = _rnd((2, 8, Lq, 16), rng)
    k, v = _rnd((2, 2, 30, 16), rng), _rnd((2, 2, 30, 16), rng)
    got = cattn.attention(q, k, v, **kw)
    want = cattn.attention(_bf16.widen(q), k, v, **kw)
    assert got.dtype == BF and want.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint16), want.astype(BF).view(np.uint16))


def test_general_path_makes_no_float32_copy_of_the_query():
    import tracemalloc
    rng = np.random.default_rng(10)
    q = _rnd((1, 4, 2048, 64), rng)                  # 1 MiB as float32
    k, v = _rnd((1, 4, 64, 64), rng), _rnd((1, 4, 64, 64), rng)
    mask = np.ones((2048, 64), bool)
    cattn.attention(q, k, v, mask=mask)
    tracemalloc.start()
    try:
        cattn.attention(q, k, v, mask=mask)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the bfloat16 result (512 KiB) and small bookkeeping; a float32 copy of
    # q would add 2 MiB
    assert peak < (1 << 20) + (256 << 10), peak
