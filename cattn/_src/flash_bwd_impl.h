/*
 * The backward kernels (FlashAttention-2's backward), written once against
 * the primitives of simd_*.h and simd_math.h and the forward's micro-kernels
 * (tile_scores_dot, tile_scores_additive, tile_pv, row_factor, keep_pair of
 * flash_impl.h, included before this file by instantiate.h).  No ISA test
 * in this file.
 *
 * Nothing of size Lq x Lk is stored: P is recomputed tile by tile from Q, K
 * and the forward's log-sum-exp,
 *     P = exp(S - lse),  dV += P^T dO,  dP = dO V^T,
 *     dS = P * (dP - delta),  delta_i = dO_i . O_i  (computed by the caller),
 *     dQ += dS K * scale,  dK += dS^T Q * scale.
 * Scores are kept transposed as in the forward: keys on the rows of a tile,
 * queries along the vector lanes.
 *
 * Work items:
 *   bwd_kv(g, kb): one key block of one K/V group (the batch items that
 *     share a K/V head: GQA query heads, broadcast batch dims).  It owns
 *     its rows of dK and dV (no atomics) and, when given a per-thread dQ
 *     partial, adds its dS K there.
 *   bwd_q(b, qb): one query block's dQ (the separate dQ pass: recomputes
 *     S and dP, no race either).
 * Tiles that the window (causal), the lengths or the segment ids make
 * empty are skipped, as in the forward.
 */

#define BNQ (2 * VL)
#define BRUP16(x) ((((x) + 15) / 16) * 16)
#define BRUPQ(x) ((((x) + 31) / 32) * 32)

/* Scratch of one work item (elements of T, every piece 16-aligned). */
typedef struct SUF(bwd_scr) {
    T *QT, *Qs, *dOT, *dOs, *ST, *PT, *dST, *GT, *dKa, *dVa, *dQa, *lse, *del;
    int64_t BQP, D16, Dv16;
} SUF(bwd_scr);

static int64_t SUF(bwd_layout)(const cattn_bwd_params *bp, SUF(bwd_scr) *s, T *base)
{
    const cattn_params *p = &bp->f;
    const int64_t BQP = BRUPQ(p->block_q), BK = BRUP16(p->block_k);
    const int64_t D16 = BRUP16(p->D), Dv16 = BRUP16(p->Dv);
    int64_t o = 0;
#define BPIECE(name, n) do { if (s) s->name = base + o; o += (n); } while (0)
    BPIECE(QT, D16 * BQP);
    BPIECE(Qs, BQP * D16);
    BPIECE(dOT, Dv16 * BQP);
    BPIECE(dOs, BQP * Dv16);
    BPIECE(ST, BK * BQP);
    BPIECE(PT, BK * BQP);
    BPIECE(dST, BK * BQP);
    BPIECE(GT, p->softcap > 0 ? BK * BQP : 0);
    BPIECE(dKa, BK * D16);
    BPIECE(dVa, BK * Dv16);
    BPIECE(dQa, BQP * D16);
    BPIECE(lse, BQP);
    BPIECE(del, BQP);
#undef BPIECE
    if (s) { s->BQP = BQP; s->D16 = D16; s->Dv16 = Dv16; }
    return o;
}

static size_t SUF(bwd_scratch_bytes)(const cattn_bwd_params *bp)
{
    return (size_t)SUF(bwd_layout)(bp, NULL, NULL) * sizeof(T) + 64;
}

/* C[r, 0:n] += sum_{t < kk} A[r lda + t] B[t ldb + 0:n] for r < m (B and C
   unit stride along n): dV += P^T dO and dK += dS^T Q with the key rows of
   a tile on r and the queries on t. */
