# Type stub for the compiled module cattn._kernels (_kernels.pyx).
# Keep in sync with the .pyx: ``python -m mypy.stubtest cattn`` (run by
# tests/test_typing.py) compares this file with the built extension.
"""Typed parallel kernels behind cattn's public functions (internal API)."""

# Cython adds a (here empty) doctest table to every module.
__test__: dict[str, str]

from typing import Any, Union

import numpy as np
import numpy.typing as npt

# float32 or float64 arrays (the fused Cython functions accept either).
_FloatArray = Union[npt.NDArray[np.float32], npt.NDArray[np.float64]]
_Offsets = npt.NDArray[np.int64]

MODE_ATTENTION: int
MODE_WEIGHTS: int
MODE_KEY_MASS: int
MODE_SCORES: int
UNBOUNDED: int
DECODE_MAX_LQ: int
SCORE_KINDS: dict[str, int]

def isa_name() -> str: ...

# ``a`` maps the fields of ``cattn_params`` (see _src/flash.h) to ints,
# floats and NumPy arrays; results are written into its arrays.
def flash(a: dict[str, Any], num_threads: int) -> None: ...
def flash_decode(a: dict[str, Any], num_threads: int, n_split: int) -> None: ...
def _poll_signals() -> bool: ...
def _gemm_batched(
    A: _FloatArray,
    A_off: _Offsets,
    lda: int,
    B: _FloatArray,
    B_off: _Offsets,
    ldb: int,
    C: _FloatArray,
    C_stride: int,
    ldc: int,
    trans_a: bool,
    m: int,
    n: int,
    k: int,
    alpha: float,
    num_threads: int,
) -> None: ...
def gemm_batched(
    A: _FloatArray,
    A_off: _Offsets,
    lda: int,
    B: _FloatArray,
    B_off: _Offsets,
    ldb: int,
    C: _FloatArray,
    C_stride: int,
    ldc: int,
    trans_a: bool,
    m: int,
    n: int,
    k: int,
    alpha: float,
    num_threads: int,
) -> None: ...
def softmax_rows(x: _FloatArray, num_threads: int) -> None: ...
def flash_serial_contiguous(
    q: npt.NDArray[Any],
    k: npt.NDArray[Any],
    v: npt.NDArray[Any],
    scale: float,
    score_kind: int,
) -> npt.NDArray[np.floating[Any]]: ...
