/*
 * The fused attention kernels, written once against the primitives of
 * simd_*.h and simd_math.h (no ISA test in this file).  instantiate.h
 * includes it once per (element type, ISA) with:
 *   T           float or double (the compute type)
 *   CATTN_F64   0 or 1
 *   SUF(name)   the variant suffix (e.g. name##_f32_haswell)
 *
 * Tile path (flash_block): one (batch item, query block), in named steps:
 *   pack_q -> for each key tile: load_kv_tile, tile_scores, mask_tile,
 *   then softmax_tile + pv_tile (attention) or weights_tile (the weights
 *   pass) -> finish_block.
 * Decode path (decode_block/decode_finish): few queries, many keys; K and V
 *   streamed once per key range, partials merged by the log-sum-exp rule.
 * Both paths share row_factor (Q scaling), keep_pair (mask, segments,
 * bias) and fold_sink.
 *
 * Where the next kernels go: a new K/V storage format (bfloat16, int8 with
 * scales) is a new cattn_kv_format value, a widening/dequantising step next
 * to load_kv_tile for the tile path and a dot/axpy pair next to dot_h /
 * pv_rows_h for the decode path; paged K/V replaces the row address
 * `base + off[b] + j * rs` of the K/V operands by a page lookup in
 * load_kv_tile and the decode loops; a backward kernel is a new file
 * (flash_bwd_impl.h) instantiated by the same instantiate.h and entered
 * in the kernel table of flash.c.
 */

/* The tile path's product steps; an instantiation may route them
   elsewhere (flash_bf16_hooks.h: bfloat16 dot products). */
#ifndef CATTN_TILE_PACK_Q
#define CATTN_TILE_PACK_Q SUF(pack_q)
#define CATTN_TILE_LOAD_KV SUF(load_kv_tile)
#define CATTN_TILE_SCORES SUF(tile_scores)
#define CATTN_TILE_PV SUF(pv_tile)
#endif

/* query columns per micro-tile: two vectors */
#define NQ (2 * VL)
/* key rows per S micro-tile, query rows per P.V micro-tile */
#define MR_S 6
#define MR_O 4

/* ---------------------------------------------------------------------- */
/* S^T[0:nk, 0:nqp] = K[0:nk] . Q^T; Q^T is packed panel by panel (NQ  */
/* queries: a contiguous D x NQ block), S^T has leading dimension ld.     */
/* ---------------------------------------------------------------------- */
static void SUF(tile_scores_dot)(const T *K, int64_t k_rs, int64_t nk,
                                 const T *QT, int64_t ld, int64_t nqp,
                                 int64_t D, T *ST)
{
    int64_t j = 0;
    /* 32 registers (AVX-512): 8 key rows x 2 vectors, sixteen accumulators */
    if (CATTN_NREGS >= 32) for (; j + 8 <= nk; j += 8) {
        const T *k0 = K + j * k_rs;
        for (int64_t i = 0; i < nqp; i += NQ) {
            V c[8][2];
            for (int r = 0; r < 8; r++) c[r][0] = c[r][1] = vset1(0);
            const T *qp = QT + i * D;   /* panel i/NQ starts at (i/NQ)*D*NQ */
            for (int64_t d = 0; d < D; d++, qp += NQ) {
                const V b0 = vload(qp), b1 = vload(qp + VL);
                for (int r = 0; r < 8; r++) {
                    const V a = vset1(k0[r * k_rs + d]);
                    c[r][0] += a * b0;
                    c[r][1] += a * b1;
                }
            }
            for (int r = 0; r < 8; r++) {
                vstore(ST + (j + r) * ld + i, c[r][0]);
                vstore(ST + (j + r) * ld + i + VL, c[r][1]);
            }
        }
    }
    for (; j < nk; j += MR_S) {
        const int64_t mr = imin(MR_S, nk - j);
        const T *k0 = K + (j + 0) * k_rs;
        if (mr == MR_S) {
            const T *k1 = k0 + k_rs, *k2 = k1 + k_rs, *k3 = k2 + k_rs,
                    *k4 = k3 + k_rs, *k5 = k4 + k_rs;
            for (int64_t i = 0; i < nqp; i += NQ) {
                V c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0},
                  c30 = {0}, c31 = {0}, c40 = {0}, c41 = {0}, c50 = {0}, c51 = {0};
                const T *qp = QT + i * D;   /* panel i/NQ starts at (i/NQ)*D*NQ */
                for (int64_t d = 0; d < D; d++, qp += NQ) {
                    V b0 = vload(qp), b1 = vload(qp + VL);
                    V a;
                    a = vset1(k0[d]); c00 += a * b0; c01 += a * b1;
                    a = vset1(k1[d]); c10 += a * b0; c11 += a * b1;
                    a = vset1(k2[d]); c20 += a * b0; c21 += a * b1;
                    a = vset1(k3[d]); c30 += a * b0; c31 += a * b1;
                    a = vset1(k4[d]); c40 += a * b0; c41 += a * b1;
                    a = vset1(k5[d]); c50 += a * b0; c51 += a * b1;
                }
                T *s = ST + j * ld + i;
                vstore(s, c00); vstore(s + VL, c01); s += ld;
                vstore(s, c10); vstore(s + VL, c11); s += ld;
                vstore(s, c20); vstore(s + VL, c21); s += ld;
                vstore(s, c30); vstore(s + VL, c31); s += ld;
                vstore(s, c40); vstore(s + VL, c41); s += ld;
                vstore(s, c50); vstore(s + VL, c51);
            }
        } else {
            for (int64_t r = 0; r < mr; r++) {
                const T *kr = k0 + r * k_rs;
                for (int64_t i = 0; i < nqp; i += NQ) {
                    V c0 = {0}, c1 = {0};
                    const T *qp = QT + i * D;   /* panel i/NQ starts at (i/NQ)*D*NQ */
                    for (int64_t d = 0; d < D; d++, qp += NQ) {
                        V a = vset1(kr[d]);
                        c0 += a * vload(qp); c1 += a * vload(qp + VL);
                    }
                    vstore(ST + (j + r) * ld + i, c0);
                    vstore(ST + (j + r) * ld + i + VL, c1);
                }
            }
        }
    }
}

/* additive model: S^T[j, i] = sum_d w_d tanh(Q^T[d, i] + K[j, d]) */
static void SUF(tile_scores_additive)(const T *K, int64_t k_rs, int64_t nk,
                                      const T *QT, int64_t ld, int64_t nqp,
                                      int64_t D, const T *w, T *ST)
{
    for (int64_t j = 0; j < nk; j++) {
        const T *kr = K + j * k_rs;
        for (int64_t i = 0; i < nqp; i += NQ) {
            V c0 = {0}, c1 = {0};
            const T *qp = QT + i * D;   /* panel i/NQ starts at (i/NQ)*D*NQ */
            for (int64_t d = 0; d < D; d++, qp += NQ) {
                V a = vset1(kr[d]), wd = vset1(w[d]);
                c0 += wd * vtanh(vload(qp) + a);
                c1 += wd * vtanh(vload(qp + VL) + a);
            }
            vstore(ST + j * ld + i, c0);
            vstore(ST + j * ld + i + VL, c1);
        }
    }
}

/* ---------------------------------------------------------------------- */
/* O[0:nqp, 0:Dv] += P[0:nqp, ja:jb] . V[ja:jb], P stored transposed.      */
/* O has leading dimension ldo; P^T has ld.                                */
/* ---------------------------------------------------------------------- */
static void SUF(tile_pv)(const T *PT, int64_t ld, int64_t nqp,
                         const T *Vm, int64_t v_rs, int64_t ja, int64_t jb,
                         int64_t Dv, T *O, int64_t ldo)
{
    int64_t c = 0;
    /* 32 registers (AVX-512): 8 query rows x 2 vectors, sixteen
       accumulators -- the 4-row block left FMA latency no slack here */
    if (CATTN_NREGS >= 32) for (; c + NQ <= Dv; c += NQ) {
        for (int64_t i = 0; i < nqp; i += 8) {
            T *o0 = O + i * ldo + c;
            V a[8][2];
            for (int r = 0; r < 8; r++) {
                a[r][0] = vload(o0 + r * ldo);
                a[r][1] = vload(o0 + r * ldo + VL);
            }
            const T *vp = Vm + ja * v_rs + c;
            const T *pp = PT + ja * ld + i;
            for (int64_t j = ja; j < jb; j++, vp += v_rs, pp += ld) {
                const V b0 = vload(vp), b1 = vload(vp + VL);
                for (int r = 0; r < 8; r++) {
                    const V pr = vset1(pp[r]);
                    a[r][0] += pr * b0;
                    a[r][1] += pr * b1;
                }
            }
            for (int r = 0; r < 8; r++) {
                vstore(o0 + r * ldo, a[r][0]);
                vstore(o0 + r * ldo + VL, a[r][1]);
            }
        }
    }
    /* float64: 8 query rows x 1 vector, so each key reads one whole cache
       line of P^T (8 doubles) instead of half of one */
    if (CATTN_F64) for (; c + VL <= Dv; c += VL) {
        for (int64_t i = 0; i < nqp; i += 8) {
            T *o0 = O + i * ldo + c;
            V a0 = vload(o0), a1 = vload(o0 + ldo), a2 = vload(o0 + 2 * ldo),
              a3 = vload(o0 + 3 * ldo), a4 = vload(o0 + 4 * ldo), a5 = vload(o0 + 5 * ldo),
              a6 = vload(o0 + 6 * ldo), a7 = vload(o0 + 7 * ldo);
            const T *vp = Vm + ja * v_rs + c;
            const T *pp = PT + ja * ld + i;
            for (int64_t j = ja; j < jb; j++, vp += v_rs, pp += ld) {
                V b = vload(vp);
                a0 += vset1(pp[0]) * b; a1 += vset1(pp[1]) * b;
                a2 += vset1(pp[2]) * b; a3 += vset1(pp[3]) * b;
                a4 += vset1(pp[4]) * b; a5 += vset1(pp[5]) * b;
                a6 += vset1(pp[6]) * b; a7 += vset1(pp[7]) * b;
            }
            vstore(o0, a0); vstore(o0 + ldo, a1); vstore(o0 + 2 * ldo, a2);
            vstore(o0 + 3 * ldo, a3); vstore(o0 + 4 * ldo, a4); vstore(o0 + 5 * ldo, a5);
            vstore(o0 + 6 * ldo, a6); vstore(o0 + 7 * ldo, a7);
        }
    }
    for (; c + NQ <= Dv; c += NQ) {
        for (int64_t i = 0; i < nqp; i += MR_O) {
            T *o0 = O + i * ldo + c, *o1 = o0 + ldo, *o2 = o1 + ldo, *o3 = o2 + ldo;
            V a00 = vload(o0), a01 = vload(o0 + VL), a10 = vload(o1), a11 = vload(o1 + VL),
              a20 = vload(o2), a21 = vload(o2 + VL), a30 = vload(o3), a31 = vload(o3 + VL);
            const T *vp = Vm + ja * v_rs + c;
            const T *pp = PT + ja * ld + i;
            for (int64_t j = ja; j < jb; j++, vp += v_rs, pp += ld) {
                V b0 = vload(vp), b1 = vload(vp + VL);
                V p;
                p = vset1(pp[0]); a00 += p * b0; a01 += p * b1;
                p = vset1(pp[1]); a10 += p * b0; a11 += p * b1;
                p = vset1(pp[2]); a20 += p * b0; a21 += p * b1;
                p = vset1(pp[3]); a30 += p * b0; a31 += p * b1;
            }
            vstore(o0, a00); vstore(o0 + VL, a01); vstore(o1, a10); vstore(o1 + VL, a11);
            vstore(o2, a20); vstore(o2 + VL, a21); vstore(o3, a30); vstore(o3 + VL, a31);
        }
    }
    for (; c + VL <= Dv; c += VL) {
        for (int64_t i = 0; i < nqp; i++) {
            T *o = O + i * ldo + c;
            V a = vload(o);
            for (int64_t j = ja; j < jb; j++)
                a += vset1(PT[j * ld + i]) * vload(Vm + j * v_rs + c);
            vstore(o, a);
        }
    }
    for (; c < Dv; c++) {
        for (int64_t i = 0; i < nqp; i++) {
            T a = O[i * ldo + c];
            for (int64_t j = ja; j < jb; j++)
                a += PT[j * ld + i] * Vm[j * v_rs + c];
            O[i * ldo + c] = a;
        }
    }
}

