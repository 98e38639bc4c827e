"""The newspaper example: attention in three stages, with real numbers.

I read a newspaper with four sections -- sports, technology, stocks and
health.  I like technology most, then sports, then health, and stocks
least.  Attention decides how much of my attention each section gets:

* Q (query)  -- my preferences;
* K (keys)   -- the sections, i.e. what each part of the newspaper is about;
* V (values) -- the sections' contents.

Stage 1 scores the similarity of Q with every key, stage 2 turns the
scores into weights with a softmax, stage 3 mixes the values with those
weights into ``V' = a1*v1 + ... + an*vn``.  :func:`run_demo` walks through
the stages for every similarity function cattn offers, computing them with
cattn's own kernels (see :mod:`cattn.explain`).

Run it with ``cattn demo`` / ``python -m cattn demo [--lang zh]``.
"""

import numpy as np

__all__ = ["run_demo", "newspaper", "SCORES"]

#: the similarity functions the demo walks through
SCORES = ("dot", "scaled_dot", "cosine", "additive")

# Every vector lives in the same 4-feature topic space.
_FEATURES = {"en": ["tech", "sports", "health", "finance"],
             "zh": ["科技", "体育", "健康", "财经"]}
_SECTIONS = {"en": ["sports", "technology", "stocks", "health"],
             "zh": ["体育", "科技", "股票", "健康"]}

#: Q -- the reader's preferences over [tech, sports, health, finance]
QUERY = np.array([1.0, 0.6, 0.3, 0.1])
#: K -- what each section (sports, technology, stocks, health) is about
KEYS = np.array([
    [0.1, 0.9, 0.3, 0.0],   # sports: mostly sports, a bit of health
    [0.9, 0.1, 0.1, 0.2],   # technology: mostly tech, a bit of business
    [0.2, 0.0, 0.0, 0.9],   # stocks: finance, some tech companies
    [0.1, 0.3, 0.9, 0.0],   # health: health, some sport
])
#: V -- what the section's articles contain (topic shares, each row sums to 1)
VALUES = np.array([
    [0.05, 0.80, 0.15, 0.00],
    [0.80, 0.05, 0.05, 0.10],
    [0.10, 0.00, 0.00, 0.90],
    [0.05, 0.15, 0.80, 0.00],
])
#: weights w of the additive model s = sum_d w_d tanh(q_d + k_d): a real
#: network learns them; here they are set by hand to express the reader's taste
ADDITIVE_WEIGHT = np.array([3.0, 1.0, 0.5, 0.0])

_T = {
    "en": {
        "title": "cattn demo: reading a newspaper -- attention in three stages",
        "story": [
            "I am reading a newspaper with four sections: sports, technology, stocks and health.",
            "I like technology most, then sports, then health, and stocks least.",
            "How much attention does each section get?  Attention answers in three stages:",
            "  Stage 1  similarity of my preferences (Q) with every section (K)",
            "  Stage 2  softmax turns the similarities into weights that sum to 1",
            "  Stage 3  the weighted sum of the sections' contents (V) is what I take away: V\u2032",
        ],
        "space": "Every vector is a topic mix over the features {features}.",
        "q": "Q (query)  = my preferences",
        "k": "K (keys)   = what each section is about",
        "v": "V (values) = what each section's articles contain",
        "section": "section",
        "part": "Similarity {i} of {n}: {name}",
        "additive_note": ("The additive model has its own weights w; a real network learns them, "
                          "here they are set by hand: w = {w}"),
        "summary": "Summary: attention weight of every section",
        "similarity": "similarity",
        "most_col": "most attention",
        "answer_same": ("Answer: with every similarity function, {top} gets the most attention "
                        "and {low} the least -- just as the reader said."),
        "answer_mixed": "Answer: the most attended section depends on the similarity: {pairs}.",
        "plot_saved": "Heatmap of the weights saved to {path}",
        "try": "Try it yourself in Python:",
    },
    "zh": {
        "title": "cattn 演示：看报纸 —— 注意力机制的三个阶段",
        "story": [
            "我现在在看一份报纸，报纸中有体育、科技、股票、健康四大板块。",
            "我最爱好科技板块，其次是体育、健康，最后是股票板块。",
            "每个板块能得到我多少注意力？注意力机制分三个阶段回答：",
            "  阶段一  计算我的爱好（查询 Q）与每个板块（键 K）的相似度",
            "  阶段二  用 softmax 把相似度归一化为权重，权重之和为 1",
            "  阶段三  按权重对各板块的内容（值 V）加权求和，得到 V\u2032",
        ],
        "space": "每个向量都是在特征 {features} 上的主题分布。",
        "q": "Q（查询）= 我的爱好",
        "k": "K（键）  = 各板块的主题",
        "v": "V（值）  = 各板块文章的内容",
        "section": "板块",
        "part": "相似度 {i}/{n}：{name}",
        "additive_note": "加性模型有自己的权重 w；真实网络中 w 通过训练学到，这里手工设定：w = {w}",
        "summary": "小结：各板块得到的注意力权重",
        "similarity": "相似度",
        "most_col": "最受关注",
        "answer_same": "结论：无论用哪种相似度，{top}板块得到的注意力最多，{low}板块最少 —— 与读者的爱好一致。",
        "answer_mixed": "结论：最受关注的板块取决于相似度函数：{pairs}。",
        "plot_saved": "权重热力图已保存到 {path}",
        "try": "在 Python 中自己试试：",
    },
}


