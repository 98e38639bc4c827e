"""float32 accuracy over many keys (2^17 in the default suite, 2^20 slow).

The softmax sums run along the key axis, so their rounding error could grow
with the key count; cattn sums each key block on its own and adds the
blocks in double (flash_impl.h, ACCUMULATION).  Scaled queries (logits of
standard deviation 7.5) make the weights peaky, where that growth showed
first.  Every path: decode (Lq = 8, and a one-query GQA call that folds the
query heads into eight queries), tile (Lq = 9), float32 and float16 K/V,
one and two threads (on the decode path two threads split the keys).

The default suite runs one seed at 2^17 keys (about 1 s of oracle per
case); more seeds and the 2^20-key cases are marked ``slow``:
``--run-slow`` or CATTN_SLOW=1 runs them (see conftest.py).

The paged decode (cattn.paged_attention) sums its keys the same way; its
error on the same keys, laid out in shuffled pages, is held to the same
guard as the contiguous decode's.
"""
import numpy as np
import pytest

import cattn
import cattn.reference as ref
from _oracle import EPS32, _finite_max_err, assert_close, naive_attention

Q_SCALE = 7.5
# name: (query heads, queries); one K/V head shared by all query heads
PATHS = {"decode": (1, 8), "decode_gqa": (8, 1), "tile": (1, 9)}


def _inputs(seed, path, lk, cache):
    h, lq = PATHS[path]
    rng = np.random.default_rng([seed, lk])
    q = (rng.standard_normal((1, h, lq, 64)) * Q_SCALE).astype(np.float32)
    k = rng.standard_normal((1, 1, lk, 64)).astype(cache)
    v = rng.standard_normal((1, 1, lk, 64)).astype(cache)
    return q, k, v


def _check(seed, path, lk, cache):
    q, k, v = _inputs(seed, path, lk, cache)
    expected = ref.attention(q, k, v)
    base = [naive_attention(q, k, v, np.float32, variant=var)[0] for var in (0, 1, 2)]
    naive = max(_finite_max_err(b, expected) for b in base)
    for threads in (1, 2):
        out = cattn.attention(q, k, v, num_threads=threads)
        what = f"({path}, Lk={lk}, {cache}, {threads} threads)"
        assert_close(out, expected, np.float32, base, err_msg=what)
        # a regression guard tighter than the project's bound (2x): with
        # blocked sums in double the error no longer grows with the key
        # count (measured 0.2-1.0x the naive error from 2^11 to 2^20 keys;
        # 1.2-1.95x at 2^17 and 8-12x at 2^20 when it did)
        err = _finite_max_err(out, expected)
        assert err <= 1.25 * naive + 8 * EPS32, f"error {err:.3g} > naive {naive:.3g} {what}"


@pytest.mark.parametrize("cache", ["float32", "float16"])
@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow),
                                  pytest.param(2, marks=pytest.mark.slow)])
def test_long_keys_2_17(seed, path, cache):
    _check(seed, path, 1 << 17, cache)


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["float32", "float16"])
@pytest.mark.parametrize("path", sorted(PATHS))
def test_long_keys_2_20(path, cache):
    _check(0, path, 1 << 20, cache)


def _paged(q, k, v, page_size=16, seed=0):
    """paged_attention's arguments for (1, H, Lq, D) queries over one K/V
    head: the keys in pages of ``page_size`` rows, in shuffled slots."""
    lk = k.shape[2]
    n = lk // page_size
    perm = np.random.default_rng(seed).permutation(n)

    def pool(x):
        pages = x[0, 0].reshape(n, page_size, 1, -1).transpose(0, 2, 1, 3)
        out = np.empty_like(pages)
        out[perm] = pages
        return out
    return q[0].transpose(1, 0, 2), pool(k), pool(v), perm[None, :], [lk], [0, q.shape[2]]


@pytest.mark.parametrize("cache", ["float32", "float16"])
def test_paged_decode_long_keys_2_17(cache):
    """One token, 8 query heads over 2^17 keys (the paged decode folds the
    heads into one item's rows): the contiguous decode's guard, 1.25x the
    naive float32 error (measured 0.25-0.38x naive over three seeds, the
    contiguous decode 0.15-0.43x; their chunk boundaries differ, so their
    roundings do; 4-13x the contiguous error before the paged chunk summed
    in blocks)."""
    q, k, v = _inputs(0, "decode_gqa", 1 << 17, cache)
    expected = ref.attention(q, k, v)
    naive = max(_finite_max_err(naive_attention(q, k, v, np.float32, variant=var)[0], expected)
                for var in (0, 1, 2))
    args = _paged(q, k, v)
    for threads in (1, 2):
        out = cattn.paged_attention(*args, num_threads=threads).transpose(1, 0, 2)[None]
        err = _finite_max_err(out, expected)
        assert err <= 1.25 * naive + 8 * EPS32, (
            f"paged error {err:.3g} > naive {naive:.3g} ({cache}, {threads} threads)")
