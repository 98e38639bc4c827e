/*
 * cattn fused attention: the C side.
 *
 * Layout of the work
 * ------------------
 * The Python dispatcher flattens the broadcast leading dims into `n_batch`
 * items and hands, per operand, one element offset per batch item (so
 * broadcasting, GQA head sharing and negative strides cost nothing and no
 * operand is ever expanded in memory).  The Cython driver splits the work
 * into (batch item, query block) pairs and runs them under OpenMP `prange`;
 * each pair is computed by `cattn_flash_block_*` below with per-thread
 * scratch allocated once per call.
 *
 * Inside a block the scores are kept *transposed*: S^T = K . Q^T, keys on
 * the rows and queries on the columns.  Q^T is packed once per block (and
 * pre-scaled); K and V are read in place (unit stride along D / Dv), so no
 * operand is re-packed per tile.  With queries along the vector lanes the
 * online-softmax bookkeeping (running max, rescale, sum) is plain
 * element-wise vector code, and the P.V product broadcasts P^T[j, i]
 * against rows of V.
 *
 * The micro-kernels are written once (flash_impl.h) with GCC/clang vector
 * extensions and compiled per ISA (portable baseline and Haswell AVX2+FMA);
 * one variant is chosen at run time from the CPU's capabilities.
 */
#ifndef CATTN_FLASH_H
#define CATTN_FLASH_H

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { CATTN_SCORE_DOT = 0, CATTN_SCORE_COSINE = 1, CATTN_SCORE_ADDITIVE = 2 };
enum { CATTN_MODE_ATTENTION = 0, CATTN_MODE_WEIGHTS = 1, CATTN_MODE_KEY_MASS = 2, CATTN_MODE_SCORES = 3 };

/* The decode path serves calls with at most this many queries. */
#define CATTN_DECODE_MAX_LQ 8

/* Window bounds at or beyond this magnitude mean "unbounded". */
#define CATTN_UNBOUNDED ((int64_t)1 << 62)

typedef struct cattn_params {
    int64_t n_batch, Lq, Lk, D, Dv;
    int64_t block_q, block_k;
    int score_kind;
    int mode;
    int kv_half;               /* K and V hold IEEE float16 (uint16 bits) */
    /* Operands: base pointer (element type = the compute type), one element
       offset per batch item, strides in elements.  K and V have unit stride
       along their last axis. */
    const void *q; const int64_t *q_off; int64_t q_rs, q_cs;
    const void *k; const int64_t *k_off; int64_t k_rs;
    const void *v; const int64_t *v_off; int64_t v_rs;
    void *out; const int64_t *out_off; int64_t out_rs, out_cs;
    void *lse;                 /* (n_batch, Lq) contiguous, or NULL */
    void *lse_m, *lse_logl;    /* lse = lse_m + lse_logl, kept apart for the weights
                                  pass (exact at huge logits); NULL if unused */
    void *weights;             /* mode WEIGHTS: (n_batch, Lq, Lk) contiguous, zero-filled */
    void *key_mass;            /* mode KEY_MASS: (n_batch, Lk) contiguous, zero-filled */
    const double *scale;       /* one per batch item */
    const void *add_w;         /* additive weights (D,) */
    const uint8_t *mask; const int64_t *mask_off; int64_t mask_rs, mask_cs;
    const void *bias; const int64_t *bias_off; int64_t bias_rs, bias_cs;
    const int64_t *kv_len;     /* one per batch item, or NULL */
    const int64_t *q_len;      /* one per batch item, or NULL */
    const int64_t *q_seg; const int64_t *q_seg_off; int64_t q_seg_s;
    const int64_t *kv_seg; const int64_t *kv_seg_off; int64_t kv_seg_s;
    const double *sinks;       /* one per batch item, or NULL */
    double softcap;            /* <= 0: none */
    int64_t win_left, win_right;  /* relative to p = i + Lk - Lq */
    /* Interrupts: every key tile, thread 0 calls poll() (rate-limited by the
       caller; nonzero = a signal handler raised) and every thread stops once
       *stop is set.  Both NULL: never interrupted. */
    int (*poll)(void);
    volatile int *stop;
} cattn_params;

/* Bytes of scratch one thread needs for any block of `p`. */
size_t cattn_scratch_bytes(const cattn_params *p, int is_double);

/* Compute one (batch item, query block).  `scratch` is 64-byte aligned and
   at least cattn_scratch_bytes() long.  Never fails. */
void cattn_flash_block_f32(const cattn_params *p, int64_t b, int64_t qb, void *scratch);
void cattn_flash_block_f64(const cattn_params *p, int64_t b, int64_t qb, void *scratch);

/* Decode path (Lq <= CATTN_DECODE_MAX_LQ): one (batch item, key range)
   leaves unnormalised partials acc (Lq x Dv), running max mm and sum ll
   (Lq); finish merges n_split partials of query i into out/lse. */
size_t cattn_decode_scratch_bytes(const cattn_params *p, int is_double);
void cattn_decode_block_f32(const cattn_params *p, int64_t b, int64_t js, int64_t je,
                            float *acc, float *mm, float *ll, void *scratch);
void cattn_decode_block_f64(const cattn_params *p, int64_t b, int64_t js, int64_t je,
                            double *acc, double *mm, double *ll, void *scratch);
void cattn_decode_finish_f32(const cattn_params *p, int64_t b, int64_t i, int64_t n_split,
                             const float *acc, const float *mm, const float *ll);
void cattn_decode_finish_f64(const cattn_params *p, int64_t b, int64_t i, int64_t n_split,
                             const double *acc, const double *mm, const double *ll);

/* Name of the micro-kernel variant in use ("haswell" or "generic"). */
const char *cattn_isa_name(void);
/* 1 when the compiler supports run-time ISA dispatch here. */
int cattn_isa_dispatch_available(void);

#ifdef __cplusplus
}
#endif
#endif
