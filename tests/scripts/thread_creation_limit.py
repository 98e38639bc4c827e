"""A team of threads that cannot be created does not exit the process.

The address space is capped (RLIMIT_AS) with room for the arrays but not
for 7 new 8 MiB thread stacks, then a call asks for 8 threads: it may
raise MemoryError or run on fewer threads, but the process must go on and
print ``SURVIVED`` (libgomp used to exit it: BUG-5 of docs/reliability.md).
Linux; not under AddressSanitizer.

Run by the test-suite (tests/test_reliability_memory.py) and by hand, from
the repository root, with cattn importable (installed, or ``PYTHONPATH=.``
in a built checkout)::

    python tests/scripts/thread_creation_limit.py
"""
import os, resource
import numpy as np, cattn
q = np.random.default_rng(0).standard_normal((64, 64, 16))
with open("/proc/self/statm") as f:
    vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
# room for the arrays, not for 7 new thread stacks of 8 MiB
resource.setrlimit(resource.RLIMIT_AS, (vm + (16 << 20), resource.RLIM_INFINITY))
try:
    cattn.attention(q, q, q, num_threads=8)
except MemoryError:
    pass
print("SURVIVED")
