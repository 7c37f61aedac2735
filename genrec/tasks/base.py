"""RecTask: what every task repeats, so a task subclass holds only its loss and evaluation.

Owned here: the hyperparameters and the `net_config` that `genrec.run.checkpoint.build_net`
rebuilds the network from; the metric dicts and their DDP-safe logging; the monitored key
(`task.monitor`, read by checkpointing, early stopping and `optimized_metric`); the optimizer
with configurable parameter groups and a scheduler that may take the run's `total_steps`;
the baselines (genrec/tasks/baselines.py) that any task can rank next to its model.

A subclass says which batch fields it reads (`batch_fields(stage)`); `build_components` tells
the data module before loaders exist, so no data config depends on a task setting.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
from collections.abc import Iterable, Mapping, Sequence

import lightning as L
import torch
from omegaconf import OmegaConf
from torch import nn

from genrec.metrics import RankingMetrics, full_ranking_ranks, rank_of_target
from genrec.validation import ConfigError, check_task_args


def net_inputs(fn, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of `inputs` that `fn` takes as keywords (all of them if it takes **kwargs):
    a batch may carry inputs a given network ignores (timestamps for SASRec)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(inputs)
    return {k: v for k, v in inputs.items() if k in params}


def required_inputs(net: nn.Module) -> frozenset[str]:
    """The batch inputs a network cannot run without: its `required_inputs` attribute when it
    declares one, else `items` plus `timestamps` for a model with `needs_time`."""
    declared = getattr(net, "required_inputs", None)
    if declared is not None:
        return frozenset(declared)
    return frozenset({"items", "timestamps"} if getattr(net, "needs_time", False) else {"items"})


def parameter_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float,
                     specs: Sequence[Mapping] = ()) -> list[dict]:
    """Optimizer param groups; every trainable parameter lands in exactly one.

    specs: [{name, match, **optimizer options}] in order: `match` is a regex searched in the
    parameter's name (e.g. "item_emb"), the first spec that matches takes it, with its own
    options (lr, weight_decay, ...). The rest: "decay" (dim >= 2, `weight_decay`) and
    "no_decay" (biases, norms: 0). A spec that matches nothing is a ConfigError.
    """
    remaining = [(n, p) for n, p in named if p.requires_grad]
    groups = []
    for i, spec in enumerate(specs):
        options = OmegaConf.to_container(spec) if OmegaConf.is_config(spec) else dict(spec)
        name = options.pop("name", f"group{i}")
        if "match" not in options:
            raise ConfigError(f"task.param_groups[{i}] ({name}): needs a 'match' regex")
        pattern = re.compile(options.pop("match"))
        picked = [p for n, p in remaining if pattern.search(n)]
        if not picked:
            raise ConfigError(f"task.param_groups[{i}] ({name}): match {pattern.pattern!r} selects no "
                              f"parameter; names are like {[n for n, _ in remaining[:3]]}")
        remaining = [(n, p) for n, p in remaining if not pattern.search(n)]
        groups.append({"name": name, "params": picked, **options})
    decay = [p for _, p in remaining if p.dim() >= 2]
    no_decay = [p for _, p in remaining if p.dim() < 2]
    groups += [{"name": "decay", "params": decay, "weight_decay": weight_decay},
               {"name": "no_decay", "params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


class RecTask(L.LightningModule):
    """Base of every task. Subclasses implement `training_step` and `evaluate(batch, stage)`
    and call `rank_scores` (or `self.metrics[...]` directly) with the ranks they compute.

    Metric dicts: "val", "test" (full ranking), "val_sampled", "test_sampled" (the sampled
    protocol), and "<baseline>_test[_sampled]" for each baseline (logged as "<baseline>/test/...").
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer,
        scheduler=None,
        ks: Sequence[int] = (5, 10, 20),
        mask_history: bool = True,
        weight_decay: float = 0.0,
        param_groups: Sequence[Mapping] = (),
        monitor: str = "val/ndcg@10",
        baselines: Sequence = (),
    ) -> None:
        check_task_args(locals())  # ks, weight_decay, lr: named errors when out of range
        super().__init__()
        # collects the subclass's __init__ arguments too; nets and baselines are modules/objects
        self.save_hyperparameters(ignore=["net", "baselines"])
        self.hparams["net_config"] = net.export_config()  # rebuilds the net without Hydra
        self.net = net
        self.monitor = monitor
        self.baselines = list(baselines)
        ks = tuple(ks)
        metrics = {}
        for stage in ("val", "test"):
            metrics[stage] = RankingMetrics(ks, f"{stage}/")
            metrics[f"{stage}_sampled"] = RankingMetrics(ks, f"{stage}/sampled/")
        for baseline in self.baselines:
            metrics[f"{baseline.name}_test"] = RankingMetrics(ks, f"{baseline.name}/test/")
            metrics[f"{baseline.name}_test_sampled"] = RankingMetrics(ks, f"{baseline.name}/test/sampled/")
        self.metrics = nn.ModuleDict(metrics)

    # ---- what the data must provide ----
    def batch_fields(self, stage: str) -> frozenset[str]:
        """Batch fields this task reads besides the model inputs; stage "train" or "eval"."""
        return frozenset()

    # ---- evaluation ----
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:
            for baseline in self.baselines:
                baseline.fit(datamodule)

    def evaluate(self, batch, stage: str) -> None:
        raise NotImplementedError

    def validation_step(self, batch, batch_idx: int) -> None:
        self.evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self.evaluate(batch, "test")
        for baseline in self.baselines:
            self.rank_scores(f"{baseline.name}_test", baseline.scores(batch, self.device), batch)

    def rank_scores(self, name: str, scores: torch.Tensor, batch) -> None:
        """Catalogue scores [B, n_items + 1] -> ranks of batch.target into metrics[name]
        (history removed when mask_history) and, when the batch has candidates [B, 1 + n_neg]
        (target first), into metrics[name + "_sampled"]."""
        history = batch.history if self.hparams.mask_history else None
        self.metrics[name].update(*full_ranking_ranks(scores, batch.target, history))
        if batch.candidates is not None:
            cand = scores.gather(1, batch.candidates)  # [B, 1 + n_neg], target first
            first = torch.zeros(len(batch), dtype=torch.long, device=cand.device)
            self.metrics[f"{name}_sampled"].update(*rank_of_target(cand, first))

    def _log_and_reset(self, names: Sequence[str]) -> None:
        for name in names:
            metric = self.metrics[name]
            # compute() syncs the sum states across ranks, so all call it if any rank has data
            # (under DDP a rank's shard may be empty); the values are then global: no sync_dist
            if self.trainer.strategy.reduce_boolean_decision(bool(metric.update_count), all=False):
                self.log_dict(metric.compute(), sync_dist=False)
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_and_reset([n for n in self.metrics if n.startswith("val")])
        self.log_stage_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_and_reset([n for n in self.metrics if not n.startswith("val")])
        self.log_stage_metrics("test")

    def log_stage_metrics(self, stage: str) -> None:
        """Log and reset a subclass's own metrics (per-head AUC...) at the end of a val/test pass."""

    # ---- optimisation ----
    def configure_optimizers(self):
        groups = parameter_groups(self.net.named_parameters(), self.hparams.weight_decay,
                                  self.hparams.param_groups)
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