static void SUF(bwd_gemm_tn)(const T *A, int64_t lda, int64_t m, int64_t kk,
                             const T *B, int64_t ldb, int64_t n, T *C, int64_t ldc)
{
    if (kk <= 0) return;
    int64_t c = 0;
    for (; c + 2 * VL <= n; c += 2 * VL) {
        int64_t r = 0;
        /* 32 registers (AVX-512): 8 rows x 2 vectors */
        if (CATTN_NREGS >= 32) for (; r + 8 <= m; r += 8) {
            V a[8][2];
            for (int u = 0; u < 8; u++) {
                a[u][0] = vload(C + (r + u) * ldc + c);
                a[u][1] = vload(C + (r + u) * ldc + c + VL);
            }
            const T *ap = A + r * lda;
            for (int64_t t = 0; t < kk; t++) {
                const V b0 = vload(B + t * ldb + c), b1 = vload(B + t * ldb + c + VL);
                for (int u = 0; u < 8; u++) {
                    const V x = vset1(ap[u * lda + t]);
                    a[u][0] += x * b0;
                    a[u][1] += x * b1;
                }
            }
            for (int u = 0; u < 8; u++) {
                vstore(C + (r + u) * ldc + c, a[u][0]);
                vstore(C + (r + u) * ldc + c + VL, a[u][1]);
            }
        }
        for (; r + 4 <= m; r += 4) {
            T *c0 = C + r * ldc + c, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
            V a00 = vload(c0), a01 = vload(c0 + VL), a10 = vload(c1), a11 = vload(c1 + VL),
              a20 = vload(c2), a21 = vload(c2 + VL), a30 = vload(c3), a31 = vload(c3 + VL);
            const T *p0 = A + r * lda, *p1 = p0 + lda, *p2 = p1 + lda, *p3 = p2 + lda;
            for (int64_t t = 0; t < kk; t++) {
                const V b0 = vload(B + t * ldb + c), b1 = vload(B + t * ldb + c + VL);
                V x;
                x = vset1(p0[t]); a00 += x * b0; a01 += x * b1;
                x = vset1(p1[t]); a10 += x * b0; a11 += x * b1;
                x = vset1(p2[t]); a20 += x * b0; a21 += x * b1;
                x = vset1(p3[t]); a30 += x * b0; a31 += x * b1;
            }
            vstore(c0, a00); vstore(c0 + VL, a01); vstore(c1, a10); vstore(c1 + VL, a11);
            vstore(c2, a20); vstore(c2 + VL, a21); vstore(c3, a30); vstore(c3 + VL, a31);
        }
        for (; r < m; r++) {
            V a0 = vload(C + r * ldc + c), a1 = vload(C + r * ldc + c + VL);
            const T *ap = A + r * lda;
            for (int64_t t = 0; t < kk; t++) {
                const V x = vset1(ap[t]);
                a0 += x * vload(B + t * ldb + c);
                a1 += x * vload(B + t * ldb + c + VL);
            }
            vstore(C + r * ldc + c, a0); vstore(C + r * ldc + c + VL, a1);
        }
    }
    for (; c + VL <= n; c += VL)
        for (int64_t r = 0; r < m; r++) {
            V a0 = vload(C + r * ldc + c);
            const T *ap = A + r * lda;
            for (int64_t t = 0; t < kk; t++) a0 += vset1(ap[t]) * vload(B + t * ldb + c);
            vstore(C + r * ldc + c, a0);
        }
    for (; c < n; c++)
        for (int64_t r = 0; r < m; r++) {
            T a0 = C[r * ldc + c];
            const T *ap = A + r * lda;
            for (int64_t t = 0; t < kk; t++) a0 += ap[t] * B[t * ldb + c];
            C[r * ldc + c] = a0;
        }
}

/* One (batch item, query block) against one key tile. */
typedef struct SUF(bwd_pair) {
    const cattn_bwd_params *bp;
    int64_t b, i0, nq, nqp, shift;
    T scale;
    const T *K, *Vm;
    const uint8_t *mask;
    const T *bias;
    const int64_t *qseg, *kseg;
} SUF(bwd_pair);

/* Diagonal of causal/window masks: query i sits at key position i + shift.
   The caller passes one shift per batch item (the forward's alignment);
   without it, Lk - Lq. */
