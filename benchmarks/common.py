"""Shared shapes and helpers of the asv suites (``bench_*.py``) and of the
side-by-side runner (``python -m tools.bench``).

Importing this module has no side effects: it reads no environment, changes
neither ``os.environ`` nor ``sys.path``, and imports only the standard library
(NumPy, cattn and torch are imported by the functions that use them, so the
runner's parent process can read ``SHAPES`` without loading a thread pool).

Running the asv suites (``asv.conf.json`` at the repository root; asv needs
``import cattn`` to work, so install cattn or put an in-place build on the
path)::

    PYTHONPATH=$PWD asv run --python=same --quick --show-stderr        # every suite
    PYTHONPATH=$PWD asv run --python=same --quick --bench IssueShapes  # one suite
    PYTHONPATH=$PWD asv run --python=same --bench "Tiny.time_"         # full sampling
    asv publish && asv preview                                         # HTML under .asv/html

Implementations (the ``impl`` parameter):

``cattn``        ``cattn.attention(..., num_threads=threads)``
``numpy_ref``    ``cattn.reference.attention``: the plain NumPy float64 oracle
                 (float32 inputs are computed in float64)
``numpy_naive``  the NumPy a user writes, staying in the input dtype:
                 ``softmax(q @ k^T * D**-0.5) @ v`` with a Python-float scale;
                 its threads are set with threadpoolctl
``torch``        ``torch.nn.functional.scaled_dot_product_attention`` with
                 ``torch.set_num_threads(threads)``; skipped when torch is not
                 importable

The backward suites (``bench_backward.py``) and ``python -m tools.bench
--backward`` time :class:`BackwardImpl` instead: ``cattn``
(``attention_backward``), ``torch`` (SDPA + ``.backward``) and ``numpy``
(:func:`naive_attention_backward`).

Combinations that would take more than a few seconds a call raise
``NotImplementedError`` in ``setup`` (asv shows them as n/a); the float64
oracle runs at float32 only at small sizes (it computes in float64 anyway).
``peakmem_*`` twins run at the largest thread count only.  Masks (causal /
window) of the NumPy and torch baselines are built in ``setup``, not timed;
calls up to ``warmup_work`` get one untimed warm-up call in ``setup``
(``--quick`` times a single call).

Timing traps on small machines: asv runs every parameter combination in a
fresh process (``launch_method: forkserver`` forks it from a server that has
imported the suites but run none of them; use ``--launch-method spawn`` for
fully fresh interpreters), so one library's idle thread pool never sits next
to another's.  ``asv.conf.json`` sets ``OMP_WAIT_POLICY=PASSIVE`` and
``OPENBLAS_THREAD_TIMEOUT=4`` for the benchmark processes (its ``matrix``
``env_nobuild``) so pools sleep instead of spinning on a shared, busy
machine.  ``peakmem_*`` is the process' peak RSS (libraries, inputs and
output included); ``Memory.track_extra_mib`` is the growth of the peak during
one call.  asv times are single processes; for side-by-side ratios use
``python -m tools.bench`` from the repository root.
"""
import importlib.util
import itertools
import os
import sys

# The standard shapes, (B, H, Lq, Lk, D), by name: the names of the README's
# Performance section, of ``python -m tools.bench --shapes NAME`` and of the
# asv suites.
SHAPES = {
    "tiny": (1, 1, 16, 16, 64),             # per-call overhead
    "small": (1, 8, 128, 128, 64),
    "batch4_512": (4, 8, 512, 512, 64),
    "h16_1k": (1, 16, 1024, 1024, 64),
    "4k": (1, 8, 4096, 4096, 64),           # also timed causal (--causal, asv Masked)
    "d128_2k": (1, 12, 2048, 2048, 128),
    "cross": (2, 8, 256, 2048, 64),         # cross-attention, Lq < Lk
    "decode4k": (1, 32, 1, 4096, 128),      # decode: one query per head
    "decode64k": (1, 1, 1, 65536, 128),     # decode, one head, long cache
    "mem16k": (1, 1, 16384, 16384, 64),     # peak memory
    "8k": (1, 2, 8192, 8192, 64),           # the backward's long sequence
}
# what the runner times when no --shapes are given (mem16k: asv Memory only)
DEFAULT_SHAPES = ("tiny", "small", "batch4_512", "h16_1k", "4k", "d128_2k", "cross",
                  "decode4k", "decode64k")
# ... and with --backward (training shapes: no decode)
BACKWARD_SHAPES = ("small", "batch4_512", "h16_1k", "4k", "d128_2k", "cross", "8k")


def usable_cpus():
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


