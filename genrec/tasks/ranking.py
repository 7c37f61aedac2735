"""Candidate ranking (Phoenix's second stage): multi-action losses and one weighted final score.

The network (genrec/models/phoenix.py PhoenixRanker) maps [user | history | candidates] to
logits [B, C, A]: the data's binary actions, then its regression actions (dwell_time);
`net.activate` gives sigmoid probabilities and softplus values.

Training: per action, BCE-with-logits (binary) or the MSE of the softplus output (regression)
over every real candidate (the next events with their labels, and sampled negatives whose labels
are all 0), summed with `action_loss_weights` (default 1 each; 0 drops an action from the loss).

Final score (the order a feed shows): sum_a action_weights[a] * activate(logits)[a] over the
model's actions. Action names come from Phoenix's taxonomy (genrec/data/phoenix_actions.py); a
name outside it is a ConfigError, a name of the taxonomy the data does not have is ignored.

Evaluation (the sampled protocol of the data module): the held-out item first among
batch.cand_items, then the sampled negatives; its rank by final score goes to
`<stage>/sampled/...`, and per action `<stage>/auc/<action>` (BinaryAUROC; regression: MSE and
MAE) over the target and its negatives, as the two-stage evaluation reports the ranker. Since the
negatives carry no action, a binary action's AUC there mixes "will the user interact" with "which
action": it is not the AUC among impressions only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from genrec.data.phoenix_actions import PHOENIX_ACTIONS
from genrec.metrics import rank_of_target
from genrec.rank_zero_log import get_logger
from genrec.tasks.base import RecTask, net_inputs
from genrec.tasks.head_metrics import build_head_metrics, log_head_metrics, update_head_metrics
from genrec.validation import ConfigError, check_range

log = get_logger(__name__)

# Final-score weights used when task.action_weights names no value for an action. favorite,
# reply and report are the values the later Phoenix release publishes; the rest are genrec's
# own (conf/task/ranking.yaml says which is which and why the negatives are mild).
DEFAULT_ACTION_WEIGHTS: dict[str, float] = {
    "favorite": 0.5, "reply": 5.0, "report": -234.0,
    "repost": 1.0, "photo_expand": 0.1, "click": 1.0, "profile_click": 0.5, "video_quality_view": 0.5,
    "share": 1.0, "share_via_dm": 1.0, "share_via_copy_link": 1.0, "dwell": 0.5, "quote": 2.0,
    "quoted_click": 0.5, "follow_author": 2.0, "not_interested": -1.0, "block_author": -2.0,
    "mute_author": -2.0, "dwell_time": 0.1,
}


def action_names(net: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(binary actions, regression actions) of a ranker, in the order of its logit columns."""
    config = net.export_config()
    return tuple(config.get("actions") or ()), tuple(config.get("regression_actions") or ())


def resolve_action_weights(name: str, given: Mapping[str, float] | None, actions: Sequence[str],
                           defaults: Mapping[str, float], lo: float | None = None) -> dict[str, float]:
    """{action: weight} for each of `actions` (`given`, else `defaults`, else 1.0). A name outside
    PHOENIX_ACTIONS is a ConfigError naming `name`; a taxonomy action the model lacks is ignored."""
    given = OmegaConf.to_container(given) if OmegaConf.is_config(given) else dict(given or {})
    unknown = sorted(set(given) - set(PHOENIX_ACTIONS))
    if unknown:
        raise ConfigError(f"{name} names {unknown}, which are not Phoenix actions; the actions are "
                          f"{list(PHOENIX_ACTIONS)} (this model has {list(actions)})")
    weights = {}
    for action in actions:
        value = given.get(action, defaults.get(action, 1.0))
        weights[action] = float(check_range(f"{name}.{action}", value, lo=lo, integer=False))
    absent = sorted(set(given) - set(actions))
    if absent:
        log.info("%s: %s not in this data's actions %s, ignored", name, absent, list(actions))
    return weights


