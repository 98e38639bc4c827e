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
  SciPy's BLAS (``scipy.linalg.cython_blas``), one GEMM per batch item; the
  caller holds BLAS to one thread while our OpenMP team runs.
* ``softmax_rows``: the stable softmax, one row per iteration.
"""
import numpy as np
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset
from libc.math cimport exp, expf, INFINITY
from scipy.linalg.cython_blas cimport sgemm, dgemm

from cattn._openmp_helpers cimport omp_get_thread_num, omp_get_wtime, cattn_usable_team
import threading

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
    int64_t CATTN_UNBOUNDED
    ctypedef struct cattn_params:
        int64_t n_batch, Lq, Lk, D, Dv
        int64_t block_q, block_k
        int score_kind
        int mode
        int kv_half
        const void *q
        const int64_t *q_off
        int64_t q_rs, q_cs
        const void *k
        const int64_t *k_off
        int64_t k_rs
        const void *v
        const int64_t *v_off
        int64_t v_rs
        void *out
        const int64_t *out_off
        int64_t out_rs, out_cs
        void *lse
        void *lse_m
        void *lse_logl
        void *weights
        void *key_mass
        const double *scale
        const void *add_w
        const uint8_t *mask
        const int64_t *mask_off
        int64_t mask_rs, mask_cs
        const void *bias
        const int64_t *bias_off
        int64_t bias_rs, bias_cs
        const int64_t *kv_len
        const int64_t *q_len
        const int64_t *q_seg
        const int64_t *q_seg_off
        int64_t q_seg_s
        const int64_t *kv_seg
        const int64_t *kv_seg_off
        int64_t kv_seg_s
        const double *sinks
        double softcap
        int64_t win_left, win_right
        int (*poll)() noexcept nogil
        int *stop
    size_t cattn_scratch_bytes(const cattn_params *p, int is_double)
    void cattn_flash_block_f32(const cattn_params *p, int64_t b, int64_t qb, void *scratch) noexcept
    void cattn_flash_block_f64(const cattn_params *p, int64_t b, int64_t qb, void *scratch) noexcept
    const char *cattn_isa_name()
    int64_t CATTN_DECODE_MAX_LQ
    size_t cattn_decode_scratch_bytes(const cattn_params *p, int is_double)
    void cattn_decode_block_f32(const cattn_params *p, int64_t b, int64_t js, int64_t je,
                                float *acc, float *mm, float *ll, void *scratch) noexcept
    void cattn_decode_block_f64(const cattn_params *p, int64_t b, int64_t js, int64_t je,
                                double *acc, double *mm, double *ll, void *scratch) noexcept
    void cattn_decode_finish_f32(const cattn_params *p, int64_t b, int64_t i, int64_t n_split,
                                 const float *acc, const float *mm, const float *ll) noexcept
    void cattn_decode_finish_f64(const cattn_params *p, int64_t b, int64_t i, int64_t n_split,
                                 const double *acc, const double *mm, const double *ll) noexcept


MODE_ATTENTION = CATTN_MODE_ATTENTION
MODE_WEIGHTS = CATTN_MODE_WEIGHTS
MODE_KEY_MASS = CATTN_MODE_KEY_MASS
MODE_SCORES = CATTN_MODE_SCORES
UNBOUNDED = CATTN_UNBOUNDED
DECODE_MAX_LQ = CATTN_DECODE_MAX_LQ
SCORE_KINDS = {"dot": CATTN_SCORE_DOT, "scaled_dot": CATTN_SCORE_DOT,
               "cosine": CATTN_SCORE_COSINE, "additive": CATTN_SCORE_ADDITIVE}


def isa_name():
    """The micro-kernel variant chosen for this CPU."""
    return cattn_isa_name().decode()


cdef inline const void *_ptr(object a):
    if a is None:
        return NULL
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef void _fill_params(cattn_params *p, dict a) except *:
    p.n_batch = a["n_batch"]; p.Lq = a["Lq"]; p.Lk = a["Lk"]
    p.D = a["D"]; p.Dv = a["Dv"]
    p.block_q = a["block_q"]; p.block_k = a["block_k"]
    p.score_kind = a["score_kind"]; p.mode = a["mode"]
    p.kv_half = a.get("kv_half", 0)
    p.q = _ptr(a["q"]); p.q_off = <const int64_t *>_ptr(a["q_off"])
    p.q_rs = a["q_rs"]; p.q_cs = a["q_cs"]
    p.k = _ptr(a["k"]); p.k_off = <const int64_t *>_ptr(a["k_off"]); p.k_rs = a["k_rs"]
    p.v = _ptr(a["v"]); p.v_off = <const int64_t *>_ptr(a["v_off"]); p.v_rs = a["v_rs"]
    p.out = <void *>_ptr(a.get("out")); p.out_off = <const int64_t *>_ptr(a.get("out_off"))
    p.out_rs = a.get("out_rs", 0); p.out_cs = a.get("out_cs", 0)
    p.lse = <void *>_ptr(a.get("lse"))
    p.lse_m = <void *>_ptr(a.get("lse_m"))
    p.lse_logl = <void *>_ptr(a.get("lse_logl"))
    p.weights = <void *>_ptr(a.get("weights"))
    p.key_mass = <void *>_ptr(a.get("key_mass"))
    p.scale = <const double *>_ptr(a["scale"])
    p.add_w = _ptr(a.get("add_w"))
    p.mask = <const uint8_t *>_ptr(a.get("mask"))
    p.mask_off = <const int64_t *>_ptr(a.get("mask_off"))
    p.mask_rs = a.get("mask_rs", 0); p.mask_cs = a.get("mask_cs", 0)
    p.bias = _ptr(a.get("bias")); p.bias_off = <const int64_t *>_ptr(a.get("bias_off"))
    p.bias_rs = a.get("bias_rs", 0); p.bias_cs = a.get("bias_cs", 0)
    p.kv_len = <const int64_t *>_ptr(a.get("kv_len"))
    p.q_len = <const int64_t *>_ptr(a.get("q_len"))
    p.q_seg = <const int64_t *>_ptr(a.get("q_seg"))
    p.q_seg_off = <const int64_t *>_ptr(a.get("q_seg_off")); p.q_seg_s = a.get("q_seg_s", 0)
    p.kv_seg = <const int64_t *>_ptr(a.get("kv_seg"))
    p.kv_seg_off = <const int64_t *>_ptr(a.get("kv_seg_off")); p.kv_seg_s = a.get("kv_seg_s", 0)
    p.sinks = <const double *>_ptr(a.get("sinks"))
    p.softcap = a.get("softcap", 0.0)
    p.win_left = a.get("win_left", CATTN_UNBOUNDED)
    p.win_right = a.get("win_right", CATTN_UNBOUNDED)



cdef extern from "Python.h":
    int PyErr_CheckSignals()


# One driver serves the tile and the decode kernels: it runs work items
# under prange (or on the calling thread when one thread is asked for, so a
# forked child never enters OpenMP), with per-thread scratch, and lets the
# main thread poll for Ctrl-C between items.
cdef struct _Run:
    cattn_params *p
    bint is_double
    bint decode
    int64_t n_qblocks
    int64_t n_split
    int64_t chunk
    char *acc
    char *mm
    char *ll


cdef void _work_item(_Run *r, int64_t w, void *scratch) noexcept nogil:
    cdef int64_t b, sp, js, je, Lq, Dv
    cdef size_t isz
    if not r.decode:
        if r.is_double:
            cattn_flash_block_f64(r.p, w // r.n_qblocks, w % r.n_qblocks, scratch)
        else:
            cattn_flash_block_f32(r.p, w // r.n_qblocks, w % r.n_qblocks, scratch)
        return
    b = w // r.n_split
    sp = w % r.n_split
    js = sp * r.chunk
    je = js + r.chunk
    if je > r.p.Lk:
        je = r.p.Lk
    Lq = r.p.Lq
    Dv = r.p.Dv
    isz = 8 if r.is_double else 4
    if r.is_double:
        cattn_decode_block_f64(r.p, b, js, je, <double *>(r.acc + w * Lq * Dv * isz),
                               <double *>(r.mm + w * Lq * isz),
                               <double *>(r.ll + w * Lq * isz), scratch)
    else:
        cattn_decode_block_f32(r.p, b, js, je, <float *>(r.acc + w * Lq * Dv * isz),
                               <float *>(r.mm + w * Lq * isz),
                               <float *>(r.ll + w * Lq * isz), scratch)


# Seconds between two polls for pending signals (Ctrl-C).
cdef double _SIGNAL_POLL = 0.02


cdef int _interrupted(double *last) noexcept nogil:
    """On the main thread: re-acquire the GIL briefly, every _SIGNAL_POLL
    seconds, and run Python's signal handlers.  True when one raised."""
    cdef double now = omp_get_wtime()
    if now - last[0] < _SIGNAL_POLL:
        return 0
    last[0] = now
    with gil:
        return PyErr_CheckSignals() != 0