THREADS = sorted({1, usable_cpus()})
MAX_THREADS = max(THREADS)
DTYPES = ["float32", "float64"]
IMPLS = ["cattn", "numpy_ref", "numpy_naive", "torch"]
HAVE_TORCH = importlib.util.find_spec("torch") is not None


def shape_id(B, H, Lq, Lk, D):
    """The string asv shows for a shape parameter: ``BxHxLqxLkxD``."""
    return "x".join(str(int(n)) for n in (B, H, Lq, Lk, D))


def parse_shape(text):
    dims = tuple(int(n) for n in text.split("x"))
    if len(dims) != 5:
        raise ValueError("shape %r is not BxHxLqxLkxD" % text)
    return dims


def work(dims):
    """B*H*Lq*Lk*D: proportional to time and flops (4 * work)."""
    B, H, Lq, Lk, D = dims
    return B * H * Lq * Lk * D


def make_qkv(dims, dtype, seed=0):
    """Standard-normal q, k, v of ``dims`` in ``dtype`` (seeded)."""
    import numpy as np
    B, H, Lq, Lk, D = dims
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    return (rng.standard_normal((B, H, Lq, D), dtype=dt),
            rng.standard_normal((B, H, Lk, D), dtype=dt),
            rng.standard_normal((B, H, Lk, D), dtype=dt))


WINDOW = 512    # the sliding window's left extent: key j in [p - WINDOW, p]


def keep_mask(Lq, Lk, variant):
    """Boolean (Lq, Lk) mask, True = attend, matching cattn's bottom-right
    alignment (``p = i + Lk - Lq``); None when nothing is masked."""
    import numpy as np
    off = Lk - Lq
    if variant == "causal":
        return np.tri(Lq, Lk, k=off, dtype=bool)
    if variant == "window":
        return np.tri(Lq, Lk, k=off, dtype=bool) & ~np.tri(Lq, Lk, k=off - WINDOW - 1, dtype=bool)
    return None


def naive_attention(q, k, v, variant="plain", mask=None):
    """Attention as a NumPy user writes it, in the dtype of the inputs."""
    return naive_weights(q, k, variant, mask) @ v


def naive_weights(q, k, variant="plain", mask=None):
    """The softmax weights of :func:`naive_attention`, (..., Lq, Lk)."""
    import numpy as np
    if variant == "cosine":
        qn = np.linalg.norm(q, axis=-1, keepdims=True)
        kn = np.linalg.norm(k, axis=-1, keepdims=True)
        s = (q / np.maximum(qn, 1e-8)) @ (k / np.maximum(kn, 1e-8)).swapaxes(-1, -2)
    elif variant == "additive":     # sum_d tanh(q_d + k_d), weights 1
        s = np.tanh(q[..., :, None, :] + k[..., None, :, :]).sum(axis=-1)
    else:
        scale = float(q.shape[-1]) ** -0.5      # Python float: float32 stays float32
        s = (q @ k.swapaxes(-1, -2)) * scale
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    s = s - s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    return p / p.sum(axis=-1, keepdims=True)


def naive_attention_backward(q, k, v, p, out, dout):
    """dq, dk, dv of scaled-dot attention as a NumPy user writes them, from
    the forward's weights ``p`` and output ``out`` (what an autograd keeps):
    dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dO * O)),
    dQ = dS K * scale, dK = dS^T Q * scale.  In the dtype of the inputs."""
    scale = float(q.shape[-1]) ** -0.5          # Python float: float32 stays float32
    dv = p.swapaxes(-1, -2) @ dout
    ds = p * (dout @ v.swapaxes(-1, -2) - (dout * out).sum(axis=-1, keepdims=True))
    return (ds @ k) * scale, (ds.swapaxes(-1, -2) @ q) * scale, dv


_CATTN_KW = {"plain": {}, "causal": {"causal": True}, "window": {"window": (WINDOW, 0)},
             "scaled_dot": {}, "cosine": {"score": "cosine"}, "additive": {"score": "additive"}}


def import_cattn(tries=10, wait=1.5):
    """``import cattn``, retried: the extension may be being rebuilt in place."""
    import importlib
    import time
    for attempt in range(tries):
        try:
            return importlib.import_module("cattn")
        except ImportError:
            if attempt == tries - 1:
                raise
            for name in [m for m in sys.modules if m == "cattn" or m.startswith("cattn.")]:
                del sys.modules[name]
            time.sleep(wait)


