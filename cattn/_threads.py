"""Thread policy: the thread API, the serial threshold and the BLAS limiter.

The OpenMP side (what ``num_threads=None`` resolves to, the team checks)
lives in ``_openmp_helpers``; this module decides how many threads one call
gets and keeps BLAS (the stage functions' GEMMs) from oversubscribing.
"""
import os
import threading

from ._openmp_helpers import _openmp_effective_n_threads, _set_user_n_threads
from ._options import check_num_threads

__all__ = ["get_num_threads", "set_num_threads", "threads_for", "blas_limit",
           "SERIAL_WORK"]


def _serial_work(wait_policy):
    """Below this many score-entry x feature operations (B*H*Lq*Lk*D) a call
    runs on the calling thread: a team would cost more than it saves.

    Calibrated on a 2-core host (1 vs 2 threads, float32, D = 64; the
    numbers are in the README's Threads section): with OpenMP's default
    spinning workers two threads win from 2**19 on; with
    OMP_WAIT_POLICY=PASSIVE a sleeping worker takes ~60 us to wake, and
    two threads win only from 2**23 on.  libgomp reads the policy once, at
    load, so it is read once here too.
    """
    if wait_policy.strip().upper() == "PASSIVE":
        return 1 << 23
    return 1 << 18


SERIAL_WORK = _serial_work(os.environ.get("OMP_WAIT_POLICY", ""))


def get_num_threads():
    """Number of threads a cattn call with ``num_threads=None`` uses now.

    Resolved at call time: the value given to :func:`set_num_threads` if
    any, else ``OMP_NUM_THREADS``, else the usable cores; threadpoolctl's
    OpenMP limits cap it.

    Examples
    --------
    >>> import cattn
    >>> cattn.get_num_threads() >= 1
    True
    """
    return _openmp_effective_n_threads(None)


def set_num_threads(n):
    """Set the default thread count of cattn's calls; returns the previous
    thread count (what :func:`get_num_threads` gave).  ``None`` goes back to
    the default resolution.

    Examples
    --------
    >>> import cattn
    >>> previous = cattn.set_num_threads(1)
    >>> cattn.get_num_threads()
    1
    >>> _ = cattn.set_num_threads(None)
    """
    n = check_num_threads(n)
    previous = get_num_threads()
    _set_user_n_threads(n)
    return previous


def threads_for(num_threads, work):
    """Threads for a call doing ``work`` score-entry x feature operations:
    the resolved count, or 1 below the serial threshold (whatever was asked:
    a team costs more than such a call).  ``num_threads`` is already
    checked (``check_num_threads``)."""
    if work < SERIAL_WORK:
        return 1
    return _openmp_effective_n_threads(num_threads)


_blas_controller = None
_blas_lock = threading.RLock()


def _reset_after_fork():
    # A child forked while another thread held the lock would block on it
    # for ever: the holder does not exist in the child.
    global _blas_lock
    _blas_lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


class blas_limit:
    """Context manager holding BLAS to ``n`` threads while a cattn stage
    call runs.

    OpenBLAS's thread count is process-wide, and threadpoolctl (>= 3.6)
    lets only one "controlling" Python thread change it: a limit asked for
    from any other thread is silently dropped, and a thread that ever
    limited it keeps the control.  A stage call must get the count it asked
    for from any thread, and must not take the control away from a user's
    own ``threadpool_limits``: so the count is set and restored on the
    libraries directly, under one lock held for the whole BLAS section
    (concurrent ``scores``/``aggregate`` calls from several Python threads
    run one after the other; each already uses all the threads it was
    given).  The fused ``attention`` kernel never takes this lock.
    """

    def __init__(self, n):
        self.n = n
        self.saved = []
        self.lock = None

    def __enter__(self):
        global _blas_controller
        self.lock = _blas_lock
        self.lock.acquire()
        try:
            if _blas_controller is None:
                from threadpoolctl import ThreadpoolController
                _blas_controller = ThreadpoolController().select(user_api="blas")
            for lib in _blas_controller.lib_controllers:
                # the library's own setter, not threadpoolctl's ownership rule
                setter = getattr(lib, "_real_set_num_threads", lib.set_num_threads)
                self.saved.append((setter, lib.get_num_threads()))
                setter(self.n)
        except BaseException:
            self._restore()
            self.lock.release()
            raise
        return self

    def _restore(self):
        for setter, n in reversed(self.saved):
            setter(n)
        self.saved = []

    def __exit__(self, *exc):
        try:
            self._restore()
        finally:
            self.lock.release()
        return False