/* A row of V holding inf or NaN (x - x is NaN only then).  In vectors: a
   scalar sum is one add-latency chain per element, and the causal
   diagonal tile asks this of every key (measured: 15% of a causal
   (1,8,128,128,64) call). */
static inline int SUF(row_nonfinite)(const T *v, int64_t n)
{
    V acc = vset1(0);
    int64_t c = 0;
    for (; c + VL <= n; c += VL) {
        const V x = vload(v + c);
        acc += x - x;
    }
    T s = hsum(acc);
    for (; c < n; c++) s += v[c] - v[c];
    return s != s;
}

/* ---------------------------------------------------------------------- */
/* Steps shared by the tile and decode paths.                              */
/* ---------------------------------------------------------------------- */

/* 1 / max(|x|, 1e-8) of a row (cosine), in double: the squares are summed
   in double (a float32 row cannot overflow them), and a float64 row whose
   sum of squares overflows is summed again scaled by a power of two (exact),
   so any finite row has its true norm.  A row holding inf or NaN gives
   inf or NaN (its direction is undefined). */
static inline double SUF(inv_norm)(const T *x, int64_t stride, int64_t n)
{
    double ss = 0;
    for (int64_t d = 0; d < n; d++) ss += (double)x[d * stride] * (double)x[d * stride];
    if (ss > DBL_MAX) {
        double amax = 0;
        for (int64_t d = 0; d < n; d++) {
            const double a = fabs((double)x[d * stride]);
            amax = a > amax ? a : amax;
        }
        if (amax <= DBL_MAX) {
            int e;
            (void)frexp(amax, &e);
            const double f = ldexp(1.0, -e);
            ss = 0;
            for (int64_t d = 0; d < n; d++) {
                const double y = (double)x[d * stride] * f;
                ss += y * y;
            }
            return ldexp(1.0 / sqrt(ss), -e);
        }
    }
    const double nrm = sqrt(ss);
    return 1.0 / (nrm > 1e-8 ? nrm : 1e-8);
}

/* Cosine: a key whose 1/|k| is below this (|k| above T's largest value
   over 4 |scale|) may overflow the dot products q . k (q of norm |scale|)
   in T; its scores are computed as q . (k / |k|) in double instead. */
static inline double SUF(cos_tiny)(T scale)
{
    return fabs((double)scale) * 4.0 / (CATTN_F64 ? DBL_MAX : (double)FLT_MAX);
}

/* The factor a query row is multiplied by before the dot products: the
   scale, or the scale over the row's norm (cosine), or 1 (additive: the
   scale applies after the tanh sum).  In double: the product with a float32
   row is rounded once (exact as a float product when the factor is a
   float). */
static inline double SUF(row_factor)(const cattn_params *p, const T *qr, T scale)
{
    if (p->score_kind == CATTN_SCORE_ADDITIVE) return 1;
    if (p->score_kind != CATTN_SCORE_COSINE) return scale;
    return (double)scale * SUF(inv_norm)(qr, p->q.cs, p->D);
}

/* q and out in their storage (cattn_io_format): the element size, the
   address of element idx of batch item b's rows, one value read / written */
CATTN_STEP int64_t SUF(io_size)(int fmt) { return fmt == CATTN_IO_NATIVE ? (int64_t)sizeof(T) : 2; }
CATTN_STEP T SUF(io_get)(int fmt, const void *base, int64_t idx)
{
    if (fmt == CATTN_IO_NATIVE) return ((const T *)base)[idx];
    return (T)cattn_io_to_float(fmt, ((const uint16_t *)base)[idx]);
}
CATTN_STEP void SUF(io_put)(int fmt, void *base, int64_t idx, T x)
{
    if (fmt == CATTN_IO_NATIVE) ((T *)base)[idx] = x;
    else ((uint16_t *)base)[idx] = cattn_io_from_float(fmt, (float)x);
}
/* the bfloat16 bits of x[0:n] into h, in vectors (the scalar rounding was
   a fifth of a bfloat16 call at (1,8,128,128,64): q pairs, out rows) */
CATTN_STEP void SUF(bf16_row)(const T *x, int64_t n, uint16_t *h)
{
    int64_t c = 0;
#if !CATTN_F64
    for (; c + VL <= n; c += VL) vstore_bf16(h + c, vload(x + c));
#endif
    for (; c < n; c++) h[c] = cattn_float_to_bf16((float)x[c]);
}
/* x[0:n] to a row in storage fmt with stride cs */
CATTN_STEP void SUF(io_put_row)(int fmt, void *row, int64_t cs, const T *x, int64_t n)
{
    if (fmt == CATTN_IO_BF16 && cs == 1) {
        SUF(bf16_row)(x, n, (uint16_t *)row);
        return;
    }
    for (int64_t c = 0; c < n; c++) SUF(io_put)(fmt, row, c * cs, x[c]);
}
/* batch item b's q (or out) rows, as bytes */
CATTN_STEP const char *SUF(q_rows)(const cattn_params *p, int64_t b)
{
    return (const char *)p->q.base + p->q.off[b] * SUF(io_size)(p->q_format);
}
CATTN_STEP char *SUF(out_rows)(const cattn_params *p, int64_t b)
{
    return (char *)p->out.base + p->out.off[b] * SUF(io_size)(p->out_format);
}

/* Query row i of batch item b times its row factor, into dst (stride ds),
   widened from a 16-bit q: the product in double, rounded once.  A 16-bit
   q comes with dot-product scores only, whose factor is the scale. */
CATTN_STEP void SUF(q_row_scaled)(const cattn_params *p, int64_t b, int64_t i, T scale,
                                  T *dst, int64_t ds)
{
    const int64_t D = p->D, cs = p->q.cs;
    const char *qb = SUF(q_rows)(p, b);
    if (p->q_format == CATTN_IO_NATIVE) {
        const T *qr = (const T *)qb + i * p->q.rs;
        const double f = SUF(row_factor)(p, qr, scale);
        for (int64_t d = 0; d < D; d++) dst[d * ds] = (T)((double)qr[d * cs] * f);
    } else {
        const uint16_t *qr = (const uint16_t *)qb + i * p->q.rs;
        for (int64_t d = 0; d < D; d++)
            dst[d * ds] = (T)((double)cattn_io_to_float(p->q_format, qr[d * cs]) * (double)scale);
    }
}

/* Whether query ii may attend key jj by the mask, the segment ids and the
   bias (a -inf bias masks); a finite bias is added to *sc.  The window is
   not checked here: both paths clip key ranges to it. */
static inline int SUF(keep_pair)(const cattn_params *p, const uint8_t *mask, const T *bias,
                                 int64_t qsg, const int64_t *kseg, int64_t ii, int64_t jj,
                                 T *sc)
{
    if (mask && !mask[ii * p->mask.rs + jj * p->mask.cs]) return 0;
    if (kseg && kseg[jj * p->kv_seg.rs] != qsg) return 0;
    if (bias) {
        T bb = bias[ii * p->bias.rs + jj * p->bias.cs];
        if (bb == -INFINITY) return 0;
        *sc += bb;
    }
    return 1;
}

/* ACCUMULATION.  Both paths add up sum_j e_j and sum_j e_j v_j over every
   key of a row.  A float running sum that takes one key (or one small
   tile) at a time rounds once per addition, so its error grows with the
   number of keys (with float32 scores scaled to a standard deviation of
   7.5: 1.5-2x the error of a naive float32 softmax(QK^T)V at 2^17 keys,
   8-12x at 2^20; the naive sums are pairwise or blocked).  So the keys
   are summed in blocks, each on its own in T from zero, and the blocks
   are added into running sums held in double: the error is that of one
   block, whatever the key count.  Blocks: the e sums per decode chunk (64
   keys) or tile (128 keys); P.V per DEC_BLOCK chunks (256 keys) or
   TILE_BLOCK tiles (1024 keys) -- adding P.V into double once per chunk
   or tile measured 4-6% slower on the tile path (CPU time, one thread),
   once per 8 tiles no slower; the decode chunk's e sum in double instead
   of T measured 18% slower with a float16 cache.  At 1024 keys the float
   error is still that of the naive computation. */
#define WIDE double
#define DEC_BLOCK 4
#define TILE_BLOCK 8

/* A sink logit joins a row's denominator: with running max *m and sum *l,
   returns the factor the unnormalised output is multiplied by before the
   division by the new *l (a running sum: WIDE).  A -inf sink is no sink
   (a row without keys stays empty: exp(-inf - -inf) would be NaN); an
   unchanged max rescales by exactly 1 (also at m = +inf). */
static inline WIDE SUF(fold_sink)(T sink, T *m, WIDE *l)
{
    if (sink == -INFINITY) return 1;
    T mf = *m > sink ? *m : sink;
    double am = (*m == mf) ? 1.0 : (*m == -INFINITY) ? 0.0 : exp((double)(*m - mf));
    *l = *l * am + (sink == mf ? 1.0 : exp((double)(sink - mf)));
    *m = mf;
    return am;
}

/* Scratch layout of the tile path (in elements of T), every piece rounded
   to 16 elements. */
#define RUP16(x) ((((x) + 15) / 16) * 16)
/* queries are padded to 32, a multiple of every variant's panel (NQ) */
#define RUPQ(x) ((((x) + 31) / 32) * 32)
#define NOFF 10
/* n doubles, in elements of T */
#define WELEMS(n) (RUP16(n) * (int64_t)(sizeof(WIDE) / sizeof(T)))
static void SUF(scratch_layout)(const cattn_params *p, int64_t *bqp, int64_t off[NOFF])
{
    int64_t BQP = RUPQ(p->block_q);
    int64_t BK = RUP16(p->block_k);
    *bqp = BQP;
    off[0] = 0;                                      /* Q^T   D x BQP */
    off[1] = off[0] + RUP16(p->D) * BQP;             /* S^T   BK x BQP */
    off[2] = off[1] + BK * BQP;                      /* O     BQP x Dv: one tile's P.V */
    off[3] = off[2] + BQP * RUP16(p->Dv);            /* m     BQP */
    off[4] = off[3] + BQP;                           /* l     BQP */
    off[5] = off[4] + BQP;                           /* alpha BQP */
    off[6] = off[5] + BQP;                           /* K, V tile (float16, int8 K/V) */
    off[7] = off[6] + (p->kv_format != CATTN_KV_NATIVE ? BK * (RUP16(p->D) + RUP16(p->Dv)) : 0);
    off[8] = off[7] + WELEMS(BQP * RUP16(p->Dv));    /* Ow    BQP x Dv double: sum of P.V */
    off[9] = off[8] + WELEMS(BQP);                   /* lw    BQP double: sum of P */
}

