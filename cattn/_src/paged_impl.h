/*
 * The paged K/V kernels (cattn_paged_params, paged.h), written once on the
 * primitives and instantiated per (element type, ISA) by instantiate.h
 * right after flash_impl.h, whose steps they reuse:
 *   decode (few queries per sequence): paged_decode streams the pages of a
 *     key range with the dot products and axpys of the contiguous decode
 *     path; paged_decode_finish merges the key splits with decode_finish.
 *   prefill chunks: paged_tile runs the tile path's steps (pack_q,
 *     tile_scores, mask_tile, softmax_tile, pv_tile, finish_block) on K/V
 *     tiles that load_kv_pages reads page by page through the block table.
 * The only difference from the contiguous kernels is the row address: a
 * page holds page_size contiguous rows of one head, so a tile (or chunk)
 * is a run of contiguous rows per page.  K/V formats, as on the contiguous
 * path: float16 rows are widened in the decode chunk's dot/axpy
 * (dot_h, pv_rows_h) and by load_kv_pages for the tile path; bfloat16 is
 * this file instantiated once more by instantiate_bf16.h, whose float16
 * loads read bfloat16; int8 (q8_0) rows are dequantised in registers by
 * kv_q8.h's dot_q8/pv_rows_q8 (pg_scores_q8, pg_pv_q8) and into the
 * gather buffer by q8_rows (pg_rows_q8).
 */
#define PG_RUP16(x) ((((x) + 15) / 16) * 16)
#define PG_RUPQ(x) ((((x) + 31) / 32) * 32)
#define PDCH 64   /* keys per decode chunk (as the contiguous decode path) */
/* row offsets known this many keys past a chunk: room for the prefetch
   distance (PG_PF: PG_PF_L2 or PG_PF_L2_LONG) across chunks and pages */
#define PPFK 64
/* GQA rows together (paged_chunk_mq): K and V rows prefetched into L2
   this many keys ahead (prefetch_row_l2).  8 sequences x 4,096 keys, GQA
   32/8, D 128, page_size 16, one thread: float32 30.9 ms against 33.1 with
   V only 8 ahead; float16 16.1 ms against 17.5 prefetched 32 ahead into
   L1, and at page_size 128 13.9 against 15.9 */
#define PG_PF_L2 16
/* pages of 64 rows or more: 64 keys ahead.  Same case, one thread, page
   128, alternating A/B, medians of 3: float16 12.35 ms (16 ahead), 11.69
   (32), 11.56 (64), against 10.90 contiguous; float32 16.6 at all three.
   With 16-row pages 64 ahead measured 2-3% slower than 16 (a prefetch
   four pages ahead). */
#define PG_PF_L2_LONG 64
#define PDEC_BLOCK 4   /* chunks whose P.V is summed in T before the double sum
                          (ACCUMULATION in flash_impl.h, as its DEC_BLOCK) */
#define PG_NB(w) (((w) + CATTN_QBLOCK - 1) / CATTN_QBLOCK)   /* int8 scales per row */
/* the keys a row is prefetched ahead of its use (<= PPFK) */
#define PG_PF(pp) ((pp)->page_size >= 64 ? PG_PF_L2_LONG : PG_PF_L2)
/* row offsets of one chunk of every K/V head an item covers, and the
   prefetch distance past them */
#define PG_NKO (CATTN_PAGED_MAX_ROWS * PDCH + PPFK)

/* Ctrl-C: as cattn_should_stop, on the paged contract */
CATTN_STEP int SUF(paged_should_stop)(const cattn_paged_params *pp)
{
    if (!pp->stop) return 0;
    if (*pp->stop) return 1;
    if (pp->poll && CATTN_THREAD_NUM() == 0 && pp->poll(pp->poll_ctx)) {
        *pp->stop = 1;
        return 1;
    }
    return 0;
}

/* The first row of page pg (a block-table slot) of sequence s, K/V head g,
   in a cache whose rows are `width` elements of `esz` bytes. */
CATTN_STEP const char *SUF(page_rows)(const cattn_paged_params *pp, const void *cache,
                                      int64_t esz, int64_t width, int64_t s, int64_t g,
                                      int64_t pg)
{
    const int64_t page = pp->block_table[s * pp->max_pages + pg];
    return (const char *)cache + (size_t)((page * pp->Hkv + g) * pp->page_size * width * esz);
}

/* ---------------------------------------------------------------------- */
/* Decode                                                                  */
/* ---------------------------------------------------------------------- */
/* PG_ROWS: a decode item covers query heads h0 .. h0 + nh - 1, either some
   heads of one K/V head (nh <= H / Hkv) or every head of several K/V heads
   (nh a multiple of H / Hkv).  Its rows go head group by head group, each
   group's rows token by token: row i = gi * grows + t * gh + hh is token t,
   head h0 + gi * gh + hh (gh = min(nh, H / Hkv), grows = q_len * gh). */
CATTN_STEP int64_t SUF(pg_row_head)(int64_t i, int64_t h0, int64_t gh, int64_t grows)
{
    return h0 + (i / grows) * gh + (i % grows) % gh;
}

static size_t SUF(paged_decode_scratch)(const cattn_paged_params *pp)
{
    const int64_t R = CATTN_PAGED_MAX_ROWS, Dv16 = PG_RUP16(pp->Dv);
    return (size_t)(R * PG_RUP16(pp->D) + R + 2 * PDCH + R * Dv16) * sizeof(T)
           + (3 * PDCH + 2 * PG_NKO) * sizeof(int64_t) + (size_t)(R * (Dv16 + 1)) * sizeof(WIDE)
           + (size_t)(2 * R * PDCH) * sizeof(T) + 64;
}

