"""Ctrl-C during long cattn calls: KeyboardInterrupt, fast, no thread left.

For each case named on the command line, a call calibrated to take about
4 s (machines differ ~10x) is started and SIGINT is sent 0.3 s into it.
Recorded per case: whether KeyboardInterrupt was raised, the latency from
the signal to the exception, the CPU time the other threads burn over the
next 0.5 s, the number of Python threads left, and whether the next call
gives the same result as before.  The script prints one line,
``RESULTS {json}``, and asserts nothing itself: the test
(tests/test_reliability_signals.py) checks the numbers.  Reads /proc
(Linux).

Cases: prefill, prefill_2_threads, serial, masked_causal_f64, float16_kv,
return_weights, decode, long_keys, uneven_items and uneven_items_long_first
(one long work item among short ones on two threads: the calling thread,
the one that runs Python's signal handlers, runs out of items first when it
gets a short one; which item a thread claims first varies, so both orders),
busy_other_thread (one long work item while another Python thread keeps
calling cattn).  By hand, from the repository root, with
cattn importable (installed, or ``PYTHONPATH=.`` in a built checkout)::

    python tests/scripts/ctrl_c_interrupt.py prefill decode long_keys
"""
import json, math, os, signal, sys, threading, time
import numpy as np, cattn
from numpy.lib.stride_tricks import as_strided

rng = np.random.default_rng(0)
f32 = np.float32
TARGET = 4.0          # seconds a call should take (calibrated: machines differ ~10x)


def heads(x, n):
    "x with its head axis (1) repeated n times at stride 0: no memory."
    return np.broadcast_to(x, x.shape[:1] + (n,) + x.shape[2:])


