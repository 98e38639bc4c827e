"""Every micro-kernel variant (portable baseline, Haswell AVX2, Skylake-X
AVX-512) against the float64 oracle.  The variant is chosen once per process,
so each runs in a subprocess with CATTN_ISA capping the choice."""
import os
import subprocess
import textwrap

import pytest

import cattn
from _subproc import run_code_under_isa

SCRIPT = textwrap.dedent(
    """
    import numpy as np, cattn
    from cattn import reference as ref
    print(cattn._kernels.isa_name())
    rng = np.random.default_rng(0)
    worst = 0.0
    for Lq, Lk in [(143, 587), (5, 1300), (40, 40)]:
        q = rng.standard_normal((2, 4, Lq, 21))
        k = rng.standard_normal((2, 2, Lk, 21))
        v = rng.standard_normal((2, 2, Lk, 19))
        mask = rng.random((Lq, Lk)) > 0.3
        for kw in [{}, {"causal": True}, {"mask": mask}, {"score": "cosine"},
                   {"score": "additive", "window": (50, 3)}, {"softcap": 2.0, "sinks": 0.5}]:
            for dt in (np.float64, np.float32):
                out, lse = cattn.attention(q.astype(dt), k.astype(dt), v.astype(dt),
                                           return_lse=True, num_threads=2, **kw)
                e_out, e_lse = ref.attention(q.astype(dt), k.astype(dt), v.astype(dt),
                                             return_lse=True, **kw)
                tol = 1e-10 if dt == np.float64 else 1e-4
                err = max(np.max(np.abs(out - e_out)),
                          np.max(np.abs(np.where(np.isinf(e_lse), 0, lse - e_lse))))
                assert err < tol, (Lq, Lk, kw, dt, err)
                worst = max(worst, err if dt == np.float64 else 0)
        # a float16 cache
        o = cattn.attention(q.astype(np.float32), k.astype(np.float16), v.astype(np.float16))
        e = ref.attention(q, k.astype(np.float16), v.astype(np.float16))
        assert np.max(np.abs(o - e)) < 1e-4
    print("ok", worst)
    """
)


@pytest.mark.parametrize("isa", ["generic", "haswell", "skylake", "cooperlake"])
def test_variant_matches_reference(isa):
    res = run_code_under_isa(isa, SCRIPT, timeout=120)
    assert res.returncode == 0, res.stderr
    chosen, status = res.stdout.split("\n")[:2]
    assert status.startswith("ok")
    if chosen == "portable":      # a CATTN_PORTABLE build has one variant only
        return
    # the cap never raises the level above what the CPU has
    assert chosen in ("generic", "haswell", "skylake", "cooperlake")
    if isa == "skylake":
        assert chosen != "cooperlake"
    if isa == "generic":
        assert chosen == "generic"
    if isa == "haswell":
        assert chosen in ("generic", "haswell")
    assert status.startswith("ok")


_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "cattn", "_src", "flash.c")


@pytest.mark.skipif(not os.path.exists(_SRC), reason="needs the source tree")
def test_portable_kernels_are_standard_c():
    """The CATTN_PORTABLE kernels (what MSVC compiles) use no GNU extension:
    preprocessed as a compiler that is not GCC would see them, the project's
    part holds no vector_size, __attribute__ or __builtin, and it compiles as
    strict C11 without variable-length arrays."""
    import shutil
    cc = shutil.which("gcc")
    if cc is None:
        pytest.skip("needs gcc")
    res = subprocess.run([cc, "-E", "-P", "-U__GNUC__", "-DCATTN_PORTABLE=1", _SRC],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    own = res.stdout[res.stdout.index("cattn_params"):]
    for token in ("vector_size", "__attribute__", "__builtin", "__typeof", "({"):
        assert token not in own, token
    res = subprocess.run([cc, "-std=c11", "-pedantic-errors", "-Werror=vla", "-fsyntax-only",
                          "-DCATTN_PORTABLE=1", _SRC], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