/* The element offsets of the K and V rows of keys [j0, j1) of sequence s,
   K/V head g (j1 <= seq_len: only validated block-table entries). */
CATTN_STEP void SUF(paged_offsets)(const cattn_paged_params *pp, int64_t s, int64_t g,
                                   int64_t j0, int64_t j1, int64_t *ko, int64_t *vo)
{
    const int64_t ps = pp->page_size, D = pp->D, Dv = pp->Dv;
    for (int64_t j = j0; j < j1;) {
        const int64_t pg = j / ps, r = j - pg * ps, n = imin(ps - r, j1 - j);
        const int64_t row = (pp->block_table[s * pp->max_pages + pg] * pp->Hkv + g) * ps + r;
        for (int64_t t = 0; t < n; t++) {
            ko[j - j0 + t] = (row + t) * D;
            vo[j - j0 + t] = (row + t) * Dv;
        }
        j += n;
    }
}

/* int8 pools: the row indices of a chunk's keys (element offset / row
   width), which address the rows' scales */
CATTN_STEP void SUF(pg_q8_index)(const int64_t *ko, const int64_t *vo, int64_t nk,
                                 int64_t D, int64_t Dv, int64_t *kr, int64_t *vr)
{
    for (int64_t t = 0; t < nk; t++) {
        kr[t] = D ? ko[t] / D : 0;
        vr[t] = Dv ? vo[t] / Dv : 0;
    }
}

/* int8 pools: the scores of n keys (int8 row at ko[t], scales of row
   kr[t]), each row dequantised in registers */
CATTN_STEP void SUF(pg_scores_q8)(const cattn_paged_params *pp, const T *qi, const int64_t *ko,
                                  const int64_t *kr, int64_t n, T *sc)
{
    const int8_t *K8 = (const int8_t *)pp->k_cache;
    const int64_t D = pp->D, nb = PG_NB(D);
    for (int64_t t = 0; t < n; t++)
        sc[t] = SUF(dot_q8)(qi, K8 + ko[t], pp->k_scale + kr[t] * nb, D);
}

/* int8 pools: acc += sum_t e[t] V(row vr[t]) over the nk kept keys */
CATTN_STEP void SUF(pg_pv_q8)(const cattn_paged_params *pp, const T *e, const int64_t *vr,
                              int64_t nk, T *acc)
{
    const int64_t Dv = pp->Dv;
    SUF(pv_rows_q8)(e, vr, nk, (const int8_t *)pp->v_cache, Dv, pp->v_scale, PG_NB(Dv),
                    acc, Dv);
}

/* ACCUMULATION (flash_impl.h): a row's running sums scaled by a when its
   max moves -- the double sum and the block's float partial */
CATTN_STEP void SUF(pg_rescale)(WIDE *accw, T *part, WIDE a, int64_t Dv)
{
    for (int64_t c = 0; c < Dv; c++) accw[c] *= a;
    for (int64_t c = 0; c < Dv; c++) part[c] *= (T)a;
}

/* the block's float partials added into the double sums, and reset */
CATTN_STEP void SUF(pg_flush)(WIDE *accw, T *part, int64_t rows, int64_t Dv, int64_t ld)
{
    for (int64_t i = 0; i < rows; i++)
        for (int64_t c = 0; c < Dv; c++) {
            accw[i * ld + c] += (WIDE)part[i * ld + c];
            part[i * ld + c] = 0;
        }
}

/* True when the rows at key positions p0 .. p1 (the first and last token:
   their windows bound every row's) see the same keys [*jlo, *jhi) of the
   chunk [j0, j0 + nk), at least one. */
CATTN_STEP int SUF(pg_same_keys)(const cattn_paged_params *pp, int64_t p0, int64_t p1,
                                 int64_t j0, int64_t nk, int64_t *jlo, int64_t *jhi)
{
    const int64_t wl = pp->win_left, wr = pp->win_right;
    int64_t lo = j0, hi = j0 + nk, lo1 = j0, hi1 = j0 + nk;
    if (wl < CATTN_UNBOUNDED) { lo = imax(lo, p0 - wl); lo1 = imax(lo1, p1 - wl); }
    if (wr < CATTN_UNBOUNDED) { hi = imin(hi, p0 + wr + 1); hi1 = imin(hi1, p1 + wr + 1); }
    *jlo = lo; *jhi = hi;
    return lo == lo1 && hi == hi1 && lo < hi;
}

/* The scores S (rows x PDCH; keys [jlo, jlo + n)) of a rows-together chunk:
   softcap and ALiBi (row i at key position (i % grows) / gh + shift, as
   PG_ROWS), then the online softmax into E and the running sums.  Returns
   0, having changed none of those, when a score is -inf: the caller's row
   path skips such keys, never multiplies them. */
CATTN_STEP int SUF(pg_softmax_rows)(const cattn_paged_params *pp, T *S, T *E, int64_t rows,
                                    int64_t grows, int64_t gh, int64_t shift, int64_t jlo,
                                    int64_t n, const T *sl, T *mm, WIDE *llw, WIDE *accw,
                                    T *part)
{
    const int64_t Dv = pp->Dv, Dv16 = PG_RUP16(Dv);
    const T softcap = (T)pp->softcap;
    for (int64_t i = 0; i < rows; i++) {
        T *si = S + i * PDCH;
        const int64_t pos = (i % grows) / gh + shift;
        if (softcap > 0)
            for (int64_t t = 0; t < n; t++) si[t] = softcap * SUF(tanh1)(si[t] / softcap);
        if (pp->slopes)
            for (int64_t t = 0; t < n; t++) {
                const int64_t d = pos - (jlo + t);
                si[t] -= sl[i] * (T)(d < 0 ? -d : d);
            }
        for (int64_t t = 0; t < n; t++) if (si[t] == -INFINITY) return 0;
    }
    for (int64_t i = 0; i < rows; i++)
        SUF(softmax_row)(S + i * PDCH, n, E + i * PDCH, mm + i, llw + i, accw + i * Dv16,
                         part + i * Dv16, Dv);
    return 1;
}

