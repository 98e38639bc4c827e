/*
 * The tile path's products in bfloat16 (VDPBF16PS), for a bfloat16 K/V
 * cache with float32 math: S^T = K Q^T and O += P V with bfloat16 operands
 * and float32 accumulation; the softmax, masking, weights pass and the
 * finish stay the float32 steps of flash_impl.h.  Included by
 * instantiate_bf16.h after flash_impl.h when the ISA has VDPBF16PS
 * (flash_bf16_hooks.h routed flash_block's product steps here).
 *
 * Packing (VDPBF16PS multiplies pairs along the reduction axis):
 *   Q^T   pairs of D: panel of NQ queries, lane i of pair row t holds
 *         (q[i, 2t], q[i, 2t+1]) rounded to bfloat16, *unscaled*; the
 *         scale (or the cosine factor) multiplies the float32 result, so
 *         a bfloat16 query is used exactly;
 *   K     read in place: a 32-bit broadcast of K[j, 2t:2t+2] is a pair;
 *   P^T   pairs of keys: lane i of pair row t holds (P[i, 2t], P[i, 2t+1])
 *         rounded to bfloat16 (the row sums keep the float32 P, as
 *         flash-attention does);
 *   V     pairs of keys, interleaved per tile: lane c of pair row t holds
 *         (V[2t, c], V[2t+1, c]).
 * The additive score (tanh of sums, no product) keeps the widening steps.
 */
/* as in flash_impl.h (which undefines them at its end) */
#define NQ (2 * VL)
#define RUP16(x) ((((x) + 15) / 16) * 16)
#define RUP32(x) ((((x) + 31) / 32) * 32)

/* Extra scratch after the widening layout (in 32-bit words): P^T pairs,
   V pairs, the per-query factors. */
static void SUF(dp_layout)(const cattn_params *p, int64_t off[4])
{
    int64_t bqp, base[NOFF];
    SUF(scratch_layout)(p, &bqp, base);
    const int64_t bk2 = RUP16(p->block_k) / 2;
    off[0] = base[NOFF - 1];                 /* PP  bk2 x BQP */
    off[1] = off[0] + bk2 * bqp;             /* VP  bk2 x RUP32(Dv) */
    off[2] = off[1] + bk2 * RUP32(p->Dv);    /* fq  BQP */
    off[3] = off[2] + bqp;
}

static size_t SUF(scratch_bytes_dp)(const cattn_params *p)
{
    int64_t off[4];
    SUF(dp_layout)(p, off);
    return (size_t)off[3] * 4 + 64;
}

static inline uint32_t SUF(pair_of)(T lo, T hi)
{
    return (uint32_t)cattn_float_to_bf16(lo) | ((uint32_t)cattn_float_to_bf16(hi) << 16);
}

/* Q^T in pairs of D (see the top), the per-query factors, and the running
   max/sum and O reset as pack_q does. */
