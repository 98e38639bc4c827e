# Type stub for cattn/_api.py: the public functions re-exported by ``cattn``.
# The runtime module stays unannotated; this file is what type checkers see.
# ``python -m mypy.stubtest cattn`` (tests/test_typing.py) checks that every
# signature here matches the runtime one.  Keep in sync with _api.py.
from collections.abc import Sequence
from typing import Any, Literal, TypeVar, Union, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._quant import QuantizedKV

__all__ = ["attention", "scores", "softmax", "aggregate", "merge",
           "get_num_threads", "set_num_threads"]

# float16 / float32 / float64 arrays keep their dtype; anything else
# (lists, ints, bools, mixed dtypes) gives a floating array (float64 for ints).
_F = TypeVar("_F", bound=np.floating[Any])
_Array = NDArray[np.floating[Any]]
_Score = Literal["scaled_dot", "dot", "cosine", "additive"]
_Int = Union[int, np.integer[Any]]
# key/value: a float array, or an int8 cache (cattn.quantize_kv)
_KV = Union[ArrayLike, QuantizedKV]
_Window = Union[tuple[Union[_Int, None], Union[_Int, None]], Sequence[Union[_Int, None]]]
_KeyMass = Literal["key_mass"]

# -------------------------------------------------------------- attention
# Overloads: same-dtype float arrays keep their dtype; the return_weights /
# return_lse flags, when literal, fix the shape of the result:
#   neither -> out;  weights only -> (out, weights);  lse only -> (out, lse);
#   both -> (out, weights, lse).  Non-literal flags give the union.

@overload
def attention(
    query: NDArray[_F], key: NDArray[_F], value: NDArray[_F], *,
    score: _Score = "scaled_dot", scale: ArrayLike | None = None,
    mask: ArrayLike | None = None, bias: ArrayLike | None = None,
    causal: bool = False, window: _Window | None = None,
    additive_weight: ArrayLike | None = None,
    return_weights: Literal[False] = False, return_lse: Literal[False] = False,
    num_threads: int | None = None, out: NDArray[_F] | None = None,
    kv_lengths: ArrayLike | None = None, q_lengths: ArrayLike | None = None,
    q_segments: ArrayLike | None = None, kv_segments: ArrayLike | None = None,
    softcap: float | None = None, sinks: ArrayLike | None = None,
) -> NDArray[_F]: ...
@overload
def attention(
    query: NDArray[_F], key: NDArray[_F], value: NDArray[_F], *,
    score: _Score = "scaled_dot", scale: ArrayLike | None = None,
    mask: ArrayLike | None = None, bias: ArrayLike | None = None,
    causal: bool = False, window: _Window | None = None,
    additive_weight: ArrayLike | None = None,
    return_weights: Literal[True] | _KeyMass, return_lse: Literal[False] = False,
    num_threads: int | None = None, out: NDArray[_F] | None = None,
    kv_lengths: ArrayLike | None = None, q_lengths: ArrayLike | None = None,
    q_segments: ArrayLike | None = None, kv_segments: ArrayLike | None = None,
    softcap: float | None = None, sinks: ArrayLike | None = None,
) -> tuple[NDArray[_F], NDArray[_F]]: ...
@overload
def attention(
    query: NDArray[_F], key: NDArray[_F], value: NDArray[_F], *,
    score: _Score = "scaled_dot", scale: ArrayLike | None = None,
    mask: ArrayLike | None = None, bias: ArrayLike | None = None,
    causal: bool = False, window: _Window | None = None,
    additive_weight: ArrayLike | None = None,
    return_weights: Literal[False] = False, return_lse: Literal[True],
    num_threads: int | None = None, out: NDArray[_F] | None = None,
    kv_lengths: ArrayLike | None = None, q_lengths: ArrayLike | None = None,
    q_segments: ArrayLike | None = None, kv_segments: ArrayLike | None = None,
    softcap: float | None = None, sinks: ArrayLike | None = None,
) -> tuple[NDArray[_F], NDArray[_F]]: ...
@overload
def attention(
    query: NDArray[_F], key: NDArray[_F], value: NDArray[_F], *,
    score: _Score = "scaled_dot", scale: ArrayLike | None = None,
    mask: ArrayLike | None = None, bias: ArrayLike | None = None,
    causal: bool = False, window: _Window | None = None,
    additive_weight: ArrayLike | None = None,
    return_weights: Literal[True] | _KeyMass, return_lse: Literal[True],
    num_threads: int | None = None, out: NDArray[_F] | None = None,
    kv_lengths: ArrayLike | None = None, q_lengths: ArrayLike | None = None,
    q_segments: ArrayLike | None = None, kv_segments: ArrayLike | None = None,
    softcap: float | None = None, sinks: ArrayLike | None = None,
) -> tuple[NDArray[_F], NDArray[_F], NDArray[_F]]: ...
@overload
def attention(
    query: NDArray[_F], key: NDArray[_F], value: NDArray[_F], *,
    score: _Score = "scaled_dot", scale: ArrayLike | None = None,
    mask: ArrayLike | None = None, bias: ArrayLike | None = None,
    causal: bool = False, window: _Window | None = None,
    additive_weight: ArrayLike | None = None,
    return_weights: bool | _KeyMass = False, return_lse: bool = False,
    num_threads: int | None = None, out: NDArray[_F] | None = None,
    kv_lengths: ArrayLike | None = None, q_lengths: ArrayLike | None = None,
    q_segments: ArrayLike | None = None, kv_segments: ArrayLike | None = None,
    softcap: float | None = None, sinks: ArrayLike | None = None,
) -> (NDArray[_F] | tuple[NDArray[_F], NDArray[_F]]
      | tuple[NDArray[_F], NDArray[_F], NDArray[_F]]): ...
