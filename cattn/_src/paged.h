/*
 * Paged K/V: the C contract of cattn.paged_attention.
 *
 * The keys and values of many sequences share one pool of fixed-size pages
 * (vLLM's CPU layout): key_cache (num_pages, Hkv, page_size, D), value_cache
 * (num_pages, Hkv, page_size, Dv), both contiguous.  Key j of sequence s
 * lives in page block_table[s, j / page_size], row j % page_size: within a
 * page the rows of one head are contiguous, so every kernel reads a page as
 * a run of contiguous rows and follows the block table between pages.
 * Queries are ragged: sequence s owns tokens [q_start[s], q_start[s + 1])
 * of query (tokens, H, D), placed at key positions seq_len - q_len ... .
 *
 * K/V formats (kv_format): the compute type itself; float16 or bfloat16
 * (uint16 bits, widened); int8 (CATTN_KV_I8, q8_0 as kv_q8.h: int8 rows
 * plus k_scale/v_scale, float32 (num_pages, Hkv, page_size, ceil(D / 32)),
 * contiguous, one scale per CATTN_QBLOCK values of a row).  Both caches
 * have one format.
 *
 * The validated Python side guarantees: every page index a kernel reads
 * (those of keys < seq_len) is inside the pool, seq_len <= max_pages *
 * page_size, 0 <= q_len <= seq_len.  No key at or past seq_len is read.
 */
#ifndef CATTN_PAGED_H
#define CATTN_PAGED_H

#include <stdint.h>
#include <stddef.h>
#include "flash.h"

#ifdef __cplusplus
extern "C" {
#endif

/* rows (query tokens x folded heads) of one decode work item */
#define CATTN_PAGED_MAX_ROWS 64

typedef struct cattn_paged_params {
    int64_t num_seqs, tokens, H, Hkv, D, Dv;
    int64_t num_pages, page_size, max_pages;
    int64_t block_q, block_k;
    int kv_format;                  /* cattn_kv_format of both caches */
    const void *q;                  /* (tokens, H, D), compute type, contiguous */
    const void *k_cache, *v_cache;
    const float *k_scale, *v_scale; /* CATTN_KV_I8: the caches' scales, else NULL */
    const int64_t *block_table;     /* (num_seqs, max_pages) */
    const int64_t *seq_lens;        /* (num_seqs,) */
    const int64_t *q_start;         /* (num_seqs + 1,) */
    void *out;                      /* (tokens, H, Dv), compute type */
    void *lse;                      /* (H, tokens) or NULL */
    double scale, softcap;          /* softcap <= 0: none */
    const double *sinks;            /* (H,) or NULL */
    const double *slopes;           /* (H,) ALiBi slopes or NULL */
    int64_t win_left, win_right;    /* as cattn_params (causal: right <= 0) */
    int (*poll)(void *ctx);
    void *poll_ctx;
    volatile int *stop;
} cattn_paged_params;

/*
 * decode(pp, s, h0, nh, js, je, acc, mm, ll, scratch): keys [js, je) of
 *   sequence s for query heads h0 .. h0 + nh - 1: some heads of one K/V
 *   head (nh <= H / Hkv), or all heads of nh / (H / Hkv) K/V heads (h0 and
 *   nh multiples of H / Hkv); q_len * nh <= CATTN_PAGED_MAX_ROWS.  Rows go
 *   K/V head by K/V head, token by token within one: with gh = min(nh,
 *   H / Hkv), row i = gi * q_len * gh + t * gh + hh is token t, head
 *   h0 + gi * gh + hh.
 *   Leaves unnormalised partials (acc rows x Dv, mm, ll rows).
 * decode_finish(pp, s, h0, nh, n_split, acc, mm, ll): merges the n_split
 *   partials (split sp of row i at acc[(sp * rows + i) * Dv], mm/ll[sp *
 *   rows + i]) into out and lse.
 * tile(pp, s, h, qb, scratch): query block qb of sequence s, head h.
 */
typedef struct cattn_paged_kernels {
    const char *isa;
    size_t (*decode_scratch)(const cattn_paged_params *pp);
    void (*decode)(const cattn_paged_params *pp, int64_t s, int64_t h0, int64_t nh,
                   int64_t js, int64_t je, void *acc, void *mm, void *ll, void *scratch);
    void (*decode_finish)(const cattn_paged_params *pp, int64_t s, int64_t h0, int64_t nh,
                          int64_t n_split, const void *acc, const void *mm, const void *ll);
    size_t (*tile_scratch)(const cattn_paged_params *pp);
    void (*tile)(const cattn_paged_params *pp, int64_t s, int64_t h, int64_t qb, void *scratch);
} cattn_paged_kernels;

/* The paged kernels for float32/float64 compute and a K/V format. */
cattn_paged_kernels cattn_paged_kernels_for(int is_double, int kv_format);

#ifdef __cplusplus
}
#endif
#endif