def ranking_losses(logits: torch.Tensor, labels: torch.Tensor, n_binary: int,
                   names: Sequence[str]) -> dict[str, torch.Tensor]:
    """logits, labels float [N, A] (binary columns first) -> {action: mean loss}: BCE-with-logits
    for binary actions, MSE of softplus(logit) for regression actions."""
    losses = {}
    for i, name in enumerate(names):
        if i < n_binary:
            losses[name] = F.binary_cross_entropy_with_logits(logits[:, i], labels[:, i])
        else:
            losses[name] = F.mse_loss(F.softplus(logits[:, i]), labels[:, i])
    return losses


def final_score(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """values float [..., A] (probabilities / softplus outputs), weights float [A] -> [...]."""
    return (values * weights).sum(-1)


class RankingTask(RecTask):
    """The losses, final score and evaluation above."""

    def __init__(
        self,
        net: nn.Module,
        optimizer,
        scheduler=None,
        ks: Sequence[int] = (5, 10, 20),
        mask_history: bool = True,
        weight_decay: float = 0.0,
        action_weights: Mapping[str, float] | None = None,
        action_loss_weights: Mapping[str, float] | None = None,
        param_groups: Sequence[Mapping] = (),
        monitor: str = "val/sampled/ndcg@10",
        baselines: Sequence = (),
    ) -> None:
        binary, regression = action_names(net)
        names = binary + regression
        if not names:
            raise ConfigError("task=ranking: the model has no actions (its data yields none)")
        score_w = resolve_action_weights("task.action_weights", action_weights, names, DEFAULT_ACTION_WEIGHTS)
        loss_w = resolve_action_weights("task.action_loss_weights", action_loss_weights, names, {}, lo=0)
        if not any(loss_w.values()):
            raise ConfigError(f"task.action_loss_weights: every weight is 0 ({loss_w}); nothing to train")
        super().__init__(net, optimizer, scheduler, ks=ks, mask_history=mask_history,
                         weight_decay=weight_decay, param_groups=param_groups, monitor=monitor,
                         baselines=baselines)
        self.names, self.n_binary = names, len(binary)
        self.loss_weights = loss_w
        self.register_buffer("score_weights", torch.tensor([score_w[a] for a in names]), persistent=False)
        self.head_metrics, self.head_keys = build_head_metrics(binary, regression)
        log.info("final score = %s", " + ".join(f"{score_w[a]:g} * {a}" for a in names))

    def batch_fields(self, stage: str) -> frozenset[str]:
        if stage == "train":
            return frozenset({"labels"})
        return frozenset({"labels", "target", "history", "candidates"})

    def logits(self, batch) -> torch.Tensor:
        return self.net(**net_inputs(self.net.forward, batch.model_inputs())).float()  # [B, C, A]

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        real = batch.cand_items > 0  # [B, C]
        logits, labels = self.logits(batch)[real], batch.labels[real].float()  # [N, A] each
        parts = ranking_losses(logits, labels, self.n_binary, self.names)
        loss = sum(w * parts[a] for a, w in self.loss_weights.items() if w)  # weight 0: no term (NaN-safe)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        self.log_dict({f"train/{a}": v.detach() for a, v in parts.items()}, batch_size=len(batch))
        return loss

    def scores(self, batch) -> torch.Tensor:
        """Final scores float [B, C] of batch.cand_items."""
        return final_score(self.net.activate(self.logits(batch)), self.score_weights)

    def evaluate(self, batch, stage: str) -> None:
        logits = self.logits(batch)  # [B, C, A]
        values = self.net.activate(logits)  # [B, C, A]
        first = torch.zeros(len(batch), dtype=torch.long, device=logits.device)  # the target's column
        final = final_score(values, self.score_weights)  # [B, C]
        self.metrics[f"{stage}_sampled"].update(*rank_of_target(final, first))
        # AUC wants logits for binary columns (update_head_metrics applies the sigmoid)
        mixed = torch.cat([logits[..., : self.n_binary], values[..., self.n_binary :]], -1)  # [B, C, A]
        labels = batch.labels.float()  # [B, C, A]
        real = batch.cand_items > 0  # [B, C]
        update_head_metrics(self.head_metrics, stage, mixed[real], labels[real])

    def log_stage_metrics(self, stage: str) -> None:
        shown = f"{stage}/auc/{self.names[0]}" if self.n_binary else None
        log_head_metrics(self, self.head_metrics, self.head_keys, stage, shown)
