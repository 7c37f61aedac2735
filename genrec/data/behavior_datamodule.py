"""The data module of the generative recommendation model: SequenceDataModule plus dense
behaviour features and multi-task head labels per event (genrec/data/features.py).

At setup it computes, once per data set (vectorised, seconds for ML-1M), every event's RAW
features (the first `num_features` layout columns) and head labels as flat arrays aligned with
`Sequences.items`, and fits the feature normalisation on the training rows only (each user's
events without the validation and test targets). The statistics go to the model through
`model_kwargs()` (buffers, so they are saved in the checkpoint); batches carry raw features.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from genrec.data.behavior_datasets import BehaviorEvalDataset, BehaviorTrainDataset, collate_behavior
from genrec.data.datamodule import SequenceDataModule
from genrec.data.features import (
    MAX_FEATURES,
    FeatureNormalizer,
    feature_table,
    head_names,
    label_table,
    select_features,
    training_rows,
)
from genrec.rank_zero_log import get_logger
from genrec.validation import check_range

log = get_logger(__name__)


class BehaviorDataModule(SequenceDataModule):
    """`num_features` (1..1024): the first num_features columns of features.FEATURE_LAYOUT, zero
    columns past its width. Every other argument is SequenceDataModule's."""

    def __init__(
        self,
        source,
        num_features: int = 16,
        train_dataset: Callable = BehaviorTrainDataset,
        eval_dataset: Callable = BehaviorEvalDataset,
        collate: Callable = collate_behavior,
        **kwargs,
    ) -> None:
        self.num_features = check_range("data.num_features", num_features, lo=1, hi=MAX_FEATURES)
        super().__init__(source, train_dataset=train_dataset, eval_dataset=eval_dataset, collate=collate,
                         **kwargs)
        self.features: np.ndarray | None = None  # float32 [N, num_features] raw, aligned with items
        self.labels: np.ndarray | None = None  # float32 [N, H]
        self.normalizer: FeatureNormalizer | None = None
        self.heads: tuple[list[str], list[str]] = ([], [])

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.features is not None:
            return
        t0 = time.perf_counter()
        seqs = self.split.sequences
        self.features = select_features(feature_table(seqs), self.num_features)
        self.normalizer = FeatureNormalizer.fit(self.features, training_rows(seqs))
        self.heads = head_names(seqs)
        self.labels = label_table(seqs, self.heads)
        log.info("%s: %d dense features and heads %s + regression %s for %d events in %.2f s",
                 self.source.name, self.num_features, self.heads[0], self.heads[1], len(seqs.items),
                 time.perf_counter() - t0)

    def model_kwargs(self) -> dict:
        if self.features is None:
            self.setup()
        return {
            "n_items": self.n_items,
            "num_features": self.num_features,
            "feature_mean": [float(x) for x in self.normalizer.mean],
            "feature_std": [float(x) for x in self.normalizer.std],
            "heads": list(self.heads[0]),
            "regression_heads": list(self.heads[1]),
        }

    def input_names(self) -> frozenset[str]:
        return frozenset({"items", "dense_features"})

    def dataset_kwargs(self) -> dict:
        if self.features is None:
            self.setup()
        return {"features": self.features, "labels": self.labels}
