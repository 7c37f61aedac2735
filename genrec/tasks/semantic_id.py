"""Semantic-ID generation (RPG_ED): teacher-forced next-token loss, beam-search validation.

Training: cross-entropy of [BOS, s1 .. sn] -> [s1 .. sn, EOS] (the network's vocabulary layout
comes from `net.codes_to_tokens`). Validation and test: the teacher-forced loss (`<stage>/loss`)
and a constrained beam search (genrec/generation) whose ranked items give the held-out item's
rank (outside the beams = a miss), reported as HR/NDCG@K and MRR through `RankingMetrics`; the
best checkpoint is chosen on it (`task.monitor`). Beam search costs, so validation runs every
`trainer.check_val_every_n_epoch` epochs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from genrec.data.seq2seq import SemanticIDBatch
from genrec.generation.generator import generate_items
from genrec.generation.items import beam_ranks
from genrec.generation.trie import PrefixConstraint
from genrec.models.rpg_ed import BOS, EOS
from genrec.tasks.base import RecTask, net_inputs
from genrec.validation import ConfigError, check_range


def seq2seq_loss(net: nn.Module, batch: SemanticIDBatch, label_smoothing: float = 0.0) -> torch.Tensor:
    """Teacher-forced next-token cross-entropy over the target item's tokens and EOS."""
    target = net.codes_to_tokens(batch.target_codes)  # [B, n_digit]
    bos = torch.full_like(target[:, :1], BOS)
    eos = torch.full_like(target[:, :1], EOS)
    inputs = net_inputs(net.forward, batch.model_inputs())
    logits = net(**inputs, decoder_input=torch.cat([bos, target], 1))  # [B, n_digit + 1, V]
    labels = torch.cat([target, eos], 1)  # [B, n_digit + 1]
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), label_smoothing=label_smoothing)


class SemanticIDTask(RecTask):
    """Beams are ranked lists of `beam_size` items, so every K in `ks` must be <= beam_size."""

    def __init__(
        self,
        net: nn.Module,
        optimizer,
        scheduler=None,
        ks: Sequence[int] = (5, 10),
        beam_size: int = 10,
        label_smoothing: float = 0.0,
        mask_history: bool = False,
        weight_decay: float = 0.0,
        param_groups: Sequence[Mapping] = (),
        monitor: str = "val/ndcg@10",
        baselines: Sequence = (),
    ) -> None:
        check_range("task.beam_size", beam_size, lo=1)
        check_range("task.label_smoothing", label_smoothing, lo=0, hi=1, integer=False, hi_open=True)
        if max(ks) > beam_size:
            raise ConfigError(f"task.ks={list(ks)}: beam search ranks only task.beam_size={beam_size} items, "
                              f"so every K must be <= {beam_size}")
        super().__init__(net, optimizer, scheduler, ks=ks, mask_history=mask_history,
                         weight_decay=weight_decay, param_groups=param_groups, monitor=monitor,
                         baselines=baselines)
        self.index = None
        self.constraint: PrefixConstraint | None = None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and self.index is None:
            datamodule.setup(stage)
            self.index = datamodule.index
            cfg = self.net.config
            offsets = [cfg.digit_range(d)[0] for d in range(cfg.n_digit)]
            self.constraint = PrefixConstraint(self.index.item_id2tokens, cfg.codebook_size,
                                               cfg.vocab_size, offsets).to(self.device)

    def training_step(self, batch: SemanticIDBatch, batch_idx: int) -> torch.Tensor:
        loss = seq2seq_loss(self.net, batch, self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def evaluate(self, batch: SemanticIDBatch, stage: str) -> None:
        self.log(f"{stage}/loss", seq2seq_loss(self.net, batch), batch_size=len(batch), sync_dist=True)
        if self.constraint is None:
            raise RuntimeError("SemanticIDTask needs a data module with semantic IDs (data.semantic_ids)")
        self.constraint.to(self.device)
        items, scores = generate_items(self.net, batch.users, batch.history_codes, self.index,
                                       self.constraint, self.hparams.beam_size)  # [B, beam] each
        if self.hparams.mask_history:  # consumed items drop out of the ranked list
            seen = (items[:, :, None] == batch.history[:, None, :]).any(-1) & (items != batch.target[:, None])
            order = torch.sort(seen.to(torch.int8), dim=1, stable=True).indices  # unseen first, order kept
            items = torch.where(seen, 0, items).gather(1, order)
            scores = torch.where(seen, float("-inf"), scores).gather(1, order)
        self.metrics[stage].update(*beam_ranks(items, scores, batch.target))
