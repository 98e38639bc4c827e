"""Plain-text rendering: the three stages as tables with bars.

:func:`explanation_text` and :func:`comparison_text` are what ``str()`` of
an :class:`~cattn.explain.Explanation` / :class:`~cattn.explain.Comparison`
returns; the small helpers (:func:`num`, :func:`vec`, :func:`table`, ...)
also serve ``cattn demo``.
"""

import math
import unicodedata

import numpy as np

from .compute import argmax_index, argmax_label, share
from .i18n import words

__all__ = ["formula", "dw", "pad", "num", "vec", "bar", "table", "sizes", "shapes", "header",
           "explanation_text", "comparison_text"]

_BAR_PARTS = ("", "\u258f", "\u258e", "\u258d", "\u258c", "\u258b", "\u258a", "\u2589")
_FULL_BLOCK = "\u2588"


def formula(score, d, options, lang):
    """The similarity formula of ``score`` as plain text (one line)."""
    scale = options.get("scale")
    w = options.get("additive_weight")
    if score == "dot":
        core = "s_i = Q·k_i = Σ_d Q_d·k_id"
    elif score == "scaled_dot":
        core = "s_i = Q·k_i / √D"
        if scale is None and d > 0:
            core += f"   (D = {d}, 1/√D = {1.0 / math.sqrt(d):.4g})"
    elif score == "cosine":
        core = "s_i = Q·k_i / (‖Q‖·‖k_i‖)"
    else:
        if w is None:
            wtxt = words(lang)["w_default"]
        else:
            wtxt = "w = " + vec(np.asarray(w, dtype=np.float64).ravel(), 3)
        core = f"s_i = Σ_d w_d·tanh(Q_d + k_id)   ({wtxt})"
    if scale is not None:
        sc = np.asarray(scale, dtype=np.float64)
        stxt = f"{float(sc):.4g}" if sc.ndim == 0 else "scale"
        if score == "scaled_dot":
            core = "s_i = " + stxt + " × Q·k_i   (scale given, replaces 1/√D)"
        else:
            lhs, rhs = core.split(" = ", 1)
            core = f"{lhs} = {stxt} × [{rhs}]"
    return core


# ---------------------------------------------------------------------------
# small text helpers
# ---------------------------------------------------------------------------

def dw(s):
    """Display width of ``s`` in a terminal (CJK characters count 2)."""
    n = 0
    for ch in s:
        if unicodedata.combining(ch):
            continue
        n += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return n


def pad(s, width, align="<"):
    gap = max(0, width - dw(s))
    return " " * gap + s if align == ">" else s + " " * gap


def num(x, digits=3):
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "-inf" if x < 0 else "inf"
    s = f"{x:.{digits}f}"
    if s.startswith("-") and float(s) == 0.0:
        s = s[1:]
    return s


def vec(v, digits=3, labels=None):
    v = np.asarray(v).ravel()
    if labels is None:
        return "[" + ", ".join(num(x, digits) for x in v) + "]"
    return ", ".join(f"{lab} {num(x, digits)}" for lab, x in zip(labels, v))


