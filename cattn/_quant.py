"""The int8 K/V cache format: ``quantize_kv`` and ``QuantizedKV``.

Format (llama.cpp's q8_0 layout, kept as two arrays): a float array
``(..., L, D)`` is cut along D into blocks of ``QBLOCK = 32`` values (the
last block may be shorter); each block gets one float32 scale
``s = max|x| / 127`` and int8 values ``q = round(x / s)`` in [-127, 127]
(symmetric: no zero point; an all-zero block has ``s = 0``).  The values
are ``x ~ q * s``.

Why blocks of 32 along D (measured by tools/kv_quant_accuracy.py, D = 128,
decode, float64): on Gaussian data every format gives ~0.8-0.9% relative
output error; on keys with 4 outlier channels 10x/50x larger (as real LLM
keys have), one scale per token gives 4.6-7.0% / 10.7-14%, blocks of 32
2.4% / 6.6-6.9%, KIVI (keys per channel over 128 tokens) 1.4% / 1.7-2.5%.
Blocks of 32 are the best format whose scales depend on one token only: a
decode cache is appended one token at a time, and per-channel key scales
would need a float window of up to 128 recent tokens re-quantized as a
group (KIVI's residual), i.e. a second, mutable cache format.  The cost:
4 bytes of scale per 32 values (D = 128: 144 bytes a row, 0.56x float16).
"""
import operator

import numpy as np

__all__ = ["QuantizedKV", "quantize_kv", "QBLOCK"]

QBLOCK = 32     # values per scale along the last axis (q8_0)


