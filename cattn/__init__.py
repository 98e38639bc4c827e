"""cattn: fast, exact attention for NumPy on multicore CPUs.

The three stages of attention, each a parallel kernel, and the fused kernel
that runs them in one pass:

>>> import numpy as np, cattn
>>> q, k, v = np.eye(2), np.eye(2), np.array([[1.0], [2.0]])
>>> s = cattn.scores(q, k)                 # stage 1: similarity
>>> w = cattn.softmax(s)                   # stage 2: weights summing to 1
>>> o = cattn.aggregate(w, v)              # stage 3: weighted sum of values
>>> bool(np.allclose(o, cattn.attention(q, k, v)))
True
"""
# Design
# ------
# One path from the public functions to the kernels, in layers that import
# only downwards (tests/test_architecture.py checks it):
#
#   _api / _stages / dask      public functions
#   _validate                  arguments -> AttentionCall (typed, immutable)
#   _plan                      AttentionCall -> Plan (dtype, path, blocks, threads)
#   _run                       Plan -> _kernels.Operand / KernelArgs -> kernels
#   _kernels.pyx               OpenMP driver; the C contract (_src/flash.h)
#   _src/flash.c               kernel table per (dtype, K/V format) and ISA
#   _src/flash_impl.h          the kernels, written once on simd_*.h primitives
#
# A new option: _validate -> AttentionCall -> (_plan) -> KernelArgs ->
# cattn_params -> a step of flash_impl.h, and cattn.reference first.  A new
# K/V format or kernel kind: a slot in the kernel table.  A new ISA: a
# simd_<isa>.h and an entry of CATTN_ISAS.  docs/architecture.md has the details.
import types as _types

from ._version import __version__
from ._check_build import check_build as _check_build

_check_build()

from ._api import (  # noqa: E402
    aggregate,
    attention,
    get_num_threads,
    merge,
    scores,
    set_num_threads,
    softmax,
)
from ._backward import Gradients, attention_backward  # noqa: E402
from ._config import show_config  # noqa: E402
from ._quant import QuantizedKV, quantize_kv  # noqa: E402
from ._paged import cache_write, paged_attention  # noqa: E402
from . import reference  # noqa: E402
from .explain import Explanation, explain  # noqa: E402



def __getattr__(name: str) -> "_types.ModuleType":
    # cattn.dask is optional (needs dask); import it only when asked for.
    if name == "dask":
        import importlib
        return importlib.import_module("cattn.dask")
    raise AttributeError(f"module 'cattn' has no attribute {name!r}")


__all__ = [
    "attention", "attention_backward", "Gradients", "scores", "softmax", "aggregate", "merge",
    "get_num_threads", "set_num_threads", "show_config", "reference",
    "explain", "Explanation", "__version__", "quantize_kv", "QuantizedKV",
    "paged_attention", "cache_write",
]