static size_t SUF(scratch_bytes)(const cattn_params *p)
{
    int64_t bqp, off[NOFF];
    SUF(scratch_layout)(p, &bqp, off);
    return (size_t)off[NOFF - 1] * sizeof(T) + 64;
}

/* ---------------------------------------------------------------------- */
/* Tile path: one (batch item, query block).                               */
/* ---------------------------------------------------------------------- */

/* What every step of one block reads: the block's geometry, the batch
   item's operand rows and the scratch pieces. */
typedef struct SUF(blk) {
    const cattn_params *p;
    int64_t b, i0, nq, nq_blk, nqp, ld, shift, kv_len;
    T scale;
    const T *Q, *K, *Vm;
    const uint16_t *Kh, *Vh;
    const uint8_t *mask;
    const T *bias;
    const int64_t *qseg, *kseg;
    T *QT, *ST, *O, *mrow, *lrow, *alpha, *kbuf, *vbuf, *lse;
    WIDE *Ow, *lw;     /* the running sums (ACCUMULATION) */
    int pending;       /* tiles summed in O, not yet added into Ow */
    int flushed;       /* Ow holds a sum (until then it is not read) */
} SUF(blk);

CATTN_STEP void SUF(blk_init)(SUF(blk) *k, const cattn_params *p, int64_t b, int64_t qb,
                          void *scratch)
{
    int64_t BQP, off[NOFF];
    SUF(scratch_layout)(p, &BQP, off);
    T *base = (T *)scratch;
    const int64_t Lq = p->Lq, Lk = p->Lk;
    const int64_t q_len = p->q_len ? p->q_len[b] : Lq;
    k->p = p;
    k->b = b;
    k->i0 = qb * p->block_q;
    k->kv_len = p->kv_len ? p->kv_len[b] : Lk;
    k->nq_blk = imin(p->block_q, Lq - k->i0);
    /* queries past q_len produce 0 and are not computed */
    k->nq = imax(0, imin(k->nq_blk, q_len - k->i0));
    k->nqp = RUPQ(k->nq > 0 ? k->nq : 1);    /* a multiple of NQ */
    k->ld = BQP;
    /* query i sits at key position i + shift: the diagonal (causal) and the
       window centre sit at each sequence's own end, kv_len - q_len */
    k->shift = p->q_pos ? p->q_pos[b] : k->kv_len - q_len;
    k->scale = (T)p->scale[b];
    k->Q = p->q_format == CATTN_IO_NATIVE ? (const T *)p->q.base + p->q.off[b] : NULL;
    k->K = (const T *)p->k.base + p->k.off[b];
    k->Vm = (const T *)p->v.base + p->v.off[b];
    k->Kh = (const uint16_t *)p->k.base + p->k.off[b];
    k->Vh = (const uint16_t *)p->v.base + p->v.off[b];
    k->mask = p->mask.base ? (const uint8_t *)p->mask.base + p->mask.off[b] : NULL;
    k->bias = p->bias.base ? (const T *)p->bias.base + p->bias.off[b] : NULL;
    k->qseg = p->q_seg.base ? (const int64_t *)p->q_seg.base + p->q_seg.off[b] : NULL;
    k->kseg = p->kv_seg.base ? (const int64_t *)p->kv_seg.base + p->kv_seg.off[b] : NULL;
    k->QT = base + off[0]; k->ST = base + off[1]; k->O = base + off[2];
    k->mrow = base + off[3]; k->lrow = base + off[4]; k->alpha = base + off[5];
    k->kbuf = base + off[6]; k->vbuf = k->kbuf + p->block_k * RUP16(p->D);
    k->Ow = (WIDE *)(base + off[7]); k->lw = (WIDE *)(base + off[8]);
    k->lse = p->lse ? (T *)p->lse + b * Lq : NULL;
}

/* The running max, sums and P.V of a block, reset before its first tile. */
CATTN_STEP void SUF(reset_running)(SUF(blk) *k)
{
    /* locals: with -fno-strict-aliasing a store through T * could change
       the struct, and loops reading bounds from it would reload them */
    const int64_t nqp = k->nqp;
    T *mrow = k->mrow, *lrow = k->lrow, *O = k->O;
    WIDE *lw = k->lw;
    for (int64_t i = 0; i < nqp; i++) {
        mrow[i] = -INFINITY; lrow[i] = 0; lw[i] = 0;
    }
    if (k->p->mode == CATTN_MODE_ATTENTION) {
        const int64_t n = nqp * k->p->Dv;
        for (int64_t i = 0; i < n; i++) O[i] = 0;   /* ldo = Dv */
    }
    k->pending = 0;
    k->flushed = 0;
}

/* Q^T packed panel by panel (NQ queries: a contiguous D x NQ block),
   scaled (or normalised for cosine), zero padding; running max/sum reset. */
CATTN_STEP void SUF(pack_q)(SUF(blk) *k)
{
    const cattn_params *p = k->p;
    const int64_t D = p->D, nq = k->nq, nqp = k->nqp, q_rs = p->q.rs, q_cs = p->q.cs;
    const T *Q = p->q_format == CATTN_IO_NATIVE ? k->Q + k->i0 * q_rs : NULL;
    T *QT = k->QT;
    if (p->score_kind == CATTN_SCORE_DOT && p->q_format == CATTN_IO_NATIVE) {
        /* the factor is the scale, a T: q * scale in T is the product
           rounded once, as below.  Panel rows are written whole (a
           column at a time cost one scalar store per element: 5% of a
           (1,8,128,128,64) float32 call) */
        const T s = k->scale;
        for (int64_t i0 = 0; i0 < nqp; i0 += NQ) {
            const int64_t n = imax(0, imin(NQ, nq - i0));
            const T *qp = Q + i0 * q_rs;
            T *panel = QT + i0 * D;
            int64_t d0 = 0;
#ifdef CATTN_HAVE_T32
            /* a whole panel of contiguous rows: 16 x 16 blocks transposed
               in registers ((1,8,128,128,64) float32, 1 thread: see
               simd_avx512.h) */
            if (q_cs == 1 && n == NQ)
                for (; d0 + 16 <= D; d0 += 16)
                    for (int64_t ib = 0; ib < NQ; ib += 16)
                        SUF(t32_16)((const char *)(qp + ib * q_rs + d0), q_rs * (int64_t)sizeof(T),
                                    (uint32_t *)(void *)(panel + d0 * NQ + ib), NQ, s, 1);
#endif
            for (int64_t d = d0; d < D; d++) {
                T *dst = panel + d * NQ;
                const T *src = qp + d * q_cs;
                int64_t i = 0;
                for (; i < n; i++) dst[i] = src[i * q_rs] * s;
                for (; i < NQ; i++) dst[i] = 0;
            }
        }
        SUF(reset_running)(k);
        return;
    }
    for (int64_t i = 0; i < nqp; i++) {
        T *dst = QT + (i / NQ) * D * NQ + i % NQ;
        if (i < nq) {
            SUF(q_row_scaled)(p, k->b, k->i0 + i, k->scale, dst, NQ);
        } else {
            for (int64_t d = 0; d < D; d++) dst[d * NQ] = 0;
        }
    }
    SUF(reset_running)(k);
}

/* True when the segment ids rule out every pair of the tile. */
CATTN_STEP int SUF(segments_disjoint)(const SUF(blk) *k, int64_t j0, int64_t nk)
{
    const cattn_params *p = k->p;
    int64_t qmin = INT64_MAX, qmax = INT64_MIN, kmin = INT64_MAX, kmax = INT64_MIN;
    for (int64_t i = 0; i < k->nq; i++) {
        int64_t s = k->qseg[(k->i0 + i) * p->q_seg.rs];
        qmin = s < qmin ? s : qmin; qmax = s > qmax ? s : qmax;
    }
    for (int64_t j = 0; j < nk; j++) {
        int64_t s = k->kseg[(j0 + j) * p->kv_seg.rs];
        kmin = s < kmin ? s : kmin; kmax = s > kmax ? s : kmax;
    }
    return kmax < qmin || kmin > qmax;
}

/* The K (and, for attention, V) rows of a tile in the compute type: in
   place, or widened from float16 / dequantised from int8 into scratch once. */
CATTN_STEP void SUF(load_kv_tile)(const SUF(blk) *k, int64_t j0, int64_t nk,
                              const T **Kt, int64_t *kt_rs, const T **Vt, int64_t *vt_rs)
{
    const cattn_params *p = k->p;
    *Kt = k->K + j0 * p->k.rs; *kt_rs = p->k.rs;
    *Vt = k->Vm + j0 * p->v.rs; *vt_rs = p->v.rs;
    if (p->kv_format == CATTN_KV_F16) {
        SUF(half_rows)(k->Kh + j0 * p->k.rs, p->k.rs, nk, p->D, k->kbuf, RUP16(p->D));
        if (p->mode == CATTN_MODE_ATTENTION)
            SUF(half_rows)(k->Vh + j0 * p->v.rs, p->v.rs, nk, p->Dv, k->vbuf, RUP16(p->Dv));
        *Kt = k->kbuf; *kt_rs = RUP16(p->D);
        *Vt = k->vbuf; *vt_rs = RUP16(p->Dv);
    }
    if (p->kv_format == CATTN_KV_I8) {   /* int8 K and/or V: dequantised once (kv_q8.h) */
        if (p->k_scale.base) {
            SUF(q8_rows)((const int8_t *)p->k.base + p->k.off[k->b] + j0 * p->k.rs, p->k.rs,
                         (const float *)p->k_scale.base + p->k_scale.off[k->b] + j0 * p->k_scale.rs,
                         p->k_scale.rs, nk, p->D, k->kbuf, RUP16(p->D));
            *Kt = k->kbuf; *kt_rs = RUP16(p->D);
        }
        if (p->v_scale.base && p->mode == CATTN_MODE_ATTENTION) {
            SUF(q8_rows)((const int8_t *)p->v.base + p->v.off[k->b] + j0 * p->v.rs, p->v.rs,
                         (const float *)p->v_scale.base + p->v_scale.off[k->b] + j0 * p->v_scale.rs,
                         p->v_scale.rs, nk, p->Dv, k->vbuf, RUP16(p->Dv));
            *Vt = k->vbuf; *vt_rs = RUP16(p->Dv);
        }
    }
}

/* S^T = softcap * tanh(S^T / softcap) over a tile (softcap <= 0: none) */
CATTN_STEP void SUF(softcap_tile)(const SUF(blk) *k, int64_t nk)
{
    const T softcap = (T)k->p->softcap;
    if (softcap <= 0) return;
    const T inv = (T)1 / softcap;
    const int64_t ld = k->ld, nqp = k->nqp;
    T *ST = k->ST;
    for (int64_t j = 0; j < nk; j++)
        for (int64_t i = 0; i < nqp; i += VL)
            vstore(ST + j * ld + i, vtanh(vload(ST + j * ld + i) * inv) * softcap);
}

