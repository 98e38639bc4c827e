"""Heatmaps of the softmax weights with matplotlib (optional dependency).

Queries are rows and keys are columns, as in the HTML tables.  A masked
key (weight exactly 0 because the softmax saw ``-inf``) is marked with a
dash instead of a number.  matplotlib is imported only when a plot is
drawn: ``pip install "cattn[plot]"``.
"""

import unicodedata
import warnings

import numpy as np

from .compute import is_masked, make_labels
from .i18n import words

__all__ = ["CJK_FONTS", "require_matplotlib", "cjk_font", "cjk_font_available",
           "explanation_plot", "comparison_plot"]

#: fonts that can draw Chinese, tried in this order
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans SC", "Noto Serif CJK SC",
             "Source Han Sans SC", "Source Han Sans CN", "WenQuanYi Zen Hei",
             "WenQuanYi Micro Hei", "SimHei", "Microsoft YaHei", "PingFang SC",
             "Heiti SC", "STHeiti", "AR PL UMing CN", "AR PL UKai CN",
             "Droid Sans Fallback", "Arial Unicode MS")

#: what a masked cell shows instead of its weight
MASKED_MARK = "\u2014"

NO_CJK_FONT = ("no Chinese font found for matplotlib, so the plot is labelled in "
               "English; install one (e.g. Noto Sans CJK or WenQuanYi Micro Hei) "
               "for Chinese")


