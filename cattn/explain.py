"""Explain attention step by step, the way it is taught to beginners.

Attention is usually explained in three stages (Q = the query, e.g. a
reader's preferences; K = the keys, the parts of what is read; V = the
values, the contents of those parts):

1. **similarity** -- score how well the query matches every key,
   ``s_i = similarity(Q, k_i)`` (dot product, scaled dot product, cosine
   similarity or the additive model);
2. **softmax** -- turn the scores into weights that are positive and sum
   to 1, ``a_i = exp(s_i) / sum_j exp(s_j)``;
3. **weighted sum** -- mix the values with those weights,
   ``V' = a_1 v_1 + a_2 v_2 + ... + a_n v_n``.

:func:`explain` runs the three stages with the very kernels cattn uses
(:func:`cattn.scores`, :func:`cattn.softmax`, :func:`cattn.aggregate`),
checks that the result equals the fused :func:`cattn.attention`, and
returns an object that prints every stage as a small table (``print(e)``),
renders as HTML in a notebook and can draw the weights as a heatmap
(``e.plot()``, needs ``matplotlib``: ``pip install "cattn[plot]"``).

Example
-------
>>> import numpy as np
>>> from cattn.explain import explain
>>> e = explain([1.0, 0.5], [[1, 0], [0, 1]], [[10.0], [20.0]],
...             labels=["first", "second"], score="dot")
>>> e.weights.round(3)
array([0.622, 0.378])
>>> print(e)                                         # doctest: +SKIP
"""

import html as _html
import math
import unicodedata
import warnings

import numpy as np

__all__ = ["explain", "Explanation", "Comparison", "SCORES"]

#: the similarity functions :func:`explain` knows how to describe
SCORES = ("dot", "scaled_dot", "cosine", "additive")
_LANGS = ("en", "zh")
# options forwarded to the kernels / used between stage 1 and stage 2
_KERNEL_OPTIONS = ("scale", "additive_weight", "num_threads")
_MASK_OPTIONS = ("mask", "bias", "causal", "window")

_BAR_PARTS = ("", "\u258f", "\u258e", "\u258d", "\u258c", "\u258b", "\u258a", "\u2589")
_FULL_BLOCK = "\u2588"

# ---------------------------------------------------------------------------
# words (English / Chinese)
# ---------------------------------------------------------------------------

_TEXT = {
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
    },
}


def _words(lang):
    if lang not in _LANGS:
        raise ValueError(f"lang must be one of {_LANGS}, got {lang!r}")
    return _TEXT[lang]


def _formula(score, d, options, lang):
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
            wtxt = _words(lang)["w_default"]
        else:
            wtxt = "w = " + _vec(np.asarray(w, dtype=np.float64).ravel(), 3)
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

def _dw(s):
    """Display width of ``s`` in a terminal (CJK characters count 2)."""
    n = 0
    for ch in s:
        if unicodedata.combining(ch):
            continue
        n += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return n


def _pad(s, width, align="<"):
    gap = max(0, width - _dw(s))
    return " " * gap + s if align == ">" else s + " " * gap


def _num(x, digits=3):
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "-inf" if x < 0 else "inf"
    s = f"{x:.{digits}f}"
    if s.startswith("-") and float(s) == 0.0:
        s = s[1:]
    return s


def _vec(v, digits=3, labels=None):
    v = np.asarray(v).ravel()
    if labels is None:
        return "[" + ", ".join(_num(x, digits) for x in v) + "]"
    return ", ".join(f"{lab} {_num(x, digits)}" for lab, x in zip(labels, v))