class QuantizedKV:
    """An int8 key or value cache: ``data`` int8 ``(..., L, D)`` and
    ``scales`` float32 ``(..., L, ceil(D / 32))``, one per block of 32
    values along D; the values are ``data * scales`` (repeated per block).

    ``cattn.attention`` takes it as ``key`` and/or ``value`` and reads the
    int8 rows directly (never a float copy of the cache).  Slicing along
    the leading dims and L (``x[..., a:b, :]``-style keys that keep D whole)
    gives views.  Build one with :func:`quantize_kv`, or an all-zero one
    (a page pool to fill with ``cattn.cache_write``) with :meth:`zeros`.
    """

    __slots__ = ("data", "scales")

    def __init__(self, data, scales):
        data = np.asarray(data)
        scales = np.asarray(scales)
        if data.dtype != np.int8:
            raise TypeError(f"QuantizedKV data must be int8; got {data.dtype}")
        if scales.dtype != np.float32:
            raise TypeError(f"QuantizedKV scales must be float32; got {scales.dtype}")
        if data.ndim < 2:
            raise ValueError(f"QuantizedKV data must be (..., L, D); got shape {data.shape}")
        nb = -(-data.shape[-1] // QBLOCK)
        if scales.shape != data.shape[:-1] + (nb,):
            raise ValueError(
                f"QuantizedKV scales must have shape {data.shape[:-1] + (nb,)} for data "
                f"{data.shape}; got {scales.shape}")
        if scales.size and not np.isfinite(scales).all():
            raise ValueError("QuantizedKV scales must be finite")
        self.data = data
        self.scales = scales

    dtype = np.dtype(np.int8)
    block = QBLOCK

    @classmethod
    def zeros(cls, shape):
        """An all-zero int8 cache of ``shape`` ``(..., L, D)`` (int8 zeros,
        zero scales), e.g. a page pool ``(num_pages, num_kv_heads,
        page_size, head_dim)`` for ``cattn.cache_write`` and
        ``cattn.paged_attention``."""
        try:
            shape = tuple(operator.index(n) for n in shape)
        except TypeError:
            raise TypeError(f"QuantizedKV.zeros: shape must be a sequence of ints; "
                            f"got {shape!r}") from None
        if len(shape) < 2 or min(shape) < 0:
            raise ValueError(f"QuantizedKV.zeros: shape must be (..., L, D) of sizes >= 0; "
                             f"got {shape}")
        nb = -(-shape[-1] // QBLOCK)
        return cls(np.zeros(shape, np.int8), np.zeros(shape[:-1] + (nb,), np.float32))

    @property
    def shape(self):
        return self.data.shape

    @property
    def size(self):
        return self.data.size

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def nbytes(self):
        return self.data.nbytes + self.scales.nbytes

    def __len__(self):
        return len(self.data)

    def dequantize(self, dtype=np.float32):
        """The values ``data * scale`` as a float array (a new copy)."""
        d = self.data.shape[-1]
        s = np.repeat(self.scales, QBLOCK, axis=-1)[..., :d]
        return (self.data.astype(dtype) * s.astype(dtype)).astype(dtype, copy=False)

    def __array__(self, dtype=None, copy=None):
        # not an array: NumPy must not read it as a sequence of rows
        raise TypeError("a QuantizedKV is an int8 cache that cattn.attention reads as key/value; "
                        "use .dequantize() for a float array")

    def __getitem__(self, key):
        """Views along the leading dims and L; the D axis stays whole."""
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = next(n for n, k in enumerate(key) if k is Ellipsis)
            fill = self.ndim - (len(key) - 1)
            key = key[:i] + (slice(None),) * fill + key[i + 1:]
        key = key + (slice(None),) * (self.ndim - len(key))
        if len(key) != self.ndim or key[-1] != slice(None):
            raise IndexError("QuantizedKV: index every axis but D (the last stays whole)")
        if any(k is None or not isinstance(k, (slice, int, np.integer)) for k in key):
            raise IndexError("QuantizedKV: only integers and slices index it")
        if not isinstance(key[-2], slice):
            raise IndexError("QuantizedKV: the L axis (-2) takes a slice, e.g. x[..., a:b, :]")
        return QuantizedKV(self.data[key], self.scales[key])

    def __repr__(self):
        return (f"QuantizedKV(shape={self.shape}, dtype=int8, block={QBLOCK}, "
                f"scales float32 {self.scales.shape}, {self.nbytes} bytes)")


def _is_int8(dtype):
    try:
        return np.dtype(dtype) == np.int8
    except TypeError:
        return False


def quantize_kv(x, dtype="int8"):
    """Quantize a float key or value array ``(..., L, D)`` to the int8
    cache format (see :class:`QuantizedKV`): per block of 32 values along
    D, a float32 scale ``max|x| / 127`` and int8 ``round(x / scale)``.

    Parameters
    ----------
    x : array_like of float, shape (..., L, D)
        Finite values (NaN or inf raise ValueError: a scale cannot carry
        them, and a silent clip would change the attention).
    dtype : {"int8"}
        The storage format (the only one so far).

    Returns
    -------
    QuantizedKV
        ``.dequantize()`` gives the (rounded) values back in float32.
    """
    if not (dtype == "int8" or (not isinstance(dtype, str) and _is_int8(dtype))):
        raise ValueError(f"quantize_kv: dtype must be 'int8'; got {dtype!r}")
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"quantize_kv: x must hold real numbers; got dtype {arr.dtype}")
    if arr.ndim < 2:
        raise ValueError(f"quantize_kv: x must have shape (..., L, D); got {arr.shape}")
    if arr.dtype.kind != "f" or arr.dtype.itemsize < 4:
        arr = arr.astype(np.float32)
    if arr.size and not np.isfinite(arr).all():
        raise ValueError("quantize_kv: x holds NaN or inf; only finite values quantize")
    d = arr.shape[-1]
    nb = -(-d // QBLOCK)
    pad = nb * QBLOCK - d
    if pad:
        arr = np.concatenate([arr, np.zeros(arr.shape[:-1] + (pad,), arr.dtype)], axis=-1)
    g = arr.reshape(arr.shape[:-1] + (nb, QBLOCK))
    amax = np.abs(g).max(axis=-1) if g.size else np.zeros(g.shape[:-1], arr.dtype)
    # the scale is stored in float32; quantize with that rounded scale, so
    # data * scales is what the kernels read; float32 overflow (|x| > 4e38
    # from float64) is a ValueError rather than an inf scale
    with np.errstate(over="ignore"):
        scales = (amax / 127.0).astype(np.float32)
    if not np.isfinite(scales).all():
        raise ValueError("quantize_kv: x has values beyond float32's range")
    s = scales.astype(arr.dtype)[..., None]
    inv = np.divide(1, s, out=np.zeros_like(s), where=s > 0)
    q = np.clip(np.rint(g * inv), -127, 127).astype(np.int8)
    data = q.reshape(arr.shape)[..., :d] if pad else q.reshape(arr.shape)
    return QuantizedKV(np.ascontiguousarray(data), scales)
