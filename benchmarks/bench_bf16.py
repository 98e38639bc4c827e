"""bfloat16: cattn with a bfloat16 cache (bfloat16 query, K, V; VDPBF16PS
products on CPUs with AVX512_BF16, widening elsewhere) against the same
call in float32, at the standard shapes (``tiny``: the per-call cost of
the plain path), 1 and 2 threads.  Needs
ml_dtypes (skipped without it)."""
import numpy as np

import cattn

SHAPES = {"tiny": (1, 1, 16, 16, 64), "small": (1, 8, 128, 128, 64), "batch4_512": (4, 8, 512, 512, 64),
          "h16_1k": (1, 16, 1024, 1024, 64), "4k": (1, 8, 4096, 4096, 64),
          "d128_2k": (1, 12, 2048, 2048, 128), "cross": (2, 8, 256, 2048, 64),
          "decode4k": (1, 32, 1, 4096, 128)}


class BFloat16:
    params = [["bfloat16", "float32"], list(SHAPES), [1, 2], [False, True]]
    param_names = ["dtype", "shape", "threads", "causal"]
    timeout = 600

    def setup(self, dtype, shape, threads, causal):
        try:
            import ml_dtypes
        except ImportError:
            raise NotImplementedError("needs ml_dtypes")
        B, H, Lq, Lk, D = SHAPES[shape]
        rng = np.random.default_rng(0)
        dt = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32
        self.args = [rng.standard_normal((B, H, L, D)).astype(dt) for L in (Lq, Lk, Lk)]
        self.kw = {"num_threads": threads, "causal": causal}
        cattn.attention(*self.args, **self.kw)

    def time_attention(self, dtype, shape, threads, causal):
        cattn.attention(*self.args, **self.kw)
