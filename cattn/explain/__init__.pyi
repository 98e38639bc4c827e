# Type stub for the package cattn/explain/ (its __init__.py; the submodules
# compute, text, html, plot, i18n and example are implementation modules).
# Checked against the runtime by ``python -m mypy.stubtest cattn``; keep in
# sync with explain/__init__.py.
# Plotting returns matplotlib objects, typed Any here so that type checking
# cattn never needs matplotlib (an optional dependency).
import os
from collections.abc import Iterator, Sequence
from typing import Any, Literal, Union, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["explain", "Explanation", "Comparison", "SCORES", "newspaper"]

_Score = Literal["scaled_dot", "dot", "cosine", "additive"]
_Lang = Literal["en", "zh"]
_Array = NDArray[np.floating[Any]]
_Path = Union[str, os.PathLike[str]]

SCORES: tuple[_Score, ...]

# str() and repr() give to_text(); save_html writes to_html(full_page=True).
class _Rendered:
    def save_html(self, path: _Path, lang: _Lang | None = None, **kwargs: Any) -> None: ...
    def _repr_html_(self) -> str: ...

class Explanation(_Rendered):
    query: _Array
    keys: _Array
    values: _Array
    scores: _Array
    masked_scores: _Array
    weights: _Array
    output: _Array
    score: _Score
    labels: list[str]
    value_labels: list[str] | None
    query_labels: list[str]
    options: dict[str, Any]
    lang: _Lang
    max_abs_diff: float | None
    # Built by explain(); the arguments are internal.
    def __init__(
        self, *, query: _Array, keys: _Array, values: _Array, q2: _Array, v2: _Array,
        s2: _Array, su2: _Array, a2: _Array, o2: _Array, single: bool,
        scalar_values: bool, score: _Score, labels: Sequence[str],
        value_labels: Sequence[str] | None, query_labels: Sequence[str],
        options: dict[str, Any], lang: _Lang, max_abs_diff: float | None,
    ) -> None: ...
    @property
    def most_attended(self) -> str | list[str | None] | None: ...
    def __len__(self) -> int: ...
    def to_text(
        self, lang: _Lang | None = None, *, digits: int = 3, max_keys: int = 30,
        max_queries: int = 6, bar_width: int = 30,
    ) -> str: ...
    def to_html(
        self, lang: _Lang | None = None, *, digits: int = 3, max_keys: int = 30,
        max_queries: int = 6, full_page: bool = False,
    ) -> str: ...
    def plot(
        self, ax: Any = None, path: _Path | None = None, *, lang: _Lang | None = None,
        cmap: str = "Blues", labels: Sequence[str] | None = None,
        query_labels: Sequence[str] | None = None,
    ) -> Any: ...

class Comparison(_Rendered):
    explanations: dict[str, Explanation]
    score: tuple[str, ...]
    scores: dict[str, _Array]
    weights: dict[str, _Array]
    output: dict[str, _Array]
    labels: list[str]
    value_labels: list[str] | None
    query_labels: list[str]
    options: dict[str, Any]
    lang: _Lang
    def __init__(self, explanations: dict[str, Explanation], lang: _Lang) -> None: ...
    def __getitem__(self, score: str) -> Explanation: ...
    def __iter__(self) -> Iterator[Explanation]: ...
    def __len__(self) -> int: ...
    @property
    def most_attended(self) -> dict[str, str | list[str | None] | None]: ...
    @property
    def max_abs_diff(self) -> float | None: ...
    def to_text(
        self, lang: _Lang | None = None, *, digits: int = 3, max_keys: int = 30,
        max_queries: int = 6, bar_width: int = 10,
    ) -> str: ...
    def to_html(
        self, lang: _Lang | None = None, *, digits: int = 3, max_keys: int = 30,
        max_queries: int = 6, full_page: bool = False,
    ) -> str: ...
    def plot(
        self, ax: Any = None, path: _Path | None = None, *, lang: _Lang | None = None,
        cmap: str = "Blues", labels: Sequence[str] | None = None,
        query_labels: Sequence[str] | None = None,
    ) -> list[Any]: ...

# A single similarity name gives an Explanation; a list or tuple of names
# compares them in a Comparison.  **kwargs: scale, additive_weight,
# num_threads, mask, bias, causal, window (as in cattn.attention).
@overload
def explain(
    query: ArrayLike, keys: ArrayLike, values: ArrayLike, *,
    labels: Sequence[str] | None = None, value_labels: Sequence[str] | None = None,
    query_labels: Sequence[str] | None = None, score: _Score = "scaled_dot",
    lang: _Lang = "en", check: bool = True, **kwargs: Any,
) -> Explanation: ...
@overload
def explain(
    query: ArrayLike, keys: ArrayLike, values: ArrayLike, *,
    labels: Sequence[str] | None = None, value_labels: Sequence[str] | None = None,
    query_labels: Sequence[str] | None = None, score: Sequence[_Score],
    lang: _Lang = "en", check: bool = True, **kwargs: Any,
) -> Comparison: ...
def cjk_font_available() -> bool: ...

# The newspaper example: query, keys, values, labels, value_labels and
# additive_weight.
def newspaper(lang: _Lang = "en") -> dict[str, Any]: ...
