"""cattn attention as a PyTorch autograd function (CPU tensors).

>>> import torch, cattn.torch
>>> q = torch.randn(2, 4, 16, 8, dtype=torch.float64, requires_grad=True)
>>> out = cattn.torch.attention(q, q, q, causal=True)
>>> out.sum().backward()                      # q.grad: attention_backward's dq

The forward calls :func:`cattn.attention` (with ``return_lse=True``) and
keeps ``out`` and ``lse``; the backward calls
:func:`cattn.attention_backward`.  Tensors cross by DLPack both ways: no
copy where the strides allow it.  Importing this module imports torch;
``import cattn`` never does.

Differentiable: query, key, value and, when given as tensors, ``bias``,
``scale``, ``sinks`` and ``additive_weight``.  Every other keyword of
:func:`cattn.attention` is passed through (tensors become arrays).
"""
import numpy as np
import torch

from ._api import attention as _attention
from ._backward import attention_backward

__all__ = ["attention"]

_GRAD_OPTIONS = ("bias", "scale", "sinks", "additive_weight")


def _to_numpy(t):
    if not isinstance(t, torch.Tensor):
        return t
    if t.device.type != "cpu":
        raise TypeError(f"cattn.torch computes on the CPU; got a tensor on {t.device}")
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()
    try:
        return np.from_dlpack(t)
    except (TypeError, RuntimeError, BufferError):
        return t.numpy()


def _to_torch(a, like=None):
    if a is None:
        return None
    a = np.asarray(a)
    if not a.flags.writeable:
        a = a.copy()
    t = torch.from_dlpack(a) if a.ndim and a.size else torch.from_numpy(np.array(a))
    if like is not None and t.dtype != like.dtype:
        t = t.to(like.dtype)
    return t


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, bias, scale, sinks, additive_weight, kw):
        opts = dict(kw)
        for name, x in zip(_GRAD_OPTIONS, (bias, scale, sinks, additive_weight)):
            if x is not None:
                opts[name] = _to_numpy(x)
        q, k, v = _to_numpy(query), _to_numpy(key), _to_numpy(value)
        out, lse = _attention(q, k, v, return_lse=True, **opts)
        ctx.opts = opts
        ctx.given = tuple(x is not None for x in (bias, scale, sinks, additive_weight))
        ctx.save_for_backward(query, key, value)
        ctx.saved = (out, lse)
        return _to_torch(out)

    @staticmethod
    def backward(ctx, dout):
        query, key, value = ctx.saved_tensors
        out, lse = ctx.saved
        g = attention_backward(_to_numpy(dout),
                               _to_numpy(query), _to_numpy(key), _to_numpy(value),
                               out, lse, **ctx.opts)
        extra = []
        for given, grad in zip(ctx.given, (g.dbias, g.dscale, g.dsinks, g.dadditive_weight)):
            extra.append(_to_torch(grad) if given and grad is not None else None)
        return (_to_torch(g.dq, query), _to_torch(g.dk, key), _to_torch(g.dv, value),
                *extra, None)


def attention(query, key, value, **kw):
    """``cattn.attention(query, key, value, **kw)`` on CPU tensors, with
    gradients for query, key, value and the tensor-valued ``bias``,
    ``scale``, ``sinks`` and ``additive_weight``.  Returns the output
    tensor (``return_weights``, ``return_lse`` and ``out`` are not
    supported here)."""
    for bad in ("return_weights", "return_lse", "out"):
        if kw.get(bad):
            raise ValueError(f"cattn.torch.attention does not take {bad}")
    grads = [kw.pop(name, None) for name in _GRAD_OPTIONS]
    for i, x in enumerate(grads):
        if x is not None and not isinstance(x, torch.Tensor):
            kw[_GRAD_OPTIONS[i]] = x          # a plain number or array: no gradient
            grads[i] = None
    kw = {n: _to_numpy(x) for n, x in kw.items()}
    return _Attention.apply(query, key, value, *grads, kw)