def _bar(frac, width):
    """A horizontal bar of ``frac * width`` characters made of block glyphs."""
    if not np.isfinite(frac) or frac <= 0:
        return ""
    eighths = int(round(min(float(frac), 1.0) * width * 8))
    return _FULL_BLOCK * (eighths // 8) + _BAR_PARTS[eighths % 8]


def _table(headers, rows, aligns, indent="  "):
    ncol = len(headers)
    widths = [max([_dw(headers[c])] + [_dw(r[c]) for r in rows]) for c in range(ncol)]

    def line(cells):
        return (indent + "  ".join(_pad(cells[c], widths[c], aligns[c])
                                   for c in range(ncol))).rstrip()

    out = [line(headers), (indent + "  ".join("-" * w for w in widths)).rstrip()]
    out.extend(line(r) for r in rows)
    return out


def _share(weights_row, values2):
    """L1 share of each term a_i * v_i in V'."""
    contrib = np.abs(weights_row[:, None] * values2).sum(axis=1)
    total = contrib.sum()
    if not np.isfinite(total) or total <= 0:
        return np.zeros_like(contrib)
    return contrib / total


def _argmax_index(weights_row):
    """Index of the largest weight, None when no key has a positive weight."""
    if weights_row.size == 0 or not np.any(weights_row > 0):
        return None
    return int(np.nanargmax(weights_row))


def _argmax_label(weights_row, labels):
    j = _argmax_index(weights_row)
    return None if j is None else labels[j]


# ---------------------------------------------------------------------------
# input handling and the computation
# ---------------------------------------------------------------------------

def _as_float(x, name):
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    dtype = np.float32 if arr.dtype == np.float32 else np.float64
    return np.ascontiguousarray(arr, dtype=dtype)


def _labels(given, n, prefix, name):
    if given is None:
        return [f"{prefix}{i + 1}" for i in range(n)]
    out = [str(x) for x in given]
    if len(out) != n:
        raise ValueError(f"{name} has {len(out)} entries but there are {n}")
    return out


def _prepare(query, keys, values, labels, value_labels, query_labels):
    q = _as_float(query, "query")
    k = _as_float(keys, "keys")
    v = _as_float(values, "values")
    if q.ndim not in (1, 2):
        raise ValueError(f"query must be 1-D (D,) or 2-D (Lq, D), got shape {q.shape}")
    if k.ndim != 2:
        raise ValueError(f"keys must be 2-D (Lk, D), got shape {k.shape}")
    if v.ndim not in (1, 2):
        raise ValueError(f"values must be 1-D (Lk,) or 2-D (Lk, Dv), got shape {v.shape}")
    single = q.ndim == 1
    q2 = q[None, :] if single else q
    scalar_values = v.ndim == 1
    v2 = v[:, None] if scalar_values else v
    if q2.shape[1] != k.shape[1]:
        raise ValueError(f"query and keys must have the same feature size D, "
                         f"got {q2.shape[1]} and {k.shape[1]}")
    if v2.shape[0] != k.shape[0]:
        raise ValueError(f"keys and values must have the same number of rows, "
                         f"got {k.shape[0]} and {v2.shape[0]}")
    if k.shape[0] == 0:
        raise ValueError("explain needs at least one key")
    # one common floating dtype: float32 only if everything is float32
    dtype = np.float32 if q2.dtype == k.dtype == v2.dtype == np.float32 else np.float64
    q2, k, v2 = (a.astype(dtype, copy=False) for a in (q2, k, v2))
    labels = _labels(labels, k.shape[0], "k", "labels")
    vlabels = None if value_labels is None else _labels(
        value_labels, v2.shape[1], "d", "value_labels")
    qlabels = _labels(query_labels, q2.shape[0], "q", "query_labels")
    return q2, k, v2, single, scalar_values, labels, vlabels, qlabels


def _split_options(kwargs):
    unknown = sorted(set(kwargs) - set(_KERNEL_OPTIONS) - set(_MASK_OPTIONS))
    if unknown:
        raise TypeError(f"explain() got unexpected keyword argument(s) {unknown}; "
                        f"supported: {list(_KERNEL_OPTIONS + _MASK_OPTIONS)}")
    kernel = {k: v for k, v in kwargs.items() if k in _KERNEL_OPTIONS and v is not None}
    masking = {k: v for k, v in kwargs.items()
               if k in _MASK_OPTIONS and v is not None and v is not False}
    if "mask" in masking and np.asarray(masking["mask"]).dtype != np.bool_:
        raise TypeError("mask must be a bool array (True = attend)")
    return kernel, masking


def _apply_masking(s, masking):
    """Scores that the softmax sees: bias added, masked keys set to -inf."""
    if not masking:
        return s
    nq, nk = s.shape
    s = np.array(s, dtype=s.dtype)
    attend = np.ones((nq, nk), dtype=bool)
    with np.errstate(invalid="ignore", over="ignore"):
        if "bias" in masking:
            b = np.broadcast_to(np.asarray(masking["bias"], dtype=np.float64), (nq, nk))
            s = (s + b).astype(s.dtype)
            attend &= b != -np.inf
    if "mask" in masking:
        attend &= np.broadcast_to(np.asarray(masking["mask"]), (nq, nk))
    i = np.arange(nq)[:, None]
    j = np.arange(nk)[None, :]
    p = i + (nk - nq)
    if masking.get("causal"):
        attend &= j <= p
    if "window" in masking:
        left, right = masking["window"]
        if left is not None:
            attend &= j >= p - left
        if right is not None:
            attend &= j <= p + right
    return np.where(attend, s, np.asarray(-np.inf, dtype=s.dtype))


def _compute(q2, k, v2, score, kernel, masking, check):
    """Run the three stages with cattn's kernels and compare with the fused one."""
    import cattn  # at call time: avoids a circular import with cattn/__init__

    nt = {"num_threads": kernel["num_threads"]} if "num_threads" in kernel else {}
    if score != "additive":  # the additive weights only mean something there
        kernel = {key: val for key, val in kernel.items() if key != "additive_weight"}
    sc_opts = {key: kernel[key] for key in ("scale", "additive_weight") if key in kernel}
    s = np.asarray(cattn.scores(q2, k, score=score, **sc_opts, **nt))
    s_used = _apply_masking(s, masking)
    a = np.asarray(cattn.softmax(s_used, axis=-1, **nt))
    o = np.asarray(cattn.aggregate(a, v2, **nt))
    diff = None
    if check:
        fused = np.asarray(cattn.attention(q2, k, v2, score=score, **kernel, **masking))
        if fused.shape != o.shape:
            raise RuntimeError(f"cattn.attention returned shape {fused.shape}, "
                               f"the three stages gave {o.shape}")
        diff = float(np.max(np.abs(fused.astype(np.float64) - o))) if o.size else 0.0
        magnitude = max(1.0, float(np.max(np.abs(v2))) if v2.size else 1.0)
        if o.dtype == np.float32 or fused.dtype == np.float32:
            ok = np.allclose(o, fused, rtol=1e-3, atol=1e-5 * magnitude, equal_nan=True)
        else:
            ok = np.allclose(o, fused, rtol=1e-7, atol=1e-10 * magnitude, equal_nan=True)
        if not ok:
            raise RuntimeError(
                "the three stages (cattn.scores -> cattn.softmax -> cattn.aggregate) "
                f"and the fused cattn.attention disagree: max |difference| = {diff:.3g}")
    return s, s_used, a, o, diff


# ---------------------------------------------------------------------------
# matplotlib helpers
# ---------------------------------------------------------------------------

_CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans SC", "Noto Serif CJK SC",
              "Source Han Sans SC", "Source Han Sans CN", "WenQuanYi Zen Hei",
              "WenQuanYi Micro Hei", "SimHei", "Microsoft YaHei", "PingFang SC",
              "Heiti SC", "STHeiti", "AR PL UMing CN", "AR PL UKai CN",
              "Droid Sans Fallback", "Arial Unicode MS")


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plotting needs matplotlib; install it with "
            "pip install \"cattn[plot]\"  (or: pip install matplotlib)") from exc