def newspaper(lang="en"):
    """The demo's data as a dict (``query``, ``keys``, ``values``, labels ...)."""
    if lang not in _T:
        raise ValueError(f"lang must be 'en' or 'zh', got {lang!r}")
    return {"query": QUERY.copy(), "keys": KEYS.copy(), "values": VALUES.copy(),
            "labels": list(_SECTIONS[lang]), "value_labels": list(_FEATURES[lang]),
            "additive_weight": ADDITIVE_WEIGHT.copy()}


def run_demo(lang="en", plot=None):
    """Walk through the newspaper example; return the text (nothing is printed).

    Parameters
    ----------
    lang : {"en", "zh"}
        Language of the text.
    plot : str or path-like, optional
        If given, save a heatmap of the weights (one panel per similarity
        function) there; needs matplotlib (``pip install "cattn[plot]"``).

    Returns
    -------
    str
    """
    from .explain import _TEXT, _table, _vec, explain

    if lang not in _T:
        raise ValueError(f"lang must be 'en' or 'zh', got {lang!r}")
    t = _T[lang]
    names = _TEXT[lang]["names"]
    data = newspaper(lang)
    labels, feats = data["labels"], data["value_labels"]
    out = [t["title"], "=" * 72, ""]
    out += t["story"]
    out += ["", t["space"].format(features="[" + ", ".join(feats) + "]"),
            f"  {t['q']} = {_vec(QUERY, 1)}"]
    rows = [[lab, _vec(KEYS[j], 1), _vec(VALUES[j], 2)] for j, lab in enumerate(labels)]
    out += [f"  {t['k']}", f"  {t['v']}"]
    out += _table([t["section"], "K", "V"], rows, ["<", "<", "<"], indent="    ")

    comparison = explain(QUERY, KEYS, VALUES, labels=labels, value_labels=feats,
                         score=list(SCORES), lang=lang, additive_weight=ADDITIVE_WEIGHT)
    for i, name in enumerate(SCORES, 1):
        head = t["part"].format(i=i, n=len(SCORES), name=f"{names[name]} ({name!r})")
        out += ["", "", "#" * 72, "# " + head, "#" * 72]
        if name == "additive":
            out.append(t["additive_note"].format(w=_vec(ADDITIVE_WEIGHT, 1)))
        out += ["", str(comparison[name])]

    # summary: one row per section, one column per similarity
    out += ["", "", "=" * 72, t["summary"]]
    rows = []
    for j, lab in enumerate(labels):
        rows.append([lab] + [f"{100 * comparison[n].weights[j]:.1f}%" for n in SCORES])
    out += _table([t["section"]] + list(SCORES), rows, ["<"] + [">"] * len(SCORES))
    tops = {n: comparison[n].most_attended for n in SCORES}
    lows = {n: labels[int(np.argmin(comparison[n].weights))] for n in SCORES}
    out.append("")
    expected = (labels[1], labels[2])  # technology first, stocks last
    if all((tops[n], lows[n]) == expected for n in SCORES):
        out.append(t["answer_same"].format(top=expected[0], low=expected[1]))
    else:
        pairs = ", ".join(f"{n}: {tops[n]}" for n in SCORES)
        out.append(t["answer_mixed"].format(pairs=pairs))
    if plot is not None:
        from .explain import cjk_font_available
        plot_labels = None
        if lang != "en" and not cjk_font_available():
            plot_labels = _SECTIONS["en"]  # no font for Chinese: English tick labels
        comparison.plot(path=plot, lang=lang, labels=plot_labels)
        out.append(t["plot_saved"].format(path=plot))
    out += ["", t["try"],
            "    from cattn._demo import newspaper",
            "    from cattn.explain import explain",
            f"    d = newspaper({lang!r})",
            "    print(explain(d['query'], d['keys'], d['values'], labels=d['labels'],",
            "                  value_labels=d['value_labels'], score='cosine', lang=" + repr(lang) + "))"]
    return "\n".join(out)
