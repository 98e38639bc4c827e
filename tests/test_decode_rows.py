"""Decode with several query rows per K/V head (the GQA fold, a few new
tokens, paged rows): the kernels take the rows of a chunk together
(scores_mq / pv_mq) when every row sees the same keys and no score is
-inf, and fall back to one row at a time otherwise.  Every row count the
passes of four produce (1-9, 48), every float format, both fall-backs,
against the float64 oracle."""
import os

import numpy as np
import pytest

import cattn
from cattn import reference as ref
from _oracle import assert_close
from _subproc import run_code_under_isa

DTYPES = [np.float32, np.float16, np.float64]


def _tol(dtype):
    return np.float64 if dtype == np.float64 else np.float32


@pytest.mark.parametrize("g", [2, 3, 4, 5, 8, 9])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [{}, {"softcap": 2.0, "sinks": 0.5}, {"scale": 0.2}])
def test_gqa_decode_rows(g, dtype, kw):
    """One query, g query heads per K/V head: the folded rows, with keys
    past one chunk (64) and a ragged last chunk, float16 K/V too."""
    rng = np.random.default_rng(g)
    Hkv, L, D, Dv = 2, 203, 40, 24
    q = rng.standard_normal((2, Hkv * g, 1, D)).astype(np.float32 if dtype == np.float16
                                                        else dtype)
    k = rng.standard_normal((2, Hkv, L, D)).astype(dtype)
    v = rng.standard_normal((2, Hkv, L, Dv)).astype(dtype)
    lengths = np.array([L, 131])
    out, lse = cattn.attention(q, k, v, kv_lengths=lengths, causal=True, return_lse=True,
                               **kw)
    e_out, e_lse = ref.attention(q, k, v, kv_lengths=lengths, causal=True,
                                 return_lse=True, **kw)
    assert_close(out, e_out, _tol(dtype))
    assert_close(lse, e_lse, _tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_minus_inf_score_falls_back_and_never_multiplies(dtype):
    """A key whose score is -inf for every row: the chunk goes row by row,
    the key is skipped -- a NaN in its value cannot leak."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 8, 1, 16)).astype(np.float32 if dtype == np.float16
                                                   else dtype)
    q[..., 0] = np.abs(q[..., 0]) + 0.5
    k = rng.standard_normal((1, 2, 90, 16)).astype(dtype)
    v = rng.standard_normal((1, 2, 90, 16)).astype(dtype)
    k[:, :, 70, 0] = -np.inf
    out = cattn.attention(q, k, v)
    assert np.isfinite(out).all()
    keep = np.ones(90, bool)
    keep[70] = False
    assert_close(out, ref.attention(q, k[:, :, keep], v[:, :, keep]), _tol(dtype))
    v[:, :, 70] = np.nan
    np.testing.assert_array_equal(cattn.attention(q, k, v), out)


@pytest.mark.parametrize("dtype", DTYPES + ["int8"])
@pytest.mark.parametrize("kw", [{"causal": True}, {"causal": True, "window": (30, None)},
                                {"alibi_slopes": 0.1, "softcap": 3.0}])
def test_paged_rows(dtype, kw):
    """Paged: q_len x heads-per-group rows (up to 48 here, passes of four),
    rows whose windows differ inside a chunk, and decode rows."""
    rng = np.random.default_rng(5)
    H, Hkv, D, ps = 16, 1, 32, 16
    seq_lens, q_lens = [300, 77, 129], [3, 1, 1]
    pages = [-(-s // ps) for s in seq_lens]
    kc, vc = (rng.standard_normal((sum(pages) + 2, Hkv, ps, D)) for _ in range(2))
    if dtype == "int8":       # int8 pools (QuantizedKV): rows by index, scales beside
        kc, vc = cattn.quantize_kv(kc), cattn.quantize_kv(vc)
        dtype = np.float32
    else:
        kc, vc = kc.astype(dtype), vc.astype(dtype)
    perm = rng.permutation(sum(pages) + 2)
    bt = np.zeros((3, max(pages)), np.int64)
    c = 0
    for s, n in enumerate(pages):
        bt[s, :n] = perm[c:c + n]
        c += n
    qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int64)
    q = rng.standard_normal((int(qsl[-1]), H, D)).astype(np.float64 if dtype == np.float64
                                                         else np.float32)
    sl = np.asarray(seq_lens, np.int64)
    for nt in (1, 2):
        out, lse = cattn.paged_attention(q, kc, vc, bt, sl, qsl, return_lse=True,
                                         num_threads=nt, **kw)
        e_out, e_lse = ref.paged_attention(q, kc, vc, bt, sl, qsl, return_lse=True, **kw)
        assert_close(out, e_out, _tol(dtype))
        assert_close(lse, e_lse, _tol(dtype))


ISA_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import test_decode_rows as t
for dt in t.DTYPES:
    for g in (3, 4, 8):
        t.test_gqa_decode_rows(g, dt, {"softcap": 2.0})
    t.test_minus_inf_score_falls_back_and_never_multiplies(dt)
    t.test_paged_rows(dt, {"causal": True, "window": (30, None)})
t.test_paged_rows("int8", {"causal": True})
"""


@pytest.mark.parametrize("isa", ["generic", "haswell", "skylake"])
def test_isa_variants(isa):
    res = run_code_under_isa(isa, ISA_SCRIPT, os.path.dirname(__file__))
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("heads", [(4, 4), (8, 2)])      # one row per item, four
def test_paged_plus_inf_score(heads):
    """A +inf score: output NaN and lse +inf on every path (the multi-row
    chunk, the row-by-row one), as cattn.attention and the oracle."""
    rng = np.random.default_rng(8)
    H, Hkv = heads
    kc = rng.standard_normal((4, Hkv, 16, 8)).astype(np.float32)
    vc = rng.standard_normal((4, Hkv, 16, 8)).astype(np.float32)
    kc[2, :, 5, 0] = np.inf
    q = rng.standard_normal((1, H, 8)).astype(np.float32)
    q[..., 0] = np.abs(q[..., 0]) + 0.5
    bt = np.array([[1, 2, 0]])
    args = (q, kc, vc, bt, np.array([40]), np.array([0, 1]))
    out, lse = cattn.paged_attention(*args, return_lse=True)
    e_out, e_lse = ref.paged_attention(*args, return_lse=True)
    assert np.isnan(out).all() and np.isposinf(lse).all()
    assert np.isnan(e_out).all() and np.isposinf(e_lse).all()
