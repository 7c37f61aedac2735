"""TiSASRec (Li, Wang & McAuley, WSDM 2020): SASRec whose attention also sees the time between
events, scaled per user, and absolute positions on the keys and values.

For a user's window of timestamps t_1..t_T the relation matrix is

    r_ij = min(floor(|t_i - t_j| / s_i), time_span),   s_i = the user's smallest non-zero gap

(the paper takes s over the whole sequence; s_i uses only the events up to i, so the model stays
causal and a training position sees the scale it would see at inference; see interval_matrix)
and attention (per head, d = head size) is the paper's Eq. (5)-(6):

    e_ij = q_i . (k_j + P^K_j + R^K_{r_ij}) / sqrt(d)       z_i = sum_j a_ij (v_j + P^V_j + R^V_{r_ij})

R^K and R^V are (time_span + 1)-row tables. The reference code gathers them into [B, T, T, D]
tensors (~1 GB each at maxlen 200, batch 128, d 50); here the key term is q_i . R^K for all
time_span + 1 rows followed by a gather of r_ij, and the value term sums each row's attention
weights per interval bucket before one product with R^V, so nothing [B, T, T, D] is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from genrec.models.layers import KV, FastDropout, project_qkv
from genrec.models.sasrec import SASRec, SASRecConfig
from genrec.validation import check_ranges


@dataclass
class TiSASRecConfig(SASRecConfig):
    time_span: int = 256  # the largest interval bucket k; longer (scaled) intervals are clipped to it

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges("model", self, {"time_span": {"lo": 1}})


def interval_matrix(timestamps: torch.Tensor, valid: torch.Tensor, time_span: int) -> torch.Tensor:
    """Personal clipped time intervals, int64 [B, T, T]: r_ij = min(floor(|t_i - t_j| / s_i), time_span),
    0 where i or j is padding.

    timestamps int [B, T], non-decreasing over the valid (left-padded) positions of a row; valid
    bool [B, T]. s_i is the smallest non-zero gap between neighbouring events up to position i
    (for sorted times, the smallest non-zero |t_a - t_b| among them), 1 when there is none yet:
    the paper's per-user minimum, taken over the events query i may see, so a prediction never
    depends on the timing of later events. At the newest position it is the whole window's.
    """
    t = timestamps.long()
    none = torch.iinfo(torch.int64).max
    gaps = (t[:, 1:] - t[:, :-1]).abs()  # [B, T-1] gap ending at positions 1..T-1
    real = valid[:, 1:] & valid[:, :-1] & (gaps > 0)
    ending_at = torch.cat([t.new_full((t.shape[0], 1), none), gaps.masked_fill(~real, none)], 1)  # [B, T]
    scale = ending_at.cummin(1).values  # [B, T] smallest gap so far
    scale = scale.masked_fill(scale == none, 1).unsqueeze(2)  # [B, T, 1], one per query row
    diff = (t.unsqueeze(2) - t.unsqueeze(1)).abs()  # [B, T, T]
    r = torch.div(diff, scale, rounding_mode="floor").clamp_(max=time_span)  # [B, T, T]
    return r.masked_fill_(~(valid.unsqueeze(2) & valid.unsqueeze(1)), 0)


class TimeAwareAttention(nn.Module):
    """Multi-head attention with interval and absolute-position terms on keys and values.

    Keeps the output projection of the family's CausalSelfAttention (the paper has none) so
    TiSASRec differs from SASRec only in what the attention sees.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"hidden size {d_model} does not divide by {n_heads} heads")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.attn_dropout = FastDropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, past: KV | None = None,
                kv_source: torch.Tensor | None = None, *, intervals: torch.Tensor,
                pos_k: torch.Tensor, pos_v: torch.Tensor, interval_k: torch.Tensor,
                interval_v: torch.Tensor) -> tuple[torch.Tensor, KV]:
        """x [B, T, D]; mask bool [B, 1, T, T]; kv_source [B, T, D] (keys/values from it, default x);
        intervals int64 [B, T, T]; pos_k, pos_v [B, T, D]; interval_k, interval_v [K + 1, D]
        -> (out [B, T, D], (k, v) [B, H, T, Dh])."""
        if past is not None:
            raise NotImplementedError("TiSASRec has no K/V cache decode: intervals to cached keys "
                                      "need the cached events' timestamps; use encode")
        b, t, d = x.shape
        h = self.n_heads
        q, k, v = project_qkv(self.qkv, x, kv_source, h)  # [B, H, T, Dh]
        keys = k + pos_k.view(b, t, h, -1).transpose(1, 2)  # [B, H, T, Dh]
        values = v + pos_v.view(b, t, h, -1).transpose(1, 2)  # [B, H, T, Dh]
        buckets = intervals.unsqueeze(1).expand(b, h, t, t)  # [B, H, T, T] interval index of (i, j)
        q_interval = q @ interval_k.view(-1, h, d // h).permute(1, 2, 0)  # [B, H, T, K+1]
        scores = q @ keys.transpose(-1, -2) + q_interval.gather(-1, buckets)  # [B, H, T, T]
        scores = scores / math.sqrt(d // h)
        # the mask always lets a query see itself, so no row is all -inf
        weights = self.attn_dropout(scores.masked_fill(~mask, float("-inf")).softmax(-1))
        per_bucket = weights.new_zeros(q_interval.shape).scatter_add_(-1, buckets, weights)  # [B,H,T,K+1]
        y = weights @ values + per_bucket @ interval_v.view(-1, h, d // h).transpose(0, 1)  # [B,H,T,Dh]
        return self.out(y.transpose(1, 2).reshape(b, t, d)), (k, v)


class TiSASRec(SASRec):
    """SASRec with time-interval-aware attention; `encode(items, timestamps)` needs the times.

    Positions follow SASRec's convention (1, 2, ... from the window's oldest event, 0 at
    padding); the inherited `pos_emb` is the key position table P^K, `pos_emb_v` is P^V. The
    input embedding carries no position (the paper puts positions on keys and values only).
    """

    needs_time = True
    config_class = TiSASRecConfig
    # why it exports a score graph only (the manifest's note; genrec/export/builders.py reads it)
    not_streaming_reason = ("the attention needs timestamps (personal interval scaling), which the "
                            "prefill/decode graphs do not carry; streaming it would also need the running "
                            "minimum interval in the cache")

    def __init__(self, **fields) -> None:
        super().__init__(**fields)
        cfg = self.config
        d = cfg.hidden_units
        self.pos_emb_v = nn.Embedding(cfg.maxlen + 1, d, padding_idx=0)
        self.interval_emb_k = nn.Embedding(cfg.time_span + 1, d)
        self.interval_emb_v = nn.Embedding(cfg.time_span + 1, d)
        self.relation_dropout = FastDropout(cfg.dropout)
        for module in (self.pos_emb_v, self.interval_emb_k, self.interval_emb_v):
            self._init_weights(module)

    def _attention(self) -> nn.Module:
        cfg = self.config
        return TimeAwareAttention(cfg.hidden_units, cfg.num_heads, cfg.dropout)

    def embed(self, items: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """items int [B, T] -> [B, T, D] (padding rows zero); positions enter in the attention."""
        x = self.item_emb(items) * math.sqrt(self.config.hidden_units)
        return self.emb_dropout(x) * (items != 0).unsqueeze(-1)

    def _attention_inputs(self, items: torch.Tensor, timestamps: torch.Tensor | None) -> dict:
        if timestamps is None:
            raise ValueError("TiSASRec needs timestamps: encode(items, timestamps) with the batch's "
                             "timestamps [B, T]; this data has none")
        cfg = self.config
        valid = items != 0  # [B, T]
        positions = (valid.long().cumsum(1) * valid).clamp(max=cfg.maxlen)  # [B, T], 0 at padding
        drop = self.relation_dropout  # the reference code drops out all four relation embeddings
        return {
            "intervals": interval_matrix(timestamps, valid, cfg.time_span),  # [B, T, T]
            "pos_k": drop(self.pos_emb(positions)),  # [B, T, D]
            "pos_v": drop(self.pos_emb_v(positions)),
            # [K + 1, D]: dropout on the table rows, shared by every (i, j) of the batch
            "interval_k": drop(self.interval_emb_k.weight),
            "interval_v": drop(self.interval_emb_v.weight),
        }
