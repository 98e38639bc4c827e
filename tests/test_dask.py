"""cattn.dask on the real distributed scheduler.

A ``LocalCluster`` of 2 spawned worker processes on loopback is started once
for this module; every result is compared with :func:`cattn.attention` on
the gathered NumPy arrays (float64: 1e-10).
"""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import dask  # noqa: E402

import cattn  # noqa: E402
import cattn.dask as cdask  # noqa: E402

ROOT = str(pathlib.Path(__file__).resolve().parents[1])
TOL64 = 1e-10


@pytest.fixture(scope="module")
def client():
    # spawned workers must import cattn from this source tree
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = ROOT + ("" if not old else os.pathsep + old)
    try:
        with distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True,
                dashboard_address=None, host="127.0.0.1") as cluster, \
                distributed.Client(cluster) as c:
            yield c
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


def qkv(rng, lead, lq, lk, d=8, dv=5, kv_lead=None, dtype=np.float64):
    kv_lead = lead if kv_lead is None else kv_lead
    return (rng.standard_normal(lead + (lq, d)).astype(dtype),
            rng.standard_normal(kv_lead + (lk, d)).astype(dtype),
            rng.standard_normal(kv_lead + (lk, dv)).astype(dtype))


def chunked(q, k, v, qchunks, kchunks):
    """Dask arrays: one chunk per batch/head item, q split along queries,
    k and v along keys."""
    Q = da.from_array(q, chunks=(1,) * (q.ndim - 2) + (qchunks, -1))
    K = da.from_array(k, chunks=(1,) * (k.ndim - 2) + (kchunks, -1))
    V = da.from_array(v, chunks=(1,) * (v.ndim - 2) + (kchunks, -1))
    return Q, K, V


def check(client, Q, K, V, q, k, v, tol=TOL64, split_every=None, **kw):
    ref_out, ref_lse = cattn.attention(q, k, v, return_lse=True, **kw)
    out, lse = cdask.attention(Q, K, V, return_lse=True, split_every=split_every, **kw)
    assert isinstance(out, da.Array) and isinstance(lse, da.Array)
    assert out.dtype == ref_out.dtype and lse.dtype == ref_lse.dtype
    got_out, got_lse = client.compute([out, lse], sync=True)
    assert got_out.shape == ref_out.shape and got_lse.shape == ref_lse.shape
    np.testing.assert_allclose(got_out, ref_out, rtol=tol, atol=tol)
    assert np.array_equal(np.isneginf(got_lse), np.isneginf(ref_lse))
    fin = np.isfinite(ref_lse)
    np.testing.assert_allclose(got_lse[fin], ref_lse[fin], rtol=tol, atol=tol)
    return out


def partial_tasks(arr):
    return sum(1 for key in dict(arr.__dask_graph__())
               if isinstance(key, tuple) and str(key[0]).startswith("cattn-attn-partial"))


# --------------------------------------------------------------------------
@pytest.mark.parametrize("kchunks", [(7, 30, 1, 22, 30), (90,), (3,) * 30],
                         ids=["uneven", "one", "many"])
def test_key_chunks(client, rng, kchunks):
    q, k, v = qkv(rng, (2, 3), 37, 90)
    Q, K, V = chunked(q, k, v, (10, 20, 7), kchunks)
    out = check(client, Q, K, V, q, k, v)
    assert partial_tasks(out) == 2 * 3 * 3 * len(kchunks)
    check(client, Q, K, V, q, k, v, split_every=2)


def test_causal_chunk_offsets_skip_tasks(client, rng):
    # Lq == Lk: strictly upper (query chunk, key chunk) pairs get no task
    q, k, v = qkv(rng, (2,), 60, 60)
    Q, K, V = chunked(q, k, v, (13, 17, 30), (20, 5, 35))
    out = check(client, Q, K, V, q, k, v, causal=True)
    # visible pairs: q[0:13]->k0; q[13:30]->k0,k1,(k2 from 25); q[30:60]->all
    assert partial_tasks(out) == 2 * (1 + 3 + 3)
    # Lq < Lk and Lq > Lk (bottom-right alignment, chunk offsets)
    q, k, v = qkv(rng, (2,), 37, 90)
    check(client, *chunked(q, k, v, (10, 20, 7), (7, 30, 1, 22, 30)), q, k, v, causal=True)
    q, k, v = qkv(rng, (2,), 90, 37)
    check(client, *chunked(q, k, v, (7, 30, 1, 22, 30), (10, 20, 7)), q, k, v, causal=True)


