/*
 * int8 K/V rows (CATTN_KV_I8, llama.cpp's q8_0 layout): int8 values with a
 * float32 scale per CATTN_QBLOCK values along the row.  The steps the tile
 * and decode paths share, written once on the primitives (vload_i8 widens
 * VL int8 values exactly).  Included by instantiate.h after simd_math.h.
 */
#define QB CATTN_QBLOCK

/* one row's n values dequantised into dst (value = int8 * scale) */
static inline void SUF(q8_row)(const int8_t *x, const float *xs, int64_t n, T *dst)
{
    for (int64_t c0 = 0, g = 0; c0 < n; c0 += QB, g++) {
        const int64_t c1 = imin(c0 + QB, n);
        const T sg = (T)xs[g];
        const V s = vset1(sg);
        int64_t c = c0;
        for (; c + VL <= c1; c += VL) vstore(dst + c, vload_i8(x + c) * s);
        for (; c < c1; c++) dst[c] = (T)x[c] * sg;
    }
}

/* rows of an int8 tile (row stride rs, scale-row stride srs) into scratch
   with leading dimension ld */
static void SUF(q8_rows)(const int8_t *src, int64_t rs, const float *sc, int64_t srs,
                         int64_t n_rows, int64_t n, T *dst, int64_t ld)
{
    for (int64_t r = 0; r < n_rows; r++) SUF(q8_row)(src + r * rs, sc + r * srs, n, dst + r * ld);
}

/* sum_d a[d] x[d] scale(d): the int8 products summed per block, each block
   sum multiplied by its scale once */
static inline T SUF(dot_q8)(const T *a, const int8_t *x, const float *xs, int64_t n)
{
    V acc0 = {0}, acc1 = {0};
    int64_t c0 = 0, g = 0;
    for (; c0 + QB <= n; c0 += QB, g++) {
        V b0 = {0}, b1 = {0};
        for (int64_t c = c0; c < c0 + QB; c += 2 * VL) {
            b0 += vload(a + c) * vload_i8(x + c);
            b1 += vload(a + c + VL) * vload_i8(x + c + VL);
        }
        /* two chains over the blocks */
        if (g & 1) acc1 += (b0 + b1) * vset1((T)xs[g]);
        else acc0 += (b0 + b1) * vset1((T)xs[g]);
    }
    T s = hsum(acc0 + acc1);
    if (c0 < n) {     /* the last, shorter block */
        V b0 = {0};
        int64_t c = c0;
        for (; c + VL <= n; c += VL) b0 += vload(a + c) * vload_i8(x + c);
        T t = hsum(b0);
        for (; c < n; c++) t += a[c] * (T)x[c];
        s += t * (T)xs[g];
    }
    return s;
}

/* dot_q8 of one query with four int8 rows (x, x + rs, ...; scales xs,
   xs + srs, ...): each query vector loaded once for the four, the four
   sums reduced together (hsum4).  Rows whose length is not a whole number
   of blocks go one at a time. */
static inline void SUF(dot4_q8)(const T *a, const int8_t *x, int64_t rs, const float *xs,
                                int64_t srs, int64_t n, T *out)
{
    if (n % QB || QB % (2 * VL)) {
        for (int r = 0; r < 4; r++) out[r] = SUF(dot_q8)(a, x + r * rs, xs + r * srs, n);
        return;
    }
    V acc[4] = {vset1(0), vset1(0), vset1(0), vset1(0)};
    for (int64_t c0 = 0, g = 0; c0 < n; c0 += QB, g++) {
        /* two chains a row: each product one FMA (as scores_mq_q8_n) */
        V b[4] = {vset1(0), vset1(0), vset1(0), vset1(0)};
        V e[4] = {vset1(0), vset1(0), vset1(0), vset1(0)};
        for (int64_t c = c0; c < c0 + QB; c += 2 * VL) {
            const V q0 = vload(a + c), q1 = vload(a + c + VL);
            for (int r = 0; r < 4; r++) {
                b[r] += q0 * vload_i8(x + r * rs + c);
                e[r] += q1 * vload_i8(x + r * rs + c + VL);
            }
        }
        for (int r = 0; r < 4; r++) acc[r] += (b[r] + e[r]) * vset1((T)xs[r * srs + g]);
    }
    hsum4(acc[0], acc[1], acc[2], acc[3], out);
}

/* acc[c:c + U VL] += sum_t e[t] * row(keys[t])[c:c + U VL] for nk int8 rows
   (row j at j rs past xb, its scales at j srs past sb): U accumulator
   vectors held in registers across the rows, as pv_rows_h does for
   float16 (U is a constant where this is inlined) */