/* The chunk for every row at once (scores_mq, pv_mq of flash_impl.h;
   scores_mq_q8, pv_mq_q8 of kv_q8.h for int8 pools, by row index) when
   all rows see the same keys of it and no score is -inf; returns 0, having
   changed nothing, otherwise.  S, E: rows x PDCH scratch; rix: 2 PDCH. */
CATTN_STEP int SUF(paged_chunk_mq)(const cattn_paged_params *pp, int64_t rows, int64_t nh,
                                   int64_t shift, int64_t j0, int64_t nk, int64_t navail,
                                   const int64_t *ko, const int64_t *vo, const T *qs,
                                   const T *sl, T *S, T *E, int64_t *rix, T *part,
                                   WIDE *accw, WIDE *llw, T *mm)
{
    const int64_t D = pp->D, Dv = pp->Dv, D16 = PG_RUP16(D), Dv16 = PG_RUP16(Dv);
    int64_t jlo, jhi;
    if (!SUF(pg_same_keys)(pp, shift, (rows - 1) / nh + shift, j0, nk, &jlo, &jhi)) return 0;
    const int half = pp->kv_format == CATTN_KV_F16;
    const int q8 = pp->kv_format == CATTN_KV_I8;
    const int64_t n = jhi - jlo, off = jlo - j0, nav = navail - off;
    int64_t *kr = rix, *vr = rix + PDCH;     /* int8: the rows' indices (their scales) */
    if (q8) {
        SUF(pg_q8_index)(ko + off, vo + off, n, D, Dv, kr, vr);
        SUF(scores_mq_q8)(qs, D16, rows, (const int8_t *)pp->k_cache, D, pp->k_scale, PG_NB(D),
                          kr, n, D, S, PDCH);
    } else if (half)
        SUF(scores_mq_h)(qs, D16, rows, (const uint16_t *)pp->k_cache, ko + off, n, nav, -PG_PF(pp),
                         D, S, PDCH);
    else
        SUF(scores_mq_f)(qs, D16, rows, (const T *)pp->k_cache, ko + off, n, nav, -PG_PF(pp), D, S,
                         PDCH);
    if (!SUF(pg_softmax_rows)(pp, S, E, rows, rows, nh, shift, jlo, n, sl, mm, llw, accw, part))
        return 0;
    if (q8)
        SUF(pv_mq_q8)(E, PDCH, rows, (const int8_t *)pp->v_cache, Dv, pp->v_scale, PG_NB(Dv), vr,
                      n, part, Dv16, Dv);
    else if (half)
        SUF(pv_mq_h)(E, PDCH, rows, (const uint16_t *)pp->v_cache, vo + off, n, nav, -PG_PF(pp),
                     part, Dv16, Dv);
    else
        SUF(pv_mq_f)(E, PDCH, rows, (const T *)pp->v_cache, vo + off, n, nav, -PG_PF(pp), part,
                     Dv16, Dv);
    return 1;
}

/* PG_ROWS, several K/V heads: the chunk for every row of every head at
   once, as paged_chunk_mq, reading the pool page run by page run and each
   run's rows for all heads one after another: they lie together in the
   pool ((num_pages, Hkv, page_size, D)), so 16-row pages are read in
   runs of Hkv x 16 rows, not 16.  8 sequences x 4,096 keys, D 128,
   page_size 16, one thread (alternating, medians of 3): GQA 32/8 float32
   20.3 -> 17.4 ms (contiguous decode 15.7), float16 14.9 -> 11.7 (11.0);
   MHA 32 heads x 1,024 keys float32 28.5 -> 13.7 ms, float16 12.2 -> 7.9.
   Each head's chunk as its own run of pages, head after head, measured
   19.1 (float32) and 14.8 (float16).  Returns 0, having changed nothing,
   where paged_chunk_mq would (rows that see different keys of the chunk,
   a -inf score).  Rows are prefetched in the order they are read (ko/vo:
   that order, PG_NKO each; int8 pools: row indices, no prefetch, as
   paged_chunk_mq). */
