"""Ranking metrics from the rank of each user's held-out item.

Every task reduces its scores to one 0-based rank per user and a flag saying whether the
target's score was finite; `RankingMetrics` turns ranks into HR@K, NDCG@K and MRR. Its states
are sums, so DDP reduction is exact whatever the user count per rank.

Ranking never flatters a broken model:
- NaN and +-inf scores count as -inf (a NaN never beats anything); a non-finite target ranks
  last among the rankable candidates, so a diverged model scores 0, not 1.
- ties never help the target. `ties="pessimistic"` (default) puts every other candidate with an
  equal score above it; `ties="expected"` gives the expected rank under random tie-breaking,
  greater + equal / 2 (a float). That expected rank is plugged into the metrics (hit = rank < K,
  ndcg = 1 / log2(rank + 2)); it is not the expectation of the metric itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torchmetrics import Metric

Ties = Literal["pessimistic", "expected"]


class NonFiniteScoresError(ValueError):
    """Every target score of an evaluation pass was NaN or infinite."""


class RankingMetrics(Metric):
    """HR@K, NDCG@K (one relevant item: 1 / log2(rank + 2)) and MRR, averaged over users."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, ks: Sequence[int] = (5, 10, 20), prefix: str = "") -> None:
        super().__init__()
        self.ks = tuple(int(k) for k in ks)
        self.prefix = prefix
        n = len(self.ks)
        self.add_state("hits", default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("ndcg", default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("rr", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("finite", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, ranks: torch.Tensor, finite: torch.Tensor | None = None) -> None:
        """ranks: int or float [B], 0 = the target came first; finite: bool [B] (None: all)."""
        ranks = ranks.to(torch.float64).reshape(-1, 1)  # [B, 1]
        ks = torch.tensor(self.ks, dtype=torch.float64, device=ranks.device)  # [K]
        hit = ranks < ks  # [B, K]
        self.hits += hit.sum(0)
        self.ndcg += (hit / torch.log2(ranks + 2)).sum(0)
        self.rr += (1.0 / (ranks + 1)).sum()
        self.count += ranks.shape[0]
        self.finite += ranks.shape[0] if finite is None else finite.reshape(-1).sum().to(torch.float64)

    def compute(self) -> dict[str, torch.Tensor]:
        if self.count > 0 and self.finite == 0:
            raise NonFiniteScoresError(
                f"every target score in this pass is NaN or infinite ({int(self.count)} users, "
                f"metrics {self.prefix or 'unprefixed'}): the model diverged or its scores are "
                "broken; check the loss curve and lower the learning rate or use fp32")
        n = self.count.clamp_min(1)
        out = {}
        for i, k in enumerate(self.ks):
            out[f"{self.prefix}hr@{k}"] = (self.hits[i] / n).float()
            out[f"{self.prefix}ndcg@{k}"] = (self.ndcg[i] / n).float()
        out[f"{self.prefix}mrr"] = (self.rr / n).float()
        return out


def rank_of_target(
    scores: torch.Tensor, target_index: torch.Tensor, ties: Ties = "pessimistic"
) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based rank of scores[b, target_index[b]] among its row (every column a candidate).

    scores: float [B, C]; target_index: int [B]
    -> ranks int64 [B] (float64 with ties="expected"), finite bool [B] (the target's score was)
    """
    rankable = torch.ones_like(scores, dtype=torch.bool)  # [B, C]
    return _rank(scores, target_index, rankable, ties)


def full_ranking_ranks(
    scores: torch.Tensor, target: torch.Tensor, history: torch.Tensor | None,
    ties: Ties = "pessimistic",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank the target over the whole catalogue, without padding and (optionally) history.

    scores: float [B, n_items + 1] (column 0 is padding and never ranked)
    target: int [B]; history: int [B, H] items to remove (0-padded) or None
    -> ranks [B], finite bool [B] as in `rank_of_target`. Removed items are not candidates at
    all (they neither tie with nor beat the target); the target itself is never removed.
    """
    rankable = torch.ones_like(scores, dtype=torch.bool)  # [B, N + 1]
    if history is not None:
        rankable.scatter_(1, history, False)  # also hits column 0 through the padding
    rankable[:, 0] = False
    # a re-consumed target is still a valid answer: it is never removed from its own row
    rankable.scatter_(1, target.unsqueeze(1), True)
    return _rank(scores, target, rankable, ties)


def _rank(
    scores: torch.Tensor, target: torch.Tensor, rankable: torch.Tensor, ties: Ties
) -> tuple[torch.Tensor, torch.Tensor]:
    """scores float [B, C], target int [B], rankable bool [B, C] (target column True)."""
    if ties not in ("pessimistic", "expected"):
        raise ValueError(f"ties must be 'pessimistic' or 'expected', got {ties!r}")
    neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device)
    clean = torch.where(torch.isfinite(scores), scores, neg_inf)  # [B, C]
    raw_target = scores.gather(1, target.unsqueeze(1))  # [B, 1]
    finite = torch.isfinite(raw_target).squeeze(1)  # [B]
    others = rankable.clone()
    others.scatter_(1, target.unsqueeze(1), False)  # [B, C] every candidate but the target
    greater = ((clean > raw_target) & others).sum(1)  # [B]
    equal = ((clean == raw_target) & others).sum(1)  # [B]
    last = others.sum(1)  # [B] a non-finite target comes after every other candidate
    if ties == "expected":
        ranks = torch.where(finite, greater + equal.to(torch.float64) / 2, last.to(torch.float64))
    else:
        ranks = torch.where(finite, greater + equal, last)
    return ranks, finite
