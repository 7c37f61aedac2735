"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over a user's item sequence.

Inputs are left-padded (item 0). Positions count from the user's first item in the window
(1, 2, ...; 0 at padding), so appending an event never moves earlier positions: the
property that lets a per-layer K/V cache stream new events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from genrec.models.cache import KVCache
from genrec.models.layers import (
    KV,
    FastDropout,
    TransformerBlock,
    causal_padding_mask,
    export_config,
    residual_class,
)
from genrec.validation import ConfigError, check_ranges


@dataclass
class SASRecConfig:
    n_items: int
    maxlen: int = 200
    hidden_units: int = 50
    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.2
    residual: str = "plain"  # "plain" | "mhc"
    # "pre_ln": x + f(LayerNorm(x)) (the paper's formula); "reference": LayerNorm(x) + f(LayerNorm(x)),
    # attention keys/values from x (the authors' TF code, pmixer's port, SASRec+); see TransformerBlock
    block: str = "pre_ln"
    mhc_expansion: int = 4
    mhc_sinkhorn_iters: int = 20
    # None: xavier-normal weights (pmixer's SASRec.pytorch); a float: N(0, init_std) for every
    # Linear and Embedding, biases zero (SASRec+ and GPT-2 use 0.02: blocks start near identity)
    init_std: float | None = None

    def __post_init__(self) -> None:  # every numeric field in range, named (issue 13)
        check_ranges("model", self, {
            "n_items": {"lo": 1}, "maxlen": {"lo": 1}, "hidden_units": {"lo": 1}, "num_blocks": {"lo": 1},
            "num_heads": {"lo": 1}, "dropout": {"lo": 0, "hi": 1, "hi_open": True, "integer": False},
            "mhc_expansion": {"lo": 1}, "mhc_sinkhorn_iters": {"lo": 1},
            "init_std": {"lo": 0, "integer": False, "optional": True}})
        if self.hidden_units % self.num_heads:
            raise ConfigError(f"model.hidden_units={self.hidden_units}: must be divisible by "
                              f"model.num_heads={self.num_heads}")