static inline int64_t SUF(bwd_shift)(const cattn_bwd_params *bp, int64_t b)
{
    return bp->shift ? bp->shift[b] : bp->f.Lk - bp->f.Lq;
}

static void SUF(bwd_pair_init)(SUF(bwd_pair) *pr, const cattn_bwd_params *bp, int64_t b)
{
    const cattn_params *p = &bp->f;
    pr->bp = bp;
    pr->b = b;
    pr->shift = SUF(bwd_shift)(bp, b);
    pr->scale = (T)p->scale[b];
    pr->K = (const T *)p->k.base + p->k.off[b];
    pr->Vm = (const T *)p->v.base + p->v.off[b];
    pr->mask = p->mask.base ? (const uint8_t *)p->mask.base + p->mask.off[b] : NULL;
    pr->bias = p->bias.base ? (const T *)p->bias.base + p->bias.off[b] : NULL;
    pr->qseg = p->q_seg.base ? (const int64_t *)p->q_seg.base + p->q_seg.off[b] : NULL;
    pr->kseg = p->kv_seg.base ? (const int64_t *)p->kv_seg.base + p->kv_seg.off[b] : NULL;
}

/* Q (scaled by the row factor) as panels Q^T and rows Qs, dO as panels
   dO^T and rows dOs, the block's lse (+inf where a row gets no weight:
   padding or an empty row) and delta; zero padding up to nqp. */
static void SUF(bwd_pack)(SUF(bwd_pair) *pr, const SUF(bwd_scr) *s, int64_t i0, int64_t nq)
{
    const cattn_bwd_params *bp = pr->bp;
    const cattn_params *p = &bp->f;
    const int64_t D = p->D, Dv = p->Dv, b = pr->b, D16 = s->D16, Dv16 = s->Dv16;
    const int64_t nqp = BRUPQ(nq > 0 ? nq : 1);
    pr->i0 = i0; pr->nq = nq; pr->nqp = nqp;
    const T *Q = (const T *)p->q.base + p->q.off[b] + i0 * p->q.rs;
    const T *dO = (const T *)bp->dout.base + bp->dout.off[b] + i0 * bp->dout.rs;
    const T *lse = (const T *)p->lse + b * p->Lq + i0;
    const T *del = (const T *)bp->delta + b * p->Lq + i0;
    for (int64_t i = 0; i < nqp; i++) {
        T *qt = s->QT + (i / BNQ) * D * BNQ + i % BNQ;
        T *qs = s->Qs + i * D16;
        T *dt = s->dOT + (i / BNQ) * Dv * BNQ + i % BNQ;
        T *ds = s->dOs + i * Dv16;
        if (i < nq) {
            const T *qr = Q + i * p->q.rs;
            const T f = SUF(row_factor)(p, qr, pr->scale);
            for (int64_t d = 0; d < D; d++) { T x = qr[d * p->q.cs] * f; qt[d * BNQ] = x; qs[d] = x; }
            const T *gr = dO + i * bp->dout.rs;
            for (int64_t d = 0; d < Dv; d++) { T x = gr[d * bp->dout.cs]; dt[d * BNQ] = x; ds[d] = x; }
            s->lse[i] = lse[i] == -INFINITY ? (T)INFINITY : lse[i];
            s->del[i] = del[i];
        } else {
            for (int64_t d = 0; d < D; d++) { qt[d * BNQ] = 0; qs[d] = 0; }
            for (int64_t d = 0; d < Dv; d++) { dt[d * BNQ] = 0; ds[d] = 0; }
            s->lse[i] = INFINITY;
            s->del[i] = 0;
        }
    }
}

