"""Torch datasets and the batch type of Phoenix (two-tower retrieval and the candidate ranker).

Every history element is an event (item, author, binary actions, surface); LEFT padding, the
newest event in the last column (as genrec/data/datasets.py). The per-event arrays are built
once by the data module (phoenix_datamodule.py), aligned with `Sequences.items`:

  item_authors int64 [n_items + 1]  each item's author (0 unknown; index 0 = padding)
  surfaces     int64 [N]            each event's surface (behaviour field `source`, 0 unknown)
  actions      float32 [N, A]       each event's action labels, binary then regression columns
  n_binary     int                  A_bin, the number of binary columns

Users are 1-based in batches (the Sequences user index + 1), so id 0 is never a user.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from genrec.data.behavior_datasets import left_pad_rows
from genrec.data.datamodule import training_popularity
from genrec.data.datasets import left_pad, sample_negatives
from genrec.data.interactions import DataError, LeaveOneOutSplit

MODEL_INPUTS = ("users", "hist_items", "hist_authors", "hist_actions", "hist_surfaces", "cand_items",
                "cand_authors", "cand_surfaces")
HISTORY_FIELDS = frozenset({"users", "hist_items", "hist_authors", "hist_actions", "hist_surfaces"})
CANDIDATE_FIELDS = frozenset({"cand_items", "cand_authors", "cand_surfaces", "labels"})


@dataclass
class PhoenixBatch:
    """B rows, S history positions, C candidates, A = A_bin + A_reg actions.

    users:         int64 [B] 1-based user id
    hist_items:    int64 [B, S] left-padded, 0 = padding, newest event last
    hist_authors:  int64 [B, S] 0 = padding / unknown
    hist_actions:  float32 [B, S, A_bin] multi-hot of the event's binary actions (0 at padding)
    hist_surfaces: int64 [B, S] the event's surface (0 unknown / padding)
    cand_items:    int64 [B, C] ranker training / evaluation candidates (None in retrieval training)
    cand_authors:  int64 [B, C]
    cand_surfaces: int64 [B, C] the request's surface (the first predicted event's), same for all C
    labels:        float32 [B, C, A] per candidate: binary then regression actions; 0 for negatives
    targets:       int64 [B, S] retrieval training: the next item after each position, 0 = none
    target:        int64 [B] evaluation: the held-out item
    history:       int64 [B, H] evaluation: every item before the target, 0-padded (masking)
    candidates:    int64 [B, 1 + n_neg] evaluation: target first, then sampled negatives
    """

    users: torch.Tensor
    hist_items: torch.Tensor
    hist_authors: torch.Tensor
    hist_actions: torch.Tensor
    hist_surfaces: torch.Tensor
    cand_items: torch.Tensor | None = None
    cand_authors: torch.Tensor | None = None
    cand_surfaces: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    target: torch.Tensor | None = None
    history: torch.Tensor | None = None
    candidates: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.users.shape[0]

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The network's keyword inputs this batch carries (None fields left out)."""
        inputs = {name: getattr(self, name) for name in MODEL_INPUTS}
        return {k: v for k, v in inputs.items() if v is not None}


class _PhoenixDataset(Dataset):
    """Shared per-event slicing: a user's event rows -> history fields."""

    def __init__(self, split: LeaveOneOutSplit, maxlen: int, item_authors: np.ndarray, surfaces: np.ndarray,
                 actions: np.ndarray, n_binary: int) -> None:
        n = len(split.sequences.items)
        if len(surfaces) != n or len(actions) != n:
            raise ValueError(f"surfaces ({len(surfaces)}) and actions ({len(actions)}) rows must match the "
                             f"{n} events")
        if len(item_authors) != split.sequences.n_items + 1:
            raise ValueError(f"item_authors has {len(item_authors)} rows, expected n_items + 1 = "
                             f"{split.sequences.n_items + 1}")
        self.split = split
        self.maxlen = maxlen
        self.item_authors = np.asarray(item_authors, dtype=np.int64)
        self.surfaces = np.asarray(surfaces, dtype=np.int64)
        self.actions = np.asarray(actions, dtype=np.float32)
        self.n_binary = int(n_binary)
        self.n_items = split.sequences.n_items

    def _history(self, u: int, start: int, stop: int) -> dict:
        """User u's events start..stop-1 (0-based within the user), the last maxlen of them."""
        lo = max(start, stop - self.maxlen)
        base = int(self.split.sequences.offsets[u])
        items = self.split.sequences.user(u)[lo:stop]
        rows = slice(base + lo, base + stop)
        return {"user": u + 1, "hist_items": items, "hist_authors": self.item_authors[items],
                "hist_actions": self.actions[rows, : self.n_binary],
                "hist_surfaces": self.surfaces[rows]}

    def _candidates(self, u: int, items: np.ndarray, positive_rows: np.ndarray, surface: int) -> dict:
        """cand_* and labels [C, A]: the first len(positive_rows) candidates carry those events'
        labels, the rest 0."""
        base = int(self.split.sequences.offsets[u])
        labels = np.zeros((len(items), self.actions.shape[1]), dtype=np.float32)
        labels[: len(positive_rows)] = self.actions[base + positive_rows]
        return {"cand_items": items, "cand_authors": self.item_authors[items],
                "cand_surfaces": np.full(len(items), surface, dtype=np.int64), "labels": labels}