CATTN_STEP void SUF(pack_q_dp)(SUF(blk) *k)
{
    const cattn_params *p = k->p;
    if (p->score_kind == CATTN_SCORE_ADDITIVE) { SUF(pack_q)(k); return; }
    int64_t off[4];
    SUF(dp_layout)(p, off);
    T *fqv = k->QT + off[2];                      /* QT is the scratch's first piece */
    uint32_t *QB = (uint32_t *)k->QT;
    const int64_t D = p->D, D2 = (D + 1) / 2, nq = k->nq, nqp = k->nqp;
    const int64_t q_rs = p->q.rs, q_cs = p->q.cs;
    const int qf = p->q_format;
    const char *Qb = SUF(q_rows)(p, k->b);
    const int64_t qsz = SUF(io_size)(qf);
    int64_t tdone = 0;   /* pairs of the current panel's rows written by t32_16 */
    for (int64_t i = 0; i < nqp; i++) {
        uint32_t *dst = QB + (i / NQ) * D2 * NQ + i % NQ;
#ifdef CATTN_HAVE_T32
        /* a whole panel of contiguous bfloat16 rows, D even: their pairs
           are 32-bit words in order, transposed 16 x 16 in registers */
        if (i % NQ == 0) {
            tdone = 0;
            if (qf == CATTN_IO_BF16 && q_cs == 1 && !(D & 1) && i + NQ <= nq)
                for (; tdone + 16 <= D2; tdone += 16)
                    for (int64_t ib = 0; ib < NQ; ib += 16)
                        SUF(t32_16)(Qb + (k->i0 + i + ib) * q_rs * qsz + tdone * 4, q_rs * qsz,
                                    dst + tdone * NQ + ib, NQ, 0, 0);
        }
#endif
        if (i < nq) {
            /* q read in its storage: the compute type or 16-bit (io_get) */
            const char *qr = Qb + (k->i0 + i) * q_rs * qsz;
            fqv[i] = qf == CATTN_IO_NATIVE ? SUF(row_factor)(p, (const T *)qr, k->scale)
                                           : (double)k->scale;
            if (q_cs == 1 && qf != CATTN_IO_F16) {
                /* the row's bfloat16 values in order are its pairs: a
                   bfloat16 q as it is, a float32 one rounded in vectors */
                uint16_t h[2 * VL];
                for (int64_t d0 = 2 * tdone; d0 < D; d0 += 2 * VL) {
                    const int64_t n = imin(2 * VL, D - d0);
                    const uint16_t *r = (const uint16_t *)(const void *)qr + d0;
                    if (qf != CATTN_IO_BF16) {
                        SUF(bf16_row)((const T *)(const void *)qr + d0, n, h);
                        r = h;
                    }
                    for (int64_t t = 0; 2 * t < n; t++)
                        dst[(d0 / 2 + t) * NQ] =
                            (uint32_t)r[2 * t] | (2 * t + 1 < n ? (uint32_t)r[2 * t + 1] << 16 : 0);
                }
            } else {
                int64_t t = 0;
                for (; 2 * t + 1 < D; t++)
                    dst[t * NQ] = SUF(pair_of)(SUF(io_get)(qf, qr, 2 * t * q_cs),
                                               SUF(io_get)(qf, qr, (2 * t + 1) * q_cs));
                if (D & 1) dst[t * NQ] = SUF(pair_of)(SUF(io_get)(qf, qr, (D - 1) * q_cs), 0);
            }
        } else {
            fqv[i] = 0;
            for (int64_t t = 0; t < D2; t++) dst[t * NQ] = 0;
        }
    }
    SUF(reset_running)(k);
}

/* The tile's K and V rows: in place, as bfloat16 (the widening step for
   the additive score). */
CATTN_STEP void SUF(load_kv_dp)(const SUF(blk) *k, int64_t j0, int64_t nk,
                                const T **Kt, int64_t *kt_rs, const T **Vt, int64_t *vt_rs)
{
    const cattn_params *p = k->p;
    if (p->score_kind == CATTN_SCORE_ADDITIVE) {
        SUF(load_kv_tile)(k, j0, nk, Kt, kt_rs, Vt, vt_rs);
        return;
    }
    *Kt = (const T *)(const void *)(k->Kh + j0 * p->k.rs); *kt_rs = p->k.rs;
    *Vt = (const T *)(const void *)(k->Vh + j0 * p->v.rs); *vt_rs = p->v.rs;
}

/* one 32-bit pair of a bfloat16 row at element d (unaligned) */
static inline uint32_t SUF(row_pair)(const uint16_t *r, int64_t d)
{
    uint32_t x;
    memcpy(&x, r + d, 4);
    return x;
}

