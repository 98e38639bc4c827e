"""bfloat16 operands.

NumPy has no bfloat16 dtype; the ecosystem's is ``ml_dtypes.bfloat16``
(JAX, ONNX), an optional dependency imported only when a bfloat16 operand
shows up.  PyTorch (and any DLPack producer) hands bfloat16 memory over
through DLPack, which NumPy cannot import for bfloat16: ``from_dlpack``
reads the capsule itself and views the memory, without a copy, as
``ml_dtypes.bfloat16`` -- or, without ml_dtypes, as the uint16 bits
(``BF16Bits``), which the attention kernels read as a bfloat16 K/V cache
and everything else widens to float32.
"""
import ctypes
import functools

import numpy as np

__all__ = ["is_bf16", "bf16_dtype", "bits", "widen", "from_dlpack", "BF16Bits",
           "normalize_qkv"]


class BF16Bits(np.ndarray):
    """uint16 memory holding bfloat16 values (a view; no ml_dtypes here)."""


def bf16_dtype():
    """``ml_dtypes.bfloat16``, or None when ml_dtypes is not installed."""
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


def is_bf16(x):
    """A bfloat16 array: ml_dtypes' dtype, or the bits of one."""
    if isinstance(x, BF16Bits):
        return True
    return is_bf16_dtype(getattr(x, "dtype", None))


def is_bf16_dtype(dt):
    # kind first: dtype.name is slow (~1 us) and every call asks for q, k, v
    return (isinstance(dt, np.dtype) and dt.kind not in "biufc" and dt.itemsize == 2
            and dt.name == "bfloat16")


def bits(x):
    """The uint16 bits of a bfloat16 array (a view, strides kept)."""
    return np.asarray(x).view(np.uint16)


def widen(x, dtype=np.float32):
    """A bfloat16 array widened (exactly) to float32, or to ``dtype``."""
    b = bits(x).astype(np.uint32) << 16
    out = b.view(np.float32)
    return out if dtype == np.float32 else out.astype(dtype)


# ---- DLPack (the legacy "dltensor" capsule every producer still offers) ----
_KDL_CPU = 1
_KDL_BFLOAT = 4


@functools.lru_cache(maxsize=None)
def _dl_structs():
    """The DLManagedTensor layout (dlpack.h) and PyCapsule_GetPointer, made
    on first use."""
    class DLDevice(ctypes.Structure):
        _fields_ = [("device_type", ctypes.c_int), ("device_id", ctypes.c_int)]

    class DLDataType(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8),
                    ("lanes", ctypes.c_uint16)]

    class DLTensor(ctypes.Structure):
        _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int),
                    ("dtype", DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                    ("strides", ctypes.POINTER(ctypes.c_int64)),
                    ("byte_offset", ctypes.c_uint64)]

    class DLManagedTensor(ctypes.Structure):
        _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p),
                    ("deleter", ctypes.c_void_p)]

    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return DLManagedTensor, get_pointer


class _Keeper:
    """Exposes the DLPack memory to NumPy and keeps the capsule (and so
    the producer's tensor) alive as the array's base.  The capsule is not
    consumed: when it is freed, its own destructor calls the producer's
    deleter."""

    def __init__(self, capsule, producer, interface):
        self.capsule = capsule
        self.producer = producer
        self.__array_interface__ = interface


def from_dlpack(obj, name):
    """A bfloat16 DLPack tensor on the CPU as an ndarray sharing its memory:
    ``ml_dtypes.bfloat16`` when installed, else ``BF16Bits``."""
    managed, get_pointer = _dl_structs()
    capsule = obj.__dlpack__()
    t = managed.from_address(get_pointer(capsule, b"dltensor")).dl_tensor
    if t.device.device_type != _KDL_CPU:
        raise TypeError(f"{name} is not in CPU memory (DLPack device {t.device.device_type})")
    if (t.dtype.code, t.dtype.bits, t.dtype.lanes) != (_KDL_BFLOAT, 16, 1):
        raise TypeError(f"{name}: DLPack dtype code {t.dtype.code}/{t.dtype.bits} bits "
                        f"is not bfloat16")
    nd = t.ndim
    shape = tuple(t.shape[i] for i in range(nd))
    if t.strides:
        strides = tuple(2 * t.strides[i] for i in range(nd))
    else:   # compact row-major
        strides, acc = [], 2
        for n in reversed(shape):
            strides.append(acc)
            acc *= max(n, 1)
        strides = tuple(reversed(strides))
    data = (t.data or 0) + t.byte_offset
    if 0 in shape:
        data = 0
    interface = {"shape": shape, "typestr": "<u2", "data": (data, False),
                 "strides": strides, "version": 3}
    arr = np.asarray(_Keeper(capsule, obj, interface))
    dt = bf16_dtype()
    return arr.view(dt) if dt is not None else arr.view(BF16Bits)


def normalize_qkv(q, k, v, keep_q=False):
    """bfloat16 among query/key/value: the arrays the call computes on and
    (compute dtype, result dtype), or None for the dtypes when none is
    bfloat16.

    K and V both bfloat16 with float32 math stay bfloat16 (the kernels'
    bfloat16 cache); a bfloat16 query is widened to float32 (the kernels
    read the query in the compute type); a lone bfloat16 key or value, or
    float64 math, widens K/V.  The result is bfloat16 when all three are
    (and ml_dtypes is there to hold it), otherwise NumPy's promotion with
    bfloat16 counted as float32.  ``keep_q``: an ml_dtypes bfloat16 query
    with float32 math stays bfloat16 too (the forward kernels read it as
    bfloat16 where they can: ``_plan.io_formats``; ``_run`` widens it
    otherwise).
    """
    flags = [is_bf16(x) for x in (q, k, v)]
    if not any(flags):
        return q, k, v, None
    others = [x.dtype for x, f in zip((q, k, v), flags) if not f]
    cdt = np.result_type(np.float32, *others)
    if cdt == np.float16:
        cdt = np.dtype(np.float32)
    cdt = np.dtype(cdt)
    bdt = bf16_dtype()
    rdt = bdt if all(flags) and bdt is not None else cdt
    keep_kv = flags[1] and flags[2] and cdt == np.float32
    keep_q = keep_q and cdt == np.float32 and is_bf16_dtype(getattr(q, "dtype", None))
    q = widen(q, cdt) if flags[0] and not keep_q else q
    if not keep_kv:
        k = widen(k, cdt) if flags[1] else k
        v = widen(v, cdt) if flags[2] else v
    return q, k, v, (cdt, rdt)
