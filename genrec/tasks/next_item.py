"""Next-item prediction: the task of every scorer (SASRec, TiSASRec, +mHC).

It owns the loss and the evaluation (metrics, optimizer, baselines: genrec/tasks/base.py); the
network is a plain nn.Module with `encode(**batch.model_inputs()) -> [B, T, D]` (keywords:
`items`, `timestamps` when the data has them) and `score(hidden, items=None)`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import nn

from genrec.data.datasets import SequenceBatch
from genrec.rank_zero_log import get_logger
from genrec.tasks.base import RecTask, net_inputs
from genrec.tasks.losses import (
    linear_cross_entropy,
    resolve_matmul_dtype,
    sample_negatives,
    sampled_softmax_cross_entropy,
)
from genrec.validation import check_range

log = get_logger(__name__)

# RankingMetrics are synced by torchmetrics before logging; Lightning's advice to sync again
# (one warning per metric key under DDP) does not apply
warnings.filterwarnings("ignore", ".*logging on epoch level in distributed setting.*", PossibleUserWarning)


LOSS_REDUCTIONS = ("token_mean", "row_sum")


def next_item_loss(net: nn.Module, batch: SequenceBatch, kind: str,
                   ce_matmul_dtype: torch.dtype = torch.float32, num_negatives: int = 256,
                   logq_correction: bool = True, encoder_dtype: torch.dtype = torch.float32,
                   shared_negatives: bool = False, reduction: str = "token_mean") -> torch.Tensor:
    """The training loss at every position that has a next item (plain function: the
    benchmark's Lightning-free loop calls it too). encoder_dtype=bfloat16 runs the encoder
    under autocast (the losses' softmax stays fp32). reduction "token_mean": the mean over the
    batch's positions; "row_sum": their sum / rows, so a position weighs the same in every batch
    of a size, however long its rows (batches bucketed by length hold few or many positions;
    Adam is blind to the constant scale)."""
    loss = _token_mean_loss(net, batch, kind, ce_matmul_dtype, num_negatives, logq_correction,
                            encoder_dtype, shared_negatives)
    if reduction == "row_sum":
        return loss * (batch.targets > 0).sum() / len(batch)
    return loss


def _token_mean_loss(net: nn.Module, batch: SequenceBatch, kind: str, ce_matmul_dtype: torch.dtype,
                     num_negatives: int, logq_correction: bool, encoder_dtype: torch.dtype,
                     shared_negatives: bool) -> torch.Tensor:
    with torch.autocast(batch.items.device.type, dtype=encoder_dtype,
                        enabled=encoder_dtype != torch.float32):
        hidden = net.encode(**net_inputs(net.encode, batch.model_inputs())).float()  # [B, T, D]
    mask = batch.targets > 0  # [B, T]
    h = hidden[mask]  # [N, D]
    targets = batch.targets[mask]  # [N]
    if kind == "ce":
        # = cross_entropy(score(h), targets) without materialising [N, n_items] logits
        return linear_cross_entropy(h, net.item_embeddings(), targets, matmul_dtype=ce_matmul_dtype)
    if kind == "sampled_softmax":
        # the target against num_negatives uniform items per sequence (or shared by the batch)
        weight = net.item_embeddings()  # [n_items + 1, D]
        shape = (num_negatives,) if shared_negatives else (len(batch), num_negatives)
        negatives = sample_negatives(shape, weight.shape[0] - 1, hidden.device)  # [K] or [B, K]
        return sampled_softmax_cross_entropy(hidden, weight, batch.targets, negatives, logq_correction)
    pos = net.score(h, targets.unsqueeze(1)).squeeze(1)  # [N]
    neg = net.score(h, batch.negatives[mask].unsqueeze(1)).squeeze(1)  # [N]
    return F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos)) + \
        F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg))


class NextItemTask(RecTask):
    """Losses: "ce" (full softmax over the catalogue), "bce" (the paper's one negative per position)
    or "sampled_softmax" (the target against task.num_negatives uniform items per sequence).
    Evaluation: the newest position's scores over the whole catalogue (see RecTask.rank_scores)."""

    LOSSES = ("ce", "bce", "sampled_softmax")

    def __init__(
        self,
        net: nn.Module,
        optimizer,
        scheduler=None,
        loss: str = "ce",
        ks: Sequence[int] = (5, 10, 20),
        mask_history: bool = True,
        weight_decay: float = 0.0,
        ce_matmul_dtype: str = "auto",
        num_negatives: int = 256,
        logq_correction: bool = True,
        encoder_dtype: str = "float32",
        shared_negatives: bool = False,
        loss_reduction: str = "token_mean",
        param_groups: Sequence[Mapping] = (),
        monitor: str = "val/ndcg@10",
        baselines: Sequence = (),
    ) -> None:
        if loss not in self.LOSSES:
            raise ValueError(f"task.loss must be 'ce', 'bce' or 'sampled_softmax', got {loss!r}")
        check_range("task.num_negatives", num_negatives, lo=1)
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"task.loss_reduction must be one of {list(LOSS_REDUCTIONS)}, "
                             f"got {loss_reduction!r}")
        super().__init__(net, optimizer, scheduler, ks=ks, mask_history=mask_history,
                         weight_decay=weight_decay, param_groups=param_groups, monitor=monitor,
                         baselines=baselines)
        # a bad name fails here, not mid-fit; "auto" is settled on the fit device in on_fit_start
        self.ce_matmul_dtype = resolve_matmul_dtype(ce_matmul_dtype, torch.device("cpu"))
        self.encoder_dtype = resolve_matmul_dtype(encoder_dtype, torch.device("cpu"))

    def batch_fields(self, stage: str) -> frozenset[str]:
        if stage == "train":  # BCE reads one sampled negative per position
            return frozenset({"targets", "negatives"} if self.hparams.loss == "bce" else {"targets"})
        return frozenset({"target", "history"})

    def on_fit_start(self) -> None:
        self.ce_matmul_dtype = resolve_matmul_dtype(self.hparams.ce_matmul_dtype, self.device)
        self.encoder_dtype = resolve_matmul_dtype(self.hparams.encoder_dtype, self.device)
        log.info("training encoder in %s (task.encoder_dtype=%s)",
                 str(self.encoder_dtype).removeprefix("torch."), self.hparams.encoder_dtype)
        if self.hparams.loss == "ce":
            log.info("cross-entropy matmuls in %s (task.ce_matmul_dtype=%s)",
                     str(self.ce_matmul_dtype).removeprefix("torch."), self.hparams.ce_matmul_dtype)

    def training_step(self, batch: SequenceBatch, batch_idx: int) -> torch.Tensor:
        loss = next_item_loss(self.net, batch, self.hparams.loss, self.ce_matmul_dtype,
                              self.hparams.num_negatives, self.hparams.logq_correction, self.encoder_dtype,
                              self.hparams.shared_negatives, self.hparams.loss_reduction)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def evaluate(self, batch: SequenceBatch, stage: str) -> None:
        inputs = net_inputs(self.net.encode, batch.model_inputs())
        hidden = self.net.encode(**inputs)[:, -1]  # [B, D] newest position
        self.rank_scores(stage, self.net.score(hidden), batch)  # scores [B, n_items + 1]
