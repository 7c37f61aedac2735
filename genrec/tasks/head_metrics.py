"""Per-head (per-action) evaluation metrics shared by the tasks that predict feedback flags.

GenerativeTask (heads of the generative model) and RankingTask (Phoenix actions) both keep, per
stage, a BinaryAUROC per binary head and MSE + MAE per regression head, logged as
`<stage>/auc/<head>`, `<stage>/mse/<head>`, `<stage>/mae/<head>`.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import BinaryAUROC
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError


def build_head_metrics(binary: Sequence[str], regression: Sequence[str],
                       prefix: str = "") -> tuple[nn.ModuleDict, dict]:
    """Per stage: BinaryAUROC per binary head, MSE and MAE per regression head. Returns the
    metrics (keys `<stage>_<kind>_<i>`, ModuleDict-safe) and key -> logged name (`val/auc/like`,
    or `val/<prefix>auc/like` with a prefix such as "event/"); binary heads come first."""
    metrics: dict[str, Metric] = {}
    names: dict[str, str] = {}
    for stage in ("val", "test"):
        for i, head in enumerate(binary):
            key = f"{stage}_auc_{i}"
            metrics[key], names[key] = BinaryAUROC(), f"{stage}/{prefix}auc/{head}"
        for j, head in enumerate(regression, start=len(binary)):
            for kind, metric in (("mse", MeanSquaredError()), ("mae", MeanAbsoluteError())):
                key = f"{stage}_{kind}_{j}"
                metrics[key], names[key] = metric, f"{stage}/{prefix}{kind}/{head}"
    return nn.ModuleDict(metrics), names


def update_head_metrics(metrics: nn.ModuleDict, stage: str, scores: torch.Tensor,
                        labels: torch.Tensor) -> None:
    """scores (logits, then regression outputs) and labels float [B, H] into the stage's metrics."""
    for key, metric in metrics.items():
        kind_stage, kind, i = key.split("_")
        if kind_stage != stage:
            continue
        i = int(i)
        if kind == "auc":  # probabilities, not logits: torchmetrics would sigmoid only some batches
            metric.update(torch.sigmoid(scores[:, i]), (labels[:, i] > 0.5).long())
        else:
            metric.update(scores[:, i], labels[:, i])


def log_head_metrics(module: L.LightningModule, metrics: nn.ModuleDict, names: dict, stage: str,
                     shown: str | None = None) -> None:
    """Log and reset the stage's head metrics (`shown` goes to the progress bar). As
    RecTask._log_and_reset: compute() syncs across ranks, so every rank calls it or none."""
    for key, metric in metrics.items():
        name = names[key]
        if not name.startswith(f"{stage}/"):
            continue
        reduce = module.trainer.strategy.reduce_boolean_decision
        if reduce(bool(metric.update_count), all=False) and is_defined(metric, reduce):
            module.log(name, metric.compute(), prog_bar=name == shown, sync_dist=False)
        metric.reset()


def is_defined(metric: Metric, reduce=lambda flag, all: flag) -> bool:  # noqa: A002
    """False for an AUC whose labels (over every rank: `reduce` is the strategy's
    reduce_boolean_decision) are all one class: torchmetrics would report 0.0 for it, which reads
    as a perfectly wrong model; the key is left out instead."""
    if not isinstance(metric, BinaryAUROC):
        return True
    target = torch.cat(metric.target) if metric.target else torch.zeros(0)
    return reduce(bool((target == 1).any()), all=False) and reduce(bool((target == 0).any()), all=False)
