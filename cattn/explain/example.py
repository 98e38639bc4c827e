"""The newspaper example: a reader's preferences and four newspaper sections.

I read a newspaper with four sections -- sports, technology, stocks and
health.  I like technology most, then sports, then health, and stocks
least.  Every vector lives in the same 4-feature topic space
``[tech, sports, health, finance]``:

* Q (query)  -- my preferences;
* K (keys)   -- what each section is about;
* V (values) -- what each section's articles contain.

:func:`newspaper` returns the numbers with labels in English or Chinese;
``cattn demo`` walks through them.
"""

import numpy as np

from .i18n import LANGS

__all__ = ["newspaper", "QUERY", "KEYS", "VALUES", "ADDITIVE_WEIGHT", "FEATURES", "SECTIONS"]

#: the names of the four features, per language
FEATURES = {"en": ["tech", "sports", "health", "finance"],
            "zh": ["科技", "体育", "健康", "财经"]}
#: the names of the four sections, per language
SECTIONS = {"en": ["sports", "technology", "stocks", "health"],
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


def newspaper(lang="en"):
    """The newspaper example's data.

    Parameters
    ----------
    lang : {"en", "zh"}
        Language of the labels.

    Returns
    -------
    dict
        ``query`` (4,), ``keys`` (4, 4), ``values`` (4, 4), ``labels`` (the
        four sections), ``value_labels`` (the four features) and
        ``additive_weight`` (4,), fresh copies on every call.

    Examples
    --------
    >>> from cattn.explain import newspaper
    >>> d = newspaper("en")
    >>> d["labels"]
    ['sports', 'technology', 'stocks', 'health']
    >>> d["keys"].shape
    (4, 4)
    """
    if lang not in LANGS:
        raise ValueError(f"lang must be 'en' or 'zh', got {lang!r}")
    return {"query": QUERY.copy(), "keys": KEYS.copy(), "values": VALUES.copy(),
            "labels": list(SECTIONS[lang]), "value_labels": list(FEATURES[lang]),
            "additive_weight": ADDITIVE_WEIGHT.copy()}