class Impl:
    """One implementation set up for ``threads``; ``fn(q, k, v)`` runs it.

    Raises NotImplementedError (asv: skipped) when it cannot run here.
    ``close()`` restores the thread settings it changed.
    """

    def __init__(self, impl, threads, variant, dims):
        self._restore = []
        Lq, Lk = dims[2], dims[3]
        if variant not in _CATTN_KW:
            raise ValueError("unknown variant %r" % variant)
        if impl == "cattn":
            cattn = import_cattn()
            kw = dict(_CATTN_KW[variant], num_threads=threads)
            attention = cattn.attention
            self.fn = lambda q, k, v, **extra: attention(q, k, v, **kw, **extra)
        elif impl in ("numpy_ref", "numpy_naive"):
            self._limit_blas(threads)
            if impl == "numpy_ref":
                reference = import_cattn().reference
                kw = dict(_CATTN_KW[variant])
                ref = reference.attention
                self.fn = lambda q, k, v: ref(q, k, v, **kw)
            else:
                mask = keep_mask(Lq, Lk, variant)
                self.fn = lambda q, k, v: naive_attention(q, k, v, variant, mask)
        elif impl == "torch":
            if variant == "additive":
                raise NotImplementedError("torch has no additive attention")
            torch, F = self._torch(threads)
            self.fn = _torch_fn(torch, F, variant, Lq, Lk)
        else:
            raise ValueError("unknown implementation %r" % impl)

    def _torch(self, threads):
        """(torch, torch.nn.functional) with ``threads`` threads (restored
        by close); NotImplementedError when torch cannot be imported."""
        if not HAVE_TORCH:
            raise NotImplementedError("torch is not installed")
        try:
            import torch
            import torch.nn.functional as F
        except Exception as exc:  # broken install
            raise NotImplementedError("torch cannot be imported: %s" % exc)
        self._limit_blas(threads)
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        self._restore.append(lambda: torch.set_num_threads(old))
        return torch, F

    def _limit_blas(self, threads):
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return
        lim = threadpool_limits(limits=threads, user_api="blas")
        self._restore.append(lim.restore_original_limits)

    def close(self):
        while self._restore:
            self._restore.pop()()


def _torch_sdpa(torch, F, variant, Lq, Lk):
    """``fn(q, k, v)`` on tensors: SDPA with the ``variant``'s mask (plain,
    scaled_dot, causal, window), aligned as cattn aligns it."""
    sdpa = F.scaled_dot_product_attention
    if variant in ("plain", "scaled_dot"):
        return sdpa
    if variant == "causal" and Lq == Lk:     # torch's is_causal is top-left aligned
        return lambda q, k, v: sdpa(q, k, v, is_causal=True)
    if variant in ("causal", "window"):
        mask = torch.from_numpy(keep_mask(Lq, Lk, variant))
        return lambda q, k, v: sdpa(q, k, v, attn_mask=mask)
    raise NotImplementedError("torch: no %s variant" % variant)


def _torch_fn(torch, F, variant, Lq, Lk):
    frm = torch.from_numpy
    if variant in ("plain", "scaled_dot", "causal", "window"):
        fn = _torch_sdpa(torch, F, variant, Lq, Lk)
        return lambda q, k, v: fn(frm(q), frm(k), frm(v)).numpy()
    if variant == "cosine":
        def cosine(q, k, v):
            qt = F.normalize(frm(q), dim=-1, eps=1e-8)
            kt = F.normalize(frm(k), dim=-1, eps=1e-8)
            return F.scaled_dot_product_attention(qt, kt, frm(v), scale=1.0).numpy()
        return cosine
    raise NotImplementedError("torch: no %s variant" % variant)


BACKWARD_IMPLS = ["cattn", "torch", "numpy"]


def backward_flops(dims):
    """The backward's flops, counted as 2.5x the forward's 4*B*H*Lq*Lk*D
    (five Lq x Lk x D products to the forward's two)."""
    return 2.5 * 4.0 * work(dims)


