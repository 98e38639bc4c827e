"""Running a plan: typed operands to the kernels, results back to the user.

``run_attention`` turns a ``Plan`` into the kernels' typed contract
(``_kernels.Operand`` per operand, one ``_kernels.KernelArgs`` per call),
allocates every output before any work (a MemoryError comes first), runs
the tile or decode kernels and the weights pass, and casts the results.
"""
import numpy as np

from . import _kernels
from ._bf16 import bits, is_bf16, widen
from ._operands import element_strides, lead_offsets, trailing_strides

__all__ = ["run_attention", "as_strided_dtype"]


def as_strided_dtype(x, dtype):
    """``x`` in ``dtype`` keeping its strides when no cast is needed."""
    x = np.asarray(x, dtype=dtype)
    if element_strides(x) is None:
        x = np.ascontiguousarray(x)
    return x


def _unit_last(x, dtype):
    x = np.asarray(x, dtype=dtype)
    if x.shape[-1] > 1 and x.strides[-1] != x.dtype.itemsize or element_strides(x) is None:
        x = np.ascontiguousarray(x)
    return x


def _matrix(x, out_lead, group=(None, 1)):
    """A (..., L, C) operand: offsets per batch item and its two strides."""
    st = element_strides(x)
    return _kernels.Operand(x, lead_offsets(x, 2, out_lead, *group, strides=st), st[-2], st[-1])


def _kv_operand(x, dtype, out_lead, group):
    """A key/value operand and its scales operand: an int8 cache
    (QuantizedKV) as its int8 rows and float32 block scales, read in place
    (copied only if a row is not unit-stride); a float array in ``dtype``
    with no scales."""
    if hasattr(x, "scales"):
        data = _unit_last(x.data, np.int8)
        scales = _unit_last(x.scales, np.float32)
        return _matrix(data, out_lead, group), _matrix(scales, out_lead, group)
    return _matrix(_unit_last(x, dtype), out_lead, group), None


def _in(x, dtype):
    """A small per-call array (the additive weights) in the kernels' dtype:
    the plan may compute in float64 what validation saw as float32."""
    return None if x is None else np.ascontiguousarray(x, dtype=dtype)


def _pair(x, out_lead, Lq, Lk):
    """A mask/bias broadcastable to (..., Lq, Lk): broadcast axes stride 0."""
    rs, cs = trailing_strides(x, (Lq, Lk))
    return _kernels.Operand(x, lead_offsets(x, 2, out_lead), rs, cs)


def _sequence(x, out_lead, L):
    """Segment ids (..., L)."""
    (rs,) = trailing_strides(x, (L,))
    return _kernels.Operand(x, lead_offsets(x, 1, out_lead), rs, 0)


class _Outputs:
    """Every buffer a call writes, allocated before any work."""

    def __init__(self, call, plan):
        cdt, o = plan.cdt, call.options
        out = call.out
        shape = call.out_lead + (call.Lq, call.Dv)
        # the kernels write out in its own dtype where they can (out_format)
        odt = cdt if plan.out_format == _kernels.IO_NATIVE else (
            call.rdt if out is None else out.dtype)
        self.direct = out is not None and out.dtype == odt and element_strides(out) is not None
        self.res = out if self.direct else np.empty(shape, dtype=odt)
        need_lse = o.return_lse or bool(o.return_weights)
        self.lse = np.empty((call.N, call.Lq), dtype=cdt) if need_lse else None
        self.lse_m = self.lse_logl = self.weights = self.key_mass = None
        if o.return_weights:
            # the weights pass divides by exp(lse) as exp(m) * l, kept apart
            self.lse_m = np.empty((call.N, call.Lq), dtype=cdt)
            self.lse_logl = np.empty((call.N, call.Lq), dtype=cdt)
        if o.return_weights == "key_mass":
            self.key_mass = np.zeros((call.N, call.Lk), dtype=cdt)
        elif o.return_weights:
            self.weights = np.zeros((call.N, call.Lq, call.Lk), dtype=cdt)


