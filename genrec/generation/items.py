"""From generated token sequences to item ids, and from ranked item beams to target ranks."""

from __future__ import annotations

import torch

from genrec.generation.beam import BeamSearchOutput
from genrec.generation.trie import PrefixConstraint
from genrec.tokenizers.index import SemanticIDIndex


def beams_to_items(output: BeamSearchOutput, index: SemanticIDIndex,
                   constraint: PrefixConstraint | None = None) -> torch.Tensor:
    """int64 [B, beam] item ids of the beams; 0 for a beam with score -inf or no such item.

    `constraint` maps vocabulary tokens back to codes (its token_offsets); None: tokens are codes.
    Steps past n_digit (an EOS step) are ignored.
    """
    seqs = output.sequences[..., : index.n_digit]  # [B, beam, n_digit]
    codes = constraint.tokens_to_codes(seqs) if constraint is not None else seqs  # [B, beam, n_digit]
    items = index.codes_to_items(codes).to(seqs.device)  # [B, beam]
    return torch.where(torch.isfinite(output.scores), items, torch.zeros_like(items))


MISS_RANK = 2**62  # past any catalogue: a miss scores 0 in HR@K, NDCG@K and reciprocal rank


def beam_ranks(items: torch.Tensor, scores: torch.Tensor,
               target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based rank of each target among its ranked beams, for RankingMetrics.

    items int64 [B, beam] (best first, 0 = no item), scores float [B, beam], target int64 [B]
    -> (ranks int64 [B], finite bool [B]). A target outside the beams gets MISS_RANK: a miss at
    every K and reciprocal rank ~0 (rank `beam` would credit it 1 / (beam + 1) in MRR).
    finite[b] is False when user b's search produced no finite score at all
    (a degenerate model: NaN or all -inf), the `(ranks, finite)` convention of genrec.metrics.
    """
    beam = items.shape[1]
    hit = (items == target[:, None]) & (items != 0)  # [B, beam]; at most one hit: beams are distinct
    first = torch.where(hit, torch.arange(beam, device=items.device), MISS_RANK)  # [B, beam]
    ranks = first.min(1).values  # [B]
    return ranks, torch.isfinite(scores).any(1)
