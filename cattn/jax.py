"""cattn attention as a differentiable JAX function on the CPU.

>>> import jax, jax.numpy as jnp, cattn.jax
>>> q = jnp.ones((2, 16, 8))
>>> g = jax.grad(lambda q: cattn.jax.attention(q, q, q, causal=True).sum())(q)

A ``jax.custom_vjp`` whose forward and backward call :func:`cattn.attention`
and :func:`cattn.attention_backward` through ``jax.pure_callback``; it works
under ``jax.jit``, ``jax.grad`` and ``jax.vmap`` (sequentially).  Why a
callback rather than the XLA FFI: an FFI handler is C++ compiled against
jaxlib's headers and registered per jaxlib version, which would make cattn's
build depend on JAX; the callback hands NumPy arrays to the same entry
points as everything else, and on the CPU its cost (one host call per
forward and backward, no copy of CPU buffers that NumPy can view) is small
next to attention itself.

Differentiable: query, key, value and, when given as arrays, ``bias``,
``scale``, ``sinks`` and ``additive_weight``.  ``mask``, lengths and
segment ids may be arrays (traced or not); ``score``, ``causal``,
``window``, ``softcap`` and ``num_threads`` must be static.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from ._api import attention as _attention
from ._backward import attention_backward
from ._operands import batch_shape
from ._options import result_dtypes

__all__ = ["attention"]

_GRAD = ("bias", "scale", "sinks", "additive_weight")
_AUX = ("mask", "kv_lengths", "q_lengths", "q_segments", "kv_segments")
_STATIC = ("score", "causal", "window", "softcap", "num_threads")


def _callback(f, shapes, *args):
    try:
        return jax.pure_callback(f, shapes, *args, vmap_method="sequential")
    except TypeError:           # older JAX: no vmap_method
        return jax.pure_callback(f, shapes, *args, vectorized=False)


def attention(query, key, value, **kw):
    """``cattn.attention(query, key, value, **kw)`` for JAX arrays, with a
    custom VJP (see the module docstring).  Returns the output only."""
    unknown = set(kw) - set(_GRAD) - set(_AUX) - set(_STATIC)
    if unknown:
        raise ValueError(f"cattn.jax.attention does not take {sorted(unknown)}")
    static = {n: kw[n] for n in _STATIC if n in kw}
    grad_names = [n for n in _GRAD if n in kw and kw[n] is not None and np.ndim(kw[n]) > 0]
    for n in _GRAD:
        if n in kw and n not in grad_names and kw[n] is not None:
            static[n] = kw[n]           # a plain number: no gradient
    aux_names = [n for n in _AUX if kw.get(n) is not None]
    q, k, v = (jnp.asarray(x) for x in (query, key, value))
    lead, _ = batch_shape([("query", q), ("key", k), ("value", v)])
    lead = tuple(lead)
    _, rdt = result_dtypes(q.dtype, k.dtype, v.dtype)
    out_shape = jax.ShapeDtypeStruct(lead + (q.shape[-2], v.shape[-1]), rdt)
    lse_shape = jax.ShapeDtypeStruct(lead + (q.shape[-2],), rdt)
    n_grad = len(grad_names)

    def options(grad_vals, aux_vals):
        opts = dict(static)
        opts.update({n: np.asarray(x) for n, x in zip(grad_names, grad_vals)})
        opts.update({n: np.asarray(x) for n, x in zip(aux_names, aux_vals)})
        return opts

    def host_forward(q, k, v, *rest):
        out, lse = _attention(np.asarray(q), np.asarray(k), np.asarray(v), return_lse=True,
                              **options(rest[:n_grad], rest[n_grad:]))
        return np.asarray(out, rdt), np.asarray(lse, rdt)

    def host_backward(dout, q, k, v, out, lse, *rest):
        g = attention_backward(np.asarray(dout), np.asarray(q), np.asarray(k), np.asarray(v),
                               np.asarray(out), np.asarray(lse),
                               **options(rest[:n_grad], rest[n_grad:]))
        named = {"bias": g.dbias, "scale": g.dscale, "sinks": g.dsinks,
                 "additive_weight": g.dadditive_weight}
        grads = [g.dq, g.dk, g.dv] + [named[n] for n in grad_names]
        ins = (q, k, v) + tuple(rest[:n_grad])
        return tuple(np.asarray(x, dtype=np.asarray(i).dtype).reshape(np.shape(i))
                     for x, i in zip(grads, ins))

    @jax.custom_vjp
    def f(q, k, v, *rest):
        return _callback(host_forward, (out_shape, lse_shape), q, k, v, *rest)[0]

    def f_fwd(q, k, v, *rest):
        out, lse = _callback(host_forward, (out_shape, lse_shape), q, k, v, *rest)
        return out, (q, k, v, out, lse, rest)

    def f_bwd(res, dout):
        q, k, v, out, lse, rest = res
        ins = (q, k, v) + tuple(rest[:n_grad])
        shapes = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in ins)
        grads = _callback(host_backward, shapes, dout, q, k, v, out, lse, *rest)
        aux = tuple(np.zeros(x.shape, dtype=jax.dtypes.float0)
                    if not jnp.issubdtype(x.dtype, jnp.floating) else jnp.zeros_like(x)
                    for x in rest[n_grad:])
        return tuple(grads) + aux

    f.defvjp(f_fwd, f_bwd)
    rest = [jnp.asarray(kw[n]) for n in grad_names] + [jnp.asarray(kw[n]) for n in aux_names]
    return f(q, k, v, *rest)