/* True when the segment ids rule out every pair of (query block, key tile). */
static int SUF(bwd_segments_disjoint)(const SUF(bwd_pair) *pr, int64_t i0, int64_t nq,
                                      int64_t j0, int64_t nk)
{
    const cattn_params *p = &pr->bp->f;
    int64_t qmin = INT64_MAX, qmax = INT64_MIN, kmin = INT64_MAX, kmax = INT64_MIN;
    for (int64_t i = 0; i < nq; i++) {
        int64_t v = pr->qseg[(i0 + i) * p->q_seg.rs];
        qmin = v < qmin ? v : qmin; qmax = v > qmax ? v : qmax;
    }
    for (int64_t j = 0; j < nk; j++) {
        int64_t v = pr->kseg[(j0 + j) * p->kv_seg.rs];
        kmin = v < kmin ? v : kmin; kmax = v > kmax ? v : kmax;
    }
    return kmax < qmin || kmin > qmax;
}

/* Whether the pair (query block, key tile) needs element-wise masking. */
static int SUF(bwd_partial)(const SUF(bwd_pair) *pr, int64_t j0, int64_t nk)
{
    const cattn_params *p = &pr->bp->f;
    if (pr->mask || pr->bias || pr->qseg) return 1;
    const int64_t first = pr->i0 + pr->shift, last = pr->i0 + pr->nq - 1 + pr->shift;
    if (p->win_left < CATTN_UNBOUNDED && j0 < last - p->win_left) return 1;
    if (p->win_right < CATTN_UNBOUNDED && j0 + nk - 1 > first + p->win_right) return 1;
    return 0;
}

/* The recomputation shared by both work items: S^T (scored, softcapped,
   masked to -inf), P^T, dP^T and dS^T of one (query block, key tile).
   dST ends as the gradient with respect to scale * (raw score); dbias and
   dscore (when given) receive dS with respect to the final score and to
   the scaled raw score. */
static void SUF(bwd_scores)(const SUF(bwd_pair) *pr, const SUF(bwd_scr) *s, int64_t j0,
                            int64_t nk, int partial, int write_ds)
{
    const cattn_bwd_params *bp = pr->bp;
    const cattn_params *p = &bp->f;
    const int64_t ld = s->BQP, nqp = pr->nqp, nq = pr->nq, i0 = pr->i0;
    const int64_t D = p->D, Dv = p->Dv;
    const T *Kt = pr->K + j0 * p->k.rs, *Vt = pr->Vm + j0 * p->v.rs;
    T *ST = s->ST, *PT = s->PT, *dST = s->dST, *GT = s->GT;
    if (p->score_kind == CATTN_SCORE_ADDITIVE) {
        SUF(tile_scores_additive)(Kt, p->k.rs, nk, s->QT, ld, nqp, D, (const T *)p->add_w, ST);
        const T scale = pr->scale;
        for (int64_t j = 0; j < nk; j++)
            for (int64_t i = 0; i < nqp; i += VL)
                vstore(ST + j * ld + i, vload(ST + j * ld + i) * scale);
    } else {
        SUF(tile_scores_dot)(Kt, p->k.rs, nk, s->QT, ld, nqp, D, ST);
    }
    const T softcap = (T)p->softcap;
    if (softcap > 0) {
        /* c tanh(s / c), and its derivative 1 - tanh^2 for the chain rule */
        const T inv = (T)1 / softcap;
        for (int64_t j = 0; j < nk; j++)
            for (int64_t i = 0; i < nqp; i += VL) {
                const V t = vtanh(vload(ST + j * ld + i) * inv);
                vstore(ST + j * ld + i, t * softcap);
                vstore(GT + j * ld + i, (T)1 - t * t);
            }
    }
    if (partial) {
        const int64_t wl = p->win_left, wr = p->win_right;
        for (int64_t j = 0; j < nk; j++) {
            const int64_t jj = j0 + j;
            T *srow = ST + j * ld;
            for (int64_t i = 0; i < nq; i++) {
                const int64_t ii = i0 + i, pos = ii + pr->shift;
                int keep = 1;
                if (wl < CATTN_UNBOUNDED && jj < pos - wl) keep = 0;
                if (wr < CATTN_UNBOUNDED && jj > pos + wr) keep = 0;
                const int64_t qsg = pr->qseg ? pr->qseg[ii * p->q_seg.rs] : 0;
                if (keep) keep = SUF(keep_pair)(p, pr->mask, pr->bias, qsg, pr->kseg, ii, jj, srow + i);
                if (!keep) srow[i] = -INFINITY;
            }
            for (int64_t i = nq; i < nqp; i++) srow[i] = -INFINITY;
        }
    }
    /* dP^T = V dO^T */
    SUF(tile_scores_dot)(Vt, p->v.rs, nk, s->dOT, ld, nqp, Dv, dST);
    const V ninf = vset1(-INFINITY), zero = vset1(0);
    for (int64_t j = 0; j < nk; j++)
        for (int64_t i = 0; i < nqp; i += VL) {
            const V sc = vload(ST + j * ld + i);
            const V P = vexp(sc - vload(s->lse + i));
            V ds = P * (vload(dST + j * ld + i) - vload(s->del + i));
            /* a masked pair contributes nothing, even when V is not finite */
            if (partial) ds = vsel(VMASK(sc == ninf), zero, ds);
            vstore(PT + j * ld + i, P);
            vstore(dST + j * ld + i, ds);
        }
    if (write_ds && bp->dbias) {
        T *W = (T *)bp->dbias + (pr->b * p->Lq + i0) * p->Lk + j0;
        for (int64_t i = 0; i < nq; i++)
            for (int64_t j = 0; j < nk; j++) W[i * p->Lk + j] = dST[j * ld + i];
    }
    if (softcap > 0)
        for (int64_t j = 0; j < nk; j++)
            for (int64_t i = 0; i < nqp; i += VL)
                vstore(dST + j * ld + i, vload(dST + j * ld + i) * vload(GT + j * ld + i));
    if (write_ds && bp->dscore) {
        T *W = (T *)bp->dscore + (pr->b * p->Lq + i0) * p->Lk + j0;
        for (int64_t i = 0; i < nq; i++)
            for (int64_t j = 0; j < nk; j++) W[i * p->Lk + j] = dST[j * ld + i];
    }
}

