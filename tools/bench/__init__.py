"""The side-by-side benchmark of cattn, naive NumPy and PyTorch
(``python -m tools.bench`` from the repository root; see ``runner.py``)."""