CATTN_STEP int SUF(paged_chunk_mg)(const cattn_paged_params *pp, int64_t s, int64_t g0,
                                   int64_t ng, int64_t grows, int64_t gh, int64_t shift,
                                   int64_t j0, int64_t nk, int64_t je, int64_t *ko,
                                   int64_t *vo, const T *qs, const T *sl, T *S, T *E, T *part,
                                   WIDE *accw, WIDE *llw, T *mm)
{
    const int64_t D = pp->D, Dv = pp->Dv, D16 = PG_RUP16(D), Dv16 = PG_RUP16(Dv);
    const int64_t ps = pp->page_size, rows = ng * grows;
    int64_t jlo, jhi;
    if (!SUF(pg_same_keys)(pp, shift, (grows - 1) / gh + shift, j0, nk, &jlo, &jhi)) return 0;
    const int half = pp->kv_format == CATTN_KV_F16;
    const int q8 = pp->kv_format == CATTN_KV_I8;
    const int64_t kw = q8 ? 1 : D, vw = q8 ? 1 : Dv;   /* int8: row indices */
    const int64_t n = jhi - jlo, pf = -PG_PF(pp);
    int64_t m = 0;
    for (int64_t j = jlo; j < jhi;) {
        const int64_t pg = j / ps, r = j - pg * ps, nr = imin(ps - r, jhi - j);
        const int64_t page = pp->block_table[s * pp->max_pages + pg];
        for (int64_t gi = 0; gi < ng; gi++) {
            const int64_t row = (page * pp->Hkv + g0 + gi) * ps + r;
            for (int64_t t = 0; t < nr; t++, m++) {
                ko[m] = (row + t) * kw;
                vo[m] = (row + t) * vw;
            }
        }
        j += nr;
    }
    /* then the next chunk's first keys of the first head */
    const int64_t npf = q8 ? 0 : imax(0, imin(je, j0 + nk + PG_PF(pp)) - (j0 + nk));
    if (npf > 0) SUF(paged_offsets)(pp, s, g0, j0 + nk, j0 + nk + npf, ko + m, vo + m);
    const int64_t nav = m + npf;
    int64_t at = 0;
    for (int64_t j = jlo; j < jhi;) {
        const int64_t nr = imin(ps - j % ps, jhi - j);
        for (int64_t gi = 0; gi < ng; gi++, at += nr) {
            const T *q = qs + gi * grows * D16;
            T *o = S + gi * grows * PDCH + (j - jlo);
            if (q8)
                SUF(scores_mq_q8)(q, D16, grows, (const int8_t *)pp->k_cache, D, pp->k_scale,
                                  PG_NB(D), ko + at, nr, D, o, PDCH);
            else if (half)
                SUF(scores_mq_h)(q, D16, grows, (const uint16_t *)pp->k_cache, ko + at, nr,
                                 nav - at, pf, D, o, PDCH);
            else
                SUF(scores_mq_f)(q, D16, grows, (const T *)pp->k_cache, ko + at, nr, nav - at,
                                 pf, D, o, PDCH);
        }
        j += nr;
    }
    if (!SUF(pg_softmax_rows)(pp, S, E, rows, grows, gh, shift, jlo, n, sl, mm, llw, accw, part))
        return 0;
    at = 0;
    for (int64_t j = jlo; j < jhi;) {
        const int64_t nr = imin(ps - j % ps, jhi - j);
        for (int64_t gi = 0; gi < ng; gi++, at += nr) {
            const T *e = E + gi * grows * PDCH + (j - jlo);
            T *a = part + gi * grows * Dv16;
            if (q8)
                SUF(pv_mq_q8)(e, PDCH, grows, (const int8_t *)pp->v_cache, Dv, pp->v_scale,
                              PG_NB(Dv), vo + at, nr, a, Dv16, Dv);
            else if (half)
                SUF(pv_mq_h)(e, PDCH, grows, (const uint16_t *)pp->v_cache, vo + at, nr,
                             nav - at, pf, a, Dv16, Dv);
            else
                SUF(pv_mq_f)(e, PDCH, grows, (const T *)pp->v_cache, vo + at, nr, nav - at, pf,
                             a, Dv16, Dv);
        }
        j += nr;
    }
    return 1;
}

/* One chunk of nk <= PDCH keys [j0, j0 + nk), key j's K and V rows at
   element offsets ko[j - j0], vo[j - j0] from the cache bases (known for
   the navail >= nk keys from j0: the chunk and the prefetch distance), for every
   row of the item: scores, softcap, ALiBi, online softmax and P.V into the
   partials (P.V summed in part, leading dimension Dv16, the running sums
   accw and llw in double: ACCUMULATION).  The body of the contiguous
   decode chunk, with the dot-score kind only.  rix: 2 PDCH of scratch
   (int8 row indices). */