/* S^T[0:nk, 0:nqp] = (K Q^T) * fq, R key rows x two vectors of queries */
#define CATTN_DP_SCORES_BLOCK(R)                                                    \
    for (int64_t i = 0; i < nqp; i += NQ) {                                         \
        V c[R][2];                                                                  \
        for (int r = 0; r < R; r++) c[r][0] = c[r][1] = vset1(0);                    \
        const uint32_t *qp = QB + i * D2;                                           \
        int64_t t = 0;                                                              \
        for (; t < Dfull; t++, qp += NQ) {                                          \
            const SUF(VB) b0 = SUF(vb_load)(qp), b1 = SUF(vb_load)(qp + VL);        \
            for (int r = 0; r < R; r++) {                                           \
                const SUF(VB) a = SUF(vb_set1)(SUF(row_pair)(k0 + r * k_rs, 2 * t)); \
                c[r][0] = SUF(vdp)(c[r][0], a, b0);                                 \
                c[r][1] = SUF(vdp)(c[r][1], a, b1);                                 \
            }                                                                       \
        }                                                                           \
        if (D & 1) {                                                                \
            const SUF(VB) b0 = SUF(vb_load)(qp), b1 = SUF(vb_load)(qp + VL);        \
            for (int r = 0; r < R; r++) {                                           \
                const SUF(VB) a = SUF(vb_set1)(k0[r * k_rs + D - 1]);               \
                c[r][0] = SUF(vdp)(c[r][0], a, b0);                                 \
                c[r][1] = SUF(vdp)(c[r][1], a, b1);                                 \
            }                                                                       \
        }                                                                           \
        const V f0 = vload(fq + i), f1 = vload(fq + i + VL);                        \
        for (int r = 0; r < R; r++) {                                               \
            vstore(ST + (j + r) * ld + i, c[r][0] * f0);                            \
            vstore(ST + (j + r) * ld + i + VL, c[r][1] * f1);                       \
        }                                                                           \
    }

CATTN_STEP void SUF(tile_scores_dp)(const SUF(blk) *k, const T *Kt, int64_t k_rs, int64_t nk)
{
    const cattn_params *p = k->p;
    if (p->score_kind == CATTN_SCORE_ADDITIVE) { SUF(tile_scores)(k, Kt, k_rs, nk); return; }
    int64_t off[4];
    SUF(dp_layout)(p, off);
    const T *fq = k->QT + off[2];
    const uint32_t *QB = (const uint32_t *)k->QT;
    const uint16_t *K = (const uint16_t *)(const void *)Kt;
    const int64_t D = p->D, D2 = (D + 1) / 2, Dfull = D / 2, ld = k->ld, nqp = k->nqp;
    T *ST = k->ST;
    int64_t j = 0;
    for (; j + 8 <= nk; j += 8) {
        const uint16_t *k0 = K + j * k_rs;
        CATTN_DP_SCORES_BLOCK(8)
    }
    for (; j < nk; j++) {
        const uint16_t *k0 = K + j * k_rs;
        CATTN_DP_SCORES_BLOCK(1)
    }
    if (p->score_kind == CATTN_SCORE_COSINE) {
        for (int64_t jj = 0; jj < nk; jj++) {
            const uint16_t *kr = K + jj * k_rs;
            T ss = 0;
            for (int64_t d = 0; d < D; d++) {
                const T x = cattn_bf16_to_float(kr[d]);
                ss += x * x;
            }
            T nrm = (T)sqrt((double)ss);
            T f = (T)1 / (nrm > (T)1e-8 ? nrm : (T)1e-8);
            for (int64_t i = 0; i < nqp; i += VL)
                vstore(ST + jj * ld + i, vload(ST + jj * ld + i) * f);
        }
    }
    SUF(softcap_tile)(k, nk);
}
#undef CATTN_DP_SCORES_BLOCK

CATTN_STEP uint32_t *SUF(p_pairs)(const SUF(blk) *k)
{
    if (k->p->score_kind == CATTN_SCORE_ADDITIVE) return NULL;
    int64_t off[4];
    SUF(dp_layout)(k->p, off);
    return (uint32_t *)(k->QT + off[0]);
}