cdef double _poll_last = 0


cdef int _poll_cb() noexcept nogil:
    """The kernels' in-tile poll (thread 0 of a call from the main thread):
    Python's signal handlers every _SIGNAL_POLL seconds."""
    global _poll_last
    cdef double now = omp_get_wtime()
    if now - _poll_last < _SIGNAL_POLL:
        return 0
    _poll_last = now
    with gil:
        return PyErr_CheckSignals() != 0


cdef int _run(_Run *r, int64_t n_work, size_t scratch_bytes, int n_threads,
              bint poll) except -1:
    cdef int status[2]      # [0] scratch allocation failed, [1] interrupted
    cdef double last[1]
    cdef int64_t w
    cdef void *raw = NULL
    cdef void *scratch = NULL
    status[0] = 0
    status[1] = 0
    last[0] = omp_get_wtime()
    # inside work items too: one item can span millions of keys
    global _poll_last
    _poll_last = last[0]
    r.p.stop = &status[1]
    r.p.poll = NULL
    if poll:
        r.p.poll = _poll_cb
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
                _work_item(r, w, scratch)
        free(raw)
    else:
        with nogil, parallel(num_threads=n_threads):
            raw = malloc(scratch_bytes + 64)
            if raw == NULL:
                status[0] = 1
            scratch = <void *>((<size_t>raw + 63) & ~(<size_t>63))
            for w in prange(n_work, schedule="dynamic"):
                if raw == NULL or status[1]:
                    continue
                if poll and omp_get_thread_num() == 0 and _interrupted(last):
                    status[1] = 1
                    continue
                _work_item(r, w, scratch)
            free(raw)
    if status[1]:
        return -1           # the signal handler's exception is set
    if status[0]:
        raise MemoryError("cattn: cannot allocate %d bytes of per-thread scratch"
                          % scratch_bytes)
    return 0


