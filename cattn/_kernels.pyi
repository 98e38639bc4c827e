# Type stub for the compiled module cattn._kernels (_kernels.pyx).
# Keep in sync with the .pyx: ``python -m mypy.stubtest cattn`` (run by
# tests/test_typing.py) compares this file with the built extension.
"""Typed parallel kernels behind cattn's public functions (internal API)."""

# Cython adds a (here empty) doctest table to every module.
__test__: dict[str, str]

from typing import Any, Union

from typing_extensions import disjoint_base

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
KV_NATIVE: int
KV_F16: int
KV_BF16: int
KV_I8: int
IO_NATIVE: int
IO_F16: int
IO_BF16: int
QBLOCK: int
SCORE_KINDS: dict[str, int]

def isa_name() -> str: ...
def preferred_blocks(is_double: bool, kv_format: int) -> tuple[int, int]: ...

@disjoint_base
class Operand:
    """One kernel operand (see cattn_operand in _src/flash.h)."""
    @property
    def array(self) -> npt.NDArray[Any]: ...
    @property
    def offsets(self) -> _Offsets: ...
    @property
    def rs(self) -> int: ...
    @property
    def cs(self) -> int: ...
    def __init__(self, array: npt.NDArray[Any], offsets: _Offsets, rs: int,
                 cs: int = 1) -> None: ...

@disjoint_base
class KernelArgs:
    """Everything a fused-kernel call reads (see cattn_params in _src/flash.h)."""
    n_batch: int
    Lq: int
    Lk: int
    D: int
    Dv: int
    block_q: int
    block_k: int
    score_kind: int
    kv_format: int
    q_format: int       # IO_*: IO_F16/IO_BF16 hold q (out) as 16-bit bits
    out_format: int
    q: Operand
    k: Operand
    v: Operand
    out: Operand | None
    mask: Operand | None
    bias: Operand | None
    q_seg: Operand | None
    kv_seg: Operand | None
    lse: npt.NDArray[Any] | None
    lse_m: npt.NDArray[Any] | None
    lse_logl: npt.NDArray[Any] | None
    weights: npt.NDArray[Any] | None
    key_mass: npt.NDArray[Any] | None
    scale: npt.NDArray[np.float64]
    add_w: npt.NDArray[Any] | None
    kv_len: _Offsets | None
    q_len: _Offsets | None
    q_pos: _Offsets | None   # key position of query 0 per item (None: kv_len - q_len)
    sinks: npt.NDArray[np.float64] | None
    softcap: float
    win_left: int
    win_right: int
    k_scale: Operand | None
    v_scale: Operand | None
    # keyword-only: n_batch, Lq, Lk, D, Dv, block_q, block_k, score_kind,
    # scale, q, k, v (required); out, kv_format, mask, bias, q_seg, kv_seg,
    # lse, lse_m, lse_logl, weights, key_mass, add_w, kv_len, q_len, q_pos,
    # sinks, softcap, win_left, win_right, k_scale, v_scale, q_format,
    # out_format (optional), as
    # the fields above.
    def __init__(self, *args: Any, **kwargs: Any) -> None: ...

# Results are written into the arrays of ``a``.
def flash(a: KernelArgs, mode: int, num_threads: int) -> None: ...
def flash_decode(a: KernelArgs, num_threads: int, n_split: int) -> None: ...
def _poll_signals() -> bool: ...
def load_blas() -> None: ...
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
@disjoint_base
class TilePolicy:
    """The tile path's block sizes (values and measurements: cattn._plan)."""
    @property
    def block_q(self) -> int: ...
    @property
    def block_q_f64_narrow(self) -> int: ...
    @property
    def block_k(self) -> int: ...
    @property
    def block_q_short_span(self) -> int: ...
    @property
    def short_span(self) -> int: ...
    def __init__(self, block_q: int, block_q_f64_narrow: int, block_k: int,
                 block_q_short_span: int, short_span: int) -> None: ...
    def tile_blocks(self, N: int, Lq: int, n_threads: int, is_double: bool, D: int,
                    skips: bool, span: int, pref_q: int = 0,
                    pref_k: int = 0) -> tuple[int, int]: ...

# ``cattn.attention`` of a plain call, or None when the call is not plain.
def attention_plain(
    query: Any,
    key: Any,
    value: Any,
    score: Any,
    scale: Any,
    causal: Any,
    return_lse: Any,
    num_threads: Any,
    out: Any,
    tiles: TilePolicy,
    serial_work: int,
) -> Any: ...

def flash_backward(a: KernelArgs, dout: Operand, delta: _FloatArray, dk: _FloatArray,
                   dv: _FloatArray, group_start: _Offsets, group_items: _Offsets,
                   num_threads: int, dq_pass: bool, dbias: _FloatArray | None = None,
                   dscore: _FloatArray | None = None,
                   shift: _Offsets | None = None) -> _FloatArray: ...

PAGED_MAX_ROWS: int
PAGED_DECODE: int
PAGED_TILE: int

def paged(q: npt.NDArray[Any], k_cache: npt.NDArray[Any], v_cache: npt.NDArray[Any],
          block_table: npt.NDArray[np.int64], seq_lens: npt.NDArray[np.int64],
          q_start: npt.NDArray[np.int64], out: npt.NDArray[Any], lse: Any, scale: float,
          softcap: float, sinks: Any, slopes: Any, win_left: int, win_right: int,
          kv_format: int, block_q: int, block_k: int, work: npt.NDArray[np.int64],
          finish: npt.NDArray[np.int64], acc_rows: int, num_threads: int,
          k_scale: npt.NDArray[np.float32] | None = None,
          v_scale: npt.NDArray[np.float32] | None = None) -> None: ...
