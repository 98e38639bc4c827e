# Type stub for cattn/_paged.py: paged_attention and cache_write, re-exported
# by ``cattn``.  Checked against the runtime by ``python -m mypy.stubtest
# cattn`` (tests/test_typing.py); keep in sync with _paged.py.
from collections.abc import Sequence
from typing import Any, Literal, Union, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._quant import QuantizedKV
from ._validate_paged import PagedCall

__all__ = ["paged_attention", "cache_write"]

PAGED_BLOCK_Q: int
PAGED_BLOCK_K: int
MIN_SPLIT_KEYS: int
ITEMS_PER_THREAD: int

_Array = NDArray[np.floating[Any]]
_Pool = Union[NDArray[Any], QuantizedKV]
_Int = Union[int, np.integer[Any]]
_Window = Union[tuple[Union[_Int, None], Union[_Int, None]], Sequence[Union[_Int, None]]]


@overload
def paged_attention(
    query: ArrayLike, key_cache: _Pool, value_cache: _Pool, block_table: ArrayLike,
    seq_lens: ArrayLike, query_start_loc: ArrayLike, *, scale: float | None = ...,
    causal: bool = ..., window: _Window | None = ..., softcap: float | None = ...,
    sinks: ArrayLike | None = ..., alibi_slopes: ArrayLike | None = ...,
    return_lse: Literal[False] = ..., num_threads: int | None = ...) -> _Array: ...
@overload
def paged_attention(
    query: ArrayLike, key_cache: _Pool, value_cache: _Pool, block_table: ArrayLike,
    seq_lens: ArrayLike, query_start_loc: ArrayLike, *, scale: float | None = ...,
    causal: bool = ..., window: _Window | None = ..., softcap: float | None = ...,
    sinks: ArrayLike | None = ..., alibi_slopes: ArrayLike | None = ...,
    return_lse: Literal[True], num_threads: int | None = ...) -> tuple[_Array, _Array]: ...
@overload
def paged_attention(
    query: ArrayLike, key_cache: _Pool, value_cache: _Pool, block_table: ArrayLike,
    seq_lens: ArrayLike, query_start_loc: ArrayLike, *, scale: float | None = ...,
    causal: bool = ..., window: _Window | None = ..., softcap: float | None = ...,
    sinks: ArrayLike | None = ..., alibi_slopes: ArrayLike | None = ...,
    return_lse: bool = ..., num_threads: int | None = ...
) -> Union[_Array, tuple[_Array, _Array]]: ...

def cache_write(key: ArrayLike, value: ArrayLike, key_cache: _Pool,
                value_cache: _Pool, slot_mapping: ArrayLike) -> None: ...

def plan_paged(call: PagedCall, n_threads: int
               ) -> tuple[NDArray[np.int64], NDArray[np.int64], int, float]: ...
def kernel_pools(call: PagedCall) -> tuple[NDArray[Any], NDArray[Any], int,
                                          NDArray[np.float32] | None,
                                          NDArray[np.float32] | None]: ...
def run_paged(call: PagedCall) -> Union[_Array, tuple[_Array, _Array]]: ...