CATTN_STEP void SUF(paged_chunk)(const cattn_paged_params *pp, int64_t rows, int64_t nh,
                                 int64_t shift, int64_t j0, int64_t nk, int64_t navail,
                                 const int64_t *ko, const int64_t *vo,
                                 const T *qs, const T *sl, T *sc, T *e, int64_t *ro,
                                 int64_t *rix, T *Smq, T *Emq, T *part, WIDE *accw,
                                 WIDE *llw, T *mm)
{
    const T *Kb = (const T *)pp->k_cache, *Vb = (const T *)pp->v_cache;
    const uint16_t *Khb = (const uint16_t *)pp->k_cache, *Vhb = (const uint16_t *)pp->v_cache;
    const int64_t D = pp->D, Dv = pp->Dv, D16 = PG_RUP16(D);
    const int64_t wl = pp->win_left, wr = pp->win_right;
    const int half = pp->kv_format == CATTN_KV_F16;
    const int q8 = pp->kv_format == CATTN_KV_I8;
    const T softcap = (T)pp->softcap;
    const int alibi = pp->slopes != NULL;
    const int64_t Dv16 = PG_RUP16(Dv);
    if (rows > 1
        && SUF(paged_chunk_mq)(pp, rows, nh, shift, j0, nk, navail, ko, vo, qs, sl, Smq, Emq,
                               rix, part, accw, llw, mm))
        return;
    int64_t *kr = rix, *vr = rix + PDCH;
    if (q8) SUF(pg_q8_index)(ko, vo, nk, D, Dv, kr, vr);
    /* the kept keys' V rows: offsets, or int8 row indices */
    const int64_t *vsrc = q8 ? vr : vo;
    const int64_t esz = half ? 2 : (int64_t)sizeof(T);
    const char *Kc = (const char *)pp->k_cache, *Vc = (const char *)pp->v_cache;
    for (int64_t i = 0; i < rows; i++) {
        const int64_t pos = i / nh + shift;
        int64_t jlo = j0, jhi = j0 + nk;
        if (wl < CATTN_UNBOUNDED) jlo = imax(jlo, pos - wl);
        if (wr < CATTN_UNBOUNDED) jhi = imin(jhi, pos + wr + 1);
        if (jlo >= jhi) continue;
        const T *qi = qs + i * D16;
        const int64_t n = jhi - jlo;
        int64_t j = jlo;
        if (half) {
            for (; j + 4 <= jhi; j += 4) {
                if (i == 0)   /* once per chunk, not per row */
                    for (int r = 0; r < 4; r++)
                        SUF(prefetch_row_l2)(Kc + esz * ko[imin(j + r + PG_PF(pp) - j0, navail - 1)],
                                             esz * D);
                const int64_t o = ko[j - j0];
                /* four rows one after another (one page, or adjacent pages:
                   every row checked, the pool's order is arbitrary) */
                if (ko[j + 1 - j0] == o + D && ko[j + 2 - j0] == o + 2 * D
                    && ko[j + 3 - j0] == o + 3 * D)
                    SUF(dot4_h)(qi, Khb + o, D, D, sc + (j - jlo));
                else
                    for (int r = 0; r < 4; r++)
                        sc[j + r - jlo] = SUF(dot_h)(qi, Khb + ko[j + r - j0], D);
            }
            for (; j < jhi; j++) sc[j - jlo] = SUF(dot_h)(qi, Khb + ko[j - j0], D);
        } else if (q8) {
            SUF(pg_scores_q8)(pp, qi, ko + (jlo - j0), kr + (jlo - j0), n, sc);
        } else {
            /* page run by page run, each row addressed from its run's first:
               a per-key offset load in the dot loop measured 1.3x slower
               from DRAM (4096 keys, float32, GQA 32/8) */
            while (j < jhi) {
                const int64_t o = ko[j - j0];
                int64_t r = j + 1;
                while (r < jhi && ko[r - j0] == o + (r - j) * D) r++;
                const T *K0 = Kb + o - j * D;
                for (; j < r; j++) sc[j - jlo] = SUF(dot)(qi, K0 + j * D, D);
            }
        }
        if (softcap > 0 || alibi) {
            const T slope = sl[i];
            for (int64_t t = 0; t < n; t++) {
                T x = sc[t];
                if (softcap > 0) x = softcap * SUF(tanh1)(x / softcap);
                if (alibi) {
                    const int64_t d = pos - (jlo + t);
                    x -= slope * (T)(d < 0 ? -d : d);
                }
                sc[t] = x;
            }
        }
        T mc = -INFINITY;
        mc = SUF(row_max)(sc, n);
        const T mold = mm[i];
        const T mnew = mc > mold ? mc : mold;
        const T msub = SUF(exp_shift)(mnew);
        if (mnew != mold && mold != -INFINITY) {
            const WIDE a = exp((double)(mold - mnew));
            llw[i] *= a;
            SUF(pg_rescale)(accw + i * Dv16, part + i * Dv16, a, Dv);
        }
        int64_t t = 0;
        for (; t + VL <= n; t += VL) vstore(e + t, vexp(vload(sc + t) - msub));
        for (; t < n; t++) e[t] = SUF(exp1)(sc[t] - msub);
        /* -inf scores (a -inf ALiBi term, an overflowing softcap input)
           are skipped, never multiplied */
        T lsum = 0;
        int64_t nk2 = 0;
        for (t = 0; t < n; t++) {
            if (half && i == 0)
                SUF(prefetch_row_l2)(Vc + esz * vo[imin(jlo + t + PG_PF(pp) - j0, navail - 1)],
                                     esz * Dv);
            if (sc[t] == -INFINITY) continue;
            lsum += e[t];
            e[nk2] = e[t];
            ro[nk2++] = vsrc[jlo + t - j0];
        }
        T *pi = part + i * Dv16;
        if (half) SUF(pv_rows_h)(e, ro, nk2, Vhb, pi, Dv);
        else if (q8) SUF(pg_pv_q8)(pp, e, ro, nk2, pi);
        else for (t = 0; t < nk2; t++) SUF(axpy)(e[t], Vb + ro[t], pi, Dv);
        llw[i] += lsum;
        mm[i] = mnew;
    }
}