@pytest.mark.parametrize("window,causal", [((5, 2), False), ((8, None), True),
                                           ((None, -40), False), ((3, -5), True)])
def test_window(client, rng, window, causal):
    q, k, v = qkv(rng, (2,), 50, 70)
    Q, K, V = chunked(q, k, v, (16, 16, 18), (9, 11, 25, 25))
    out = check(client, Q, K, V, q, k, v, window=window, causal=causal)
    assert partial_tasks(out) < 2 * 3 * 4


def test_chunk_empty_after_masking(client, rng):
    q, k, v = qkv(rng, (2, 2), 24, 60)
    Q, K, V = chunked(q, k, v, (12, 12), (20, 20, 20))
    mask = rng.random((2, 1, 24, 60)) > 0.3
    mask[..., 20:40] = False                 # the middle key chunk sees nothing
    mask[0, :, 3, :] = False                 # and one row sees nothing at all
    check(client, Q, K, V, q, k, v, mask=mask)
    check(client, Q, K, V, q, k, v, mask=da.from_array(mask, chunks=(1, 1, 5, 7)))
    # lengths: sequence 1 has no key past the first chunk, padded queries
    kvl, ql = np.array([45, 15]), np.array([24, 10])
    out = check(client, Q, K, V, q, k, v, kv_lengths=kvl, q_lengths=ql)
    check(client, Q, K, V, q, k, v, kv_lengths=da.from_array(kvl, chunks=1),
          q_lengths=da.from_array(ql, chunks=1))
    bias = rng.standard_normal((24, 60))
    bias[:, :20] = -np.inf
    check(client, Q, K, V, q, k, v, bias=da.from_array(bias, chunks=(6, 30)), causal=True)


def test_gqa(client, rng):
    q, k, v = qkv(rng, (2, 6), 30, 50, kv_lead=(2, 2))
    for head_chunks in [(3, 3), (1, 4, 1), (6,)]:
        Q = da.from_array(q, chunks=(1, head_chunks, (10, 20), -1))
        K = da.from_array(k, chunks=(1, 1, (13, 37), -1))
        V = da.from_array(v, chunks=(1, 2, 25, -1))
        out = check(client, Q, K, V, q, k, v, causal=True)
        assert out.chunks[0] == (1, 1) and sum(out.chunks[1]) == 6
        assert all(c % 3 == 0 for c in out.chunks[1])


def test_other_options(client, rng):
    q, k, v = qkv(rng, (2, 3), 21, 40)
    Q, K, V = chunked(q, k, v, (11, 10), (15, 15, 10))
    check(client, Q, K, V, q, k, v, sinks=np.array([0.5, 1.0, -2.0]),
          scale=np.array([0.3, 1.0, 2.0])[:, None, None], q_lengths=np.array([21, 4]))
    check(client, Q, K, V, q, k, v, q_segments=rng.integers(0, 3, (2, 1, 21)),
          kv_segments=rng.integers(0, 3, (40,)))
    check(client, Q, K, V, q, k, v, score="additive", softcap=3.0,
          additive_weight=rng.standard_normal(8), window=(4, 4))
    check(client, Q, K, V, q, k, v, score="cosine", num_threads=1)
    # NumPy inputs are wrapped; 2-D inputs work
    check(client, q[0, 0], k[0, 0], v[0, 0], q[0, 0], k[0, 0], v[0, 0], causal=True)


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float16, 2e-3)])
def test_low_precision(client, rng, dtype, tol):
    q, k, v = qkv(rng, (2,), 20, 45, dtype=dtype)
    check(client, *chunked(q, k, v, (7, 13), (20, 25)), q, k, v, tol=tol, causal=True)


