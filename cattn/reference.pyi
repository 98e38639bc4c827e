# Type stub for cattn/reference.py, the float64 NumPy oracle.  Every result
# is float64.  Checked against the runtime by ``python -m mypy.stubtest
# cattn``; keep in sync with reference.py.
from collections.abc import Sequence
from typing import Any, Literal, Union, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._quant import QuantizedKV

__all__ = ["attention", "scores", "softmax", "aggregate", "merge"]

_F64 = NDArray[np.float64]
_Score = Literal["scaled_dot", "dot", "cosine", "additive"]
_Int = Union[int, np.integer[Any]]
_Window = Union[tuple[Union[_Int, None], Union[_Int, None]], Sequence[Union[_Int, None]]]
_KeyMass = Literal["key_mass"]

def scores(
    query: ArrayLike, key: ArrayLike, *, score: _Score = "scaled_dot",
    scale: ArrayLike | None = None, additive_weight: ArrayLike | None = None,
) -> _F64: ...
def softmax(x: ArrayLike, axis: _Int = -1) -> _F64: ...
# The masking step of attention (bias added, then which keys are attended),
# shared with cattn.explain.
def mask_scores(
    s: NDArray[np.floating[Any]], *, bias: ArrayLike | None = None,
    mask: ArrayLike | None = None, causal: bool = False, window: _Window | None = None,
    q_pos: ArrayLike | None = None,
) -> tuple[NDArray[np.floating[Any]], NDArray[np.bool_]]: ...
def aggregate(weights: ArrayLike, value: ArrayLike) -> _F64: ...
def merge(outputs: Sequence[ArrayLike], lses: Sequence[ArrayLike]) -> tuple[_F64, _F64]: ...

# As cattn.attention (without num_threads and out): literal return_weights /
# return_lse flags fix the shape of the result.
@overload
def attention(
    query: ArrayLike, key: ArrayLike, value: ArrayLike, *,
    score: _Score = "scaled_dot", scale: ArrayLike | None = None,
    mask: ArrayLike | None = None, bias: ArrayLike | None = None,
    causal: bool = False, window: _Window | None = None,
    additive_weight: ArrayLike | None = None,
    return_weights: Literal[False] = False, return_lse: Literal[False] = False,
    kv_lengths: ArrayLike | None = None, q_lengths: ArrayLike | None = None,
    q_segments: ArrayLike | None = None, kv_segments: ArrayLike | None = None,
    softcap: float | None = None, sinks: ArrayLike | None = None,
) -> _F64: ...
@overload
def attention(
    query: ArrayLike, key: ArrayLike, value: ArrayLike, *,
    score: _Score = "scaled_dot", scale: ArrayLike | None = None,
    mask: ArrayLike | None = None, bias: ArrayLike | None = None,
    causal: bool = False, window: _Window | None = None,
    additive_weight: ArrayLike | None = None,
    return_weights: Literal[True] | _KeyMass, return_lse: Literal[False] = False,
    kv_lengths: ArrayLike | None = None, q_lengths: ArrayLike | None = None,
    q_segments: ArrayLike | None = None, kv_segments: ArrayLike | None = None,
    softcap: float | None = None, sinks: ArrayLike | None = None,
) -> tuple[_F64, _F64]: ...
@overload
def attention(
    query: ArrayLike, key: ArrayLike, value: ArrayLike, *,
    score: _Score = "scaled_dot", scale: ArrayLike | None = None,
    mask: ArrayLike | None = None, bias: ArrayLike | None = None,
    causal: bool = False, window: _Window | None = None,
    additive_weight: ArrayLike | None = None,
    return_weights: Literal[False] = False, return_lse: Literal[True],
    kv_lengths: ArrayLike | None = None, q_lengths: ArrayLike | None = None,
    q_segments: ArrayLike | None = None, kv_segments: ArrayLike | None = None,
    softcap: float | None = None, sinks: ArrayLike | None = None,
) -> tuple[_F64, _F64]: ...
@overload
def attention(
    query: ArrayLike, key: ArrayLike, value: ArrayLike, *,
    score: _Score = "scaled_dot", scale: ArrayLike | None = None,
    mask: ArrayLike | None = None, bias: ArrayLike | None = None,
    causal: bool = False, window: _Window | None = None,
    additive_weight: ArrayLike | None = None,
    return_weights: Literal[True] | _KeyMass, return_lse: Literal[True],
    kv_lengths: ArrayLike | None = None, q_lengths: ArrayLike | None = None,
    q_segments: ArrayLike | None = None, kv_segments: ArrayLike | None = None,
    softcap: float | None = None, sinks: ArrayLike | None = None,
) -> tuple[_F64, _F64, _F64]: ...
@overload
def attention(
    query: ArrayLike, key: ArrayLike, value: ArrayLike, *,
    score: _Score = "scaled_dot", scale: ArrayLike | None = None,
    mask: ArrayLike | None = None, bias: ArrayLike | None = None,
    causal: bool = False, window: _Window | None = None,
    additive_weight: ArrayLike | None = None,
    return_weights: bool | _KeyMass = False, return_lse: bool = False,
    kv_lengths: ArrayLike | None = None, q_lengths: ArrayLike | None = None,
    q_segments: ArrayLike | None = None, kv_segments: ArrayLike | None = None,
    softcap: float | None = None, sinks: ArrayLike | None = None,
) -> _F64 | tuple[_F64, _F64] | tuple[_F64, _F64, _F64]: ...

_Pool = Union[ArrayLike, QuantizedKV]

def gather_pages(cache: _Pool, block_table: ArrayLike, seq_len: int) -> NDArray[Any]: ...
@overload
def paged_attention(
    query: ArrayLike, key_cache: _Pool, value_cache: _Pool, block_table: ArrayLike,
    seq_lens: ArrayLike, query_start_loc: ArrayLike, *, scale: float | None = ...,
    causal: bool = ..., window: Any = ..., softcap: float | None = ...,
    sinks: ArrayLike | None = ..., alibi_slopes: ArrayLike | None = ...,
    return_lse: Literal[False] = ...) -> _F64: ...
@overload
def paged_attention(
    query: ArrayLike, key_cache: _Pool, value_cache: _Pool, block_table: ArrayLike,
    seq_lens: ArrayLike, query_start_loc: ArrayLike, *, scale: float | None = ...,
    causal: bool = ..., window: Any = ..., softcap: float | None = ...,
    sinks: ArrayLike | None = ..., alibi_slopes: ArrayLike | None = ...,
    return_lse: Literal[True]) -> tuple[_F64, _F64]: ...
@overload
def paged_attention(
    query: ArrayLike, key_cache: _Pool, value_cache: _Pool, block_table: ArrayLike,
    seq_lens: ArrayLike, query_start_loc: ArrayLike, *, scale: float | None = ...,
    causal: bool = ..., window: Any = ..., softcap: float | None = ...,
    sinks: ArrayLike | None = ..., alibi_slopes: ArrayLike | None = ...,
    return_lse: bool = ...) -> Union[_F64, tuple[_F64, _F64]]: ...