/* dQa[0:nqp] += dS K over the tile (unscaled).  On a partial tile a key
   row holding inf/NaN is added query by query, skipping masked pairs. */
static void SUF(bwd_dq_tile)(const SUF(bwd_pair) *pr, const SUF(bwd_scr) *s, int64_t j0,
                             int64_t nk, int partial)
{
    const cattn_params *p = &pr->bp->f;
    const int64_t ld = s->BQP, D = p->D, D16 = s->D16;
    const T *Kt = pr->K + j0 * p->k.rs;
    const int64_t k_rs = p->k.rs;
    if (!partial) {
        SUF(tile_pv)(s->dST, ld, pr->nqp, Kt, k_rs, 0, nk, D, s->dQa, D16);
        return;
    }
    int64_t ja = 0;
    for (int64_t j = 0; j < nk; j++) {
        if (!SUF(row_nonfinite)(Kt + j * k_rs, D)) continue;
        if (j > ja) SUF(tile_pv)(s->dST, ld, pr->nqp, Kt, k_rs, ja, j, D, s->dQa, D16);
        for (int64_t i = 0; i < pr->nq; i++) {
            if (s->ST[j * ld + i] == -INFINITY) continue;
            const T w = s->dST[j * ld + i];
            for (int64_t d = 0; d < D; d++) s->dQa[i * D16 + d] += w * Kt[j * k_rs + d];
        }
        ja = j + 1;
    }
    if (nk > ja) SUF(tile_pv)(s->dST, ld, pr->nqp, Kt, k_rs, ja, nk, D, s->dQa, D16);
}

/* dVa += P^T dO and (dot scores) dKa += dS^T Q.  On a partial tile a query
   row of Q holding inf/NaN is added key by key, skipping masked pairs. */