CATTN_STEP void SUF(pv_block_q8)(const T *e, const int64_t *keys, int64_t nk,
                                 const int8_t *xb, int64_t rs, const float *sb, int64_t srs,
                                 T *acc, int64_t c, const int U)
{
    V a[8];
    for (int u = 0; u < U; u++) a[u] = vload(acc + c + u * VL);
    /* G vectors share one weight e[t] * scale: a whole block's where U VL
       values are a whole number of blocks (c then starts one), else one */
    const int G = (U * VL) % QB == 0 && QB % VL == 0 ? QB / VL : 1;
    for (int64_t t = 0; t < nk; t++) {
        const int8_t *x = xb + keys[t] * rs + c;
        const float *xs = sb + keys[t] * srs;
        const T et = e[t];
        for (int u0 = 0; u0 < U; u0 += G) {
            const V w = vset1(et * (T)xs[(c + u0 * VL) / QB]);
            for (int u = u0; u < u0 + G; u++) a[u] += w * vload_i8(x + u * VL);
        }
    }
    for (int u = 0; u < U; u++) vstore(acc + c + u * VL, a[u]);
}

static inline void SUF(pv_rows_q8)(const T *e, const int64_t *keys, int64_t nk,
                                   const int8_t *xb, int64_t rs, const float *sb, int64_t srs,
                                   T *acc, int64_t n)
{
    int64_t c = 0;
    for (; c + 8 * VL <= n; c += 8 * VL) SUF(pv_block_q8)(e, keys, nk, xb, rs, sb, srs, acc, c, 8);
    for (; c + 4 * VL <= n; c += 4 * VL) SUF(pv_block_q8)(e, keys, nk, xb, rs, sb, srs, acc, c, 4);
    for (; c + VL <= n; c += VL) SUF(pv_block_q8)(e, keys, nk, xb, rs, sb, srs, acc, c, 1);
    for (; c < n; c++) {
        T a0 = acc[c];
        for (int64_t t = 0; t < nk; t++)
            a0 += e[t] * ((T)xb[keys[t] * rs + c] * (T)sb[keys[t] * srs + c / QB]);
        acc[c] = a0;
    }
}

/* Several queries (GQA folded, a few new tokens, a paged item's rows; the
   dispatchers scores_mq_q8/pv_mq_q8 take any number in passes of 8) over
   the same int8 rows (row j at ri[j] rows past the base, or j where ri is
   NULL): each row
   is widened and scaled once for all of them (the per-query path widens
   it once per query; measured 1.0x the float16 time at (1,32,1,4096,128)
   with 8 key/value heads, where widening, not memory, was the bound).
   NQC is a constant where these are inlined (a switch picks it), so the
   per-query accumulators live in registers. */

/* S[i * sld + j] = q_i . row_j for the nk rows of a chunk, i < NQC: two
   accumulators a row, so each product is one FMA (a single accumulator
   took a multiply, an FMA and an add per two products; 32 heads over 8,
   4,096 keys, 1 thread: 1.48 -> 1.41 ms, medians of 5, alternating) */
CATTN_STEP void SUF(scores_mq_q8_n)(const T *qs, int64_t qld, const int8_t *kb, int64_t rs,
                                    const float *sb, int64_t srs, const int64_t *ri,
                                    int64_t nk, int64_t D, T *S, int64_t sld, const int NQC)
{
    for (int64_t j = 0; j < nk; j++) {
        const int64_t r = ri ? ri[j] : j;
        const int8_t *x = kb + r * rs;
        const float *xs = sb + r * srs;
        V a[CATTN_DECODE_MAX_LQ], b[CATTN_DECODE_MAX_LQ];
        for (int i = 0; i < NQC; i++) a[i] = b[i] = vset1(0);
        int64_t c = 0;
        /* 2 VL values never straddle a scale block (VL divides QB / 2) */
        for (; c + 2 * VL <= D; c += 2 * VL) {
            const V sg = vset1((T)xs[c / QB]);
            const V k0 = vload_i8(x + c) * sg, k1 = vload_i8(x + c + VL) * sg;
            for (int i = 0; i < NQC; i++) {
                a[i] += vload(qs + i * qld + c) * k0;
                b[i] += vload(qs + i * qld + c + VL) * k1;
            }
        }
        for (int i = 0; i < NQC; i++) a[i] += b[i];
        for (; c + VL <= D; c += VL) {
            const V k0 = vload_i8(x + c) * vset1((T)xs[c / QB]);
            for (int i = 0; i < NQC; i++) a[i] += vload(qs + i * qld + c) * k0;
        }
        T t[CATTN_DECODE_MAX_LQ];
        if (NQC == 4) hsum4(a[0], a[1], a[2], a[3], t);
        else for (int i = 0; i < NQC; i++) t[i] = hsum(a[i]);
        for (int i = 0; i < NQC; i++) {
            for (int64_t d = c; d < D; d++) t[i] += qs[i * qld + d] * ((T)x[d] * (T)xs[d / QB]);
            S[i * sld + j] = t[i];
        }
    }
}

