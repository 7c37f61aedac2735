"""Baselines any task can rank next to its model (`task.baselines` in conf/task/*.yaml).

A baseline has a `name` (its metrics are logged as "<name>/test/..."), `fit(datamodule)`
(called by RecTask.setup) and `scores(batch, device) -> [B, n_items + 1]` catalogue scores,
which the task ranks with the same protocols as its model.
"""

from __future__ import annotations

import torch


class PopularityBaseline:
    """Scores every item by its training-row interaction count, the same for every user."""

    name = "popularity"

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None  # [n_items + 1]

    def fit(self, datamodule) -> None:
        self.counts = datamodule.item_popularity()

    def scores(self, batch, device: torch.device) -> torch.Tensor:
        if self.counts is None:
            raise RuntimeError("PopularityBaseline.scores before fit(datamodule)")
        if self.counts.device != torch.device(device):
            self.counts = self.counts.to(device)
        return self.counts.expand(len(batch), -1)  # [B, n_items + 1]