def builder(case):
    "case -> (build(n) -> call, n0, n_max); the cost grows linearly with n."
    qb = rng.standard_normal((1, 1, 1024, 64), dtype=f32)
    kb = rng.standard_normal((1, 1, 65536, 64), dtype=f32)
    if case in ("prefill", "prefill_2_threads", "serial"):
        nt = {"prefill": None, "prefill_2_threads": 2, "serial": 1}[case]
        return (lambda n: lambda: cattn.attention(heads(qb, n), heads(kb, n), heads(kb, n),
                                                  num_threads=nt)), 1, 4096
    if case == "masked_causal_f64":
        q64, k64 = qb.astype(np.float64), kb.astype(np.float64)
        mask = rng.random(65536) < 0.9
        return (lambda n: lambda: cattn.attention(heads(q64, n), heads(k64, n), heads(k64, n),
                                                  mask=mask, causal=True)), 1, 4096
    if case == "float16_kv":
        k16 = kb.astype(np.float16)
        return (lambda n: lambda: cattn.attention(heads(qb, n), heads(k16, n),
                                                  heads(k16, n))), 1, 4096
    if case == "return_weights":
        qw = rng.standard_normal((1, 1, 1024, 256), dtype=f32)
        kw = rng.standard_normal((1, 1, 4096, 256), dtype=f32)
        # weights: 16 MiB a head, allocated lazily; at most 96 heads
        return (lambda n: lambda: cattn.attention(heads(qw, n), heads(kw, n), heads(kw, n),
                                                  return_weights=True)), 1, 96
    if case == "decode":
        kd = rng.standard_normal((1, 2**17, 64), dtype=f32)
        def build(n):
            q = rng.standard_normal((n, 1, 64), dtype=f32)
            k = np.broadcast_to(kd, (n,) + kd.shape[1:])     # n sequences, one buffer
            return lambda: cattn.attention(q, k, k)
        return build, 16, 2**20
    if case == "long_keys":
        # one work item: 64 queries over n keys (rows with stride 0: no memory)
        row = rng.standard_normal(64).astype(f32)
        q = rng.standard_normal((1, 64, 64), dtype=f32)
        def build(n):
            k = as_strided(row, shape=(1, n, 64), strides=(0, 0, 4), writeable=False)
            return lambda: cattn.attention(q, k, k, num_threads=1)
        return build, 2**18, 2**34
    if case in ("uneven_items", "uneven_items_long_first"):
        # four work items (one query block each): a short one, a long one and
        # two trivial ones, on two threads
        row = rng.standard_normal(64).astype(f32)
        q = rng.standard_normal((4, 16, 64), dtype=f32)
        def build(n):
            k = as_strided(row, shape=(4, n, 64), strides=(0, 0, 4), writeable=False)
            lens = np.array([max(n // 64, 1), n, 1, 1])
            if case == "uneven_items_long_first":
                lens = lens[[1, 0, 2, 3]]
            return lambda: cattn.attention(q, k, k, kv_lengths=lens, num_threads=2)
        return build, 2**16, 2**34
    if case == "busy_other_thread":
        # one long work item on the main thread while other Python threads
        # make small calls back to back (each call used to reset a shared
        # poll clock)
        row = rng.standard_normal(64).astype(f32)
        q = rng.standard_normal((1, 64, 64), dtype=f32)
        small = rng.standard_normal((2, 16, 8), dtype=f32)
        def build(n):
            k = as_strided(row, shape=(1, n, 64), strides=(0, 0, 4), writeable=False)
            def call():
                stop = threading.Event()
                def other():
                    while not stop.is_set():
                        cattn.attention(small, small, small, causal=True, num_threads=1)
                # two of them: fewer gaps between their calls
                ts = [threading.Thread(target=other) for _ in range(2)]
                for t in ts:
                    t.start()
                try:
                    return cattn.attention(q, k, k, num_threads=1)
                finally:
                    stop.set()
                    for t in ts:
                        t.join()
            return call
        return build, 2**18, 2**34
    raise ValueError(case)


def make(case):
    build, n, n_max = builder(case)
    while True:
        fn = build(n)
        t = time.perf_counter()
        fn()
        t = time.perf_counter() - t
        if t >= 0.05 or n >= n_max:
            break
        n = min(4 * n, n_max)
    scaled = min(n_max, n * max(1, math.ceil(TARGET / t)))
    return build(scaled), t * scaled / n


def thread_cpu():
    "CPU seconds of every thread but the calling one."
    me = threading.get_native_id()
    tot = 0
    for tid in os.listdir("/proc/self/task"):
        if int(tid) == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            tot += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return tot / os.sysconf("SC_CLK_TCK")


if len(sys.argv) < 2:
    sys.exit("usage: ctrl_c_interrupt.py CASE [CASE ...]  (see the docstring)")
small = rng.standard_normal((2, 3, 200, 16))
small_expect = cattn.attention(small, small, small, num_threads=2)
results = {}
for case in sys.argv[1:]:
    fn, expected = make(case)
    sent = []
    def fire():
        sent.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGINT)
    timer = threading.Timer(0.3, fire)
    start = time.perf_counter()
    timer.start()
    late = False
    try:
        try:
            fn()
            raised = False
        except KeyboardInterrupt:
            raised = True
        end = time.perf_counter()
        timer.cancel()
        timer.join()
        time.sleep(0.05)      # a signal that raced the end of the call lands here
    except KeyboardInterrupt:
        late = True
    r = {"raised": raised, "late": late, "call_time": end - start,
         "expected_call_time": expected, "latency": end - sent[0] if sent else None}
    # no thread left computing: the other threads burn no CPU over 0.5 s
    time.sleep(0.1)
    c0 = thread_cpu()
    time.sleep(0.5)
    r["idle_cpu"] = thread_cpu() - c0
    r["python_threads"] = threading.active_count()
    # and cattn still works, with the same result as before
    r["still_correct"] = bool(np.array_equal(
        cattn.attention(small, small, small, num_threads=2), small_expect))
    results[case] = r
print("RESULTS " + json.dumps(results))
