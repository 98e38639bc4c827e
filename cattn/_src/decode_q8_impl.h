/*
 * Decode over an int8 K/V cache (CATTN_KV_I8): the decode path of
 * flash_impl.h with K and/or V read as int8 rows and their float32 block
 * scales (kv_q8.h).  One query (the plain decode step): each int8 row is
 * read once and dequantised in registers (dot_q8, pv_rows_q8).  Several
 * queries of one item (GQA folded, Lq <= 8) or the cosine/additive scores:
 * each chunk of DCH rows is dequantised once into scratch (L1/L2) and the
 * float code runs over it, so the rows are still read from memory once.
 * The partials are those of decode_block; decode_finish merges them.
 * No software prefetch (float16 decode has one): prefetching 32 rows
 * ahead measured slower on the one-query path (min of 30 calls at
 * (1,32,1,4096,128), 1 thread, loaded host: 2.63-2.82 ms without, 3.06-3.59
 * with) and no consistent gain with 8 kv heads (4096 keys: 2.00-2.09 ms
 * with, 2.04-2.28 without; 32768 keys: 23.1-28.2 without, 25.8-26.2 with).
 */
#define DCH 64   /* keys per chunk: their scores stay in L1 */
#define RUP16(x) ((((x) + 15) / 16) * 16)

static size_t SUF(decode_scratch_bytes_q8)(const cattn_params *p)
{
    return (size_t)(CATTN_DECODE_MAX_LQ * RUP16(p->D) + (2 * CATTN_DECODE_MAX_LQ + 1) * DCH
                    + DCH * RUP16(p->D)) * sizeof(T)
           + DCH * sizeof(int64_t) + 64;
}

