"""Torch datasets and the batch type of the generative (behaviour) objective.

Like the next-item datasets (genrec/data/datasets.py): LEFT padding, the newest event in the
last column. Every input position also carries its dense features (RAW; the model normalises)
and its event's head labels. The features and labels are computed once per data set by the
data module (genrec/data/features.py) as flat arrays aligned with `Sequences.items`; the
datasets only slice them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from genrec.data.datasets import left_pad
from genrec.data.interactions import LeaveOneOutSplit


@dataclass
class BehaviorBatch:
    """A batch of left-padded behaviour sequences (B users, T positions, F features, H heads).

    items:          int64 [B, T] input item ids, 0 = padding (left)
    users:          int64 [B] user ids (0-based)
    dense_features: float32 [B, T, F] RAW features of each input position (0 at padding)
    targets:        int64 [B, T] next item at every position (training), 0 = no loss there
    labels:         float32 [B, T, H] each input event's head labels (0 at padding); columns:
                    binary heads, then regression heads (data module's model_kwargs order)
    target:         int64 [B] the held-out item (evaluation)
    history:        int64 [B, Hh] every item seen before the target, 0-padded (evaluation, masking)
    candidates:     int64 [B, 1 + n_neg] target then sampled negatives (evaluation, sampled protocol)

    Evaluation rows: items = (history + [target])[-maxlen:], so hidden[:, -2] ranks the target and
    hidden[:, -1] / labels[:, -1] are the held-out event's head prediction / labels.
    """

    items: torch.Tensor
    users: torch.Tensor
    dense_features: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor | None = None
    target: torch.Tensor | None = None
    history: torch.Tensor | None = None
    candidates: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.items.shape[0]

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The network's keyword inputs: `net.encode(**batch.model_inputs())`."""
        return {"items": self.items, "dense_features": self.dense_features}


def left_pad_rows(rows: list[np.ndarray], width: int) -> torch.Tensor:
    """Stack float arrays [t_i, C] into float32 [len(rows), width, C], right-aligned, zeros left."""
    channels = rows[0].shape[1]
    out = np.zeros((len(rows), width, channels), dtype=np.float32)
    for i, r in enumerate(rows):
        if len(r):
            out[i, width - len(r) :] = r[-width:]
    return torch.from_numpy(out)


class BehaviorTrainDataset(Dataset):
    """Every user's training sequence (without the validation and test targets) as inputs, next-item
    targets, the inputs' features and labels; last `maxlen` positions.

    features: float32 [N, F] raw features of every event (aligned with split.sequences.items)
    labels:   float32 [N, H] head labels of every event
    """

    fields = frozenset({"items", "users", "dense_features", "targets", "labels"})
    optional_fields = ()

    def __init__(self, split: LeaveOneOutSplit, maxlen: int, features: np.ndarray,
                 labels: np.ndarray) -> None:
        seqs = split.sequences
        if len(features) != len(seqs.items) or len(labels) != len(seqs.items):
            raise ValueError(f"features ({len(features)}) and labels ({len(labels)}) rows must match the "
                             f"{len(seqs.items)} events")
        self.split = split
        self.maxlen = maxlen
        self.features = features
        self.labels = labels
        self.users = np.flatnonzero(seqs.lengths - 2 >= 2)  # need one input and one target

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, idx: int) -> dict:
        u = int(self.users[idx])
        seq = self.split.history(u, "train")  # [n]
        start = int(self.split.sequences.offsets[u])
        rows = slice(start, start + len(seq) - 1)  # the inputs' events: seq[:-1]
        return {
            "user": u,
            "items": seq[:-1][-self.maxlen :],
            "targets": seq[1:][-self.maxlen :],
            "dense_features": self.features[rows][-self.maxlen :],
            "labels": self.labels[rows][-self.maxlen :],
        }


class BehaviorEvalDataset(Dataset):
    """One row per user: items = (history + [target])[-maxlen:] with their features and labels,
    the target, the full history (masking) and the sampled candidates (or None)."""

    fields = frozenset({"items", "users", "dense_features", "labels", "target", "history", "candidates"})
    optional_fields = ()

    def __init__(self, split: LeaveOneOutSplit, stage: str, maxlen: int, candidates: np.ndarray | None,
                 features: np.ndarray, labels: np.ndarray) -> None:
        self.split = split
        self.stage = stage
        self.maxlen = maxlen
        self.candidates = candidates  # [n_users, 1 + n_neg] or None
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return self.split.sequences.n_users

    def __getitem__(self, u: int) -> dict:
        history = self.split.history(u, self.stage)
        target = self.split.target(u, self.stage)
        start = int(self.split.sequences.offsets[u])
        rows = slice(start, start + len(history) + 1)  # history then the target event
        return {
            "user": u,
            "items": np.append(history, target)[-self.maxlen :],
            "dense_features": self.features[rows][-self.maxlen :],
            "labels": self.labels[rows][-self.maxlen :],
            "target": target,
            "history": history,
            "candidates": None if self.candidates is None else self.candidates[u],
        }


def collate_behavior(rows: list[dict]) -> BehaviorBatch:
    """Left-pad every sequence field to the longest row of the batch."""
    width = max(len(r["items"]) for r in rows)
    batch = BehaviorBatch(
        items=left_pad([r["items"] for r in rows], width),
        users=torch.tensor([r["user"] for r in rows], dtype=torch.int64),
        dense_features=left_pad_rows([r["dense_features"] for r in rows], width),
        labels=left_pad_rows([r["labels"] for r in rows], width),
    )
    if "targets" in rows[0]:
        batch.targets = left_pad([r["targets"] for r in rows], width)
    if "target" in rows[0]:
        batch.target = torch.tensor([r["target"] for r in rows], dtype=torch.int64)
        batch.history = left_pad([r["history"] for r in rows])
    if rows[0].get("candidates") is not None:
        batch.candidates = torch.from_numpy(np.stack([r["candidates"] for r in rows]))
    return batch
