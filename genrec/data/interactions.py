"""The validated interaction log every source parses into, and the leave-one-out split.

Past this module nothing re-checks ids or re-reads files: parsers validate at the edge,
`InteractionLog` remaps ids to 1..n (0 is padding everywhere) and orders events in time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genrec.rank_zero_log import get_logger

log = get_logger(__name__)

# Bump when parsing or preprocessing (kcore, to_sequences, drop_short, the .npz layout) changes
# its output: every processed cache key includes it, so old caches are never reused.
PREPROCESS_VERSION = 2


def processed_key(fingerprint: str, **params: Any) -> str:
    """Cache key of a preprocessed data set: the source's fingerprint, every preprocessing
    parameter (e.g. kcore, min_length) and PREPROCESS_VERSION, hashed to 16 hex digits."""
    blob = json.dumps({"source": fingerprint, "params": params, "version": PREPROCESS_VERSION},
                      sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class DataError(ValueError):
    """Bad input data: the message names the file, line and field."""


@dataclass
class InteractionLog:
    """One row per interaction, in source order.

    users, items: int64 [N] raw ids as the source wrote them (any non-negative integers).
    timestamps:   int64 [N] seconds, or None when the source has no time.
    ratings:      float32 [N] explicit ratings as the source wrote them, or None.
    origin:       where the data came from (name, path or url, sha256, ...), plain JSON values.
    columns:      further per-row numeric columns by name, each [N] (a behaviour log's feedback
                  flags, context, user attributes: genrec/data/behavior.py); they follow every
                  filter and reordering of the rows, into `Sequences.columns`.
    """

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray | None = None
    source: str = "<memory>"
    ratings: np.ndarray | None = None
    origin: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.columns = {k: np.asarray(v) for k, v in self.columns.items()}
        self.users = np.asarray(self.users, dtype=np.int64)
        self.items = np.asarray(self.items, dtype=np.int64)
        if self.timestamps is not None:
            self.timestamps = np.asarray(self.timestamps, dtype=np.int64)
        if self.ratings is not None:
            self.ratings = np.asarray(self.ratings, dtype=np.float32)
        n = len(self.users)
        if n == 0:
            raise DataError(f"{self.source}: no interactions (empty file?)")
        if any(a is not None and len(a) != n for a in (self.items, self.timestamps, self.ratings)):
            raise DataError(f"{self.source}: users, items, timestamps and ratings differ in length")
        for name, column in self.columns.items():
            if column.shape != (n,):
                raise DataError(f"{self.source}: column {name!r} has shape {column.shape}, expected ({n},)")

    def _rows(self, keep: np.ndarray) -> InteractionLog:
        """The log restricted to rows `keep` (a mask or an index array)."""
        ts = None if self.timestamps is None else self.timestamps[keep]
        ratings = None if self.ratings is None else self.ratings[keep]
        return InteractionLog(self.users[keep], self.items[keep], ts, self.source, ratings, dict(self.origin),
                              {k: v[keep] for k, v in self.columns.items()})

    def __len__(self) -> int:
        return len(self.users)

    def kcore(self, k: int) -> InteractionLog:
        """Keep users and items with at least k interactions, repeating until stable."""
        keep = np.ones(len(self), dtype=bool)
        while True:
            _, u_inv, u_cnt = np.unique(self.users[keep], return_inverse=True, return_counts=True)
            _, i_inv, i_cnt = np.unique(self.items[keep], return_inverse=True, return_counts=True)
            ok = (u_cnt[u_inv] >= k) & (i_cnt[i_inv] >= k)
            if ok.all():
                break
            keep[np.flatnonzero(keep)[~ok]] = False
        return self._rows(keep)

    def to_sequences(self) -> Sequences:
        """Remap ids to 1..n and group each user's events in time order.

        Ties in time keep the source order (a stable sort), which is what the
        published chronological files rely on.
        """
        user_ids, users = np.unique(self.users, return_inverse=True)
        item_ids, items = np.unique(self.items, return_inverse=True)
        items = items + 1  # 0 is padding
        time_key = self.timestamps if self.timestamps is not None else np.zeros(len(self), np.int64)
        order = np.lexsort((np.arange(len(self)), time_key, users))  # user, then time, then file order
        counts = np.bincount(users, minlength=len(user_ids))
        offsets = np.concatenate([[0], np.cumsum(counts)])
        ts = None if self.timestamps is None else self.timestamps[order]
        ratings = None if self.ratings is None else self.ratings[order]
        return Sequences(items[order], offsets, ts, raw_user_ids=user_ids, raw_item_ids=item_ids,
                         ratings=ratings, origin=dict(self.origin),
                         columns={k: v[order] for k, v in self.columns.items()})


@dataclass
class Sequences:
    """Every user's chronological item sequence, stored flat (CSR layout).

    items:   int64 [N] item ids in 1..n_items, users one after another
    offsets: int64 [n_users + 1] user u owns items[offsets[u]:offsets[u+1]]
    timestamps: int64 [N] or None
    raw_user_ids / raw_item_ids: the source's ids, indexed by new id (items: new id - 1)
    ratings: float32 [N] or None, aligned with items
    origin:  name, path or url, sha256 ... of the source (see `describe`)
    columns: further per-event columns by name, each [N], aligned with items (InteractionLog.columns)
    """

    items: np.ndarray
    offsets: np.ndarray
    timestamps: np.ndarray | None
    raw_user_ids: np.ndarray
    raw_item_ids: np.ndarray
    ratings: np.ndarray | None = None
    origin: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_items(self) -> int:
        return len(self.raw_item_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def user(self, u: int) -> np.ndarray:
        return self.items[self.offsets[u] : self.offsets[u + 1]]

    def user_times(self, u: int) -> np.ndarray | None:
        if self.timestamps is None:
            return None
        return self.timestamps[self.offsets[u] : self.offsets[u + 1]]

    def user_ratings(self, u: int) -> np.ndarray | None:
        if self.ratings is None:
            return None
        return self.ratings[self.offsets[u] : self.offsets[u + 1]]

    def user_column(self, u: int, name: str) -> np.ndarray:
        """User u's events' values of the extra column `name` (KeyError naming what exists)."""
        if name not in self.columns:
            raise KeyError(f"no column {name!r}; this data has {sorted(self.columns)}")
        return self.columns[name][self.offsets[u] : self.offsets[u + 1]]

    def describe(self) -> dict[str, Any]:
        """What was loaded, as plain JSON values: the origin (name, path or url, sha256, ...)
        and the counts. Meant for logs and metrics.json."""
        return {**self.origin, "n_users": self.n_users, "n_items": self.n_items,
                "n_interactions": int(len(self.items)), "has_time": self.timestamps is not None,
                "has_ratings": self.ratings is not None,
                **({"columns": sorted(self.columns)} if self.columns else {})}

    def drop_short(self, min_length: int, source: str) -> Sequences:
        """Drop users too short for the split, logging how many (not an error)."""
        keep = self.lengths >= min_length
        n_drop = int((~keep).sum())
        if n_drop == 0:
            return self
        log.warning("%s: dropped %d users with fewer than %d interactions", source, n_drop, min_length)
        if not keep.any():
            raise DataError(f"{source}: no user has at least {min_length} interactions")
        rows = np.repeat(keep, self.lengths)
        offsets = np.concatenate([[0], np.cumsum(self.lengths[keep])])
        ts = None if self.timestamps is None else self.timestamps[rows]
        ratings = None if self.ratings is None else self.ratings[rows]
        return Sequences(self.items[rows], offsets, ts, self.raw_user_ids[keep], self.raw_item_ids,
                         ratings, dict(self.origin), {k: v[rows] for k, v in self.columns.items()})

    def save(self, path: Path) -> None:
        """Write atomically, so an interrupted run never leaves a half-written cache."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        arrays = dict(items=self.items, offsets=self.offsets, raw_user_ids=self.raw_user_ids,
                      raw_item_ids=self.raw_item_ids)
        if self.timestamps is not None:
            arrays["timestamps"] = self.timestamps
        if self.ratings is not None:
            arrays["ratings"] = self.ratings
        arrays.update({f"column.{k}": v for k, v in self.columns.items()})
        arrays["origin"] = np.array(json.dumps(self.origin, sort_keys=True, default=str))  # str, no pickle
        np.savez(tmp, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Sequences:
        """Read a cache written by `save`, logging what data it holds (one line)."""
        with np.load(path, allow_pickle=False) as z:
            ts = z["timestamps"] if "timestamps" in z.files else None
            ratings = z["ratings"] if "ratings" in z.files else None
            origin = json.loads(str(z["origin"])) if "origin" in z.files else {}
            columns = {f.removeprefix("column."): z[f] for f in z.files if f.startswith("column.")}
            seqs = cls(z["items"], z["offsets"], ts, z["raw_user_ids"], z["raw_item_ids"], ratings, origin,
                       columns)
        log.info("data: %s", json.dumps(seqs.describe(), default=str))
        return seqs


@dataclass
class LeaveOneOutSplit:
    """Leave-one-out: per user the last item is test, the second-last validation.

    The training sequence of user u is items[offsets[u] : offsets[u+1] - 2]; validation
    predicts items[-2] from it, test predicts items[-1] from everything before it.
    """

    sequences: Sequences

    def __post_init__(self) -> None:
        if self.sequences.lengths.min() < 3:
            raise DataError("leave-one-out needs at least 3 interactions per user; call drop_short first")

    def history(self, u: int, stage: str) -> np.ndarray:
        """Items the model sees before predicting the stage's target."""
        seq = self.sequences.user(u)
        return {"train": seq[:-2], "val": seq[:-2], "test": seq[:-1]}[stage]

    def target(self, u: int, stage: str) -> int:
        seq = self.sequences.user(u)
        return int({"val": seq[-2], "test": seq[-1]}[stage])

    def history_times(self, u: int, stage: str) -> np.ndarray | None:
        ts = self.sequences.user_times(u)
        if ts is None:
            return None
        return {"train": ts[:-2], "val": ts[:-2], "test": ts[:-1]}[stage]

    def target_time(self, u: int, stage: str) -> int | None:
        ts = self.sequences.user_times(u)
        if ts is None:
            return None
        return int({"val": ts[-2], "test": ts[-1]}[stage])