static void SUF(decode_block_q8)(const cattn_params *p, int64_t b, int64_t js, int64_t je,
                                 void *acc_, void *mm_, void *ll_, void *scratch)
{
    T *acc = (T *)acc_, *mm = (T *)mm_, *ll = (T *)ll_;
    const int64_t D = p->D, Dv = p->Dv, Lq = p->Lq, Lk = p->Lk;
    const int64_t D16 = RUP16(D);
    T *qs = (T *)scratch;                          /* Lq x D16 */
    T *S = qs + CATTN_DECODE_MAX_LQ * D16;         /* Lq x DCH: scores per query */
    T *E = S + CATTN_DECODE_MAX_LQ * DCH;          /* Lq x DCH: weights per query */
    T *inv_k = E + CATTN_DECODE_MAX_LQ * DCH;      /* DCH */
    T *kbuf = inv_k + DCH;                         /* DCH x D16 */
    int64_t *keys = (int64_t *)(kbuf + DCH * D16);    /* DCH (8-byte aligned: 16-multiple offsets) */
    const int kq = p->k_scale.base != NULL, vq = p->v_scale.base != NULL;
    const int8_t *K8 = (const int8_t *)p->k.base + p->k.off[b];
    const int8_t *V8 = (const int8_t *)p->v.base + p->v.off[b];
    const float *Ks = kq ? (const float *)p->k_scale.base + p->k_scale.off[b] : NULL;
    const float *Vs = vq ? (const float *)p->v_scale.base + p->v_scale.off[b] : NULL;
    const int64_t ks_rs = p->k_scale.rs, vs_rs = p->v_scale.rs;
    const T *K = (const T *)p->k.base + p->k.off[b];
    const T *Vm = (const T *)p->v.base + p->v.off[b];
    const int64_t q_len = p->q_len ? p->q_len[b] : Lq;
    const int64_t kv_len = p->kv_len ? p->kv_len[b] : Lk;
    const int64_t nq = imax(0, imin(Lq, q_len));
    const int64_t shift = Lk - Lq;
    const int64_t wl = p->win_left, wr = p->win_right;
    const int score = p->score_kind;
    const T scale = (T)p->scale[b];
    const T softcap = (T)p->softcap;
    const uint8_t *mask = p->mask.base ? (const uint8_t *)p->mask.base + p->mask.off[b] : NULL;
    const T *bias = p->bias.base ? (const T *)p->bias.base + p->bias.off[b] : NULL;
    const int64_t *qseg = p->q_seg.base ? (const int64_t *)p->q_seg.base + p->q_seg.off[b] : NULL;
    const int64_t *kseg = p->kv_seg.base ? (const int64_t *)p->kv_seg.base + p->kv_seg.off[b] : NULL;
    const T *addw = (const T *)p->add_w;
    /* int8 rows read in place: one query (dot_q8, pv_rows_q8), or all the
       queries at once (scores_mq_q8, pv_mq_q8); cosine and additive scores
       read a chunk of K dequantised once into scratch */
    const int k_direct = kq && score == CATTN_SCORE_DOT && nq == 1;
    const int k_mq = kq && score == CATTN_SCORE_DOT && nq > 1;
    const int v_direct = vq && nq == 1, v_mq = vq && nq > 1;

    for (int64_t i = 0; i < Lq; i++) {
        mm[i] = -INFINITY; ll[i] = 0;
        for (int64_t c = 0; c < Dv; c++) acc[i * Dv + c] = 0;
    }
    je = imin(je, kv_len);
    if (js >= je || nq == 0) return;

    for (int64_t i = 0; i < nq; i++) SUF(q_row_scaled)(p, b, i, scale, qs + i * D16, 1);

    for (int64_t j0 = js; j0 < je; j0 += DCH) {
        /* Ctrl-C: the call raises (polled every 4 chunks: a poll reads the clock) */
        if (((j0 - js) & (4 * DCH - 1)) == 0 && cattn_should_stop(p)) return;
        const int64_t nk = imin(DCH, je - j0);
        const T *Kc = K + j0 * p->k.rs;
        int64_t kc_rs = p->k.rs;
        if (kq && !k_direct && !k_mq) {
            SUF(q8_rows)(K8 + j0 * p->k.rs, p->k.rs, Ks + j0 * ks_rs, ks_rs, nk, D, kbuf, D16);
            Kc = kbuf; kc_rs = D16;
        }
        if (k_mq)
            SUF(scores_mq_q8)(qs, D16, nq, K8 + j0 * p->k.rs, p->k.rs, Ks + j0 * ks_rs, ks_rs,
                              NULL, nk, D, S, DCH);
        if (v_mq)
            for (int64_t t = 0; t < nq * DCH; t++) E[t] = 0;
        if (score == CATTN_SCORE_COSINE)
            for (int64_t j = 0; j < nk; j++) {
                const T *kr = Kc + j * kc_rs;
                T nrm = (T)sqrt((double)SUF(dot)(kr, kr, D));
                inv_k[j] = (T)1 / (nrm > (T)1e-8 ? nrm : (T)1e-8);
            }
        for (int64_t i = 0; i < nq; i++) {
            const int64_t pos = i + shift;
            int64_t jlo = j0, jhi = j0 + nk;
            if (wl < CATTN_UNBOUNDED) jlo = imax(jlo, pos - wl);
            if (wr < CATTN_UNBOUNDED) jhi = imin(jhi, pos + wr + 1);
            if (jlo >= jhi) continue;
            const T *qi = qs + i * D16;
            const int64_t qsg = qseg ? qseg[i * p->q_seg.rs] : 0;
            T mc = -INFINITY;
            T *s = S + i * DCH + (k_mq ? jlo - j0 : 0);
            T *e = v_mq ? E + i * DCH + (jlo - j0) : E + i * DCH;
            if (score != CATTN_SCORE_ADDITIVE && !k_mq) {
                if (k_direct) {
                    /* four keys at a time: their sums reduced together */
                    int64_t j = jlo;
                    for (; j + 4 <= jhi; j += 4)
                        SUF(dot4_q8)(qi, K8 + j * p->k.rs, p->k.rs, Ks + j * ks_rs, ks_rs, D,
                                     s + (j - jlo));
                    for (; j < jhi; j++)
                        s[j - jlo] = SUF(dot_q8)(qi, K8 + j * p->k.rs, Ks + j * ks_rs, D);
                }
                else
                    for (int64_t j = jlo; j < jhi; j++)
                        s[j - jlo] = SUF(dot)(qi, Kc + (j - j0) * kc_rs, D);
            }
            if (softcap <= 0 && !mask && !kseg && !bias && score == CATTN_SCORE_DOT) {
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
                    if (score == CATTN_SCORE_COSINE) sc *= inv_k[j - j0];
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
                T a = (T)exp((double)(mold - mnew));
                ll[i] *= a;
                for (int64_t c = 0; c < Dv; c++) acc[i * Dv + c] *= a;
            }
            int64_t j = 0;
            for (; j + VL <= n; j += VL) vstore(e + j, vexp(vload(s + j) - msub));
            for (; j < n; j++) e[j] = SUF(exp1)(s[j] - msub);
            T lsum = 0;
            if (v_mq) {
                /* int8 V: weights left in place, a masked key's is exp(-inf)
                   = 0 and 0 x a finite int8 row adds nothing */
                for (j = 0; j < n; j++) lsum += e[j];
            } else {
                /* the chunk's kept keys, compacted: masked ones are never
                   multiplied (NaN or inf in a masked value cannot leak) */
                int64_t nk2 = 0;
                for (j = 0; j < n; j++) {
                    if (s[j] == -INFINITY) continue;
                    lsum += e[j];
                    e[nk2] = e[j];
                    keys[nk2++] = jlo + j;
                }
                if (v_direct)
                    SUF(pv_rows_q8)(e, keys, nk2, V8, p->v.rs, Vs, vs_rs, acc + i * Dv, Dv);
                else
                    for (j = 0; j < nk2; j++)
                        SUF(axpy)(e[j], Vm + keys[j] * p->v.rs, acc + i * Dv, Dv);
            }
            ll[i] += lsum;
            mm[i] = mnew;
        }
        if (v_mq)
            SUF(pv_mq_q8)(E, DCH, nq, V8 + j0 * p->v.rs, p->v.rs, Vs + j0 * vs_rs, vs_rs, NULL, nk,
                          acc, Dv, Dv);
    }
}
#undef DCH
#undef RUP16