/* S^T of one tile: the scores (dot, cosine or additive, scaled), softcapped. */
CATTN_STEP void SUF(tile_scores)(const SUF(blk) *k, const T *Kt, int64_t kt_rs, int64_t nk)
{
    const cattn_params *p = k->p;
    const int64_t D = p->D, ld = k->ld, nqp = k->nqp;
    T *ST = k->ST;
    const T scale = k->scale;
    if (p->score_kind == CATTN_SCORE_ADDITIVE) {
        SUF(tile_scores_additive)(Kt, kt_rs, nk, k->QT, ld, nqp, D, (const T *)p->add_w, ST);
        if (scale != (T)1)
            for (int64_t j = 0; j < nk; j++)
                for (int64_t i = 0; i < nqp; i += VL)
                    vstore(ST + j * ld + i, vload(ST + j * ld + i) * scale);
    } else {
        SUF(tile_scores_dot)(Kt, kt_rs, nk, k->QT, ld, nqp, D, ST);
        if (p->score_kind == CATTN_SCORE_COSINE) {
            const double tiny = SUF(cos_tiny)(scale);
            for (int64_t j = 0; j < nk; j++) {
                const T *kr = Kt + j * kt_rs;
                const double f = SUF(inv_norm)(kr, 1, D);
                T *srow = ST + j * ld;
                if (f >= tiny) {
                    for (int64_t i = 0; i < nqp; i += VL)
                        vstore(srow + i, vload(srow + i) * (T)f);
                } else {
                    /* a key so long that its dot products may overflow T:
                       q . (k / |k|) in double (rare) */
                    for (int64_t i = 0; i < nqp; i++) {
                        const T *qp = k->QT + (i / NQ) * D * NQ + i % NQ;
                        double acc = 0;
                        for (int64_t d = 0; d < D; d++)
                            acc += (double)qp[d * NQ] * ((double)kr[d] * f);
                        srow[i] = (T)acc;
                    }
                }
            }
        }
    }
    SUF(softcap_tile)(k, nk);
}

/* Masked pairs of a partial tile become -inf (the window, then keep_pair). */
CATTN_STEP void SUF(mask_tile)(const SUF(blk) *k, int64_t j0, int64_t nk)
{
    const cattn_params *p = k->p;
    const int64_t wl = p->win_left, wr = p->win_right;
    const int64_t nq = k->nq, i0 = k->i0, shift = k->shift, ld = k->ld;
    const uint8_t *mask = k->mask;
    const T *bias = k->bias;
    const int64_t *qseg = k->qseg, *kseg = k->kseg;
    T *ST = k->ST;
    if (!mask && !bias && !qseg && !kseg) {
        /* the window alone: key jj keeps the queries at positions
           jj - wr <= ii + shift <= jj + wl, one run of lanes [lo, hi) per
           key row (the pair-by-pair test below measured 50% of the kernel's
           own time in a causal (1,8,128,128,64) call) */
        const int64_t base = i0 + shift;
        for (int64_t j = 0; j < nk; j++) {
            const int64_t jj = j0 + j;
            int64_t lo = 0, hi = nq;
            if (wr < CATTN_UNBOUNDED) lo = imin(nq, imax(0, jj - wr - base));
            if (wl < CATTN_UNBOUNDED) hi = imax(lo, imin(nq, jj + wl - base + 1));
            T *srow = ST + j * ld;
            for (int64_t i = 0; i < lo; i++) srow[i] = -INFINITY;
            for (int64_t i = hi; i < nq; i++) srow[i] = -INFINITY;
        }
        return;
    }
    for (int64_t j = 0; j < nk; j++) {
        const int64_t jj = j0 + j;
        T *srow = ST + j * ld;
        for (int64_t i = 0; i < nq; i++) {
            const int64_t ii = i0 + i, pos = ii + shift;
            int keep = 1;
            if (wl < CATTN_UNBOUNDED && jj < pos - wl) keep = 0;
            if (wr < CATTN_UNBOUNDED && jj > pos + wr) keep = 0;
            const int64_t qsg = qseg ? qseg[ii * p->q_seg.rs] : 0;
            if (keep) keep = SUF(keep_pair)(p, mask, bias, qsg, kseg, ii, jj, srow + i);
            if (!keep) srow[i] = -INFINITY;
        }
    }
}

/* The weights pass (mode WEIGHTS / KEY_MASS) and the additive scores
   (mode SCORES) of one tile: weights = exp(s - lse), masked -> 0. */
CATTN_STEP void SUF(weights_tile)(const SUF(blk) *k, int64_t j0, int64_t nk)
{
    const cattn_params *p = k->p;
    const int64_t Lq = p->Lq, Lk = p->Lk, b = k->b, i0 = k->i0, nq = k->nq, ld = k->ld;
    const int64_t nqp = k->nqp;
    T *ST = k->ST;
    if (p->mode != CATTN_MODE_SCORES) {
        /* vector code with the block's lse in the alpha scratch (padding:
           -inf); (s - m) - log(l) rather than s - lse: exact even when
           lse = m + log(l) rounds to m at huge logits */
        const T *pm = p->lse_m ? (const T *)p->lse_m + b * Lq : k->lse;
        const T *pl = p->lse_logl ? (const T *)p->lse_logl + b * Lq : NULL;
        T *alpha = k->alpha, *mrow = k->mrow, *lrow = k->lrow;
        const T *lse = k->lse;
        for (int64_t i = 0; i < nqp; i++) {
            alpha[i] = i < nq ? lse[i0 + i] : (T)-INFINITY;   /* -inf: empty row */
            mrow[i] = i < nq ? pm[i0 + i] : (T)0;
            lrow[i] = (i < nq && pl) ? pl[i0 + i] : (T)0;
        }
        const V zero = vset1(0), ninf = vset1(-INFINITY);
        for (int64_t j = 0; j < nk; j++)
            for (int64_t i = 0; i < nqp; i += VL) {
                V d = (vload(ST + j * ld + i) - vload(mrow + i)) - vload(lrow + i);
                d = vsel(VMASK(d > zero), zero, d);          /* <= 0 up to rounding; NaN stays */
                vstore(ST + j * ld + i, vsel(VMASK(vload(alpha + i) == ninf), zero, vexp(d)));
            }
    }
    if (p->mode == CATTN_MODE_WEIGHTS || p->mode == CATTN_MODE_SCORES) {
        T *W = (T *)p->weights + (b * Lq + i0) * Lk + j0;
        for (int64_t i = 0; i < nq; i++)
            for (int64_t j = 0; j < nk; j++)
                W[i * Lk + j] = ST[j * ld + i];
    } else {
        /* the block's sums go to its slot's row of partials: one work item
           owns a slot (see km_slots in flash.h), so no two threads add to
           one row and the caller reduces the slots in a fixed order */
        const int64_t qb = i0 / p->block_q;
        T *km = (T *)p->key_mass + ((b - p->km_b0) * p->km_slots + qb % p->km_slots) * Lk + j0;
        for (int64_t j = 0; j < nk; j++) {
            T acc = 0;
            for (int64_t i = 0; i < nq; i++) acc += ST[j * ld + i];
            km[j] += acc;
        }
    }
}

/* Online softmax along the key rows of a tile, queries in lanes: updates
   the running max and sum, turns S^T into P^T (-inf scores flagged as -0.0
   on a partial tile, and on a full tile where the max pass saw one: a key
   whose score is -inf, masked or not, is never multiplied by its value) and
   rescales the running P.V where the max moved.  The tile's row sums (lrow)
   join the running sum in double.  Returns whether P^T carries flags. */
CATTN_STEP int SUF(softmax_tile)(const SUF(blk) *k, int64_t nk, int partial)
{
    const int64_t ld = k->ld, nqp = k->nqp, Dv = k->p->Dv;
    T *ST = k->ST, *mrow = k->mrow, *lrow = k->lrow, *alpha = k->alpha, *O = k->O;
    WIDE *Ow = k->Ow, *lw = k->lw;
    int any_rescale = 0, flagged = partial;
    const V neg_inf = vset1(-INFINITY), pos_inf = vset1(INFINITY);
#ifdef CATTN_TILE_P_PAIRS
    uint32_t *PP = CATTN_TILE_P_PAIRS(k);
#endif
    for (int64_t i = 0; i < nqp; i += VL) {
        V mold = vload(mrow + i);
        V mt = neg_inf, lo = pos_inf;
        {   /* four chains: the max of a column is a latency chain; the min
               rides along (the loads are shared) to spot a -inf score */
            V m1 = neg_inf, m2 = neg_inf, m3 = neg_inf;
            V l1 = pos_inf, l2 = pos_inf, l3 = pos_inf;
            int64_t j = 0;
            for (; j + 4 <= nk; j += 4) {
                const V s0 = vload(ST + j * ld + i), s1 = vload(ST + (j + 1) * ld + i),
                        s2 = vload(ST + (j + 2) * ld + i), s3 = vload(ST + (j + 3) * ld + i);
                mt = vmax(s0, mt); lo = vmin(s0, lo);
                m1 = vmax(s1, m1); l1 = vmin(s1, l1);
                m2 = vmax(s2, m2); l2 = vmin(s2, l2);
                m3 = vmax(s3, m3); l3 = vmin(s3, l3);
            }
            for (; j < nk; j++) {
                const V s0 = vload(ST + j * ld + i);
                mt = vmax(s0, mt); lo = vmin(s0, lo);
            }
            mt = vmax(vmax(m1, mt), vmax(m3, m2));
            lo = vmin(vmin(l1, lo), vmin(l3, l2));
        }
        int col_flag = partial;
        for (int v = 0; v < VL; v++) col_flag |= VLANE(lo, v) == (T)-INFINITY;
        flagged |= col_flag;
        V mnew = vmax(mt, mold);
        VI empty = VMASK(mnew == neg_inf);
        /* an unchanged max (-inf, +inf included) rescales by exactly 1 */
        V a = vsel(VMASK(mnew == mold), vset1(1), vexp(mold - mnew));
        /* at a +inf max, +inf scores weigh exp(hi) (finite) rather than
           exp(inf - inf) = NaN: the sum is NaN only for a NaN score, which
           tells lse NaN (a NaN logit) from +inf (finish_block) */
        V msub = vsel(empty, vset1(0), vsel(VMASK(mnew == pos_inf), vset1(CATTN_F64 ? DBL_MAX : FLT_MAX), mnew));
        V lsum = {0};
        if (col_flag) {
            const V negzero = vset1((T)-0.0);
            for (int64_t j = 0; j < nk; j++) {
                V s = vload(ST + j * ld + i);
                V e = vexp(s - msub);
                lsum += e;
                /* flag masked entries as -0.0 for the non-finite-V guard */
                vstore(ST + j * ld + i, vsel(VMASK(s == neg_inf), negzero, e));
            }
#ifdef CATTN_TILE_P_PAIRS
            if (PP) SUF(pack_pairs_col)(k, PP, nk, i);
#endif
        }
#ifdef CATTN_TILE_P_PAIRS
        else if (PP) {
            lsum = SUF(exp_pairs)(k, PP, nk, i, msub);
        }
#endif
        else {
            for (int64_t j = 0; j < nk; j++) {
                V e = vexp(vload(ST + j * ld + i) - msub);
                lsum += e;
                vstore(ST + j * ld + i, e);
            }
        }
        vstore(lrow + i, lsum);
        vstore(mrow + i, mnew);
        vstore(alpha + i, a);
        for (int v = 0; v < VL; v++) any_rescale |= VLANE(a, v) != (T)1;
    }
    for (int64_t i = 0; i < nqp; i++) lw[i] = lw[i] * (WIDE)alpha[i] + (WIDE)lrow[i];
    if (any_rescale)
        for (int64_t i = 0; i < nqp; i++) {
            const T a = alpha[i];
            if (a == (T)1) continue;
            if (k->flushed) for (int64_t c = 0; c < Dv; c++) Ow[i * Dv + c] *= (WIDE)a;
            if (k->pending) for (int64_t c = 0; c < Dv; c++) O[i * Dv + c] *= a;
        }
    return flagged;
}

