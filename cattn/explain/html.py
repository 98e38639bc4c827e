"""HTML rendering: the three stages as tables, for notebooks and web pages.

:func:`explanation_html` / :func:`comparison_html` give a fragment (what
``_repr_html_`` shows in Jupyter) or, with ``full_page=True``, a standalone
page with its own styles (:func:`page`).  Every label is escaped once.

The score and weight matrices have one row per query and one column per
key, as the heatmaps of :mod:`cattn.explain.plot`; a masked key's weight is
shown as a dash.
"""

import html as _html

import numpy as np

from .compute import argmax_index, argmax_label, is_masked, share
from .i18n import words
from .text import formula, num, shapes, sizes, vec

__all__ = ["MASKED_MARK", "CSS", "page", "table", "explanation_html", "comparison_html"]

#: what a masked weight shows instead of a number
MASKED_MARK = "\u2014"

#: the styles of a standalone page (notebooks bring their own)
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", "Noto Sans", "Noto Sans CJK SC",
       "WenQuanYi Micro Hei", "Microsoft YaHei", sans-serif;
       color: #1f2328; background: #fff; margin: 0; line-height: 1.45; }
main { max-width: 72rem; margin: 0 auto; padding: 1.5rem 2rem 3rem; }
h1 { font-size: 1.6rem; margin: 0.2rem 0 1rem; }
h2 { font-size: 1.3rem; margin: 2.2rem 0 0.6rem; border-bottom: 1px solid #d0d7de;
     padding-bottom: 0.2rem; }
