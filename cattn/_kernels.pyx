# cython: language_level=3
"""Typed parallel kernels behind cattn's public functions.

Design
------
Only typed loops live here; validation, broadcasting and dtype choice are
in ``_api.py``.  Every operand arrives as a NumPy array in the compute dtype
plus an int64 array of element offsets, one per flattened batch item, so
broadcast leading dims, GQA head sharing and arbitrary strides cost nothing.

* ``flash``: the fused kernel.  Work is split into (batch item, query block)
  pairs run under ``prange``; per-thread scratch is allocated once per call
  inside the parallel region.  The tile math is in C (``_src/flash_impl.h``).
* ``gemm_batched``: whole-matrix products (``scores``, ``aggregate``) through
  SciPy's BLAS (``scipy.linalg.cython_blas``, looked up at the first call),
  one GEMM per batch item; the caller holds BLAS to one thread while our
  OpenMP team runs.
* ``softmax_rows``: the stable softmax, one row per iteration.
"""
import numpy as np
cimport numpy as cnp
cimport cython
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset
from libc.math cimport exp, expf, fabs, sqrt, INFINITY
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_GetName

from cattn._openmp_helpers cimport omp_get_thread_num, omp_get_wtime, cattn_usable_team
import threading

from cattn._options import MAX_NDIM as _MAX_NDIM, check_num_threads as _check_num_threads
from cattn._threads import threads_for as _threads_for

cnp.import_array()


cdef extern from "_src/flash.h" nogil:
    enum:
        CATTN_SCORE_DOT
        CATTN_SCORE_COSINE
        CATTN_SCORE_ADDITIVE
        CATTN_MODE_ATTENTION
        CATTN_MODE_WEIGHTS
        CATTN_MODE_KEY_MASS
        CATTN_MODE_SCORES
        CATTN_KV_NATIVE
        CATTN_KV_F16
        CATTN_KV_BF16
        CATTN_KV_I8
        CATTN_IO_NATIVE
        CATTN_IO_F16
        CATTN_IO_BF16
    int64_t CATTN_UNBOUNDED
    int64_t CATTN_QBLOCK
    int64_t CATTN_DECODE_MAX_LQ
    ctypedef struct cattn_operand:
        const void *base
        const int64_t *off
        int64_t rs, cs
    ctypedef struct cattn_params:
        int64_t n_batch, Lq, Lk, D, Dv
        int64_t block_q, block_k
        int score_kind
        int mode
        int kv_format
        int q_format, out_format
        cattn_operand q, k, v, out, mask, bias, q_seg, kv_seg
        cattn_operand k_scale, v_scale
        void *lse
        void *lse_m
        void *lse_logl
        void *weights
        void *key_mass
        int64_t km_slots, km_b0
        const double *scale
        const void *add_w
        const int64_t *kv_len
        const int64_t *q_len
        const int64_t *q_pos
        const double *sinks
        double softcap
        int64_t win_left, win_right
        int (*poll)(void *ctx) noexcept nogil
        void *poll_ctx
        int *stop
    ctypedef struct cattn_bwd_params:
        cattn_params f
        cattn_operand dout
        const void *delta
        void *dq
        void *dk
        void *dv
        void *dbias
        void *dscore
        const int64_t *group_start
        const int64_t *group_items
        int64_t n_groups
        const int64_t *shift
    ctypedef struct cattn_kernels:
        const char *isa
        size_t (*tile_scratch)(const cattn_params *p) noexcept nogil
        void (*tile)(const cattn_params *p, int64_t b, int64_t qb, void *scratch) noexcept nogil
        size_t (*decode_scratch)(const cattn_params *p) noexcept nogil
        void (*decode)(const cattn_params *p, int64_t b, int64_t js, int64_t je,
                       void *acc, void *mm, void *ll, void *scratch) noexcept nogil
        void (*decode_finish)(const cattn_params *p, int64_t b, int64_t i, int64_t n_split,
                              const void *acc, const void *mm, const void *ll) noexcept nogil
        size_t (*bwd_scratch)(const cattn_bwd_params *bp) noexcept nogil
        void (*bwd_kv)(const cattn_bwd_params *bp, int64_t g, int64_t kb, void *dq_part,
                       void *scratch) noexcept nogil
        void (*bwd_q)(const cattn_bwd_params *bp, int64_t b, int64_t qb,
                      void *scratch) noexcept nogil
        int64_t block_q, block_k
    cattn_kernels cattn_kernels_for(int is_double, int kv_format)
    const char *cattn_isa_name()


MODE_ATTENTION = CATTN_MODE_ATTENTION
MODE_WEIGHTS = CATTN_MODE_WEIGHTS
MODE_KEY_MASS = CATTN_MODE_KEY_MASS
MODE_SCORES = CATTN_MODE_SCORES
KV_NATIVE = CATTN_KV_NATIVE
KV_F16 = CATTN_KV_F16
KV_BF16 = CATTN_KV_BF16
KV_I8 = CATTN_KV_I8
IO_NATIVE = CATTN_IO_NATIVE
IO_F16 = CATTN_IO_F16
IO_BF16 = CATTN_IO_BF16
QBLOCK = CATTN_QBLOCK
UNBOUNDED = CATTN_UNBOUNDED
DECODE_MAX_LQ = CATTN_DECODE_MAX_LQ
SCORE_KINDS = {"dot": CATTN_SCORE_DOT, "scaled_dot": CATTN_SCORE_DOT,
               "cosine": CATTN_SCORE_COSINE, "additive": CATTN_SCORE_ADDITIVE}


def isa_name():
    """The micro-kernel variant chosen for this CPU."""
    return cattn_isa_name().decode()


def preferred_blocks(bint is_double, int kv_format):
    """(block_q, block_k) the tile kernel of this compute type and K/V format
    runs best at on this CPU; 0 where it leaves the choice to the planner."""
    cdef cattn_kernels k = cattn_kernels_for(is_double, kv_format)
    return int(k.block_q), int(k.block_k)


# ------------------------------------------------------------ the contract
# The Python side describes a kernel call with the two typed classes below
# (a misspelt keyword is a TypeError, a misspelt field in this file a
# compile error); _fill_params copies them into the C struct.

@cython.auto_pickle(False)
cdef class Operand:
    """One kernel operand: an array (kept alive for the call), the element
    offset of each batch item (int64, one per item) and the row/column
    strides in elements."""
    cdef readonly cnp.ndarray array
    cdef readonly cnp.ndarray offsets
    cdef readonly int64_t rs, cs

    def __init__(self, cnp.ndarray array not None, cnp.ndarray offsets not None,
                 int64_t rs, int64_t cs=1):
        if offsets.dtype != np.int64 or not offsets.flags.c_contiguous:
            raise TypeError("Operand offsets must be a contiguous int64 array")
        self.array = array
        self.offsets = offsets
        self.rs = rs
        self.cs = cs