/* O += P . V over a tile, never touching a masked key's V (on a partial
   tile, rows of V holding inf/NaN are added key by key, skipping the
   masked entries); pv_account follows. */
CATTN_STEP void SUF(pv_tile)(const SUF(blk) *k, const T *Vt, int64_t vt_rs, int64_t nk, int partial)
{
    const int64_t ld = k->ld, nqp = k->nqp, nq = k->nq, Dv = k->p->Dv;
    T *ST = k->ST, *O = k->O;
    if (!partial) {
        SUF(tile_pv)(ST, ld, nqp, Vt, vt_rs, 0, nk, Dv, O, Dv);
    } else {
        int64_t ja = 0;
        for (int64_t j = 0; j < nk; j++) {
            if (!SUF(row_nonfinite)(Vt + j * vt_rs, Dv)) continue;
            if (j > ja) SUF(tile_pv)(ST, ld, nqp, Vt, vt_rs, ja, j, Dv, O, Dv);
            for (int64_t i = 0; i < nq; i++) {
                T pw = ST[j * ld + i];
                if (signbit(pw)) continue;          /* masked: skip */
                for (int64_t c = 0; c < Dv; c++) O[i * Dv + c] += pw * Vt[j * vt_rs + c];
            }
            ja = j + 1;
        }
        if (nk > ja) SUF(tile_pv)(ST, ld, nqp, Vt, vt_rs, ja, nk, Dv, O, Dv);
    }
}

/* After each tile's P.V (whichever kernel added it into O): every
   TILE_BLOCK tiles O joins the running P.V (double) and restarts from
   zero, so the float sums span at most TILE_BLOCK tiles. */
CATTN_STEP void SUF(pv_account)(SUF(blk) *k)
{
    if (++k->pending < TILE_BLOCK) return;
    const int64_t n = k->nqp * k->p->Dv;
    T *O = k->O;
    WIDE *Ow = k->Ow;
    if (k->flushed) for (int64_t i = 0; i < n; i++) Ow[i] += (WIDE)O[i];
    else for (int64_t i = 0; i < n; i++) Ow[i] = (WIDE)O[i];
    for (int64_t i = 0; i < n; i++) O[i] = 0;
    k->pending = 0;
    k->flushed = 1;
}

/* Divide by the row sums, fold in the sink, write out and lse. */
CATTN_STEP void SUF(finish_block)(const SUF(blk) *k)
{
    const cattn_params *p = k->p;
    const int64_t Lq = p->Lq, Dv = p->Dv, b = k->b, i0 = k->i0, nq = k->nq;
    const int64_t out_rs = p->out.rs, out_cs = p->out.cs;
    const int of = p->out_format;
    char *out = SUF(out_rows)(p, b);
    T *lse = k->lse;
    const T *O = k->O, *mrow = k->mrow;
    const int has_sink = p->sinks != NULL;
    const T sink = has_sink ? (T)p->sinks[b] : (T)0;
    const int64_t nq_blk = k->nq_blk;
    for (int64_t i = 0; i < nq_blk; i++) {
        void *orow = out + (i0 + i) * out_rs * SUF(io_size)(of);
        T m = i < nq ? mrow[i] : (T)-INFINITY;
        WIDE l = i < nq ? k->lw[i] : 0;
        WIDE f;
        if (has_sink && i < nq) {
            f = SUF(fold_sink)(sink, &m, &l);
            f = f / l;
        } else {
            f = 1 / l;
        }
        if (l == 0 || i >= nq) {
            /* no key left (or a padded query): zeros, lse -inf */
            for (int64_t c = 0; c < Dv; c++) SUF(io_put)(of, orow, c * out_cs, 0);
            if (lse) lse[i0 + i] = -INFINITY;
            if (p->lse_m) ((T *)p->lse_m)[b * Lq + i0 + i] = -INFINITY;
        } else {
            /* a +inf logit: the output is NaN (inf - inf), lse +inf, or
               NaN when the row also has a NaN logit (l is NaN only then:
               softmax_tile) */
            if (m == (T)INFINITY) f = NAN;
            const WIDE *ow = k->Ow + i * Dv;
            const T *o = O + i * Dv;
            /* the row scaled into out itself (native, contiguous: loops
               the compiler vectorizes; scalar stores were 4% of a
               (1,8,128,128,64) float32 call) or in place in O (the
               block's own, done with), then written in its format */
            T *x = of == CATTN_IO_NATIVE && out_cs == 1 ? (T *)orow : k->O + i * Dv;
            if (!k->flushed)
                for (int64_t c = 0; c < Dv; c++) x[c] = (T)((WIDE)o[c] * f);
            else if (k->pending)
                for (int64_t c = 0; c < Dv; c++) x[c] = (T)((ow[c] + (WIDE)o[c]) * f);
            else
                for (int64_t c = 0; c < Dv; c++) x[c] = (T)(ow[c] * f);
            if (x != (T *)orow) SUF(io_put_row)(of, orow, out_cs, x, Dv);
            if (!lse && !p->lse_m) continue;
            const T logl = m == (T)INFINITY ? (l == l ? (T)0 : (T)NAN) : (T)log(l);
            if (lse) lse[i0 + i] = m + logl;
            if (p->lse_m) {
                ((T *)p->lse_m)[b * Lq + i0 + i] = m;
                ((T *)p->lse_logl)[b * Lq + i0 + i] = logl;
            }
        }
    }
}

static void SUF(flash_block)(const cattn_params *p, int64_t b, int64_t qb, void *scratch)
{
    SUF(blk) k;
    SUF(blk_init)(&k, p, b, qb, scratch);
    CATTN_TILE_PACK_Q(&k);

    /* the keys any query of this block may see: [k_lo, k_hi) */
    const int64_t wl = p->win_left, wr = p->win_right;
    const int64_t first = k.i0 + k.shift, last = k.i0 + k.nq - 1 + k.shift;
    int64_t k_lo = 0, k_hi = k.kv_len;
    if (k.nq > 0) {
        if (wl < CATTN_UNBOUNDED) k_lo = imax(k_lo, first - wl);
        if (wr < CATTN_UNBOUNDED) k_hi = imin(k_hi, last + wr + 1);
    } else {
        k_hi = k_lo;
    }
    /* keys every query of the block sees (window-wise) */
    int64_t full_lo = 0, full_hi = k.kv_len;
    if (wl < CATTN_UNBOUNDED) full_lo = imax(full_lo, last - wl);
    if (wr < CATTN_UNBOUNDED) full_hi = imin(full_hi, first + wr + 1);
    const int elementwise = k.mask || k.bias || k.qseg;

    for (int64_t j0 = k_lo; j0 < k_hi; j0 += p->block_k) {
        if (cattn_should_stop(p)) return;        /* Ctrl-C: the call raises */
        const int64_t nk = imin(p->block_k, k_hi - j0);
        if (k.qseg && SUF(segments_disjoint)(&k, j0, nk)) continue;
        const T *Kt, *Vt;
        int64_t kt_rs, vt_rs;
        CATTN_TILE_LOAD_KV(&k, j0, nk, &Kt, &kt_rs, &Vt, &vt_rs);
        CATTN_TILE_SCORES(&k, Kt, kt_rs, nk);
        /* masking: only tiles that need it pay for it */
        const int partial = elementwise || j0 < full_lo || j0 + nk > full_hi;
        if (partial) SUF(mask_tile)(&k, j0, nk);
        if (p->mode != CATTN_MODE_ATTENTION) {
            SUF(weights_tile)(&k, j0, nk);
            continue;
        }
        const int flagged = SUF(softmax_tile)(&k, nk, partial);
        CATTN_TILE_PV(&k, Vt, vt_rs, nk, flagged);
        SUF(pv_account)(&k);
    }
    if (p->mode == CATTN_MODE_ATTENTION) SUF(finish_block)(&k);
}

/* ---------------------------------------------------------------------- */
/* Decode: few queries (Lq <= CATTN_DECODE_MAX_LQ), many keys.  Not a GEMM: */
/* K and V are streamed once per key range with vector dot products and    */
/* axpys.  A work item is (batch item, key split); it leaves unnormalised  */
/* partial results (acc, running max m, sum l) that decode_finish merges   */
/* with the log-sum-exp rule.                                              */
/* ---------------------------------------------------------------------- */
#define DCH 64   /* keys per chunk: their scores stay in L1 */

/* row offsets known this many keys past a chunk (room for the prefetch
   distances below; a float16 prefetch into L1 measured best 32 ahead) */
#define PFK 32
/* pv_mq reads a float32/64 V row in passes of a few vectors: its rows are
   prefetched (into L2) this many keys ahead, whole, by the first pass
   (measured 1.3x faster at (1,32,1,2048,128) over 8 key/value heads) */
#define DEC_PFV 8
/* float16/bfloat16 rows: K and V prefetched into L2 this many keys ahead
   (prefetch_row_l2).  GQA rows together, 8 sequences x 4,096 keys, GQA
   32/8, D 128: 12.8 ms against 15.5 prefetched PFK ahead into L1 at one
   thread, 6.8 against 8.3 at two; one query row, (1,32,1,32768,128):
   50 ms against 57 at one thread, 25-26.5 against 29.5-31 at two.  The
   float32/64 K rows of the GQA rows' scores too (they had no prefetch):
   8 sequences x 4,096 keys, float32, 19.3 -> 16.2 ms at one thread,
   11.3 -> 10.5 at two (medians of 3, alternating) */
#define DEC_PF_L2 16
static inline void SUF(prefetch_row)(const void *row, int64_t bytes)
{
    for (int64_t o = 0; o < bytes; o += 64) CATTN_PREFETCH((const char *)row + o);
}
/* into L2 only: from pages read in random order, one core measured 17 GB/s
   with the next 8 KiB run prefetched into L2, 10-11.6 GB/s prefetched into
   L1 or not at all (sequential: 31 GB/s) -- the L1 miss buffers fill */
static inline void SUF(prefetch_row_l2)(const void *row, int64_t bytes)
{
    for (int64_t o = 0; o < bytes; o += 64) CATTN_PREFETCH_L2((const char *)row + o);
}