/* P^T = exp(S^T - msub) of the VL queries from i, two keys at a time,
   straight into key pairs (lane i of pair row t: P[2t], P[2t + 1]); returns
   the float32 column sums (flash-attention's: P unrounded in the sums).
   exp is vexp_p, accurate to 4e-6: P is rounded to bfloat16 (2^-9).
   Saves the store of P into S^T and its re-read by pv_tile_dp (measured
   at (1,8,2048,2048,64), 1 thread: see pv_tile_dp). */
CATTN_STEP V SUF(exp_pairs)(const SUF(blk) *k, uint32_t *PP, int64_t nk, int64_t i, V msub)
{
    const int64_t ld = k->ld, nqp = k->nqp;
    const T *ST = k->ST;
    V lsum0 = vset1(0), lsum1 = vset1(0);
    int64_t j = 0;
    for (; j + 2 <= nk; j += 2) {
        const V e0 = SUF(vexp_p)(vload(ST + j * ld + i) - msub);
        const V e1 = SUF(vexp_p)(vload(ST + (j + 1) * ld + i) - msub);
        lsum0 += e0;
        lsum1 += e1;
        SUF(vb_store)(PP + (j / 2) * nqp + i, SUF(vb_pairs)(e0, e1));
    }
    if (j < nk) {
        const V e0 = SUF(vexp_p)(vload(ST + j * ld + i) - msub);
        lsum0 += e0;
        SUF(vb_store)(PP + (j / 2) * nqp + i, SUF(vb_pairs)(e0, vset1(0)));
    }
    return lsum0 + lsum1;
}

/* The key pairs of the VL queries from i, from P^T in S^T (a flagged group:
   masked entries are -0.0, which bfloat16 keeps). */
CATTN_STEP void SUF(pack_pairs_col)(const SUF(blk) *k, uint32_t *PP, int64_t nk, int64_t i)
{
    const int64_t ld = k->ld, nqp = k->nqp;
    const T *ST = k->ST;
    for (int64_t j = 0; j < nk; j += 2) {
        const V hi = j + 1 < nk ? vload(ST + (j + 1) * ld + i) : vset1(0);
        SUF(vb_store)(PP + (j / 2) * nqp + i, SUF(vb_pairs)(vload(ST + j * ld + i), hi));
    }
}

/* whether rows[0:nk, 0:Dv] (bfloat16, row stride rs) hold an inf or NaN:
   32 values a compare (a scalar scan cost more than the products of a
   causal (1,8,128,128,64) call, whose every tile is a partial one) */
static inline int SUF(any_nonfinite)(const uint16_t *rows, int64_t rs, int64_t nk, int64_t Dv)
{
    const __m512i ex = _mm512_set1_epi16(0x7f80);
    __mmask32 hit = 0;
    for (int64_t j = 0; j < nk; j++) {
        const uint16_t *r = rows + j * rs;
        for (int64_t c = 0; c < Dv; c += 32) {
            const __mmask32 m = Dv - c >= 32 ? (__mmask32)0xffffffffu
                                             : (((__mmask32)1 << (Dv - c)) - 1);
            const __m512i x = _mm512_maskz_loadu_epi16(m, r + c);
            hit |= _mm512_cmpeq_epi16_mask(_mm512_and_si512(x, ex), ex);
        }
    }
    return hit != 0;
}

/* O += P V over a tile in bfloat16 pairs; a partial tile whose V holds
   inf/NaN adds key by key, skipping masked entries (flagged -0.0 by
   softmax_tile), as pv_tile does. */
