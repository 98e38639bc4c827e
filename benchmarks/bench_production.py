"""asv: production decode — a KV cache read through ``kv_lengths``, float16
caches and grouped-query attention (32 query heads over 8 key/value heads).

cattn reads the float16 cache as float16 and the first ``kv_lengths`` keys
only; the baselines do what their users would: PyTorch slices the cache and
widens it to float32 (``enable_gqa`` shares the heads), NumPy repeats the
key/value heads and widens.
"""
import numpy as np

from .common import HAVE_TORCH, THREADS, import_cattn

H, HKV, LK, D = 32, 8, 8192, 128
FILLED = 6000


class DecodeCache:
    params = [["cattn", "numpy", "torch"], ["float32", "float16"], ["full", "kv_lengths"],
              THREADS]
    param_names = ["impl", "cache_dtype", "filled", "threads"]
    timeout = 120

    def setup(self, impl, cache_dtype, filled, threads):
        rng = np.random.default_rng(0)
        self.q = rng.standard_normal((1, H, 1, D), dtype=np.float32)
        self.k = rng.standard_normal((1, HKV, LK, D), dtype=np.float32).astype(cache_dtype)
        self.v = rng.standard_normal((1, HKV, LK, D), dtype=np.float32).astype(cache_dtype)
        n = FILLED if filled == "kv_lengths" else LK
        self._restore = []
        if impl == "cattn":
            cattn = import_cattn()
            lengths = np.array([n])
            self.fn = lambda: cattn.attention(self.q, self.k, self.v, kv_lengths=lengths,
                                              num_threads=threads)
        elif impl == "numpy":
            from threadpoolctl import threadpool_limits
            self._restore.append(threadpool_limits(threads, "blas").restore_original_limits)
            scale = D ** -0.5

            def numpy_decode():
                k = np.repeat(self.k[:, :, :n].astype(np.float32), H // HKV, axis=1)
                v = np.repeat(self.v[:, :, :n].astype(np.float32), H // HKV, axis=1)
                s = self.q @ k.swapaxes(-1, -2) * scale
                s = np.exp(s - s.max(-1, keepdims=True))
                return (s / s.sum(-1, keepdims=True)) @ v
            self.fn = numpy_decode
        else:
            if not HAVE_TORCH:
                raise NotImplementedError("torch is not installed")
            import torch
            import torch.nn.functional as F
            old = torch.get_num_threads()
            torch.set_num_threads(threads)
            self._restore.append(lambda: torch.set_num_threads(old))
            q = torch.from_numpy(self.q)
            k, v = torch.from_numpy(self.k), torch.from_numpy(self.v)

            def torch_decode():
                return F.scaled_dot_product_attention(
                    q, k[:, :, :n].float(), v[:, :, :n].float(), enable_gqa=True).numpy()
            self.fn = torch_decode
        self.fn()

    def teardown(self, *args):
        while self._restore:
            self._restore.pop()()

    def time_decode(self, *args):
        self.fn()

    def peakmem_decode(self, *args):
        self.fn()