/* Four float16 keys' dot products with one query, two accumulators each:
   eight independent FMA chains, each query vector loaded once for four
   rows (rows at k, k + rs, k + 2 rs, k + 3 rs).  float16 only: with a
   float32 cache, four concurrent row streams from DRAM measured 1.4x
   slower than one key after another. */
static inline void SUF(dot4_h)(const T *a, const uint16_t *k, int64_t rs, int64_t n, T *out)
{
    V c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0}, d0 = {0}, d1 = {0}, d2 = {0}, d3 = {0};
    int64_t d = 0;
    for (; d + 2 * VL <= n; d += 2 * VL) {
        const V x = vload(a + d), y = vload(a + d + VL);
        c0 += x * vload_h(k + d);          d0 += y * vload_h(k + d + VL);
        c1 += x * vload_h(k + rs + d);     d1 += y * vload_h(k + rs + d + VL);
        c2 += x * vload_h(k + 2 * rs + d); d2 += y * vload_h(k + 2 * rs + d + VL);
        c3 += x * vload_h(k + 3 * rs + d); d3 += y * vload_h(k + 3 * rs + d + VL);
    }
    if (d + VL <= n) {
        const V x = vload(a + d);
        c0 += x * vload_h(k + d);          c1 += x * vload_h(k + rs + d);
        c2 += x * vload_h(k + 2 * rs + d); c3 += x * vload_h(k + 3 * rs + d);
        d += VL;
    }
    hsum4(c0 + d0, c1 + d1, c2 + d2, c3 + d3, out);
    for (; d < n; d++)
        for (int r = 0; r < 4; r++) out[r] += a[d] * SUF(half1)(k[r * rs + d]);
}

/* acc += sum_t e[t] * row_t for the nk kept keys of a chunk (row_t at
   rows[t] elements past vb), one block of up to eight accumulator vectors
   at a time, held in registers across the keys: no load and store of acc
   per key.  float16 cache only (float32: the per-key axpy streams each V
   row whole and measured faster from DRAM). */
static inline void SUF(pv_rows_h)(const T *e, const int64_t *rows, int64_t nk,
                                  const uint16_t *vb, T *acc, int64_t Dv)
{
    int64_t c = 0;
    for (; c + 8 * VL <= Dv; c += 8 * VL) {
        V a[8];
        for (int u = 0; u < 8; u++) a[u] = vload(acc + c + u * VL);
        for (int64_t t = 0; t < nk; t++) {
            const uint16_t *x = vb + rows[t] + c;
            const V w = vset1(e[t]);
            for (int u = 0; u < 8; u++) a[u] += w * vload_h(x + u * VL);
        }
        for (int u = 0; u < 8; u++) vstore(acc + c + u * VL, a[u]);
    }
    for (; c + 2 * VL <= Dv; c += 2 * VL) {
        V a0 = vload(acc + c), a1 = vload(acc + c + VL);
        for (int64_t t = 0; t < nk; t++) {
            const uint16_t *x = vb + rows[t] + c;
            const V w = vset1(e[t]);
            a0 += w * vload_h(x);
            a1 += w * vload_h(x + VL);
        }
        vstore(acc + c, a0); vstore(acc + c + VL, a1);
    }
    for (; c + VL <= Dv; c += VL) {
        V a0 = vload(acc + c);
        for (int64_t t = 0; t < nk; t++) a0 += vset1(e[t]) * vload_h(vb + rows[t] + c);
        vstore(acc + c, a0);
    }
    for (; c < Dv; c++) {
        T a0 = acc[c];
        for (int64_t t = 0; t < nk; t++) a0 += e[t] * SUF(half1)(vb[rows[t] + c]);
        acc[c] = a0;
    }
}

/* Several query rows over the same K/V rows (GQA folded, or a few new
   tokens): each K and V row is loaded (and widened) once for all of them
   and P.V accumulates in registers across the chunk's keys.  One query row
   at a time measured 26 ns per key and row at (1,32,1,2048,128) over 8
   key/value heads, float32, every row re-reading the chunk from L2 and
   adding into its accumulator through memory key by key.  NQC (the rows,
   <= 4) is a constant where these are inlined (a switch picks it; more
   rows go in passes of four), so the accumulators live in registers.  Rows are addressed
   by element offsets (ko, vo) from a base: a contiguous cache or pages;
   with pf > 0, the row pf keys ahead (offsets known for navail keys) is
   prefetched into L1, or with pf < 0 the row -pf keys ahead into L2
   (prefetch_row_l2: DEC_PF_L2, DEC_PFV). */
CATTN_STEP void SUF(prefetch_mq)(const void *row, int64_t bytes, int pf)
{
    if (pf > 0) SUF(prefetch_row)(row, bytes);
    else SUF(prefetch_row_l2)(row, bytes);
}
#define CATTN_DEFINE_MQ(name, BT, LOADB, CONV)                                    \
CATTN_STEP void SUF(scores_mq_##name##_n)(const T *qs, int64_t qld, const BT *kb,   \
        const int64_t *ko, int64_t nk, int64_t navail, int pf, int64_t D,           \
        T *S, int64_t sld, const int NQC)                                           \
{                                                                                   \
    for (int64_t j = 0; j < nk; j++) {                                              \
        const BT *x = kb + ko[j];                                                   \
        if (pf) SUF(prefetch_mq)(kb + ko[imin(j + (pf < 0 ? -pf : pf), navail - 1)], D * sizeof(BT), pf);  \
        V a[4], b[4];                           \
        for (int i = 0; i < NQC; i++) a[i] = b[i] = vset1(0);                       \
        int64_t c = 0;                                                              \
        for (; c + 2 * VL <= D; c += 2 * VL) {                                      \
            const V k0 = LOADB(x + c), k1 = LOADB(x + c + VL);                      \
            for (int i = 0; i < NQC; i++) {                                         \
                a[i] += vload(qs + i * qld + c) * k0;                               \
                b[i] += vload(qs + i * qld + c + VL) * k1;                          \
            }                                                                       \
        }                                                                           \
        for (; c + VL <= D; c += VL) {                                              \
            const V k0 = LOADB(x + c);                                              \
            for (int i = 0; i < NQC; i++) a[i] += vload(qs + i * qld + c) * k0;     \
        }                                                                           \
        T t[4];                                                                     \
        if (NQC == 4) hsum4(a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], t);  \
        else for (int i = 0; i < NQC; i++) t[i] = hsum(a[i] + b[i]);                \
        for (int i = 0; i < NQC; i++) {                                             \
            for (int64_t d = c; d < D; d++) t[i] += qs[i * qld + d] * CONV(x[d]);   \
            S[i * sld + j] = t[i];                                                  \
        }                                                                           \
    }                                                                               \
}                                                                                   \
                                                                                    \
/* acc_i[c:c + CB VL] += sum_t E[i * eld + t] row_t[c:...], CB vectors per row */   \
CATTN_STEP void SUF(pv_mq_##name##_blk)(const T *E, int64_t eld, const BT *vb,      \
        const int64_t *vo, int64_t nk, int64_t navail, int pf, int64_t Dv, T *acc,   \
        int64_t ald, int64_t c, const int NQC, const int CB)                        \
{                                                                                   \
    V a[4][8];                                                    \
    for (int i = 0; i < NQC; i++)                                                   \
        for (int u = 0; u < CB; u++) a[i][u] = vload(acc + i * ald + c + u * VL);    \
    for (int64_t t = 0; t < nk; t++) {                                              \
        const BT *x = vb + vo[t] + c;                                               \
        if (pf) SUF(prefetch_mq)(vb + vo[imin(t + (pf < 0 ? -pf : pf), navail - 1)], Dv * sizeof(BT), pf);  \
        V v[8];                                                                     \
        for (int u = 0; u < CB; u++) v[u] = LOADB(x + u * VL);                      \
        for (int i = 0; i < NQC; i++) {                                             \
            const V w = vset1(E[i * eld + t]);                                      \
            for (int u = 0; u < CB; u++) a[i][u] += w * v[u];                       \
        }                                                                           \
    }                                                                               \
    for (int i = 0; i < NQC; i++)                                                   \
        for (int u = 0; u < CB; u++) vstore(acc + i * ald + c + u * VL, a[i][u]);    \
}                                                                                   \
                                                                                    \