def _poll_signals():
    return threading.current_thread() is threading.main_thread()


def flash(dict a, int num_threads):
    """Run the fused kernel over all (batch item, query block) pairs.

    ``a`` holds the operands and geometry prepared by ``_api`` (see the
    fields of ``cattn_params`` in ``_src/flash.h``).  Returns nothing; the
    results are written into ``a["out"]``, ``a["lse"]``, ``a["weights"]``
    or ``a["key_mass"]``.  Raises MemoryError if scratch cannot be had and
    KeyboardInterrupt (or whatever a signal handler raises) on Ctrl-C.
    """
    cdef cattn_params p
    _fill_params(&p, a)
    cdef _Run r
    r.p = &p
    r.is_double = a["q"].dtype == np.float64
    r.decode = False
    r.n_qblocks = (p.Lq + p.block_q - 1) // p.block_q
    cdef int64_t n_work = p.n_batch * r.n_qblocks
    if n_work == 0:
        return
    _run(&r, n_work, cattn_scratch_bytes(&p, r.is_double), num_threads, _poll_signals())


def flash_decode(dict a, int num_threads, int64_t n_split):
    """The decode path: (batch item, key split) work items stream K and V
    once and leave partial results, merged per query by the log-sum-exp
    rule afterwards."""
    cdef cattn_params p
    _fill_params(&p, a)
    cdef _Run r
    r.p = &p
    r.is_double = a["q"].dtype == np.float64
    r.decode = True
    cdef int64_t N = p.n_batch, Lq = p.Lq, Dv = p.Dv, Lk = p.Lk, w, b
    if N == 0 or Lq == 0:
        return
    dt = np.float64 if r.is_double else np.float32
    part_acc = np.empty((N, n_split, Lq, max(Dv, 1)), dtype=dt)
    part_m = np.empty((N, n_split, Lq), dtype=dt)
    part_l = np.empty((N, n_split, Lq), dtype=dt)
    r.acc = <char *>cnp.PyArray_DATA(part_acc)
    r.mm = <char *>cnp.PyArray_DATA(part_m)
    r.ll = <char *>cnp.PyArray_DATA(part_l)
    cdef size_t isz = 8 if r.is_double else 4
    r.n_split = n_split
    r.chunk = (Lk + n_split - 1) // n_split
    r.chunk = ((r.chunk + 63) // 64) * 64
    _run(&r, N * n_split, cattn_decode_scratch_bytes(&p, r.is_double), num_threads,
         _poll_signals())
    with nogil:
        for w in range(N * Lq):
            b = w // Lq
            if r.is_double:
                cattn_decode_finish_f64(&p, b, w % Lq, n_split,
                                        <double *>(r.acc + b * n_split * Lq * Dv * isz),
                                        <double *>(r.mm + b * n_split * Lq * isz),
                                        <double *>(r.ll + b * n_split * Lq * isz))
            else:
                cattn_decode_finish_f32(&p, b, w % Lq, n_split,
                                        <float *>(r.acc + b * n_split * Lq * Dv * isz),
                                        <float *>(r.mm + b * n_split * Lq * isz),
                                        <float *>(r.ll + b * n_split * Lq * isz))


cdef inline void _gemm(char *ta, char *tb, int m, int n, int k, floating alpha,
                       floating *A, int lda, floating *B, int ldb,
                       floating *C, int ldc) noexcept nogil:
    cdef floating beta = 0
    if floating is float:
        sgemm(ta, tb, &m, &n, &k, &alpha, A, &lda, B, &ldb, &beta, C, &ldc)
    else:
        dgemm(ta, tb, &m, &n, &k, &alpha, A, &lda, B, &ldb, &beta, C, &ldc)


def _gemm_batched(floating[::1] A, const int64_t[::1] A_off, int lda,
                  floating[::1] B, const int64_t[::1] B_off, int ldb,
                  floating[::1] C, int64_t C_stride, int ldc,
                  bint trans_a, int m, int n, int k, double alpha, int num_threads):
    """C[b] = alpha * op(A[b]) . B[b] (column-major BLAS view) for every batch item.

    Arrays are passed flat (1-D views of the operands' buffers from their
    lowest address), offsets in elements.  Runs the batch under prange with
    one-threaded BLAS when ``num_threads > 1`` (the caller caps BLAS).
    """
    cdef int64_t n_batch = A_off.shape[0], b
    cdef char *ta = b"T" if trans_a else b"N"
    cdef char *tb = b"N"
    cdef floating *pa = &A[0]
    cdef floating *pb = &B[0]
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


def flash_serial_contiguous(cnp.ndarray q, cnp.ndarray k, cnp.ndarray v, double scale,
                            int score_kind):
    """Fast path of ``attention`` for small plain calls on the calling thread:
    C-contiguous q, k, v of one float dtype, identical leading dims, more
    than DECODE_MAX_LQ queries, no options (the caller checks all that).
    Skips the general operand machinery (offsets are built here in C),
    which otherwise dominates the cost of tiny calls."""
    cdef int nd = q.ndim
    cdef int64_t Lq = q.shape[nd - 2], D = q.shape[nd - 1]
    cdef int64_t Lk = k.shape[nd - 2], Dv = v.shape[nd - 1]
    cdef int64_t N = 1, b
    cdef int ax
    for ax in range(nd - 2):
        N *= q.shape[ax]
    cdef cnp.npy_intp dims[32]
    for ax in range(nd - 1):
        dims[ax] = q.shape[ax]
    dims[nd - 1] = Dv
    cdef bint is_double = q.descr.type_num == cnp.NPY_DOUBLE
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(nd, dims, q.descr.type_num, 0)
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
    cdef cattn_params p
    memset(&p, 0, sizeof(p))
    p.n_batch = N; p.Lq = Lq; p.Lk = Lk; p.D = D; p.Dv = Dv
    p.score_kind = score_kind; p.mode = CATTN_MODE_ATTENTION
    p.q = cnp.PyArray_DATA(q); p.q_off = offs; p.q_rs = D; p.q_cs = 1
    p.k = cnp.PyArray_DATA(k); p.k_off = offs + N; p.k_rs = D
    p.v = cnp.PyArray_DATA(v); p.v_off = offs + 2 * N; p.v_rs = Dv
    p.out = cnp.PyArray_DATA(out); p.out_off = offs + 3 * N; p.out_rs = Dv; p.out_cs = 1
    p.scale = scales
    p.win_left = CATTN_UNBOUNDED; p.win_right = CATTN_UNBOUNDED
    cdef int64_t bq = 64
    cdef int64_t n_qblocks, n_work, w
    cdef size_t scratch_bytes
    cdef void *raw
    cdef void *scratch
    try:
        bq = ((Lq + 15) // 16) * 16
        if bq > 64:
            bq = 64
        p.block_q = bq; p.block_k = 128
        n_qblocks = (Lq + bq - 1) // bq
        n_work = N * n_qblocks
        scratch_bytes = cattn_scratch_bytes(&p, is_double)
        raw = malloc(scratch_bytes + 64)
        if raw == NULL:
            raise MemoryError()
        scratch = <void *>((<size_t>raw + 63) & ~(<size_t>63))
        with nogil:
            for w in range(n_work):
                if is_double:
                    cattn_flash_block_f64(&p, w // n_qblocks, w % n_qblocks, scratch)
                else:
                    cattn_flash_block_f32(&p, w // n_qblocks, w % n_qblocks, scratch)
        free(raw)
        return out
    finally:
        free(offs)