@cython.auto_pickle(False)
cdef class KernelArgs:
    """Everything a fused-kernel call reads: geometry, options and
    operands, in the compute dtype (see cattn_params in _src/flash.h)."""
    cdef readonly int64_t n_batch, Lq, Lk, D, Dv, block_q, block_k
    cdef readonly int score_kind, kv_format, q_format, out_format
    cdef readonly Operand q, k, v, out, mask, bias, q_seg, kv_seg
    cdef readonly Operand k_scale, v_scale
    cdef readonly object lse, lse_m, lse_logl, weights, key_mass
    cdef readonly object scale, add_w, kv_len, q_len, q_pos, sinks
    cdef readonly double softcap
    cdef readonly int64_t win_left, win_right

    def __init__(self, *, int64_t n_batch, int64_t Lq, int64_t Lk, int64_t D, int64_t Dv,
                 int64_t block_q, int64_t block_k, int score_kind, scale,
                 Operand q, Operand k, Operand v, Operand out=None,
                 int kv_format=CATTN_KV_NATIVE, Operand mask=None, Operand bias=None,
                 Operand q_seg=None, Operand kv_seg=None, lse=None, lse_m=None,
                 lse_logl=None, weights=None, key_mass=None, add_w=None, kv_len=None,
                 q_len=None, q_pos=None, sinks=None, double softcap=0.0,
                 int64_t win_left=CATTN_UNBOUNDED, int64_t win_right=CATTN_UNBOUNDED,
                 Operand k_scale=None, Operand v_scale=None,
                 int q_format=CATTN_IO_NATIVE, int out_format=CATTN_IO_NATIVE):
        self.n_batch = n_batch; self.Lq = Lq; self.Lk = Lk; self.D = D; self.Dv = Dv
        self.block_q = block_q; self.block_k = block_k
        self.score_kind = score_kind; self.kv_format = kv_format
        # a 16-bit q or out: float32 math, dot-product scores, 2-byte elements
        for fmt, op, name in ((q_format, q, "q"), (out_format, out, "out")):
            if fmt == CATTN_IO_NATIVE:
                continue
            if fmt not in (CATTN_IO_F16, CATTN_IO_BF16) or score_kind != CATTN_SCORE_DOT:
                raise ValueError(f"KernelArgs.{name}_format: 16-bit only, dot scores only")
            if op is None or (<Operand>op).array.dtype.itemsize != 2:
                raise TypeError(f"KernelArgs.{name} must hold 16-bit values for its format")
        # 16-bit formats come with float32 math only (a float64 q would
        # round twice on the way out)
        if (q_format != CATTN_IO_NATIVE or out_format != CATTN_IO_NATIVE) and not (
                q_format != CATTN_IO_NATIVE or q.array.dtype == np.float32):
            raise TypeError("KernelArgs: 16-bit q/out formats need float32 math")
        self.q_format = q_format; self.out_format = out_format
        self.q = q; self.k = k; self.v = v; self.out = out
        self.mask = mask; self.bias = bias; self.q_seg = q_seg; self.kv_seg = kv_seg
        self.k_scale = k_scale; self.v_scale = v_scale
        self.lse = lse; self.lse_m = lse_m; self.lse_logl = lse_logl
        self.weights = weights; self.key_mass = key_mass
        self.scale = _checked(scale, np.float64, n_batch, "scale")
        # the additive weights are read as D values of the compute type
        # (q's dtype): a float32 array under float64 kernels would be read
        # past its end
        if add_w is not None and (not isinstance(add_w, np.ndarray)
                                  or add_w.dtype != q.array.dtype
                                  or not add_w.flags.c_contiguous or add_w.size < D):
            raise TypeError("KernelArgs.add_w must be a contiguous array of D values "
                            "in the compute dtype")
        self.add_w = add_w
        self.kv_len = _checked(kv_len, np.int64, n_batch, "kv_len")
        self.q_len = _checked(q_len, np.int64, n_batch, "q_len")
        self.q_pos = _checked(q_pos, np.int64, n_batch, "q_pos")
        self.sinks = _checked(sinks, np.float64, n_batch, "sinks")
        self.softcap = softcap
        self.win_left = win_left; self.win_right = win_right
        for op in (q, k, v, out, mask, bias, q_seg, kv_seg, k_scale, v_scale):
            if op is not None and (<Operand>op).offsets.shape[0] != n_batch:
                raise ValueError("an operand has the wrong number of batch offsets")


cdef object _checked(object x, object dtype, int64_t n, str name):
    """A per-batch-item array of the C contract: contiguous, of `dtype`,
    `n` long (or None)."""
    if x is None:
        return None
    if (not isinstance(x, np.ndarray) or x.dtype != dtype or not x.flags.c_contiguous
            or x.shape[0] != n):
        raise TypeError(f"KernelArgs.{name} must be a contiguous {np.dtype(dtype)} array "
                        f"of {n} items")
    return x


cdef inline const void *_ptr(object a):
    if a is None:
        return NULL
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline void _operand(cattn_operand *o, Operand x):
    if x is None:
        o.base = NULL; o.off = NULL; o.rs = 0; o.cs = 0
        return
    o.base = cnp.PyArray_DATA(x.array)
    o.off = <const int64_t *>cnp.PyArray_DATA(x.offsets)
    o.rs = x.rs
    o.cs = x.cs


cdef void _fill_params(cattn_params *p, KernelArgs a, int mode):
    memset(p, 0, sizeof(cattn_params))
    p.n_batch = a.n_batch; p.Lq = a.Lq; p.Lk = a.Lk; p.D = a.D; p.Dv = a.Dv
    p.block_q = a.block_q; p.block_k = a.block_k
    p.score_kind = a.score_kind; p.mode = mode; p.kv_format = a.kv_format
    p.q_format = a.q_format; p.out_format = a.out_format
    _operand(&p.q, a.q); _operand(&p.k, a.k); _operand(&p.v, a.v)
    _operand(&p.out, a.out); _operand(&p.mask, a.mask); _operand(&p.bias, a.bias)
    _operand(&p.q_seg, a.q_seg); _operand(&p.kv_seg, a.kv_seg)
    _operand(&p.k_scale, a.k_scale); _operand(&p.v_scale, a.v_scale)
    p.lse = <void *>_ptr(a.lse)
    p.lse_m = <void *>_ptr(a.lse_m)
    p.lse_logl = <void *>_ptr(a.lse_logl)
    p.weights = <void *>_ptr(a.weights)
    p.key_mass = <void *>_ptr(a.key_mass)
    p.scale = <const double *>_ptr(a.scale)
    p.add_w = _ptr(a.add_w)
    p.kv_len = <const int64_t *>_ptr(a.kv_len)
    p.q_len = <const int64_t *>_ptr(a.q_len)
    p.q_pos = <const int64_t *>_ptr(a.q_pos)
    p.sinks = <const double *>_ptr(a.sinks)
    p.softcap = a.softcap
    p.win_left = a.win_left
    p.win_right = a.win_right


cdef extern from "Python.h":
    int PyErr_CheckSignals()


cdef extern from *:
    """
    /* The driver's shared counters (items claimed, items done): atomics
       where the compiler has them, an OpenMP critical section elsewhere. */
    #if defined(__GNUC__) || defined(__clang__)
    static inline int64_t cattn_fetch_inc(int64_t *c)
    { return __atomic_fetch_add(c, 1, __ATOMIC_ACQ_REL); }
    static inline int64_t cattn_load(int64_t *c) { return __atomic_load_n(c, __ATOMIC_ACQUIRE); }
    #else
    static inline int64_t cattn_fetch_inc(int64_t *c)
    {
        int64_t v;
    #pragma omp critical(cattn_counters)
        { v = (*c)++; }
        return v;
    }
    static inline int64_t cattn_load(int64_t *c)
    {
        int64_t v;
    #pragma omp critical(cattn_counters)
        { v = *c; }
        return v;
    }
    #endif
    /* a nap of the polling thread, in microseconds */
    #ifdef _WIN32
    #include <windows.h>
    static inline void cattn_nap(long us) { Sleep((DWORD)(us / 1000)); }
    #else
    #include <time.h>
    static inline void cattn_nap(long us)
    {
        struct timespec ts;
        ts.tv_sec = 0;
        ts.tv_nsec = us * 1000;
        nanosleep(&ts, NULL);
    }
    #endif
    """
    int64_t cattn_fetch_inc(int64_t *c) noexcept nogil
    int64_t cattn_load(int64_t *c) noexcept nogil
    void cattn_nap(long us) noexcept nogil


# One driver serves the tile and the decode kernels: it runs work items
# under prange (or on the calling thread when one thread is asked for, so a
# forked child never enters OpenMP), with per-thread scratch, and lets the
# main thread poll for Ctrl-C between items.  The kernels come from the
# table resolved once per call (cattn_kernels_for): a work item dispatches
# nothing.
cdef struct _Run:
    cattn_params *p
    cattn_kernels kern
    bint decode
    int64_t n_qblocks
    int64_t km_slots        # mode KEY_MASS: a work item is (batch item, slot)
    int64_t b0              # ... of the batch items from b0 on
    int64_t n_split
    int64_t chunk
    size_t isz
    char *acc
    char *mm
    char *ll


