"""Export graphs of an encoder-decoder generator over semantic-ID tokens (RPG_ED): `encode` and
`decode_step`. Beam search stays in host code (genrec/generation/beam.py); it drives these two
graphs through genrec/generation/steps.py exactly as it drives the PyTorch model.

    encode:      users int64 [batch], history int64 [batch, hist, n_digit] codes (-1 = padding item)
                 -> log_probs fp32 [batch, V] (the first digit, after BOS),
                    present_kv [L, 2, batch, H, 1, Dh] (self K/V of BOS), cross_kv [L, 2, batch, H,
                    hist + 1, Dh], enc_valid bool [batch, hist + 1]
    decode_step: tokens int64 [batch, beam] (each beam's last token), past_kv [L, 2, batch, beam, H,
                 dec_past, Dh], cross_kv [L, 2, batch, H, enc_seq, Dh], enc_valid bool [batch, enc_seq]
                 -> log_probs fp32 [batch, beam, V], present_kv [L, 2, batch, beam, H, dec_past + 1, Dh]

Layout choices. Rows stay [batch, beam] at the boundary (two registered axes, no `rows` axis):
a beam parent never leaves its user, so the cross K/V and the encoder mask stay per user
([batch, ...], never reordered, beam times smaller to feed) and the graph broadcasts them over the
beams. The decoder position is the past length, read from past_kv's shape inside the graph (no
shape-tensor input for TensorRT). `dec_past` is its own axis, not `past`: a decode step has 1
(BOS) to n_digit cached positions, while `past` is a SASRec history length (0 .. 200).
enc_valid stays bool at the boundary, as the SASRec decode graph's present_valid does (TensorRT
takes BOOL I/O; Where/Gather read BOOL). FP32 boundary: the final decoder norm, the tied logits
head and the log_softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genrec.export.axes import register_axis
from genrec.export.builders import _has, register_builder
from genrec.export.graphs import FP32Boundary, GraphSpec
from genrec.models.cache import KVCache

register_axis("hist", 8, (1, 50, 255), doc="history items an encoder-decoder reads (enc_seq = 1 + hist)")
register_axis("dec_past", 2, (1, 4, 32),
              doc="cached decoder positions of an encoder-decoder decode step: 1 (BOS) .. n_digit")

SEQ2SEQ_FP32 = FP32Boundary(after=("net.dec_norm",), outputs=("log_probs",))


def is_seq2seq(net: nn.Module) -> bool:
    """encode / cross_kv / prefill -> KVCache with a cross part / decode over n_digit-token items."""
    config = getattr(net, "config", None)
    return _has(net, "encode", "cross_kv", "prefill", "decode") and hasattr(config, "n_digit")


@dataclass
class Seq2SeqOptions:
    """No options yet (the beam width and steps are host-side)."""


@register_builder("seq2seq", applies=is_seq2seq, options=Seq2SeqOptions)
def seq2seq_graphs(net: nn.Module, opts: Seq2SeqOptions) -> list[GraphSpec]:
    encode = GraphSpec(
        "encode", EncodeGraph(net), ("users", "history"),
        ("log_probs", "present_kv", "cross_kv", "enc_valid"),
        {"users": {0: "batch"}, "history": {0: "batch", 1: "hist"}},
        lambda sizes, gen: sample_encode(net, sizes, gen), fp32=SEQ2SEQ_FP32)
    decode = GraphSpec(
        "decode_step", DecodeStepGraph(net), ("tokens", "past_kv", "cross_kv", "enc_valid"),
        ("log_probs", "present_kv"),
        {"tokens": {0: "batch", 1: "beam"}, "past_kv": {2: "batch", 3: "beam", 5: "dec_past"},
         "cross_kv": {2: "batch", 4: "enc_seq"}, "enc_valid": {0: "batch", 1: "enc_seq"}},
        lambda sizes, gen: sample_decode_step(net, sizes, gen), fp32=SEQ2SEQ_FP32)
    return [encode, decode]


class EncodeGraph(nn.Module):
    """users [B], history [B, hist, n_digit] -> (log_probs [B, V], BOS self K/V, cross K/V, enc_valid)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, users: torch.Tensor, history: torch.Tensor) -> tuple[torch.Tensor, ...]:
        log_probs, cache = self.net.prefill(users, history)
        return log_probs.float(), cache.kv, cache.cross_kv, cache.enc_valid


