"""pytest's collection from the repository root (the README's test command
runs ``pytest --doctest-modules``, which imports every module of cattn):
the optional bridges to PyTorch and JAX import those libraries, so they are
left out when the library is not installed (their tests skip likewise)."""
import importlib.util

collect_ignore = [f"cattn/{name}.py" for name in ("torch", "jax")
                  if importlib.util.find_spec(name) is None]
