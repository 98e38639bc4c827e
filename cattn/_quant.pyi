from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = ["QuantizedKV", "quantize_kv", "QBLOCK"]

QBLOCK: int

class QuantizedKV:
    """An int8 key or value cache: int8 ``data`` (..., L, D) and float32
    ``scales`` (..., L, ceil(D / 32)), one per block of 32 values along D."""
    data: npt.NDArray[np.int8]
    scales: npt.NDArray[np.float32]
    dtype: np.dtype[np.int8]
    block: int
    def __init__(self, data: npt.ArrayLike, scales: npt.ArrayLike) -> None: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def size(self) -> int: ...
    @property
    def ndim(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def __len__(self) -> int: ...
    def dequantize(self, dtype: npt.DTypeLike = ...) -> npt.NDArray[Any]: ...
    def __getitem__(self, key: Any) -> QuantizedKV: ...

def quantize_kv(x: npt.ArrayLike, dtype: Literal["int8"] | npt.DTypeLike = "int8") -> QuantizedKV: ...