class DecodeStepGraph(nn.Module):
    """One decode step of every beam of every user; the per-user cross part broadcast over beams."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, tokens: torch.Tensor, past_kv: torch.Tensor, cross_kv: torch.Tensor,
                enc_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, beam = tokens.shape
        past = past_kv.flatten(2, 3)  # [L, 2, B * beam, H, P, Dh]
        cross = cross_kv.unsqueeze(3).expand(-1, -1, -1, beam, -1, -1, -1)  # [L, 2, B, beam, H, S, Dh]
        cross = cross.flatten(2, 3)  # [L, 2, B * beam, H, S, Dh]
        valid = enc_valid.unsqueeze(1).expand(-1, beam, -1).flatten(0, 1)  # [B * beam, S]
        # [B * beam, P]: beams step together, so every decoded slot is filled
        filled = torch.ones(past.shape[2], past.shape[4], dtype=torch.bool, device=past.device)
        cache = KVCache(past, filled, cross, valid)
        log_probs, cache = self.net.decode(tokens.reshape(b * beam, 1), cache)  # [B * beam, V]
        present = cache.kv.unflatten(2, (b, beam))  # [L, 2, B, beam, H, P + 1, Dh]
        return log_probs.float().unflatten(0, (b, beam)), present


# ---- valid inputs ----
def random_history(batch: int, length: int, n_digit: int, codebook_size: int,
                   gen: torch.Generator) -> torch.Tensor:
    """int64 [batch, length, n_digit] codes, left-padded with -1 rows; every row has at least one
    real item and the first row none padded, so each shape exercises padding and a full window."""
    codes = torch.randint(0, codebook_size, (batch, length, n_digit), generator=gen)  # [B, H, n_digit]
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)  # [B] real items per row
    lengths[0] = length
    pad = torch.arange(length)[None, :] < (length - lengths)[:, None]  # [B, H]
    return codes.masked_fill(pad[..., None], -1)


def random_users(batch: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 10**9, (batch,), generator=gen)  # [B] raw ids: the graph hashes them


def sample_encode(net: nn.Module, sizes: dict[str, int], gen: torch.Generator) -> dict[str, torch.Tensor]:
    b, cfg = sizes["batch"], net.config
    return {"users": random_users(b, gen),
            "history": random_history(b, sizes["hist"], cfg.n_digit, cfg.codebook_size, gen)}


def sample_decode_step(net: nn.Module, sizes: dict[str, int],
                       gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A real cache: prefill, beams opened, dec_past - 1 decode steps of random digit tokens."""
    b, beam, steps, s = sizes["batch"], sizes["beam"], sizes["dec_past"], sizes["enc_seq"]
    cfg = net.config
    if not 1 <= steps <= cfg.n_digit:
        raise ValueError(f"axis dec_past={steps}: a decode step has 1 .. n_digit={cfg.n_digit} "
                         "cached positions")
    # enc_seq 1 (the user token alone): a one-item history's cache with the history column dropped
    history = random_history(b, max(s - 1, 1), cfg.n_digit, cfg.codebook_size, gen)  # [B, hist, n_digit]
    _, cache = net.prefill(random_users(b, gen), history)
    cross, valid = cache.cross_kv[..., :s, :], cache.enc_valid[:, :s]  # [L, 2, B, H, S, Dh], [B, S]
    cache = KVCache(cache.kv, cache.valid, cross, valid).repeat_interleave(beam)
    for digit in range(steps):  # the last digit drawn is the step's input token
        lo, hi = cfg.digit_range(digit)
        tokens = torch.randint(lo, hi, (b * beam, 1), generator=gen)  # [B * beam, 1]
        if digit < steps - 1:
            cache = net.decode(tokens, cache)[1]
    return {"tokens": tokens.view(b, beam), "past_kv": cache.kv.unflatten(2, (b, beam)),
            "cross_kv": cross, "enc_valid": valid}
