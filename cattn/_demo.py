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

from ._options import SCORES
from .explain import explain, newspaper
from .explain.example import ADDITIVE_WEIGHT, KEYS, QUERY, SECTIONS, VALUES
from .explain.i18n import words
from .explain.text import table, vec

__all__ = ["run_demo", "demo_html", "newspaper", "SCORES"]

#: the similarity functions the demo walks through

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
        "html_saved": "The explanation as a web page saved to {path}",
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
        "html_saved": "网页版讲解已保存到 {path}",
        "try": "在 Python 中自己试试：",
    },
}


def _answer(t, comparison, labels):
    """The summary's last line: which section gets the most attention."""
    tops = {n: comparison[n].most_attended for n in SCORES}
    lows = {n: labels[int(np.argmin(comparison[n].weights))] for n in SCORES}
    expected = (labels[1], labels[2])  # technology first, stocks last
    if all((tops[n], lows[n]) == expected for n in SCORES):
        return t["answer_same"].format(top=expected[0], low=expected[1])
    pairs = ", ".join(f"{n}: {tops[n]}" for n in SCORES)
    return t["answer_mixed"].format(pairs=pairs)


def _example(lang):
    """What the text and the page of the demo are made from: the demo's
    words, the similarity names, the section labels, the value labels and
    every similarity function's explanation of the example (a Comparison)."""
    if lang not in _T:
        raise ValueError(f"lang must be 'en' or 'zh', got {lang!r}")
    d = newspaper(lang)
    comparison = explain(d["query"], d["keys"], d["values"], labels=d["labels"],
                         value_labels=d["value_labels"], score=list(SCORES), lang=lang,
                         additive_weight=d["additive_weight"])
    return _T[lang], words(lang)["names"], d["labels"], d["value_labels"], comparison


def demo_html(lang="en"):
    """The newspaper example as a standalone HTML page (a str).

    The story, the inputs, the three stages for every similarity function
    (the tables of :meth:`cattn.Explanation.to_html`) and the summary.
    """
    from html import escape

    from .explain.html import page
    from .explain.html import table as html_table

    t, names, labels, feats, comparison = _example(lang)
    title = t["title"].replace(" -- ", " \u2014 ")
    H = [f"<h1>{escape(title)}</h1>"]
    H.append('<pre class="story">' + escape("\n".join(t["story"])) + "</pre>")
    H.append("<p>" + escape(t["space"].format(features="[" + ", ".join(feats) + "]")) + "</p>")
    H.append(f"<p>{escape(t['q'])} = <code>{escape(vec(QUERY, 1))}</code><br>"
             f"{escape(t['k'])}<br>{escape(t['v'])}</p>")
    H.append(html_table([t["section"], "K", "V"],
                        [[escape(lab), f"<code>{escape(vec(KEYS[j], 1))}</code>",
                          f"<code>{escape(vec(VALUES[j], 2))}</code>"]
                         for j, lab in enumerate(labels)]))
    for i, name in enumerate(SCORES, 1):
        head = t["part"].format(i=i, n=len(SCORES), name=f"{names[name]} ({name!r})")
        H.append(f"<h2>{escape(head)}</h2>")
        if name == "additive":
            H.append(f"<p>{escape(t['additive_note'].format(w=vec(ADDITIVE_WEIGHT, 1)))}</p>")
        H.append(comparison[name].to_html())
    H.append(f"<h2>{escape(t['summary'])}</h2>")
    H.append(html_table([t["section"]] + list(SCORES),
                        [[escape(lab)] + [f"{100 * comparison[n].weights[j]:.1f}%"
                                          for n in SCORES] for j, lab in enumerate(labels)]))
    H.append(f"<p><b>{escape(_answer(t, comparison, labels))}</b></p>")
    return page("\n".join(H), title=title, lang=lang)


def run_demo(lang="en", plot=None, html=None):
    """Walk through the newspaper example; return the text (nothing is printed).

    Parameters
    ----------
    lang : {"en", "zh"}
        Language of the text.
    plot : str or path-like, optional
        If given, save a heatmap of the weights (one panel per similarity
        function) there; needs matplotlib (``pip install "cattn[plot]"``).
    html : str or path-like, optional
        If given, write the explanation there as a standalone web page
        (:func:`demo_html`).

    Returns
    -------
    str
    """
    t, names, labels, feats, comparison = _example(lang)
    out = [t["title"], "=" * 72, ""]
    out += t["story"]
    out += ["", t["space"].format(features="[" + ", ".join(feats) + "]"),
            f"  {t['q']} = {vec(QUERY, 1)}"]
    rows = [[lab, vec(KEYS[j], 1), vec(VALUES[j], 2)] for j, lab in enumerate(labels)]
    out += [f"  {t['k']}", f"  {t['v']}"]
    out += table([t["section"], "K", "V"], rows, ["<", "<", "<"], indent="    ")

    for i, name in enumerate(SCORES, 1):
        head = t["part"].format(i=i, n=len(SCORES), name=f"{names[name]} ({name!r})")
        out += ["", "", "#" * 72, "# " + head, "#" * 72]
        if name == "additive":
            out.append(t["additive_note"].format(w=vec(ADDITIVE_WEIGHT, 1)))
        out += ["", str(comparison[name])]

    # summary: one row per section, one column per similarity
    out += ["", "", "=" * 72, t["summary"]]
    rows = []
    for j, lab in enumerate(labels):
        rows.append([lab] + [f"{100 * comparison[n].weights[j]:.1f}%" for n in SCORES])
    out += table([t["section"]] + list(SCORES), rows, ["<"] + [">"] * len(SCORES))
    out += ["", _answer(t, comparison, labels)]
    if plot is not None:
        from .explain import cjk_font_available
        plot_labels = None
        if lang != "en" and not cjk_font_available():
            plot_labels = SECTIONS["en"]  # no font for Chinese: English tick labels
        comparison.plot(path=plot, lang=lang, labels=plot_labels)
        out.append(t["plot_saved"].format(path=plot))
    if html is not None:
        with open(html, "w", encoding="utf-8") as fh:
            fh.write(demo_html(lang))
        out.append(t["html_saved"].format(path=html))
    out += ["", t["try"],
            "    from cattn.explain import explain, newspaper",
            f"    d = newspaper({lang!r})",
            "    print(explain(d['query'], d['keys'], d['values'], labels=d['labels'],",
            "                  value_labels=d['value_labels'], score='cosine', lang=" + repr(lang) + "))"]
    return "\n".join(out)