def require_matplotlib():
    """ImportError with the install command when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plotting needs matplotlib; install it with "
            "pip install \"cattn[plot]\"  (or: pip install matplotlib)") from exc


def _has_wide(texts):
    return any(unicodedata.east_asian_width(ch) in ("W", "F") for t in texts for ch in t)


def cjk_font():
    """Name of a matplotlib font that can draw Chinese, or None."""
    from matplotlib import font_manager
    names = {f.name for f in font_manager.fontManager.ttflist}
    for cand in CJK_FONTS:
        if cand in names:
            return cand
    return None


def cjk_font_available():
    """True if matplotlib has a font that can draw Chinese text."""
    require_matplotlib()
    return cjk_font() is not None


def _setup(lang, texts):
    """(font kwargs, lang to use for titles) for labels ``texts``.

    The warnings name the line that called ``plot()``: five frames up, through
    the ``plot`` method, ``explanation_plot`` / ``comparison_plot`` and
    :func:`_prepare`.
    """
    wide = _has_wide(texts)
    font = cjk_font() if (lang == "zh" or wide) else None
    fontkw = {"fontfamily": font} if font else {}
    if lang == "zh" and font is None:
        lang = "en"  # no font that can draw Chinese titles: keep them readable
        if not wide:  # (wide labels get the warning below)
            warnings.warn(NO_CJK_FONT, UserWarning, stacklevel=5)
    if wide and font is None:
        warnings.warn("no CJK font found for matplotlib, so Chinese/Japanese/Korean "
                      "labels will show as boxes; install one (e.g. Noto Sans CJK) or "
                      "pass ASCII labels= to plot()", UserWarning, stacklevel=5)
    return fontkw, lang


def _new_figure(ncols, nrows_cells, ncols_cells, path):
    width = min(22.0, 1.2 + ncols * max(3.0, 0.75 * ncols_cells + 1.4))
    height = min(16.0, 1.6 + max(1.0, 0.5 * nrows_cells))
    if path is not None:
        # headless-safe: a bare Figure on the Agg canvas, no pyplot/GUI backend
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        fig = Figure(figsize=(width, height))
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, ncols, squeeze=False)[0]
        return fig, list(axes)
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, ncols, figsize=(width, height), squeeze=False)
    return fig, list(axes[0])


def _mpl_text(s):
    """Show ``s`` literally: a pair of ``$`` would start matplotlib mathtext."""
    return s.replace("$", r"\$")


def _heatmap(ax, w, masked, xlabels, ylabels, title, xlabel, ylabel, fontkw, vmax, cmap):
    xlabels = [_mpl_text(x) for x in xlabels]
    ylabels = [_mpl_text(y) for y in ylabels]
    im = ax.imshow(w, vmin=0.0, vmax=vmax, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(xlabels)))
    ax.set_xticklabels(xlabels, rotation=45 if max(map(len, xlabels)) > 4 else 0,
                       ha="right" if max(map(len, xlabels)) > 4 else "center", **fontkw)
    ax.set_yticks(range(len(ylabels)))
    ax.set_yticklabels(ylabels, **fontkw)
    ax.set_xlabel(xlabel, **fontkw)
    ax.set_ylabel(ylabel, **fontkw)
    ax.set_title(title, **fontkw)
    if w.size <= 150:
        for (i, j), x in np.ndenumerate(w):
            if masked[i, j]:
                ax.text(j, i, MASKED_MARK, ha="center", va="center", fontsize=9,
                        color="0.45")
            elif np.isfinite(x):
                ax.text(j, i, f"{x:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if x > 0.6 * vmax else "black")
    return im


def _save(fig, path):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Glyph .* missing from.*")
        warnings.filterwarnings("ignore", message=".*tight_layout.*")
        fig.savefig(path, dpi=120, bbox_inches="tight")


def _prepare(x, lang, labels, query_labels):
    """``(xlabels, ylabels, fontkw, t)`` of a plot of ``x`` (an Explanation or
    a Comparison): the tick labels, the font that can draw them and the
    words of the titles (English where no font can draw Chinese ones)."""
    require_matplotlib()
    lang = x.lang if lang is None else lang
    words(lang)
    xlabels = make_labels(labels if labels is not None else x.labels,
                          len(x.labels), "k", "labels")
    ylabels = make_labels(query_labels if query_labels is not None else x.query_labels,
                          len(x.query_labels), "q", "query_labels")
    fontkw, lang = _setup(lang, xlabels + ylabels)
    return xlabels, ylabels, fontkw, words(lang)


def explanation_plot(x, ax=None, path=None, *, lang=None, cmap="Blues", labels=None,
                     query_labels=None):
    """Heatmap of one :class:`~cattn.explain.Explanation` (see its ``plot``)."""
    xlabels, ylabels, fontkw, t = _prepare(x, lang, labels, query_labels)
    if ax is None:
        fig, (ax,) = _new_figure(1, x._a2.shape[0], x._a2.shape[1], path)
    else:
        fig = ax.figure
    w = np.asarray(x._a2, dtype=np.float64)
    vmax = float(np.nanmax(w)) if w.size and np.nanmax(w) > 0 else 1.0
    im = _heatmap(ax, w, is_masked(x._su2), xlabels, ylabels,
                  t["heatmap_title"].format(score=x.score),
                  t["keys_axis"], t["queries_axis"], fontkw, vmax, cmap)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if path is not None:
        _save(fig, path)
    return ax


def comparison_plot(c, ax=None, path=None, *, lang=None, cmap="Blues", labels=None,
                    query_labels=None):
    """One panel per similarity of a :class:`~cattn.explain.Comparison`."""
    xlabels, ylabels, fontkw, t = _prepare(c, lang, labels, query_labels)
    names = list(c.explanations)
    a0 = c._first._a2
    if ax is None:
        fig, axes = _new_figure(len(names), a0.shape[0], a0.shape[1], path)
    else:
        axes = [ax] if hasattr(ax, "imshow") else list(np.ravel(ax))
        if len(axes) != len(names):
            raise ValueError(f"need {len(names)} Axes (one per similarity), got {len(axes)}")
        fig = axes[0].figure
    vmax = max(float(np.nanmax(x._a2)) if x._a2.size else 0.0 for x in c)
    vmax = vmax if vmax > 0 else 1.0
    im = None
    for k, (n, a) in enumerate(zip(names, axes)):
        x = c.explanations[n]
        im = _heatmap(a, np.asarray(x._a2, dtype=np.float64), is_masked(x._su2),
                      xlabels, ylabels, t["heatmap_title"].format(score=n),
                      t["keys_axis"], t["queries_axis"] if k == 0 else "",
                      fontkw, vmax, cmap)
    fig.colorbar(im, ax=axes, fraction=0.046 / max(1, len(axes)) * 2, pad=0.02)
    if path is not None:
        _save(fig, path)
    return axes