@overload
def attention(
    query: ArrayLike, key: _KV, value: _KV, *,
    score: _Score = "scaled_dot", scale: ArrayLike | None = None,
    mask: ArrayLike | None = None, bias: ArrayLike | None = None,
    causal: bool = False, window: _Window | None = None,
    additive_weight: ArrayLike | None = None,
    return_weights: Literal[False] = False, return_lse: Literal[False] = False,
    num_threads: int | None = None, out: _Array | None = None,
    kv_lengths: ArrayLike | None = None, q_lengths: ArrayLike | None = None,
    q_segments: ArrayLike | None = None, kv_segments: ArrayLike | None = None,
    softcap: float | None = None, sinks: ArrayLike | None = None,
) -> _Array: ...
@overload
def attention(
    query: ArrayLike, key: _KV, value: _KV, *,
    score: _Score = "scaled_dot", scale: ArrayLike | None = None,
    mask: ArrayLike | None = None, bias: ArrayLike | None = None,
    causal: bool = False, window: _Window | None = None,
    additive_weight: ArrayLike | None = None,
    return_weights: Literal[True] | _KeyMass, return_lse: Literal[False] = False,
    num_threads: int | None = None, out: _Array | None = None,
    kv_lengths: ArrayLike | None = None, q_lengths: ArrayLike | None = None,
    q_segments: ArrayLike | None = None, kv_segments: ArrayLike | None = None,
    softcap: float | None = None, sinks: ArrayLike | None = None,
) -> tuple[_Array, _Array]: ...
@overload
def attention(
    query: ArrayLike, key: _KV, value: _KV, *,
    score: _Score = "scaled_dot", scale: ArrayLike | None = None,
    mask: ArrayLike | None = None, bias: ArrayLike | None = None,
    causal: bool = False, window: _Window | None = None,
    additive_weight: ArrayLike | None = None,
    return_weights: Literal[False] = False, return_lse: Literal[True],
    num_threads: int | None = None, out: _Array | None = None,
    kv_lengths: ArrayLike | None = None, q_lengths: ArrayLike | None = None,
    q_segments: ArrayLike | None = None, kv_segments: ArrayLike | None = None,
    softcap: float | None = None, sinks: ArrayLike | None = None,
) -> tuple[_Array, _Array]: ...
@overload
def attention(
    query: ArrayLike, key: _KV, value: _KV, *,
    score: _Score = "scaled_dot", scale: ArrayLike | None = None,
    mask: ArrayLike | None = None, bias: ArrayLike | None = None,
    causal: bool = False, window: _Window | None = None,
    additive_weight: ArrayLike | None = None,
    return_weights: Literal[True] | _KeyMass, return_lse: Literal[True],
    num_threads: int | None = None, out: _Array | None = None,
    kv_lengths: ArrayLike | None = None, q_lengths: ArrayLike | None = None,
    q_segments: ArrayLike | None = None, kv_segments: ArrayLike | None = None,
    softcap: float | None = None, sinks: ArrayLike | None = None,
) -> tuple[_Array, _Array, _Array]: ...
@overload
def attention(
    query: ArrayLike, key: _KV, value: _KV, *,
    score: _Score = "scaled_dot", scale: ArrayLike | None = None,
    mask: ArrayLike | None = None, bias: ArrayLike | None = None,
    causal: bool = False, window: _Window | None = None,
    additive_weight: ArrayLike | None = None,
    return_weights: bool | _KeyMass = False, return_lse: bool = False,
    num_threads: int | None = None, out: _Array | None = None,
    kv_lengths: ArrayLike | None = None, q_lengths: ArrayLike | None = None,
    q_segments: ArrayLike | None = None, kv_segments: ArrayLike | None = None,
    softcap: float | None = None, sinks: ArrayLike | None = None,
) -> _Array | tuple[_Array, _Array] | tuple[_Array, _Array, _Array]: ...

# ------------------------------------------------------------- the stages
@overload
def scores(
    query: NDArray[_F], key: NDArray[_F], *, score: _Score = "scaled_dot",
    scale: ArrayLike | None = None, additive_weight: ArrayLike | None = None,
    num_threads: int | None = None,
) -> NDArray[_F]: ...
@overload
def scores(
    query: ArrayLike, key: ArrayLike, *, score: _Score = "scaled_dot",
    scale: ArrayLike | None = None, additive_weight: ArrayLike | None = None,
    num_threads: int | None = None,
) -> _Array: ...
@overload
def softmax(x: NDArray[_F], axis: _Int = -1, *, num_threads: int | None = None) -> NDArray[_F]: ...
@overload
def softmax(x: ArrayLike, axis: _Int = -1, *, num_threads: int | None = None) -> _Array: ...
@overload
def aggregate(
    weights: NDArray[_F], value: NDArray[_F], *, num_threads: int | None = None
) -> NDArray[_F]: ...
@overload
def aggregate(
    weights: ArrayLike, value: ArrayLike, *, num_threads: int | None = None
) -> _Array: ...
@overload
def merge(
    outputs: Sequence[NDArray[_F]], lses: Sequence[NDArray[_F]]
) -> tuple[NDArray[_F], NDArray[_F]]: ...
@overload
def merge(outputs: Sequence[ArrayLike], lses: Sequence[ArrayLike]) -> tuple[_Array, _Array]: ...

# ---------------------------------------------------------------- threads
def get_num_threads() -> int: ...
def set_num_threads(n: int | None) -> int: ...