CATTN_STEP void SUF(pv_mq_##name##_n)(const T *E, int64_t eld, const BT *vb,        \
        const int64_t *vo, int64_t nk, int64_t navail, int pf, T *acc, int64_t ald,  \
        int64_t Dv, const int NQC)                                                  \
{                                                                                   \
    /* accumulators: about 3/4 of the registers, CB vectors per row */            \
    const int room = 3 * CATTN_NREGS / 4 / NQC;                                     \
    const int CB = room >= 8 ? 8 : room >= 4 ? 4 : room >= 2 ? 2 : 1;              \
    int64_t c = 0;                                                                  \
    for (; c + CB * VL <= Dv; c += CB * VL, pf = 0)                                 \
        SUF(pv_mq_##name##_blk)(E, eld, vb, vo, nk, navail, pf, Dv, acc, ald, c, NQC, CB); \
    for (; c + VL <= Dv; c += VL, pf = 0)                                           \
        SUF(pv_mq_##name##_blk)(E, eld, vb, vo, nk, navail, pf, Dv, acc, ald, c, NQC, 1); \
    for (; c < Dv; c++)                                                             \
        for (int i = 0; i < NQC; i++) {                                             \
            T a0 = acc[i * ald + c];                                                \
            for (int64_t t = 0; t < nk; t++) a0 += E[i * eld + t] * CONV(vb[vo[t] + c]); \
            acc[i * ald + c] = a0;                                                  \
        }                                                                           \
}                                                                                   \
                                                                                    \
/* any number of rows, in passes of at most four (the first prefetches) */       \
static void SUF(scores_mq_##name)(const T *qs, int64_t qld, int64_t nq, const BT *kb, \
        const int64_t *ko, int64_t nk, int64_t navail, int pf, int64_t D, T *S,      \
        int64_t sld)                                                                \
{                                                                                   \
    for (int64_t r = 0; r < nq; r += 4, pf = 0) {                                   \
        const T *q = qs + r * qld;                                                  \
        T *o = S + r * sld;                                                         \
        switch (imin(4, nq - r)) {                                                  \
        case 1: SUF(scores_mq_##name##_n)(q, qld, kb, ko, nk, navail, pf, D, o, sld, 1); break; \
        case 2: SUF(scores_mq_##name##_n)(q, qld, kb, ko, nk, navail, pf, D, o, sld, 2); break; \
        case 3: SUF(scores_mq_##name##_n)(q, qld, kb, ko, nk, navail, pf, D, o, sld, 3); break; \
        default: SUF(scores_mq_##name##_n)(q, qld, kb, ko, nk, navail, pf, D, o, sld, 4); \
        }                                                                           \
    }                                                                               \
}                                                                                   \
                                                                                    \
static void SUF(pv_mq_##name)(const T *E, int64_t eld, int64_t nq, const BT *vb,    \
        const int64_t *vo, int64_t nk, int64_t navail, int pf, T *acc, int64_t ald,  \
        int64_t Dv)                                                                 \
{                                                                                   \
    for (int64_t r = 0; r < nq; r += 4, pf = 0) {                                   \
        const T *e = E + r * eld;                                                   \
        T *a = acc + r * ald;                                                       \
        switch (imin(4, nq - r)) {                                                  \
        case 1: SUF(pv_mq_##name##_n)(e, eld, vb, vo, nk, navail, pf, a, ald, Dv, 1); break; \
        case 2: SUF(pv_mq_##name##_n)(e, eld, vb, vo, nk, navail, pf, a, ald, Dv, 2); break; \
        case 3: SUF(pv_mq_##name##_n)(e, eld, vb, vo, nk, navail, pf, a, ald, Dv, 3); break; \
        default: SUF(pv_mq_##name##_n)(e, eld, vb, vo, nk, navail, pf, a, ald, Dv, 4); \
        }                                                                           \
    }                                                                               \
}
CATTN_DEFINE_MQ(f, T, vload, (T))
CATTN_DEFINE_MQ(h, uint16_t, vload_h, SUF(half1))
#undef CATTN_DEFINE_MQ

static size_t SUF(decode_scratch_bytes)(const cattn_params *p)
{
    return (size_t)(CATTN_DECODE_MAX_LQ * RUP16(p->D) + RUP16(p->D) + 4 * DCH
                    + (p->kv_format == CATTN_KV_F16 ? DCH * (RUP16(p->D) + RUP16(p->Dv)) : 0)
                    + CATTN_DECODE_MAX_LQ * RUP16(p->Dv)) * sizeof(T)
           + DCH * sizeof(int64_t)
           + (size_t)(CATTN_DECODE_MAX_LQ * (RUP16(p->Dv) + 1)) * sizeof(WIDE)
           + (size_t)(2 * CATTN_DECODE_MAX_LQ * DCH) * sizeof(T)       /* S, E (mq) */
           + (size_t)(2 * (DCH + PFK)) * sizeof(int64_t) + 64;         /* ko, vo (mq) */
}

/* The value a chunk's scores are shifted by before exp: the running max,
   0 when there is none (-inf), and the largest finite value at a +inf max
   (+inf scores then weigh exp(hi), not NaN: see softmax_tile) */
CATTN_STEP T SUF(exp_shift)(T mnew)
{
    return mnew == -INFINITY ? (T)0
           : mnew == (T)INFINITY ? (T)(CATTN_F64 ? DBL_MAX : FLT_MAX) : mnew;
}

/* max of x[0:n] (-inf for none; NaN ignored, as `x > m`), in vectors: a
   scalar running max is one compare-and-move latency chain per element
   (measured: the scalar loop was 10% of a GQA float32 decode call) */
CATTN_STEP T SUF(row_max)(const T *x, int64_t n)
{
    V mv = vset1(-INFINITY);
    int64_t t = 0;
    for (; t + VL <= n; t += VL) mv = vmax(vload(x + t), mv);
    T m = -INFINITY;
    for (int v = 0; v < VL; v++) m = VLANE(mv, v) > m ? VLANE(mv, v) : m;
    for (; t < n; t++) m = x[t] > m ? x[t] : m;
    return m;
}

/* The online-softmax step of one row over n finite-or-+inf scores sc[0:n]:
   running max mm, sum llw, the row's double sums accw and float partial
   part rescaled when the max moves; the weights into e. */
CATTN_STEP void SUF(softmax_row)(const T *sc, int64_t n, T *e, T *mm, WIDE *llw, WIDE *accw,
                                 T *part, int64_t Dv)
{
    const T mc = SUF(row_max)(sc, n);
    int64_t t;
    const T mold = *mm, mnew = mc > mold ? mc : mold;
    const T msub = SUF(exp_shift)(mnew);
    if (mnew != mold && mold != -INFINITY) {
        const WIDE a = exp((double)(mold - mnew));
        *llw *= a;
        for (int64_t c = 0; c < Dv; c++) accw[c] *= a;
        for (int64_t c = 0; c < Dv; c++) part[c] *= (T)a;
    }
    V ls = vset1(0);
    for (t = 0; t + VL <= n; t += VL) {
        const V x = vexp(vload(sc + t) - msub);
        vstore(e + t, x);
        ls += x;
    }
    T lsum = hsum(ls);
    for (; t < n; t++) lsum += e[t] = SUF(exp1)(sc[t] - msub);
    *llw += lsum;
    *mm = mnew;
}

/* A decode chunk [j0, j0 + nk) for all nq rows at once (scores_mq, pv_mq)
   when every row sees the same keys of it and no score is -inf (a -inf
   score's key must be skipped, never multiplied).  Returns 0, having
   changed nothing, otherwise: the caller runs the row-by-row body.  K and
   V: the batch item's bases (float16/bfloat16 rows: uint16_t). */
CATTN_STEP int SUF(decode_chunk_mq)(const cattn_params *p, const void *K, const void *Vm,
                                    int64_t nq, int64_t shift, int64_t j0, int64_t nk,
                                    int64_t je, const T *qs, T *S, T *E, int64_t *ko,
                                    int64_t *vo, T *part, WIDE *accw, WIDE *llw, T *mm)
{
    const int64_t D = p->D, Dv = p->Dv, D16 = RUP16(D), Dv16 = RUP16(Dv);
    const int64_t wl = p->win_left, wr = p->win_right;
    const T softcap = (T)p->softcap;
    /* the windows of the first and last rows bound every row's */
    int64_t jlo = j0, jhi = j0 + nk, jlo1 = j0, jhi1 = j0 + nk;
    if (wl < CATTN_UNBOUNDED) {
        jlo = imax(jlo, shift - wl);
        jlo1 = imax(jlo1, nq - 1 + shift - wl);
    }
    if (wr < CATTN_UNBOUNDED) {
        jhi = imin(jhi, shift + wr + 1);
        jhi1 = imin(jhi1, nq - 1 + shift + wr + 1);
    }
    if (jlo != jlo1 || jhi != jhi1 || jlo >= jhi) return 0;
    const int half = p->kv_format == CATTN_KV_F16;
    const int64_t n = jhi - jlo, navail = imin(je, jhi + PFK) - jlo;
    for (int64_t t = 0; t < navail; t++) {
        ko[t] = (jlo + t) * p->k.rs;
        vo[t] = (jlo + t) * p->v.rs;
    }
    if (half)
        SUF(scores_mq_h)(qs, D16, nq, (const uint16_t *)K, ko, n, navail, -DEC_PF_L2, D, S, DCH);
    else
        SUF(scores_mq_f)(qs, D16, nq, (const T *)K, ko, n, navail, -DEC_PF_L2, D, S, DCH);
    for (int64_t i = 0; i < nq; i++) {
        T *si = S + i * DCH;
        if (softcap > 0)
            for (int64_t t = 0; t < n; t++) si[t] = softcap * SUF(tanh1)(si[t] / softcap);
        for (int64_t t = 0; t < n; t++) if (si[t] == -INFINITY) return 0;
    }
    for (int64_t i = 0; i < nq; i++)
        SUF(softmax_row)(S + i * DCH, n, E + i * DCH, mm + i, llw + i, accw + i * Dv16,
                         part + i * Dv16, Dv);
    if (half)
        SUF(pv_mq_h)(E, DCH, nq, (const uint16_t *)Vm, vo, n, navail, -DEC_PF_L2, part, Dv16, Dv);
    else
        SUF(pv_mq_f)(E, DCH, nq, (const T *)Vm, vo, n, navail, -DEC_PFV, part, Dv16, Dv);
    return 1;
}

static void SUF(decode_block)(const cattn_params *p, int64_t b, int64_t js, int64_t je,
                              void *acc_, void *mm_, void *ll_, void *scratch)
{
    T *acc = (T *)acc_, *mm = (T *)mm_, *ll = (T *)ll_;
    const int64_t D = p->D, Dv = p->Dv, Lq = p->Lq, Lk = p->Lk;
    const int64_t D16 = RUP16(D);
    T *qs = (T *)scratch;                          /* Lq x D16 */
    T *tmp = qs + CATTN_DECODE_MAX_LQ * D16;       /* D16 */
    T *s = tmp + D16;                              /* DCH */
    T *inv_k = s + DCH;                            /* DCH */
    T *e = inv_k + DCH;                            /* DCH */
    int64_t *rows = (int64_t *)(e + DCH);          /* DCH (8-byte aligned: even offset) */
    T *kbuf = (T *)(rows + DCH);                   /* DCH x D16 (float16 K) */
    /* ACCUMULATION: P.V of up to DEC_BLOCK chunks from zero, the running
       sums in double */
    const int64_t Dv16 = RUP16(Dv);
    T *part = kbuf + (p->kv_format == CATTN_KV_F16 ? DCH * (D16 + Dv16) : 0);   /* Lq x Dv16 */
    WIDE *accw = (WIDE *)(part + CATTN_DECODE_MAX_LQ * Dv16);   /* Lq x Dv16 */
    WIDE *llw = accw + CATTN_DECODE_MAX_LQ * Dv16; /* Lq */
    T *Smq = (T *)(llw + CATTN_DECODE_MAX_LQ);     /* Lq x DCH: scores (mq) */
    T *Emq = Smq + CATTN_DECODE_MAX_LQ * DCH;      /* Lq x DCH: weights (mq) */
    int64_t *ko = (int64_t *)(Emq + CATTN_DECODE_MAX_LQ * DCH);   /* DCH + PFK */
    int64_t *vo = ko + DCH + PFK;                                  /* DCH + PFK */
    const uint16_t *Kh = (const uint16_t *)p->k.base + p->k.off[b];
    const uint16_t *Vh = (const uint16_t *)p->v.base + p->v.off[b];
    const int64_t q_len = p->q_len ? p->q_len[b] : Lq;
    const int64_t kv_len = p->kv_len ? p->kv_len[b] : Lk;
    const int64_t nq = imax(0, imin(Lq, q_len));
    const int64_t shift = p->q_pos ? p->q_pos[b] : kv_len - q_len;   /* as in blk_init */
    const int64_t wl = p->win_left, wr = p->win_right;
    const int score = p->score_kind;
    const T scale = (T)p->scale[b];
    const T softcap = (T)p->softcap;
    const T *K = (const T *)p->k.base + p->k.off[b];
    const T *Vm = (const T *)p->v.base + p->v.off[b];
    const uint8_t *mask = p->mask.base ? (const uint8_t *)p->mask.base + p->mask.off[b] : NULL;
    const T *bias = p->bias.base ? (const T *)p->bias.base + p->bias.off[b] : NULL;
    const int64_t *qseg = p->q_seg.base ? (const int64_t *)p->q_seg.base + p->q_seg.off[b] : NULL;
    const int64_t *kseg = p->kv_seg.base ? (const int64_t *)p->kv_seg.base + p->kv_seg.off[b] : NULL;
    const T *addw = (const T *)p->add_w;

    for (int64_t i = 0; i < Lq; i++) {
        mm[i] = -INFINITY; ll[i] = 0;
        for (int64_t c = 0; c < Dv; c++) acc[i * Dv + c] = 0;
    }
    je = imin(je, kv_len);
    if (js >= je || nq == 0) return;
    for (int64_t i = 0; i < nq; i++) {
        llw[i] = 0;
        for (int64_t c = 0; c < Dv; c++) accw[i * Dv16 + c] = part[i * Dv16 + c] = 0;
    }
    int pending = 0;   /* chunks summed in part, not yet added into accw */

    for (int64_t i = 0; i < nq; i++) SUF(q_row_scaled)(p, b, i, scale, qs + i * D16, 1);

    for (int64_t j0 = js; j0 < je; j0 += DCH) {
        /* Ctrl-C: the call raises (polled every 4 chunks: a poll reads the clock) */
        if (((j0 - js) & (4 * DCH - 1)) == 0 && cattn_should_stop(p)) return;
        const int64_t nk = imin(DCH, je - j0);
        /* this chunk's K rows: in place, or widened from float16 for the
           score kinds that need several passes over a row */
        const int half = p->kv_format == CATTN_KV_F16;
        const T *Kc = K + j0 * p->k.rs;
        int64_t kc_rs = p->k.rs;
        if (half && score != CATTN_SCORE_DOT) {
            SUF(half_rows)(Kh + j0 * p->k.rs, p->k.rs, nk, D, kbuf, D16);
            Kc = kbuf; kc_rs = D16;
        }
        const double cos_tiny = SUF(cos_tiny)(scale);
        if (score == CATTN_SCORE_COSINE)
            for (int64_t j = 0; j < nk; j++) {
                const T *kr = Kc + j * kc_rs;
                const T ss = SUF(dot)(kr, kr, D);
                /* vector sum of squares; an overflowing one again in double */
                double f = ss <= (T)1e30 ? 1.0 / sqrt((double)(ss > (T)1e-16 ? ss : (T)1e-16))
                                         : SUF(inv_norm)(kr, 1, D);
                inv_k[j] = f >= cos_tiny ? (T)f : (T)0;   /* 0: see below */
            }
        if (nq > 1 && score == CATTN_SCORE_DOT && !mask && !kseg && !bias
            && SUF(decode_chunk_mq)(p, half ? (const void *)Kh : (const void *)K,
                                    half ? (const void *)Vh : (const void *)Vm, nq, shift,
                                    j0, nk, je, qs, Smq, Emq, ko, vo, part, accw, llw, mm))
            goto chunk_done;
        for (int64_t i = 0; i < nq; i++) {
            const int64_t pos = i + shift;
            int64_t jlo = j0, jhi = j0 + nk;
            if (wl < CATTN_UNBOUNDED) jlo = imax(jlo, pos - wl);
            if (wr < CATTN_UNBOUNDED) jhi = imin(jhi, pos + wr + 1);
            if (jlo >= jhi) continue;
            const T *qi = qs + i * D16;
            const int64_t qsg = qseg ? qseg[i * p->q_seg.rs] : 0;
            T mc = -INFINITY;
            if (score != CATTN_SCORE_ADDITIVE) {
                /* raw dot products first, four keys at a time */
                int64_t j = jlo;
                if (half && score == CATTN_SCORE_DOT) {
                    const uint16_t *kh = Kh + jlo * p->k.rs;
                    for (; j + 4 <= jhi; j += 4, kh += 4 * p->k.rs) {
                        /* software prefetch DEC_PF_L2 rows ahead (into L2): float16
                           rows carry half the bytes per instruction, too few misses
                           in flight for one core to reach the streaming rate */
                        if (i == 0)   /* once per chunk, not per query */
                            for (int r = 0; r < 4; r++)
                                SUF(prefetch_row_l2)(Kh + imin(j + r + DEC_PF_L2, je - 1) * p->k.rs,
                                                     2 * D);
                        SUF(dot4_h)(qi, kh, p->k.rs, D, s + (j - jlo));
                    }
                    for (; j < jhi; j++) s[j - jlo] = SUF(dot_h)(qi, Kh + j * p->k.rs, D);
                } else {
                    for (; j < jhi; j++) s[j - jlo] = SUF(dot)(qi, Kc + (j - j0) * kc_rs, D);
                }
            }
            if (softcap <= 0 && !mask && !kseg && !bias && score == CATTN_SCORE_DOT) {
                /* plain scores: s holds them already */
                mc = SUF(row_max)(s, jhi - jlo);
            } else
            for (int64_t j = jlo; j < jhi; j++) {
                T sc;
                if (score == CATTN_SCORE_ADDITIVE) {
                    const T *kr = Kc + (j - j0) * kc_rs;
                    V acc0 = {0};
                    int64_t d = 0;
                    for (; d + VL <= D; d += VL)
                        acc0 += vload(addw + d) * vtanh(vload(qi + d) + vload(kr + d));
                    sc = hsum(acc0);
                    for (; d < D; d++) sc += addw[d] * SUF(tanh1)(qi[d] + kr[d]);
                    sc *= scale;
                } else {
                    sc = s[j - jlo];
                    if (score == CATTN_SCORE_COSINE) {
                        if (inv_k[j - j0] != 0) {
                            sc *= inv_k[j - j0];
                        } else {    /* a key too long for q . k in T */
                            const T *kr = Kc + (j - j0) * kc_rs;
                            const double f = SUF(inv_norm)(kr, 1, D);
                            double acc = 0;
                            for (int64_t d = 0; d < D; d++)
                                acc += (double)qi[d] * ((double)kr[d] * f);
                            sc = (T)acc;
                        }
                    }
                }
                if (softcap > 0) sc = softcap * SUF(tanh1)(sc / softcap);
                if (!SUF(keep_pair)(p, mask, bias, qsg, kseg, i, j, &sc)) sc = -INFINITY;
                s[j - jlo] = sc;
                if (sc > mc) mc = sc;
            }
            const int64_t n = jhi - jlo;
            T mold = mm[i];
            T mnew = mc > mold ? mc : mold;
            const T msub = SUF(exp_shift)(mnew);
            if (mnew != mold && mold != -INFINITY) {
                const WIDE a = exp((double)(mold - mnew));
                llw[i] *= a;
                for (int64_t c = 0; c < Dv; c++) accw[i * Dv16 + c] *= a;
                for (int64_t c = 0; c < Dv; c++) part[i * Dv16 + c] *= (T)a;
            }
            int64_t j = 0;
            for (; j + VL <= n; j += VL) vstore(e + j, vexp(vload(s + j) - msub));
            for (; j < n; j++) e[j] = SUF(exp1)(s[j] - msub);
            /* the chunk's kept keys, compacted: masked ones are never
               multiplied (NaN or inf in a masked value cannot leak) */
            T lsum = 0;
            int64_t nk2 = 0;
            for (j = 0; j < n; j++) {
                if (half && i == 0)
                    SUF(prefetch_row_l2)(Vh + imin(jlo + j + DEC_PF_L2, je - 1) * p->v.rs, 2 * Dv);
                if (s[j] == -INFINITY) continue;
                lsum += e[j];
                e[nk2] = e[j];
                rows[nk2++] = (jlo + j) * p->v.rs;
            }
            T *pi = part + i * Dv16;
            if (half) SUF(pv_rows_h)(e, rows, nk2, Vh, pi, Dv);
            else for (j = 0; j < nk2; j++) SUF(axpy)(e[j], Vm + rows[j], pi, Dv);
            llw[i] += lsum;
            mm[i] = mnew;
        }
    chunk_done:
        if (++pending == DEC_BLOCK) {
            for (int64_t i = 0; i < nq; i++)
                for (int64_t c = 0; c < Dv; c++) {
                    accw[i * Dv16 + c] += (WIDE)part[i * Dv16 + c];
                    part[i * Dv16 + c] = 0;
                }
            pending = 0;
        }
    }
    for (int64_t i = 0; i < nq; i++) {
        ll[i] = (T)llw[i];
        for (int64_t c = 0; c < Dv; c++)
            acc[i * Dv + c] = (T)(accw[i * Dv16 + c] + (WIDE)part[i * Dv16 + c]);
    }
}

static void SUF(decode_finish)(const cattn_params *p, int64_t b, int64_t i, int64_t n_split,
                               const void *acc_, const void *mm_, const void *ll_)
{
    const T *acc = (const T *)acc_, *mm = (const T *)mm_, *ll = (const T *)ll_;
    /* partial s of (b, i): acc[s * Lq * Dv + i * Dv], mm/ll[s * Lq + i] */
    const int64_t Lq = p->Lq, Dv = p->Dv;
    const int64_t q_len = p->q_len ? p->q_len[b] : Lq;
    const int of = p->out_format;
    void *orow = SUF(out_rows)(p, b) + i * p->out.rs * SUF(io_size)(of);
    T *lse = p->lse ? (T *)p->lse + b * Lq : NULL;
    T M = -INFINITY;
    for (int64_t s = 0; s < n_split; s++) { T m = mm[s * Lq + i]; if (m > M) M = m; }
    WIDE L = 0;
    int any_nan = 0;
    for (int64_t s = 0; s < n_split; s++) {
        T l = ll[s * Lq + i];
        if (l != l) any_nan = 1;
        const T m = mm[s * Lq + i];
        if (m != -INFINITY) L += m == M ? (WIDE)l : (WIDE)l * exp((double)(m - M));
    }
    if (any_nan) L = NAN;
    const T M0 = M;
    WIDE f_extra = 1;
    if (p->sinks && i < q_len) {
        f_extra = SUF(fold_sink)((T)p->sinks[b], &M, &L);
    }
    if (i >= q_len || L == 0) {
        for (int64_t c = 0; c < Dv; c++) SUF(io_put)(of, orow, c * p->out.cs, 0);
        if (lse) lse[i] = -INFINITY;
        return;
    }
    /* sum_s acc_s * exp(m_s - M0): the split weights computed once (up to
       64 splits; more recompute them per column), each output written once */
    WIDE wsplit[64];
    const int64_t nw = n_split <= 64 ? n_split : 0;
    for (int64_t s = 0; s < nw; s++) {
        T m = mm[s * Lq + i];
        wsplit[s] = (m == -INFINITY && ll[s * Lq + i] == 0) ? 0.0           /* empty split */
                    : (m == -INFINITY || m == M0) ? 1.0 : exp((double)(m - M0));
    }
    const WIDE f = f_extra / L;
    for (int64_t c = 0; c < Dv; c++) {
        WIDE o = 0;
        for (int64_t s = 0; s < n_split; s++) {
            T m = mm[s * Lq + i];
            if (m == -INFINITY && ll[s * Lq + i] == 0) continue;   /* empty split */
            WIDE w = nw ? wsplit[s] : (m == -INFINITY || m == M0) ? 1.0 : exp((double)(m - M0));
            o += (WIDE)acc[(s * Lq + i) * Dv + c] * w;
        }
        /* a +inf logit: NaN (inf - inf), as finish_block */
        SUF(io_put)(of, orow, c * p->out.cs, M == (T)INFINITY ? (T)NAN : (T)(o * f));
    }
    /* a +inf logit: lse +inf, or NaN with a NaN logit too (L is NaN only then) */
    if (lse) lse[i] = M == (T)INFINITY ? (L == L ? M : (T)NAN) : M + (T)log(L);
}
#undef DCH
#undef PFK
#undef DEC_BLOCK
#undef TILE_BLOCK
#undef NQ
#undef MR_S
#undef MR_O
#undef RUP16
#undef RUPQ
#undef CATTN_TILE_PACK_Q
#undef CATTN_TILE_LOAD_KV
#undef CATTN_TILE_SCORES
#undef CATTN_TILE_PV
#undef CATTN_TILE_P_PAIRS