static void SUF(bwd_dkdv_tile)(const SUF(bwd_pair) *pr, const SUF(bwd_scr) *s, int64_t nk,
                               int partial)
{
    const cattn_params *p = &pr->bp->f;
    const int64_t ld = s->BQP, nq = pr->nq, D = p->D, Dv = p->Dv;
    SUF(bwd_gemm_tn)(s->PT, ld, nk, nq, s->dOs, s->Dv16, Dv, s->dVa, s->Dv16);
    if (p->score_kind == CATTN_SCORE_ADDITIVE) return;   /* dK: the caller's tanh Jacobian */
    if (!partial) {
        SUF(bwd_gemm_tn)(s->dST, ld, nk, nq, s->Qs, s->D16, D, s->dKa, s->D16);
        return;
    }
    int64_t ta = 0;
    for (int64_t t = 0; t < nq; t++) {
        if (!SUF(row_nonfinite)(s->Qs + t * s->D16, D)) continue;
        SUF(bwd_gemm_tn)(s->dST + ta, ld, nk, t - ta, s->Qs + ta * s->D16, s->D16, D,
                         s->dKa, s->D16);
        for (int64_t j = 0; j < nk; j++) {
            if (s->ST[j * ld + t] == -INFINITY) continue;
            const T w = s->dST[j * ld + t];
            for (int64_t d = 0; d < D; d++) s->dKa[j * s->D16 + d] += w * s->Qs[t * s->D16 + d];
        }
        ta = t + 1;
    }
    SUF(bwd_gemm_tn)(s->dST + ta, ld, nk, nq - ta, s->Qs + ta * s->D16, s->D16, D,
                     s->dKa, s->D16);
}

/* One key block of K/V group g: dK, dV rows [kb*block_k, ...) of the group,
   written whole (zeros past every item's kv length); dS K added to the
   per-thread partial dq_part (n_batch x Lq x D, unscaled) when given. */
static void SUF(bwd_kv)(const cattn_bwd_params *bp, int64_t g, int64_t kb, void *dq_part,
                        void *scratch)
{
    const cattn_params *p = &bp->f;
    SUF(bwd_scr) s;
    SUF(bwd_layout)(bp, &s, (T *)scratch);
    const int64_t Lq = p->Lq, Lk = p->Lk, D = p->D, Dv = p->Dv, BQ = p->block_q;
    const int64_t j0 = kb * p->block_k, nk0 = imin(p->block_k, Lk - j0);
    const int64_t wl = p->win_left, wr = p->win_right;
    for (int64_t j = 0; j < nk0; j++) {
        for (int64_t d = 0; d < D; d++) s.dKa[j * s.D16 + d] = 0;
        for (int64_t d = 0; d < Dv; d++) s.dVa[j * s.Dv16 + d] = 0;
    }
    T *dqp = (T *)dq_part;
    const int want_dq = dqp != NULL && p->score_kind != CATTN_SCORE_ADDITIVE;
    for (int64_t gi = bp->group_start[g]; gi < bp->group_start[g + 1]; gi++) {
        const int64_t b = bp->group_items[gi];
        const int64_t kv_len = p->kv_len ? p->kv_len[b] : Lk;
        const int64_t q_len = p->q_len ? p->q_len[b] : Lq;
        if (j0 >= kv_len) continue;
        const int64_t nk = imin(nk0, kv_len - j0);
        SUF(bwd_pair) pr;
        SUF(bwd_pair_init)(&pr, bp, b);
        /* the queries that may see a key of [j0, j0 + nk) */
        int64_t ilo = 0, ihi = q_len;
        if (wr < CATTN_UNBOUNDED) ilo = imax(ilo, j0 - wr - pr.shift);
        if (wl < CATTN_UNBOUNDED) ihi = imin(ihi, j0 + nk - 1 + wl - pr.shift + 1);
        if (ilo >= ihi) continue;
        for (int64_t i0 = (ilo / BQ) * BQ; i0 < ihi; i0 += BQ) {
            if (cattn_should_stop(p)) return;      /* Ctrl-C: the call raises */
            const int64_t nq = imin(BQ, q_len - i0);
            if (pr.qseg && SUF(bwd_segments_disjoint)(&pr, i0, nq, j0, nk)) continue;
            SUF(bwd_pack)(&pr, &s, i0, nq);
            const int partial = SUF(bwd_partial)(&pr, j0, nk);
            SUF(bwd_scores)(&pr, &s, j0, nk, partial, 1);
            SUF(bwd_dkdv_tile)(&pr, &s, nk, partial);
            if (want_dq) {
                for (int64_t i = 0; i < pr.nqp; i++)
                    for (int64_t d = 0; d < D; d++) s.dQa[i * s.D16 + d] = 0;
                SUF(bwd_dq_tile)(&pr, &s, j0, nk, partial);
                T *dst = dqp + (b * Lq + i0) * D;
                for (int64_t i = 0; i < nq; i++)
                    for (int64_t d = 0; d < D; d++) dst[i * D + d] += s.dQa[i * s.D16 + d];
            }
        }
    }
    T *dk = (T *)bp->dk + (g * Lk + j0) * D;
    T *dv = (T *)bp->dv + (g * Lk + j0) * Dv;
    for (int64_t j = 0; j < nk0; j++) {
        if (p->score_kind != CATTN_SCORE_ADDITIVE)
            for (int64_t d = 0; d < D; d++) dk[j * D + d] = s.dKa[j * s.D16 + d];
        for (int64_t d = 0; d < Dv; d++) dv[j * Dv + d] = s.dVa[j * s.Dv16 + d];
    }
}