class RetrievalTrainDataset(_PhoenixDataset):
    """Per user the training sequence (no validation / test target): history = events[:-1],
    targets = events[1:], the last `maxlen` positions."""

    fields = HISTORY_FIELDS | {"targets"}
    optional_fields = ()

    def __init__(self, split: LeaveOneOutSplit, maxlen: int, item_authors: np.ndarray, surfaces: np.ndarray,
                 actions: np.ndarray, n_binary: int) -> None:
        super().__init__(split, maxlen, item_authors, surfaces, actions, n_binary)
        self.users = np.flatnonzero(split.sequences.lengths - 2 >= 2)  # one input and one target

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, idx: int) -> dict:
        u = int(self.users[idx])
        n = int(self.split.sequences.lengths[u]) - 2  # the training part
        row = self._history(u, 0, n - 1)
        row["targets"] = self.split.sequences.user(u)[1:n][-self.maxlen :]
        return row


class RankerTrainDataset(_PhoenixDataset):
    """Per user per epoch a random cut t (1 <= t < n, n = training events): history = events[:t]
    (last maxlen), candidates = events t .. t + positives - 1 (with their action labels) then
    negatives the user never interacted with (labels 0), `n_candidates` in all; a share
    `popular_negatives` (0..1) of them is drawn in proportion to training popularity, the rest
    uniformly. Uniform negatives are mostly obscure items a ranker tells apart by popularity
    alone; the retriever hands it plausible, popular ones, so popular negatives train it for
    that. cand_surfaces = the surface of event t. Draws use torch's RNG, which
    EpochSeededDataset seeds per (seed, epoch, index)."""

    fields = HISTORY_FIELDS | CANDIDATE_FIELDS
    optional_fields = ()

    def __init__(self, split: LeaveOneOutSplit, maxlen: int, item_authors: np.ndarray, surfaces: np.ndarray,
                 actions: np.ndarray, n_binary: int, n_candidates: int = 32, positives: int = 4,
                 popular_negatives: float = 0.0) -> None:
        super().__init__(split, maxlen, item_authors, surfaces, actions, n_binary)
        if not 1 <= positives <= n_candidates:
            raise ValueError(f"need 1 <= positives ({positives}) <= n_candidates ({n_candidates})")
        if not 0.0 <= popular_negatives <= 1.0:
            raise ValueError(f"data.train_dataset.popular_negatives={popular_negatives}: must be in [0, 1]")
        self.n_candidates = n_candidates
        self.positives = positives
        self.popular_negatives = popular_negatives
        self.popularity = None  # [n_items] training popularity, only when some negatives use it
        if popular_negatives > 0:
            counts = training_popularity(split).numpy()[1:].astype(np.float64)  # training rows only
            self.popularity = counts / counts.sum()
        self.users = np.flatnonzero(split.sequences.lengths - 2 >= 2)

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, idx: int) -> dict:
        u = int(self.users[idx])
        n = int(self.split.sequences.lengths[u]) - 2
        t = int(torch.randint(1, n, (1,)).item())  # history events[:t], first positive events[t]
        pos_rows = np.arange(t, min(n, t + self.positives))
        seq = self.split.sequences.user(u)
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        n_neg = self.n_candidates - len(pos_rows)
        popular = (np.zeros(0, dtype=np.int64) if self.popularity is None
                   else popular_items(rng, self.popularity, seq, round(n_neg * self.popular_negatives)))
        try:
            uniform = sample_negatives(rng, self.n_items, np.concatenate([seq, popular]),
                                       n_neg - len(popular), unique=True)
        except ValueError as err:
            raise DataError(f"user {u}: {err}; lower data.train_dataset.n_candidates") from err
        negs = np.concatenate([popular, uniform])
        items = np.concatenate([seq[pos_rows], negs])
        surface = int(self.surfaces[int(self.split.sequences.offsets[u]) + t])
        return self._history(u, 0, t) | self._candidates(u, items, pos_rows, surface)


