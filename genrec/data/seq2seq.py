"""Datasets and batch of the semantic-ID objective (RPG_ED): history codes in, next item's codes out.

Items are replaced by their semantic IDs, `codes` int64 [n_items + 1, n_digit] (row 0, the padding
item, is all -1), built by genrec/tokenizers. Batches carry codes, not vocabulary token ids: the
model owns its vocabulary layout (`RPGED.codes_to_tokens`). Histories are left-padded with -1
rows, newest item last, at most `max_history` items.

Training uses every position of the training part of a user's sequence as a target (history =
the items before it), the usual seq2seq recipe for generative retrieval; evaluation has one row
per user: the history before the held-out item and the item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from genrec.data.interactions import DataError, LeaveOneOutSplit


@dataclass
class SemanticIDBatch:
    """users:         int64 [B] user ids (0-based)
    history_codes: int64 [B, H, n_digit] codes of the history items, -1 rows = padding (left)
    history:       int64 [B, H] item ids of the history, 0 = padding (baselines, masking)
    target_codes:  int64 [B, n_digit] the next item's codes
    target:        int64 [B] the next item's id (evaluation: ranked against the generated beams)
    candidates:    always None: the sampled protocol ranks catalogue scores, which beams are not
    """

    users: torch.Tensor
    history_codes: torch.Tensor
    history: torch.Tensor
    target_codes: torch.Tensor
    target: torch.Tensor
    candidates: None = None

    def __len__(self) -> int:
        return self.users.shape[0]

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """What the network's encoder takes, by keyword."""
        return {"users": self.users, "history": self.history_codes}


def check_codes(codes: np.ndarray, n_items: int) -> np.ndarray:
    """codes int [n_items + 1, n_digit], row 0 all -1, other rows non-negative."""
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 2 or codes.shape[0] != n_items + 1:
        raise DataError(f"semantic IDs have shape {codes.shape}, expected "
                        f"[n_items + 1 = {n_items + 1}, n_digit]")
    if (codes[0] != -1).any() or (codes[1:] < 0).any():
        raise DataError("semantic IDs: row 0 (padding item) must be -1 and every item's codes >= 0")
    return codes


class SemanticIDTrainDataset(Dataset):
    """One sample per (user, training position >= 1): the items before it -> that item."""

    fields = frozenset({"users", "history_codes", "history", "target_codes", "target"})
    optional_fields = ()

    def __init__(self, split: LeaveOneOutSplit, maxlen: int, codes: np.ndarray) -> None:
        self.split = split
        check_codes(codes, split.sequences.n_items)
        self.max_history = maxlen
        train_len = split.sequences.lengths - 2  # [U] the last two items are valid and test
        users = np.repeat(np.arange(len(train_len)), np.maximum(train_len - 1, 0))  # [N]
        starts = np.cumsum(np.maximum(train_len - 1, 0)) - np.maximum(train_len - 1, 0)  # [U]
        self.samples_user = users
        self.samples_pos = np.arange(len(users)) - starts[users] + 1  # [N] 1 .. len - 1

    def __len__(self) -> int:
        return len(self.samples_user)

    def __getitem__(self, idx: int) -> dict:
        u, pos = int(self.samples_user[idx]), int(self.samples_pos[idx])
        seq = self.split.history(u, "train")
        history = seq[max(0, pos - self.max_history):pos]
        return {"user": u, "history": history, "target": int(seq[pos])}


class SemanticIDEvalDataset(Dataset):
    """One row per user: the history before the held-out item (val or test) and the item."""

    fields = frozenset({"users", "history_codes", "history", "target_codes", "target"})

    def __init__(self, split: LeaveOneOutSplit, stage: str, maxlen: int, codes: np.ndarray,
                 candidates: np.ndarray | None = None) -> None:
        self.split = split
        self.stage = stage
        check_codes(codes, split.sequences.n_items)
        self.max_history = maxlen  # `candidates` (the sampled protocol) do not apply to beams

    def __len__(self) -> int:
        return self.split.sequences.n_users

    def __getitem__(self, u: int) -> dict:
        history = self.split.history(u, self.stage)[-self.max_history:]
        return {"user": u, "history": history, "target": self.split.target(u, self.stage)}


class SemanticIDCollate:
    """Rows of item ids -> a SemanticIDBatch of codes (a class, so it pickles into loader workers)."""

    def __init__(self, codes: np.ndarray) -> None:
        self.codes = torch.from_numpy(np.asarray(codes, dtype=np.int64))  # [n_items + 1, n_digit]

    def __call__(self, rows: list[dict]) -> SemanticIDBatch:
        width = max(1, max(len(r["history"]) for r in rows))
        items = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            if len(r["history"]):
                items[i, width - len(r["history"]):] = r["history"]
        history_items = torch.from_numpy(items)  # [B, H] 0 = padding
        target = torch.tensor([r["target"] for r in rows], dtype=torch.int64)  # [B]
        return SemanticIDBatch(
            users=torch.tensor([r["user"] for r in rows], dtype=torch.int64),
            history_codes=self.codes[history_items],  # [B, H, n_digit], padding item -> -1 row
            history=history_items,
            target_codes=self.codes[target],  # [B, n_digit]
            target=target,
        )
