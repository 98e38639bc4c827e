/*
 * Included before flash_impl.h where the ISA has VDPBF16PS: the tile
 * path's product steps become the bfloat16 ones of flash_bf16_impl.h
 * (declared here, defined there, after the block struct).
 */
struct SUF(blk);
CATTN_STEP void SUF(pack_q_dp)(struct SUF(blk) *k);
CATTN_STEP void SUF(load_kv_dp)(const struct SUF(blk) *k, int64_t j0, int64_t nk,
                                const T **Kt, int64_t *kt_rs, const T **Vt, int64_t *vt_rs);
CATTN_STEP void SUF(tile_scores_dp)(const struct SUF(blk) *k, const T *Kt, int64_t kt_rs,
                                    int64_t nk);
CATTN_STEP void SUF(pv_tile_dp)(const struct SUF(blk) *k, const T *Vt, int64_t vt_rs,
                                int64_t nk, int partial);
/* softmax_tile hands P^T to pv_tile_dp as bfloat16 key pairs, written as
   the exponentials are computed (not stored back into S^T and re-read):
   p_pairs is that buffer (NULL for the additive score, which keeps the
   widening steps), exp_pairs the unflagged exp loop of one column group,
   pack_pairs_col the pairs of a flagged group from S^T. */
CATTN_STEP uint32_t *SUF(p_pairs)(const struct SUF(blk) *k);
CATTN_STEP V SUF(exp_pairs)(const struct SUF(blk) *k, uint32_t *PP, int64_t nk, int64_t i,
                            V msub);
CATTN_STEP void SUF(pack_pairs_col)(const struct SUF(blk) *k, uint32_t *PP, int64_t nk,
                                    int64_t i);
#define CATTN_TILE_P_PAIRS SUF(p_pairs)
#define CATTN_TILE_PACK_Q SUF(pack_q_dp)
#define CATTN_TILE_LOAD_KV SUF(load_kv_dp)
#define CATTN_TILE_SCORES SUF(tile_scores_dp)
#define CATTN_TILE_PV SUF(pv_tile_dp)
