"""Transformer pieces shared by the SASRec family and the generative models to come.

A block is two sub-layers (attention, feed-forward), each applied through a residual
module: `residual(stream, sublayer) -> stream`. The plain residual is `x + f(x)`; mHC
(genrec/models/mhc.py) widens the stream to n copies behind the same call. The "reference"
block form reproduces the SASRec authors' code instead (see TransformerBlock).
"""

from __future__ import annotations

import math
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values: [B, heads, S, head_dim]
# where training attention takes the explicit softmax + FastDropout path; elsewhere (GPUs) the
# fused scaled_dot_product_attention runs in training too, with its own dropout
EXPLICIT_DROPOUT_DEVICES = ("cpu",)


class FastDropout(nn.Module):
    """Dropout drawing one random byte per element instead of a float Bernoulli.

    torch's CPU `bernoulli_` costs ~7x more than filling the same bytes through a full-range
    int64 `random_` (uint8 `random_` draws one 64-bit number per byte); dropout on the
    attention weights is a large share of a SASRec step at maxlen 200. The rate is rounded
    to a multiple of 1/256.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p
        self.threshold = round(p * 256)
        # a rate that 1/256 steps miss by > 5% (p < ~0.02: 1e-3 would round to 0) takes torch's dropout
        self.exact_p = p if abs(self.threshold - 256 * p) > 0.05 * 256 * p else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.exact_p is not None:
            return F.dropout(x, self.exact_p, self.training)
        if not self.training or self.threshold == 0:
            return x
        return x * (random_bytes(x.shape, x.device) >= self.threshold) * (256.0 / (256 - self.threshold))


def random_bytes(shape: torch.Size, device: torch.device) -> torch.Tensor:
    """Uniform uint8 noise of `shape`, eight bytes per 64-bit draw of the default generator."""
    n = math.prod(shape)
    words = torch.empty((n + 7) // 8, dtype=torch.int64, device=device)
    words.random_(-(2**63), 2**63 - 1)  # the full range, so every byte is uniform
    return words.view(torch.uint8)[:n].view(shape)


def init_normal(module: nn.Module, std: float) -> None:
    """A Linear's or Embedding's weights from N(0, std); a Linear's bias and an Embedding's padding
    row zero (the init the generative and Phoenix models share)."""
    nn.init.normal_(module.weight, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding) and module.padding_idx is not None:
        module.weight.data[module.padding_idx].zero_()


def export_config(module: nn.Module) -> dict:
    """What a checkpoint stores to rebuild a model without Hydra: its class as `_target_` plus its
    `config` dataclass's fields."""
    cls = type(module)
    return {"_target_": f"{cls.__module__}.{cls.__qualname__}", **asdict(module.config)}


def causal_padding_mask(key_valid: torch.Tensor, n_queries: int) -> torch.Tensor:
    """Boolean attention mask [B, 1, Tq, S], True = may attend.

    key_valid: bool [B, S]; the queries are the last `n_queries` of the S keys. A query sees
    valid keys at or before it, and always itself, so a padding row is never fully masked
    (no NaN) while real rows never see padding.
    """
    s = key_valid.shape[1]
    q_pos = torch.arange(s - n_queries, s, device=key_valid.device).unsqueeze(1)  # [Tq, 1]
    k_pos = torch.arange(s, device=key_valid.device).unsqueeze(0)  # [1, S]
    causal = k_pos <= q_pos  # [Tq, S]
    mask = causal & key_valid[:, None, :]  # [B, Tq, S]
    return (mask | (k_pos == q_pos)).unsqueeze(1)  # [B, 1, Tq, S]


