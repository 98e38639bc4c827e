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
 * The kernels are written once (flash_impl.h) against per-ISA primitives
 * (simd_generic.h, simd_avx2.h, simd_avx512.h, simd_portable.h) and
 * instantiated per ISA (instantiate.h, flash.c); one variant is chosen at
 * run time from the CPU's capabilities and handed out as a kernel table.
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

/* K/V storage formats (compute in the call's float type). */
typedef enum cattn_kv_format {
    CATTN_KV_NATIVE = 0,       /* the compute type itself */
    CATTN_KV_F16 = 1,          /* IEEE float16 (uint16 bits), float32 math */
    CATTN_KV_BF16 = 2,         /* bfloat16 (uint16 bits), float32 math; products in
                                  bfloat16 (VDPBF16PS) where the CPU has them */
    CATTN_KV_I8 = 3            /* int8 with float32 scales per CATTN_QBLOCK values
                                  (q8_0): K is int8 where k_scale.base != NULL,
                                  V where v_scale.base != NULL, else the compute type */
} cattn_kv_format;

/* The storage of q and out (K/V: cattn_kv_format): the compute type, or
   16-bit floats with float32 math -- q widened as it is packed, out
   narrowed (round to nearest even) as it is written, so a float16 or
   bfloat16 call makes no float32 copy of either.  Dot-product scores only
   (the planner's rule: cosine and additive read q rows in the compute
   type). */
typedef enum cattn_io_format {
    CATTN_IO_NATIVE = 0,
    CATTN_IO_F16 = 1,          /* IEEE float16 bits */
    CATTN_IO_BF16 = 2          /* bfloat16 bits */
} cattn_io_format;

/* int8 K/V: one float32 scale per this many values along D (the last
   block of a row may be shorter); value = int8 * scale. */
#define CATTN_QBLOCK 32

/* One operand: the base pointer (element type per the call), one element
   offset per batch item, row and column strides in elements.  Broadcast
   leading dims and GQA head sharing are offsets; nothing is expanded.
   base == NULL: the operand is absent.  Sequences (segment ids) use rs
   only.  A paged K/V operand will add a block table here. */
typedef struct cattn_operand {
    const void *base;
    const int64_t *off;
    int64_t rs, cs;
} cattn_operand;

typedef struct cattn_params {
    int64_t n_batch, Lq, Lk, D, Dv;
    int64_t block_q, block_k;
    int score_kind;            /* CATTN_SCORE_* */
    int mode;                  /* CATTN_MODE_* */
    int kv_format;             /* cattn_kv_format of K and V */
    int q_format, out_format;  /* cattn_io_format of q and out */
    /* K and V have unit stride along their last axis (cs = 1). */
    cattn_operand q, k, v, out, mask, bias, q_seg, kv_seg;
    /* CATTN_KV_I8: the float32 scales of K and V, (.., L, ceil(D / 32)) rows
       (cs = 1), offsets in float32 elements; base == NULL: not quantized */
    cattn_operand k_scale, v_scale;
    void *lse;                 /* (n_batch, Lq) contiguous, or NULL */
    void *lse_m, *lse_logl;    /* lse = lse_m + lse_logl, kept apart for the weights
                                  pass (exact at huge logits); NULL if unused */
    void *weights;             /* mode WEIGHTS/SCORES: (n_batch, Lq, Lk) contiguous, zero-filled */
    void *key_mass;            /* mode KEY_MASS: partial sums (n_items, km_slots, Lk),
                                  contiguous, zero-filled; batch item b adds the
                                  sums of query block qb to row
                                  ((b - km_b0) * km_slots + qb % km_slots), and the
                                  caller sums the slots in order (deterministic:
                                  a slot is one work item's, see _kernels.pyx) */
    int64_t km_slots, km_b0;
    const double *scale;       /* one per batch item */
    const void *add_w;         /* additive weights (D,) */
    const int64_t *kv_len;     /* one per batch item, or NULL */
    const int64_t *q_len;      /* one per batch item, or NULL */
    const int64_t *q_pos;      /* one per batch item: the key position of query 0,
                                  or NULL: kv_len - q_len (the lengths, or Lk and
                                  Lq when not given) */
    const double *sinks;       /* one per batch item, or NULL */
    double softcap;            /* <= 0: none */
    int64_t win_left, win_right;  /* relative to p = i + q_pos (causal: right <= 0) */
    /* Interrupts: every key tile, thread 0 (the calling thread) calls
       poll(poll_ctx) (rate-limited by the caller with a clock in poll_ctx,
       one per call; nonzero = a signal handler raised) and every thread stops
       once *stop is set.  Both NULL: never interrupted. */
    int (*poll)(void *ctx);
    void *poll_ctx;
    volatile int *stop;
} cattn_params;

