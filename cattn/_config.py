"""Build and runtime configuration (``cattn.show_config``, ``cattn info``)."""
import platform
import sys

import numpy as np

from . import _kernels
from ._version import __version__
from ._openmp_helpers import _openmp_enabled, _openmp_max_threads, _openmp_effective_n_threads

try:
    from ._build_info import BUILD_INFO
except ImportError:  # pragma: no cover - built by other means
    BUILD_INFO = {}


def config():
    """The configuration as a dict."""
    return {
        "version": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "openmp": _openmp_enabled(),
        "openmp_max_threads": _openmp_max_threads(),
        "num_threads": _openmp_effective_n_threads(None),
        "simd_kernels": _kernels.isa_name(),
        "compiler": BUILD_INFO.get("compiler"),
        "cflags": " ".join(BUILD_INFO.get("cflags", [])),
        "ldflags": " ".join(BUILD_INFO.get("ldflags", [])),
        "debug_build": BUILD_INFO.get("debug"),
    }


def show_config(return_dict=False):
    """Print cattn's version, OpenMP status, the thread count a call would
    use, the SIMD kernel variant and the compiler flags it was built with.

    Parameters
    ----------
    return_dict : bool
        Return the configuration as a dict instead of printing it.

    Examples
    --------
    >>> import cattn
    >>> cattn.show_config(return_dict=True)["openmp"]
    True
    """
    cfg = config()
    if return_dict:
        return cfg
    width = max(len(k) for k in cfg)
    for key, value in cfg.items():
        print(f"{key:<{width}} : {value}")
    return None
