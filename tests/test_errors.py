"""Invalid input raises ValueError/TypeError whose message names the argument."""

import numpy as np
import pytest

import cattn
from _oracle import make_qkv


@pytest.fixture
def qkv(rng):
    return make_qkv(rng, (2, 3), 5, 7, 4, 3)


def test_mismatched_feature_dim(qkv, rng):
    q, k, v = qkv
    with pytest.raises(ValueError, match="key"):
        cattn.attention(q, k[..., :3], v)


def test_mismatched_key_value_length(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="value"):
        cattn.attention(q, k, v[..., :6, :])


def test_batch_dims_do_not_broadcast(qkv, rng):
    q, k, v = qkv
    k2 = rng.standard_normal((4, 3, 7, 4))
    with pytest.raises(ValueError, match="key"):
        cattn.attention(q, k2, v)


def test_batch_dims_do_not_broadcast_value(qkv, rng):
    q, k, v = qkv
    v2 = rng.standard_normal((5, 3, 7, 3))
    with pytest.raises(ValueError, match="value"):
        cattn.attention(q, k, v2)


def test_heads_not_divisible(rng):
    q = rng.standard_normal((2, 6, 5, 4))
    k = rng.standard_normal((2, 4, 7, 4))
    v = rng.standard_normal((2, 4, 7, 3))
    with pytest.raises(ValueError, match="key"):
        cattn.attention(q, k, v)


@pytest.mark.parametrize("which", ["query", "key", "value"])
def test_fewer_than_two_dims(which, qkv):
    args = dict(zip(["query", "key", "value"], (x[0, 0] for x in qkv)))
    args[which] = args[which][0]            # 1-D
    with pytest.raises(ValueError, match=which):
        cattn.attention(args["query"], args["key"], args["value"])


def test_scalar_input(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="query"):
        cattn.attention(1.0, k, v)


@pytest.mark.parametrize("score", ["softmax", "Dot", "", None, 3])
def test_unknown_score(score, qkv):
    q, k, v = qkv
    with pytest.raises((ValueError, TypeError), match="score"):
        cattn.attention(q, k, v, score=score)


def test_unknown_score_in_scores(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="score"):
        cattn.scores(q, k, score="bilinear")


def test_mask_does_not_broadcast(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="mask"):
        cattn.attention(q, k, v, mask=np.ones((5, 6), bool))


def test_bias_does_not_broadcast(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="bias"):
        cattn.attention(q, k, v, bias=np.zeros((3, 5, 8)))


@pytest.mark.parametrize("mask_dtype", [np.int64, np.float64, np.uint8])
def test_non_bool_mask(mask_dtype, qkv):
    q, k, v = qkv
    with pytest.raises(TypeError, match="mask"):
        cattn.attention(q, k, v, mask=np.ones((5, 7), mask_dtype))


@pytest.mark.parametrize("n", [0, -1])
def test_num_threads_below_one(n, qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="num_threads"):
        cattn.attention(q, k, v, num_threads=n)


@pytest.mark.parametrize("n", [1.5, "2", 2.0])
def test_num_threads_not_int(n, qkv):
    q, k, v = qkv
    with pytest.raises((TypeError, ValueError), match="num_threads"):
        cattn.attention(q, k, v, num_threads=n)


@pytest.mark.parametrize("n", [0, -3])
def test_set_num_threads_below_one(n):
    before = cattn.get_num_threads()
    try:
        with pytest.raises(ValueError, match="num_threads|thread"):
            cattn.set_num_threads(n)
    finally:
        cattn.set_num_threads(before)
    assert cattn.get_num_threads() == before


@pytest.mark.parametrize("scale", [np.nan, np.inf, -np.inf])
def test_non_finite_scale(scale, qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="scale"):
        cattn.attention(q, k, v, scale=scale)


def test_non_finite_scale_array(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="scale"):
        cattn.attention(q, k, v, scale=np.array([1.0, np.nan, 2.0]))


def test_scale_array_does_not_broadcast(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="scale"):
        cattn.attention(q, k, v, scale=np.ones(4))


@pytest.mark.parametrize("window", [3, (1, 2, 3), (1,), "ab", (1.5, 2), ("a", None)])
def test_window_wrong_form(window, qkv):
    q, k, v = qkv
    with pytest.raises((ValueError, TypeError), match="window"):
        cattn.attention(q, k, v, window=window)


@pytest.mark.parametrize("length", [3, 5])
def test_additive_weight_wrong_length(length, qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="additive_weight"):
        cattn.attention(q, k, v, score="additive", additive_weight=np.ones(length))


@pytest.mark.parametrize("problem", ["shape", "dtype", "readonly"])
def test_out_invalid(problem, qkv):
    q, k, v = qkv
    if problem == "shape":
        out = np.empty((2, 3, 5, 4))
    elif problem == "dtype":
        out = np.empty((2, 3, 5, 3), np.float32)
    else:
        out = np.empty((2, 3, 5, 3))
        out.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        cattn.attention(q, k, v, out=out)


@pytest.mark.parametrize("bad", ["complex", "object", "str"])
def test_bad_dtype_names_argument(bad, qkv):
    q, k, v = qkv
    kk = {"complex": k.astype(np.complex128), "object": k.astype(object),
          "str": k.astype(str)}[bad]
    with pytest.raises(TypeError, match="key"):
        cattn.attention(q, kk, v)


def test_aggregate_mismatched_keys(rng):
    w = rng.random((2, 5, 7))
    v = rng.standard_normal((2, 6, 3))
    with pytest.raises(ValueError, match="value|weights"):
        cattn.aggregate(w, v)


def test_merge_mismatched_lengths(rng):
    with pytest.raises(ValueError, match="lses|outputs"):
        cattn.merge([np.zeros((3, 4)), np.zeros((3, 4))], [np.zeros(3)])
