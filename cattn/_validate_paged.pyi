# Type stub for cattn/_validate_paged.py (checked by mypy.stubtest).
from typing import Any, NamedTuple, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["PagedCall", "validate_paged", "validate_cache_write"]


class PagedCall(NamedTuple):
    query: NDArray[Any]
    key_cache: NDArray[Any]
    value_cache: NDArray[Any]
    block_table: NDArray[np.int64]
    seq_lens: NDArray[np.int64]
    q_start: NDArray[np.int64]
    scale: float
    softcap: Optional[float]
    window: Tuple[Optional[int], Optional[int]]
    sinks: Optional[NDArray[np.float64]]
    alibi_slopes: Optional[NDArray[np.float64]]
    return_lse: bool
    num_threads: Optional[int]
    cdt: np.dtype[Any]
    rdt: np.dtype[Any]


def validate_paged(query: ArrayLike, key_cache: Any, value_cache: Any, block_table: ArrayLike,
                   seq_lens: ArrayLike, query_start_loc: ArrayLike, *, scale: Any, causal: Any,
                   window: Any, softcap: Any, sinks: Any, alibi_slopes: Any, return_lse: Any,
                   num_threads: Any) -> PagedCall: ...
def validate_cache_write(key: ArrayLike, value: ArrayLike, key_cache: Any, value_cache: Any,
                         slot_mapping: ArrayLike
                         ) -> tuple[NDArray[Any], NDArray[Any], NDArray[np.int64],
                                    NDArray[np.int64]]: ...
def cache_format(x: Any) -> Any: ...