.cattn-explain h4 { font-size: 1.15rem; margin: 1.2rem 0 0.4rem; }
.cattn-explain h5 { font-size: 1rem; margin: 1.2rem 0 0.3rem; color: #24466e; }
.cattn-explain p { margin: 0.3rem 0; }
code, .vec { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace;
             font-size: 0.9em; }
.vec { color: #57606a; font-weight: normal; white-space: nowrap; }
th .vec { white-space: normal; display: inline-block; max-width: 8.5em; font-size: 0.8em; }
.cattn-scroll { overflow-x: auto; max-width: 100%; }
table.cattn-table { border-collapse: collapse; margin: 0.4rem 0 0.8rem; }
table.cattn-table th, table.cattn-table td { border: 1px solid #d0d7de;
    padding: 0.25rem 0.6rem; vertical-align: middle; }
table.cattn-table th { background: #f6f8fa; text-align: center; }
table.cattn-table td { text-align: right; font-variant-numeric: tabular-nums; }
table.cattn-table td:first-child, table.cattn-table th:first-child { text-align: left; }
table.cattn-table td.masked { color: #8c959f; text-align: center; }
table.cattn-table tr.total td { border-top: 2px solid #8c959f; font-weight: bold; }
.note { color: #57606a; font-size: 0.92em; }
pre.story { font-family: inherit; white-space: pre-wrap; margin: 0.2rem 0; }
"""


def _e(s):
    return _html.escape(str(s))


def page(body, *, title, lang="en"):
    """A standalone HTML page (UTF-8, with :data:`CSS`) around ``body``."""
    html_lang = "zh-Hans" if lang == "zh" else "en"
    return ("<!DOCTYPE html>\n"
            f'<html lang="{html_lang}">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n"
            f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n")


def table(headers, rows, row_classes=None):
    """An HTML table; ``headers`` are plain text (escaped here), ``rows``
    hold HTML cells: a string, or ``(html, css class)``."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for r, row in enumerate(rows):
        cls = row_classes[r] if row_classes else None
        cells = []
        for c in row:
            if isinstance(c, tuple):
                cells.append(f'<td class="{c[1]}">{c[0]}</td>')
            else:
                cells.append(f"<td>{c}</td>")
        attr = f' class="{cls}"' if cls else ""
        body.append(f"<tr{attr}>" + "".join(cells) + "</tr>")
    return (f'<table class="cattn-table"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _key_header(labels, keys, shown_k, digits, show_kvec):
    """Header cells for the key columns: label, and k_i underneath."""
    cells = []
    for j in range(shown_k):
        cell = _e(labels[j])
        if show_kvec:
            cell += f'<br><span class="vec">k = {_e(vec(keys[j], digits))}</span>'
        cells.append(f"<th>{cell}</th>")
    return "".join(cells)


def _matrix(corner, row_heads, key_head, rows):
    """A table whose columns are keys (``key_head``: <th> cells, HTML)."""
    head = f"<th>{_e(corner)}</th>{key_head}"
    body = "".join(f"<tr><th>{h}</th>{''.join(r)}</tr>" for h, r in zip(row_heads, rows))
    return (f'<div class="cattn-scroll"><table class="cattn-table"><thead><tr>{head}</tr>'
            f"</thead><tbody>{body}</tbody></table></div>")


def _weight_cell(w, masked, digits, top, t):
    """A weight, shaded like the heatmap (darker = more attention)."""
    if masked:
        return (f'<td class="masked" title="{_e(t["masked"])}">{MASKED_MARK}</td>')
    a = 0.0 if not np.isfinite(w) else max(0.0, min(1.0, float(w)))
    fg = "color:#fff;" if a > 0.6 else ""
    txt = _e(num(w, digits))
    if top:
        txt = f"<b>{txt}</b>"
    return f'<td style="background:rgba(33,113,181,{0.85 * a:.3f});{fg}">{txt}</td>'


def _qhead(label, q, digits, show_qvec):
    cell = _e(label)
    if show_qvec:
        cell += f'<br><span class="vec">Q = {_e(vec(q, digits))}</span>'
    return cell


def _notes(lines):
    return '<p class="note">' + "<br>".join(_e(x) for x in lines) + "</p>"


def explanation_html(x, lang=None, *, digits=3, max_keys=30, max_queries=6,
                     full_page=False):
    """The three stages of an Explanation as HTML (see its ``to_html``)."""
    lang = x.lang if lang is None else lang
    t = words(lang)
    nq, d, nk, dv, shown_k, shown_q = sizes(x, max_keys, max_queries)
    show_vec, show_vvec = d <= 8, dv <= 8
    masked = is_masked(x._su2)
    title = t["title"].format(name=t["names"][x.score], score=x.score)
    H = ['<div class="cattn-explain">', f"<h4>{_e(title)}</h4>",
         f'<p class="note">{_e(shapes(x, t))}</p>']
    key_head = _key_header(x.labels, x.keys, shown_k, digits, show_vec)
    qheads = [_qhead(x.query_labels[i], x._q2[i], digits, show_vec) for i in range(shown_q)]
    # stage 1: scores, a row per query, a column per key
    H.append(f"<h5>{_e(t['stage1'])}</h5>")
    H.append(f"<p><code>cattn.scores(Q, K, score={_e(repr(x.score))})</code> &mdash; <code>"
             f"{_e(formula(x.score, d, x.options, lang))}</code></p>")
    H.append(_matrix(t["query"], qheads, key_head,
                     [[f"<td>{_e(num(x._s2[i, j], digits))}</td>" for j in range(shown_k)]
                      for i in range(shown_q)]))
    # stage 2: weights, same layout, a total column
    H.append(f"<h5>{_e(t['stage2'])}</h5>")
    H.append(f"<p><code>cattn.softmax(s, axis=-1)</code> &mdash; "
             f"<code>{_e(t['softmax_formula'])}</code></p>")
    rows = []
    for i in range(shown_q):
        top = argmax_index(x._a2[i])
        rows.append([_weight_cell(x._a2[i, j], masked[i, j], digits, j == top, t)
                     for j in range(shown_k)]
                    + [f"<td><b>{_e(num(np.sum(x._a2[i]), digits))}</b></td>"])
    H.append(_matrix(t["query"], qheads, key_head + f"<th>{_e(t['total'])}</th>", rows))
    notes = [t["weights_rows"]]
    if "bias" in x.options:
        notes.append(t["bias_note"])
    if masked[:shown_q, :shown_k].any():
        notes.append(f"{MASKED_MARK} {t['masked_cell']}")
    for i in range(shown_q):
        if argmax_index(x._a2[i]) is None:
            notes.append((f"{x.query_labels[i]}: " if nq > 1 else "") + t["all_masked"])
    H.append(_notes(notes))
    # stage 3: per query, a row per key (the terms of the sum)
    H.append(f"<h5>{_e(t['stage3'])}</h5>")
    H.append(f"<p><code>cattn.aggregate(a, V)</code> &mdash; <code>{_e(t['sum_formula'])}</code></p>")
    vhead = x.value_labels if x.value_labels is not None else [f"d{c + 1}" for c in range(dv)]
    for i in range(shown_q):
        sh = share(x._a2[i], x._v2)
        headers = ([t["key"], t["weight_col"]]
                   + ([t["value_col"]] + [f"{t['contrib_col']}: {v}" for v in vhead]
                      if show_vvec else [])
                   + [t["share_col"]])
        rows, classes = [], []
        for j in range(shown_k):
            w = x._a2[i, j]
            wcell = ((MASKED_MARK, "masked") if masked[i, j] else _e(num(w, digits)))
            row = [_e(x.labels[j]), wcell]
            if show_vvec:
                row.append(f'<span class="vec">{_e(vec(x._v2[j], digits))}</span>')
                row += [_e(num(c, digits)) for c in w * x._v2[j]]
            row.append(_e(f"{100 * sh[j]:.1f}%"))
            rows.append(row)
            classes.append(None)
        if show_vvec:
            rows.append(["<b>V′</b>", "", ""] + [f"<b>{_e(num(c, digits))}</b>" for c in x._o2[i]]
                        + [""])
            classes.append("total")
        if nq > 1:
            H.append(f"<p><b>{_e(t['query'])} {_e(x.query_labels[i])}</b></p>")
        H.append(table(headers, rows, classes))
        if not show_vvec and x.value_labels is not None:
            H.append(f"<p>V′ = {_e(vec(x._o2[i], digits, x.value_labels))}</p>")
    notes = [t["share_note"], t["v_note"],
             t["no_check"] if x.max_abs_diff is None else t["check"].format(diff=x.max_abs_diff)]
    if nk > shown_k:
        notes.insert(0, t["more_keys"].format(n=nk - shown_k))
    if nq > shown_q:
        notes.insert(0, t["more_queries"].format(n=nq - shown_q))
    H.append(_notes(notes))
    H.append("</div>")
    body = "\n".join(H)
    return page(body, title=title, lang=lang) if full_page else body


def comparison_html(c, lang=None, *, digits=3, max_keys=30, max_queries=6, full_page=False):
    """Several similarities side by side as HTML (see Comparison.to_html)."""
    lang = c.lang if lang is None else lang
    t = words(lang)
    f = c._first
    nq, d, nk, _, shown_k, shown_q = sizes(c, max_keys, max_queries)
    show_vec = d <= 8
    names = list(c.explanations)
    title = t["title_cmp"].format(n=len(names))
    H = ['<div class="cattn-explain">', f"<h4>{_e(title)}</h4>",
         "<ul>" + "".join(f"<li><code>{_e(n)}</code> {_e(t['names'][n])}: <code>"
                          f"{_e(formula(n, d, c.options, lang))}</code></li>"
                          for n in names) + "</ul>"]
    key_head = _key_header(c.labels, f.keys, shown_k, digits, show_vec)
    any_masked = False
    for i in range(shown_q):
        H.append(f"<p><b>{_e(t['query'])}{' ' + _e(c.query_labels[i]) if nq > 1 else ''}</b>"
                 + (f': <span class="vec">Q = {_e(vec(f._q2[i], digits))}</span>'
                    if show_vec else "") + "</p>")
        H.append(f"<h5>{_e(t['stage1'])}</h5>")
        H.append(_matrix(t["similarity"], [_e(n) for n in names], key_head,
                         [[f"<td>{_e(num(c.explanations[n]._s2[i, j], digits))}</td>"
                           for j in range(shown_k)] for n in names]))
        H.append(f"<h5>{_e(t['stage2'])}</h5>")
        rows = []
        for n in names:
            x = c.explanations[n]
            m = is_masked(x._su2)
            any_masked |= bool(m[i, :shown_k].any())
            top = argmax_index(x._a2[i])
            rows.append([_weight_cell(x._a2[i, j], m[i, j], digits, j == top, t)
                         for j in range(shown_k)])
        H.append(_matrix(t["similarity"], [_e(n) for n in names], key_head, rows))
        H.append(f"<h5>{_e(t['stage3'])}</h5>")
        rows = []
        for n in names:
            x = c.explanations[n]
            top = argmax_label(x._a2[i], c.labels)
            rows.append([_e(n), _e(vec(x._o2[i], digits, c.value_labels)),
                         _e("-" if top is None else top)])
        H.append(table([t["similarity"], "V′", t["most_col"]], rows))
    notes = [t["v_note"]]
    if any_masked:
        notes.insert(0, f"{MASKED_MARK} {t['masked_cell']}")
    if nk > shown_k:
        notes.append(t["more_keys"].format(n=nk - shown_k))
    if nq > shown_q:
        notes.append(t["more_queries"].format(n=nq - shown_q))
    diff = c.max_abs_diff
    notes.append(t["no_check"] if diff is None else t["check"].format(diff=diff))
    H.append(_notes(notes) + "</div>")
    body = "\n".join(H)
    return page(body, title=title, lang=lang) if full_page else body
