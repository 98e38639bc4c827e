"""A team that cannot be created from a second Python thread does not exit
the process.

libgomp keeps one thread pool per calling thread: a team verified on the
main thread says nothing about the threads a second Python thread's first
parallel region must create.  The main thread runs a 2-thread call first,
then the address space is capped (RLIMIT_AS) with room for the arrays but
not for a new 8 MiB thread stack, and a second Python thread (started
before the cap) asks for 2 threads: it may raise MemoryError or run on
fewer threads, but the process must go on and print ``SURVIVED`` (libgomp
used to exit it with "Thread creation failed", status 1).  Linux; not
under AddressSanitizer.

Run by the test-suite (tests/test_reliability_memory.py) and by hand, from
the repository root, with cattn importable (installed, or ``PYTHONPATH=.``
in a built checkout)::

    python tests/scripts/thread_creation_limit_second_thread.py
"""
import os, resource, threading
import numpy as np, cattn
q = np.random.default_rng(0).standard_normal((64, 64, 16))
expect = cattn.attention(q, q, q, num_threads=2)   # the main thread's team: 2
started, go = threading.Event(), threading.Event()
result = []


def second():
    started.set()
    go.wait()
    try:
        result.append(np.array_equal(cattn.attention(q, q, q, num_threads=2), expect))
    except MemoryError:
        result.append("MemoryError")


t = threading.Thread(target=second)
t.start()
started.wait()
with open("/proc/self/statm") as f:
    vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
# room for small allocations, not for a new thread stack of 8 MiB
resource.setrlimit(resource.RLIMIT_AS, (vm + (4 << 20), resource.RLIM_INFINITY))
go.set()
t.join()
assert result in ([True], ["MemoryError"]), result
print("SURVIVED", result[0])
