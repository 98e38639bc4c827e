"""A toy serving loop over a paged KV cache: requests arrive at different
steps, prompts are prefilled in chunks while other sequences decode, all in
one ``cattn.paged_attention`` call per layer and step.

The "model" is one attention layer with random projections (no training):
what matters is the bookkeeping a server does -- a page allocator, the
block table, ``cache_write`` of each step's new keys/values, and chunked
prefill mixed with decode.  Prints tokens/s at the end.

    python examples/serve_paged.py
"""
import time

import numpy as np

import cattn

H, HKV, D = 8, 2, 64             # query heads, K/V heads, head dim
PAGE = 16                        # rows per page
NUM_PAGES = 512
CHUNK = 64                       # prefill tokens a sequence gets per step
STEP_TOKENS = 256                # token budget of one batch
MODEL = H * D

rng = np.random.default_rng(0)
W_q = rng.standard_normal((MODEL, H * D), dtype=np.float32) / np.sqrt(MODEL)
W_k = rng.standard_normal((MODEL, HKV * D), dtype=np.float32) / np.sqrt(MODEL)
W_v = rng.standard_normal((MODEL, HKV * D), dtype=np.float32) / np.sqrt(MODEL)
W_o = rng.standard_normal((H * D, MODEL), dtype=np.float32) / np.sqrt(H * D)
EMBED = rng.standard_normal((1000, MODEL), dtype=np.float32)


class PageAllocator:
    """Free-list of pool pages."""

    def __init__(self, n):
        self.free = list(range(n - 1, -1, -1))

    def take(self):
        if not self.free:
            raise MemoryError("page pool exhausted")
        return self.free.pop()

    def give(self, pages):
        self.free.extend(pages)


class Request:
    def __init__(self, rid, prompt, max_new):
        self.rid, self.prompt, self.max_new = rid, list(prompt), max_new
        self.pages, self.length, self.prefilled, self.generated = [], 0, 0, []

    @property
    def done(self):
        return len(self.generated) >= self.max_new


def step(batch, alloc, key_cache, value_cache):
    """One forward step over a mixed batch: each request contributes its
    next prefill chunk or its last generated token."""
    tokens, q_lens = [], []
    for r in batch:
        if r.prefilled < len(r.prompt):
            new = r.prompt[r.prefilled:r.prefilled + CHUNK]
        else:
            new = r.generated[-1:]
        tokens.append(new)
        q_lens.append(len(new))
    ids = np.concatenate(tokens)
    x = EMBED[ids % len(EMBED)]
    q = (x @ W_q).reshape(-1, H, D)
    k = (x @ W_k).reshape(-1, HKV, D)
    v = (x @ W_v).reshape(-1, HKV, D)
    # pages for the new tokens, then their slots
    slots = []
    for r, n in zip(batch, q_lens):
        for pos in range(r.length, r.length + n):
            if pos // PAGE == len(r.pages):
                r.pages.append(alloc.take())
            slots.append(r.pages[pos // PAGE] * PAGE + pos % PAGE)
        r.length += n
    cattn.cache_write(k, v, key_cache, value_cache, np.array(slots))
    max_pages = max(len(r.pages) for r in batch)
    block_table = np.zeros((len(batch), max_pages), np.int64)
    for i, r in enumerate(batch):
        block_table[i, :len(r.pages)] = r.pages
    seq_lens = np.array([r.length for r in batch])
    qsl = np.concatenate([[0], np.cumsum(q_lens)])
    out = cattn.paged_attention(q, key_cache, value_cache, block_table, seq_lens, qsl,
                                causal=True)
    logits = out.reshape(-1, H * D) @ W_o @ EMBED.T
    # each request's next token: greedy on its last position
    for r, end in zip(batch, qsl[1:]):
        if r.prefilled < len(r.prompt):
            r.prefilled += min(CHUNK, len(r.prompt) - r.prefilled)
            if r.prefilled < len(r.prompt):
                continue                      # still prefilling: no token yet
        r.generated.append(int(np.argmax(logits[end - 1])))
    return int(qsl[-1])


def main():
    key_cache = np.zeros((NUM_PAGES, HKV, PAGE, D), np.float16)
    value_cache = np.zeros((NUM_PAGES, HKV, PAGE, D), np.float16)
    alloc = PageAllocator(NUM_PAGES)
    # (arrival step, prompt length, tokens to generate)
    arrivals = [(int(rng.integers(0, 30)), int(rng.integers(16, 300)), int(rng.integers(8, 40)))
                for _ in range(24)]
    pending = sorted((a, i, Request(i, rng.integers(0, 1000, n), m))
                     for i, (a, n, m) in enumerate(arrivals))
    running, finished, n_tokens, n_steps = [], [], 0, 0
    t0 = time.perf_counter()
    while pending or running:
        while pending and pending[0][0] <= n_steps:
            running.append(pending.pop(0)[2])
        # a token budget per step: decodes first, then prefill chunks
        batch, budget = [], STEP_TOKENS
        for r in sorted(running, key=lambda r: r.prefilled < len(r.prompt)):
            need = 1 if r.prefilled >= len(r.prompt) else min(CHUNK, len(r.prompt) - r.prefilled)
            if need <= budget:
                batch.append(r)
                budget -= need
        if batch:
            n_tokens += step(batch, alloc, key_cache, value_cache)
        n_steps += 1
        for r in [r for r in running if r.done]:
            running.remove(r)
            alloc.give(r.pages)
            finished.append(r)
    dt = time.perf_counter() - t0
    generated = sum(len(r.generated) for r in finished)
    print(f"{len(finished)} requests, {n_steps} steps, {n_tokens} tokens processed "
          f"({generated} generated) in {dt:.2f} s: {n_tokens / dt:,.0f} tokens/s, "
          f"{generated / dt:,.0f} generated tokens/s")


if __name__ == "__main__":
    main()