def popular_items(rng: np.random.Generator, probs: np.ndarray, exclude: np.ndarray, size: int) -> np.ndarray:
    """`size` distinct item ids (1-based) drawn in proportion to probs [n_items], none in `exclude`
    (fewer when fewer items with a count remain)."""
    if size <= 0:
        return np.zeros(0, dtype=np.int64)
    p = probs.copy()
    p[exclude[exclude > 0] - 1] = 0.0
    size = min(size, int((p > 0).sum()))
    if size == 0:
        return np.zeros(0, dtype=np.int64)
    return rng.choice(len(p), size, replace=False, p=p / p.sum()).astype(np.int64) + 1


class PhoenixEvalDataset(_PhoenixDataset):
    """One row per user: history = events before the stage's target (last maxlen), the target,
    the full history (masking), the sampled candidates (target first) as cand_* with labels
    (target's actions in column 0, zeros elsewhere); candidates None -> the target alone."""

    fields = HISTORY_FIELDS | CANDIDATE_FIELDS | {"target", "history", "candidates"}
    optional_fields = ()

    def __init__(self, split: LeaveOneOutSplit, stage: str, maxlen: int, candidates: np.ndarray | None,
                 item_authors: np.ndarray, surfaces: np.ndarray, actions: np.ndarray, n_binary: int) -> None:
        super().__init__(split, maxlen, item_authors, surfaces, actions, n_binary)
        self.stage = stage
        self.candidates = candidates  # [n_users, 1 + n_neg] or None

    def __len__(self) -> int:
        return self.split.sequences.n_users

    def __getitem__(self, u: int) -> dict:
        history = self.split.history(u, self.stage)
        target = self.split.target(u, self.stage)
        t = int(self.split.sequences.lengths[u]) - {"val": 2, "test": 1}[self.stage]  # target event
        cands = np.array([target]) if self.candidates is None else self.candidates[u]
        surface = int(self.surfaces[int(self.split.sequences.offsets[u]) + t])
        row = self._history(u, 0, t) | self._candidates(u, cands, np.array([t]), surface)
        row.update(target=target, history=history, candidates=cands)
        return row


def collate_phoenix(rows: list[dict]) -> PhoenixBatch:
    """Left-pad the history fields to the longest row; candidates stack (same C per dataset)."""
    width = max(len(r["hist_items"]) for r in rows)
    batch = PhoenixBatch(
        users=torch.tensor([r["user"] for r in rows], dtype=torch.int64),
        hist_items=left_pad([r["hist_items"] for r in rows], width),
        hist_authors=left_pad([r["hist_authors"] for r in rows], width),
        hist_actions=left_pad_rows([r["hist_actions"] for r in rows], width),
        hist_surfaces=left_pad([r["hist_surfaces"] for r in rows], width),
    )
    if "cand_items" in rows[0]:
        for name in ("cand_items", "cand_authors", "cand_surfaces"):
            setattr(batch, name, torch.from_numpy(np.stack([r[name] for r in rows]).astype(np.int64)))
        batch.labels = torch.from_numpy(np.stack([r["labels"] for r in rows]).astype(np.float32))
    if "targets" in rows[0]:
        batch.targets = left_pad([r["targets"] for r in rows], width)
    if "target" in rows[0]:
        batch.target = torch.tensor([r["target"] for r in rows], dtype=torch.int64)
        batch.history = left_pad([r["history"] for r in rows])
        batch.candidates = torch.from_numpy(np.stack([r["candidates"] for r in rows]).astype(np.int64))
    return batch