def kernel_args(plan, outs):
    """The typed kernel contract of a plan."""
    call, cdt = plan.call, plan.cdt
    lead = call.out_lead
    kv_dt = call.k.dtype if plan.kv_format == _kernels.KV_F16 else cdt
    kk, vv = call.k, call.v
    if plan.kv_format == _kernels.KV_BF16:    # the bits, read in place
        kk, vv, kv_dt = bits(kk), bits(vv), np.dtype(np.uint16)
    # q: any strides; k, v: unit stride along their last axis
    if plan.q_format == _kernels.IO_BF16:
        q = bits(call.q)                       # read as bfloat16 by the kernels
    elif is_bf16(call.q):
        q = widen(call.q, cdt)                 # kept narrow, but this plan cannot read it
    else:
        q = as_strided_dtype(call.q, np.float16 if plan.q_format == _kernels.IO_F16 else cdt)
    res = outs.res if plan.out_format != _kernels.IO_BF16 else bits(outs.res)
    k, k_scale = _kv_operand(kk, kv_dt, lead, call.groups.get("key", (None, 1)))
    v, v_scale = _kv_operand(vv, kv_dt, lead, call.groups.get("value", (None, 1)))
    mask = bias = q_seg = kv_seg = None
    if call.mask is not None:
        mask = _pair(as_strided_dtype(call.mask, call.mask.dtype), lead, call.Lq, call.Lk)
    if call.bias is not None:
        bias = _pair(as_strided_dtype(call.bias, cdt), lead, call.Lq, call.Lk)
    if call.q_seg is not None:
        q_seg = _sequence(as_strided_dtype(call.q_seg, np.int64), lead, call.Lq)
        kv_seg = _sequence(as_strided_dtype(call.kv_seg, np.int64), lead, call.Lk)
    return _kernels.KernelArgs(
        n_batch=call.N, Lq=call.Lq, Lk=call.Lk, D=call.D, Dv=call.Dv,
        block_q=plan.block_q, block_k=plan.block_k,
        score_kind=_kernels.SCORE_KINDS[call.options.score], scale=plan.scale,
        q=_matrix(q, lead), k=k, v=v, k_scale=k_scale, v_scale=v_scale,
        out=_matrix(res, lead), kv_format=plan.kv_format,
        q_format=plan.q_format, out_format=plan.out_format,
        mask=mask, bias=bias, q_seg=q_seg, kv_seg=kv_seg,
        lse=outs.lse, lse_m=outs.lse_m, lse_logl=outs.lse_logl,
        weights=outs.weights, key_mass=outs.key_mass, add_w=_in(call.add_w, cdt),
        kv_len=call.kv_len, q_len=call.q_len, q_pos=call.q_pos, sinks=plan.sinks, softcap=plan.softcap,
        win_left=plan.window[0], win_right=plan.window[1])


def _fill_empty(call, plan, outs):
    """Nothing to attend to, or nothing to compute: zeros, and lse -inf
    (or the sink logit: a sink is all a row without keys has)."""
    outs.res.fill(0)
    if outs.lse is not None:
        outs.lse[...] = -np.inf if plan.sinks is None else plan.sinks[:, None]
        if call.q_len is not None:
            outs.lse[np.arange(call.Lq)[None, :] >= call.q_len[:, None]] = -np.inf


def _results(user_call, plan, outs):
    """The user's return value: out (cast, or copied into out=), then the
    weights and lse if asked, in the shapes of the unfolded call."""
    call, o = plan.call, plan.call.options
    rdt, lead = user_call.rdt, user_call.out_lead
    Lq, Lk = user_call.Lq, user_call.Lk
    if user_call.out is not None:
        if not outs.direct:
            user_call.out[...] = outs.res
        result = user_call.out
    else:
        with np.errstate(over="ignore"):
            res = outs.res.reshape(lead + (Lq, call.Dv))
            result = res if rdt == res.dtype else res.astype(rdt)
    ret = [result]
    if rdt.kind == "V" and rdt.name == "bfloat16":     # bfloat16: out only; weights, key_mass, lse in float32
        rdt = plan.cdt
    with np.errstate(over="ignore"):     # float16 results: overflow is inf, as it should be
        if o.return_weights == "key_mass":
            ret.append(outs.key_mass.reshape(lead + (Lk,)).astype(rdt, copy=False))
        elif o.return_weights:
            ret.append(outs.weights.reshape(lead + (Lq, Lk)).astype(rdt, copy=False))
        if o.return_lse:
            ret.append(outs.lse.reshape(lead + (Lq,)).astype(rdt, copy=False))
    return ret[0] if len(ret) == 1 else tuple(ret)


def run_attention(user_call, plan):
    """Compute a planned call; returns what ``cattn.attention`` returns."""
    call, o = plan.call, plan.call.options
    outs = _Outputs(call, plan)
    if plan.path == "empty":
        _fill_empty(call, plan, outs)
        return _results(user_call, plan, outs)
    args = kernel_args(plan, outs)
    if plan.path == "decode":
        _kernels.flash_decode(args, plan.n_threads, plan.n_split)
    else:
        _kernels.flash(args, _kernels.MODE_ATTENTION, plan.n_threads)
    if o.return_weights == "key_mass":
        _kernels.flash(args, _kernels.MODE_KEY_MASS, plan.n_threads)
    elif o.return_weights:
        _kernels.flash(args, _kernels.MODE_WEIGHTS, plan.n_threads)
    return _results(user_call, plan, outs)
