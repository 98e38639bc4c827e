# Type stub for cattn/_backward.py (attention_backward, re-exported by cattn).
# Checked against the runtime by ``python -m mypy.stubtest cattn``.
from typing import Any, NamedTuple, Optional

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._api import _Score, _Window

__all__ = ["Gradients", "attention_backward"]

BWD_BLOCK_Q: int
BWD_BLOCK_K: int
DQ_PARTIAL_BYTES: int

class Gradients(NamedTuple):
    dq: NDArray[np.floating[Any]]
    dk: NDArray[np.floating[Any]]
    dv: NDArray[np.floating[Any]]
    dbias: Optional[NDArray[np.floating[Any]]]
    dscale: Optional[NDArray[np.floating[Any]]]
    dsinks: Optional[NDArray[np.floating[Any]]]
    dadditive_weight: Optional[NDArray[np.floating[Any]]]

def diagonal_shift(call: Any) -> Optional[NDArray[np.int64]]: ...

def attention_backward(
    dout: ArrayLike, query: ArrayLike, key: ArrayLike, value: ArrayLike, out: ArrayLike,
    lse: ArrayLike, *, score: _Score = "scaled_dot", scale: ArrayLike | None = None,
    mask: ArrayLike | None = None, bias: ArrayLike | None = None, causal: bool = False,
    window: _Window | None = None, additive_weight: ArrayLike | None = None,
    num_threads: int | None = None, kv_lengths: ArrayLike | None = None,
    q_lengths: ArrayLike | None = None, q_segments: ArrayLike | None = None,
    kv_segments: ArrayLike | None = None, softcap: float | None = None,
    sinks: ArrayLike | None = None, return_weights: Any = False,
    return_lse: bool = False) -> Gradients: ...
