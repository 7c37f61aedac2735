"""Generative recommendation: next-item cross-entropy plus weighted multi-task head losses.

Training, at every position: the fused catalogue cross-entropy of NextItemTask
(`linear_cross_entropy`, no [N, n_items] logits) where a next item exists, plus, over the real
(non-padding) events, each head's loss on `net.task_scores(hidden)` against that event's labels:
BCE-with-logits for the binary heads, MSE for the regression heads, weighted by
`task.head_weights` (default 1.0; a weight of 0 drops the head from the loss, it is still logged).

Evaluation rows are (history + [target])[-maxlen:], so hidden[:, -2] (which has not seen the
target) ranks it over the catalogue (`RecTask.rank_scores`: history masked, sampled protocol
when the batch has candidates) and hidden[:, -1] predicts the held-out event's head labels:
AUC per binary head (`<stage>/auc/<head>`), MSE and MAE per regression head. With
`generation: beam` the model also generates `generation_steps` items by beam search through its
prefill/decode (genrec/generation) and the target is ranked by the order of the beams' first
items (`<stage>/beam/...`); `generation: topk` (default) ranks the catalogue scores only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from genrec.generation.items import beam_ranks
from genrec.generation.next_items import generate_next_items
from genrec.metrics import RankingMetrics
from genrec.models.size_report import log_size_report
from genrec.rank_zero_log import get_logger
from genrec.tasks.base import RecTask, net_inputs
from genrec.tasks.head_metrics import build_head_metrics, log_head_metrics, update_head_metrics
from genrec.tasks.losses import linear_cross_entropy, resolve_matmul_dtype
from genrec.validation import ConfigError, check_range

log = get_logger(__name__)

GENERATIONS = ("topk", "beam")


def head_names(net: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(binary heads, regression heads) of a network, in the order of its `task_scores` columns."""
    config = net.export_config()
    return tuple(config.get("heads") or ()), tuple(config.get("regression_heads") or ())


def head_losses(scores: torch.Tensor, labels: torch.Tensor, binary: Sequence[str],
                regression: Sequence[str]) -> dict[str, torch.Tensor]:
    """scores, labels float [N, H] (H = binary then regression heads) -> {head: mean loss}."""
    losses = {}
    for i, name in enumerate(binary):
        losses[name] = F.binary_cross_entropy_with_logits(scores[:, i], labels[:, i])
    for j, name in enumerate(regression, start=len(binary)):
        losses[name] = F.mse_loss(scores[:, j], labels[:, j])
    return losses


def generative_loss(net: nn.Module, batch, head_weights: Mapping[str, float],
                    ce_matmul_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, dict]:
    """(total loss, {"ce": .., <head>: ..}) of one training batch (a BehaviorBatch)."""
    hidden = net.encode(**net_inputs(net.encode, batch.model_inputs())).float()  # [B, T, D]
    has_next = batch.targets > 0  # [B, T]
    parts = {"ce": linear_cross_entropy(hidden[has_next], net.item_embeddings(), batch.targets[has_next],
                                        matmul_dtype=ce_matmul_dtype)}
    binary, regression = head_names(net)
    if binary or regression:
        real = batch.items > 0  # [B, T] the events themselves (padding has no labels)
        scores = net.task_scores(hidden[real]).float()  # [N, H]
        parts |= head_losses(scores, batch.labels[real].float(), binary, regression)
    total = parts["ce"]
    for name, weight in head_weights.items():
        if weight:  # weight 0: no term at all (0 * NaN would still poison the sum)
            total = total + weight * parts[name]
    return total, parts