/* The dQ pass: one (batch item, query block); dQ rows (unscaled) written to
   bp->dq (n_batch x Lq x D), zeros for padded queries. */
static void SUF(bwd_q)(const cattn_bwd_params *bp, int64_t b, int64_t qb, void *scratch)
{
    const cattn_params *p = &bp->f;
    SUF(bwd_scr) s;
    SUF(bwd_layout)(bp, &s, (T *)scratch);
    const int64_t Lq = p->Lq, Lk = p->Lk, D = p->D;
    const int64_t i0 = qb * p->block_q, nq_blk = imin(p->block_q, Lq - i0);
    const int64_t kv_len = p->kv_len ? p->kv_len[b] : Lk;
    const int64_t q_len = p->q_len ? p->q_len[b] : Lq;
    const int64_t nq = imax(0, imin(nq_blk, q_len - i0));
    const int64_t wl = p->win_left, wr = p->win_right;
    T *dst = (T *)bp->dq + (b * Lq + i0) * D;
    for (int64_t i = 0; i < BRUPQ(nq_blk); i++)
        for (int64_t d = 0; d < D; d++) s.dQa[i * s.D16 + d] = 0;
    if (nq > 0 && p->score_kind != CATTN_SCORE_ADDITIVE) {
        SUF(bwd_pair) pr;
        SUF(bwd_pair_init)(&pr, bp, b);
        SUF(bwd_pack)(&pr, &s, i0, nq);
        int64_t k_lo = 0, k_hi = kv_len;
        if (wl < CATTN_UNBOUNDED) k_lo = imax(k_lo, i0 + pr.shift - wl);
        if (wr < CATTN_UNBOUNDED) k_hi = imin(k_hi, i0 + nq - 1 + pr.shift + wr + 1);
        /* key tiles aligned to the key blocks of bwd_kv */
        for (int64_t j0 = (k_lo > 0 ? k_lo : 0) / p->block_k * p->block_k; j0 < k_hi;
             j0 += p->block_k) {
            if (cattn_should_stop(p)) return;
            const int64_t nk = imin(p->block_k, k_hi - j0);
            if (pr.qseg && SUF(bwd_segments_disjoint)(&pr, i0, nq, j0, nk)) continue;
            const int partial = SUF(bwd_partial)(&pr, j0, nk);
            SUF(bwd_scores)(&pr, &s, j0, nk, partial, 0);
            SUF(bwd_dq_tile)(&pr, &s, j0, nk, partial);
        }
    }
    for (int64_t i = 0; i < nq_blk; i++)
        for (int64_t d = 0; d < D; d++) dst[i * D + d] = s.dQa[i * s.D16 + d];
}

#undef BNQ
#undef BRUP16
#undef BRUPQ