static void SUF(paged_decode)(const cattn_paged_params *pp, int64_t s, int64_t h0, int64_t nh,
                              int64_t js, int64_t je, void *acc_, void *mm_, void *ll_,
                              void *scratch)
{
    T *acc = (T *)acc_, *mm = (T *)mm_, *ll = (T *)ll_;
    const int64_t D = pp->D, Dv = pp->Dv, H = pp->H;
    const int64_t D16 = PG_RUP16(D);
    const int64_t q0 = pp->q_start[s], q_len = pp->q_start[s + 1] - q0;
    const int64_t seq_len = pp->seq_lens[s];
    const int64_t rows = q_len * nh, shift = seq_len - q_len;
    /* the item's K/V heads: ng groups of gh query heads (PG_ROWS) */
    const int64_t G = H / pp->Hkv, gh = nh < G ? nh : G, ng = nh / gh;
    const int64_t grows = q_len * gh, g0 = h0 / G;
    T *qs = (T *)scratch;                            /* rows x D16 */
    T *sl = qs + CATTN_PAGED_MAX_ROWS * D16;         /* rows: ALiBi slopes */
    T *sc = sl + CATTN_PAGED_MAX_ROWS;               /* PDCH */
    T *e = sc + PDCH;                                /* PDCH */
    int64_t *ro = (int64_t *)(e + PDCH);             /* PDCH */
    int64_t *ko = ro + PDCH, *vo = ko + PG_NKO;      /* PG_NKO each: row offsets */
    int64_t *rix = vo + PG_NKO;                      /* 2 PDCH: int8 row indices */
    /* ACCUMULATION: P.V of up to PDEC_BLOCK chunks from zero, the running
       sums in double */
    const int64_t Dv16 = PG_RUP16(Dv);
    T *part = (T *)(rix + 2 * PDCH);                 /* rows x Dv16 */
    WIDE *accw = (WIDE *)(part + CATTN_PAGED_MAX_ROWS * Dv16);   /* rows x Dv16 */
    WIDE *llw = accw + CATTN_PAGED_MAX_ROWS * Dv16;  /* rows */
    T *Smq = (T *)(llw + CATTN_PAGED_MAX_ROWS);      /* rows x PDCH: scores (mq) */
    T *Emq = Smq + CATTN_PAGED_MAX_ROWS * PDCH;      /* rows x PDCH: weights (mq) */
    for (int64_t i = 0; i < rows; i++) {
        mm[i] = -INFINITY; ll[i] = 0;
        for (int64_t c = 0; c < Dv; c++) acc[i * Dv + c] = 0;
    }
    /* never a key at or past seq_len; only keys some row's window sees */
    je = imin(je, seq_len);
    if (pp->win_left < CATTN_UNBOUNDED) js = imax(js, shift - pp->win_left);
    if (pp->win_right < CATTN_UNBOUNDED) je = imin(je, q_len - 1 + shift + pp->win_right + 1);
    if (js >= je || rows == 0) return;
    for (int64_t i = 0; i < rows; i++) {
        llw[i] = 0;
        for (int64_t c = 0; c < Dv; c++) accw[i * Dv16 + c] = part[i * Dv16 + c] = 0;
    }
    const T scale = (T)pp->scale;
    for (int64_t i = 0; i < rows; i++) {
        const int64_t h = SUF(pg_row_head)(i, h0, gh, grows);
        const int64_t t = (i % grows) / gh;
        const T *qr = (const T *)pp->q + ((q0 + t) * H + h) * D;
        for (int64_t d = 0; d < D; d++) qs[i * D16 + d] = qr[d] * scale;
        sl[i] = pp->slopes ? (T)pp->slopes[h] : (T)0;
    }
    /* several K/V heads: page run by page run (paged_chunk_mg) where it applies */
    const int mg = ng > 1;
    int64_t pending = 0;   /* keys summed in part, not yet added into accw */
    int64_t n_chunks = 0;
    for (int64_t j0 = js; j0 < je; j0 += PDCH) {
        /* Ctrl-C: the call raises (polled every 4 chunks: a poll reads the clock) */
        if ((n_chunks++ & 3) == 0 && SUF(paged_should_stop)(pp)) return;
        const int64_t nk = imin(PDCH, je - j0);
        if (!(mg && SUF(paged_chunk_mg)(pp, s, g0, ng, grows, gh, shift, j0, nk, je, ko, vo, qs,
                                        sl, Smq, Emq, part, accw, llw, mm))) {
            /* head by head: each head's rows of the chunk, then the next
               chunk's first PG_PF keys of the first head (the prefetch
               reads ahead in the order rows are used).  Chunks span pages,
               so small pages cost no more per key than large ones
               (page_size 16 with one chunk per page measured 1.4x the
               contiguous decode time) */
            const int64_t npf = imin(je, j0 + nk + PG_PF(pp)) - (j0 + nk);
            for (int64_t gi = 0; gi < ng; gi++)
                SUF(paged_offsets)(pp, s, g0 + gi, j0, j0 + nk, ko + gi * nk, vo + gi * nk);
            if (npf > 0)
                SUF(paged_offsets)(pp, s, g0, j0 + nk, j0 + nk + npf, ko + ng * nk,
                                   vo + ng * nk);
            for (int64_t gi = 0; gi < ng; gi++) {
                const int64_t r0 = gi * grows;
                SUF(paged_chunk)(pp, grows, gh, shift, j0, nk, (ng - gi) * nk + npf,
                                 ko + gi * nk, vo + gi * nk, qs + r0 * D16, sl + r0, sc, e, ro,
                                 rix, Smq, Emq, part + r0 * Dv16, accw + r0 * Dv16, llw + r0,
                                 mm + r0);
            }
        }
        pending += nk;
        if (pending >= PDEC_BLOCK * PDCH) {
            SUF(pg_flush)(accw, part, rows, Dv, Dv16);
            pending = 0;
        }
    }
    for (int64_t i = 0; i < rows; i++) {
        ll[i] = (T)llw[i];
        for (int64_t c = 0; c < Dv; c++)
            acc[i * Dv + c] = (T)(accw[i * Dv16 + c] + (WIDE)part[i * Dv16 + c]);
    }
}

static void SUF(paged_decode_finish)(const cattn_paged_params *pp, int64_t s, int64_t h0,
                                     int64_t nh, int64_t n_split, const void *acc,
                                     const void *mm, const void *ll)
{
    const int64_t H = pp->H, Dv = pp->Dv;
    const int64_t q0 = pp->q_start[s], q_len = pp->q_start[s + 1] - q0;
    const int64_t rows = q_len * nh;
    T lse_row[CATTN_PAGED_MAX_ROWS];
    int64_t zero = 0;
    /* decode_finish on a one-row view of this row's output */
    cattn_params lp;
    memset(&lp, 0, sizeof lp);
    lp.n_batch = 1; lp.Lq = rows; lp.Dv = Dv;
    lp.out.off = &zero; lp.out.rs = 0; lp.out.cs = 1;
    lp.lse = pp->lse ? (void *)lse_row : NULL;
    const int64_t G = H / pp->Hkv, gh = nh < G ? nh : G, grows = q_len * gh;
    for (int64_t i = 0; i < rows; i++) {
        const int64_t t = (i % grows) / gh, h = SUF(pg_row_head)(i, h0, gh, grows);
        lp.out.base = (T *)pp->out + ((q0 + t) * H + h) * Dv;
        lp.sinks = pp->sinks ? pp->sinks + h : NULL;
        SUF(decode_finish)(&lp, 0, i, n_split, acc, mm, ll);
        if (pp->lse) ((T *)pp->lse)[h * pp->tokens + q0 + t] = lse_row[i];
    }
}

