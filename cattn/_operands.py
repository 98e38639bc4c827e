"""Turning user arrays into what the kernels take.

Every operand is reduced to (array in the compute dtype, one element offset
per flattened batch item, element strides of its last two axes).  Offsets
are built from the operand's own strides, so broadcasting a leading dim,
sharing a key/value head between query heads (GQA) or reading a reversed
view never copies or expands anything.
"""
import math

import numpy as np

from . import _bf16

__all__ = [
    "as_real_array", "batch_shape", "lead_offsets", "element_strides",
    "trailing_strides", "broadcast_lead",
]

_FLOAT_KINDS = "f"


def as_real_array(x, name, bf16_ok=False):
    """``np.asarray`` that rejects what attention cannot take.

    Bools and integers become float64; float16/32/64 are kept; complex,
    object, string and structured data raise TypeError naming ``name``.
    bfloat16 (``ml_dtypes.bfloat16``, or a torch/DLPack bfloat16 tensor,
    viewed without a copy) is kept as ml_dtypes' dtype; without ml_dtypes
    it stays bits (``_bf16.BF16Bits``) where ``bf16_ok`` and is widened to
    float32 otherwise.
    """
    if type(x).__module__.startswith("torch") and hasattr(x, "device"):
        x = _from_torch(x, name)
    if isinstance(x, _bf16.BF16Bits):
        return x if bf16_ok else _bf16.widen(x)
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be array-like of real numbers: {exc}") from None
    if _bf16.is_bf16(arr):
        return arr
    kind = arr.dtype.kind
    if kind in "biu":
        return arr.astype(np.float64)
    if kind != "f":
        raise TypeError(
            f"{name} must hold real numbers (float16/32/64, int or bool); "
            f"got dtype {arr.dtype}"
        )
    if arr.dtype.itemsize > 8:
        raise TypeError(f"{name}: dtype {arr.dtype} is not supported (use float64)")
    return arr


def _from_torch(t, name):
    """A CPU torch tensor as a NumPy array sharing its memory (DLPack);
    torch is never imported by cattn itself."""
    if t.device.type != "cpu":
        raise TypeError(
            f"{name} is a torch tensor on {t.device}; cattn computes on the CPU: "
            f"pass {name}.cpu()"
        )
    # What NumPy cannot view makes torch raise RuntimeError (a complex
    # tensor with the conjugate bit, a nested tensor, a sparse layout):
    # outside the TypeError contract, so each is named here first.
    if getattr(t, "is_nested", False):
        raise TypeError(f"{name} is a nested (ragged) torch tensor; pass a dense tensor")
    if str(getattr(t, "layout", "torch.strided")) != "torch.strided":
        raise TypeError(f"{name} is a torch tensor with layout {t.layout}; pass a dense "
                        f"(strided) tensor, e.g. {name}.to_dense()")
    if t.is_complex():
        raise TypeError(f"{name} must hold real numbers (float16/32/64, int or bool); "
                        f"got torch dtype {t.dtype}")
    if t.requires_grad:
        t = t.detach()
    if str(t.dtype) == "torch.bfloat16":   # NumPy has no bfloat16: read the DLPack capsule
        return _bf16.from_dlpack(t, name)
    try:
        return np.from_dlpack(t)
    except (TypeError, RuntimeError, BufferError):
        pass
    try:
        return t.numpy()
    except Exception as exc:
        raise TypeError(f"{name}: this torch tensor cannot be read as a NumPy array "
                        f"({exc})") from None


def element_strides(arr):
    """Strides in elements; None when a stride is not a multiple of the
    item size (then the caller copies)."""
    size = arr.dtype.itemsize
    out = []
    for s in arr.strides:
        q, r = divmod(s, size)
        if r:
            return None
        out.append(q)
    return tuple(out)


