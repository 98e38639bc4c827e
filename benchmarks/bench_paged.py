"""asv: paged K/V (``cattn.paged_attention``).

``PagedDecode``: 8 sequences x 32 query heads (8 K/V heads), 4,096 keys
each, D = 128, one new token per sequence, pages of 16 or 128 rows
assigned at random from a shuffled pool; ``contiguous`` is cattn's decode
on the same keys in a (seqs, heads, keys, D) cache with ``kv_lengths``;
``torch`` gathers the pages with indexing and calls
``scaled_dot_product_attention`` (what users do today).

``MixedBatch``: 4 sequences prefilling 512-token chunks over 2,048 cached
keys + 28 decoding over 1,024-8,192 keys, one call.

Pool formats (``cache_dtype``): float32, float16, bfloat16 (ml_dtypes) and
int8 (a ``QuantizedKV``: the same float32 values quantized).

``build_paged`` is shared with the side-by-side script
(``python -m benchmarks.bench_paged``), which runs each variant in its own
process, interleaved, and prints medians.
"""
import numpy as np

from .common import THREADS, import_cattn

H, HKV, D = 32, 8, 128


def as_pool(x, dtype):
    """A float32 pool in the format named ``dtype`` (``int8``: a
    QuantizedKV; ``bfloat16``: ml_dtypes', NotImplementedError without it)."""
    if dtype == "int8":
        import cattn
        return cattn.quantize_kv(x)
    if dtype == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise NotImplementedError("bfloat16 pools need ml_dtypes") from None
        return x.astype(ml_dtypes.bfloat16)
    return x.astype(dtype)