/* ---------------------------------------------------------------------- */
/* Prefill chunks: the tile path over pages                                */
/* ---------------------------------------------------------------------- */

/* The tile steps' view of a paged call (one sequence and head: b = 0).
   The layout always holds the K/V gather buffer (kv_format F16 sizes it). */
CATTN_STEP void SUF(paged_tile_params)(cattn_params *lp, const cattn_paged_params *pp)
{
    memset(lp, 0, sizeof *lp);
    lp->n_batch = 1; lp->D = pp->D; lp->Dv = pp->Dv;
    lp->block_q = pp->block_q; lp->block_k = pp->block_k;
    lp->score_kind = CATTN_SCORE_DOT; lp->mode = CATTN_MODE_ATTENTION;
    lp->kv_format = CATTN_KV_F16;
    lp->q.rs = pp->H * pp->D; lp->q.cs = 1;
    lp->out.rs = pp->H * pp->Dv; lp->out.cs = 1;
    lp->softcap = pp->softcap;
    lp->win_left = pp->win_left; lp->win_right = pp->win_right;
    lp->poll = pp->poll; lp->poll_ctx = pp->poll_ctx; lp->stop = pp->stop;
}

static size_t SUF(paged_tile_scratch)(const cattn_paged_params *pp)
{
    cattn_params lp;
    SUF(paged_tile_params)(&lp, pp);
    return SUF(scratch_bytes)(&lp);
}

/* int8 pools: n rows from row r of block-table slot pg (sequence s, K/V
   head g) of the K (is_v 0) or V cache, dequantised into dst (leading
   dimension ld) */
CATTN_STEP void SUF(pg_rows_q8)(const cattn_paged_params *pp, int is_v, int64_t s, int64_t g,
                                int64_t pg, int64_t r, int64_t n, T *dst, int64_t ld)
{
    const int64_t w = is_v ? pp->Dv : pp->D, nb = PG_NB(w);
    const int8_t *x = (const int8_t *)SUF(page_rows)(pp, is_v ? pp->v_cache : pp->k_cache,
                                                     1, w, s, g, pg) + r * w;
    const float *xs = (const float *)SUF(page_rows)(pp, is_v ? pp->v_scale : pp->k_scale,
                                                    4, nb, s, g, pg) + r * nb;
    SUF(q8_rows)(x, w, xs, nb, n, w, dst, ld);
}

/* The K and V rows [j0, j0 + nk) of sequence s, head g, in the compute
   type: in place when they lie in one page of a native cache, otherwise
   gathered (widened, dequantised) page run by page run into the block's
   buffers. */
CATTN_STEP void SUF(load_kv_pages)(const SUF(blk) *k, const cattn_paged_params *pp,
                                   int64_t s, int64_t g, int64_t j0, int64_t nk,
                                   const T **Kt, int64_t *kt_rs, const T **Vt, int64_t *vt_rs)
{
    const int64_t ps = pp->page_size, D = pp->D, Dv = pp->Dv;
    const int64_t D16 = PG_RUP16(D), Dv16 = PG_RUP16(Dv);
    const int half = pp->kv_format == CATTN_KV_F16;
    const int q8 = pp->kv_format == CATTN_KV_I8;
    const int64_t esz = half ? 2 : q8 ? 1 : (int64_t)sizeof(T);
    const int64_t pg0 = j0 / ps;
    if (pp->kv_format == CATTN_KV_NATIVE && (j0 + nk - 1) / ps == pg0) {
        const int64_t r = j0 - pg0 * ps;
        *Kt = (const T *)SUF(page_rows)(pp, pp->k_cache, esz, D, s, g, pg0) + r * D;
        *Vt = (const T *)SUF(page_rows)(pp, pp->v_cache, esz, Dv, s, g, pg0) + r * Dv;
        *kt_rs = D; *vt_rs = Dv;
        return;
    }
    T *kb = k->kbuf, *vb = k->vbuf;
    for (int64_t j = j0; j < j0 + nk;) {
        const int64_t pg = j / ps, r = j - pg * ps, n = imin(ps - r, j0 + nk - j);
        const char *kp = SUF(page_rows)(pp, pp->k_cache, esz, D, s, g, pg) + r * D * esz;
        const char *vp = SUF(page_rows)(pp, pp->v_cache, esz, Dv, s, g, pg) + r * Dv * esz;
        T *kd = kb + (j - j0) * D16, *vd = vb + (j - j0) * Dv16;
        if (half) {
            SUF(half_rows)((const uint16_t *)kp, D, n, D, kd, D16);
            SUF(half_rows)((const uint16_t *)vp, Dv, n, Dv, vd, Dv16);
        } else if (q8) {
            SUF(pg_rows_q8)(pp, 0, s, g, pg, r, n, kd, D16);
            SUF(pg_rows_q8)(pp, 1, s, g, pg, r, n, vd, Dv16);
        } else {
            for (int64_t t = 0; t < n; t++) {
                memcpy(kd + t * D16, (const T *)kp + t * D, (size_t)D * sizeof(T));
                memcpy(vd + t * Dv16, (const T *)vp + t * Dv, (size_t)Dv * sizeof(T));
            }
        }
        j += n;
    }
    *Kt = kb; *kt_rs = D16;
    *Vt = vb; *vt_rs = Dv16;
}

