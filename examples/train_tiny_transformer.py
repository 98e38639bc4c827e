"""Learning Q, K and V: a tiny decoder-only transformer trained with cattn.

A character-level language model on a text that ships with cattn (the
tutorial, docs/tutorial.md), trained for a few hundred steps with PyTorch
autograd where attention is ``cattn.torch.attention`` (cattn's fused
forward and backward).  The same run with PyTorch's own
``scaled_dot_product_attention`` starts from the same weights and batches:
the two loss curves agree to float32 tolerance, and the script prints how
long each took.

    python examples/train_tiny_transformer.py [--steps 300] [--plot loss.png]

Needs torch (``pip install torch``; cattn itself never requires it) and,
for the plot, matplotlib.
"""
import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import cattn.torch

TEXT = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"


class Block(torch.nn.Module):
    def __init__(self, d, heads, attend):
        super().__init__()
        self.heads, self.attend = heads, attend
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.proj = torch.nn.Linear(d, d)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d, 4 * d), torch.nn.GELU(),
                                       torch.nn.Linear(4 * d, d))
        self.n1, self.n2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)

    def forward(self, x):
        B, L, d = x.shape
        q, k, v = self.qkv(self.n1(x)).split(d, dim=-1)
        # (B, heads, L, d / heads): the three stages happen in self.attend
        q, k, v = (t.reshape(B, L, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        a = self.attend(q, k, v).transpose(1, 2).reshape(B, L, d)
        x = x + self.proj(a)
        return x + self.mlp(self.n2(x))


class TinyLM(torch.nn.Module):
    def __init__(self, vocab, d, heads, layers, ctx, attend):
        super().__init__()
        self.tok = torch.nn.Embedding(vocab, d)
        self.pos = torch.nn.Embedding(ctx, d)
        self.blocks = torch.nn.ModuleList(Block(d, heads, attend) for _ in range(layers))
        self.out = torch.nn.Linear(d, vocab)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for b in self.blocks:
            x = b(x)
        return self.out(x)


def cattn_attend(q, k, v):
    return cattn.torch.attention(q, k, v, causal=True)


def torch_attend(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def train(attend, data, vocab, args):
    torch.manual_seed(0)
    model = TinyLM(vocab, args.dim, args.heads, args.layers, args.ctx, attend)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    losses = []
    t0 = time.perf_counter()
    for _ in range(args.steps):
        starts = rng.integers(0, len(data) - args.ctx - 1, args.batch)
        x = torch.from_numpy(np.stack([data[s:s + args.ctx] for s in starts]))
        y = torch.from_numpy(np.stack([data[s + 1:s + args.ctx + 1] for s in starts]))
        loss = F.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return np.array(losses), time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=64)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--plot", default="tiny_transformer_loss.png",
                    help="PNG of the loss curves ('' for none)")
    args = ap.parse_args(argv)

    text = TEXT.read_text(encoding="utf-8")
    chars = sorted(set(text))
    data = np.array([chars.index(c) for c in text], dtype=np.int64)
    vocab = len(chars)
    print(f"text: {len(text)} characters, vocabulary {vocab}; "
          f"{args.layers} layers x {args.heads} heads, d = {args.dim}, context {args.ctx}")

    ours, t_ours = train(cattn_attend, data, vocab, args)
    ref, t_ref = train(torch_attend, data, vocab, args)
    for step in sorted({0, args.steps // 4, args.steps // 2, 3 * args.steps // 4,
                        args.steps - 1}):
        print(f"step {step:4d}  loss cattn {ours[step]:.4f}  torch {ref[step]:.4f}")
    gap = np.max(np.abs(ours - ref) / np.maximum(ref, 1e-6))
    print(f"largest relative loss difference: {gap:.2e} (float32 training, "
          f"different summation orders)")
    print(f"time: cattn {t_ours:.1f} s, torch SDPA {t_ref:.1f} s "
          f"({t_ref / t_ours:.2f}x)")
    print(f"final loss {ours[-1]:.3f} (uniform guess: {math.log(vocab):.3f})")
    if args.plot:
        try:
            import matplotlib
        except ImportError:
            print("matplotlib is not installed: no plot (pip install matplotlib)")
            return
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(ours, label="cattn.torch.attention")
        ax.plot(ref, label="torch SDPA", linestyle="--")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy")
        ax.set_title("A tiny transformer learning Q, K and V")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
