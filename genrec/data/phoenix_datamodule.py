"""The data module of Phoenix (two-tower retrieval and the candidate-isolation ranker).

SequenceDataModule (leave-one-out, sampled protocol, seeded loaders) plus, computed once at
setup and aligned with `Sequences.items`: each event's action labels (phoenix_actions.py),
its surface (behaviour field `source`), and each item's author (behaviour field `author`,
fixed per item; 0 when the data has none). The datasets are Hydra partials: retrieval
training (RetrievalTrainDataset), ranker training (RankerTrainDataset), evaluation
(PhoenixEvalDataset); the data module adds split, maxlen and the arrays above.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from genrec.data.behavior_schema import has
from genrec.data.datamodule import SequenceDataModule
from genrec.data.interactions import Sequences
from genrec.data.phoenix_actions import action_table, phoenix_actions
from genrec.data.phoenix_datasets import (
    MODEL_INPUTS,
    PhoenixEvalDataset,
    RetrievalTrainDataset,
    collate_phoenix,
)
from genrec.rank_zero_log import get_logger

log = get_logger(__name__)


def authors_of_items(seqs: Sequences) -> np.ndarray:
    """int64 [n_items + 1] each item's author (0 unknown; index 0 = padding). An item whose
    events disagree keeps its most recent event's author (logged)."""
    out = np.zeros(seqs.n_items + 1, dtype=np.int64)
    if not has(seqs, "author"):
        return out
    authors = seqs.columns["author"].astype(np.int64)  # [N]
    out[seqs.items] = authors  # a repeated index keeps one of its values
    clash = int((out[seqs.items] != authors).sum())
    if clash:
        log.warning("%d events name another author than their item's (%d items); using one per item",
                    clash, len(np.unique(seqs.items[out[seqs.items] != authors])))
    return out


class PhoenixDataModule(SequenceDataModule):
    """Every argument is SequenceDataModule's; the default datasets are retrieval training and
    Phoenix evaluation (the ranker's configs pass RankerTrainDataset as data.train_dataset)."""

    def __init__(self, source, train_dataset: Callable = RetrievalTrainDataset,
                 eval_dataset: Callable = PhoenixEvalDataset, collate: Callable = collate_phoenix,
                 **kwargs) -> None:
        super().__init__(source, train_dataset=train_dataset, eval_dataset=eval_dataset, collate=collate,
                         **kwargs)
        self.actions: tuple[list[str], list[str]] = ([], [])
        self.action_labels: np.ndarray | None = None  # float32 [N, A]
        self.surfaces: np.ndarray | None = None  # int64 [N]
        self._item_authors: np.ndarray | None = None  # int64 [n_items + 1]

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.action_labels is not None:
            return
        t0 = time.perf_counter()
        seqs = self.split.sequences
        self.actions = phoenix_actions(seqs)
        self.action_labels = action_table(seqs, *self.actions)
        self.surfaces = (seqs.columns["source"].astype(np.int64) if has(seqs, "source")
                         else np.zeros(len(seqs.items), dtype=np.int64))
        self._item_authors = authors_of_items(seqs)
        log.info("%s: Phoenix actions %s + regression %s, %d authors, %d surfaces for %d events in %.2f s",
                 self.source.name, self.actions[0], self.actions[1], int(self._item_authors.max()),
                 int(self.surfaces.max()), len(seqs.items), time.perf_counter() - t0)

    def _ready(self) -> None:
        if self.action_labels is None:
            self.setup()

    def model_kwargs(self) -> dict:
        self._ready()
        return {
            "n_items": self.n_items,
            "n_users": self.sequences.n_users,
            "n_authors": int(self._item_authors.max()) + 1,
            "n_surfaces": int(self.surfaces.max()) + 1,
            "actions": list(self.actions[0]),
            "regression_actions": list(self.actions[1]),
        }

    def input_names(self) -> frozenset[str]:
        return frozenset(MODEL_INPUTS)

    def dataset_kwargs(self) -> dict:
        self._ready()
        return {"item_authors": self._item_authors, "surfaces": self.surfaces,
                "actions": self.action_labels, "n_binary": len(self.actions[0])}

    def item_authors(self) -> torch.Tensor:
        """int64 [n_items + 1] each item's author (0 unknown; index 0 = padding)."""
        self._ready()
        return torch.from_numpy(self._item_authors.copy())

    def catalogue(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(items int64 [n_items] = 1..n_items, their authors int64 [n_items]): every item the
        retrieval index holds."""
        authors = self.item_authors()
        return torch.arange(1, self.n_items + 1, dtype=torch.int64), authors[1:]
