"""The words of :mod:`cattn.explain`, in English and Chinese.

``TEXT[lang]`` maps a key to a phrase (some with ``str.format`` fields);
:func:`words` checks the language and returns that dict.
"""

__all__ = ["LANGS", "TEXT", "words"]

#: the languages the explanations are written in
LANGS = ("en", "zh")

TEXT = {
    "en": {
        "title": "Attention, step by step — similarity: {name} ({score!r})",
        "title_cmp": "Attention, step by step — comparing {n} similarity functions",
        "shapes": "{nq} {queries} (D = {d}), {nk} keys, values of size {dv}",
        "query_one": "query", "query_many": "queries",
        "names": {"dot": "dot product", "scaled_dot": "scaled dot product",
                  "cosine": "cosine similarity", "additive": "additive model"},
        "stage1": "Stage 1 — similarity: how well the query matches each key",
        "stage2": "Stage 2 — softmax: turn the scores into weights that sum to 1",
        "stage3": "Stage 3 — weighted sum of the values: V′ = a1·v1 + a2·v2 + … + an·vn",
        "computed_by": "computed by: ",
        "softmax_formula": "a_i = exp(s_i) / Σ_j exp(s_j)",
        "sum_formula": "V′ = Σ_i a_i·v_i",
        "key": "key", "query": "query", "similarity": "similarity",
        "score_col": "score s_i", "weight_col": "weight a_i",
        "value_col": "value v_i", "contrib_col": "a_i·v_i", "share_col": "share",
        "most": "<- most attention", "most_col": "most attention",
        "total": "total", "masked": "masked",
        "all_masked": "every key is masked: the weights are 0 and V′ = 0",
        "bias_note": "the bias was added to the scores before the softmax",
        "mask_note": "masked keys get score -inf, i.e. weight exactly 0",
        "share_note": "share = |a_i·v_i| / Σ_j |a_j·v_j| (L1 norms): how much of V′ each value makes up",
        "v_note": "V′ keeps the information of V and adds the query's preference.",
        "check": "check: the fused cattn.attention(...) gives the same output (max |difference| = {diff:.1e})",
        "no_check": "check against cattn.attention(...) skipped (check=False)",
        "more_keys": "... {n} more keys not shown",
        "more_queries": "... {n} more queries not shown",
        "w_default": "w = 1 (all ones)",
        "heatmap_title": "softmax weights ({score})",
        "keys_axis": "keys", "queries_axis": "queries",
        "each_col_sums": "each column sums to 1",
        "inputs": "The inputs: Q (query), k_i (keys) and v_i (values)",
        "masked_cell": "masked: score -inf, weight exactly 0",
        "weights_rows": "one row per query; each row sums to 1",
    },
    "zh": {
        "title": "注意力机制分步解释 —— 相似度：{name}（{score!r}）",
        "title_cmp": "注意力机制分步解释 —— 比较 {n} 种相似度函数",
        "shapes": "{nq} 个{queries}（D = {d}），{nk} 个键，值的维度为 {dv}",
        "query_one": "查询", "query_many": "查询",
        "names": {"dot": "点积模型", "scaled_dot": "缩放点积模型",
                  "cosine": "余弦相似度", "additive": "加性模型"},
        "stage1": "阶段一：计算查询 Q 与每个键 K 的相似度（注意力得分）",
        "stage2": "阶段二：用 softmax 把得分归一化为权重（权重之和为 1）",
        "stage3": "阶段三：按权重对值 V 加权求和：V′ = a1·v1 + a2·v2 + … + an·vn",
        "computed_by": "计算函数：",
        "softmax_formula": "a_i = exp(s_i) / Σ_j exp(s_j)",
        "sum_formula": "V′ = Σ_i a_i·v_i",
        "key": "键", "query": "查询", "similarity": "相似度",
        "score_col": "得分 s_i", "weight_col": "权重 a_i",
        "value_col": "值 v_i", "contrib_col": "a_i·v_i", "share_col": "占比",
        "most": "<- 最受关注", "most_col": "最受关注",
        "total": "合计", "masked": "已屏蔽",
        "all_masked": "所有键都被屏蔽：权重全为 0，V′ = 0",
        "bias_note": "在 softmax 之前，偏置 (bias) 已加到得分上",
        "mask_note": "被屏蔽的键得分为 -inf，权重恰好为 0",
        "share_note": "占比 = |a_i·v_i| / Σ_j |a_j·v_j|（L1 范数）：每个值在 V′ 中所占的份额",
        "v_note": "V′ 既包含 V 本身的信息，也包含查询者的偏好。",
        "check": "校验：融合计算 cattn.attention(...) 的结果相同（最大误差 = {diff:.1e}）",
        "no_check": "未与 cattn.attention(...) 校验（check=False）",
        "more_keys": "……另有 {n} 个键未显示",
        "more_queries": "……另有 {n} 个查询未显示",
        "w_default": "w = 1（全为 1）",
        "heatmap_title": "softmax 权重（{score}）",
        "keys_axis": "键", "queries_axis": "查询",
        "each_col_sums": "每列之和为 1",
        "inputs": "输入：查询 Q、键 k_i 与值 v_i",
        "masked_cell": "已屏蔽：得分为 -inf，权重恰好为 0",
        "weights_rows": "每行对应一个查询；每行之和为 1",
    },
}


def words(lang):
    """The phrases of ``lang`` (``"en"`` or ``"zh"``); ValueError otherwise."""
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}, got {lang!r}")
    return TEXT[lang]
