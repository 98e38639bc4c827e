"""A clear message when cattn is imported from a source tree that was not
built (as scikit-learn's ``__check_build``): the compiled kernels are
missing, and Python's own message would be a confusing circular-import
error."""
import os

_MESSAGE = """cattn's compiled extension ({missing}) could not be imported{detail}.

It looks like cattn is being imported from a source checkout that was not
built ({where}).  Install it (this compiles the kernels):

    python -m pip install .          # or: python -m pip install -e .

and run Python from outside the source directory, or build in place with
`python setup.py build_ext --inplace`."""


def check_build() -> None:
    try:
        from . import _kernels, _openmp_helpers  # noqa: F401
    except ImportError as exc:
        here = os.path.dirname(os.path.abspath(__file__))
        missing = getattr(exc, "name", None) or "cattn._kernels"
        detail = "" if "No module named" in str(exc) or "cannot import name" in str(exc) \
            else f": {exc}"
        raise ImportError(_MESSAGE.format(missing=missing, detail=detail,
                                          where=os.path.dirname(here))) from None
