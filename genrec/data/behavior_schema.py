"""The behaviour-log schema: one table of optional per-interaction fields, read back with defaults.

A behaviour source (`behavior.py`, `behavior_synthetic.py`) stores the fields it really has in
`InteractionLog.columns` (so they follow kcore, to_sequences, drop_short, save and load); a field
a source lacks is simply absent and reads back as its default. `has()` tells the two apart, which
matters for the fields whose default is also a real value (hour 0 is midnight, weekday 0 Monday).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np

from genrec.data.interactions import Sequences

# kind -> storage dtype of the column
DTYPES: dict[str, type] = {"float": np.float32, "flag": np.int8, "int": np.int32}


@dataclass(frozen=True)
class BehaviorField:
    name: str
    kind: str  # "float" | "flag" (0/1) | "int" (small non-negative category or count)
    default: float
    doc: str


FIELDS: tuple[BehaviorField, ...] = (
    BehaviorField("rating", "float", 0.0, "explicit rating as written (also InteractionLog.ratings)"),
    BehaviorField("watch_time", "float", 0.0, "seconds watched"),
    BehaviorField("duration", "float", 0.0, "item length in seconds"),
    BehaviorField("watch_ratio", "float", 0.0, "watch_time / duration (0 when duration is 0)"),
    BehaviorField("click", "flag", 0, "the user clicked / opened the item"),
    BehaviorField("like", "flag", 0, "liked (ratings: see RATING_FLAGS)"),
    BehaviorField("collect", "flag", 0, "saved to a collection / favourites"),
    BehaviorField("share", "flag", 0, "shared / forwarded"),
    BehaviorField("comment", "flag", 0, "commented"),
    BehaviorField("follow", "flag", 0, "followed the item's author"),
    BehaviorField("not_interested", "flag", 0, "explicit negative feedback (hate, low rating)"),
    BehaviorField("hour", "int", 0, "hour of day 0-23 of the event (0 is also midnight: check has())"),
    BehaviorField("weekday", "int", 0, "day of week 0-6, Monday = 0 (0 is also Monday: check has())"),
    BehaviorField("device", "int", 0, "device type, 1-based, 0 unknown"),
    BehaviorField("network", "int", 0, "network type, 1-based, 0 unknown"),
    BehaviorField("source", "int", 0, "where the item was shown (tab / page), 1-based, 0 unknown"),
    BehaviorField("position", "int", 0, "slot in the shown list, 1-based, 0 unknown"),
    BehaviorField("age", "int", 0, "age in years (ML-1M: its age-group code, the lower bound), 0 unknown"),
    BehaviorField("gender", "int", 0, "0 unknown, 1 F, 2 M"),
    BehaviorField("occupation", "int", 0, "occupation code, 1-based, 0 unknown"),
    BehaviorField("category", "int", 0, "the item's primary category / genre, 1-based, 0 unknown"),
    BehaviorField("author", "int", 0, "the item's author / creator / brand, 1-based, 0 unknown"),
)
FIELD: dict[str, BehaviorField] = {f.name: f for f in FIELDS}

# Flags implied by an explicit rating: ONE table, applied by `rating_flags`. Each entry is
# (flag, test on the rating); every rated event counts as a click (the user chose the item).
RATING_FLAGS: tuple[tuple[str, str], ...] = (
    ("click", "always"),
    ("like", ">= 4"),
    ("not_interested", "<= 2"),
)


def rating_flags(ratings: np.ndarray) -> dict[str, np.ndarray]:
    """The columns RATING_FLAGS derives from ratings [N]: each int8 [N]."""
    r = np.asarray(ratings, dtype=np.float64)
    tests = {"always": np.ones(len(r), bool), ">= 4": r >= 4, "<= 2": r <= 2}
    return {flag: tests[test].astype(np.int8) for flag, test in RATING_FLAGS}


def time_context(seconds: np.ndarray, utc_offset_hours: float = 0.0) -> dict[str, np.ndarray]:
    """hour (0-23) and weekday (0-6, Monday = 0) of Unix times [N], shifted to local time."""
    local = np.asarray(seconds, dtype=np.int64) + int(round(utc_offset_hours * 3600))
    days = np.floor_divide(local, 86_400)  # [N] days since 1970-01-01, a Thursday
    return {"hour": (np.floor_divide(local, 3600) % 24).astype(np.int32),
            "weekday": ((days + 3) % 7).astype(np.int32)}


def as_columns(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Schema fields only, each cast to its kind's dtype (a typo fails by name)."""
    unknown = sorted(set(values) - set(FIELD))
    if unknown:
        raise KeyError(f"not behaviour fields: {unknown} (known: {[f.name for f in FIELDS]})")
    return {k: np.asarray(v).astype(DTYPES[FIELD[k].kind]) for k, v in values.items()}


def has(seqs: Sequences, name: str) -> bool:
    """Whether the data really has field `name` (else `column` returns its default)."""
    _field(name)
    return name in seqs.columns or (name == "rating" and seqs.ratings is not None)


def column(seqs: Sequences, u: int, name: str) -> np.ndarray:
    """User u's values of field `name`, [len_u], in the field's dtype; the default when absent."""
    f = _field(name)
    dtype = DTYPES[f.kind]
    if name in seqs.columns:
        return seqs.user_column(u, name).astype(dtype, copy=False)
    if name == "rating" and seqs.ratings is not None:
        return seqs.user_ratings(u).astype(dtype, copy=False)  # type: ignore[union-attr]
    return np.full(int(seqs.lengths[u]), f.default, dtype=dtype)


def _field(name: str) -> BehaviorField:
    if name not in FIELD:
        raise KeyError(f"no behaviour field {name!r} (known: {[f.name for f in FIELDS]})")
    return FIELD[name]


@dataclass(frozen=True)
class BehaviorRecord:
    """One interaction, every optional field with its explicit default (= FIELDS' default)."""

    item: int
    timestamp: int | None = None
    rating: float = 0.0
    watch_time: float = 0.0
    duration: float = 0.0
    watch_ratio: float = 0.0
    click: int = 0
    like: int = 0
    collect: int = 0
    share: int = 0
    comment: int = 0
    follow: int = 0
    not_interested: int = 0
    hour: int = 0
    weekday: int = 0
    device: int = 0
    network: int = 0
    source: int = 0
    position: int = 0
    age: int = 0
    gender: int = 0
    occupation: int = 0
    category: int = 0
    author: int = 0


RECORD_FIELDS = tuple(f.name for f in fields(BehaviorRecord))[2:]  # the FIELDS names, in order


def record(seqs: Sequences, u: int, t: int) -> BehaviorRecord:
    """User u's t-th event (0-based, time order) as a typed record."""
    n = int(seqs.lengths[u])
    if not -n <= t < n:
        raise IndexError(f"user {u} has {n} events, no event {t}")
    times = seqs.user_times(u)
    values = {name: column(seqs, u, name)[t].item() for name in RECORD_FIELDS}
    return BehaviorRecord(int(seqs.user(u)[t]), None if times is None else int(times[t]), **values)
