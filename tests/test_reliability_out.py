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


# Overlap through arguments that are not NumPy arrays, self-overlap, and the
# bound on the overlap check.


def test_out_overlap_through_non_numpy_arguments():
    """``out`` sharing memory with an argument given as a memoryview (or a
    torch tensor) was not seen: kv_lengths read from ``out`` while it was
    written segfaulted (heap-buffer-overflow in the kernel), q/k/v given
    as memoryviews of ``out`` gave wrong results."""
    q = np.ones((2, 16, 8))
    out = np.zeros((2, 16, 8))
    lens = out.reshape(-1).view(np.int64)[:2]
    lens[:] = 16
    with pytest.raises(ValueError, match="overlap"):
        cattn.attention(q, q, q, kv_lengths=memoryview(lens), out=out, num_threads=1)
    for pos in range(3):
        args = [q, q, q]
        args[pos] = memoryview(out)
        with pytest.raises(ValueError, match="overlap"):
            cattn.attention(*args, out=out)
    mask = np.ones((16, 16), bool)
    buf = np.zeros(out.size + 32)
    out2 = buf[:out.size].reshape(out.shape)
    with pytest.raises(ValueError, match="overlap"):
        cattn.attention(q, q, q, mask=memoryview(out2.reshape(-1).view(np.bool_)[:256]
                                                 .reshape(16, 16)), out=out2)
    # a list is copied: no overlap, a right result
    got = cattn.attention(q, q, q, kv_lengths=lens.tolist(), out=out)
    assert got is out
    np.testing.assert_allclose(out, cattn.reference.attention(q, q, q), rtol=1e-12)
    del mask


def test_out_overlap_through_torch_tensors():
    torch = pytest.importorskip("torch")
    q = np.ones((2, 16, 8))
    out = np.zeros((2, 16, 8))
    lens = out.reshape(-1).view(np.int64)[:2]
    lens[:] = 16
    with pytest.raises(ValueError, match="overlap"):
        cattn.attention(q, q, q, kv_lengths=torch.from_numpy(lens), out=out, num_threads=1)
    with pytest.raises(ValueError, match="overlap"):
        cattn.attention(torch.from_numpy(out), q, q, out=out)


def test_self_overlapping_out_raises(qkv):
    """A self-overlapping ``out`` (zero strides, rows that overlap) was
    accepted and returned garbage."""
    q, k, v = qkv
    shape = q.shape[:-1] + (v.shape[-1],)
    item = 8
    zero = as_strided(np.zeros(200), shape=shape, strides=(0, 96 * item, 4 * item, item))
    rows = as_strided(np.zeros(400), shape=shape,
                      strides=(18 * 4 * item, 6 * 4 * item, 2 * item, item))
    for out in (zero, rows):
        with pytest.raises(ValueError, match="out must not overlap itself"):
            cattn.attention(q, k, v, out=out)


def test_out_with_strides_that_do_not_nest_but_do_not_overlap():
    """Strides (24, 16) bytes for shape (2, 2): offsets 0, 16, 24, 40 -
    no nesting order, no overlap: accepted (decided by listing offsets)."""
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((2, 3)) for _ in range(3))
    v = v[:, :2]
    out = as_strided(np.zeros(8), shape=(2, 2), strides=(24, 16))
    got = cattn.attention(q, k, v, out=out)
    assert got is out
    np.testing.assert_allclose(out, cattn.reference.attention(q, k, v), rtol=1e-12)


def test_overlap_check_is_bounded(monkeypatch):
    """The exact overlap check was unbounded (crafted strided views of one
    buffer stalled validation for 7-21 s with Ctrl-C ignored).  Extents
    that intersect are decided within ``OVERLAP_MAX_WORK`` or rejected."""
    from cattn import _validate
    buf = np.zeros(4096)
    q = buf[0::2][:24].reshape(2, 3, 4)          # interleaved with out:
    out = buf[1::2][:24].reshape(2, 3, 4)        # extents meet, memory does not
    got = cattn.attention(q, q, q, out=out)
    assert got is out
    np.testing.assert_allclose(out, cattn.reference.attention(q, q, q), rtol=1e-12)
    monkeypatch.setattr(_validate, "OVERLAP_MAX_WORK", 0)
    with pytest.raises(ValueError, match="cannot be decided cheaply"):
        cattn.attention(q, q, q, out=out)
    # disjoint extents never reach the solver
    out3 = np.zeros((2, 3, 4))
    assert cattn.attention(q, q, q, out=out3) is out3
