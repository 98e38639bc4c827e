"""Reliability, big indices: every offset is 64-bit.

Promise 4 of docs/reliability.md ("Guarantees"): offsets past 2**31
elements work, tested with zero strides (here) and with sparse memmaps
(tests/scripts/sparse_memmap_offsets.py, run in a subprocess with a
timeout).  Nothing logically huge takes memory.

Tests whose docstring names a BUG-n are regressions of the bugs found while
writing these tests (docs/reliability.md); all are fixed.  A newly found bug
gets an ``xfail(strict=True)`` test, which turns into a loud XPASS once it is
fixed.
"""
import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

import cattn
import cattn.reference as ref
from _oracle import assert_close
from _subproc import ASAN, assert_ok, needs_linux, run_script


BIG_L = 2**31 + 1000          # more keys than a 32-bit index can count


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("path", ["tile", "decode"])
def test_offsets_past_2_31_zero_strides(path, dtype):
    """2**31 + 1000 keys with zero row strides: only the far end is attended
    (window + kv_lengths relative to the end), and lse counts the keys each
    query sees, so any 32-bit index arithmetic shows up."""
    if path == "decode" and dtype == np.float64:
        pytest.skip("one decode case is enough (0.7 s each)")
    rng = np.random.default_rng(3)
    Lq = 3 if path == "decode" else 40
    D, Dv = 8, 4
    kb = rng.standard_normal((1, D)).astype(dtype)
    vb = rng.standard_normal((1, Dv)).astype(dtype)
    K = as_strided(kb, shape=(2, BIG_L, D), strides=(0, 0, kb.strides[1]), writeable=False)
    V = as_strided(vb, shape=(2, BIG_L, Dv), strides=(0, 0, vb.strides[1]), writeable=False)
    mask = as_strided(np.ones(1, bool), shape=(Lq, BIG_L), strides=(0, 0))
    bias = as_strided(np.full(1, 0.25, dtype), shape=(Lq, BIG_L), strides=(0, 0))
    q = rng.standard_normal((2, Lq, D)).astype(dtype)
    small = 64                     # the far-end geometry on the small underlying data
    for kw in ({"window": (6, 2)}, {"window": (3, None), "causal": True, "mask": mask},
               {"window": (2, 2), "bias": bias}):
        kvl = np.array([BIG_L, BIG_L - 5])
        out, lse = cattn.attention(q, K, V, kv_lengths=kvl, return_lse=True, **kw)
        skw = dict(kw)
        for name in ("mask", "bias"):
            if name in kw:
                skw[name] = np.ascontiguousarray(kw[name][:, -small:])
        e_out, e_lse = ref.attention(q, K[:, -small:], V[:, -small:],
                                     kv_lengths=kvl - (BIG_L - small), return_lse=True, **skw)
        assert_close(out, e_out, dtype, err_msg=str(kw))
        assert_close(lse, e_lse, dtype, err_msg=str(kw))


def _mem_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) << 10
    except OSError:
        pass
    return 0


@needs_linux
def test_offsets_past_2_31_sparse_memmap(tmp_path):
    """Real (non-zero) strides past 2**31 elements: operands are memmaps of
    sparse files, only their far ends hold data (and are ever touched)."""
    # the weights are 8.6 GB of (lazy) zeros: only with room to spare, not under ASan
    weights = _mem_available() >= (16 << 30) and not ASAN
    proc = run_script("sparse_memmap_offsets.py", tmp_path, int(weights), timeout=120)
    assert_ok(proc)
    assert "KV-OK" in proc.stdout
    if weights:
        assert "WEIGHTS-OK" in proc.stdout