/* ALiBi: score -= slope * |p - j| (p the query's key position; under
   causal this is slope * (j - p), vLLM's and FlashAttention's form). */
CATTN_STEP void SUF(alibi_tile)(const SUF(blk) *k, T slope, int64_t j0, int64_t nk)
{
    const int64_t nq = k->nq, ld = k->ld, base = k->i0 + k->shift;
    T *ST = k->ST;
    for (int64_t j = 0; j < nk; j++) {
        T *srow = ST + j * ld;
        for (int64_t i = 0; i < nq; i++) {
            const int64_t d = base + i - (j0 + j);
            srow[i] -= slope * (T)(d < 0 ? -d : d);
        }
    }
}

static void SUF(paged_tile)(const cattn_paged_params *pp, int64_t s, int64_t h, int64_t qb,
                            void *scratch)
{
    cattn_params lp;
    SUF(paged_tile_params)(&lp, pp);
    const int64_t H = pp->H, D = pp->D, Dv = pp->Dv, ps = pp->page_size;
    const int64_t q0 = pp->q_start[s], q_len = pp->q_start[s + 1] - q0;
    const int64_t seq_len = pp->seq_lens[s];
    const int64_t g = h / (H / pp->Hkv);
    int64_t ooff = (q0 * H + h) * Dv;
    lp.Lq = q_len; lp.Lk = seq_len;
    lp.out.base = pp->out; lp.out.off = &ooff;
    lp.sinks = pp->sinks ? pp->sinks + h : NULL;

    int64_t BQP, off[NOFF];
    SUF(scratch_layout)(&lp, &BQP, off);
    T *base = (T *)scratch;
    SUF(blk) k;
    memset(&k, 0, sizeof k);
    k.p = &lp; k.b = 0;
    k.i0 = qb * pp->block_q;
    k.kv_len = seq_len;
    k.nq_blk = imin(pp->block_q, q_len - k.i0);
    if (k.nq_blk <= 0) return;
    k.nq = k.nq_blk;
    k.nqp = PG_RUPQ(k.nq);
    k.ld = BQP;
    k.shift = seq_len - q_len;
    k.scale = (T)pp->scale;
    k.Q = (const T *)pp->q + (q0 * H + h) * D;
    k.QT = base + off[0]; k.ST = base + off[1]; k.O = base + off[2];
    k.mrow = base + off[3]; k.lrow = base + off[4]; k.alpha = base + off[5];
    k.kbuf = base + off[6]; k.vbuf = k.kbuf + pp->block_k * PG_RUP16(D);
    k.Ow = (WIDE *)(base + off[7]); k.lw = (WIDE *)(base + off[8]);
    k.lse = pp->lse ? (T *)pp->lse + h * pp->tokens + q0 : NULL;
    SUF(pack_q)(&k);

    /* the keys any query of the block may see, and those all see (as flash_block) */
    const int64_t wl = pp->win_left, wr = pp->win_right;
    const int64_t first = k.i0 + k.shift, last = k.i0 + k.nq - 1 + k.shift;
    int64_t k_lo = 0, k_hi = seq_len;
    if (wl < CATTN_UNBOUNDED) k_lo = imax(k_lo, first - wl);
    if (wr < CATTN_UNBOUNDED) k_hi = imin(k_hi, last + wr + 1);
    int64_t full_lo = 0, full_hi = seq_len;
    if (wl < CATTN_UNBOUNDED) full_lo = imax(full_lo, last - wl);
    if (wr < CATTN_UNBOUNDED) full_hi = imin(full_hi, first + wr + 1);
    /* a native cache with pages of >= 64 rows is read in place: tiles stop
       at page ends; smaller pages (and 16-bit or int8 ones) are gathered
       per tile */
    const int in_place = pp->kv_format == CATTN_KV_NATIVE && ps >= 64;
    const T slope = pp->slopes ? (T)pp->slopes[h] : (T)0;

    for (int64_t j0 = k_lo; j0 < k_hi;) {
        if (SUF(paged_should_stop)(pp)) return;        /* Ctrl-C: the call raises */
        int64_t nk = imin(pp->block_k, k_hi - j0);
        if (in_place) nk = imin(nk, (j0 / ps + 1) * ps - j0);
        const T *Kt, *Vt;
        int64_t kt_rs, vt_rs;
        SUF(load_kv_pages)(&k, pp, s, g, j0, nk, &Kt, &kt_rs, &Vt, &vt_rs);
        SUF(tile_scores)(&k, Kt, kt_rs, nk);
        if (pp->slopes) SUF(alibi_tile)(&k, slope, j0, nk);
        const int partial = j0 < full_lo || j0 + nk > full_hi;
        if (partial) SUF(mask_tile)(&k, j0, nk);
        const int flagged = SUF(softmax_tile)(&k, nk, partial);
        SUF(pv_tile)(&k, Vt, vt_rs, nk, flagged);
        SUF(pv_account)(&k);
        j0 += nk;
    }
    SUF(finish_block)(&k);
}
#undef PG_RUP16
#undef PG_RUPQ
#undef PDCH
#undef PPFK
#undef PG_NKO
#undef PG_PF
#undef PG_PF_L2
#undef PG_PF_L2_LONG
#undef PDEC_BLOCK
#undef PG_NB
