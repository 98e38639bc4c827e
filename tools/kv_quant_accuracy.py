"""Accuracy of int8 KV-cache formats: relative output error of attention
over the quantized cache against the float cache (float64 throughout, so
only the quantization error is measured).

Formats (all symmetric int8, q = round(x / s) in [-127, 127], s = max|x| / 127
over the group, one float32 scale per group):

  per-token     one scale per row of K and of V (D values)
  q8_0          one scale per block of 32 values along D (llama.cpp's q8_0)
  KIVI          keys: one scale per channel over groups of G tokens;
                values: one scale per token

Data: Gaussian K, V, Q; and "outlier" keys, where a few channels (4 of D)
are 10x or 50x larger than the rest, as the keys of real LLMs are (KIVI,
KVQuant).  Error: ||O_quant - O|| / ||O|| over all heads and queries
(decode: one query per head), median over seeds.

    python tools/kv_quant_accuracy.py [--markdown]
"""
import argparse

import numpy as np


def q_sym(x, axis_groups):
    """Symmetric int8 quantize-dequantize with scales over `axis_groups`
    (a function mapping x to a (grouped view, restore) pair)."""
    g, restore = axis_groups(x)
    amax = np.abs(g).max(axis=-1, keepdims=True)
    s = (amax / 127.0).astype(np.float32).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.where(s > 0, np.rint(g / np.where(s > 0, s, 1)), 0)
    return restore(np.clip(q, -127, 127) * s)


def per_token(x):
    return x, lambda y: y


def blocks32(x):
    D = x.shape[-1]
    pad = (-D) % 32
    xp = np.concatenate([x, np.zeros(x.shape[:-1] + (pad,))], -1) if pad else x
    g = xp.reshape(x.shape[:-1] + (-1, 32))
    return g, lambda y: y.reshape(xp.shape)[..., :D]


def per_channel(G):
    def f(x):
        L, D = x.shape[-2:]
        pad = (-L) % G
        xp = np.concatenate([x, np.zeros(x.shape[:-2] + (pad, D))], -2) if pad else x
        # (..., L/G, G, D) -> (..., L/G, D, G): groups of G tokens per channel
        g = np.swapaxes(xp.reshape(x.shape[:-2] + (-1, G, D)), -1, -2)
        return g, lambda y: np.swapaxes(y, -1, -2).reshape(xp.shape)[..., :L, :]
    return f


FORMATS = {
    "per-token": (per_token, per_token),
    "q8_0 (blocks of 32)": (blocks32, blocks32),
    "KIVI (K per channel, G=128; V per token)": (per_channel(128), per_token),
}


def attention(q, k, v):
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    s -= s.max(-1, keepdims=True)
    w = np.exp(s)
    w /= w.sum(-1, keepdims=True)
    return w @ v


def data(rng, kind, H, L, D, Lq=1):
    q = rng.standard_normal((H, Lq, D))
    k = rng.standard_normal((H, L, D))
    v = rng.standard_normal((H, L, D))
    if kind != "gaussian":
        factor = float(kind.split("x")[0].split()[-1])
        for h in range(H):
            ch = rng.choice(D, 4, replace=False)
            k[h, :, ch] *= factor
    return q, k, v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    H, D = 8, 128
    kinds = ["gaussian", "outlier keys 10x", "outlier keys 50x"]
    rows = []
    for L in (1024, 4096):
        for kind in kinds:
            row = []
            for name, (fk, fv) in FORMATS.items():
                errs, kerrs = [], []
                for seed in range(args.seeds):
                    rng = np.random.default_rng(seed)
                    q, k, v = data(rng, kind, H, L, D)
                    ref = attention(q, k, v)
                    kq, vq = q_sym(k, fk), q_sym(v, fv)
                    got = attention(q, kq, vq)
                    errs.append(np.linalg.norm(got - ref) / np.linalg.norm(ref))
                    kerrs.append(np.linalg.norm(kq - k) / np.linalg.norm(k))
                row.append((float(np.median(errs)), float(np.median(kerrs))))
            rows.append((L, kind, row))
    names = list(FORMATS)
    if args.markdown:
        print("| Lk | data | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        for L, kind, row in rows:
            print(f"| {L} | {kind} | " + " | ".join(f"{e:.2e}" for e, _ in row) + " |")
    else:
        for L, kind, row in rows:
            print(f"Lk={L:5d} {kind:18s} " + "  ".join(
                f"{n.split()[0]}: out {e:.2e} (K {ke:.1e})" for n, (e, ke) in zip(names, row)))


if __name__ == "__main__":
    main()
