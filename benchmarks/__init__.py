"""asv suites of cattn (``bench_*.py``) and their shared shapes and helpers
(``common.py``); see ``asv.conf.json`` at the repository root and the
docstring of ``common.py``.  Nothing runs on import."""
