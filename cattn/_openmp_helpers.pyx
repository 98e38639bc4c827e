# cython: language_level=3
"""Thread-count resolution for cattn's OpenMP regions.

cattn never changes OpenMP's global state (no ``omp_set_num_threads``): each
parallel region passes ``num_threads=`` explicitly, resolved at call time by
:func:`_openmp_effective_n_threads`.
"""
import os

from cython.parallel cimport parallel

_user_n_threads = None   # set by cattn.set_num_threads

cattn_register_atfork()


def _in_forked_child():
    """True in a process forked from one that had loaded cattn."""
    return bool(cattn_in_forked_child)


def _openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(CATTN_HAVE_OPENMP)


def _openmp_max_threads():
    """OpenMP's current limit: OMP_NUM_THREADS, threadpoolctl, or the cores."""
    return omp_get_max_threads()


from cattn._options import cpu_count as _cpu_count, set_usable_cores as _set_usable_cores

# With OMP_PROC_BIND (or OMP_PLACES) set, libgomp pins the loading thread
# to one place when it initialises, so the main thread's affinity then
# reports one CPU (measured on a 2-core host: sched_getaffinity 1,
# /proc/self/status Cpus_allowed_list "0", every thread of the process
# alike, while omp_get_num_procs() still says 2, and 1 under taskset -c 0).
# omp_get_num_procs() is the affinity libgomp saw before it bound anything.
# Unbound, the current affinity stays the truth (it follows a
# sched_setaffinity made after libgomp was loaded).
if CATTN_HAVE_OPENMP and omp_get_proc_bind() != 0:
    _set_usable_cores(omp_get_num_procs())


def _openmp_effective_n_threads(n_threads=None):
    """Threads a cattn call will use.

    In a forked child (see ``_in_forked_child``) it is always 1: OpenMP's
    thread pool does not survive fork.  Otherwise an explicit ``n_threads``
    wins.  Otherwise the value of
    ``cattn.set_num_threads`` if any, else OpenMP's own limit (which follows
    ``OMP_NUM_THREADS`` and threadpoolctl, and defaults to the usable cores);
    in both cases capped by OpenMP's current limit so that
    ``threadpool_limits(1, user_api="openmp")`` always takes effect.
    """
    if not CATTN_HAVE_OPENMP or cattn_in_forked_child:
        return 1
    if n_threads is not None:
        return n_threads
    limit = omp_get_max_threads()
    if _user_n_threads is not None:
        return max(1, min(_user_n_threads, limit))
    return max(1, min(limit, _cpu_count()))


def _set_user_n_threads(n):
    global _user_n_threads
    previous = _user_n_threads
    _user_n_threads = n
    return previous


def _get_user_n_threads():
    return _user_n_threads


def _threads_in_region(int n_threads):
    """Team size OpenMP actually gives a region asked for ``n_threads``
    (a debug hook for the tests; threadpoolctl limits show up here)."""
    cdef int got[1]
    got[0] = 1
    with nogil, parallel(num_threads=n_threads):
        if omp_get_thread_num() == 0:
            got[0] = omp_get_num_threads()
    return got[0]