def _has_wide(texts):
    return any(unicodedata.east_asian_width(ch) in ("W", "F") for t in texts for ch in t)


def _cjk_font():
    from matplotlib import font_manager
    names = {f.name for f in font_manager.fontManager.ttflist}
    for cand in _CJK_FONTS:
        if cand in names:
            return cand
    return None


def cjk_font_available():
    """True if matplotlib has a font that can draw Chinese text."""
    _require_matplotlib()
    return _cjk_font() is not None


def _plot_setup(lang, texts):
    """(font kwargs, lang to use for titles) for labels ``texts``."""
    wide = _has_wide(texts)
    font = _cjk_font() if (lang == "zh" or wide) else None
    fontkw = {"fontfamily": font} if font else {}
    if lang == "zh" and font is None:
        lang = "en"  # no font that can draw Chinese titles: keep them readable
    if wide and font is None:
        warnings.warn("no CJK font found for matplotlib, so Chinese/Japanese/Korean "
                      "labels will show as boxes; install one (e.g. Noto Sans CJK) or "
                      "pass ASCII labels= to plot()", UserWarning, stacklevel=3)
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


def _heatmap(ax, w, xlabels, ylabels, title, xlabel, ylabel, fontkw, vmax, cmap):
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
            if np.isfinite(x):
                ax.text(j, i, f"{x:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if x > 0.6 * vmax else "black")
    return im


def _save(fig, path):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Glyph .* missing from.*")
        warnings.filterwarnings("ignore", message=".*tight_layout.*")
        fig.savefig(path, dpi=120, bbox_inches="tight")


# ---------------------------------------------------------------------------
# the result objects
# ---------------------------------------------------------------------------

class Explanation:
    """The three stages of one attention computation.

    Attributes
    ----------
    query, keys, values : numpy.ndarray
        The inputs as arrays (``query`` keeps its 1-D or 2-D shape).
    scores : numpy.ndarray
        Stage 1: the similarity ``s`` of the query with each key, from
        :func:`cattn.scores`; shape ``(Lk,)`` for a 1-D query, else
        ``(Lq, Lk)``.
    masked_scores : numpy.ndarray
        What the softmax saw: ``scores`` plus ``bias``, ``-inf`` where a key
        is masked (the same values as ``scores`` without masking options).
    weights : numpy.ndarray
        Stage 2: softmax weights (same shape as ``scores``); each row sums
        to 1.
    output : numpy.ndarray
        Stage 3: ``V' = sum_i a_i v_i``, shape ``(Dv,)`` for a 1-D query,
        else ``(Lq, Dv)`` (the last axis is dropped for 1-D ``values``).
    score : str
        The similarity function.
    labels, value_labels, query_labels : list of str or None
        Names of the keys, of the value components and of the queries.
    options : dict
        The keyword options that were used (``scale``, ``additive_weight``,
        ``mask``, ...).
    lang : {"en", "zh"}
        Language of ``str()`` / HTML / plot titles.
    max_abs_diff : float or None
        Largest difference between ``output`` and the fused
        :func:`cattn.attention` (None if the check was skipped).
    """

    def __init__(self, *, query, keys, values, q2, v2, s2, su2, a2, o2, single,
                 scalar_values, score, labels, value_labels, query_labels,
                 options, lang, max_abs_diff):
        self.query = query
        self.keys = keys
        self.values = values
        self._q2, self._v2 = q2, v2
        self._s2, self._su2, self._a2, self._o2 = s2, su2, a2, o2
        self._single = single
        out = o2[:, 0] if scalar_values else o2
        self.scores = s2[0] if single else s2
        self.masked_scores = su2[0] if single else su2
        self.weights = a2[0] if single else a2
        self.output = out[0] if single else out
        self.score = score
        self.labels = list(labels)
        self.value_labels = None if value_labels is None else list(value_labels)
        self.query_labels = list(query_labels)
        self.options = dict(options)
        self.lang = lang
        self.max_abs_diff = max_abs_diff

    # -- conveniences -------------------------------------------------------
    @property
    def most_attended(self):
        """Label of the key with the largest weight (a list, one per query,
        for a 2-D query; None for a query whose keys are all masked)."""
        tops = [_argmax_label(row, self.labels) for row in self._a2]
        return tops[0] if self._single else tops

    def __len__(self):
        return 1

    def __repr__(self):
        return self.to_text()

    def __str__(self):
        return self.to_text()

    # -- text -----------------------------------------------------------------
    def _header(self, t):
        nq, d = self._q2.shape
        lines = [t["title"].format(name=t["names"][self.score], score=self.score)]
        lines.append("  " + t["shapes"].format(
            nq=nq, queries=t["query_one"] if nq == 1 else t["query_many"],
            d=d, nk=len(self.labels), dv=self._v2.shape[1]))
        return lines

    def to_text(self, lang=None, *, digits=3, max_keys=30, max_queries=6, bar_width=30):
        """Render the three stages as plain text (what ``str()`` returns).

        Parameters
        ----------
        lang : {"en", "zh"}, optional
            Defaults to the language given to :func:`explain`.
        digits : int
            Decimals of the numbers.
        max_keys, max_queries : int
            Longer inputs are truncated (with a note).
        bar_width : int
            Characters of a bar for weight 1.
        """
        lang = self.lang if lang is None else lang
        t = _words(lang)
        nq, d = self._q2.shape
        nk = len(self.labels)
        dv = self._v2.shape[1]
        shown_k = min(nk, max_keys)
        shown_q = min(nq, max_queries)
        show_kvec = d <= 8
        show_vvec = dv <= 8
        masked_any = bool(self.options.get("mask") is not None or self.options.get("causal")
                          or self.options.get("window") is not None
                          or self.options.get("bias") is not None)
        L = self._header(t)

        def qline(i):
            lab = f" {self.query_labels[i]}" if nq > 1 else ""
            return f"  {t['query']}{lab}: Q = {_vec(self._q2[i], digits)}"

        def more_keys(lines):
            if nk > shown_k:
                lines.append("  " + t["more_keys"].format(n=nk - shown_k))

        # stage 1
        L += ["", t["stage1"], f"  {t['computed_by']}cattn.scores(Q, K, score={self.score!r})",
              "  " + _formula(self.score, d, self.options, lang)]
        # one table: a row per key, a score column per query
        for i in range(shown_q):
            L.append(qline(i))
        headers = [t["key"]] + (["k_i"] if show_kvec else []) + (
            [t["score_col"]] if nq == 1 else
            [f"{t['score_col']} ({self.query_labels[i]})" for i in range(shown_q)])
        rows = []
        for j in range(shown_k):
            rows.append([self.labels[j]]
                        + ([_vec(self.keys[j], digits)] if show_kvec else [])
                        + [_num(self._s2[i, j], digits) for i in range(shown_q)])
        L += _table(headers, rows, ["<"] + (["<"] if show_kvec else []) + [">"] * shown_q)
        more_keys(L)
        # stage 2
        L += ["", t["stage2"], f"  {t['computed_by']}cattn.softmax(s, axis=-1)",
              "  " + t["softmax_formula"]]
        if "bias" in self.options:
            L.append("  " + t["bias_note"])
        if masked_any:
            L.append("  " + t["mask_note"])
        for i in range(shown_q):
            if nq > 1:
                L.append(f"  {t['query']} {self.query_labels[i]}:")
            top_j = _argmax_index(self._a2[i])
            rows = []
            for j in range(shown_k):
                sv = self._su2[i, j]
                stxt = t["masked"] if np.isneginf(sv) else _num(sv, digits)
                w = self._a2[i, j]
                mark = t["most"] if j == top_j else ""
                rows.append([self.labels[j], stxt, _num(w, digits),
                             _bar(w, bar_width) + ("  " + mark if mark else "")])
            rows.append([t["total"], "", _num(np.sum(self._a2[i]), digits), ""])
            L += _table([t["key"], t["score_col"], t["weight_col"], ""], rows,
                        ["<", ">", ">", "<"])
            if top_j is None:
                L.append("  " + t["all_masked"])
            more_keys(L)
        # stage 3
        L += ["", t["stage3"], f"  {t['computed_by']}cattn.aggregate(a, V)"]
        for i in range(shown_q):
            if nq > 1:
                L.append(f"  {t['query']} {self.query_labels[i]}:")
            share = _share(self._a2[i], self._v2)
            headers = ([t["key"], t["weight_col"]]
                       + ([t["value_col"], t["contrib_col"]] if show_vvec else [])
                       + [t["share_col"]])
            rows = []
            for j in range(shown_k):
                w = self._a2[i, j]
                row = [self.labels[j], _num(w, digits)]
                if show_vvec:
                    row += [_vec(self._v2[j], digits), _vec(w * self._v2[j], digits)]
                row.append(f"{100 * share[j]:.1f}%")
                rows.append(row)
            L += _table(headers, rows, ["<", ">"] + (["<", "<"] if show_vvec else []) + [">"])
            more_keys(L)
            if show_vvec or self.value_labels is not None:
                vtxt = _vec(self._o2[i], digits, self.value_labels)
                L.append(f"  V′ = {vtxt}")
        if nq > shown_q:
            L.append("  " + t["more_queries"].format(n=nq - shown_q))
        L.append("  " + t["share_note"])
        L.append("  " + t["v_note"])
        L += ["", (t["no_check"] if self.max_abs_diff is None
                   else t["check"].format(diff=self.max_abs_diff))]
        return "\n".join(L)

    # -- HTML -----------------------------------------------------------------
    def to_html(self, lang=None, *, digits=3, max_keys=30, max_queries=6):
        """Render the three stages as HTML tables (labels are escaped)."""
        lang = self.lang if lang is None else lang
        t = _words(lang)
        e = _html.escape
        nq, d = self._q2.shape
        nk = len(self.labels)
        shown_k, shown_q = min(nk, max_keys), min(nq, max_queries)
        show_vvec = self._v2.shape[1] <= 8
        H = ['<div class="cattn-explain">',
             f"<h4>{e(t['title'].format(name=t['names'][self.score], score=self.score))}</h4>"]
        # stage 1
        H.append(f"<h5>{e(t['stage1'])}</h5>")
        H.append(f"<p><code>cattn.scores</code> &mdash; <code>"
                 f"{e(_formula(self.score, d, self.options, lang))}</code></p>")
        H.append(_html_table(
            [t["key"]] + [e(x) for x in self.query_labels[:shown_q]],
            [[e(self.labels[j])] + [e(_num(self._s2[i, j], digits)) for i in range(shown_q)]
             for j in range(shown_k)], escape_header=True))
        # stage 2
        H.append(f"<h5>{e(t['stage2'])}</h5>")
        H.append(f"<p><code>cattn.softmax</code> &mdash; <code>{e(t['softmax_formula'])}</code></p>")
        rows = []
        tops = [_argmax_index(self._a2[i]) for i in range(shown_q)]
        for j in range(shown_k):
            row = [e(self.labels[j])]
            for i in range(shown_q):
                cell = _html_bar(self._a2[i, j], digits)
                row.append(f"<b>{cell}</b>" if j == tops[i] else cell)
            rows.append(row)
        rows.append([e(t["total"])] + [e(_num(np.sum(self._a2[i]), digits))
                                       for i in range(shown_q)])
        H.append(_html_table([t["key"]] + list(self.query_labels[:shown_q]), rows,
                             escape_header=True))
        # stage 3
        H.append(f"<h5>{e(t['stage3'])}</h5>")
        H.append(f"<p><code>cattn.aggregate</code> &mdash; <code>{e(t['sum_formula'])}</code></p>")
        vhead = self.value_labels if self.value_labels is not None else [
            f"d{c + 1}" for c in range(self._v2.shape[1])]
        for i in range(shown_q):
            share = _share(self._a2[i], self._v2)
            headers = [t["key"], t["weight_col"]] + (
                [f"{t['contrib_col']}: {x}" for x in vhead] if show_vvec else []) + [t["share_col"]]
            rows = []
            for j in range(shown_k):
                w = self._a2[i, j]
                row = [e(self.labels[j]), e(_num(w, digits))]
                if show_vvec:
                    row += [e(_num(x, digits)) for x in w * self._v2[j]]
                row.append(e(f"{100 * share[j]:.1f}%"))
                rows.append(row)
            if show_vvec:
                rows.append(["<b>V′</b>", ""] + [f"<b>{e(_num(x, digits))}</b>"
                                                for x in self._o2[i]] + [""])
            if nq > 1:
                H.append(f"<p>{e(t['query'])} {e(self.query_labels[i])}</p>")
            H.append(_html_table(headers, rows, escape_header=True))
        notes = [t["share_note"], t["v_note"],
                 t["no_check"] if self.max_abs_diff is None
                 else t["check"].format(diff=self.max_abs_diff)]
        if nk > shown_k:
            notes.insert(0, t["more_keys"].format(n=nk - shown_k))
        if nq > shown_q:
            notes.insert(0, t["more_queries"].format(n=nq - shown_q))
        H.append("<p>" + "<br>".join(e(x) for x in notes) + "</p>")
        H.append("</div>")
        return "\n".join(H)

    def _repr_html_(self):
        return self.to_html()

    # -- plot -----------------------------------------------------------------
    def plot(self, ax=None, path=None, *, lang=None, cmap="Blues", labels=None,
             query_labels=None):
        """Heatmap of the softmax weights (queries x keys).

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Where to draw; a new figure is made if omitted.
        path : str or path-like, optional
            Save the figure there (PNG, SVG, PDF... by extension).  Without
            ``ax`` the figure is made on the Agg canvas, so this works
            without a display.
        lang : {"en", "zh"}, optional
            Language of the titles (Chinese needs a CJK font installed; the
            titles fall back to English otherwise).
        cmap : str
            Matplotlib colour map.
        labels, query_labels : sequence of str, optional
            Tick labels to use instead of the key / query labels (e.g.
            ASCII names when no font can draw the original ones).

        Returns
        -------
        matplotlib.axes.Axes
        """
        _require_matplotlib()
        lang = self.lang if lang is None else lang
        _words(lang)
        xlabels = _labels(labels if labels is not None else self.labels,
                          len(self.labels), "k", "labels")
        ylabels = _labels(query_labels if query_labels is not None else self.query_labels,
                          len(self.query_labels), "q", "query_labels")
        fontkw, lang = _plot_setup(lang, xlabels + ylabels)
        t = _words(lang)
        if ax is None:
            fig, (ax,) = _new_figure(1, self._a2.shape[0], self._a2.shape[1], path)
        else:
            fig = ax.figure
        w = np.asarray(self._a2, dtype=np.float64)
        vmax = float(np.nanmax(w)) if w.size and np.nanmax(w) > 0 else 1.0
        im = _heatmap(ax, w, xlabels, ylabels,
                      t["heatmap_title"].format(score=self.score),
                      t["keys_axis"], t["queries_axis"], fontkw, vmax, cmap)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        if path is not None:
            _save(fig, path)
        return ax


class Comparison:
    """Several :class:`Explanation` objects, one per similarity function.

    ``str()`` shows the three stages side by side (one column per
    similarity), ``plot()`` draws one heatmap panel per similarity.

    Attributes
    ----------
    explanations : dict
        ``{score name: Explanation}`` in the requested order.
    score : tuple of str
        The similarity functions.
    scores, weights, output : dict
        ``{score name: array}`` taken from the explanations.
    labels, value_labels, query_labels, options, lang
        As in :class:`Explanation`.
    """

    def __init__(self, explanations, lang):
        self.explanations = dict(explanations)
        first = next(iter(self.explanations.values()))
        self.score = tuple(self.explanations)
        self.scores = {k: x.scores for k, x in self.explanations.items()}
        self.weights = {k: x.weights for k, x in self.explanations.items()}
        self.output = {k: x.output for k, x in self.explanations.items()}
        self.labels = first.labels
        self.value_labels = first.value_labels
        self.query_labels = first.query_labels
        self.options = first.options
        self.lang = lang
        self._first = first

    def __getitem__(self, score):
        return self.explanations[score]

    def __iter__(self):
        return iter(self.explanations.values())

    def __len__(self):
        return len(self.explanations)

    @property
    def most_attended(self):
        """``{score name: label of the most attended key}``."""
        return {k: x.most_attended for k, x in self.explanations.items()}

    @property
    def max_abs_diff(self):
        diffs = [x.max_abs_diff for x in self]
        return None if any(x is None for x in diffs) else max(diffs)

    def __repr__(self):
        return self.to_text()

    def __str__(self):
        return self.to_text()

    def to_text(self, lang=None, *, digits=3, max_keys=30, max_queries=6, bar_width=10):
        """Render the three stages side by side, one column per similarity."""
        lang = self.lang if lang is None else lang
        t = _words(lang)
        f = self._first
        nq, d = f._q2.shape
        nk = len(self.labels)
        shown_k, shown_q = min(nk, max_keys), min(nq, max_queries)
        names = list(self.explanations)
        L = [t["title_cmp"].format(n=len(names))]
        L.append("  " + t["shapes"].format(
            nq=nq, queries=t["query_one"] if nq == 1 else t["query_many"],
            d=d, nk=nk, dv=f._v2.shape[1]))
        width = max(_dw(n) for n in names)
        for n in names:
            L.append(f"  {_pad(n, width)}  {t['names'][n]}: {_formula(n, d, self.options, lang)}")

        def more_keys(lines):
            if nk > shown_k:
                lines.append("  " + t["more_keys"].format(n=nk - shown_k))

        L += ["", t["stage1"], f"  {t['computed_by']}cattn.scores(Q, K, score=...)"]
        for i in range(shown_q):
            L.append(f"  {t['query']}" + (f" {self.query_labels[i]}" if nq > 1 else "")
                     + f": Q = {_vec(f._q2[i], digits)}")
            rows = [[self.labels[j]] + [_num(self.explanations[n]._s2[i, j], digits)
                                        for n in names] for j in range(shown_k)]
            L += _table([t["key"]] + names, rows, ["<"] + [">"] * len(names))
            more_keys(L)
        L += ["", t["stage2"], f"  {t['computed_by']}cattn.softmax(s, axis=-1)   "
              f"({t['softmax_formula']}; {t['each_col_sums']})"]
        for i in range(shown_q):
            if nq > 1:
                L.append(f"  {t['query']} {self.query_labels[i]}:")
            rows = []
            for j in range(shown_k):
                row = [self.labels[j]]
                for n in names:
                    a = self.explanations[n]._a2[i, j]
                    row.append(_pad(_num(a, digits) + " " + _bar(a, bar_width), digits + 3 + bar_width))
                rows.append(row)
            L += _table([t["key"]] + names, rows, ["<"] * (1 + len(names)))
            more_keys(L)
        L += ["", t["stage3"], f"  {t['computed_by']}cattn.aggregate(a, V)"]
        for i in range(shown_q):
            if nq > 1:
                L.append(f"  {t['query']} {self.query_labels[i]}:")
            rows = []
            for n in names:
                x = self.explanations[n]
                top = _argmax_label(x._a2[i], self.labels)
                tops = "-" if top is None else f"{top} ({100 * float(np.max(x._a2[i])):.1f}%)"
                rows.append([n, _vec(x._o2[i], digits, self.value_labels)
                             if (x._v2.shape[1] <= 8 or self.value_labels) else "...", tops])
            L += _table([t["similarity"], "V′", t["most_col"]], rows, ["<", "<", "<"])
        if nq > shown_q:
            L.append("  " + t["more_queries"].format(n=nq - shown_q))
        L.append("  " + t["v_note"])
        diff = self.max_abs_diff
        L += ["", t["no_check"] if diff is None else t["check"].format(diff=diff)]
        return "\n".join(L)

    def to_html(self, lang=None, *, digits=3, max_keys=30, max_queries=6):
        """Side-by-side HTML tables (labels are escaped)."""
        lang = self.lang if lang is None else lang
        t = _words(lang)
        e = _html.escape
        f = self._first
        nq, d = f._q2.shape
        nk = len(self.labels)
        shown_k, shown_q = min(nk, max_keys), min(nq, max_queries)
        names = list(self.explanations)
        H = ['<div class="cattn-explain">', f"<h4>{e(t['title_cmp'].format(n=len(names)))}</h4>",
             "<ul>" + "".join(f"<li><code>{e(n)}</code> {e(t['names'][n])}: <code>"
                              f"{e(_formula(n, d, self.options, lang))}</code></li>"
                              for n in names) + "</ul>"]
        for i in range(shown_q):
            if nq > 1:
                H.append(f"<p><b>{e(t['query'])} {e(self.query_labels[i])}</b></p>")
            H.append(f"<h5>{e(t['stage1'])}</h5>")
            H.append(_html_table(
                [t["key"]] + names,
                [[e(self.labels[j])] + [e(_num(self.explanations[n]._s2[i, j], digits))
                                        for n in names] for j in range(shown_k)],
                escape_header=True))
            H.append(f"<h5>{e(t['stage2'])}</h5>")
            H.append(_html_table(
                [t["key"]] + names,
                [[e(self.labels[j])] + [_html_bar(self.explanations[n]._a2[i, j], digits)
                                        for n in names] for j in range(shown_k)],
                escape_header=True))
            H.append(f"<h5>{e(t['stage3'])}</h5>")
            rows = []
            for n in names:
                x = self.explanations[n]
                top = _argmax_label(x._a2[i], self.labels)
                rows.append([e(n), e(_vec(x._o2[i], digits, self.value_labels)),
                             e("-" if top is None else top)])
            H.append(_html_table([t["similarity"], "V′", t["most_col"]], rows,
                                 escape_header=True))
        notes = [t["v_note"]]
        if nk > shown_k:
            notes.append(t["more_keys"].format(n=nk - shown_k))
        if nq > shown_q:
            notes.append(t["more_queries"].format(n=nq - shown_q))
        diff = self.max_abs_diff
        notes.append(t["no_check"] if diff is None else t["check"].format(diff=diff))
        H.append("<p>" + "<br>".join(e(x) for x in notes) + "</p></div>")
        return "\n".join(H)

    def _repr_html_(self):
        return self.to_html()

    def plot(self, ax=None, path=None, *, lang=None, cmap="Blues", labels=None,
             query_labels=None):
        """One heatmap panel of the softmax weights per similarity function.

        Parameters
        ----------
        ax : sequence of matplotlib Axes, optional
            One Axes per similarity; a new figure is made if omitted.
        path : str or path-like, optional
            Save the figure there (headless-safe when ``ax`` is omitted).
        lang : {"en", "zh"}, optional
        cmap : str
        labels, query_labels : sequence of str, optional
            Tick labels to use instead of the key / query labels.

        Returns
        -------
        list of matplotlib.axes.Axes
        """
        _require_matplotlib()
        lang = self.lang if lang is None else lang
        _words(lang)
        xlabels = _labels(labels if labels is not None else self.labels,
                          len(self.labels), "k", "labels")
        ylabels = _labels(query_labels if query_labels is not None else self.query_labels,
                          len(self.query_labels), "q", "query_labels")
        fontkw, lang = _plot_setup(lang, xlabels + ylabels)
        t = _words(lang)
        names = list(self.explanations)
        a0 = self._first._a2
        if ax is None:
            fig, axes = _new_figure(len(names), a0.shape[0], a0.shape[1], path)
        else:
            axes = [ax] if hasattr(ax, "imshow") else list(np.ravel(ax))
            if len(axes) != len(names):
                raise ValueError(f"need {len(names)} Axes (one per similarity), got {len(axes)}")
            fig = axes[0].figure
        vmax = max(float(np.nanmax(x._a2)) if x._a2.size else 0.0 for x in self)
        vmax = vmax if vmax > 0 else 1.0
        im = None
        for k, (n, a) in enumerate(zip(names, axes)):
            x = self.explanations[n]
            im = _heatmap(a, np.asarray(x._a2, dtype=np.float64), xlabels,
                          ylabels, t["heatmap_title"].format(score=n),
                          t["keys_axis"], t["queries_axis"] if k == 0 else "",
                          fontkw, vmax, cmap)
        fig.colorbar(im, ax=axes, fraction=0.046 / max(1, len(axes)) * 2, pad=0.02)
        if path is not None:
            _save(fig, path)
        return axes


def _html_table(headers, rows, escape_header=True):
    e = _html.escape
    head = "".join(f"<th>{e(h) if escape_header else h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return (f'<table class="cattn-table"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def _html_bar(w, digits):
    width = 0 if not np.isfinite(w) else max(0.0, min(1.0, float(w))) * 120
    return (f'<span style="display:inline-block;width:{width:.1f}px;height:0.8em;'
            f'background:#4c78a8;margin-right:4px"></span>{_html.escape(_num(w, digits))}')


# ---------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------

def explain(query, keys, values, *, labels=None, value_labels=None, query_labels=None,
            score="scaled_dot", lang="en", check=True, **kwargs):
    """Run attention in its three stages and explain each one.

    Parameters
    ----------
    query : array_like, shape (D,) or (Lq, D)
        One query (e.g. a reader's preferences) or several.
    keys : array_like, shape (Lk, D)
        One key per part of what is read (e.g. the newspaper's sections).
    values : array_like, shape (Lk, Dv) or (Lk,)
        The content of each part.
    labels : sequence of str, optional
        Names of the keys (default ``k1, k2, ...``).
    value_labels : sequence of str, optional
        Names of the ``Dv`` components of a value (used to print ``V'``).
    query_labels : sequence of str, optional
        Names of the queries (default ``q1, q2, ...``).
    score : str or sequence of str
        ``"dot"``, ``"scaled_dot"`` (default), ``"cosine"`` or
        ``"additive"``; a list compares several and returns a
        :class:`Comparison`.
    lang : {"en", "zh"}
        Language of the rendered text.
    check : bool
        Compare the staged result with the fused :func:`cattn.attention`
        and raise ``RuntimeError`` if they disagree (default True).
    **kwargs
        ``scale``, ``additive_weight``, ``num_threads`` (passed to the
        kernels) and ``mask``, ``bias``, ``causal``, ``window`` (applied to
        the scores between stage 1 and stage 2, as :func:`cattn.attention`
        does).

    Returns
    -------
    Explanation or Comparison
    """
    _words(lang)
    if isinstance(score, str):
        names = None
    else:
        names = list(dict.fromkeys(score))
        if not names:
            raise ValueError("score must be a similarity name or a non-empty list of them")
    for n in ([score] if names is None else names):
        if n not in SCORES:
            raise ValueError(f"unknown score {n!r}; expected one of {SCORES}")
    q2, k, v2, single, scalar_values, klab, vlab, qlab = _prepare(
        query, keys, values, labels, value_labels, query_labels)
    if scalar_values and vlab is not None and len(vlab) != 1:
        raise ValueError("value_labels must have one entry for 1-D values")
    kernel, masking = _split_options(kwargs)
    options = {**kernel, **masking}
    query_arr = q2[0] if single else q2
    values_arr = v2[:, 0] if scalar_values else v2

    def one(name):
        s, su, a, o, diff = _compute(q2, k, v2, name, kernel, masking, check)
        return Explanation(query=query_arr, keys=k, values=values_arr, q2=q2, v2=v2,
                           s2=s, su2=su, a2=a, o2=o, single=single,
                           scalar_values=scalar_values, score=name, labels=klab,
                           value_labels=vlab, query_labels=qlab, options=options,
                           lang=lang, max_abs_diff=diff)

    if names is None:
        return one(score)
    return Comparison({n: one(n) for n in names}, lang)
