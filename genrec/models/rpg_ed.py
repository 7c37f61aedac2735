"""RPG_ED: an encoder-decoder that generates the next item's semantic-ID tokens.

Vocabulary (disjoint id ranges, checked at construction):

    0 PAD, 1 BOS, 2 EOS | 3 .. 3+U-1 user buckets | then n_digit blocks of codebook_size SID tokens

The encoder reads [user token, history items]; each history item's n_digit SID-token embeddings
are flattened and compressed by an MLP into one vector ((H, n_digit, d) -> (H, d)), so the
encoder's length is 1 + H, not 1 + H * n_digit. The decoder generates [s1 .. s_n_digit, EOS]
from [BOS, s1 .. s_n_digit] with causal self-attention, cross-attention to the encoder and an FFN.
Output logits are tied to the token embedding table (`share_embeddings`).

Generation runs in two calls a beam search can drive (genrec/generation/): `prefill` encodes the
users once, computes every decoder layer's cross-attention K/V once and decodes BOS; `decode`
appends one token per row to the growing self-attention cache. The cache is the shared `KVCache`
(genrec/models/cache.py) with its cross-attention part: plain tensors, the fill stored, reorderable by
beam parent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genrec.models.cache import KVCache
from genrec.models.layers import FastDropout, FeedForward, export_config
from genrec.validation import ConfigError, check_range, check_ranges

N_SPECIAL = 3
PAD, BOS, EOS = 0, 1, 2
_HASH_MULTIPLIER = 2654435761  # Knuth's multiplicative hash: stable across runs and platforms


@dataclass
class RPGEDConfig:
    """Defaults are the reference configuration (a GPU-sized model: ~1 h/epoch on Beauty on 2 CPU cores)."""

    n_digit: int = 4
    codebook_size: int = 256
    n_user_buckets: int = 10_000
    max_history: int = 50
    d_model: int = 448
    n_heads: int = 8
    d_inner: int = 1024
    encoder_layers: int = 4
    decoder_layers: int = 4
    dropout: float = 0.1
    share_embeddings: bool = True

    def __post_init__(self) -> None:
        positive = ("n_digit", "codebook_size", "n_user_buckets", "max_history", "d_model", "n_heads",
                    "d_inner", "encoder_layers", "decoder_layers")
        check_ranges("model", self, {name: {"lo": 1} for name in positive})
        check_range("model.dropout", self.dropout, lo=0, hi=1, integer=False, hi_open=True)
        if self.d_model % self.n_heads:
            raise ConfigError(f"model.d_model={self.d_model}: must divide by model.n_heads={self.n_heads}")

    # ---- vocabulary layout ----
    @property
    def user_offset(self) -> int:
        return N_SPECIAL

    @property
    def sid_offset(self) -> int:
        return N_SPECIAL + self.n_user_buckets

    @property
    def vocab_size(self) -> int:
        return self.sid_offset + self.n_digit * self.codebook_size

    def digit_range(self, digit: int) -> tuple[int, int]:
        """[start, end) token ids of SID digit `digit` (0-based)."""
        start = self.sid_offset + digit * self.codebook_size
        return start, start + self.codebook_size


def vocabulary_ranges(cfg: RPGEDConfig) -> list[tuple[int, int]]:
    """[start, end) of the specials, the user buckets and each SID digit, in id order."""
    digits = [cfg.digit_range(d) for d in range(cfg.n_digit)]
    return [(0, N_SPECIAL), (cfg.user_offset, cfg.sid_offset), *digits]


def check_vocabulary(ranges: list[tuple[int, int]], vocab_size: int) -> None:
    """The ranges tile [0, vocab_size) in order, without overlap or gap."""
    ends = [0] + [end for _, end in ranges]
    for (start, end), prev_end in zip(ranges, ends, strict=False):
        if start != prev_end or end <= start:
            raise ValueError(f"RPG_ED vocabulary ranges overlap or leave a gap: {ranges}")
    if ends[-1] != vocab_size:
        raise ValueError(f"RPG_ED vocabulary ranges {ranges} do not end at vocab_size {vocab_size}")


def user_bucket(users: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """int64 [B] user ids -> bucket in [0, n_buckets): a multiplicative hash, not Python's
    per-process `hash()`, so a user keeps its bucket across runs and in exported graphs."""
    return torch.remainder(torch.remainder(users, 2**31) * _HASH_MULTIPLIER, n_buckets)


class Attention(nn.Module):
    """Multi-head attention, queries from x and keys/values from `memory` (self-attention: x)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def project_kv(self, memory: torch.Tensor) -> torch.Tensor:
        """memory [B, S, D] -> stacked keys and values [2, B, H, S, Dh]."""
        b, s, d = memory.shape
        return self.kv(memory).view(b, s, 2, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, D]; kv [2, B, H, S, Dh]; mask bool [B, 1, T, S] (True = may attend) -> [B, T, D]."""
        b, t, d = x.shape
        q = self.q(x).view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)  # [B, H, T, Dh]
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask, dropout_p=p)  # [B, H, T, Dh]
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class EncoderBlock(nn.Module):
    """Pre-LN self-attention (padding mask only) + FFN."""

    def __init__(self, cfg: RPGEDConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg.d_model, cfg.d_inner, cfg.dropout)
        self.drop = FastDropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, self.attn.project_kv(h), mask))
        return x + self.drop(self.ffn(self.norm2(x)))


class DecoderBlock(nn.Module):
    """Pre-LN causal self-attention (growing cache) + cross-attention (fixed K/V) + FFN."""

    def __init__(self, cfg: RPGEDConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.self_attn = Attention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.cross_attn = Attention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.norm3 = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg.d_model, cfg.d_inner, cfg.dropout)
        self.drop = FastDropout(cfg.dropout)

    def forward(self, x: torch.Tensor, past_kv: torch.Tensor | None, self_mask: torch.Tensor,
                cross_kv: torch.Tensor, cross_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, D]; past_kv [2, B, H, P, Dh] or None -> (x, self K/V [2, B, H, P + T, Dh])."""
        h = self.norm1(x)
        kv = self.self_attn.project_kv(h)  # [2, B, H, T, Dh]
        if past_kv is not None:
            kv = torch.cat([past_kv, kv], dim=3)  # [2, B, H, P + T, Dh]
        x = x + self.drop(self.self_attn(h, kv, self_mask))
        x = x + self.drop(self.cross_attn(self.norm2(x), cross_kv, cross_mask))
        return x + self.drop(self.ffn(self.norm3(x))), kv


