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
renders as HTML in a notebook (``e.to_html(full_page=True)`` or
``e.save_html(path)`` for a standalone page) and can draw the weights as a
heatmap (``e.plot()``, needs ``matplotlib``: ``pip install "cattn[plot]"``).
:func:`newspaper` gives the numbers of the newspaper example.

The package's modules:

* :mod:`cattn.explain.compute` -- the three stages for the small example;
* :mod:`cattn.explain.text` -- plain-text tables with bars;
* :mod:`cattn.explain.html` -- HTML tables and standalone pages;
* :mod:`cattn.explain.plot` -- heatmaps (matplotlib, optional);
* :mod:`cattn.explain.i18n` -- the English and Chinese words;
* :mod:`cattn.explain.example` -- the newspaper example's data.

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

from . import compute as _compute
from . import html as _html
from . import plot as _plot
from . import text as _text
from .example import newspaper
from .i18n import words as _words
from .plot import cjk_font as _cjk_font  # noqa: F401  (kept for callers of the old module)
from .plot import cjk_font_available

__all__ = ["explain", "Explanation", "Comparison", "SCORES", "newspaper"]

#: the similarity functions :func:`explain` knows how to describe
SCORES = _compute.SCORES


class _Rendered:
    """What :class:`Explanation` and :class:`Comparison` share: ``str()`` and
    ``repr()`` are their text, a notebook shows their HTML fragment and
    :meth:`save_html` writes their standalone page."""

    def __repr__(self):
        return self.to_text()

    def __str__(self):
        return self.to_text()

    def save_html(self, path, lang=None, **kwargs):
        """Write ``to_html(full_page=True)`` to ``path`` (UTF-8)."""
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.to_html(lang, full_page=True, **kwargs))

    def _repr_html_(self):
        return self.to_html()


class Explanation(_Rendered):
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

    @property
    def most_attended(self):
        """Label of the key with the largest weight (a list, one per query,
        for a 2-D query; None for a query whose keys are all masked)."""
        tops = [_compute.argmax_label(row, self.labels) for row in self._a2]
        return tops[0] if self._single else tops

    def __len__(self):
        return 1

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
        return _text.explanation_text(self, lang, digits=digits, max_keys=max_keys,
                                      max_queries=max_queries, bar_width=bar_width)

    def to_html(self, lang=None, *, digits=3, max_keys=30, max_queries=6, full_page=False):
        """Render the three stages as HTML tables (labels are escaped).

        The score and weight tables have one row per query and one column
        per key (as the heatmap of :meth:`plot`); a masked key's weight
        shows as a dash.

        Parameters
        ----------
        lang, digits, max_keys, max_queries
            As in :meth:`to_text`.
        full_page : bool
            False (default): a fragment for a notebook (what
            ``_repr_html_`` returns).  True: a standalone HTML page with its
            own styles, for a browser (see :meth:`save_html`).
        """
        return _html.explanation_html(self, lang, digits=digits, max_keys=max_keys,
                                      max_queries=max_queries, full_page=full_page)

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
            titles fall back to English otherwise, with a UserWarning).
        cmap : str
            Matplotlib colour map.
        labels, query_labels : sequence of str, optional
            Tick labels to use instead of the key / query labels (e.g.
            ASCII names when no font can draw the original ones).

        Returns
        -------
        matplotlib.axes.Axes

        Masked keys are marked with a dash instead of their weight (0).
        """
        return _plot.explanation_plot(self, ax, path, lang=lang, cmap=cmap, labels=labels,
                                      query_labels=query_labels)


class Comparison(_Rendered):
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

    def to_text(self, lang=None, *, digits=3, max_keys=30, max_queries=6, bar_width=10):
        """Render the three stages side by side, one column per similarity."""
        return _text.comparison_text(self, lang, digits=digits, max_keys=max_keys,
                                     max_queries=max_queries, bar_width=bar_width)

    def to_html(self, lang=None, *, digits=3, max_keys=30, max_queries=6, full_page=False):
        """HTML tables (labels are escaped), one row per similarity and one
        column per key; ``full_page=True`` gives a standalone page."""
        return _html.comparison_html(self, lang, digits=digits, max_keys=max_keys,
                                     max_queries=max_queries, full_page=full_page)

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
        return _plot.comparison_plot(self, ax, path, lang=lang, cmap=cmap, labels=labels,
                                     query_labels=query_labels)


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
    q2, k, v2, single, scalar_values, klab, vlab, qlab = _compute.prepare(
        query, keys, values, labels, value_labels, query_labels)
    if scalar_values and vlab is not None and len(vlab) != 1:
        raise ValueError("value_labels must have one entry for 1-D values")
    kernel, masking = _compute.split_options(kwargs)
    options = {**kernel, **masking}
    query_arr = q2[0] if single else q2
    values_arr = v2[:, 0] if scalar_values else v2

    def one(name):
        s, su, a, o, diff = _compute.compute(q2, k, v2, name, kernel, masking, check)
        return Explanation(query=query_arr, keys=k, values=values_arr, q2=q2, v2=v2,
                           s2=s, su2=su, a2=a, o2=o, single=single,
                           scalar_values=scalar_values, score=name, labels=klab,
                           value_labels=vlab, query_labels=qlab, options=options,
                           lang=lang, max_abs_diff=diff)

    if names is None:
        return one(score)
    return Comparison({n: one(n) for n in names}, lang)


# ``cattn.explain`` is this function once ``import cattn`` has run (the
# package re-exports it under the module's name), so the example is also
# reachable as ``cattn.explain.newspaper``.
explain.newspaper = newspaper
