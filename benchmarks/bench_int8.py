"""asv: decode over an int8 K/V cache (``cattn.quantize_kv``) against the
float16 and float32 caches, at the issue's decode shapes: (1, 32, 1, Lk,
128) with 32 key/value heads or 8 (grouped-query), Lk = 4096 and 32768.

The cache is quantized in ``setup`` (not timed); ``time_quantize`` times
``quantize_kv`` of one (1, 8, 4096, 128) float32 block.  Side-by-side
ratios with the read rate: ``python tools/bench_int8_decode.py``.
"""
import numpy as np

from .common import THREADS, import_cattn

H, D = 32, 128


class Int8Decode:
    params = [["int8", "float16", "float32"], [32, 8], [4096, 32768], THREADS]
    param_names = ["cache", "kv_heads", "Lk", "threads"]
    timeout = 180

    def setup(self, cache, kv_heads, Lk, threads):
        cattn = import_cattn()
        rng = np.random.default_rng(0)
        self.q = rng.standard_normal((1, H, 1, D), dtype=np.float32)
        k = rng.standard_normal((1, kv_heads, Lk, D), dtype=np.float32)
        v = rng.standard_normal((1, kv_heads, Lk, D), dtype=np.float32)
        if cache == "int8":
            self.k, self.v = cattn.quantize_kv(k), cattn.quantize_kv(v)
        else:
            self.k, self.v = k.astype(cache), v.astype(cache)
        self.fn = lambda: cattn.attention(self.q, self.k, self.v, num_threads=threads)
        self.fn()

    def time_decode(self, *args):
        self.fn()

    def track_read_gbs(self, *args):
        """GB/s of K and V bytes read (int8 rows and their scales)."""
        import time
        ts = []
        for _ in range(7):
            t0 = time.perf_counter()
            self.fn()
            ts.append(time.perf_counter() - t0)
        return (self.k.nbytes + self.v.nbytes) / sorted(ts)[len(ts) // 2] / 1e9
    track_read_gbs.unit = "GB/s"


class Quantize:
    def setup(self):
        self.cattn = import_cattn()
        self.x = np.random.default_rng(0).standard_normal((1, 8, 4096, D), dtype=np.float32)

    def time_quantize(self):
        self.cattn.quantize_kv(self.x)
