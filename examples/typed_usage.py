"""cattn's whole public API, statically typed.

``mypy --strict examples/typed_usage.py`` passes on this file (tests/test_typing.py
checks it), and ``python examples/typed_usage.py`` runs it.  It shows what the
type stubs shipped with cattn (``py.typed`` + ``*.pyi``) give a type checker:

* same-dtype float arrays keep their dtype (float32 in, float32 out);
* lists and other array-likes give ``NDArray[np.floating[Any]]``;
* the literal flags ``return_weights`` / ``return_lse`` decide whether
  ``attention`` returns one array or a tuple of two or three;
* ``score=`` only accepts the four similarity names.

The block at the end (never run) lists calls the stubs reject; under
``--strict`` every ``type: ignore`` there must be needed, so the check fails if
the stubs stop rejecting them.
"""
from __future__ import annotations

import io
from contextlib import redirect_stdout
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

import cattn
from cattn.explain import Comparison, Explanation

if TYPE_CHECKING:
    from typing_extensions import assert_type
else:
    def assert_type(value, _type):  # runtime no-op (typing.assert_type is 3.11+)
        return value

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
Floats = NDArray[np.floating[Any]]


def attention_options() -> None:
    rng = np.random.default_rng(0)
    B, H, Hkv, Lq, Lk, D = 2, 4, 2, 16, 24, 8
    q = rng.standard_normal((B, H, Lq, D), dtype=np.float32)
    k = rng.standard_normal((B, Hkv, Lk, D), dtype=np.float32)   # GQA: 2 KV heads
    v = rng.standard_normal((B, Hkv, Lk, D), dtype=np.float32)

    # One array back when no extra result is asked for; dtype preserved.
    out = cattn.attention(q, k, v)
    assert_type(out, F32)

    # Every option, keyword-only.
    mask = np.ones((Lq, Lk), dtype=bool)
    bias = np.zeros((Lq, Lk), dtype=np.float32)
    out2: F32 = cattn.attention(
        q, k, v, score="scaled_dot", scale=0.5, mask=mask, bias=bias, causal=True,
        window=(8, 0), num_threads=2, kv_lengths=np.array([Lk, Lk - 4]),
        q_lengths=np.array([Lq, Lq]), softcap=30.0, sinks=np.zeros(H),
    )
    seg_q = np.zeros((B, 1, Lq), dtype=np.int64)
    seg_k = np.zeros((B, 1, Lk), dtype=np.int64)
    dest = np.empty_like(out)
    out3 = cattn.attention(q, k, v, q_segments=seg_q, kv_segments=seg_k, out=dest)
    assert out3 is dest
    out4 = cattn.attention(q, k, v, score="additive", additive_weight=np.ones(D))
    assert_type(out4, F32)

    # Literal flags select the tuple shape.
    o_w, w = cattn.attention(q, k, v, return_weights=True)
    o_l, lse = cattn.attention(q, k, v, return_lse=True)
    o_m, mass, lse2 = cattn.attention(q, k, v, return_weights="key_mass", return_lse=True)
    assert_type(w, F32)
    assert_type(lse2, F32)
    assert w.shape == (B, H, Lq, Lk) and lse.shape == (B, H, Lq) and mass.shape == (B, H, Lk)
    for o in (out2, o_w, o_l, o_m):
        assert o.shape == out.shape

    # A flag only known at run time: the union, narrowed by the caller.
    want_lse = bool(rng.integers(2))
    res = cattn.attention(q, k, v, return_lse=want_lse)
    if isinstance(res, tuple):
        first = res[0]
    else:
        first = res
    assert_type(first, F32)

    # Array-likes (lists, ints, mixed dtypes) give a floating array.
    tiny = cattn.attention([[1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]], [[10.0], [20.0]])
    assert_type(tiny, Floats)


