"""``out=`` sharing memory with ``kv_lengths``: ValueError, not a segfault.

BUG-1 of docs/reliability.md: the kernel read lengths it had already
overwritten and ran off the key buffer.  Prints ``VALUEERROR`` and the
message when the call is rejected, ``NO-ERROR`` if it is not (a crash
shows as a signal).

Run by the test-suite (tests/test_reliability_out.py) and by hand, from the
repository root, with cattn importable (installed, or ``PYTHONPATH=.`` in a
built checkout)::

    python tests/scripts/out_aliasing_kv_lengths.py
"""
import numpy as np, cattn
q = np.ones((2, 16, 8))
out = np.zeros((2, 16, 8))
kv_lengths = out.reshape(-1).view(np.int64)[:2]    # shares memory with out[0, 0, :2]
kv_lengths[:] = 16
try:
    cattn.attention(q, q, q, kv_lengths=kv_lengths, out=out, num_threads=1)
    print("NO-ERROR")
except ValueError as exc:
    print("VALUEERROR", exc)
