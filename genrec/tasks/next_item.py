"""Next-item prediction: the LightningModule of every scorer (SASRec, TiSASRec, +mHC).

It owns the loss, the metrics and the optimizer; the network is a plain nn.Module with
`encode(items, timestamps) -> [B, T, D]` and `score(hidden, items=None)`.
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import nn

from genrec.data.datasets import SequenceBatch
from genrec.rank_zero_log import get_logger
from genrec.metrics import RankingMetrics, full_ranking_ranks, rank_of_target
from genrec.tasks.losses import linear_cross_entropy, resolve_matmul_dtype

log = get_logger(__name__)

# RankingMetrics are synced by torchmetrics before logging; Lightning's advice to sync again
# (one warning per metric key under DDP) does not apply
warnings.filterwarnings("ignore", ".*logging on epoch level in distributed setting.*", PossibleUserWarning)


def next_item_loss(net: nn.Module, batch: SequenceBatch, kind: str,
                   ce_matmul_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The training loss at every position that has a next item (plain function: the
    benchmark's Lightning-free loop calls it too)."""
    hidden = net.encode(batch.items, batch.timestamps)  # [B, T, D]
    mask = batch.targets > 0  # [B, T]
    h = hidden[mask]  # [N, D]
    targets = batch.targets[mask]  # [N]
    if kind == "ce":
        # = cross_entropy(score(h), targets) without materialising [N, n_items] logits
        return linear_cross_entropy(h, net.item_embeddings(), targets, matmul_dtype=ce_matmul_dtype)
    pos = net.score(h, targets.unsqueeze(1)).squeeze(1)  # [N]
    neg = net.score(h, batch.negatives[mask].unsqueeze(1)).squeeze(1)  # [N]
    return F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos)) + \
        F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg))


class NextItemTask(L.LightningModule):
    """Losses: "ce" (full softmax over the catalogue) or "bce" (the paper's one negative per position)."""

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
    ) -> None:
        super().__init__()
        if loss not in ("ce", "bce"):
            raise ValueError(f"task.loss must be 'ce' or 'bce', got {loss!r}")
        self.save_hyperparameters(ignore=["net"])
        self.hparams["net_config"] = net.export_config()  # rebuilds the net without Hydra
        self.net = net
        # a bad name fails here, not mid-fit; "auto" is settled on the fit device in on_fit_start
        self.ce_matmul_dtype = resolve_matmul_dtype(ce_matmul_dtype, torch.device("cpu"))
        ks = tuple(ks)
        self.metrics = nn.ModuleDict({
            "val": RankingMetrics(ks, "val/"),
            "val_sampled": RankingMetrics(ks, "val/sampled/"),
            "test": RankingMetrics(ks, "test/"),
            "test_sampled": RankingMetrics(ks, "test/sampled/"),
            "popularity_test": RankingMetrics(ks, "popularity/test/"),
            "popularity_test_sampled": RankingMetrics(ks, "popularity/test/sampled/"),
        })
        self.register_buffer("popularity", torch.zeros(net.config.n_items + 1), persistent=False)

    def on_fit_start(self) -> None:
        self.ce_matmul_dtype = resolve_matmul_dtype(self.hparams.ce_matmul_dtype, self.device)
        if self.hparams.loss == "ce":
            log.info("cross-entropy matmuls in %s (task.ce_matmul_dtype=%s)",
                     str(self.ce_matmul_dtype).removeprefix("torch."), self.hparams.ce_matmul_dtype)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "item_popularity"):
            self.popularity = datamodule.item_popularity().to(self.device)

    # ---- training ----
    def training_step(self, batch: SequenceBatch, batch_idx: int) -> torch.Tensor:
        loss = next_item_loss(self.net, batch, self.hparams.loss, self.ce_matmul_dtype)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    # ---- evaluation ----
    def _evaluate(self, batch: SequenceBatch, stage: str) -> None:
        hidden = self.net.encode(batch.items, batch.timestamps)[:, -1]  # [B, D] newest position
        scores = self.net.score(hidden)  # [B, n_items + 1]
        self._update(stage, scores, batch)
        if stage == "test":
            self._update("popularity_test", self.popularity.expand_as(scores), batch)

    def _update(self, name: str, scores: torch.Tensor, batch: SequenceBatch) -> None:
        history = batch.history if self.hparams.mask_history else None
        self.metrics[name].update(full_ranking_ranks(scores, batch.target, history))
        if batch.candidates is not None:
            cand = scores.gather(1, batch.candidates)  # [B, 1 + n_neg], target first
            first = torch.zeros(len(batch), dtype=torch.long, device=cand.device)
            self.metrics[f"{name}_sampled"].update(rank_of_target(cand, first))

    def validation_step(self, batch: SequenceBatch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: SequenceBatch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _log_and_reset(self, names: Sequence[str]) -> None:
        for name in names:
            metric = self.metrics[name]
            # compute() syncs the sum states across ranks, so all call it if any rank has data
            # (under DDP a rank's shard may be empty); the values are then global: no sync_dist
            if self.trainer.strategy.reduce_boolean_decision(bool(metric.update_count), all=False):
                self.log_dict(metric.compute(), sync_dist=False)
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_and_reset(["val", "val_sampled"])

    def on_test_epoch_end(self) -> None:
        self._log_and_reset([n for n in self.metrics if "test" in n])

    # ---- optimisation ----
    def configure_optimizers(self):
        decay = [p for p in self.net.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.net.parameters() if p.requires_grad and p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": self.hparams.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        optimizer = self.hparams.optimizer(params=groups)
        if self.hparams.scheduler is None:
            return optimizer
        make_scheduler = self.hparams.scheduler
        if "total_steps" in inspect.signature(make_scheduler).parameters:  # genrec/tasks/schedules.py
            total = self.trainer.estimated_stepping_batches
            if not math.isfinite(total):
                raise ValueError("task.scheduler needs the run's length: set trainer.max_epochs or max_steps")
            make_scheduler = functools.partial(make_scheduler, total_steps=int(total))
        scheduler = make_scheduler(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
