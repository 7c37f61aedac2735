"""Phoenix transformer blocks and the candidate-isolation mask.

The ranker's sequence is [user (1) | history (S) | candidates (C)], L = 1 + S + C. The mask makes
every candidate's output a function of (user, history, that candidate) alone: user and history
attend among themselves (bidirectionally, or causally), never to a candidate; a candidate attends to
the user, the history and itself. With every candidate at the same position id (S + 1), replacing,
reordering or removing the other candidates changes nothing for a candidate.

The block is pre-norm (x + f(norm(x))) with options in the released Grok-1 style: rotary positions,
grouped-query attention (`kv_heads` < `num_heads`), attention logits soft-capped
(cap * tanh(logits / cap)) and a GeGLU feed-forward. Attention is written out (no fused SDPA) so
masking and the soft-cap export to ONNX as they run.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genrec.models.layers import FastDropout

FFN_KINDS = ("gelu", "geglu")
NORM_KINDS = ("layer", "rms")


def candidate_isolation_mask(n_history: int, n_candidates: int, causal: bool = False,
                             device: torch.device | str | None = None) -> torch.Tensor:
    """bool [L, L], L = 1 + n_history + n_candidates; True = query (row) may attend to key (column).

    Context = user + history (the first 1 + S positions): a context query sees every context key
    (causal: those at or before it), never a candidate; a candidate sees the context and itself.
    """
    n_ctx = 1 + n_history
    idx = torch.arange(n_ctx + n_candidates, device=device)
    q, k = idx.unsqueeze(1), idx.unsqueeze(0)  # [L, 1], [1, L]
    ctx_key = k < n_ctx  # [1, L]
    if causal:
        ctx_key = ctx_key & (k <= q)  # [L, L] (a candidate query lies after every context key)
    return ctx_key | (k == q)  # [L, L]


def phoenix_positions(n_history: int, n_candidates: int, max_history: int,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Position ids int64 [1 + S + C]: user 0, history, then every candidate max_history + 1.

    History slot j (left-padded, newest last) gets max_history - (S - 1 - j), clamped to >= 1: the
    newest event is always max_history and the ids do not depend on how much left padding a batch
    has. When S == max_history (the data's maxlen) this is exactly user 0, history 1..S, candidates
    S + 1.
    """
    hist = torch.arange(max_history - n_history + 1, max_history + 1, device=device).clamp(min=1)  # [S]
    user = torch.zeros(1, dtype=torch.long, device=device)  # [1]
    cands = torch.full((n_candidates,), max_history + 1, dtype=torch.long, device=device)  # [C]
    return torch.cat([user, hist, cands])  # [L]


class RMSNorm(nn.Module):
    """x / rms(x) * weight (Grok-1's norm); written out so every exporter opset takes it."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight  # [..., D]


def make_norm(kind: str, dim: int) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(dim, eps=1e-6)
    if kind == "rms":
        return RMSNorm(dim)
    raise ValueError(f"norm must be one of {NORM_KINDS}, got {kind!r}")


def rotate(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary embedding (rotate-half form): x [..., L, Dh] (Dh even), positions int64 [L] -> same shape."""
    half = x.shape[-1] // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=x.dtype) / half)  # [Dh/2]
    angles = positions.to(x.dtype).unsqueeze(-1) * inv_freq  # [L, Dh/2]
    cos, sin = angles.cos(), angles.sin()  # [L, Dh/2]
    x1, x2 = x[..., :half], x[..., half:]  # [..., L, Dh/2]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)  # [..., L, Dh]


class PhoenixAttention(nn.Module):
    """Masked multi-head attention with GQA, rotary and soft-cap options (explicit softmax)."""

    def __init__(self, dim: int, num_heads: int, kv_heads: int | None, rotary: bool,
                 attn_softcap: float | None, dropout: float) -> None:
        super().__init__()
        kv_heads = kv_heads or num_heads
        if dim % num_heads or num_heads % kv_heads:
            raise ValueError(f"dim {dim} must divide by num_heads {num_heads}, and num_heads by "
                             f"kv_heads {kv_heads}")
        self.num_heads, self.kv_heads, self.head_dim = num_heads, kv_heads, dim // num_heads
        if rotary and self.head_dim % 2:
            raise ValueError(f"rotary needs an even head dim, got {self.head_dim}")
        self.rotary, self.attn_softcap = rotary, attn_softcap
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, kv_heads * self.head_dim)
        self.v = nn.Linear(dim, kv_heads * self.head_dim)
        self.out = nn.Linear(dim, dim)
        self.attn_dropout = FastDropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [B, L, D], mask bool [B, 1, L, L], positions int64 [L] -> [B, L, D]."""
        b, n, d = x.shape
        g, hk, dh = self.num_heads // self.kv_heads, self.kv_heads, self.head_dim
        q = self.q(x).view(b, n, hk, g, dh).permute(0, 2, 3, 1, 4)  # [B, Hkv, G, L, Dh]
        k = self.k(x).view(b, n, hk, 1, dh).permute(0, 2, 3, 1, 4)  # [B, Hkv, 1, L, Dh]
        v = self.v(x).view(b, n, hk, 1, dh).permute(0, 2, 3, 1, 4)  # [B, Hkv, 1, L, Dh]
        if self.rotary:
            q, k = rotate(q, positions), rotate(k, positions)
        logits = (q @ k.transpose(-1, -2)) / math.sqrt(dh)  # [B, Hkv, G, L, L] (K shared by the group)
        if self.attn_softcap is not None:
            logits = self.attn_softcap * torch.tanh(logits / self.attn_softcap)
        logits = logits.masked_fill(~mask.unsqueeze(1), float("-inf"))  # every row keeps itself
        y = self.attn_dropout(logits.softmax(-1)) @ v  # [B, Hkv, G, L, Dh]
        return self.out(y.permute(0, 3, 1, 2, 4).reshape(b, n, d))  # [B, L, D]


class PhoenixFFN(nn.Module):
    """gelu: W2 gelu(W1 x); geglu: W2 (gelu(Wg x) * (Wu x)) (two Linears, not a split: exportable)."""

    def __init__(self, dim: int, ffn_dim: int, kind: str, dropout: float) -> None:
        super().__init__()
        if kind not in FFN_KINDS:
            raise ValueError(f"ffn must be one of {FFN_KINDS}, got {kind!r}")
        self.up = nn.Linear(dim, ffn_dim)
        self.gate = nn.Linear(dim, ffn_dim) if kind == "geglu" else None
        self.down = nn.Linear(ffn_dim, dim)
        self.dropout = FastDropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.up(x)) if self.gate is None else F.gelu(self.gate(x)) * self.up(x)  # [..., F]
        return self.down(self.dropout(h))  # [..., D]


class PhoenixBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, dim: int, num_heads: int, kv_heads: int | None = None, ffn_dim: int | None = None,
                 ffn: str = "gelu", rotary: bool = False, attn_softcap: float | None = None,
                 dropout: float = 0.0, norm: str = "layer") -> None:
        super().__init__()
        self.attn_norm = make_norm(norm, dim)
        self.attn = PhoenixAttention(dim, num_heads, kv_heads, rotary, attn_softcap, dropout)
        self.ffn_norm = make_norm(norm, dim)
        self.ffn = PhoenixFFN(dim, ffn_dim or 4 * dim, ffn, dropout)
        self.dropout = FastDropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [B, L, D], mask bool [B, 1, L, L] (True = may attend), positions int64 [L] -> [B, L, D]."""
        x = x + self.dropout(self.attn(self.attn_norm(x), mask, positions))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))