/* acc_i[0:n] += sum_t E[i * eld + t] row_t for the nk rows of a chunk (a
   zero weight for a masked key: int8 rows are finite, so 0 x row is 0) */
CATTN_STEP void SUF(pv_mq_q8_n)(const T *E, int64_t eld, const int8_t *xb, int64_t rs,
                                const float *sb, int64_t srs, const int64_t *ri, int64_t nk,
                                T *acc, int64_t ald, int64_t n, const int NQC)
{

    int64_t c = 0;
    for (; c + 2 * VL <= n; c += 2 * VL) {
        V a[CATTN_DECODE_MAX_LQ][2];
        for (int i = 0; i < NQC; i++) {
            a[i][0] = vload(acc + i * ald + c);
            a[i][1] = vload(acc + i * ald + c + VL);
        }
        for (int64_t t = 0; t < nk; t++) {
            const int64_t r = ri ? ri[t] : t;
            const int8_t *x = xb + r * rs + c;
            const V sg = vset1((T)sb[r * srs + c / QB]);
            const V v0 = vload_i8(x) * sg, v1 = vload_i8(x + VL) * sg;
            for (int i = 0; i < NQC; i++) {
                const V w = vset1(E[i * eld + t]);
                a[i][0] += w * v0;
                a[i][1] += w * v1;
            }
        }
        for (int i = 0; i < NQC; i++) {
            vstore(acc + i * ald + c, a[i][0]);
            vstore(acc + i * ald + c + VL, a[i][1]);
        }
    }
    for (; c < n; c++)
        for (int i = 0; i < NQC; i++) {
            T a0 = acc[i * ald + c];
            for (int64_t t = 0; t < nk; t++) {
                const int64_t r = ri ? ri[t] : t;
                a0 += E[i * eld + t] * ((T)xb[r * rs + c] * (T)sb[r * srs + c / QB]);
            }
            acc[i * ald + c] = a0;
        }
}

#define CATTN_MQ_SWITCH(nq, call)                                              \
    switch (nq) {                                                              \
    case 1: call(1); break;                                                    \
    case 2: call(2); break; case 3: call(3); break; case 4: call(4); break;    \
    case 5: call(5); break; case 6: call(6); break; case 7: call(7); break;    \
    default: call(8); break; }

/* any number of rows, in passes of at most CATTN_DECODE_MAX_LQ */
static void SUF(scores_mq_q8)(const T *qs, int64_t qld, int64_t nq, const int8_t *kb, int64_t rs,
                              const float *sb, int64_t srs, const int64_t *ri, int64_t nk,
                              int64_t D, T *S, int64_t sld)
{
    for (int64_t r = 0; r < nq; r += CATTN_DECODE_MAX_LQ) {
        const T *q = qs + r * qld;
        T *o = S + r * sld;
#define CATTN_MQ_CALL(n) SUF(scores_mq_q8_n)(q, qld, kb, rs, sb, srs, ri, nk, D, o, sld, n)
        CATTN_MQ_SWITCH(imin(CATTN_DECODE_MAX_LQ, nq - r), CATTN_MQ_CALL)
#undef CATTN_MQ_CALL
    }
}

static void SUF(pv_mq_q8)(const T *E, int64_t eld, int64_t nq, const int8_t *xb, int64_t rs,
                          const float *sb, int64_t srs, const int64_t *ri, int64_t nk, T *acc,
                          int64_t ald, int64_t n)
{
    for (int64_t r = 0; r < nq; r += CATTN_DECODE_MAX_LQ) {
        const T *e = E + r * eld;
        T *a = acc + r * ald;
#define CATTN_MQ_CALL(m) SUF(pv_mq_q8_n)(e, eld, xb, rs, sb, srs, ri, nk, a, ald, n, m)
        CATTN_MQ_SWITCH(imin(CATTN_DECODE_MAX_LQ, nq - r), CATTN_MQ_CALL)
#undef CATTN_MQ_CALL
    }
}
#undef CATTN_MQ_SWITCH
#undef QB