@pytest.mark.parametrize("rw", [True, "key_mass"])
def test_return_weights(client, rng, rw):
    q, k, v = qkv(rng, (2,), 21, 40)
    Q, K, V = chunked(q, k, v, (11, 10), (15, 15, 10))
    ref = cattn.attention(q, k, v, return_weights=rw, causal=True, sinks=0.3)
    got = client.compute(list(cdask.attention(Q, K, V, return_weights=rw, causal=True,
                                              sinks=0.3)), sync=True)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=TOL64, atol=TOL64)


def test_meta_never_runs_kernel(monkeypatch, rng):
    def boom(*a, **k):
        raise AssertionError("kernel called while building the graph")
    monkeypatch.setattr(cattn._api, "attention", boom)
    monkeypatch.setattr(cattn._api, "merge", boom)
    q, k, v = qkv(rng, (2,), 20, 45, dtype=np.float32)
    out, lse = cdask.attention(*chunked(q, k, v, (7, 13), (20, 25)), return_lse=True,
                               causal=True)
    assert out.dtype == np.float32 and out._meta.dtype == np.float32
    assert lse.dtype == np.float32 and out.shape == (2, 20, 5) and lse.shape == (2, 20)
    o16 = cdask.attention(q.astype(np.float16), k, v.astype(np.float16))
    assert o16.dtype == np.float32
    assert cdask.attention(q.astype(np.float16), k.astype(np.float16),
                           v.astype(np.float16)).dtype == np.float16


def test_threads_rule(client, monkeypatch):
    # Dask's nanny sets OMP_NUM_THREADS=1 in its workers: respected
    got = client.submit(cdask.task_threads, pure=False).result()
    assert got == 1
    got = client.submit(cdask.task_threads, 3, pure=False).result()
    assert got == 3
    # without the nanny's OMP_NUM_THREADS: cores // threads of the host's workers

    def on_worker():
        from dask.system import CPU_COUNT
        old = os.environ.pop("OMP_NUM_THREADS", None)
        try:
            return (CPU_COUNT, cdask.task_threads(), cdask.task_threads(None, {"127.0.0.1": 2}))
        finally:
            if old is not None:
                os.environ["OMP_NUM_THREADS"] = old
    cores, own, shared = client.submit(on_worker, pure=False).result()
    assert own == cores and shared == max(1, cores // 2)
    # outside a worker: main thread gets all cores, OMP_NUM_THREADS caps it
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cdask, "_cores", lambda: 8)
    assert cdask.task_threads() == 8
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cdask.task_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    with dask.config.set(num_workers=4):
        got = dask.delayed(cdask.task_threads)().compute(scheduler="threads")
    assert got == 2


def test_errors(rng):
    q, k, v = qkv(rng, (2,), 5, 6)
    with pytest.raises(TypeError, match="out="):
        cdask.attention(q, k, v, out=np.empty((2, 5, 5)))
    with pytest.raises(ValueError, match="window"):
        cdask.attention(q, k, v, window=(1,))
    with pytest.raises(ValueError, match="feature dim"):
        cdask.attention(q, k[..., :3], v)
    with pytest.raises(ValueError, match="split_every"):
        cdask.attention(q, k, v, split_every=1)
    with pytest.raises(ValueError, match="broadcast"):
        cdask.attention(q, k, v, mask=np.ones((3, 5, 6), bool))
    with pytest.raises(ValueError, match="kv_lengths"):
        cdask.attention(q, k, v, kv_lengths=np.array([7, 1]))


@pytest.mark.parametrize("sinks", [np.nan, np.inf, np.array([0.0, np.nan])])
def test_sinks_nan_or_inf_raise_like_attention(rng, sinks):
    """cattn.dask accepted sinks=nan/+inf and returned NaN where
    cattn.attention raises ValueError: one validation for both."""
    q, k, v = qkv(rng, (2,), 5, 6)
    with pytest.raises(ValueError, match="sinks"):
        cattn.attention(q, k, v, sinks=sinks)
    with pytest.raises(ValueError, match="sinks"):
        cdask.attention(q, k, v, sinks=sinks).compute()


def test_import_cattn_does_not_import_dask():
    code = "import sys, cattn; assert 'dask' not in sys.modules, 'dask imported'"
    env = dict(os.environ, PYTHONPATH=ROOT)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)
