"""Q^T packing of the tile path: whole panels of contiguous query rows are
transposed 16 x 16 in registers on AVX-512 (float32 values; bfloat16 query
pairs), the rest a column at a time.  A query read with a column stride
takes the column-at-a-time packing, so both must give the same bits; and
both must match the float64 oracle."""
import numpy as np
import pytest

import cattn
from cattn import reference as ref
from _oracle import assert_close

ml_dtypes = pytest.importorskip("ml_dtypes")
BF = np.dtype(ml_dtypes.bfloat16)

DIMS = [16, 24, 64, 72, 130, 33]
LQS = [31, 32, 33, 64, 100]


def _query(rng, shape, dtype, layout):
    """The same values contiguous, with padded rows, or with a column stride."""
    x = rng.standard_normal(shape).astype(dtype)
    if layout == "contiguous":
        return x
    if layout == "padded_rows":
        big = np.zeros(shape[:-1] + (shape[-1] + 7,), dtype)
        big[..., :shape[-1]] = x
        return big[..., :shape[-1]]
    wide = np.zeros(shape[:-1] + (2 * shape[-1],), dtype)
    wide[..., ::2] = x
    return wide[..., ::2]


@pytest.mark.parametrize("dtype", [np.float32, BF], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("D", DIMS)
@pytest.mark.parametrize("Lq", LQS)
def test_packed_rows_match_column_packing_and_oracle(dtype, D, Lq):
    rng = np.random.default_rng(D * 1000 + Lq)
    shape = (2, 3, Lq, D)
    k = rng.standard_normal((2, 3, 90, D)).astype(dtype)
    v = rng.standard_normal((2, 3, 90, 40)).astype(dtype)
    outs = {}
    for layout in ("contiguous", "padded_rows", "column_stride"):
        q = _query(np.random.default_rng(7), shape, dtype, layout)
        outs[layout] = cattn.attention(q, k, v, out=np.empty((2, 3, Lq, 40), np.float32))
    assert outs["contiguous"].tobytes() == outs["column_stride"].tobytes()
    assert outs["padded_rows"].tobytes() == outs["column_stride"].tobytes()
    q = _query(np.random.default_rng(7), shape, dtype, "contiguous")
    exp = ref.attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64))
    if dtype == np.float32:
        assert_close(outs["contiguous"], exp, np.float32)
    else:   # bfloat16 products, float32 output: the bf16 bound of test_bf16
        d = outs["contiguous"] - exp
        assert np.linalg.norm(d) / np.linalg.norm(exp) <= 4e-3