/* A backward call (flash_bwd_impl.h): the forward's parameters (with out
   and lse as the forward returned them) and the gradients' buffers.  All
   arrays in the compute type unless said otherwise. */
typedef struct cattn_bwd_params {
    cattn_params f;
    cattn_operand dout;        /* (Lq, Dv) per item, any strides */
    const void *delta;         /* (n_batch, Lq): rowsum(dout * out) */
    void *dq;                  /* dQ pass: (n_batch, Lq, D), sum_j dS k_j (unscaled) */
    void *dk, *dv;             /* (n_groups, Lk, D) / (n_groups, Lk, Dv), written whole */
    void *dbias;               /* (n_batch, Lq, Lk) dS w.r.t. the final score, or NULL */
    void *dscore;              /* (n_batch, Lq, Lk) dS w.r.t. scale * raw score, or NULL */
    /* K/V groups: the batch items sharing one K/V head (GQA, broadcast
       dims) are group_items[group_start[g] .. group_start[g + 1]) */
    const int64_t *group_start, *group_items;
    int64_t n_groups;
    const int64_t *shift;      /* per item: query i sits at key position i + shift;
                                  NULL: Lk - Lq */
} cattn_bwd_params;

/*
 * The kernel table: every kernel of one (compute type, K/V format) on the
 * CPU's best ISA, resolved once per call by cattn_kernels_for(); the work
 * items call through it and dispatch nothing themselves.
 *   tile(p, b, qb, scratch): one (batch item, query block); scratch is
 *     64-byte aligned and tile_scratch(p) bytes long.  Never fails.
 *   decode(p, b, js, je, acc, mm, ll, scratch): one (batch item, key
 *     range [js, je)) of a call with Lq <= CATTN_DECODE_MAX_LQ; leaves
 *     unnormalised partials acc (Lq x Dv), running max mm and sum ll (Lq)
 *     in the compute type.
 *   decode_finish(p, b, i, n_split, acc, mm, ll): merges the n_split
 *     partials of query i into out/lse.
 *   bwd_kv(bp, g, kb, dq_part, scratch): the backward's dK/dV of one key
 *     block of K/V group g (and dS K added to a per-thread dQ partial when
 *     dq_part is not NULL); scratch is bwd_scratch(bp) bytes.
 *   bwd_q(bp, b, qb, scratch): the backward's dQ of one query block.
 *   block_q, block_k: the query/key block the tile kernel prefers (0: the
 *     planner's default); the planner reads them, the kernels accept any.
 * Next kinds (paged decode) are new slots here.
 */
typedef struct cattn_kernels {
    const char *isa;
    size_t (*tile_scratch)(const cattn_params *p);
    void (*tile)(const cattn_params *p, int64_t b, int64_t qb, void *scratch);
    size_t (*decode_scratch)(const cattn_params *p);
    void (*decode)(const cattn_params *p, int64_t b, int64_t js, int64_t je,
                   void *acc, void *mm, void *ll, void *scratch);
    void (*decode_finish)(const cattn_params *p, int64_t b, int64_t i, int64_t n_split,
                          const void *acc, const void *mm, const void *ll);
    size_t (*bwd_scratch)(const cattn_bwd_params *bp);
    void (*bwd_kv)(const cattn_bwd_params *bp, int64_t g, int64_t kb, void *dq_part,
                   void *scratch);
    void (*bwd_q)(const cattn_bwd_params *bp, int64_t b, int64_t qb, void *scratch);
    /* the tile these kernels run best at (0: the planner's default) */
    int64_t block_q, block_k;
} cattn_kernels;

/* The kernels for compute type float64 (is_double) or float32 and a K/V
   format, on this CPU. */
cattn_kernels cattn_kernels_for(int is_double, int kv_format);

/* Name of the best kernel variant this CPU runs ("cooperlake", "skylake",
   "haswell", "generic" or "portable"). */
const char *cattn_isa_name(void);
/* 1 when the compiler supports run-time ISA dispatch here. */
int cattn_isa_dispatch_available(void);

#ifdef __cplusplus
}
#endif
#endif
