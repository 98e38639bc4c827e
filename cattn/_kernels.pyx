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

from cattn._openmp_helpers cimport omp_get_thread_num

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



def flash(dict a, int num_threads):
    """Run the fused kernel over all (batch item, query block) pairs.

    ``a`` holds the operands and geometry prepared by ``_api`` (see the
    fields of ``cattn_params`` in ``_src/flash.h``).  Returns nothing; the
    results are written into ``a["out"]``, ``a["lse"]``, ``a["weights"]``
    or ``a["key_mass"]``.  Raises MemoryError if scratch cannot be had.
    """
    cdef cattn_params p
    _fill_params(&p, a)
    cdef bint is_double = a["q"].dtype == np.float64
    cdef int64_t n_qblocks = (p.Lq + p.block_q - 1) // p.block_q
    cdef int64_t n_work = p.n_batch * n_qblocks
    if n_work == 0:
        return
    cdef size_t scratch_bytes = cattn_scratch_bytes(&p, is_double)
    cdef int n_threads = num_threads
    if n_threads > n_work:
        n_threads = <int>n_work
    cdef int failed[1]
    failed[0] = 0   # an array element stays shared inside the region
    cdef int64_t w
    cdef void *raw = NULL
    cdef void *scratch = NULL

    if n_threads == 1:
        # Small calls stay on the calling thread: no team is started.
        raw = malloc(scratch_bytes + 64)
        if raw == NULL:
            raise MemoryError("cattn: cannot allocate %d bytes of scratch" % scratch_bytes)
        scratch = <void *>((<size_t>raw + 63) & ~(<size_t>63))
        with nogil:
            for w in range(n_work):
                if is_double:
                    cattn_flash_block_f64(&p, w // n_qblocks, w % n_qblocks, scratch)
                else:
                    cattn_flash_block_f32(&p, w // n_qblocks, w % n_qblocks, scratch)
        free(raw)
        return

    with nogil, parallel(num_threads=n_threads):
        raw = malloc(scratch_bytes + 64)
        if raw == NULL:
            failed[0] = 1
        scratch = <void *>((<size_t>raw + 63) & ~(<size_t>63))
        for w in prange(n_work, schedule="dynamic"):
            if raw != NULL:
                if is_double:
                    cattn_flash_block_f64(&p, w // n_qblocks, w % n_qblocks, scratch)
                else:
                    cattn_flash_block_f32(&p, w // n_qblocks, w % n_qblocks, scratch)
        free(raw)
    if failed[0]:
        raise MemoryError("cattn: cannot allocate %d bytes of per-thread scratch" % scratch_bytes)


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
    cdef Py_ssize_t R = x.shape[0], C = x.shape[1], r, c
    cdef floating m, s, e
    if R == 0 or C == 0:
        return
    with nogil:
        for r in prange(R, num_threads=num_threads if R * C > 32768 else 1,
                        schedule="static"):
            m = -INFINITY
            for c in range(C):
                if x[r, c] > m:
                    m = x[r, c]
            if m == -INFINITY:
                s = 0
                for c in range(C):
                    if x[r, c] != x[r, c]:      # all NaN / -inf: NaN stays NaN
                        s = x[r, c]
                for c in range(C):
                    x[r, c] = s
                continue
            s = 0
            for c in range(C):
                if floating is float:
                    e = expf(x[r, c] - m)
                else:
                    e = exp(x[r, c] - m)
                x[r, c] = e
                s = s + e
            s = 1 / s
            for c in range(C):
                x[r, c] = x[r, c] * s


def flash_decode(dict a, int num_threads, int64_t n_split):
    """The decode path: (batch item, key split) work items stream K and V
    once and leave partial results, merged per query by the log-sum-exp
    rule in a second loop of the same parallel region."""
    cdef cattn_params p
    _fill_params(&p, a)
    cdef bint is_double = a["q"].dtype == np.float64
    cdef int64_t N = p.n_batch, Lq = p.Lq, Dv = p.Dv, Lk = p.Lk
    if N == 0 or Lq == 0:
        return
    dt = np.float64 if is_double else np.float32
    part_acc = np.empty((N, n_split, Lq, max(Dv, 1)), dtype=dt)
    part_m = np.empty((N, n_split, Lq), dtype=dt)
    part_l = np.empty((N, n_split, Lq), dtype=dt)
    cdef char *acc = <char *>cnp.PyArray_DATA(part_acc)
    cdef char *mm = <char *>cnp.PyArray_DATA(part_m)
    cdef char *ll = <char *>cnp.PyArray_DATA(part_l)
    cdef size_t isz = 8 if is_double else 4
    cdef int64_t chunk = (Lk + n_split - 1) // n_split
    chunk = ((chunk + 63) // 64) * 64
    cdef int64_t n_work = N * n_split, w, b, sp, js, je
    cdef size_t scratch_bytes = cattn_decode_scratch_bytes(&p, is_double)
    cdef int n_threads = num_threads
    if n_threads > n_work:
        n_threads = <int>n_work
    if n_threads < 1:
        n_threads = 1
    cdef int failed[1]
    failed[0] = 0
    cdef void *raw = NULL
    cdef void *scratch = NULL
    with nogil, parallel(num_threads=n_threads):
        raw = malloc(scratch_bytes + 64)
        if raw == NULL:
            failed[0] = 1
        scratch = <void *>((<size_t>raw + 63) & ~(<size_t>63))
        for w in prange(n_work, schedule="dynamic"):
            if raw != NULL:
                b = w // n_split
                sp = w % n_split
                js = sp * chunk
                je = js + chunk
                if je > Lk:
                    je = Lk
                if is_double:
                    cattn_decode_block_f64(&p, b, js, je,
                                           <double *>(acc + w * Lq * Dv * isz),
                                           <double *>(mm + w * Lq * isz),
                                           <double *>(ll + w * Lq * isz), scratch)
                else:
                    cattn_decode_block_f32(&p, b, js, je,
                                           <float *>(acc + w * Lq * Dv * isz),
                                           <float *>(mm + w * Lq * isz),
                                           <float *>(ll + w * Lq * isz), scratch)
        free(raw)
        for w in prange(N * Lq, schedule="static"):
            b = w // Lq
            if is_double:
                cattn_decode_finish_f64(&p, b, w % Lq, n_split,
                                        <double *>(acc + b * n_split * Lq * Dv * isz),
                                        <double *>(mm + b * n_split * Lq * isz),
                                        <double *>(ll + b * n_split * Lq * isz))
            else:
                cattn_decode_finish_f32(&p, b, w % Lq, n_split,
                                        <float *>(acc + b * n_split * Lq * Dv * isz),
                                        <float *>(mm + b * n_split * Lq * isz),
                                        <float *>(ll + b * n_split * Lq * isz))
    if failed[0]:
        raise MemoryError("cattn: cannot allocate %d bytes of per-thread scratch" % scratch_bytes)


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
    cdef int64_t bq = 128
    cdef int64_t n_qblocks, n_work, w
    cdef size_t scratch_bytes
    cdef void *raw
    cdef void *scratch
    try:
        bq = ((Lq + 15) // 16) * 16
        if bq > 128:
            bq = 128
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