class RPGED(nn.Module):
    """Generator interface: forward (teacher forcing), encode, prefill, decode."""

    config_class = RPGEDConfig
    required_inputs = ("users", "history")  # keyword inputs of encode/forward/prefill

    def __init__(self, **fields) -> None:
        super().__init__()
        self.config = cfg = self.config_class(**fields)
        check_vocabulary(vocabulary_ranges(cfg), cfg.vocab_size)
        d = cfg.d_model
        self.token_emb = nn.Embedding(cfg.vocab_size, d, padding_idx=PAD)
        # (H, n_digit, d) -> (H, d); the LayerNorm puts history items on the scale of the other inputs
        self.history_mlp = nn.Sequential(nn.Linear(cfg.n_digit * d, d), nn.GELU(), nn.Linear(d, d),
                                         nn.LayerNorm(d))
        self.enc_pos = nn.Embedding(cfg.max_history + 1, d)
        self.dec_pos = nn.Embedding(cfg.n_digit + 1, d)
        self.emb_drop = FastDropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.encoder_layers))
        self.enc_norm = nn.LayerNorm(d)
        self.decoder = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.decoder_layers))
        self.dec_norm = nn.LayerNorm(d)
        self.lm_head = None if cfg.share_embeddings else nn.Linear(d, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        # digit of each decoder output position, for the per-step token ranges
        offsets = torch.tensor([cfg.digit_range(i)[0] for i in range(cfg.n_digit)])
        self.register_buffer("digit_offsets", offsets, persistent=False)  # [n_digit]

    def _init_weights(self, module: nn.Module) -> None:
        # embeddings N(0, 1/d): tied logits (LayerNorm'd hidden . embedding) start at unit scale;
        # linears keep torch's default. GPT-2's N(0, 0.02) everywhere trains far slower at small d.
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.d_model ** -0.5)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()

    def export_config(self) -> dict:
        """What a checkpoint stores to rebuild this module without Hydra."""
        return export_config(self)

    # ---- token ids ----
    def codes_to_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """codes int64 [..., n_digit] in [0, codebook_size) (-1 = padding item) -> token ids
        (PAD where the code is -1)."""
        tokens = codes + self.digit_offsets  # [..., n_digit]
        return torch.where(codes >= 0, tokens, torch.zeros_like(tokens))

    def tokens_to_codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """SID token ids [..., n_digit] -> codes [..., n_digit]."""
        return tokens - self.digit_offsets

    # ---- encoder ----
    def encode(self, users: torch.Tensor, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """users int64 [B]; history int64 [B, H, n_digit] codes, left-padded with -1
        -> (memory [B, 1 + H, D], valid bool [B, 1 + H])."""
        cfg = self.config
        b, h, _ = history.shape
        user_tok = cfg.user_offset + user_bucket(users, cfg.n_user_buckets)  # [B]
        hist_emb = self.token_emb(self.codes_to_tokens(history))  # [B, H, n_digit, D]
        items = self.history_mlp(hist_emb.reshape(b, h, -1))  # [B, H, D]
        x = torch.cat([self.token_emb(user_tok).unsqueeze(1), items], 1)  # [B, 1 + H, D]
        valid = torch.cat([torch.ones_like(user_tok, dtype=torch.bool).unsqueeze(1),
                           history[..., 0] >= 0], 1)  # [B, 1 + H]
        # recency positions: newest item 1, older ones up to max_history, user token and padding 0;
        # independent of the padding width, so a row encodes the same whatever its batch
        real = valid[:, 1:].long()  # [B, H]
        recency = (real.sum(1, keepdim=True) - real.cumsum(1) + 1) * real  # [B, H]
        positions = torch.cat([torch.zeros_like(recency[:, :1]), recency], 1).clamp(max=cfg.max_history)
        x = self.emb_drop(x + self.enc_pos(positions))  # [B, 1 + H, D]
        mask = valid[:, None, None, :]  # [B, 1, 1, 1 + H] padding keys never attended
        for block in self.encoder:
            x = block(x, mask)
        return self.enc_norm(x), valid

    def cross_kv(self, memory: torch.Tensor) -> torch.Tensor:
        """memory [B, S, D] -> every decoder layer's cross K/V [L, 2, B, H, S, Dh] (computed once)."""
        return torch.stack([blk.cross_attn.project_kv(memory) for blk in self.decoder])

    # ---- decoder ----
    def _decode(self, tokens: torch.Tensor, start: int, past: torch.Tensor | None,
                past_valid: torch.Tensor | None, cross: torch.Tensor,
                enc_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [B, T] at decoder positions start .. start+T-1; past [L, 2, B, H, P, Dh] and its
        fill past_valid bool [B, P] (or None) -> (logits [B, T, V], self K/V [L, 2, B, H, P + T, Dh])."""
        t = tokens.shape[1]
        positions = torch.arange(start, start + t, device=tokens.device)  # [T]
        x = self.emb_drop(self.token_emb(tokens) + self.dec_pos(positions))  # [B, T, D]
        q_pos = positions.unsqueeze(1)  # [T, 1]
        k_pos = torch.arange(start + t, device=tokens.device).unsqueeze(0)  # [1, P + T]
        self_mask = (k_pos <= q_pos)[None, None]  # [1, 1, T, P + T] causal
        if past_valid is not None:  # the stored fill: unfilled slots are never attended
            key_valid = torch.cat([past_valid, torch.ones_like(tokens, dtype=torch.bool)], 1)  # [B, P + T]
            self_mask = self_mask & key_valid[:, None, None, :]  # [B, 1, T, P + T]
        cross_mask = enc_valid[:, None, None, :]  # [B, 1, 1, S]
        present = []
        for i, block in enumerate(self.decoder):
            x, kv = block(x, None if past is None else past[i], self_mask, cross[i], cross_mask)
            present.append(kv)
        return self.logits(self.dec_norm(x)), torch.stack(present)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., D] -> [..., vocab_size]."""
        if self.lm_head is not None:
            return self.lm_head(hidden)
        return hidden @ self.token_emb.weight.T

    def forward(self, users: torch.Tensor, history: torch.Tensor,
                decoder_input: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: decoder_input int64 [B, T] ([BOS, s1, ..]) -> logits [B, T, V]."""
        memory, valid = self.encode(users, history)
        logits, _ = self._decode(decoder_input, 0, None, None, self.cross_kv(memory), valid)
        return logits

    def prefill(self, users: torch.Tensor, history: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
        """Encode once, cross K/V once, decode BOS -> (log-probs of the first digit [B, V], cache)."""
        memory, valid = self.encode(users, history)
        cross = self.cross_kv(memory)  # [L, 2, B, H, S, Dh]
        bos = torch.full((users.shape[0], 1), BOS, dtype=torch.long, device=users.device)
        logits, present = self._decode(bos, 0, None, None, cross, valid)
        filled = torch.ones_like(bos, dtype=torch.bool)  # [B, 1] the BOS slot
        return logits[:, -1].log_softmax(-1), KVCache(present, filled, cross, valid)

    def decode(self, tokens: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """tokens int64 [B, 1] (the last generated token of each row) -> (log-probs [B, V], cache + 1)."""
        logits, present = self._decode(tokens, cache.seq_len, cache.kv, cache.valid, cache.cross_kv,
                                       cache.enc_valid)
        filled = torch.cat([cache.valid, torch.ones_like(tokens, dtype=torch.bool)], 1)  # [B, P + 1]
        return logits[:, -1].log_softmax(-1), KVCache(present, filled, cache.cross_kv, cache.enc_valid)
