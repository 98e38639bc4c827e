"""Reliability, ``out=``: an unusable ``out`` raises ValueError.

Promise 8 of docs/reliability.md ("Guarantees"): an ``out`` that overlaps an
input (array or other argument) or is read-only raises ValueError; valid
non-contiguous layouts are filled right.  The case that used to segfault
(BUG-1) runs in a subprocess: tests/scripts/out_aliasing_kv_lengths.py.

Tests whose docstring names a BUG-n are regressions of the bugs found while
writing these tests (docs/reliability.md); all are fixed.  A newly found bug
gets an ``xfail(strict=True)`` test, which turns into a loud XPASS once it is
fixed.
"""
import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

import cattn
from _subproc import describe, run_script


@pytest.fixture
def qkv():
    rng = np.random.default_rng(11)
    q = rng.standard_normal((2, 3, 6, 4))
    k = rng.standard_normal((2, 3, 7, 4))
    v = rng.standard_normal((2, 3, 7, 4))
    return q, k, v


def _overlapping_outs(q, k, v):
    shape = q.shape[:-1] + (v.shape[-1],)
    yield "query itself", q, {}
    yield "value's buffer, other shape", v.reshape(-1)[: q.size].reshape(shape), {}
    yield "key reversed", k[..., ::-1, :][..., :6, :], {}
    yield "strided view of value", as_strided(v, shape=shape, strides=(8,) * 4), {}
    buf = np.zeros(int(np.prod(shape)) + 64)
    mask = buf.view(np.bool_)[: 6 * 7].reshape(6, 7)
    mask[:] = True
    yield "mask's buffer", buf[: int(np.prod(shape))].reshape(shape), {"mask": mask}
    n = int(np.prod(shape))
    big = np.zeros(n + 10)
    yield "bias's buffer", big[:n].reshape(shape), {"bias": big[-42:].reshape(6, 7)}


def test_out_overlapping_an_input_raises(qkv):
    q, k, v = qkv
    for label, out, extra in _overlapping_outs(q, k, v):
        before = [x.copy() for x in (q, k, v)]
        with pytest.raises(ValueError, match="overlap"):
            cattn.attention(q, k, v, out=out, **extra)
        for x, y in zip((q, k, v), before):
            assert np.array_equal(x, y), f"{label}: an input was modified"


def test_out_not_writeable_raises(qkv, tmp_path):
    q, k, v = qkv
    shape = q.shape[:-1] + (v.shape[-1],)
    ro = np.zeros(shape)
    ro.flags.writeable = False
    fn = tmp_path / "out.bin"
    np.zeros(shape).tofile(fn)
    mm = np.memmap(fn, dtype=np.float64, mode="r", shape=shape)
    for out in (ro, np.broadcast_to(np.zeros(shape[-1]), shape), mm):
        with pytest.raises(ValueError, match="writeable"):
            cattn.attention(q, k, v, out=out)
    # the other malformed outs
    with pytest.raises(ValueError):
        cattn.attention(q, k, v, out=np.zeros(shape, np.float32))
    with pytest.raises(ValueError):
        cattn.attention(q, k, v, out=np.zeros(shape[:-1] + (5,)))
    with pytest.raises(TypeError):
        cattn.attention(q, k, v, out=np.zeros(shape).tolist())


def test_out_valid_layouts(qkv):
    """A non-contiguous, reversed or Fortran-ordered ``out`` is filled right."""
    q, k, v = qkv
    exp = cattn.attention(q, k, v)
    shape = exp.shape
    for out in (np.zeros(shape[:-1] + (2 * shape[-1],))[..., ::2],
                np.flip(np.zeros(shape), -2), np.asfortranarray(np.zeros(shape))):
        res = cattn.attention(q, k, v, out=out)
        assert res is out
        np.testing.assert_allclose(out, exp, rtol=1e-12, atol=1e-14)


def test_out_overlapping_kv_lengths_raises():
    """BUG-1 (fixed in a7fb2ac): this segfaulted, the kernel reading lengths
    it had overwritten and running off the key buffer."""
    proc = run_script("out_aliasing_kv_lengths.py")
    assert proc.returncode == 0, describe(proc)
    assert "VALUEERROR" in proc.stdout


@pytest.mark.parametrize("name", ["q_lengths", "q_segments", "scale", "sinks",
                                  "additive_weight"])
def test_out_overlapping_other_arguments_raises(name):
    rng = np.random.default_rng(12)
    q = rng.standard_normal((2, 16, 8))
    out = np.zeros((2, 16, 8))
    flat = out.reshape(-1)
    kw = {}
    if name == "q_lengths":
        kw[name] = flat.view(np.int64)[:2]
        kw[name][:] = 16
    elif name == "q_segments":
        kw[name] = flat.view(np.int64)[:16]
        kw[name][:] = 0
        kw["kv_segments"] = np.zeros(16, np.int64)
    elif name == "scale":
        kw[name] = flat[:2]
        kw[name][:] = 0.5
    elif name == "sinks":
        kw[name] = flat[:2]
        kw[name][:] = 0.5
    else:
        kw["score"] = "additive"
        kw[name] = flat[:8]
        kw[name][:] = 1.0
    with pytest.raises(ValueError, match="overlap"):
        cattn.attention(q, q, q, out=out, num_threads=1, **kw)
