"""Torch datasets and the batch type of the next-item objective.

Sequences are LEFT-padded with item 0: the newest event is always the last column, so a
batch of users can be scored from `hidden[:, -1]` and a streaming decode appends every
user's next event at the same column.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from genrec.data.interactions import DataError, LeaveOneOutSplit


@dataclass
class SequenceBatch:
    """A batch of left-padded user sequences.

    items:      int64 [B, T] input item ids, 0 = padding (left)
    timestamps: int64 [B, T] seconds, 0 at padding; None when the data has no time
    users:      int64 [B] user ids (0-based)
    targets:    int64 [B, T] next item at every position (training), 0 = no loss there
    negatives:  int64 [B, T] one sampled negative per position (training, BCE loss)
    target:     int64 [B] the held-out item (evaluation)
    candidates: int64 [B, 1 + n_neg] target then sampled negatives (evaluation, sampled protocol)
    history:    int64 [B, H] every item seen before the target, 0-padded (evaluation, masking)
    """

    items: torch.Tensor
    users: torch.Tensor
    timestamps: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    negatives: torch.Tensor | None = None
    target: torch.Tensor | None = None
    candidates: torch.Tensor | None = None
    history: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.items.shape[0]

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The network's keyword inputs this batch carries (None fields left out): a task calls
        `net.encode(**batch.model_inputs())`, so a new input is a field here + a model argument."""
        inputs = {"items": self.items, "timestamps": self.timestamps}
        return {k: v for k, v in inputs.items() if v is not None}


def left_pad(rows: list[np.ndarray], width: int | None = None) -> torch.Tensor:
    """Stack 1-D int arrays into [len(rows), width], right-aligned, zeros on the left."""
    width = width if width is not None else max((len(r) for r in rows), default=0)
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        if len(r):
            out[i, width - len(r) :] = r[-width:]
    return torch.from_numpy(out)


def sample_negatives(
    rng: np.random.Generator, n_items: int, exclude: np.ndarray, size: int, unique: bool
) -> np.ndarray:
    """Uniform item ids in 1..n_items not in `exclude` (rejection sampling, fast when sparse)."""
    available = n_items - len(np.unique(exclude))
    if available < (size if unique else 1):
        raise ValueError(f"only {available} items are left to sample {size} negatives from")
    picked = np.empty(0, dtype=np.int64)
    while len(picked) < size:
        draw = rng.integers(1, n_items + 1, 2 * size + 8)
        draw = draw[~np.isin(draw, exclude)]
        if unique:
            draw = np.setdiff1d(draw, picked)
            draw = rng.permutation(draw)
        picked = np.concatenate([picked, draw])
    return picked[:size]


class NextItemTrainDataset(Dataset):
    """Every user's training sequence as (inputs, next-item targets), last `maxlen` positions.

    `fields`: the batch fields its rows can carry; each of `optional_fields` is produced when
    the constructor argument of the same name is true (the data module sets it from the task).
    """

    fields = frozenset({"items", "users", "timestamps", "targets", "negatives"})
    optional_fields = ("negatives",)

    def __init__(self, split: LeaveOneOutSplit, maxlen: int, negatives: bool = False) -> None:
        self.split = split
        self.maxlen = maxlen
        self.negatives = negatives
        lengths = split.sequences.lengths - 2
        self.users = np.flatnonzero(lengths >= 2)  # need one input and one target
        self.n_items = split.sequences.n_items

    def __len__(self) -> int:
        return len(self.users)

    def row_lengths(self) -> np.ndarray:
        """int [len(self)] the input length of every row (what the collate pads to)."""
        return np.minimum(self.split.sequences.lengths[self.users] - 3, self.maxlen)

    def __getitem__(self, idx: int) -> dict:
        u = int(self.users[idx])
        seq = self.split.history(u, "train")
        times = self.split.history_times(u, "train")
        out = {
            "user": u,
            "items": seq[:-1][-self.maxlen :],
            "targets": seq[1:][-self.maxlen :],
            "timestamps": None if times is None else times[:-1][-self.maxlen :],
        }
        if self.negatives:
            # torch's RNG: seeded per worker and per epoch by the DataLoader, so reruns repeat
            seed = int(torch.randint(0, 2**62, (1,)).item())
            rng = np.random.default_rng(seed)
            out["negatives"] = sample_negatives(rng, self.n_items, seq, len(out["targets"]), unique=False)
        return out


class NextItemEvalDataset(Dataset):
    """One row per user: the history before the held-out item and the item itself."""

    fields = frozenset({"items", "users", "timestamps", "target", "history", "candidates"})
    optional_fields = ()

    def __init__(self, split: LeaveOneOutSplit, stage: str, maxlen: int, candidates: np.ndarray | None):
        self.split = split
        self.stage = stage
        self.maxlen = maxlen
        self.candidates = candidates  # [n_users, 1 + n_neg] or None

    def __len__(self) -> int:
        return self.split.sequences.n_users

    def row_lengths(self) -> np.ndarray:
        """int [len(self)] the input length of every row (what the collate pads to)."""
        return np.array([min(len(self.split.history(u, self.stage)), self.maxlen) for u in range(len(self))])

    def __getitem__(self, u: int) -> dict:
        history = self.split.history(u, self.stage)
        times = self.split.history_times(u, self.stage)
        return {
            "user": u,
            "items": history[-self.maxlen :],
            "timestamps": None if times is None else times[-self.maxlen :],
            "target": self.split.target(u, self.stage),
            "history": history,
            "candidates": None if self.candidates is None else self.candidates[u],
        }


def collate(rows: list[dict]) -> SequenceBatch:
    """Left-pad every sequence field to the longest row of the batch."""
    width = max(len(r["items"]) for r in rows)
    batch = SequenceBatch(
        items=left_pad([r["items"] for r in rows], width),
        users=torch.tensor([r["user"] for r in rows], dtype=torch.int64),
    )
    if rows[0]["timestamps"] is not None:
        batch.timestamps = left_pad([r["timestamps"] for r in rows], width)
    if "targets" in rows[0]:
        batch.targets = left_pad([r["targets"] for r in rows], width)
    if rows[0].get("negatives") is not None:
        batch.negatives = left_pad([r["negatives"] for r in rows], width)
    if "target" in rows[0]:
        batch.target = torch.tensor([r["target"] for r in rows], dtype=torch.int64)
        batch.history = left_pad([r["history"] for r in rows])
    if rows[0].get("candidates") is not None:
        batch.candidates = torch.from_numpy(np.stack([r["candidates"] for r in rows]))
    return batch


def sampled_candidates(split: LeaveOneOutSplit, stage: str, n_negatives: int, seed: int) -> np.ndarray:
    """The sampled protocol's [n_users, 1 + n_negatives]: target first, then negatives drawn
    uniformly from items the user never touched (seeded, so every run ranks the same lists)."""
    rng = np.random.default_rng([seed, {"val": 1, "test": 2}[stage]])
    seqs = split.sequences
    out = np.empty((seqs.n_users, 1 + n_negatives), dtype=np.int64)
    for u in range(seqs.n_users):
        out[u, 0] = split.target(u, stage)
        try:
            out[u, 1:] = sample_negatives(rng, seqs.n_items, seqs.user(u), n_negatives, unique=True)
        except ValueError as err:
            raise DataError(f"user {u}: {err}; lower data.sampled_negatives") from err
    return out