def lead_offsets(arr, n_trailing, out_lead, group_axis=None, group=1, strides=None):
    """Element offset of each broadcast batch item into ``arr``.

    ``arr``'s leading dims (all but the last ``n_trailing``) are aligned
    right against ``out_lead``.  When ``group_axis`` is given (an axis of
    ``out_lead``), item h along it reads ``arr``'s item ``h // group``.
    ``strides``: ``element_strides(arr)`` if the caller has it.
    """
    if strides is None:
        strides = element_strides(arr)
    lead_shape = arr.shape[: arr.ndim - n_trailing]
    lead_strides = strides[: arr.ndim - n_trailing]
    nd = len(out_lead)
    if lead_shape == tuple(out_lead) and group == 1 and lead_strides:
        # the common case: item k sits at k * (stride of the last lead axis)
        step = want = lead_strides[-1]
        for n, st in zip(reversed(lead_shape), reversed(lead_strides)):
            if n != 1 and st != want:
                break
            want *= n
        else:
            return np.arange(math.prod(lead_shape), dtype=np.int64) * step
    off = np.zeros(out_lead, dtype=np.int64)
    for ax, (n_in, st) in enumerate(zip(lead_shape, lead_strides)):
        out_ax = nd - len(lead_shape) + ax
        n_out = out_lead[out_ax]
        if n_in == 1 and n_out != 1 and out_ax != group_axis:
            continue  # broadcast: stride 0
        idx = np.arange(n_out, dtype=np.int64)
        if out_ax == group_axis and n_in != n_out:
            idx //= group
        shape = [1] * nd
        shape[out_ax] = n_out
        off = off + (idx * st).reshape(shape)
    return np.ascontiguousarray(off.reshape(-1))


def trailing_strides(arr, sizes):
    """Element strides of the last ``len(sizes)`` axes; 0 where the axis is
    broadcast (length 1 against a longer ``sizes`` entry)."""
    strides = element_strides(arr)
    n = len(sizes)
    out = []
    for st, n_in, n_want in zip(strides[-n:], arr.shape[-n:], sizes):
        out.append(0 if (n_in == 1 and n_want != 1) else st)
    return out


def batch_shape(named, gqa=True):
    """Broadcast the leading dims of (name, array) pairs whose last two axes
    are matrix axes.  Returns (out_lead, {name: (group_axis, group)}).

    Grouped-query attention: the first array is the query.  When another
    array's heads axis (-3) divides the query's and differs from it and
    from 1, it is treated as broadcast in groups of ``Hq // Hkv``.
    """
    leads = {name: a.shape[:-2] for name, a in named}
    groups = {}
    q_name, q = named[0]
    if gqa and q.ndim >= 3:
        hq = q.shape[-3]
        for name, a in named[1:]:
            if a.ndim >= 3:
                h = a.shape[-3]
                if h not in (1, hq) and h > 0 and hq % h == 0:
                    groups[name] = hq // h
                    lead = list(leads[name])
                    lead[-1] = hq
                    leads[name] = tuple(lead)
    try:
        out_lead = np.broadcast_shapes(*leads.values())
    except ValueError:
        desc = ", ".join(f"{name} {a.shape}" for name, a in named)
        raise ValueError(
            "the leading (batch/head) dims do not broadcast: " + desc
        ) from None
    nd = len(out_lead)
    info = {name: (nd - 1, g) for name, g in groups.items()}
    return out_lead, info


def broadcast_lead(x, out_lead, name, dtype, extra_ok=()):
    """Broadcast a per-batch-item parameter (scale, sinks, lengths) against
    the leading dims and flatten it.  ``extra_ok`` lists trailing shapes that
    may be dropped first (e.g. (1, 1) for a scale shaped (H, 1, 1))."""
    arr = np.asarray(x, dtype=dtype)
    for tail in extra_ok:
        k = len(tail)
        if arr.ndim > len(out_lead) and arr.ndim >= k and arr.shape[-k:] == tail:
            arr = arr.reshape(arr.shape[:-k])
    try:
        return np.ascontiguousarray(np.broadcast_to(arr, out_lead).reshape(-1))
    except ValueError:
        raise ValueError(
            f"{name} of shape {np.shape(x)} does not broadcast against the leading "
            f"dims {tuple(out_lead)}"
        ) from None