class GenerativeTask(RecTask):
    """The loss and evaluation above; `head_weights: {head: weight}` names heads of the network
    (its binary `heads`, then its `regression_heads`, both from the data)."""

    def __init__(
        self,
        net: nn.Module,
        optimizer,
        scheduler=None,
        ks: Sequence[int] = (5, 10, 20),
        mask_history: bool = True,
        weight_decay: float = 0.0,
        ce_matmul_dtype: str = "auto",
        head_weights: Mapping[str, float] | None = None,
        generation: str = "topk",
        generation_steps: int = 1,
        beam_size: int | None = None,
        param_groups: Sequence[Mapping] = (),
        monitor: str = "val/ndcg@10",
        baselines: Sequence = (),
    ) -> None:
        weights = resolve_head_weights(net, head_weights)
        if generation not in GENERATIONS:
            raise ConfigError(f"task.generation={generation!r}: must be one of {list(GENERATIONS)}")
        check_range("task.generation_steps", generation_steps, lo=1)
        beam = check_range("task.beam_size", beam_size, lo=1, optional=True) or max(ks)
        if generation == "beam" and max(ks) > beam:
            raise ConfigError(f"task.ks={list(ks)}: beam search ranks only task.beam_size={beam} items, "
                              f"so every K must be <= {beam}")
        super().__init__(net, optimizer, scheduler, ks=ks, mask_history=mask_history,
                         weight_decay=weight_decay, param_groups=param_groups, monitor=monitor,
                         baselines=baselines)
        self.head_weights = weights
        self.beam_size = beam
        self.ce_matmul_dtype = resolve_matmul_dtype(ce_matmul_dtype, torch.device("cpu"))
        if generation == "beam":
            for stage in ("val", "test"):
                self.metrics[f"{stage}_beam"] = RankingMetrics(tuple(ks), f"{stage}/beam/")
        self.head_metrics, self.head_keys = build_head_metrics(*head_names(net))

    def batch_fields(self, stage: str) -> frozenset[str]:
        labels = {"labels"} if self.head_weights else set()
        if stage == "train":
            return frozenset({"targets"} | labels)
        return frozenset({"target", "history"} | labels)

    def on_fit_start(self) -> None:
        self.ce_matmul_dtype = resolve_matmul_dtype(self.hparams.ce_matmul_dtype, self.device)
        log.info("cross-entropy matmuls in %s (task.ce_matmul_dtype=%s)",
                 str(self.ce_matmul_dtype).removeprefix("torch."), self.hparams.ce_matmul_dtype)
        datamodule = getattr(self.trainer, "datamodule", None)  # KV cache bytes at the data's maxlen
        title = f"{type(self.net).__name__} size"
        log_size_report(self.net, getattr(datamodule, "maxlen", None), title=title)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, parts = generative_loss(self.net, batch, self.head_weights, self.ce_matmul_dtype)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        self.log_dict({f"train/{name}": value.detach() for name, value in parts.items()},
                      batch_size=len(batch))
        return loss

    def evaluate(self, batch, stage: str) -> None:
        hidden = self.net.encode(**net_inputs(self.net.encode, batch.model_inputs()))  # [B, T, D]
        self.rank_scores(stage, self.net.score(hidden[:, -2]), batch)  # [B, n_items + 1] before the target
        if self.head_weights:
            scores = self.net.task_scores(hidden[:, -1]).float()  # [B, H] the held-out event
            update_head_metrics(self.head_metrics, stage, scores, batch.labels[:, -1].float())
        if self.hparams.generation == "beam":
            self._rank_generated(batch, stage)

    def _rank_generated(self, batch, stage: str) -> None:
        prompt_items = batch.items[:, :-1]  # [B, T - 1] the target is what to generate
        feats = getattr(batch, "dense_features", None)
        feats = None if feats is None else feats[:, :-1]  # [B, T - 1, F]
        banned = torch.zeros(len(batch), self.net.item_embeddings().shape[0], dtype=torch.bool,
                             device=prompt_items.device)  # [B, n_items + 1]
        banned[:, 0] = True
        if self.hparams.mask_history:  # as full_ranking_ranks: history out, the target never
            banned.scatter_(1, batch.history, True)
            banned.scatter_(1, batch.target[:, None], False)
        items, scores = generate_next_items(self.net, prompt_items, feats, banned,
                                            self.hparams.generation_steps, self.beam_size)
        self.metrics[f"{stage}_beam"].update(*beam_ranks(items, scores, batch.target))

    def log_stage_metrics(self, stage: str) -> None:
        binary = head_names(self.net)[0]
        shown = f"{stage}/auc/{binary[0]}" if binary else None  # engagement: first in the data's HEADS
        log_head_metrics(self, self.head_metrics, self.head_keys, stage, shown)


def resolve_head_weights(net: nn.Module, head_weights: Mapping[str, float] | None) -> dict[str, float]:
    """{head: weight} for every head of the network (1.0 unless configured); ConfigError for a
    name the network has no head for, or a negative weight."""
    binary, regression = head_names(net)
    given = head_weights or {}
    given = OmegaConf.to_container(given) if OmegaConf.is_config(given) else dict(given)
    unknown = sorted(set(given) - set(binary) - set(regression))
    if unknown:
        raise ConfigError(f"task.head_weights names {unknown}, which the model has no head for; its heads "
                          f"are {list(binary + regression)} (from the data)")
    weights = {name: 1.0 for name in binary + regression}
    for name, weight in given.items():
        weights[name] = float(check_range(f"task.head_weights.{name}", weight, lo=0, integer=False))
    return weights
