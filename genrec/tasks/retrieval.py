"""Two-tower retrieval (Phoenix's first stage): in-batch sampled softmax with a logQ correction.

Training, over every (row, history position) that has a next item: the user tower's state there
(`net.user_states`, L2-normalised [B, S, D]) is scored against a candidate set shared by the
batch: the batch's unique target items plus `extra_negatives` items drawn uniformly from the
catalogue, each through the candidate tower (`net.candidate_embed(items, authors)`, normalised).

  logits[n, c] = <u_n, v_c> / temperature - log Q(c)

Q(c) is the expected number of times candidate c is drawn into the set: in-batch candidates are
the targets themselves, i.e. N draws from the training popularity p(c) = count(c) / sum(count)
(`datamodule.item_popularity()`, read at setup; a count of 0 counts as 1), and the extras are K
uniform draws, so Q(c) = N p(c) + K / n_items. Without extras this is log p(c) + a constant,
the correction of Yi et al. (RecSys 2019): popular items, over-represented as in-batch negatives,
are not pushed down for their popularity alone. A candidate equal to a row's own target in any
column but the target's (an accidental hit: an extra that drew it) is masked to -inf there.

Evaluation: at the start of each val/test epoch the catalogue vectors are computed once
(`datamodule.catalogue()` -> candidate tower, [n_items + 1, D] with row 0 zero); per batch the
newest user vector (`net.user_embed`) scores every item ([B, n_items + 1], column 0 = -inf) and
`RecTask.rank_scores` ranks the held-out item (history masked; sampled protocol beside it).
With one held-out item per user HR@K is Recall@K (logged as hr@K).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from genrec.rank_zero_log import get_logger
from genrec.tasks.base import RecTask, net_inputs
from genrec.validation import ConfigError, check_range

log = get_logger(__name__)


def candidate_log_q(cand_ids: torch.Tensor, item_probs: torch.Tensor, n_targets: int,
                    n_extra: int, n_items: int) -> torch.Tensor:
    """log of each candidate's expected draw count: n_targets in-batch draws from the training
    popularity plus n_extra uniform draws. cand_ids int [M]; item_probs float [n_items + 1]
    (sums to 1 over 1..n_items) -> float [M]."""
    return torch.log(n_targets * item_probs[cand_ids] + n_extra / n_items)


def sampled_softmax_logits(users: torch.Tensor, cands: torch.Tensor, cand_ids: torch.Tensor,
                           targets: torch.Tensor, positive: torch.Tensor, temperature: float,
                           log_q: torch.Tensor | None = None) -> torch.Tensor:
    """users float [N, D], cands float [M, D] with ids int [M]; targets int [N] and positive int
    [N] (the target's column) -> logits float [N, M]: <u, v> / temperature - log_q, with every
    other column holding the row's own target (an accidental hit) at -inf."""
    logits = users.float() @ cands.float().T / temperature  # [N, M]
    if log_q is not None:
        logits = logits - log_q  # [N, M] broadcast over rows
    hits = cand_ids.unsqueeze(0) == targets.unsqueeze(1)  # [N, M]
    hits[torch.arange(len(targets), device=hits.device), positive] = False
    return logits.masked_fill(hits, float("-inf"))


def catalogue_vectors(net: nn.Module, items: torch.Tensor, authors: torch.Tensor,
                      chunk: int = 8192) -> torch.Tensor:
    """Candidate-tower vectors of items int [N] = 1..n_items with authors int [N] ->
    float [n_items + 1, D], row 0 (padding) zero, row i = item i."""
    parts = [net.candidate_embed(items[i : i + chunk], authors[i : i + chunk]).float()
             for i in range(0, len(items), chunk)]  # each [chunk, D]
    vectors = torch.cat(parts)  # [N, D]
    table = vectors.new_zeros(int(items.max()) + 1, vectors.shape[1])  # [n_items + 1, D]
    table[items] = vectors
    return table


class RetrievalTask(RecTask):
    """The loss and evaluation above. The network has `user_states`, `user_embed` and
    `candidate_embed` (genrec/models/phoenix.py PhoenixRetrieval)."""

    def __init__(
        self,
        net: nn.Module,
        optimizer,
        scheduler=None,
        ks: Sequence[int] = (10, 100, 1000),
        mask_history: bool = True,
        weight_decay: float = 0.0,
        temperature: float = 0.05,
        extra_negatives: int = 0,
        logq_correction: bool = True,
        param_groups: Sequence[Mapping] = (),
        monitor: str = "val/hr@100",
        baselines: Sequence = (),
    ) -> None:
        if check_range("task.temperature", temperature, lo=0, integer=False) == 0:
            raise ConfigError("task.temperature=0: must be a number > 0")
        check_range("task.extra_negatives", extra_negatives, lo=0)
        super().__init__(net, optimizer, scheduler, ks=ks, mask_history=mask_history,
                         weight_decay=weight_decay, param_groups=param_groups, monitor=monitor,
                         baselines=baselines)
        self.item_probs: torch.Tensor | None = None  # [n_items + 1] training popularity
        self.item_authors: torch.Tensor | None = None  # [n_items + 1]
        self.catalogue: tuple[torch.Tensor, torch.Tensor] | None = None  # (items [N], authors [N])
        self.item_vectors: torch.Tensor | None = None  # [n_items + 1, D] during an eval epoch

    def batch_fields(self, stage: str) -> frozenset[str]:
        return frozenset({"targets"} if stage == "train" else {"target", "history"})

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:
            self.set_item_stats(datamodule.item_popularity(), datamodule.item_authors(),
                                datamodule.catalogue())

    def set_item_stats(self, popularity: torch.Tensor, item_authors: torch.Tensor,
                       catalogue: tuple[torch.Tensor, torch.Tensor]) -> None:
        """popularity float [n_items + 1] training counts (index 0 ignored); item_authors int
        [n_items + 1]; catalogue (items, authors) int [n_items] each."""
        counts = popularity.double().clone()
        counts[0] = 0.0
        counts[1:] = counts[1:].clamp(min=1.0)  # an item never seen in training: one count
        self.item_probs = (counts / counts.sum()).float()
        self.item_authors = torch.as_tensor(item_authors, dtype=torch.int64)
        self.catalogue = tuple(torch.as_tensor(t, dtype=torch.int64) for t in catalogue)

    @property
    def n_items(self) -> int:
        return self.item_probs.shape[0] - 1

    # ---- training ----
    def retrieval_loss(self, batch) -> torch.Tensor:
        if self.item_probs is None:
            raise RuntimeError("RetrievalTask: set_item_stats (or setup with a datamodule) before training")
        states = self.net.user_states(**net_inputs(self.net.user_states, batch.model_inputs()))  # [B, S, D]
        has_next = batch.targets > 0  # [B, S]
        users, targets = states[has_next], batch.targets[has_next]  # [N, D], [N]
        in_batch, positive = torch.unique(targets, return_inverse=True)  # [M0], [N]
        extra = self.hparams.extra_negatives
        cand_ids = torch.cat([in_batch, torch.randint(1, self.n_items + 1, (extra,), device=targets.device)])
        authors = self.item_authors.to(targets.device)[cand_ids]  # [M]
        cands = self.net.candidate_embed(cand_ids, authors)  # [M, D]
        log_q = None
        if self.hparams.logq_correction:
            log_q = candidate_log_q(cand_ids, self.item_probs.to(targets.device), len(targets), extra,
                                    self.n_items)  # [M]
        logits = sampled_softmax_logits(users, cands, cand_ids, targets, positive,
                                        self.hparams.temperature, log_q)  # [N, M]
        return F.cross_entropy(logits, positive)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.retrieval_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    # ---- evaluation ----
    def _embed_catalogue(self) -> None:
        items, authors = (t.to(self.device) for t in self.catalogue)
        with torch.no_grad():
            self.item_vectors = catalogue_vectors(self.net, items, authors)  # [n_items + 1, D]

    def on_validation_epoch_start(self) -> None:
        self._embed_catalogue()

    def on_test_epoch_start(self) -> None:
        self._embed_catalogue()

    def evaluate(self, batch, stage: str) -> None:
        user = self.net.user_embed(**net_inputs(self.net.user_embed, batch.model_inputs())).float()  # [B, D]
        scores = user @ self.item_vectors.T  # [B, n_items + 1]
        scores[:, 0] = float("-inf")  # padding is never an answer
        self.rank_scores(stage, scores, batch)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self.item_vectors = None

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self.item_vectors = None