class SASRec(nn.Module):
    """Scorer interface: encode(items) -> hidden [B, T, D]; score(hidden, items=None)."""

    needs_time = False
    config_class = SASRecConfig

    def __init__(self, **fields) -> None:
        super().__init__()
        self.config = cfg = self.config_class(**fields)
        d = cfg.hidden_units
        if cfg.block == "reference" and cfg.residual != "plain":
            raise ValueError(f"model.block=reference carries its own skip connections; it needs "
                             f"model.residual=plain, got {cfg.residual!r}")
        self.item_emb = nn.Embedding(cfg.n_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.maxlen + 1, d, padding_idx=0)
        self.emb_dropout = FastDropout(cfg.dropout)
        residual = residual_class(cfg.residual)
        opts = {"expansion": cfg.mhc_expansion, "sinkhorn_iters": cfg.mhc_sinkhorn_iters}
        # expand / collapse around the blocks; stream_only: no per-sub-layer maps (mHC)
        self.residual_stream = residual(d, **opts, stream_only=True)
        self.blocks = nn.ModuleList(
            TransformerBlock(d, cfg.num_heads, cfg.dropout, residual(d, **opts), residual(d, **opts),
                             attention=self._attention(), form=cfg.block)
            for _ in range(cfg.num_blocks)
        )
        self.final_norm = nn.LayerNorm(d, eps=1e-8)
        self.apply(self._init_weights)

    def _attention(self) -> nn.Module | None:
        """Subclasses swap the attention (TiSASRec); None = plain causal attention."""
        return None

    def _init_weights(self, module: nn.Module) -> None:
        if not isinstance(module, (nn.Linear, nn.Embedding)):
            return
        std = self.config.init_std
        if std is None:
            nn.init.xavier_normal_(module.weight)
        else:
            nn.init.normal_(module.weight, std=std)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)
        elif module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()

    def export_config(self) -> dict:
        """What a checkpoint stores to rebuild this module without Hydra."""
        return export_config(self)

    # ---- forward ----
    def embed(self, items: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """items, positions int [B, T] -> [B, T, D] (padding rows zero)."""
        x = self.item_emb(items) * math.sqrt(self.config.hidden_units)  # the paper's sqrt(d) scale
        x = x + self.pos_emb(positions.clamp(max=self.config.maxlen))
        return self.emb_dropout(x) * (items != 0).unsqueeze(-1)

    def encode(self, items: torch.Tensor, timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """items int [B, T] left-padded -> hidden [B, T, D]."""
        hidden, _ = self._run(items, timestamps, past=None, past_valid=None, past_len=None)
        return hidden

    forward = encode

    def _run(self, items, timestamps, past, past_valid, past_len) -> tuple[torch.Tensor, list[KV]]:
        """Shared by encode, prefill and decode. past_valid: bool [B, P] of cached keys."""
        valid = items != 0  # [B, T]
        start = past_len.unsqueeze(1) if past_len is not None else 0  # events before this chunk
        positions = (start + valid.long().cumsum(1)) * valid  # [B, T]
        key_valid = valid if past_valid is None else torch.cat([past_valid, valid], 1)  # [B, P+T]
        mask = causal_padding_mask(key_valid, items.shape[1])  # [B, 1, T, P+T]
        stream = self.residual_stream.expand(self.embed(items, positions))
        attn_inputs = self._attention_inputs(items, timestamps)  # once: shared by every block
        present = []
        for i, block in enumerate(self.blocks):
            stream, kv = block(stream, mask, None if past is None else past[i], **attn_inputs)
            present.append(kv)
        hidden = self.final_norm(self.residual_stream.collapse(stream))
        return hidden, present

    def _attention_inputs(self, items, timestamps) -> dict:
        """Extra keyword arguments for the attention layer (TiSASRec: interval matrices)."""
        return {}

    def item_embeddings(self) -> torch.Tensor:
        """[n_items + 1, D] the table `score` multiplies with (row 0 = padding)."""
        return self.item_emb.weight

    def score(self, hidden: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Dot products with the shared item embeddings.

        hidden [..., D] -> [..., n_items + 1] (column 0 = padding), or with items [..., C]
        -> [..., C] candidate scores.
        """
        if items is None:
            return hidden @ self.item_emb.weight.T
        return (hidden.unsqueeze(-2) * self.item_emb(items)).sum(-1)

    # ---- streaming: a per-layer K/V cache updated one event at a time ----
    @property
    def streams(self) -> bool:
        """prefill/decode carry item ids only, so a model whose attention needs timestamps
        (TiSASRec) is not streamed by them."""
        return not self.needs_time

    def prefill(self, items: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
        """items int [B, T] left-padded -> (next-item scores [B, n_items + 1], cache over T)."""
        self._check_streams()
        hidden, present = self._run(items, None, past=None, past_valid=None, past_len=None)
        return self.score(hidden[:, -1]), KVCache.from_layers(present, items != 0)  # [B, N+1]

    def decode(self, new_items: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """new_items int [B, 1] (0 for a user without a new event: their slot is stored invalid and
        their scores are meaningless this step) -> (scores [B, n_items + 1], cache over P + 1).

        Which cached keys are real comes from the cache's stored fill (`cache.valid`), never
        from item ids. Equals the full forward over the cached items plus the new ones while a
        user's events fit in maxlen; past that, positions saturate where a full forward would
        slide its window: re-prefill the newest maxlen items then.
        """
        self._check_streams()
        past = [cache.layer(i) for i in range(len(self.blocks))]
        hidden, present = self._run(new_items, None, past=past, past_valid=cache.valid,
                                    past_len=cache.lengths())
        return self.score(hidden[:, -1]), cache.grown(present, new_items != 0)

    def empty_cache(self, batch: int, device: torch.device | str = "cpu") -> KVCache:
        """The P = 0 cache of `batch` users (no events yet)."""
        cfg = self.config
        return KVCache.empty(cfg.num_blocks, batch, cfg.num_heads, cfg.hidden_units // cfg.num_heads,
                             self.item_emb.weight.dtype, device)

    def _check_streams(self) -> None:
        if not self.streams:
            raise TypeError(f"{type(self).__name__} cannot stream: prefill/decode carry item ids only and "
                            "its attention needs timestamps; use encode + score")
