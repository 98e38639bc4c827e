"""Small facts and the checks of scalar options, in one place.

Shared by ``cattn.attention`` (``_validate``), ``cattn.dask``,
``cattn.reference`` and ``cattn.explain``; imports nothing from cattn, so
every layer may import it.
"""
import math
import numbers
import operator
import os

import numpy as np

#: The similarity functions, in the order the lessons and the demo tell them.
SCORES = ("dot", "scaled_dot", "cosine", "additive")

#: The values ``return_weights`` takes.
RETURN_WEIGHTS = (False, True, "key_mass")

#: Most dims an operand may have (NumPy 1 caps arrays there; NumPy 2's
#: iterators and broadcasting do too).
MAX_NDIM = 32


_CPU_COUNT: list = []


def set_usable_cores(n):
    """Record the usable cores found by the OpenMP runtime (see
    ``_openmp_helpers``: once OpenMP binds threads, the process's own
    affinity no longer tells)."""
    _CPU_COUNT[:] = [max(1, int(n))]


def cpu_count():
    """Usable cores of this process, read once (a syscall per call showed
    in the per-call overhead)."""
    if not _CPU_COUNT:
        try:
            n = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # pragma: no cover - non-Linux
            n = os.cpu_count() or 1
        _CPU_COUNT.append(max(1, n))
    return _CPU_COUNT[0]


def check_score(score):
    if not isinstance(score, str) or score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}; got {score!r}")
    return score


def check_return_weights(return_weights):
    if isinstance(return_weights, np.ndarray) or return_weights not in RETURN_WEIGHTS or (
            isinstance(return_weights, (int, float))
            and not isinstance(return_weights, (bool, np.bool_))):
        raise ValueError(
            f"return_weights must be False, True or 'key_mass'; got {return_weights!r}"
        )
    return return_weights if isinstance(return_weights, str) else bool(return_weights)


def check_flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return bool(value)


def check_num_threads(num_threads):
    """None, or an int >= 1 capped at 4x the cores (asking OpenMP for
    millions of threads makes it abort the process when creation fails)."""
    if num_threads is None:
        return None
    if isinstance(num_threads, (bool, np.bool_)):
        raise TypeError(f"num_threads must be an integer >= 1 or None; got {num_threads!r}")
    try:
        n = operator.index(num_threads)
    except TypeError:
        raise TypeError(
            f"num_threads must be an integer >= 1 or None; got {num_threads!r}"
        ) from None
    if n < 1:
        raise ValueError(f"num_threads must be >= 1; got {n}")
    return min(n, 4 * cpu_count())


def window_bounds(window, causal):
    """Validated (left, right) key window, ints or None (unbounded), with
    ``causal`` folded in as ``right <= 0``."""
    check_flag(causal, "causal")
    left = right = None
    if window is not None:
        if not isinstance(window, (tuple, list)) or len(window) != 2:
            raise ValueError(
                f"window must be a pair (left, right) of ints or None; got {window!r}"
            )
        left, right = window
        for side, v in (("left", left), ("right", right)):
            if v is not None and (isinstance(v, (bool, np.bool_))
                                  or not isinstance(v, numbers.Integral)):
                raise ValueError(f"window {side} must be an int or None; got {v!r}")
        left = None if left is None else int(left)
        right = None if right is None else int(right)
    if causal:
        right = 0 if right is None else min(right, 0)
    return left, right


def check_softcap(softcap):
    """None, or a finite float > 0."""
    if softcap is None:
        return None
    if isinstance(softcap, (bool, np.bool_)) or not isinstance(softcap, numbers.Real):
        raise TypeError(f"softcap must be a positive float; got {softcap!r}")
    try:
        value = float(softcap)
    except OverflowError:
        value = math.inf
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"softcap must be a finite float > 0; got {softcap!r}")
    return value


def check_sinks_values(sinks, given):
    """Sink logits (an array) must be finite or -inf (no sink)."""
    if np.any(np.isnan(sinks) | (sinks == np.inf)):
        raise ValueError(f"sinks must be finite or -inf (no sink); got {given!r}")


def check_segments_pair(q_segments, kv_segments):
    if (q_segments is None) != (kv_segments is None):
        raise ValueError("q_segments and kv_segments must be given together")


def real_dtype(dt, name):
    """The dtype an operand of dtype ``dt`` is computed from: ints and bools
    become float64; float16/32/64 stay; anything else is a TypeError."""
    dt = np.dtype(dt)
    if dt.kind in "biu":
        return np.dtype(np.float64)
    if dt.kind == "V" and dt.itemsize == 2 and dt.name == "bfloat16":   # ml_dtypes.bfloat16
        return dt
    if dt.kind != "f" or dt.itemsize > 8:
        raise TypeError(
            f"{name} must hold real numbers (float16/32/64, int or bool); got dtype {dt}"
        )
    return dt


def promote(*xs):
    """``np.result_type`` of arrays/dtypes, with bfloat16 counted as float32
    where NumPy has no common type (bfloat16 beside float16), as
    ``cattn.attention`` promotes it."""
    try:
        return np.result_type(*xs)
    except TypeError:           # numpy.exceptions.DTypePromotionError
        def f32(x):
            dt = np.dtype(getattr(x, "dtype", x))
            return np.float32 if dt.kind == "V" and dt.name == "bfloat16" else dt
        return np.result_type(*[f32(x) for x in xs])


def result_dtypes(*dtypes):
    """(dtype the kernels compute in, dtype returned to the user): NumPy
    promotion decides the result; float16 results compute in float32."""
    result = promote(*dtypes)
    if result == np.float16:
        return np.dtype(np.float32), np.dtype(np.float16)
    if result.kind == "V" and result.name == "bfloat16":   # ml_dtypes.bfloat16: float32 math
        return np.dtype(np.float32), result
    return np.dtype(result), np.dtype(result)


def check_ndim(shape, name, least=2):
    nd = len(shape)
    if nd < least:
        raise ValueError(
            f"{name} must have at least {least} dims (..., L, D); got shape {tuple(shape)}"
            if least == 2 else f"{name} must have at least {least} dim; got shape {tuple(shape)}"
        )
    if nd > MAX_NDIM:
        raise ValueError(f"{name} has {nd} dims; cattn supports at most {MAX_NDIM}")