def project_qkv(qkv: nn.Linear, x: torch.Tensor, kv_source: torch.Tensor | None,
                n_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries from x [B, T, D], keys and values from kv_source (x when None) through one fused
    [3D, D] projection -> q, k, v [B, H, T, D / H]."""
    b, t, d = x.shape
    if kv_source is None:
        q, k, v = qkv(x).view(b, t, 3, n_heads, d // n_heads).unbind(2)  # [B, T, H, Dh]
    else:
        # slices, not split(): the exporter's opset conversion has no adapter for Split-18
        w, bias = qkv.weight, qkv.bias
        q = F.linear(x, w[:d], bias[:d]).view(b, t, n_heads, d // n_heads)
        k, v = F.linear(kv_source, w[d:], bias[d:]).view(b, t, 2, n_heads, d // n_heads).unbind(2)
    return tuple(z.transpose(1, 2) for z in (q, k, v))


class CausalSelfAttention(nn.Module):
    """Multi-head attention whose keys/values can extend a cache of past positions."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"hidden size {d_model} does not divide by {n_heads} heads")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.attn_dropout = FastDropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, past: KV | None = None,
                kv_source: torch.Tensor | None = None) -> tuple[torch.Tensor, KV]:
        """x [B, T, D], mask bool [B, 1, T, P + T] -> (out [B, T, D], (k, v) [B, H, P + T, Dh]).
        kv_source [B, T, D]: where keys and values come from (default x)."""
        b, t, d = x.shape
        q, k, v = project_qkv(self.qkv, x, kv_source, self.n_heads)  # [B, H, T, Dh]
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # [B, H, P+T, Dh]
            v = torch.cat([past[1], v], dim=2)
        p = self.attn_dropout.p if self.training else 0.0
        if (p > 0 and q.device.type in EXPLICIT_DROPOUT_DEVICES) or torch.compiler.is_exporting():
            # CPU: an explicit softmax so the weights take the fast dropout (SDPA's dropout draws a
            # float per weight); elsewhere the fused kernel applies the dropout itself. Export takes
            # this form too: the exporter's SDPA decomposition copies K through Reshape/Transpose/
            # Reshape and adds an IsNaN guard, 11 more ONNX nodes per layer (per-call overhead of a
            # decode step); q @ k^T here becomes one FusedMatMul(transB) in onnxruntime
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # [B, H, T, P+T]
            weights = self.attn_dropout(scores.masked_fill(~mask, float("-inf")).softmax(-1))
            y = weights @ v  # [B, H, T, Dh]
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # [B, H, T, Dh]
        return self.out(y.transpose(1, 2).reshape(b, t, d)), (k, v)


class FeedForward(nn.Module):
    """Point-wise two-layer network with ReLU, the paper's FFN."""

    def __init__(self, d_model: int, d_inner: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, d_inner), nn.ReLU(), FastDropout(dropout), nn.Linear(d_inner, d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PlainResidual(nn.Module):
    """x + f(x): the stream is the hidden state itself."""

    def __init__(self, d_model: int = 0, **options) -> None:  # same signature as MHCResidual
        super().__init__()

    def forward(self, stream: torch.Tensor, sublayer) -> torch.Tensor:
        return stream + sublayer(stream)

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, D] hidden -> the residual stream (here the same tensor)."""
        return x

    def collapse(self, stream: torch.Tensor) -> torch.Tensor:
        """The residual stream -> [B, T, D] hidden."""
        return stream


def residual_class(kind: str, **options) -> type[nn.Module]:
    """The residual module for a model config's `residual` field."""
    if kind == "plain":
        return PlainResidual
    if kind == "mhc":
        from genrec.models.mhc import MHCResidual  # noqa: PLC0415  (optional dependency of the family)

        return MHCResidual
    raise ValueError(f"model.residual must be 'plain' or 'mhc', got {kind!r}")


BLOCK_FORMS = ("pre_ln", "reference")


class TransformerBlock(nn.Module):
    """Two sub-layers, in one of two forms:

    - "pre_ln": the SASRec paper's g(x) = x + Dropout(g(LayerNorm(x))) through the residual
      modules (plain or mHC);
    - "reference": what the authors' TensorFlow code (and pmixer's port) computes: h = LayerNorm(x),
      then h + Dropout(g(h)), the attention's keys and values taken from x itself. The skip
      starts from the normalised input, so every sub-layer renormalises the stream.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float, residual: nn.Module,
                 residual_ffn: nn.Module, attention: nn.Module | None = None, form: str = "pre_ln",
                 d_inner: int | None = None) -> None:  # d_inner: the FFN width (None: d_model)
        super().__init__()
        if form not in BLOCK_FORMS:
            raise ValueError(f"model.block must be one of {BLOCK_FORMS}, got {form!r}")
        self.form = form
        self.attn_norm = nn.LayerNorm(d_model, eps=1e-8)
        self.attn = attention if attention is not None else CausalSelfAttention(d_model, n_heads, dropout)
        self.ffn_norm = nn.LayerNorm(d_model, eps=1e-8)
        self.ffn = FeedForward(d_model, d_inner or d_model, dropout)
        self.attn_residual = residual
        self.ffn_residual = residual_ffn
        self.dropout = FastDropout(dropout)

    def forward(self, stream: torch.Tensor, mask: torch.Tensor, past: KV | None = None,
                **attn_kwargs) -> tuple[torch.Tensor, KV]:
        if self.form == "reference":
            h = self.attn_norm(stream)
            y, kv = self.attn(h, mask, past, kv_source=stream, **attn_kwargs)
            h = self.ffn_norm(h + self.dropout(y))
            return h + self.dropout(self.ffn(h)), kv
        present: list[KV] = []

        def attend(x: torch.Tensor) -> torch.Tensor:
            y, kv = self.attn(self.attn_norm(x), mask, past, **attn_kwargs)
            present.append(kv)
            return self.dropout(y)

        stream = self.attn_residual(stream, attend)
        stream = self.ffn_residual(stream, lambda x: self.dropout(self.ffn(self.ffn_norm(x))))
        return stream, present[0]