def stages_and_merge() -> None:
    rng = np.random.default_rng(1)
    q = rng.standard_normal((3, 5, 4))
    k = rng.standard_normal((3, 7, 4))
    v = rng.standard_normal((3, 7, 2))

    s: F64 = cattn.scores(q, k, score="dot", scale=0.25, num_threads=1)
    p: F64 = cattn.softmax(s, axis=-1, num_threads=1)
    o: F64 = cattn.aggregate(p, v, num_threads=1)
    assert np.allclose(o, cattn.attention(q, k, v, score="dot", scale=0.25))
    cos = cattn.scores(q, k, score="cosine")
    add = cattn.scores(q, k, score="additive", additive_weight=np.ones(4))
    assert cos.shape == add.shape == (3, 5, 7)
    assert_type(cattn.softmax([0.0, 1.0]), Floats)

    # Attention over two key shards, merged by the log-sum-exp rule.
    a_out, a_lse = cattn.attention(q, k[:, :3], v[:, :3], return_lse=True)
    b_out, b_lse = cattn.attention(q, k[:, 3:], v[:, 3:], return_lse=True)
    merged, lse = cattn.merge([a_out, b_out], [a_lse, b_lse])
    assert_type(merged, F64)
    assert np.allclose(merged, cattn.attention(q, k, v))
    assert lse.shape == (3, 5)


def threads_and_config() -> None:
    n: int = cattn.get_num_threads()
    previous: int = cattn.set_num_threads(1)
    assert cattn.get_num_threads() == 1
    cattn.set_num_threads(None)
    assert previous == n
    cfg = cattn.show_config(return_dict=True)
    assert_type(cfg, dict[str, Any])
    with redirect_stdout(io.StringIO()) as text:
        nothing = cattn.show_config()
    assert_type(nothing, None)
    assert "openmp" in text.getvalue() and isinstance(cfg["openmp"], bool)
    version: str = cattn.__version__
    assert version


def explain_and_reference() -> None:
    e = cattn.explain([1.0, 0.5], [[1, 0], [0, 1]], [[10.0], [20.0]],
                      labels=["first", "second"], score="dot")
    assert_type(e, Explanation)
    weights: Floats = e.weights
    assert abs(float(weights.sum()) - 1.0) < 1e-12
    top = e.most_attended
    assert top == "first"
    text: str = e.to_text(lang="en", digits=2)
    html: str = e.to_html()
    assert text and html.startswith("<div")

    c = cattn.explain([1.0, 0.5], [[1, 0], [0, 1]], [[10.0], [20.0]],
                      score=["dot", "cosine"], lang="zh", causal=False)
    assert_type(c, Comparison)
    assert_type(c["dot"], Explanation)
    assert len(c) == 2 and [x.score for x in c] == ["dot", "cosine"]
    diff = c.max_abs_diff
    assert diff is not None and diff < 1e-9

    # The float64 oracle mirrors attention's options and flags.
    q = np.ones((2, 3), dtype=np.float32)
    k = np.eye(3, dtype=np.float32)
    ref = cattn.reference.attention(q, k, k, causal=True)
    assert_type(ref, F64)
    assert np.allclose(ref, cattn.attention(q, k, k, causal=True), atol=1e-6)
    r_out, r_w, r_lse = cattn.reference.attention(q, k, k, return_weights=True,
                                                  return_lse=True)
    assert_type(r_lse, F64)
    assert np.allclose(r_out, cattn.attention(q, k, k), atol=1e-6)
    assert r_w.shape == (2, 3) and r_lse.shape == (2,)


if TYPE_CHECKING:
    # What the stubs reject (never executed).
    def _rejected(x: F64) -> None:
        cattn.attention(x, x, x, score="euclid")  # type: ignore[call-overload]
        cattn.attention(x, x, x, True)  # type: ignore[call-overload]
        cattn.softmax(x, num_threads="4")  # type: ignore[call-overload]
        only: F64 = cattn.attention(x, x, x, return_lse=True)  # type: ignore[assignment]
        cattn.set_num_threads("all")  # type: ignore[arg-type]
        cattn.explain(x, x, x, lang="fr")  # type: ignore[call-overload]


def main() -> None:
    attention_options()
    stages_and_merge()
    threads_and_config()
    explain_and_reference()
    print("typed_usage: OK")


if __name__ == "__main__":
    main()
