"""Element offsets past 2**31 with real strides: memmaps of sparse files.

K and V are read-only memmaps of sparse files (about 17 GB each, logically)
whose far ends alone hold data; window + kv_lengths make only that end
attended, so any 32-bit offset arithmetic (row index or batch offset)
reads the wrong data.  Results are compared with ``cattn.reference`` on
the far ends; prints ``KV-OK``.  With a second argument of 1, also weights,
mask and bias with Lq * Lk > 2**31 elements (the weights are 8.6 GB of lazy
zeros: only with >= 16 GiB of free memory); prints ``WEIGHTS-OK``.  The
sparse files go to a temporary directory inside the given one, removed at
the end.  Linux.

Run by the test-suite (tests/test_reliability_large_offsets.py) and by
hand, from the repository root, with cattn importable (installed, or
``PYTHONPATH=.`` in a built checkout)::

    python tests/scripts/sparse_memmap_offsets.py DIRECTORY 0    # K/V only
    python tests/scripts/sparse_memmap_offsets.py DIRECTORY 1    # + weights, mask, bias
"""
import os, resource, shutil, sys, tempfile
import numpy as np, cattn
import cattn.reference as ref

if hasattr(np, "_core") and hasattr(np._core.multiarray, "_set_madvise_hugepage"):
    np._core.multiarray._set_madvise_hugepage(False)   # touch 4 KiB pages, not 2 MiB
if len(sys.argv) != 3 or sys.argv[2] not in ("0", "1"):
    sys.exit("usage: sparse_memmap_offsets.py DIRECTORY 0|1  (see the docstring)")
rng = np.random.default_rng(1)
tmp = tempfile.mkdtemp(dir=sys.argv[1])

def sparse(name, dtype, shape, tail):
    "Read-only memmap of a sparse file; only the last `tail` rows hold data."
    fn = os.path.join(tmp, name)
    dt = np.dtype(dtype)
    row = shape[-1] * dt.itemsize
    with open(fn, "wb") as f:
        f.truncate(int(np.prod(shape)) * dt.itemsize)
        for b in range(int(np.prod(shape[:-2]))):
            vals = rng.standard_normal((tail, shape[-1]))
            vals = (vals > -0.8) if dt == np.bool_ else vals
            f.seek((b * shape[-2] + shape[-2] - tail) * row)
            f.write(vals.astype(dt).tobytes())
    return np.memmap(fn, dtype=dt, mode="r", shape=shape)

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

try:
    # K/V: element offsets past 2**31 in the row index and in the batch offset
    D, W = 8, 64
    Lk = 2**31 // D + 100
    K = sparse("k", np.float32, (2, Lk, D), W)
    V = sparse("v", np.float32, (2, Lk, D), W)
    for Lq in (5, 37):
        q = rng.standard_normal((2, Lq, D)).astype(np.float32)
        for kw in ({"window": (6, 1)}, {"causal": True, "window": (20, None)}):
            out, lse = cattn.attention(q, K, V, return_lse=True,
                                       kv_lengths=np.array([Lk, Lk - 3]), **kw)
            e_out, e_lse = ref.attention(q, np.array(K[:, -W:]), np.array(V[:, -W:]),
                                         return_lse=True, kv_lengths=np.array([W, W - 3]), **kw)
            err = max(np.abs(out - e_out).max(), np.abs(lse - e_lse).max())
            assert err < 1e-5, (Lq, kw, err)
    print("KV-OK", flush=True)
    if sys.argv[2] == "1":
        # weights, mask and bias with Lq * Lk > 2**31 elements
        Lq, Lk, W = 4096, 2**19 + 77, 64
        q = rng.standard_normal((1, Lq, D)).astype(np.float32)
        k = rng.standard_normal((1, Lk, D)).astype(np.float32)
        v = rng.standard_normal((1, Lk, D)).astype(np.float32)
        mask = sparse("m", np.bool_, (Lq, Lk), 0)
        bias = sparse("b", np.float32, (Lq, Lk), 0)
        with open(mask.filename, "r+b") as fm, open(bias.filename, "r+b") as fb:
            mvals = rng.random((Lq, W)) < 0.8
            bvals = rng.standard_normal((Lq, W)).astype(np.float32)
            for i in range(Lq):
                fm.seek(i * Lk + Lk - W); fm.write(mvals[i].tobytes())
                fb.seek(4 * (i * Lk + Lk - W)); fb.write(bvals[i].tobytes())
        r0 = rss()
        out, w, lse = cattn.attention(q, k, v, mask=mask, bias=bias, causal=True,
                                      window=(30, None), return_weights=True, return_lse=True)
        assert w.size > 2**31
        rows = slice(Lq - 50, Lq)
        e_out, e_w, e_lse = ref.attention(
            q[:, rows], k[:, -W:], v[:, -W:], mask=mvals[rows], bias=bvals[rows],
            causal=True, window=(30, None), return_weights=True, return_lse=True)
        err = max(np.abs(out[:, rows] - e_out).max(), np.abs(w[:, rows, -W:] - e_w).max(),
                  np.abs(lse[:, rows] - e_lse).max())
        assert err < 1e-5, err
        assert not w[:, rows, :-W].any()
        print("WEIGHTS-OK touched %.0f MiB" % ((rss() - r0) / 2**20), flush=True)
finally:
    shutil.rmtree(tmp)
