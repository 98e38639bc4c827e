"""Extra peak memory of one ``cattn.attention_backward`` call, in this
(fresh) process.

Inputs q, k, v, dout of shape (1, 1, L, D) float32 and the forward's out
and lse are made first; then the peak resident set (VmHWM) is reset to the
current one (writing "5" to /proc/self/clear_refs), the backward runs, and

    extra = (VmHWM after) - (VmRSS before) - (bytes of dq + dk + dv)

is what the backward needed beyond its inputs and its gradients.  With
``warm``, one tiny backward runs first, so the first-call costs of the
process (code and interpreter pages touched for the first time) are left
out and ``extra`` is the call's own buffers.  Where clear_refs cannot be
written, VmHWM is not reset: it then also holds the forward's peak, and
``extra`` is an upper bound (``"reset": false``).

Prints one JSON object: the measurement in bytes and ``documented``, the
bound the backward's design gives (``documented_extra_bytes``).  Linux.

Run by the test-suite (tests/test_backward_memory.py), by
tools/backward_peak_memory.py, and by hand, from the repository root,
with cattn importable (installed, or ``PYTHONPATH=.`` in a built
checkout)::

    python tests/scripts/backward_peak_memory.py L THREADS [D] [warm]
"""
import ctypes
import json
import sys

import numpy as np

import cattn
from cattn._backward import BWD_BLOCK_K, BWD_BLOCK_Q, DQ_PARTIAL_BYTES

if hasattr(np, "_core") and hasattr(np._core.multiarray, "_set_madvise_hugepage"):
    np._core.multiarray._set_madvise_hugepage(False)   # RSS in 4 KiB pages, not 2 MiB


def documented_extra_bytes(Lq, D, threads, itemsize=4, n_batch=1):
    """What a plain (dot-score, no bias) backward allocates beyond its
    inputs and gradients, per its design (cattn/_backward.py and
    cattn/_src/flash_bwd_impl.h), as a sum of named parts."""
    up = lambda x, m: (x + m - 1) // m * m
    bq, bk, d = up(BWD_BLOCK_Q, 32), up(BWD_BLOCK_K, 16), up(D, 16)
    # bwd_layout: Q and dO tiles in two layouts, S, P, dS, the dK/dV/dQ
    # accumulators and two row vectors, per thread (+ 64 bytes to align)
    tile_elems = bq * (2 * d + 2 * d + 3 * bk + d + 2) + bk * (d + d)
    parts = {
        "scratch": threads * (tile_elems * itemsize + 64),
        # dQ partials of threads 1.. (thread 0 adds into dQ), unless they
        # would exceed DQ_PARTIAL_BYTES (then a second pass, no partials)
        "dq_partials": 0,
        # delta_i = dO_i . O_i, one value per query row
        "delta": n_batch * Lq * itemsize,
        # every buffer ends on a 4 KiB page, and the call's small arrays and
        # Python objects (K/V group indices, the result tuple) take a few
        # pages: measured 11-23 KiB beyond the parts above at L = 4096 and
        # 16384, 1 thread; a quarter of a (4096, 64) float32 array here
        "pages": 256 << 10,
    }
    partials = (threads - 1) * n_batch * Lq * D * itemsize
    if partials <= DQ_PARTIAL_BYTES:
        parts["dq_partials"] = partials
    return parts


def _status_kb(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak():
    """VmHWM := VmRSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _trim():
    """Hand freed heap pages back, so the baseline holds live data only."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _inputs(L, D, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 1, L, D), dtype=np.float32) for _ in range(4)]


def measure(L, threads, D=64, warm=False):
    if warm:
        q, k, v, do = _inputs(64, D, seed=1)
        out, lse = cattn.attention(q, k, v, return_lse=True, num_threads=threads)
        cattn.attention_backward(do, q, k, v, out, lse, num_threads=threads)
        del q, k, v, do, out, lse
    q, k, v, do = _inputs(L, D)
    out, lse = cattn.attention(q, k, v, return_lse=True, num_threads=threads)
    _trim()
    reset = _reset_peak()
    rss0 = _status_kb("VmRSS") * 1024
    g = cattn.attention_backward(do, q, k, v, out, lse, num_threads=threads)
    peak = _status_kb("VmHWM") * 1024 - rss0
    grads = g.dq.nbytes + g.dk.nbytes + g.dv.nbytes
    doc = documented_extra_bytes(L, D, threads)
    return {"L": L, "D": D, "threads": threads, "warm": warm, "reset": reset,
            "peak_growth": peak, "grads": grads, "extra": peak - grads,
            "documented": doc, "documented_total": sum(doc.values())}


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4, 5) or (len(sys.argv) == 5 and sys.argv[4] != "warm"):
        sys.exit("usage: backward_peak_memory.py L THREADS [D] [warm]  (see the docstring)")
    D = int(sys.argv[3]) if len(sys.argv) >= 4 else 64
    print(json.dumps(measure(int(sys.argv[1]), int(sys.argv[2]), D, len(sys.argv) == 5)))
