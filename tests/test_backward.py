"""attention_backward against the float64 oracle differentiated by central
differences (every option), against an analytic float64 backward on the
peers' grids, float32 against a naive float32 backward, and the edge
cases: padding, empty rows, NaN in masked keys, errors."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cattn
import cattn.reference as ref
from cattn import _backward
from _oracle import fd_grad

EPS32 = float(np.finfo(np.float32).eps)


# ------------------------------------------------------------------ helpers
def _check_fd(q, k, v, dO, names=("query", "key", "value"), rtol=1e-6, **kw):
    """Every gradient attention_backward returns against central differences
    of ``reference.attention``; the differentiable options are taken from
    ``kw`` by name."""
    out, lse = cattn.attention(q, k, v, return_lse=True, **kw)
    g = cattn.attention_backward(dO, q, k, v, out, lse, **kw)
    inputs = {"query": q, "key": k, "value": v}
    got = {"query": g.dq, "key": g.dk, "value": g.dv}
    for opt, field in (("bias", "dbias"), ("scale", "dscale"), ("sinks", "dsinks"),
                       ("additive_weight", "dadditive_weight")):
        if opt in names:
            inputs[opt] = kw[opt]
            got[opt] = getattr(g, field)
    for name in names:
        def loss(x, name=name):
            args = dict(inputs)
            args[name] = x
            opts = {o: args[o] for o in ("bias", "scale", "sinks", "additive_weight")
                    if o in args}
            rest = {o: val for o, val in kw.items() if o not in opts}
            with np.errstate(invalid="ignore"):
                o = ref.attention(args["query"], args["key"], args["value"], **opts, **rest)
            return float(np.sum(np.where(np.isfinite(o), o, 0) * dO))
        want = fd_grad(loss, inputs[name])
        have = got[name]
        assert have is not None and have.shape == np.shape(inputs[name]), name
        assert np.all(np.isfinite(have)), name
        err = np.max(np.abs(have - want), initial=0)
        scale = max(np.max(np.abs(want), initial=0), 1e-3)
        assert err <= rtol * scale + 1e-8, (name, err, scale, kw)
    return g


def _qkv(rng, lead, Lq, Lk, D, Dv, kv_lead=None):
    kv_lead = lead if kv_lead is None else kv_lead
    return (rng.standard_normal(lead + (Lq, D)), rng.standard_normal(kv_lead + (Lk, D)),
            rng.standard_normal(kv_lead + (Lk, Dv)), rng.standard_normal(lead + (Lq, Dv)))


# ------------------------------------------- finite differences, every option
FD_CASES = {
    "plain": {},
    "dot": {"score": "dot"},
    "causal": {"causal": True},
    "window": {"window": (2, 1)},
    "window_left": {"window": (1, None)},
    "softcap": {"softcap": 1.3},
    "cosine": {"score": "cosine"},
    "mask": {"mask": np.random.default_rng(1).random((5, 7)) > 0.4},
    "kv_lengths": {"kv_lengths": np.array([4, 7])},
    "q_lengths": {"q_lengths": np.array([3, 5])},
    "segments": {"q_segments": np.array([0, 0, 1, 1, 1]),
                 "kv_segments": np.array([0, 0, 0, 1, 1, 1, 1])},
    "causal_softcap_window": {"causal": True, "softcap": 2.0, "window": (3, 0)},
    # the diagonal at each sequence's own end (query i at i + kv_len - q_len)
    "causal_kv_lengths": {"causal": True, "kv_lengths": np.array([5, 7])},
    "causal_both_lengths": {"causal": True, "q_lengths": np.array([3, 5]),
                            "kv_lengths": np.array([4, 6])},
    "window_kv_lengths": {"window": (2, 0), "kv_lengths": np.array([6, 5])},
}


@pytest.mark.parametrize("case", sorted(FD_CASES))
def test_gradients_match_finite_differences(case):
    rng = np.random.default_rng(0)
    q, k, v, dO = _qkv(rng, (2, 2), 5, 7, 4, 3)
    _check_fd(q, k, v, dO, **FD_CASES[case])


@pytest.mark.parametrize("shape", ["full", "row", "per_head"])
def test_bias_gradient_has_the_bias_shape(shape):
    rng = np.random.default_rng(2)
    q, k, v, dO = _qkv(rng, (2, 2), 5, 7, 4, 3)
    bias = {"full": rng.standard_normal((2, 2, 5, 7)), "row": rng.standard_normal((7,)),
            "per_head": rng.standard_normal((2, 1, 1))}[shape]
    g = _check_fd(q, k, v, dO, names=("query", "key", "value", "bias"), bias=bias)
    assert g.dbias.shape == bias.shape


def test_bias_with_masked_entries_and_softcap():
    rng = np.random.default_rng(3)
    q, k, v, dO = _qkv(rng, (1, 2), 5, 7, 4, 3)
    bias = rng.standard_normal((5, 7))
    bias[1, 2] = bias[4, 0] = -np.inf
    out, lse = cattn.attention(q, k, v, return_lse=True, bias=bias, softcap=1.5)
    g = cattn.attention_backward(dO, q, k, v, out, lse, bias=bias, softcap=1.5)
    assert g.dbias[1, 2] == 0 and g.dbias[4, 0] == 0
    finite = np.where(np.isinf(bias), 0.0, bias)

    def loss(b):
        return float(np.sum(ref.attention(q, k, v, bias=np.where(np.isinf(bias), bias, b),
                                          softcap=1.5) * dO))
    want = fd_grad(loss, finite)
    assert np.max(np.abs(g.dbias - want)) < 1e-6 * np.max(np.abs(want))


def test_per_head_scale_sinks_additive_weight():
    rng = np.random.default_rng(4)
    q, k, v, dO = _qkv(rng, (2, 2), 5, 7, 4, 3)
    _check_fd(q, k, v, dO, names=("query", "key", "value", "scale", "sinks"),
              scale=np.array([0.7, -0.4]), sinks=np.array([0.3, -1.0]))
    _check_fd(q, k, v, dO, names=("query", "key", "value", "additive_weight", "scale"),
              score="additive", additive_weight=rng.standard_normal(4),
              scale=np.array([0.9, 1.3]), causal=True, softcap=2.5)


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_gqa_and_mqa_sum_over_shared_heads(kv_heads):
    rng = np.random.default_rng(5)
    q, k, v, dO = _qkv(rng, (2, 4), 6, 5, 4, 3, kv_lead=(2, kv_heads))
    g = _check_fd(q, k, v, dO, causal=True, softcap=3.0)
    assert g.dk.shape == k.shape and g.dv.shape == v.shape


def test_broadcast_leading_dims():
    rng = np.random.default_rng(6)
    q = rng.standard_normal((3, 5, 4))             # no batch dim: broadcast
    k = rng.standard_normal((2, 3, 7, 4))
    v = rng.standard_normal((1, 3, 7, 3))          # broadcast batch
    dO = rng.standard_normal((2, 3, 5, 3))
    _check_fd(q, k, v, dO, window=(2, 2))


# ----------------------------------------------------------- edge cases
def test_padding_and_empty_rows_get_zero_gradient():
    rng = np.random.default_rng(7)
    q, k, v, dO = _qkv(rng, (2, 2), 6, 8, 4, 3)
    mask = np.ones((6, 8), bool)
    mask[2] = False                                 # row 2 sees no key
    kw = dict(mask=mask, q_lengths=np.array([4, 6]), kv_lengths=np.array([5, 8]))
    g = _check_fd(q, k, v, dO, **kw)
    assert np.all(g.dq[0, :, 4:] == 0) and np.all(g.dq[:, :, 2] == 0)
    assert np.all(g.dk[0, :, 5:] == 0) and np.all(g.dv[0, :, 5:] == 0)


def test_nan_in_masked_keys_values_and_queries_does_not_leak():
    rng = np.random.default_rng(8)
    for kw in ({"kv_lengths": np.array([4])}, {"causal": True}):
        q, k, v, dO = _qkv(rng, (1, 2), 6, 8, 4, 3)
        mask = np.ones((6, 8), bool)
        mask[:, 6] = False
        k[..., 6, 1] = np.nan
        v[..., 6, 0] = np.inf
        if "kv_lengths" in kw:
            k[..., 5:, :] = np.nan
            v[..., 5:, :] = np.inf
        mask[3] = False
        q[..., 3, :] = np.nan                       # a query that attends nothing
        out, lse = cattn.attention(q, k, v, return_lse=True, mask=mask, **kw)
        g = cattn.attention_backward(dO, q, k, v, out, lse, mask=mask, **kw)
        for x in g[:3]:
            assert np.all(np.isfinite(x)), kw
        assert np.all(g.dq[..., 3, :] == 0)


def test_fully_masked_everything_is_zero_not_nan():
    rng = np.random.default_rng(9)
    q, k, v, dO = _qkv(rng, (2,), 4, 5, 3, 2)
    mask = np.zeros((4, 5), bool)
    for dt in (np.float32, np.float64):
        a = [x.astype(dt) for x in (q, k, v, dO)]
        out, lse = cattn.attention(*a[:3], return_lse=True, mask=mask, sinks=0.5)
        g = cattn.attention_backward(a[3], *a[:3], out, lse, mask=mask, sinks=0.5)
        for x in g[:3]:
            assert x.dtype == dt and np.all(x == 0)


def test_float16_caches_return_float16():
    rng = np.random.default_rng(10)
    q, k, v, dO = _qkv(rng, (1, 2), 9, 11, 8, 8)
    q32, dO32 = q.astype(np.float32), dO.astype(np.float32)
    k16, v16 = k.astype(np.float16), v.astype(np.float16)
    out, lse = cattn.attention(q32, k16, v16, return_lse=True)
    g = cattn.attention_backward(dO32, q32, k16, v16, out, lse)
    assert g.dq.dtype == np.float32 and g.dk.dtype == np.float16 and g.dv.dtype == np.float16
    out64, lse64 = cattn.attention(q, k16.astype(float), v16.astype(float), return_lse=True)
    want = cattn.attention_backward(dO32.astype(float), q32.astype(float), k16.astype(float),
                                    v16.astype(float), out64, lse64)
    assert np.max(np.abs(g.dq - want.dq)) < 1e-4
    assert np.max(np.abs(g.dk.astype(float) - want.dk)) < 1e-2   # float16 rounding


def test_errors_name_the_argument():
    rng = np.random.default_rng(11)
    q, k, v, dO = _qkv(rng, (2,), 4, 5, 3, 2)
    out, lse = cattn.attention(q, k, v, return_lse=True)
    with pytest.raises(ValueError, match="dout"):
        cattn.attention_backward(dO[..., :1], q, k, v, out, lse)
    with pytest.raises(ValueError, match="lse"):
        cattn.attention_backward(dO, q, k, v, out, lse[..., :2])
    with pytest.raises(ValueError, match="out"):
        cattn.attention_backward(dO, q, k, v, out[:1], lse)
    with pytest.raises(TypeError, match="dout"):
        cattn.attention_backward(np.array([["a"]]), q, k, v, out, lse)
    with pytest.raises(ValueError, match="window"):
        cattn.attention_backward(dO, q, k, v, out, lse, window=(1, 2, 3))


# ------------------------------------- an analytic backward (peers' grids)
def naive_backward(q, k, v, dO, dtype, causal=False, window=None, softcap=None):
    """scores, softmax, output and their analytic gradients, all in dtype
    (GQA heads expanded, then summed back)."""
    dt = np.dtype(dtype)
    q, k, v, dO = (np.asarray(x).astype(dt) for x in (q, k, v, dO))
    g = q.shape[-3] // k.shape[-3]
    ke, ve = np.repeat(k, g, axis=-3), np.repeat(v, g, axis=-3)
    Lq, Lk, D = q.shape[-2], k.shape[-2], q.shape[-1]
    sc = dt.type(1 / np.sqrt(D))
    s = (q @ np.swapaxes(ke, -1, -2)) * sc
    if softcap:
        t = np.tanh(s / dt.type(softcap))
        s = dt.type(softcap) * t
    i = np.arange(Lq)[:, None] + Lk - Lq
    j = np.arange(Lk)[None, :]
    keep = np.ones((Lq, Lk), bool)
    if causal:
        keep &= j <= i
    if window:
        keep &= (j >= i - window[0]) & (j <= i + window[1])
    s = np.where(keep, s, -np.inf)
    m = np.max(s, -1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    e = np.where(keep, np.exp(s - m), 0)
    den = e.sum(-1, keepdims=True)
    p = np.where(den > 0, e / np.where(den > 0, den, 1), 0).astype(dt)
    o = p @ ve
    dv = np.swapaxes(p, -1, -2) @ dO
    dp = dO @ np.swapaxes(ve, -1, -2)
    ds = p * (dp - np.sum(dO * o, -1, keepdims=True))
    if softcap:
        ds = ds * (1 - t * t)
    dq = (ds @ ke) * sc
    dk = (np.swapaxes(ds, -1, -2) @ q) * sc

    def fold(x):
        return x.reshape(x.shape[:-3] + (x.shape[-3] // g, g) + x.shape[-2:]).sum(-3)
    return dq, fold(dk), fold(dv)


GRID = [((113, 203), 32, 2, {}), ((1, 239), 64, 1, {"causal": True}),
        ((799, 3), 40, 2, {"causal": True}), ((113, 203), 128, 1, {"window": (17, 5)}),
        ((128, 217), 256, 2, {"softcap": 5.0}), ((64, 256), 96, 4, {"causal": True}),
        ((239, 1), 59, 2, {})]


@pytest.mark.parametrize("seqlens,D,kv_heads,kw", GRID)
def test_peers_grid_float64_and_float32(seqlens, D, kv_heads, kw):
    Lq, Lk = seqlens
    rng = np.random.default_rng(Lq * 1000 + D)
    q, k, v, dO = _qkv(rng, (1, 4), Lq, Lk, D, D, kv_lead=(1, kv_heads))
    want = naive_backward(q, k, v, dO, np.float64, **kw)
    out, lse = cattn.attention(q, k, v, return_lse=True, **kw)
    g = cattn.attention_backward(dO, q, k, v, out, lse, **kw)
    for have, w in zip(g[:3], want):
        assert np.max(np.abs(have - w)) <= 1e-10 * max(np.max(np.abs(w)), 1e-3)
    a32 = [x.astype(np.float32) for x in (q, k, v, dO)]
    out, lse = cattn.attention(*a32[:3], return_lse=True, **kw)
    g32 = cattn.attention_backward(a32[3], *a32[:3], out, lse, **kw)
    naive = naive_backward(*a32, np.float32, **kw)
    for have, base, w in zip(g32[:3], naive, want):
        assert have.dtype == np.float32
        e_naive = np.max(np.abs(base - w))
        e_have = np.max(np.abs(have - w))
        assert e_have <= 2 * e_naive + 8 * EPS32 * max(np.max(np.abs(w)), 1.0), (e_have, e_naive)


@pytest.mark.parametrize("dq_pass", [False, True])
def test_dq_partials_and_dq_pass_agree_on_two_threads(monkeypatch, dq_pass):
    rng = np.random.default_rng(12)
    q, k, v, dO = _qkv(rng, (1, 3), 150, 300, 32, 16, kv_lead=(1, 1))
    kw = {"causal": True, "mask": rng.random((150, 300)) > 0.1}
    want = naive_backward(q, k, v, dO, np.float64, causal=True)  # shapes only
    out, lse = cattn.attention(q, k, v, return_lse=True, **kw)
    serial = cattn.attention_backward(dO, q, k, v, out, lse, num_threads=1, **kw)
    monkeypatch.setattr(_backward, "threads_for", lambda n, work: 2)
    monkeypatch.setattr(_backward, "DQ_PARTIAL_BYTES", -1 if dq_pass else 1 << 40)
    par = cattn.attention_backward(dO, q, k, v, out, lse, num_threads=2, **kw)
    for a, b, w in zip(par[:3], serial[:3], want):
        assert a.shape == w.shape
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("heads", [(2, 2), (3, 3), (8, 4), (8, 8)])
def test_two_threads_by_whole_groups_or_key_blocks_agree_with_one(monkeypatch, heads):
    """2 threads over H query heads and Hkv K/V heads: whole K/V groups per
    thread where they share out evenly (Hkv 2, 4, 8), key blocks with dQ
    partials otherwise (Hkv 3): the gradients of one thread either way."""
    H, Hkv = heads
    rng = np.random.default_rng(13)
    q, k, v, dO = _qkv(rng, (1, H), 97, 260, 24, 16, kv_lead=(1, Hkv))
    kw = {"causal": True}
    out, lse = cattn.attention(q, k, v, return_lse=True, **kw)
    serial = cattn.attention_backward(dO, q, k, v, out, lse, num_threads=1, **kw)
    monkeypatch.setattr(_backward, "threads_for", lambda n, work: 2)
    par = cattn.attention_backward(dO, q, k, v, out, lse, num_threads=2, **kw)
    want = naive_backward(q, k, v, dO, np.float64, **kw)
    for a, b, w in zip(par[:3], serial[:3], want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(a, w, rtol=1e-9, atol=1e-9)


ISA_SCRIPT = textwrap.dedent("""
    import numpy as np, cattn, sys
    sys.path.insert(0, sys.argv[1])
    from test_backward import naive_backward
    print(cattn._kernels.isa_name())
    rng = np.random.default_rng(0)
    for (Lq, Lk), D, kw in [((70, 131), 24, {"causal": True}), ((33, 90), 40, {"softcap": 3.0}),
                           ((5, 300), 16, {"window": (40, 3)})]:
        q = rng.standard_normal((1, 4, Lq, D)); k = rng.standard_normal((1, 2, Lk, D))
        v = rng.standard_normal((1, 2, Lk, D)); dO = rng.standard_normal((1, 4, Lq, D))
        want = naive_backward(q, k, v, dO, np.float64, **kw)
        for dt, tol in ((np.float64, 1e-10), (np.float32, 3e-5)):
            a = [x.astype(dt) for x in (q, k, v, dO)]
            out, lse = cattn.attention(*a[:3], return_lse=True, **kw)
            g = cattn.attention_backward(a[3], *a[:3], out, lse, **kw)
            for h, w in zip(g[:3], want):
                err = np.max(np.abs(h - w)) / np.max(np.abs(w))
                assert err < tol, (Lq, Lk, kw, dt, err)
    print("ok")