def bar(frac, width):
    """A horizontal bar of ``frac * width`` characters made of block glyphs."""
    if not np.isfinite(frac) or frac <= 0:
        return ""
    eighths = int(round(min(float(frac), 1.0) * width * 8))
    return _FULL_BLOCK * (eighths // 8) + _BAR_PARTS[eighths % 8]


def table(headers, rows, aligns, indent="  "):
    ncol = len(headers)
    widths = [max([dw(headers[c])] + [dw(r[c]) for r in rows]) for c in range(ncol)]

    def line(cells):
        return (indent + "  ".join(pad(cells[c], widths[c], aligns[c])
                                   for c in range(ncol))).rstrip()

    out = [line(headers), (indent + "  ".join("-" * w for w in widths)).rstrip()]
    out.extend(line(r) for r in rows)
    return out


def sizes(x, max_keys, max_queries):
    """``(nq, d, nk, dv, shown_k, shown_q)`` of an Explanation or a
    Comparison (whose explanations share their inputs): the number of
    queries, their size D, the number of keys, the size of a value, and how
    many keys and queries the tables show."""
    first = getattr(x, "_first", x)
    nq, d = first._q2.shape
    nk = len(x.labels)
    return nq, d, nk, first._v2.shape[1], min(nk, max_keys), min(nq, max_queries)


def shapes(x, t):
    """The line that gives the shapes of the inputs, in the words ``t``."""
    nq, d, nk, dv, _, _ = sizes(x, 0, 0)
    return t["shapes"].format(nq=nq, queries=t["query_one"] if nq == 1 else t["query_many"],
                              d=d, nk=nk, dv=dv)


def header(x, t):
    """The title and the shapes line of an Explanation."""
    return [t["title"].format(name=t["names"][x.score], score=x.score), "  " + shapes(x, t)]


def explanation_text(x, lang=None, *, digits=3, max_keys=30, max_queries=6, bar_width=30):
    """The three stages of an Explanation as plain text (see its ``to_text``)."""
    lang = x.lang if lang is None else lang
    t = words(lang)
    nq, d, nk, dv, shown_k, shown_q = sizes(x, max_keys, max_queries)
    show_kvec = d <= 8
    show_vvec = dv <= 8
    masked_any = bool(x.options.get("mask") is not None or x.options.get("causal")
                      or x.options.get("window") is not None
                      or x.options.get("bias") is not None)
    L = header(x, t)

    def qline(i):
        lab = f" {x.query_labels[i]}" if nq > 1 else ""
        return f"  {t['query']}{lab}: Q = {vec(x._q2[i], digits)}"

    def more_keys(lines):
        if nk > shown_k:
            lines.append("  " + t["more_keys"].format(n=nk - shown_k))

    # stage 1
    L += ["", t["stage1"], f"  {t['computed_by']}cattn.scores(Q, K, score={x.score!r})",
          "  " + formula(x.score, d, x.options, lang)]
    # one table: a row per key, a score column per query
    for i in range(shown_q):
        L.append(qline(i))
    headers = [t["key"]] + (["k_i"] if show_kvec else []) + (
        [t["score_col"]] if nq == 1 else
        [f"{t['score_col']} ({x.query_labels[i]})" for i in range(shown_q)])
    rows = []
    for j in range(shown_k):
        rows.append([x.labels[j]]
                    + ([vec(x.keys[j], digits)] if show_kvec else [])
                    + [num(x._s2[i, j], digits) for i in range(shown_q)])
    L += table(headers, rows, ["<"] + (["<"] if show_kvec else []) + [">"] * shown_q)
    more_keys(L)
    # stage 2
    L += ["", t["stage2"], f"  {t['computed_by']}cattn.softmax(s, axis=-1)",
          "  " + t["softmax_formula"]]
    if "bias" in x.options:
        L.append("  " + t["bias_note"])
    if masked_any:
        L.append("  " + t["mask_note"])
    for i in range(shown_q):
        if nq > 1:
            L.append(f"  {t['query']} {x.query_labels[i]}:")
        top_j = argmax_index(x._a2[i])
        rows = []
        for j in range(shown_k):
            sv = x._su2[i, j]
            stxt = t["masked"] if np.isneginf(sv) else num(sv, digits)
            w = x._a2[i, j]
            mark = t["most"] if j == top_j else ""
            rows.append([x.labels[j], stxt, num(w, digits),
                         bar(w, bar_width) + ("  " + mark if mark else "")])
        rows.append([t["total"], "", num(np.sum(x._a2[i]), digits), ""])
        L += table([t["key"], t["score_col"], t["weight_col"], ""], rows,
                    ["<", ">", ">", "<"])
        if top_j is None:
            L.append("  " + t["all_masked"])
        more_keys(L)
    # stage 3
    L += ["", t["stage3"], f"  {t['computed_by']}cattn.aggregate(a, V)"]
    for i in range(shown_q):
        if nq > 1:
            L.append(f"  {t['query']} {x.query_labels[i]}:")
        sh = share(x._a2[i], x._v2)
        headers = ([t["key"], t["weight_col"]]
                   + ([t["value_col"], t["contrib_col"]] if show_vvec else [])
                   + [t["share_col"]])
        rows = []
        for j in range(shown_k):
            w = x._a2[i, j]
            row = [x.labels[j], num(w, digits)]
            if show_vvec:
                # a masked-out key (weight 0) contributes 0, whatever its value
                term = np.zeros_like(x._v2[j]) if w == 0 else w * x._v2[j]
                row += [vec(x._v2[j], digits), vec(term, digits)]
            row.append(f"{100 * sh[j]:.1f}%")
            rows.append(row)
        L += table(headers, rows, ["<", ">"] + (["<", "<"] if show_vvec else []) + [">"])
        more_keys(L)
        if show_vvec or x.value_labels is not None:
            vtxt = vec(x._o2[i], digits, x.value_labels)
            L.append(f"  V′ = {vtxt}")
    if nq > shown_q:
        L.append("  " + t["more_queries"].format(n=nq - shown_q))
    L.append("  " + t["share_note"])
    L.append("  " + t["v_note"])
    L += ["", (t["no_check"] if x.max_abs_diff is None
               else t["check"].format(diff=x.max_abs_diff))]
    return "\n".join(L)


def comparison_text(c, lang=None, *, digits=3, max_keys=30, max_queries=6, bar_width=10):
    """Render the three stages side by side, one column per similarity."""
    lang = c.lang if lang is None else lang
    t = words(lang)
    f = c._first
    nq, d, nk, _, shown_k, shown_q = sizes(c, max_keys, max_queries)
    names = list(c.explanations)
    L = [t["title_cmp"].format(n=len(names)), "  " + shapes(c, t)]
    width = max(dw(n) for n in names)
    for n in names:
        L.append(f"  {pad(n, width)}  {t['names'][n]}: {formula(n, d, c.options, lang)}")

    def more_keys(lines):
        if nk > shown_k:
            lines.append("  " + t["more_keys"].format(n=nk - shown_k))

    L += ["", t["stage1"], f"  {t['computed_by']}cattn.scores(Q, K, score=...)"]
    for i in range(shown_q):
        L.append(f"  {t['query']}" + (f" {c.query_labels[i]}" if nq > 1 else "")
                 + f": Q = {vec(f._q2[i], digits)}")
        rows = [[c.labels[j]] + [num(c.explanations[n]._s2[i, j], digits)
                                    for n in names] for j in range(shown_k)]
        L += table([t["key"]] + names, rows, ["<"] + [">"] * len(names))
        more_keys(L)
    L += ["", t["stage2"], f"  {t['computed_by']}cattn.softmax(s, axis=-1)   "
          f"({t['softmax_formula']}; {t['each_col_sums']})"]
    for i in range(shown_q):
        if nq > 1:
            L.append(f"  {t['query']} {c.query_labels[i]}:")
        rows = []
        for j in range(shown_k):
            row = [c.labels[j]]
            for n in names:
                a = c.explanations[n]._a2[i, j]
                row.append(pad(num(a, digits) + " " + bar(a, bar_width), digits + 3 + bar_width))
            rows.append(row)
        L += table([t["key"]] + names, rows, ["<"] * (1 + len(names)))
        more_keys(L)
    L += ["", t["stage3"], f"  {t['computed_by']}cattn.aggregate(a, V)"]
    for i in range(shown_q):
        if nq > 1:
            L.append(f"  {t['query']} {c.query_labels[i]}:")
        rows = []
        for n in names:
            x = c.explanations[n]
            top = argmax_label(x._a2[i], c.labels)
            tops = "-" if top is None else f"{top} ({100 * float(np.max(x._a2[i])):.1f}%)"
            rows.append([n, vec(x._o2[i], digits, c.value_labels)
                         if (x._v2.shape[1] <= 8 or c.value_labels) else "...", tops])
        L += table([t["similarity"], "V′", t["most_col"]], rows, ["<", "<", "<"])
    if nq > shown_q:
        L.append("  " + t["more_queries"].format(n=nq - shown_q))
    L.append("  " + t["v_note"])
    diff = c.max_abs_diff
    L += ["", t["no_check"] if diff is None else t["check"].format(diff=diff)]
    return "\n".join(L)