def build_paged(seq_lens, q_lens, page_size, dtype, seed=0):
    """A shuffled pool holding the sequences, the block table, the query
    and query_start_loc."""
    rng = np.random.default_rng(seed)
    need = [-(-s // page_size) for s in seq_lens]
    P = sum(need)
    kc = as_pool(rng.standard_normal((P, HKV, page_size, D), dtype=np.float32), dtype)
    vc = as_pool(rng.standard_normal((P, HKV, page_size, D), dtype=np.float32), dtype)
    perm = rng.permutation(P)
    bt = np.zeros((len(seq_lens), max(need)), np.int64)
    c = 0
    for s, n in enumerate(need):
        bt[s, :n] = perm[c:c + n]
        c += n
    qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int64)
    q = rng.standard_normal((int(qsl[-1]), H, D), dtype=np.float32)
    return q, kc, vc, bt, np.asarray(seq_lens, np.int64), qsl


def contiguous(q, kc, vc, bt, sl):
    """The same keys as a (seqs, Hkv, max_len, D) cache (decode layout)."""
    if hasattr(kc, "scales"):        # int8: data and scales alike
        import cattn
        (_, kd, vd), (cq, ks, vs) = (contiguous(q, a, b, bt, sl)
                                     for a, b in ((kc.data, vc.data), (kc.scales, vc.scales)))
        return cq, cattn.QuantizedKV(kd, ks), cattn.QuantizedKV(vd, vs)
    L = int(sl.max())
    k = np.zeros((len(sl), HKV, L, kc.shape[3]), kc.dtype)
    v = np.zeros((len(sl), HKV, L, vc.shape[3]), vc.dtype)
    for s, n in enumerate(sl):
        pages = bt[s, :-(-int(n) // kc.shape[2])]
        k[s, :, :n] = kc[pages].transpose(1, 0, 2, 3).reshape(HKV, -1, kc.shape[3])[:, :n]
        v[s, :, :n] = vc[pages].transpose(1, 0, 2, 3).reshape(HKV, -1, vc.shape[3])[:, :n]
    return q.reshape(len(sl), -1, H, D).transpose(0, 2, 1, 3), k, v


def torch_paged(q, kc, vc, bt, sl, qsl, causal):
    """Gather each sequence's pages by indexing, then SDPA (GQA shared)."""
    import torch
    import torch.nn.functional as F
    tk, tv, tq = torch.from_numpy(kc), torch.from_numpy(vc), torch.from_numpy(q)
    outs = []
    for s in range(len(sl)):
        n, ps = int(sl[s]), kc.shape[2]
        pages = torch.from_numpy(bt[s, :-(-n // ps)])
        k = tk[pages].transpose(0, 1).reshape(HKV, -1, D)[:, :n].float()
        v = tv[pages].transpose(0, 1).reshape(HKV, -1, D)[:, :n].float()
        qq = tq[qsl[s]:qsl[s + 1]].transpose(0, 1)[None]
        ql = qq.shape[2]
        mask = None
        if causal and ql > 1:
            mask = torch.arange(n)[None, :] <= (torch.arange(ql)[:, None] + n - ql)
        outs.append(F.scaled_dot_product_attention(qq, k[None], v[None], attn_mask=mask,
                                                   enable_gqa=True)[0].transpose(0, 1))
    return torch.cat(outs)


DECODE = dict(seq_lens=[4096] * 8, q_lens=[1] * 8)
MIXED = dict(seq_lens=[2048] * 4 + list(np.linspace(1024, 8192, 28).astype(int)),
             q_lens=[512] * 4 + [1] * 28)


class PagedDecode:
    params = [["paged", "contiguous"], [16, 128], ["float32", "float16", "bfloat16", "int8"],
              THREADS]
    param_names = ["impl", "page_size", "cache_dtype", "threads"]
    timeout = 120

    def setup(self, impl, page_size, cache_dtype, threads):
        cattn = import_cattn()
        q, kc, vc, bt, sl, qsl = build_paged(**DECODE, page_size=page_size, dtype=cache_dtype)
        if impl == "paged":
            self.fn = lambda: cattn.paged_attention(q, kc, vc, bt, sl, qsl, causal=True,
                                                    num_threads=threads)
        else:
            cq, k, v = contiguous(q, kc, vc, bt, sl)
            self.fn = lambda: cattn.attention(cq, k, v, kv_lengths=sl, causal=True,
                                              num_threads=threads)
        self.fn()

    def time_decode(self, *args):
        self.fn()


class MixedBatch:
    params = [["float32", "float16"], THREADS]
    param_names = ["cache_dtype", "threads"]
    timeout = 120

    def setup(self, cache_dtype, threads):
        cattn = import_cattn()
        q, kc, vc, bt, sl, qsl = build_paged(**MIXED, page_size=16, dtype=cache_dtype)
        self.fn = lambda: cattn.paged_attention(q, kc, vc, bt, sl, qsl, causal=True,
                                                num_threads=threads)
        self.fn()

    def time_mixed(self, *args):
        self.fn()


def _one(spec):
    """Child process: time one variant, print its median (seconds)."""
    import json
    import sys
    import time
    impl, ps, dt, threads, case = spec.split(",")
    ps, threads = int(ps), int(threads)
    shape = DECODE if case == "decode" else MIXED
    q, kc, vc, bt, sl, qsl = build_paged(**shape, page_size=ps, dtype=dt)
    if impl == "torch":
        import torch
        torch.set_num_threads(threads)
        fn = lambda: torch_paged(q, kc, vc, bt, sl, qsl, True)  # noqa: E731
    else:
        sys.path.insert(0, ".")
        import cattn
        if impl == "paged":
            fn = lambda: cattn.paged_attention(q, kc, vc, bt, sl, qsl, causal=True,  # noqa
                                               num_threads=threads)
        elif impl == "contiguous":
            cq, k, v = contiguous(q, kc, vc, bt, sl)
            fn = lambda: cattn.attention(cq, k, v, kv_lengths=sl, causal=True,  # noqa
                                         num_threads=threads)
        elif impl == "stream":       # the streaming read of the same K/V bytes
            fn = lambda: (kc.sum(dtype=np.float32), vc.sum(dtype=np.float32))  # noqa
        elif impl in ("prefill_only", "decode_only"):
            keep = (np.diff(qsl) > 1) if impl == "prefill_only" else (np.diff(qsl) == 1)
            idx = np.nonzero(keep)[0]
            ql = np.diff(qsl)[idx]
            tok = np.concatenate([np.arange(qsl[s], qsl[s + 1]) for s in idx])
            q2, bt2, sl2 = q[tok], bt[idx], sl[idx]
            qsl2 = np.concatenate([[0], np.cumsum(ql)])
            fn = lambda: cattn.paged_attention(q2, kc, vc, bt2, sl2, qsl2, causal=True,  # noqa
                                               num_threads=threads)
    fn()
    ts = []
    for _ in range(7):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    print(json.dumps(float(np.median(ts))))


if __name__ == "__main__":
    import sys
    if len(sys.argv) > 1:
        _one(sys.argv[1])