CATTN_STEP void SUF(pv_tile_dp)(const SUF(blk) *k, const T *Vt, int64_t v_rs, int64_t nk,
                                int partial)
{
    const cattn_params *p = k->p;
    if (p->score_kind == CATTN_SCORE_ADDITIVE) { SUF(pv_tile)(k, Vt, v_rs, nk, partial); return; }
    const uint16_t *Vb = (const uint16_t *)(const void *)Vt;
    const int64_t nqp = k->nqp, nq = k->nq, Dv = p->Dv;
    T *O = k->O;
    if (partial) {
        if (SUF(any_nonfinite)(Vb, v_rs, nk, Dv)) {
            const uint32_t *PPr = SUF(p_pairs)(k);
            for (int64_t j = 0; j < nk; j++)
                for (int64_t i = 0; i < nq; i++) {
                    const uint16_t pb = (uint16_t)(PPr[(j / 2) * nqp + i] >> (16 * (j & 1)));
                    if (pb & 0x8000u) continue;          /* masked (-0.0): skip */
                    const T pr = cattn_bf16_to_float(pb);
                    for (int64_t c = 0; c < Dv; c++)
                        O[i * Dv + c] += pr * cattn_bf16_to_float(Vb[j * v_rs + c]);
                }
            return;
        }
    }
    int64_t off[4];
    SUF(dp_layout)(p, off);
    uint32_t *PP = (uint32_t *)(k->QT + off[0]);   /* written by softmax_tile */
    uint32_t *VP = (uint32_t *)(k->QT + off[1]);
    const int64_t nk2 = (nk + 1) / 2, Dv32 = RUP32(Dv);
    /* V in key pairs, 32 columns at a time (the last block zero-padded) */
    for (int64_t t = 0; t < nk2; t++) {
        const uint16_t *r0 = Vb + 2 * t * v_rs;
        const uint16_t *r1 = 2 * t + 1 < nk ? r0 + v_rs : NULL;
        for (int64_t c = 0; c < Dv; c += 32) {
            SUF(VB) o0, o1;
            SUF(vb_rows)(r0 + c, r1 ? r1 + c : NULL, imin(32, Dv - c), &o0, &o1);
            SUF(vb_store)(VP + t * Dv32 + c, o0);
            SUF(vb_store)(VP + t * Dv32 + c + 16, o1);
        }
    }
    const V zero = vset1(0);
    /* 8 query rows x 32 columns: sixteen accumulators */
    for (int64_t c = 0; c < Dv; c += 32) {
        const int64_t n0 = imin(VL, Dv - c), n1 = imin(VL, Dv - c - VL);
        for (int64_t i = 0; i < nqp; i += 8) {
            T *o0 = O + i * Dv + c;
            V a[8][2];
            for (int r = 0; r < 8; r++) {
                a[r][0] = n0 == VL ? vload(o0 + r * Dv) : SUF(vload_n)(o0 + r * Dv, n0);
                a[r][1] = n1 == VL ? vload(o0 + r * Dv + VL)
                          : n1 > 0 ? SUF(vload_n)(o0 + r * Dv + VL, n1) : zero;
            }
            const uint32_t *vp = VP + c, *pp = PP + i;
            for (int64_t t = 0; t < nk2; t++, vp += Dv32, pp += nqp) {
                const SUF(VB) b0 = SUF(vb_load)(vp), b1 = SUF(vb_load)(vp + VL);
                for (int r = 0; r < 8; r++) {
                    const SUF(VB) pr = SUF(vb_set1)(pp[r]);
                    a[r][0] = SUF(vdp)(a[r][0], pr, b0);
                    a[r][1] = SUF(vdp)(a[r][1], pr, b1);
                }
            }
            for (int r = 0; r < 8; r++) {
                if (n0 == VL) vstore(o0 + r * Dv, a[r][0]);
                else SUF(vstore_n)(o0 + r * Dv, a[r][0], n0);
                if (n1 == VL) vstore(o0 + r * Dv + VL, a[r][1]);
                else if (n1 > 0) SUF(vstore_n)(o0 + r * Dv + VL, a[r][1], n1);
            }
        }
    }
}
#undef RUP32
#undef RUP16
#undef NQ