""")


@pytest.mark.parametrize("isa", ["generic", "haswell", "skylake"])
def test_backward_on_every_isa_variant(isa):
    root = os.path.dirname(os.path.dirname(os.path.abspath(cattn.__file__)))
    env = dict(os.environ, CATTN_ISA=isa,
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", ISA_SCRIPT, os.path.dirname(__file__)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == "ok"


# ---------------------------------------------------- torch, when present
def test_against_torch_autograd_float64():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(13)
    q, k, v, dO = _qkv(rng, (2, 4), 37, 53, 16, 8, kv_lead=(2, 2))
    mask = rng.random((37, 53)) > 0.2
    bias = rng.standard_normal((4, 37, 53))
    kw = dict(mask=mask, bias=bias, causal=True, softcap=4.0, scale=0.3)
    out, lse = cattn.attention(q, k, v, return_lse=True, **kw)
    g = cattn.attention_backward(dO, q, k, v, out, lse, **kw)
    tq, tk, tv, tb = (torch.tensor(x, requires_grad=True) for x in (q, k, v, bias))
    ke, ve = tk.repeat_interleave(2, dim=1), tv.repeat_interleave(2, dim=1)
    s = 4.0 * torch.tanh(tq @ ke.transpose(-1, -2) * 0.3 / 4.0) + tb
    i = torch.arange(37)[:, None] + 53 - 37
    j = torch.arange(53)[None, :]
    keep = torch.tensor(mask) & (j <= i)
    s = s.masked_fill(~keep, -torch.inf)
    p = torch.softmax(s, -1).nan_to_num(0.0)
    (p @ ve).backward(torch.tensor(dO))
    for have, t in ((g.dq, tq), (g.dk, tk), (g.dv, tv), (g.dbias, tb)):
        w = t.grad.numpy()
        assert np.max(np.abs(have - w)) <= 1e-10 * np.max(np.abs(w))


def test_torch_autograd_function_gradcheck():
    torch = pytest.importorskip("torch")
    import cattn.torch as ct
    torch.manual_seed(0)
    q = torch.randn(2, 4, 9, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 2, 11, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 2, 11, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, 11, dtype=torch.float64, requires_grad=True)
    s = torch.tensor([0.5, 0.7, 0.2, 0.9], dtype=torch.float64, requires_grad=True)
    sk = torch.tensor([0.1, -0.3, 0.2, 0.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v, b, s, sk: ct.attention(q, k, v, bias=b, scale=s, sinks=sk,
                                               causal=True, softcap=3.0), (q, k, v, b, s, sk))
    assert torch.autograd.gradcheck(
        lambda q, k, v: ct.attention(q, k, v, score="cosine", window=(3, 2)), (q, k, v))
    # float32 against torch's own attention, through a strided (transposed) query
    q32 = torch.randn(1, 2, 17, 8).transpose(-1, -2).contiguous().transpose(-1, -2)
    q32.requires_grad_()
    k32, v32 = torch.randn(1, 2, 23, 8, requires_grad=True), torch.randn(1, 2, 23, 8, requires_grad=True)
    ct.attention(q32, k32, v32, causal=True).square().sum().backward()
    q2, k2, v2 = (x.detach().clone().requires_grad_() for x in (q32, k32, v32))
    mask = torch.ones(17, 23, dtype=torch.bool).tril(23 - 17)
    torch.nn.functional.scaled_dot_product_attention(q2, k2, v2, attn_mask=mask).square().sum().backward()
    for a, b_ in ((q32, q2), (k32, k2), (v32, v2)):
        assert torch.allclose(a.grad, b_.grad, rtol=1e-4, atol=1e-5)


def test_import_cattn_does_not_import_torch_or_jax():
    code = "import sys, cattn; print('torch' in sys.modules, 'jax' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
                           os.path.abspath(cattn.__file__)))))
    assert r.stdout.split() == ["False", "False"], r.stderr


def test_jax_custom_vjp_under_jit_and_grad():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    from jax.test_util import check_grads
    import cattn.jax as cj
    rng = np.random.default_rng(14)
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        q = jnp.asarray(rng.standard_normal((2, 4, 9, 8)))
        k = jnp.asarray(rng.standard_normal((2, 2, 11, 8)))
        v = jnp.asarray(rng.standard_normal((2, 2, 11, 6)))
        b = jnp.asarray(rng.standard_normal((9, 11)))
        mask = jnp.asarray(rng.random((9, 11)) > 0.2)

        def f(q, k, v, b):
            return cj.attention(q, k, v, bias=b, mask=mask, causal=True, softcap=3.0)
        check_grads(f, (q, k, v, b), order=1, modes=["rev"])
        want = cattn.attention(*(np.asarray(x) for x in (q, k, v)), bias=np.asarray(b),
                               mask=np.asarray(mask), causal=True, softcap=3.0)
        np.testing.assert_allclose(np.asarray(jax.jit(f)(q, k, v, b)), want, rtol=1e-12)
        g = jax.jit(jax.grad(lambda q, lens: cj.attention(q, k, v, kv_lengths=lens).sum()))(
            q, jnp.array([5, 11]))
        out, lse = cattn.attention(np.asarray(q), np.asarray(k), np.asarray(v),
                                   kv_lengths=np.array([5, 11]), return_lse=True)
        want = cattn.attention_backward(np.ones_like(out), np.asarray(q), np.asarray(k),
                                        np.asarray(v), out, lse, kv_lengths=np.array([5, 11]))
        np.testing.assert_allclose(np.asarray(g), want.dq, rtol=1e-12, atol=1e-14)
    finally:
        jax.config.update("jax_enable_x64", old)
