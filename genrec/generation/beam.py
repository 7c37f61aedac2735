"""Beam search and greedy decoding over a step function; they know no model by name.

Step interface (any model, PyTorch or onnxruntime behind it):

    step_fn(tokens, state) -> (log_probs float [R, V], state)
        call 0: tokens is None and R = B (one row per user: e.g. encode + decode BOS);
        call t > 0: tokens int64 [B * beam, 1], the token each row chose last, R = B * beam.
    reorder_fn(state, index int64 [B * beam]) -> state
        row r of the new state is row index[r] of the previous call's rows (its parent); after
        call 0 the index is the user b of each row (b * beam .. b * beam + beam - 1 -> b), after
        that b * beam + parent beam. Called after every call but the last.
    allowed_fn(prefix int64 [R, t]) -> bool [R, V] (e.g. PrefixConstraint.allowed), or None.

Scores are sums of the step log-probs of the chosen tokens (never products of probabilities);
disallowed tokens and NaN log-probs count as -inf. Beams come back sorted by score, best first.
Distinct live beams are distinct sequences (each extends a distinct parent prefix by a distinct
token), so there are no duplicates. When fewer than `beam_size` valid sequences exist, the extra
beams have score -inf, and `beams_to_items` gives them item id 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

StepFn = Callable[[torch.Tensor | None, Any], tuple[torch.Tensor, Any]]
ReorderFn = Callable[[Any, torch.Tensor], Any]
AllowedFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class BeamSearchOutput:
    """sequences: int64 [B, beam, n_steps] chosen tokens; scores: float [B, beam], best first."""

    sequences: torch.Tensor
    scores: torch.Tensor


def flatten_beams(x: torch.Tensor) -> torch.Tensor:
    """[B, beam, ...] -> [B * beam, ...]"""
    return x.reshape(-1, *x.shape[2:])


def unflatten_beams(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[B * beam, ...] -> [B, beam, ...]"""
    return x.reshape(batch_size, -1, *x.shape[1:])


def _masked(log_probs: torch.Tensor, prefix: torch.Tensor, allowed_fn: AllowedFn | None) -> torch.Tensor:
    """log_probs [R, V] with NaN and disallowed tokens set to -inf."""
    out = torch.nan_to_num(log_probs.float(), nan=float("-inf"))  # topk would rank NaN first
    if allowed_fn is not None:
        out = out.masked_fill(~allowed_fn(prefix), float("-inf"))
    return out


def beam_search(step_fn: StepFn, init_state: Any, batch_size: int, n_steps: int, beam_size: int = 10,
                allowed_fn: AllowedFn | None = None, reorder_fn: ReorderFn | None = None) -> BeamSearchOutput:
    """Top `beam_size` sequences of `n_steps` tokens per user; see the module docstring."""
    if n_steps < 1 or beam_size < 1:
        raise ValueError(f"beam_search: n_steps={n_steps} and beam_size={beam_size} must be >= 1")
    b, state = batch_size, init_state
    scores = torch.zeros(b, 1)  # [B, rows per user]: one row per user before the first step
    seqs: torch.Tensor | None = None  # [B * rows, t]
    tokens = None
    for t in range(n_steps):
        log_probs, state = step_fn(tokens, state)  # [B * rows, V]
        rows, vocab = scores.shape[1], log_probs.shape[-1]
        if log_probs.shape[0] != b * rows:
            raise ValueError(f"beam_search step {t}: step_fn returned {log_probs.shape[0]} rows, "
                             f"expected batch_size * {rows} = {b * rows}")
        scores = scores.to(log_probs.device)
        if seqs is None:  # the empty prefix of each user's single row
            seqs = torch.zeros(b, 0, dtype=torch.long, device=log_probs.device)  # [B, 0]
        cand = scores[:, :, None] + unflatten_beams(_masked(log_probs, seqs, allowed_fn), b)  # [B, rows, V]
        cand = cand.reshape(b, rows * vocab)  # [B, rows * V]
        if cand.shape[1] < beam_size:  # tiny vocabularies: pad so topk has beam_size candidates
            cand = torch.nn.functional.pad(cand, (0, beam_size - cand.shape[1]), value=float("-inf"))
        scores, idx = cand.topk(beam_size, dim=1)  # [B, beam] sorted, best first
        parent = (idx // vocab).clamp(max=rows - 1)  # [B, beam] parent row within the user
        token = idx % vocab  # [B, beam]
        flat_parent = flatten_beams(parent + torch.arange(b, device=idx.device)[:, None] * rows)  # [B * beam]
        tokens = flatten_beams(token)[:, None]  # [B * beam, 1]
        seqs = torch.cat([seqs[flat_parent], tokens], 1)  # [B * beam, t + 1]
        if t < n_steps - 1 and reorder_fn is not None:
            state = reorder_fn(state, flat_parent)
    return BeamSearchOutput(unflatten_beams(seqs, b), scores)


def greedy_search(step_fn: StepFn, init_state: Any, batch_size: int, n_steps: int,
                  allowed_fn: AllowedFn | None = None) -> BeamSearchOutput:
    """The most likely allowed token at each step (debugging); same output layout with beam = 1."""
    state, tokens, seqs = init_state, None, torch.zeros(batch_size, 0, dtype=torch.long)
    score = torch.zeros(batch_size)
    for _ in range(n_steps):
        log_probs, state = step_fn(tokens, state)  # [B, V]
        seqs, score = seqs.to(log_probs.device), score.to(log_probs.device)
        best, token = _masked(log_probs, seqs, allowed_fn).max(1)  # [B], [B]
        score = score + best
        tokens = token[:, None]  # [B, 1]
        seqs = torch.cat([seqs, tokens], 1)  # [B, t + 1]
    return BeamSearchOutput(seqs[:, None, :], score[:, None])