cdef void _work_item(_Run *r, int64_t w, void *scratch) noexcept nogil:
    cdef int64_t b, sp, js, je, Lq, Dv, qb
    if r.km_slots:
        # key mass: one slot's query blocks, in order, on one thread
        b = r.b0 + w // r.km_slots
        qb = w % r.km_slots
        while qb < r.n_qblocks and not r.p.stop[0]:
            r.kern.tile(r.p, b, qb, scratch)
            qb += r.km_slots
        return
    if not r.decode:
        r.kern.tile(r.p, w // r.n_qblocks, w % r.n_qblocks, scratch)
        return
    b = w // r.n_split
    sp = w % r.n_split
    js = sp * r.chunk
    je = js + r.chunk
    if je > r.p.Lk:
        je = r.p.Lk
    Lq = r.p.Lq
    Dv = r.p.Dv
    r.kern.decode(r.p, b, js, je, r.acc + w * Lq * Dv * r.isz, r.mm + w * Lq * r.isz,
                  r.ll + w * Lq * r.isz, scratch)


# Seconds between two polls for pending signals (Ctrl-C).
cdef double _SIGNAL_POLL = 0.02


cdef int _interrupted(double *last) noexcept nogil:
    """On the main thread: re-acquire the GIL briefly, every _SIGNAL_POLL
    seconds, and run Python's signal handlers.  True when one raised.
    ``last`` is the call's own clock (a clock shared by all calls was reset
    by every call another Python thread made, and starved this poll)."""
    cdef double now = omp_get_wtime()
    if now - last[0] < _SIGNAL_POLL:
        return 0
    last[0] = now
    with gil:
        return PyErr_CheckSignals() != 0


cdef int _poll_cb(void *ctx) noexcept nogil:
    """The kernels' in-tile poll (thread 0 of a call from the main thread),
    on the call's clock."""
    return _interrupted(<double *>ctx)


# The driver every kernel family shares (tile, decode, key mass, backward,
# paged): a work item is item(ctx, w, scratch, tid), ctx the family's own
# state, tid the OpenMP thread (per-thread buffers).  The caller arms
# status/last (_arm) and points its params' stop/poll at them first.
ctypedef void (*_item_fn)(void *ctx, int64_t w, void *scratch, int tid) noexcept nogil


cdef void _arm(int *status, double *last) noexcept nogil:
    status[0] = 0       # scratch allocation failed
    status[1] = 0       # interrupted
    last[0] = omp_get_wtime()


cdef void _drive(_item_fn item, void *ctx, int64_t n_work, int64_t *ctr, void *scratch,
                 int *status, double *last, bint poller, int tid) noexcept nogil:
    """One thread's share of a parallel run: claim items (ctr[0]) until none
    is left, counting each done (ctr[1]), then -- on the polling thread --
    keep polling until every item is done.  Only the calling thread (OpenMP
    thread 0) can run Python's signal handlers; waiting at the end of a
    prange, it stopped polling while another thread still ran a long item
    (measured: KeyboardInterrupt 2.1 s after SIGINT with uneven kv_lengths,
    2 threads)."""
    cdef int64_t w
    cdef double t0, waited
    while True:
        w = cattn_fetch_inc(&ctr[0])
        if w >= n_work:
            break
        if scratch != NULL and not status[1]:
            if poller and _interrupted(last):
                status[1] = 1
            else:
                item(ctx, w, scratch, tid)
        cattn_fetch_inc(&ctr[1])
    if not poller:
        return
    t0 = omp_get_wtime()
    while not status[1] and cattn_load(&ctr[1]) < n_work:
        if _interrupted(last):
            status[1] = 1
            return
        # spin the first millisecond (short calls end without a nap), then
        # nap a twentieth of the time waited so far, at most 2 ms: the call
        # ends at most 5% (or 2 ms) after its last item
        waited = omp_get_wtime() - t0
        if waited > 1e-3:
            cattn_nap(<long>(1e6 * min(0.05 * waited, 2e-3)))


cdef int _run_items(_item_fn item, void *ctx, int64_t n_work, size_t scratch_bytes,
                    int n_threads, bint poll, int *status, double *last) except -1:
    """Run n_work items with per-thread scratch: on the calling thread when
    one thread is asked for (so a forked child never enters OpenMP), else a
    checked team; Ctrl-C polled between items (and, through the params the
    caller armed, inside them).  Raises MemoryError if scratch cannot be
    had; returns -1 with the signal handler's exception set."""
    cdef int64_t ctr[2]     # items claimed, items done
    cdef int64_t w
    cdef void *raw = NULL
    cdef void *scratch = NULL
    ctr[0] = 0
    ctr[1] = 0
    if n_threads > n_work:
        n_threads = <int>n_work
    if n_threads > 1:
        n_threads = cattn_usable_team(n_threads)
    if n_threads <= 1:
        raw = malloc(scratch_bytes + 64)
        if raw == NULL:
            raise MemoryError("cattn: cannot allocate %d bytes of scratch" % scratch_bytes)
        scratch = <void *>((<size_t>raw + 63) & ~(<size_t>63))
        with nogil:
            for w in range(n_work):
                if poll and _interrupted(last):
                    status[1] = 1
                    break
                item(ctx, w, scratch, 0)
        free(raw)
    else:
        with nogil, parallel(num_threads=n_threads):
            raw = malloc(scratch_bytes + 64)
            if raw == NULL:
                status[0] = 1
                scratch = NULL
            else:
                scratch = <void *>((<size_t>raw + 63) & ~(<size_t>63))
            _drive(item, ctx, n_work, ctr, scratch, status, last,
                   poll and omp_get_thread_num() == 0, omp_get_thread_num())
            free(raw)
    if status[1]:
        return -1           # the signal handler's exception is set
    if status[0]:
        raise MemoryError("cattn: cannot allocate %d bytes of per-thread scratch"
                          % scratch_bytes)
    return 0


cdef void _forward_item(void *ctx, int64_t w, void *scratch, int tid) noexcept nogil:
    _work_item(<_Run *>ctx, w, scratch)


cdef int _run(_Run *r, int64_t n_work, size_t scratch_bytes, int n_threads,
              bint poll) except -1:
    cdef int status[2]
    cdef double last[1]     # this call's poll clock
    _arm(status, last)
    # inside work items too: one item can span millions of keys
    r.p.stop = &status[1]
    r.p.poll = NULL
    if poll:
        r.p.poll = _poll_cb
    r.p.poll_ctx = <void *>last
    return _run_items(_forward_item, <void *>r, n_work, scratch_bytes, n_threads, poll,
                      status, last)


def _poll_signals():
    return threading.current_thread() is threading.main_thread()


cdef bint _is_double(KernelArgs a):
    # a 16-bit q computes in float32
    return a.q_format == CATTN_IO_NATIVE and a.q.array.dtype == np.float64


def flash(KernelArgs a, int mode, int num_threads):
    """Run the fused kernel over all (batch item, query block) pairs.

    ``mode`` is MODE_ATTENTION (writes ``a.out`` and ``a.lse``),
    MODE_WEIGHTS / MODE_KEY_MASS (the weights pass: ``a.weights`` or
    ``a.key_mass`` from the lse of an attention pass) or MODE_SCORES
    (additive scores into ``a.weights``).  Raises MemoryError if scratch
    cannot be had and KeyboardInterrupt (or whatever a signal handler
    raises) on Ctrl-C.
    """
    cdef cattn_params p
    _fill_params(&p, a, mode)
    cdef _Run r
    r.p = &p
    r.kern = cattn_kernels_for(_is_double(a), p.kv_format)
    r.decode = False
    r.n_qblocks = (p.Lq + p.block_q - 1) // p.block_q
    r.km_slots = 0
    r.b0 = 0
    cdef int64_t n_work = p.n_batch * r.n_qblocks
    if n_work == 0:
        return
    if mode == CATTN_MODE_KEY_MASS:
        _key_mass(&r, a, num_threads)
        return
    _run(&r, n_work, r.kern.tile_scratch(&p), num_threads, _poll_signals())


# Key mass: the sums of the weights over the queries, made deterministic.
# Query block qb of a batch item adds into slot qb % _KM_SLOTS; a work item
# is one (batch item, slot) and runs its blocks in order, and the slots are
# summed in order afterwards: the same bits whatever thread ran what (atomic
# adds from the query blocks made 3-10% of repeated threaded calls differ).
# Partials take at most _KM_BYTES (whole batch items at a time) or one batch
# item's _KM_SLOTS x Lk.
cdef int64_t _KM_SLOTS = 16
cdef int64_t _KM_BYTES = 64 << 20


cdef _key_mass(_Run *r, KernelArgs a, int num_threads):
    cdef cattn_params *p = r.p
    cdef int64_t N = p.n_batch, Lk = p.Lk, b0, g
    cdef int64_t slots = min(r.n_qblocks, _KM_SLOTS)
    cdef size_t scratch = r.kern.tile_scratch(p)
    cdef bint poll = _poll_signals()
    key_mass = a.key_mass
    r.km_slots = slots
    p.km_slots = slots
    if slots == 1:      # one query block: its sums are the result
        p.km_b0 = 0
        r.b0 = 0
        _run(r, N, scratch, num_threads, poll)
        return
    cdef int64_t per_item = slots * max(Lk, 1) * key_mass.dtype.itemsize
    cdef int64_t group = max(1, min(N, _KM_BYTES // per_item))
    for b0 in range(0, N, group):
        g = min(group, N - b0)
        part = np.zeros((g, slots, Lk), dtype=key_mass.dtype)
        p.key_mass = cnp.PyArray_DATA(part)
        p.km_b0 = b0
        r.b0 = b0
        _run(r, g * slots, scratch, num_threads, poll)
        np.sum(part, axis=1, out=key_mass[b0:b0 + g])


def flash_decode(KernelArgs a, int num_threads, int64_t n_split):
    """The decode path: (batch item, key split) work items stream K and V
    once and leave partial results, merged per query by the log-sum-exp
    rule afterwards."""
    cdef cattn_params p
    _fill_params(&p, a, CATTN_MODE_ATTENTION)
    cdef _Run r
    r.p = &p
    cdef bint is_double = _is_double(a)
    r.kern = cattn_kernels_for(is_double, p.kv_format)
    r.decode = True
    r.km_slots = 0
    r.b0 = 0
    cdef int64_t N = p.n_batch, Lq = p.Lq, Dv = p.Dv, Lk = p.Lk, w, b
    if N == 0 or Lq == 0:
        return
    dt = np.float64 if is_double else np.float32
    part_acc = np.empty((N, n_split, Lq, max(Dv, 1)), dtype=dt)
    part_m = np.empty((N, n_split, Lq), dtype=dt)
    part_l = np.empty((N, n_split, Lq), dtype=dt)
    r.acc = <char *>cnp.PyArray_DATA(part_acc)
    r.mm = <char *>cnp.PyArray_DATA(part_m)
    r.ll = <char *>cnp.PyArray_DATA(part_l)
    r.isz = 8 if is_double else 4
    cdef size_t isz = r.isz
    r.n_split = n_split
    r.chunk = (Lk + n_split - 1) // n_split
    r.chunk = ((r.chunk + 63) // 64) * 64
    _run(&r, N * n_split, r.kern.decode_scratch(&p), num_threads, _poll_signals())
    with nogil:
        for w in range(N * Lq):
            b = w // Lq
            r.kern.decode_finish(&p, b, w % Lq, n_split,
                                 r.acc + b * n_split * Lq * Dv * isz,
                                 r.mm + b * n_split * Lq * isz,
                                 r.ll + b * n_split * Lq * isz)


# SciPy's BLAS, looked up at the first GEMM rather than cimported: the
# cimport made ``import cattn`` import scipy.linalg (175 of its 271 ms,
# python -X importtime) and load SciPy's OpenBLAS for calls that never use it.
ctypedef void (*_sgemm_t)(char *ta, char *tb, int *m, int *n, int *k, float *alpha,
                          float *a, int *lda, float *b, int *ldb, float *beta, float *c,
                          int *ldc) noexcept nogil
ctypedef void (*_dgemm_t)(char *ta, char *tb, int *m, int *n, int *k, double *alpha,
                          double *a, int *lda, double *b, int *ldb, double *beta,
                          double *c, int *ldc) noexcept nogil
cdef _sgemm_t sgemm = NULL
cdef _dgemm_t dgemm = NULL


cdef int _load_blas() except -1:
    """SciPy's sgemm/dgemm (``scipy.linalg.cython_blas``'s C API), once."""
    global sgemm, dgemm
    if sgemm != NULL and dgemm != NULL:
        return 0
    from scipy.linalg import cython_blas
    capi = cython_blas.__pyx_capi__
    s, d = capi["sgemm"], capi["dgemm"]
    dgemm = <_dgemm_t>PyCapsule_GetPointer(d, PyCapsule_GetName(d))
    sgemm = <_sgemm_t>PyCapsule_GetPointer(s, PyCapsule_GetName(s))
    return 0


def load_blas():
    """Load SciPy's BLAS now (``blas_limit`` must see it loaded to cap it)."""
    _load_blas()


cdef inline void _gemm(char *ta, char *tb, int m, int n, int k, floating alpha,
                       const floating *A, int lda, const floating *B, int ldb,
                       floating *C, int ldc) noexcept nogil:
    # BLAS only reads A and B; its Fortran prototypes just lack the const
    cdef floating beta = 0
    if floating is float:
        sgemm(ta, tb, &m, &n, &k, &alpha, <float *>A, &lda, <float *>B, &ldb, &beta,
              C, &ldc)
    else:
        dgemm(ta, tb, &m, &n, &k, &alpha, <double *>A, &lda, <double *>B, &ldb, &beta,
              C, &ldc)


def _gemm_batched(const floating[::1] A, const int64_t[::1] A_off, int lda,
                  const floating[::1] B, const int64_t[::1] B_off, int ldb,
                  floating[::1] C, int64_t C_stride, int ldc,
                  bint trans_a, int m, int n, int k, double alpha, int num_threads):
    """C[b] = alpha * op(A[b]) . B[b] (column-major BLAS view) for every batch item.

    Arrays are passed flat (1-D views of the operands' buffers from their
    lowest address), offsets in elements.  Runs the batch under prange with
    one-threaded BLAS when ``num_threads > 1`` (the caller caps BLAS).
    """
    _load_blas()
    cdef int64_t n_batch = A_off.shape[0], b
    cdef char *ta = b"T" if trans_a else b"N"
    cdef char *tb = b"N"
    cdef const floating *pa = &A[0]
    cdef const floating *pb = &B[0]
    cdef floating *pc = &C[0]
    cdef floating al = <floating>alpha
    if num_threads > 1:
        num_threads = cattn_usable_team(num_threads)
    if num_threads <= 1 or n_batch == 1:
        with nogil:
            for b in range(n_batch):
                _gemm(ta, tb, m, n, k, al, pa + A_off[b], lda, pb + B_off[b], ldb,
                      pc + b * C_stride, ldc)
    else:
        with nogil:
            for b in prange(n_batch, num_threads=num_threads, schedule="static"):
                _gemm(ta, tb, m, n, k, al, pa + A_off[b], lda, pb + B_off[b], ldb,
                      pc + b * C_stride, ldc)


def gemm_batched(A, A_off, lda, B, B_off, ldb, C, C_stride, ldc, trans_a, m, n, k,
                 alpha, num_threads):
    if m == 0 or n == 0:
        return
    if k == 0:
        C.fill(0)
        return
    _gemm_batched(A, A_off, lda, B, B_off, ldb, C, C_stride, ldc, trans_a, m, n, k,
                  alpha, num_threads)


def softmax_rows(floating[:, ::1] x, int num_threads):
    """Stable softmax of every row of ``x``, in place.  A row that is all
    -inf becomes all 0; a NaN anywhere in a row makes the row NaN."""
    cdef Py_ssize_t R = x.shape[0], C = x.shape[1], r
    if R == 0 or C == 0:
        return
    if num_threads > 1:
        num_threads = cattn_usable_team(num_threads)
    if num_threads <= 1 or R * C <= 32768:
        with nogil:
            for r in range(R):
                _softmax_row(&x[r, 0], C)
        return
    with nogil:
        for r in prange(R, num_threads=num_threads, schedule="static"):
            _softmax_row(&x[r, 0], C)


cdef void _softmax_row(floating *x, Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t c
    cdef floating m = -INFINITY, s = 0, e
    for c in range(C):
        if x[c] > m:
            m = x[c]
    if m == -INFINITY:
        for c in range(C):
            if x[c] != x[c]:        # all -inf or NaN: NaN stays NaN
                s = x[c]
        for c in range(C):
            x[c] = s
        return
    for c in range(C):
        if floating is float:
            e = expf(x[c] - m)
        else:
            e = exp(x[c] - m)
        x[c] = e
        s = s + e
    s = 1 / s
    for c in range(C):
        x[c] = x[c] * s


# ------------------------------------------------------------ plain calls
# A plain call (C-contiguous aligned float32/float64 arrays of one dtype,
# equal leading dims, a dot/scaled_dot/cosine score, at most causal,
# return_lse and out= as options) is checked and run here without the
# operand machinery of _validate/_plan/_run, which otherwise costs more
# than the kernel below ~2**20 score x feature operations.  bfloat16
# (ml_dtypes) q, k, v with a dot-product score are plain too: read and
# written as bfloat16 by the kernels (measured, (1,8,128,128,64) at 1
# thread: 0.45 ms through the general layers, 0.35 here; (1,1,16,16,64)
# 70 us -> 8 us).  What is not
# plain returns None and takes the general path, which raises the errors:
# this path only ever says "not mine".

@cython.auto_pickle(False)
cdef class TilePolicy:
    """The tile path's block sizes (values and measurements: _plan)."""
    cdef readonly int64_t block_q, block_q_f64_narrow, block_k
    cdef readonly int64_t block_q_short_span, short_span

    def __init__(self, int64_t block_q, int64_t block_q_f64_narrow, int64_t block_k,
                 int64_t block_q_short_span, int64_t short_span):
        if min(block_q, block_q_f64_narrow, block_k, block_q_short_span) < 1:
            raise ValueError("TilePolicy: block sizes must be >= 1")
        self.block_q = block_q
        self.block_q_f64_narrow = block_q_f64_narrow
        self.block_k = block_k
        self.block_q_short_span = block_q_short_span
        self.short_span = short_span

    cdef void blocks(self, int64_t N, int64_t Lq, int n_threads, bint is_double, int64_t D,
                     bint skips, int64_t span, int64_t pref_q, int64_t pref_k,
                     int64_t *bq_out, int64_t *bk_out) noexcept nogil:
        cdef bint wide = is_double and 0 <= D <= 64 and not skips
        cdef int64_t base = self.block_q_f64_narrow if wide else self.block_q
        if pref_q > 0:          # the kernel table's own choice (preferred_blocks)
            base = pref_q
        # a short span (causal or a window over <= short_span keys) skips
        # key tiles at 32-query granularity, the bfloat16 tiles' 128 too:
        # (1,8,128,128,64) causal, bfloat16, 1 thread: 0.240 -> 0.170 ms
        # (its one 128 x 128 tile computed every pair); (4,8,512,512,64)
        # causal 8.81 -> 8.27 ms; (1,16,1024,1024,64) causal 14.7 -> 14.5
        if 0 <= span <= self.short_span:
            base = self.block_q_short_span
        cdef int64_t bq = min(base, max(16, ((Lq + 15) // 16) * 16))
        # halved while threads would be left without a block, but not
        # below 32 (a block's queries are computed in panels padded to 32:
        # a 16-query block costs a 32-query one) and never for one thread
        while n_threads > 1 and bq > 32 and N * ((Lq + bq - 1) // bq) < 2 * n_threads:
            bq = max(32, bq // 2)
        bq_out[0] = max(bq, 1)
        bk_out[0] = pref_k if pref_k > 0 else self.block_k

    def tile_blocks(self, int64_t N, int64_t Lq, int n_threads, bint is_double, int64_t D,
                    bint skips, int64_t span, int64_t pref_q=0, int64_t pref_k=0):
        """(block_q, block_k): ``block_q`` queries a block
        (``block_q_f64_narrow`` for float64 with 0 <= D <= 64 and nothing
        that skips tiles; the kernel's own ``pref_q``/``pref_k`` where > 0,
        over these; ``block_q_short_span`` when a window lets a query see
        at most ``short_span`` keys, ``span`` >= 0, over all), halved down
        to 32 while that leaves threads idle."""
        cdef int64_t bq, bk
        self.blocks(N, Lq, n_threads, is_double, D, skips, span, pref_q, pref_k, &bq, &bk)
        return bq, bk


_PLAIN_SCORES = {"scaled_dot": CATTN_SCORE_DOT, "dot": CATTN_SCORE_DOT,
                 "cosine": CATTN_SCORE_COSINE}
cdef int _PLAIN_MAX_NDIM = _MAX_NDIM
if _MAX_NDIM > 64:
    raise ImportError("cattn._kernels: the plain path holds at most 64 dims")
cdef double _PLAIN_MAX_SCALE = 1e4  # above: the float32 range policy (_plan)


cdef inline bint _plain_array(object x, int type_num):
    """An exact ndarray of ``type_num``, native byte order, C-contiguous and
    aligned, not empty."""
    if type(x) is not np.ndarray:
        return False
    cdef cnp.ndarray a = <cnp.ndarray>x
    return (a.descr.type_num == type_num and cnp.PyArray_ISNOTSWAPPED(a)
            and cnp.PyArray_ISCARRAY_RO(a) and cnp.PyArray_SIZE(a) > 0)


cdef inline bint _disjoint(cnp.ndarray a, cnp.ndarray b):
    """Contiguous arrays: whether their bytes do not intersect."""
    cdef size_t a0 = <size_t>cnp.PyArray_DATA(a), b0 = <size_t>cnp.PyArray_DATA(b)
    return (a0 + <size_t>cnp.PyArray_NBYTES(a) <= b0
            or b0 + <size_t>cnp.PyArray_NBYTES(b) <= a0)


cdef object _plain_out(object out, cnp.ndarray q, cnp.ndarray k, cnp.ndarray v, int64_t Dv,
                       bint bf16):
    """``out`` when it is a plain destination: exact shape and dtype,
    contiguous, writeable, sharing no byte with q, k, v; else None."""
    if not (_plain_array(out, q.descr.type_num)
            # bfloat16 inputs: a float32 result on request, as attention
            or bf16 and _plain_array(out, cnp.NPY_FLOAT)):
        return None
    cdef cnp.ndarray o = <cnp.ndarray>out
    cdef int nd = q.ndim, ax
    if o.ndim != nd or not cnp.PyArray_ISWRITEABLE(o) or o.shape[nd - 1] != Dv:
        return None
    for ax in range(nd - 1):
        if o.shape[ax] != q.shape[ax]:
            return None
    if not (_disjoint(o, q) and _disjoint(o, k) and _disjoint(o, v)):
        return None
    return o


def attention_plain(query, key, value, score, scale, causal, return_lse, num_threads, out,
                    TilePolicy tiles not None, int64_t serial_work):
    """``cattn.attention`` of a plain call (see above), or None when the
    call is not plain.  ``serial_work``: the serial threshold (_threads)."""
    if causal is not True and causal is not False:
        return None
    if return_lse is not True and return_lse is not False:
        return None
    if not (num_threads is None or type(num_threads) is int and num_threads >= 1):
        return None
    if type(score) is not str:
        return None
    kind = _PLAIN_SCORES.get(score)
    if kind is None or type(query) is not np.ndarray:
        return None
    cdef cnp.ndarray q = <cnp.ndarray>query
    cdef int type_num = q.descr.type_num
    cdef bint bf16 = False
    if type_num != cnp.NPY_FLOAT and type_num != cnp.NPY_DOUBLE:
        # bfloat16 (ml_dtypes) q, k, v: read and written as bfloat16 bits,
        # dot-product scores only (as _plan.io_formats)
        if kind != CATTN_SCORE_DOT or not _is_bf16_descr(q.descr):
            return None
        bf16 = True
    if not (_plain_array(query, type_num) and _plain_array(key, type_num)
            and _plain_array(value, type_num)):
        return None
    cdef cnp.ndarray k = <cnp.ndarray>key, v = <cnp.ndarray>value
    cdef int nd = q.ndim, ax
    if nd < 2 or nd > _PLAIN_MAX_NDIM or k.ndim != nd or v.ndim != nd:
        return None
    for ax in range(nd - 2):
        if k.shape[ax] != q.shape[ax] or v.shape[ax] != q.shape[ax]:
            return None
    cdef int64_t Lq = q.shape[nd - 2], D = q.shape[nd - 1]
    cdef int64_t Lk = k.shape[nd - 2], Dv = v.shape[nd - 1]
    if k.shape[nd - 1] != D or v.shape[nd - 2] != Lk or Lq <= CATTN_DECODE_MAX_LQ:
        return None
    cdef double s
    if scale is None:
        s = 1.0 / sqrt(<double>D) if score == "scaled_dot" else 1.0
    elif type(scale) is float:
        s = scale
        if not (fabs(s) <= _PLAIN_MAX_SCALE):       # also NaN
            return None
    else:
        return None
    if out is not None:
        out = _plain_out(out, q, k, v, Dv, bf16)
        if out is None:
            return None
    return _run_plain(q, k, v, <int>kind, s, causal, return_lse, num_threads, out, tiles,
                      serial_work, bf16)


cdef object _BF16_DESCR = None


cdef bint _is_bf16_descr(cnp.dtype d):
    """``d`` is ml_dtypes.bfloat16 (kind and size first: no import unless
    the dtype could be it; the dtype object is then kept)."""
    global _BF16_DESCR
    if d.kind != b'V' or d.itemsize != 2:
        return False
    if _BF16_DESCR is None:          # first time: the dtype, or False without ml_dtypes
        from cattn._bf16 import bf16_dtype
        dt = bf16_dtype()
        _BF16_DESCR = False if dt is None else dt
    return _BF16_DESCR is not False and d == _BF16_DESCR


cdef object _run_plain(cnp.ndarray q, cnp.ndarray k, cnp.ndarray v, int score_kind,
                       double scale, bint causal, bint return_lse, object num_threads,
                       object out, TilePolicy tiles, int64_t serial_work, bint bf16):
    cdef int nd = q.ndim, ax
    cdef int64_t Lq = q.shape[nd - 2], D = q.shape[nd - 1]
    cdef int64_t Lk = k.shape[nd - 2], Dv = v.shape[nd - 1]
    cdef int64_t N = 1, b
    for ax in range(nd - 2):
        N *= q.shape[ax]
    cdef bint is_double = q.descr.type_num == cnp.NPY_DOUBLE
    # score x feature operations, in double: cannot overflow
    cdef double work = <double>N * <double>Lq * <double>Lk * <double>D
    cdef int n_threads = 1
    if work >= serial_work:
        n_threads = _threads_for(_check_num_threads(num_threads), <int64_t>work)
    cdef cnp.npy_intp dims[64]
    for ax in range(nd - 1):
        dims[ax] = q.shape[ax]
    if out is None:
        dims[nd - 1] = Dv
        out = cnp.PyArray_EMPTY(nd, dims, q.descr.type_num, 0)
    lse = None
    if return_lse:        # bfloat16: lse in float32, the compute type
        lse = cnp.PyArray_EMPTY(nd - 1, dims, cnp.NPY_FLOAT if bf16 else q.descr.type_num, 0)
    cdef cattn_params p
    memset(&p, 0, sizeof(p))
    cdef int64_t *offs = <int64_t *>malloc(4 * N * sizeof(int64_t) + N * sizeof(double))
    if offs == NULL:
        raise MemoryError()
    cdef double *scales = <double *>(offs + 4 * N)
    for b in range(N):
        offs[b] = b * Lq * D
        offs[N + b] = b * Lk * D
        offs[2 * N + b] = b * Lk * Dv
        offs[3 * N + b] = b * Lq * Dv
        scales[b] = scale
    p.n_batch = N; p.Lq = Lq; p.Lk = Lk; p.D = D; p.Dv = Dv
    p.score_kind = score_kind; p.mode = CATTN_MODE_ATTENTION
    p.kv_format = CATTN_KV_BF16 if bf16 else CATTN_KV_NATIVE
    p.q_format = CATTN_IO_BF16 if bf16 else CATTN_IO_NATIVE
    p.out_format = (CATTN_IO_BF16 if bf16 and (<cnp.ndarray>out).descr.type_num != cnp.NPY_FLOAT
                    else CATTN_IO_NATIVE)
    p.q.base = cnp.PyArray_DATA(q); p.q.off = offs; p.q.rs = D; p.q.cs = 1
    p.k.base = cnp.PyArray_DATA(k); p.k.off = offs + N; p.k.rs = D; p.k.cs = 1
    p.v.base = cnp.PyArray_DATA(v); p.v.off = offs + 2 * N; p.v.rs = Dv; p.v.cs = 1
    p.out.base = cnp.PyArray_DATA(<cnp.ndarray>out); p.out.off = offs + 3 * N
    p.out.rs = Dv; p.out.cs = 1
    p.lse = <void *>_ptr(lse)
    p.scale = scales
    p.win_left = CATTN_UNBOUNDED
    p.win_right = 0 if causal else CATTN_UNBOUNDED
    cdef _Run r
    r.p = &p
    r.kern = cattn_kernels_for(is_double, p.kv_format)
    # causal: a query may see up to Lk keys
    tiles.blocks(N, Lq, n_threads, is_double, D, causal, Lk if causal else -1,
                 r.kern.block_q, r.kern.block_k, &p.block_q, &p.block_k)
    r.decode = False
    r.n_qblocks = (Lq + p.block_q - 1) // p.block_q
    r.km_slots = 0
    r.b0 = 0
    cdef int64_t n_work = N * r.n_qblocks, w
    cdef size_t scratch_bytes = r.kern.tile_scratch(&p)
    cdef void *raw
    cdef void *scratch
    try:
        if n_threads > 1 or work >= serial_work:
            _run(&r, n_work, scratch_bytes, n_threads, _poll_signals())
        else:
            # a call this short needs no Ctrl-C polling
            raw = malloc(scratch_bytes + 64)
            if raw == NULL:
                raise MemoryError("cattn: cannot allocate %d bytes of scratch"
                                  % scratch_bytes)
            scratch = <void *>((<size_t>raw + 63) & ~(<size_t>63))
            with nogil:
                for w in range(n_work):
                    r.kern.tile(&p, w // r.n_qblocks, w % r.n_qblocks, scratch)
            free(raw)
    finally:
        free(offs)
    if return_lse:
        return out, lse
    return out


# ------------------------------------------------------------ the backward
# Two kinds of work item (_src/flash_bwd_impl.h): (K/V group, key block)
# computes dK and dV with no race (each owns its rows), and adds dS K to a
# per-thread dQ partial; or, with dq_pass, the partials are left out and a
# second loop over (batch item, query block) computes dQ.

cdef struct _Bwd:
    cattn_bwd_params *bp
    cattn_kernels *kern
    bint q_items
    int64_t n_qblocks
    char *dq0               # thread 0's dQ partial: dQ itself (NULL: no partials)
    char *dq_parts          # the dQ partials of threads 1, 2, ...
    int64_t part_bytes
    bint whole_groups       # an item is a whole K/V group, every key block


cdef void _bwd_item(void *ctx, int64_t w, void *scratch, int tid) noexcept nogil:
    cdef _Bwd *c = <_Bwd *>ctx
    cdef int64_t kb
    if c.q_items:
        c.kern.bwd_q(c.bp, w // c.n_qblocks, w % c.n_qblocks, scratch)
    elif c.whole_groups:
        # the group's queries are its own: its dS K goes straight into dQ
        for kb in range(c.n_qblocks):
            c.kern.bwd_kv(c.bp, w, kb, c.dq0, scratch)
    else:
        c.kern.bwd_kv(c.bp, w // c.n_qblocks, w % c.n_qblocks, _dq_part(c, tid), scratch)


cdef inline void *_dq_part(_Bwd *c, int tid) noexcept nogil:
    if c.dq0 == NULL:
        return NULL
    if tid == 0:
        return c.dq0
    return c.dq_parts + (tid - 1) * c.part_bytes


cdef int _run_bwd(cattn_bwd_params *bp, cattn_kernels *kern, int64_t n_work, bint q_items,
                  int64_t n_qblocks, char *dq0, char *dq_parts, int64_t part_bytes,
                  int n_threads, bint poll, bint whole_groups=False) except -1:
    cdef int status[2]
    cdef double last[1]
    cdef _Bwd c
    c.bp = bp; c.kern = kern; c.q_items = q_items; c.n_qblocks = n_qblocks
    c.dq0 = dq0; c.dq_parts = dq_parts; c.part_bytes = part_bytes
    c.whole_groups = whole_groups
    _arm(status, last)
    bp.f.stop = &status[1]
    bp.f.poll = NULL
    if poll:
        bp.f.poll = _poll_cb
    bp.f.poll_ctx = <void *>last       # this call's own poll clock
    return _run_items(_bwd_item, <void *>&c, n_work, kern.bwd_scratch(bp), n_threads, poll,
                      status, last)


def flash_backward(KernelArgs a, Operand dout not None, delta, dk, dv, group_start,
                   group_items, int num_threads, bint dq_pass, dbias=None, dscore=None,
                   shift=None):
    """The backward kernels of a forward call ``a`` (its ``lse`` set, in
    the compute dtype).  Writes ``dk`` (n_groups, Lk, D) and ``dv``
    (n_groups, Lk, Dv) per K/V group, ``dbias``/``dscore`` (n_batch, Lq,
    Lk) when given, and returns dQ (n_batch, Lq, D) before its scale:
    sum_j dS_ij k_j.  ``dq_pass``: dQ by a second pass over query blocks
    instead of per-thread partials."""
    cdef cattn_bwd_params bp
    memset(&bp, 0, sizeof(bp))
    _fill_params(&bp.f, a, CATTN_MODE_ATTENTION)
    if a.lse is None:
        raise TypeError("flash_backward needs the forward's lse")
    dt = np.float64 if _is_double(a) else np.float32
    cdef int64_t N = a.n_batch, Lq = a.Lq, Lk = a.Lk, D = a.D, Dv = a.Dv
    for name, x, shape in (("delta", delta, (N, Lq)), ("dk", dk, None), ("dv", dv, None),
                           ("dbias", dbias, (N, Lq, Lk)), ("dscore", dscore, (N, Lq, Lk))):
        if x is not None and (x.dtype != dt or not x.flags.c_contiguous
                              or (shape is not None and x.shape != shape)):
            raise TypeError(f"flash_backward: {name} must be a contiguous {np.dtype(dt)} "
                            f"array{'' if shape is None else ' of shape %s' % (shape,)}")
    group_start = _checked(group_start, np.int64, group_start.shape[0], "group_start")
    group_items = _checked(group_items, np.int64, N, "group_items")
    cdef int64_t G = group_start.shape[0] - 1
    if dk.shape != (G, Lk, D) or dv.shape != (G, Lk, Dv):
        raise TypeError("flash_backward: dk/dv must have one (Lk, D) slice per group")
    shift = _checked(shift, np.int64, N, "shift")
    _operand(&bp.dout, dout)
    bp.delta = _ptr(delta)
    bp.dk = <void *>_ptr(dk)
    bp.dv = <void *>_ptr(dv)
    bp.dbias = <void *>_ptr(dbias)
    bp.dscore = <void *>_ptr(dscore)
    bp.group_start = <const int64_t *>_ptr(group_start)
    bp.group_items = <const int64_t *>_ptr(group_items)
    bp.n_groups = G
    bp.shift = <const int64_t *>_ptr(shift)
    cdef cattn_kernels kern = cattn_kernels_for(_is_double(a), CATTN_KV_NATIVE)
    cdef int64_t n_kblocks = (Lk + a.block_k - 1) // a.block_k
    cdef int64_t n_qblocks = (Lq + a.block_q - 1) // a.block_q
    cdef int64_t n_work = G * n_kblocks
    cdef bint poll = _poll_signals()
    cdef int nt = num_threads
    if nt > n_work:
        nt = <int>n_work
    if nt > 1:
        nt = cattn_usable_team(nt)
    if nt < 1:
        nt = 1
    dq = np.zeros((N, Lq, D), dtype=dt)
    # Enough K/V groups to share evenly: a thread takes whole groups, whose
    # queries no other thread touches, and adds dS K straight into dQ (no
    # partials, no dQ pass).  2 threads, medians of 3 alternating runs:
    # (1,12,2048,2048,128), whose partials exceed the cap and took the dQ
    # pass, 532 -> 443 ms; (1,16,1024,1024,64) 79 -> 71; (2,8,256,2048,64)
    # 41 -> 39.
    if nt > 1 and G >= nt and (G % nt == 0 or G >= 4 * nt):
        nt = cattn_usable_team(min(num_threads, <int>G))
        if G > 0 and Lk > 0:
            _run_bwd(&bp, &kern, G, False, n_kblocks, <char *>cnp.PyArray_DATA(dq), NULL,
                     0, nt, poll, True)
        return dq
    # Otherwise thread 0 adds its dS K straight into dQ and threads 1.. into
    # partials, added in place after the loop: the extra memory is the nt - 1
    # partials alone (a (nt, ...) stack summed into a new array cost nt + 1
    # buffers).
    cdef cnp.ndarray parts = None
    cdef char *pp = NULL
    if not dq_pass and nt > 1:
        parts = np.zeros((nt - 1, N, Lq, D), dtype=dt)
        pp = <char *>cnp.PyArray_DATA(parts)
    if n_work > 0:
        _run_bwd(&bp, &kern, n_work, False, n_kblocks,
                 NULL if dq_pass else <char *>cnp.PyArray_DATA(dq), pp,
                 N * Lq * D * (8 if dt is np.float64 else 4), nt, poll)
    if not dq_pass:
        for i in range(nt - 1):          # in thread order, as the stack's sum did
            dq += parts[i]
        return dq
    bp.dq = <void *>cnp.PyArray_DATA(dq)
    nt = num_threads
    if nt > N * n_qblocks:
        nt = <int>(N * n_qblocks)
    if nt > 1:
        nt = cattn_usable_team(nt)
    if N * n_qblocks > 0 and D > 0:
        _run_bwd(&bp, &kern, N * n_qblocks, True, n_qblocks, NULL, NULL, 0, max(nt, 1), poll)
    return dq


# ------------------------------------------------------------ paged K/V
cdef extern from "_src/paged.h" nogil:
    int64_t CATTN_PAGED_MAX_ROWS
    ctypedef struct cattn_paged_params:
        int64_t num_seqs, tokens, H, Hkv, D, Dv
        int64_t num_pages, page_size, max_pages
        int64_t block_q, block_k
        int kv_format
        const void *q
        const void *k_cache
        const void *v_cache
        const float *k_scale
        const float *v_scale
        const int64_t *block_table
        const int64_t *seq_lens
        const int64_t *q_start
        void *out
        void *lse
        double scale, softcap
        const double *sinks
        const double *slopes
        int64_t win_left, win_right
        int (*poll)(void *ctx) noexcept nogil
        void *poll_ctx
        int *stop
    ctypedef struct cattn_paged_kernels:
        const char *isa
        size_t (*decode_scratch)(const cattn_paged_params *pp) noexcept nogil
        void (*decode)(const cattn_paged_params *pp, int64_t s, int64_t h0, int64_t nh,
                       int64_t js, int64_t je, void *acc, void *mm, void *ll,
                       void *scratch) noexcept nogil
        void (*decode_finish)(const cattn_paged_params *pp, int64_t s, int64_t h0, int64_t nh,
                              int64_t n_split, const void *acc, const void *mm,
                              const void *ll) noexcept nogil
        size_t (*tile_scratch)(const cattn_paged_params *pp) noexcept nogil
        void (*tile)(const cattn_paged_params *pp, int64_t s, int64_t h, int64_t qb,
                     void *scratch) noexcept nogil
    cattn_paged_kernels cattn_paged_kernels_for(int is_double, int kv_format)

PAGED_MAX_ROWS = CATTN_PAGED_MAX_ROWS

# A paged work item: (kind, s, h, arg, js, je, acc_row); kind PAGED_DECODE
# streams keys [js, je) of sequence s for heads h .. h + arg - 1 into the
# partials at acc_row; kind PAGED_TILE is query block arg of (s, h).
cdef enum:
    _PAGED_DECODE = 0
    _PAGED_TILE = 1
PAGED_DECODE = _PAGED_DECODE
PAGED_TILE = _PAGED_TILE


cdef struct _Paged:
    cattn_paged_params *pp
    cattn_paged_kernels *kern
    const int64_t *wk       # 7 int64 per work item (see _paged.py)
    char *acc
    char *mm
    char *ll
    size_t isz


cdef void _paged_item(void *ctx, int64_t w, void *scratch, int tid) noexcept nogil:
    cdef _Paged *c = <_Paged *>ctx
    cdef const int64_t *wk = c.wk + 7 * w
    cdef int64_t row = wk[6]
    if wk[0] == _PAGED_TILE:
        c.kern.tile(c.pp, wk[1], wk[2], wk[3], scratch)
    else:
        c.kern.decode(c.pp, wk[1], wk[2], wk[3], wk[4], wk[5], c.acc + row * c.pp.Dv * c.isz,
                      c.mm + row * c.isz, c.ll + row * c.isz, scratch)


cdef int _paged_run(cattn_paged_params *pp, cattn_paged_kernels *kern, const int64_t *wk,
                    int64_t n_work, char *acc, char *mm, char *ll, size_t isz,
                    size_t scratch_bytes, int n_threads, bint poll) except -1:
    """_run on the paged contract."""
    cdef int status[2]
    cdef double last[1]
    cdef _Paged c
    c.pp = pp; c.kern = kern; c.wk = wk; c.acc = acc; c.mm = mm; c.ll = ll; c.isz = isz
    _arm(status, last)
    pp.stop = &status[1]
    pp.poll = NULL
    if poll:
        pp.poll = _poll_cb
    pp.poll_ctx = <void *>last       # this call's own poll clock
    return _run_items(_paged_item, <void *>&c, n_work, scratch_bytes, n_threads, poll,
                      status, last)


def paged(cnp.ndarray q, cnp.ndarray k_cache, cnp.ndarray v_cache,
          cnp.ndarray block_table, cnp.ndarray seq_lens, cnp.ndarray q_start,
          cnp.ndarray out, lse, double scale, double softcap, sinks, slopes,
          int64_t win_left, int64_t win_right, int kv_format, int64_t block_q,
          int64_t block_k, cnp.ndarray work, cnp.ndarray finish, int64_t acc_rows,
          int num_threads, k_scale=None, v_scale=None):
    """Run the paged kernels over the work items ``work`` (int64 (n, 7), in
    the order given: the caller sorts them by cost) and merge the decode
    partials per ``finish`` row (s, h0, nh, n_split, acc_row).  Every array
    is validated and contiguous (cattn._paged); shapes are read from them.
    kv_format KV_I8: the caches are the int8 data and k_scale/v_scale their
    float32 scales (num_pages, Hkv, page_size, ceil(D / 32))."""
    cdef cattn_paged_params pp
    memset(&pp, 0, sizeof(cattn_paged_params))
    cdef bint is_double = q.dtype == np.float64
    for a in (q, k_cache, v_cache, block_table, seq_lens, q_start, out, work, finish):
        if not a.flags.c_contiguous:
            raise TypeError("paged: every array must be C-contiguous")
    if (block_table.dtype != np.int64 or seq_lens.dtype != np.int64
            or q_start.dtype != np.int64 or work.dtype != np.int64
            or finish.dtype != np.int64 or out.dtype != q.dtype
            or work.shape[1] != 7 or finish.shape[1] != 5):
        raise TypeError("paged: wrong array types")
    esz = {CATTN_KV_NATIVE: q.dtype.itemsize, CATTN_KV_F16: 2, CATTN_KV_BF16: 2,
           CATTN_KV_I8: 1}.get(kv_format)
    if (esz is None or k_cache.dtype.itemsize != esz or v_cache.dtype.itemsize != esz
            or k_cache.ndim != 4 or v_cache.ndim != 4):
        raise TypeError("paged: the caches do not match kv_format")
    if kv_format == CATTN_KV_I8:
        for a, c in ((k_scale, k_cache), (v_scale, v_cache)):
            if (not isinstance(a, np.ndarray) or a.dtype != np.float32
                    or not a.flags.c_contiguous or c.dtype != np.int8
                    or a.shape != np.shape(c)[:3] + (-(-np.shape(c)[3] // CATTN_QBLOCK),)):
                raise TypeError("paged: int8 caches need float32 scales of their shape")
        pp.k_scale = <const float *>_ptr(k_scale)
        pp.v_scale = <const float *>_ptr(v_scale)
    pp.num_seqs = seq_lens.shape[0]
    pp.tokens = q.shape[0]; pp.H = q.shape[1]; pp.D = q.shape[2]
    pp.num_pages = k_cache.shape[0]; pp.Hkv = k_cache.shape[1]
    pp.page_size = k_cache.shape[2]; pp.Dv = v_cache.shape[3]
    pp.max_pages = block_table.shape[1]
    pp.block_q = block_q; pp.block_k = block_k
    pp.kv_format = kv_format
    pp.q = cnp.PyArray_DATA(q)
    pp.k_cache = cnp.PyArray_DATA(k_cache)
    pp.v_cache = cnp.PyArray_DATA(v_cache)
    pp.block_table = <const int64_t *>cnp.PyArray_DATA(block_table)
    pp.seq_lens = <const int64_t *>cnp.PyArray_DATA(seq_lens)
    pp.q_start = <const int64_t *>cnp.PyArray_DATA(q_start)
    pp.out = cnp.PyArray_DATA(out)
    pp.lse = <void *>_ptr(lse)
    pp.scale = scale; pp.softcap = softcap
    pp.sinks = <const double *>_ptr(sinks)
    pp.slopes = <const double *>_ptr(slopes)
    pp.win_left = win_left; pp.win_right = win_right
    cdef cattn_paged_kernels kern = cattn_paged_kernels_for(is_double, kv_format)
    cdef int64_t n_work = work.shape[0], n_fin = finish.shape[0], w
    if n_work == 0:
        return
    dt = np.float64 if is_double else np.float32
    part_acc = np.empty((max(acc_rows, 1), max(pp.Dv, 1)), dtype=dt)
    part_m = np.empty(max(acc_rows, 1), dtype=dt)
    part_l = np.empty(max(acc_rows, 1), dtype=dt)
    cdef char *acc = <char *>cnp.PyArray_DATA(part_acc)
    cdef char *mm = <char *>cnp.PyArray_DATA(part_m)
    cdef char *ll = <char *>cnp.PyArray_DATA(part_l)
    cdef size_t isz = 8 if is_double else 4
    cdef const int64_t *wk = <const int64_t *>cnp.PyArray_DATA(work)
    cdef const int64_t *fin = <const int64_t *>cnp.PyArray_DATA(finish)
    cdef size_t scratch_bytes = kern.decode_scratch(&pp)
    if kern.tile_scratch(&pp) > scratch_bytes:
        scratch_bytes = kern.tile_scratch(&pp)
    _paged_run(&pp, &kern, wk, n_work, acc, mm, ll, isz, scratch_bytes, num_threads,
               _poll_signals())
    with nogil:
        for w in range(n_fin):
            kern.decode_finish(&pp, fin[5 * w], fin[5 * w + 1], fin[5 * w + 2],
                               fin[5 * w + 3], acc + fin[5 * w + 4] * pp.Dv * isz,
                               mm + fin[5 * w + 4] * isz, ll + fin[5 * w + 4] * isz)
