"""The K/V cache of a transformer decoder, as plain tensors so it crosses an ONNX/TensorRT boundary.

Two parts:
- self-attention, growing: one stacked tensor of every layer's keys and values over the P cached
  positions, and `valid`, bool [B, P], which of those slots hold a real event (token). The fill is
  stored, never inferred from token ids: an event may be several tokens, and token 0 may be a
  real code in another model's vocabulary. A caller appends T positions together (one column for
  the whole batch), so a row without a new event gets an invalid slot, not a shifted cache;
  `lengths()` counts each row's real slots.
- cross-attention, fixed (an encoder-decoder such as RPG_ED): every decoder layer's K/V over the
  S encoder positions and `enc_valid`, bool [B, S], the encoder's padding mask. Computed once at
  prefill; None for a decoder-only model.

`reorder` (beam parents) and `repeat_interleave` (opening beams) move every part together.
Growing by concatenation is what the exported decode graph does (P is a dynamic axis, P = 0 an
empty cache); a preallocated variant written at explicit positions would keep this interface.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values: [B, heads, P, head_dim]


class KVCache(NamedTuple):
    """kv:        float [L, 2, B, H, P, Dh] self-attention keys (index 0) and values (1)
    valid:     bool [B, P] which cached slots are real (the stored fill)
    cross_kv:  float [L, 2, B, H, S, Dh] cross-attention K/V, fixed (None: decoder-only)
    enc_valid: bool [B, S] which encoder positions are real (None: decoder-only)"""

    kv: torch.Tensor
    valid: torch.Tensor
    cross_kv: torch.Tensor | None = None
    enc_valid: torch.Tensor | None = None

    @classmethod
    def empty(cls, layers: int, batch: int, heads: int, head_dim: int,
              dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
              cross_kv: torch.Tensor | None = None, enc_valid: torch.Tensor | None = None) -> KVCache:
        """A cache with P = 0 (before any event), beside an optional fixed cross part."""
        kv = torch.zeros(layers, 2, batch, heads, 0, head_dim, dtype=dtype, device=device)
        valid = torch.zeros(batch, 0, dtype=torch.bool, device=device)
        return cls(kv, valid, cross_kv, enc_valid)

    @classmethod
    def from_layers(cls, present: list[KV], valid: torch.Tensor, cross_kv: torch.Tensor | None = None,
                    enc_valid: torch.Tensor | None = None) -> KVCache:
        """Stack the per-layer (k, v) [B, H, P, Dh] that attention returned; valid bool [B, P].
        One stack of all 2L tensors (a single copy in an exported graph, not one per nesting level)."""
        kv = torch.stack([t for layer in present for t in layer])  # [2L, B, H, P, Dh]
        return cls(kv.unflatten(0, (len(present), 2)), valid, cross_kv, enc_valid)

    def grown(self, present: list[KV], new_valid: torch.Tensor) -> KVCache:
        """This cache after a step: present = the per-layer (k, v) over P + T positions that
        attention returned (past and new), new_valid bool [B, T] which new positions are real."""
        valid = torch.cat([self.valid, new_valid.to(torch.bool)], 1)  # [B, P + T]
        # the old cache plus the T new positions of every layer: one copy of the past (restacking
        # the per-layer [P + T] tensors would copy it twice in an exported decode graph)
        p = self.seq_len
        new = torch.stack([t[..., p:, :] for layer in present for t in layer])  # [2L, B, H, T, Dh]
        new = new.unflatten(0, (len(present), 2))  # [L, 2, B, H, T, Dh]
        return KVCache(torch.cat([self.kv, new], -2), valid, self.cross_kv, self.enc_valid)

    @property
    def seq_len(self) -> int:
        """P, the number of cached self-attention slots (invalid ones included)."""
        return self.valid.shape[1]

    def lengths(self) -> torch.Tensor:
        """int64 [B]: each row's real cached slots (for SASRec, the position of its newest event)."""
        return self.valid.long().sum(1)

    def layer(self, i: int) -> KV:
        """Layer i's self-attention (keys, values), each [B, heads, P, head_dim]. Indexed on the
        [2L, ...] view: an exported graph splits the cache once, not per layer and then per K/V."""
        flat = self.kv.flatten(0, 1)  # [2L, B, H, P, Dh] (a view of the contiguous cache)
        return flat[2 * i], flat[2 * i + 1]

    def cross_layer(self, i: int) -> KV:
        """Layer i's cross-attention (keys, values), each [B, heads, S, head_dim]."""
        if self.cross_kv is None:
            raise ValueError("this cache has no cross-attention part (a decoder-only model's cache)")
        return self.cross_kv[i, 0], self.cross_kv[i, 1]

    def reorder(self, index: torch.Tensor) -> KVCache:
        """Select / permute rows (beam search parents): index int64 [B']; every part follows."""
        return KVCache(*(None if t is None else t.index_select(dim, index)
                         for t, dim in zip(self, _BATCH_DIMS, strict=True)))

    def reorder_within_groups(self, index: torch.Tensor) -> KVCache:
        """`reorder` for an index that keeps every row inside its group of identical cross parts
        (beam search: a beam's parent is a beam of the same user, whose cross K/V is the same), so
        the fixed cross part is left as it is instead of being copied every step."""
        if len(index) != self.kv.shape[2]:
            raise ValueError(f"reorder_within_groups: {len(index)} rows for a cache of {self.kv.shape[2]}")
        return self._replace(kv=self.kv.index_select(2, index), valid=self.valid.index_select(0, index))

    def repeat_interleave(self, n: int) -> KVCache:
        """Each row repeated n times in a row ([B] -> [B * n]), e.g. to open n beams."""
        return KVCache(*(None if t is None else t.repeat_interleave(n, dim=dim)
                         for t, dim in zip(self, _BATCH_DIMS, strict=True)))


_BATCH_DIMS = (2, 0, 2, 0)  # the batch dimension of kv, valid, cross_kv, enc_valid