class BackwardImpl(Impl):
    """Forward + backward of one implementation on its own seeded inputs
    (q, k, v and the output's gradient ``dout``), set up for ``threads``.

    ``fwd_bwd()`` runs the forward and the backward and returns dq, dk, dv
    (first three items), as a training step does; ``bwd()`` runs the backward alone, from the state
    the forward left when this object was made (cattn: out and lse; torch:
    the autograd graph, kept with ``retain_graph``; numpy: the weights P,
    which a NumPy autograd keeps).  ``variant``: plain or causal.  Raises
    NotImplementedError (asv: skipped) when it cannot run here.  ``inputs``
    is (q, k, v, dout).

    ``cattn``  ``cattn.attention(..., return_lse=True)`` and
               ``cattn.attention_backward``
    ``torch``  ``scaled_dot_product_attention`` on tensors that require
               grad, then ``.backward(dout)``; grads set to None before each
    ``numpy``  :func:`naive_weights` and :func:`naive_attention_backward` in
               the dtype of the inputs (O(Lq Lk) memory)
    """

    def __init__(self, impl, threads, variant, dims, dtype, seed=0):
        self._restore = []
        if variant not in ("plain", "causal"):
            raise ValueError("unknown backward variant %r" % variant)
        import numpy as np
        q, k, v = make_qkv(dims, dtype, seed)
        dout = np.random.default_rng([seed, 1]).standard_normal(q.shape[:-1] + v.shape[-1:],
                                                                 dtype=np.dtype(dtype))
        self.inputs = (q, k, v, dout)
        setup = {"cattn": self._cattn, "torch": self._torch_grads, "numpy": self._numpy}
        if impl not in setup:
            raise ValueError("unknown implementation %r" % impl)
        setup[impl](threads, variant, dims, q, k, v, dout)

    def _cattn(self, threads, variant, dims, q, k, v, dout):
        cattn = import_cattn()
        kw = {"causal": variant == "causal", "num_threads": threads}
        fwd, bwd = cattn.attention, cattn.attention_backward
        out, lse = fwd(q, k, v, return_lse=True, **kw)

        def fwd_bwd():
            o, l_ = fwd(q, k, v, return_lse=True, **kw)
            return bwd(dout, q, k, v, o, l_, **kw)
        self.fwd_bwd = fwd_bwd
        self.bwd = lambda: bwd(dout, q, k, v, out, lse, **kw)

    def _torch_grads(self, threads, variant, dims, q, k, v, dout):
        torch, F = self._torch(threads)
        fn = _torch_sdpa(torch, F, variant, dims[2], dims[3])
        leaves = [torch.from_numpy(x).requires_grad_() for x in (q, k, v)]
        tdo = torch.from_numpy(dout)

        def backward(o, keep):
            for t in leaves:
                t.grad = None
            o.backward(tdo, retain_graph=keep)
            return [t.grad for t in leaves]
        out = fn(*leaves)
        self.fwd_bwd = lambda: backward(fn(*leaves), False)
        self.bwd = lambda: backward(out, True)

    def _numpy(self, threads, variant, dims, q, k, v, dout):
        self._limit_blas(threads)
        mask = keep_mask(dims[2], dims[3], variant)
        p = naive_weights(q, k, variant, mask)
        out = p @ v

        def fwd_bwd():
            w = naive_weights(q, k, variant, mask)
            return naive_attention_backward(q, k, v, w, w @ v, dout)
        self.fwd_bwd = fwd_bwd
        self.bwd = lambda: naive_attention_backward(q, k, v, p, out, dout)


class _AttentionSuite:
    """Base of the suites: subclasses set ``params``/``param_names`` (with a
    ``threads`` parameter) and ``args_of(*params) -> (impl, dims, dtype,
    threads, variant)``.

    ``limits`` maps ``(impl, dtype)`` or ``impl`` to the largest ``work`` the
    implementation is run at; above it setup raises NotImplementedError.  The
    float64 oracle converts float32 inputs to float64, so at float32 it only
    runs at small sizes (its float64 row is the same computation).

    ``time_attention`` runs at every thread count; its ``peakmem_attention``
    twin only at the largest (memory does not depend on it), the other
    combinations are skipped before setup.
    """

    limits = {("numpy_ref", "float32"): 1.1e9, "numpy_ref": 1.1e10, "numpy_naive": 1.1e10}
    timeout = 300
    repeat = (1, 5, 20.0)
    number = 0
    min_run_count = 1
    warmup_work = 2e9      # one untimed call in setup up to this size (asv --quick times one call)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "peakmem_attention" in cls.__dict__ or "threads" not in getattr(cls, "param_names", ()):
            return

        def peakmem_attention(self, *params):
            self.fn(*self.qkv)

        i = cls.param_names.index("threads")
        # read by asv_runner before setup (what @skip_for_params sets)
        peakmem_attention.skip_params = [p for p in itertools.product(*cls.params)
                                         if p[i] != MAX_THREADS]
        cls.peakmem_attention = peakmem_attention

    def args_of(self, *params):
        raise NotImplementedError

    def setup(self, *params):
        impl, dims, dtype, threads, variant = self.args_of(*params)
        limit = self.limits.get((impl, dtype), self.limits.get(impl))
        if limit is not None and work(dims) > limit:
            raise NotImplementedError("%s %s skipped at this size (too slow)" % (impl, dtype))
        self.impl = Impl(impl, threads, variant, dims)
        self.fn = self.impl.fn
        self.qkv = make_qkv(dims, dtype)
        if work(dims) <= self.warmup_work:
            self.fn(*self.qkv)      # thread-team start, first-touch: not timed

    def teardown(self, *params):
        impl = getattr(self, "impl", None)
        if impl is not None:
            impl.close()
        self.qkv = None

    def time_attention(self, *params):
        self.fn(*self.qkv)
