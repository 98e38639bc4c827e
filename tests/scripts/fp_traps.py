"""Run attention with the FE_INVALID trap enabled (glibc's feenableexcept):
a kernel step that computes inf - inf or 0 * inf, even on a lane whose
result it then discards, dies here with SIGFPE.  Prints "ok" on success."""
import ctypes
import sys

import numpy as np

import cattn

FE_INVALID = 1
libm = ctypes.CDLL("libm.so.6")
rng = np.random.default_rng(0)
dtypes = [np.float32, np.float64]
try:
    import ml_dtypes
    dtypes.append(ml_dtypes.bfloat16)
except ImportError:
    pass
cases = []
for dt in dtypes:
    q, k, v = (rng.standard_normal((1, 2, 70, 32)).astype(dt) for _ in range(3))
    cases += [dict(q=q, k=k, v=v), dict(q=q, k=k, v=v, causal=True),
              dict(q=q[:, :, :1], k=k, v=v)]
    kq = cattn.quantize_kv(k.astype(np.float32))
    cases.append(dict(q=q.astype(np.float32)[:, :, :3], k=kq, v=kq))
libm.feenableexcept(FE_INVALID)
for c in cases:
    o = cattn.attention(c.pop("q"), c.pop("k"), c.pop("v"), num_threads=1, **c)
libm.fedisableexcept(FE_INVALID)
print("ok")
sys.stdout.flush()
