"""Dense behaviour features per (user, step) and the multi-task head labels per event.

Row t of a user's feature matrix uses ONLY what is known when event t is requested:
- statistics over the events strictly before t (the recent window: the last `WINDOW` events;
  the whole past for the `*_all` columns): ratings, feedback rates, watch ratio, categories;
- event t's request context: its hour / weekday, device, network, source tab, feed position and
  the time since the previous event;
- the user's attributes (age, gender, occupation) and the sequence position.
Event t's own outcome (its item, rating, flags, watch time, category) never enters row t.

The layout is ONE table, `FEATURE_LAYOUT` (rendered into the README by `layout_markdown()`),
ordered so that the first 16 columns (the default `num_features`) are the most informative
general ones. `num_features` (1..MAX_FEATURES) keeps the first num_features columns; past the
layout's width (`LAYOUT_WIDTH`) the extra columns are zeros (they carry no information: a wide
model config stays valid on any data). Features are RAW here; `FeatureNormalizer` (mean/std per
column, fitted on training rows only) is applied inside the model, so exported graphs take raw
features too.

Everything is vectorised over all events of all users at once (window sums by cumulative sums
over the flat CSR arrays), so ML-1M's 1M events take about a second.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from genrec.data.behavior import column, has, time_context
from genrec.data.interactions import Sequences

WINDOW = 10  # events in the "recent" statistics
MAX_FEATURES = 1024
N_DEVICE, N_NETWORK, N_SOURCE, N_OCCUPATION = 4, 4, 8, 21  # one-hot widths (values past: last slot)

# (name, width, description): the one layout table. Order matters: the first 16 columns are the
# default feature vector.
FEATURE_LAYOUT: tuple[tuple[str, int, str], ...] = (
    ("hour_sin", 1, "sin(2 pi hour / 24) of event t's request time"),
    ("hour_cos", 1, "cos(2 pi hour / 24) of event t's request time"),
    ("weekday_sin", 1, "sin(2 pi weekday / 7) of event t's request time"),
    ("weekday_cos", 1, "cos(2 pi weekday / 7) of event t's request time"),
    ("history_log_length", 1, "log(1 + number of earlier events of the user)"),
    ("gap_log_minutes", 1, "log(1 + minutes since the previous event); 0 for the first event"),
    ("rating_mean_recent", 1, f"mean rating of the last {WINDOW} earlier events (0 if none)"),
    ("rating_mean_all", 1, "mean rating of all earlier events (0 if none)"),
    ("last_rating", 1, "rating of the previous event (0 if none)"),
    ("engagement_rate_recent", 1, f"share of the last {WINDOW} earlier events with like, collect, share, "
                                  "follow or comment"),
    ("not_interested_rate_recent", 1, f"share of the last {WINDOW} earlier events marked not interested"),
    ("category_repeat_recent", 1, f"share of consecutive pairs among the last {WINDOW} earlier events "
                                  "with the same (known) category"),
    ("watch_ratio_mean_recent", 1, f"mean watch ratio of the last {WINDOW} earlier events"),
    ("last_category_share_recent", 1, f"share of the last {WINDOW} earlier events whose category is the "
                                      "previous event's (0 when unknown)"),
    ("age", 1, "user age in years (0 unknown)"),
    ("gender", 1, "+1 male, -1 female, 0 unknown"),
    ("last_engagement", 1, "previous event had like, collect, share, follow or comment"),
    ("last_not_interested", 1, "previous event was marked not interested"),
    ("last_watch_ratio", 1, "watch ratio of the previous event"),
    ("rating_trend", 1, "rating_mean_recent - rating_mean_all"),
    ("engagement_rate_all", 1, "share of all earlier events with engagement"),
    ("like_rate_recent", 1, f"share of the last {WINDOW} earlier events liked"),
    ("collect_rate_recent", 1, f"share of the last {WINDOW} earlier events collected"),
    ("click_rate_recent", 1, f"share of the last {WINDOW} earlier events clicked"),
    ("share_rate_recent", 1, f"share of the last {WINDOW} earlier events shared"),
    ("comment_rate_recent", 1, f"share of the last {WINDOW} earlier events commented"),
    ("follow_rate_recent", 1, f"share of the last {WINDOW} earlier events followed"),
    ("watch_time_log_mean_recent", 1, f"mean log(1 + watch seconds) of the last {WINDOW} earlier events"),
    ("duration_log_mean_recent", 1, f"mean log(1 + item seconds) of the last {WINDOW} earlier events"),
    ("gap_log_mean_recent", 1, f"mean gap_log_minutes of the last {WINDOW} earlier events"),
    ("position_log", 1, "log(1 + feed position) of event t (0 unknown)"),
    ("device", N_DEVICE, "one-hot device of event t (value v in slot min(v, width); 0 unknown: all 0)"),
    ("network", N_NETWORK, "one-hot network of event t (as device)"),
    ("source", N_SOURCE, "one-hot source tab of event t (as device)"),
    ("occupation", N_OCCUPATION, "one-hot user occupation (as device)"),
)
LAYOUT_WIDTH = sum(width for _, width, _ in FEATURE_LAYOUT)
# what a row may take from event t itself (its request context); everything else of event t is outcome
CONTEXT_FIELDS = ("hour", "weekday", "device", "network", "source", "position", "age", "gender", "occupation")
ENGAGEMENT_FLAGS = ("like", "collect", "share", "follow", "comment")


def layout_markdown() -> str:
    """The layout as a markdown table (columns, name, description) for the README."""
    lines = ["| columns | feature | description |", "|---|---|---|"]
    start = 0
    for name, width, doc in FEATURE_LAYOUT:
        cols = str(start) if width == 1 else f"{start}-{start + width - 1}"
        lines.append(f"| {cols} | `{name}` | {doc} |")
        start += width
    lines.append(f"| {LAYOUT_WIDTH}-{MAX_FEATURES - 1} | (zeros) | past the layout: zero columns |")
    return "\n".join(lines)


def _flat(seqs: Sequences, name: str) -> np.ndarray:
    """float64 [N] column `name` of every event, default-filled (behavior.column over one span)."""
    whole = dataclasses.replace(seqs, offsets=np.array([0, len(seqs.items)], dtype=np.int64))
    return np.asarray(column(whole, 0, name), dtype=np.float64)


class _Steps:
    """Each event's place in its user's sequence, for statistics over the earlier events.

    start: int64 [N] flat index of the user's first event; step: int64 [N] the event's index t in
    its user; lo: int64 [N] first event of the recent window (max(start, i - WINDOW)).
    """

    def __init__(self, seqs: Sequences) -> None:
        n = len(seqs.items)
        self.idx = np.arange(n)  # [N]
        self.start = np.repeat(seqs.offsets[:-1], seqs.lengths)  # [N]
        self.step = self.idx - self.start  # [N]
        self.lo = np.maximum(self.start, self.idx - WINDOW)  # [N]
        self.n_recent = self.idx - self.lo  # [N] earlier events in the window, 0..WINDOW
        self._inv_recent = 1.0 / np.maximum(self.n_recent, 1)  # 0 counts give sum 0 -> mean 0
        self._inv_all = 1.0 / np.maximum(self.step, 1)

    def _sums(self, x: np.ndarray, lo: np.ndarray) -> np.ndarray:
        csum = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])  # csum[i] = sum(x[:i])
        return csum[:-1] - csum[lo]  # [N] sum of x[lo_i:i]: never x[i] itself

    def recent(self, x: np.ndarray) -> np.ndarray:
        """[N] mean of x over the last WINDOW earlier events of the user (0 if none)."""
        if not x.any():  # an absent field (defaults are 0): skip the passes
            return np.zeros(len(x))
        return self._sums(x, self.lo) * self._inv_recent

    def all(self, x: np.ndarray) -> np.ndarray:
        """[N] mean of x over all earlier events of the user (0 if none)."""
        if not x.any():
            return np.zeros(len(x))
        return self._sums(x, self.start) * self._inv_all

    def previous(self, x: np.ndarray) -> np.ndarray:
        """[N] x of the user's previous event (0 at each user's first event)."""
        prev = np.concatenate([[0.0], x[:-1]])
        return np.where(self.step > 0, prev, 0.0)


def engagement(seqs: Sequences) -> np.ndarray:
    """float64 [N] 1 where the event had like, collect, share, follow or comment."""
    flags = [_flat(seqs, f) for f in ENGAGEMENT_FLAGS]
    return (np.max(flags, axis=0) > 0).astype(np.float64)


def _hour_weekday(seqs: Sequences) -> tuple[np.ndarray, np.ndarray]:
    """[N] hour and weekday of each event: the data's columns, else derived from the timestamps
    (UTC), else 0."""
    if has(seqs, "hour") or seqs.timestamps is None:
        return _flat(seqs, "hour"), _flat(seqs, "weekday")
    context = time_context(seqs.timestamps)
    return context["hour"], context["weekday"]


def _category_features(category: np.ndarray, steps: _Steps) -> tuple[np.ndarray, np.ndarray]:
    """[N] share of the recent window with the previous event's category, and [N] share of
    consecutive pairs within the recent window with the same category (known categories only)."""
    prev_cat = steps.previous(category)  # [N]
    same = np.zeros(len(category))
    for lag in range(1, min(WINDOW, len(category) - 1) + 1):  # WINDOW passes, each over all events
        # event i - lag is an earlier event of the same user when lag <= step
        same[lag:] += (lag <= steps.step[lag:]) & (prev_cat[lag:] > 0) & (category[:-lag] == prev_cat[lag:])
    share = same / np.maximum(steps.n_recent, 1)
    pair_same = ((category == prev_cat) & (category > 0) & (steps.step > 0)).astype(np.float64)  # [N]
    # pairs (j-1, j) inside the window [lo, i): pair_same[j] for lo < j < i
    csum = np.concatenate([[0.0], np.cumsum(pair_same)])
    n_pairs = np.maximum(steps.n_recent - 1, 0)
    pairs = np.where(n_pairs > 0, csum[:-1] - csum[np.minimum(steps.lo + 1, steps.idx)], 0.0)
    return share, pairs / np.maximum(n_pairs, 1)


def feature_table(seqs: Sequences) -> np.ndarray:
    """float32 [N, LAYOUT_WIDTH] raw features of every event (rows aligned with seqs.items)."""
    steps = _Steps(seqs)
    hour, weekday = _hour_weekday(seqs)
    gap = np.zeros(len(seqs.items))  # [N] log(1 + minutes since the previous event)
    if seqs.timestamps is not None:
        delta = np.diff(seqs.timestamps.astype(np.float64), prepend=0.0)
        gap = np.where(steps.step > 0, np.log1p(np.maximum(delta, 0.0) / 60.0), 0.0)
    rating = _flat(seqs, "rating")
    engaged = engagement(seqs)
    not_interested = _flat(seqs, "not_interested")
    watch_ratio = _flat(seqs, "watch_ratio")
    category_share, category_repeat = _category_features(_flat(seqs, "category"), steps)
    rating_recent, rating_all = steps.recent(rating), steps.all(rating)
    gender = _flat(seqs, "gender")
    columns = {
        "hour_sin": np.sin(2 * np.pi * hour / 24), "hour_cos": np.cos(2 * np.pi * hour / 24),
        "weekday_sin": np.sin(2 * np.pi * weekday / 7), "weekday_cos": np.cos(2 * np.pi * weekday / 7),
        "history_log_length": np.log1p(steps.step), "gap_log_minutes": gap,
        "rating_mean_recent": rating_recent, "rating_mean_all": rating_all,
        "last_rating": steps.previous(rating),
        "engagement_rate_recent": steps.recent(engaged),
        "not_interested_rate_recent": steps.recent(not_interested),
        "category_repeat_recent": category_repeat,
        "watch_ratio_mean_recent": steps.recent(watch_ratio),
        "last_category_share_recent": category_share,
        "age": _flat(seqs, "age"),
        "gender": np.select([gender == 2, gender == 1], [1.0, -1.0], 0.0),
        "last_engagement": steps.previous(engaged),
        "last_not_interested": steps.previous(not_interested),
        "last_watch_ratio": steps.previous(watch_ratio),
        "rating_trend": rating_recent - rating_all,
        "engagement_rate_all": steps.all(engaged),
        **{f"{f}_rate_recent": steps.recent(_flat(seqs, f))
           for f in ("like", "collect", "click", "share", "comment", "follow")},
        "watch_time_log_mean_recent": steps.recent(np.log1p(np.maximum(_flat(seqs, "watch_time"), 0.0))),
        "duration_log_mean_recent": steps.recent(np.log1p(np.maximum(_flat(seqs, "duration"), 0.0))),
        "gap_log_mean_recent": steps.recent(gap),
        "position_log": np.log1p(np.maximum(_flat(seqs, "position"), 0.0)),
    }
    out = np.zeros((LAYOUT_WIDTH, len(seqs.items)), dtype=np.float32)  # [W, N]: contiguous column writes
    col = 0
    for name, width, _ in FEATURE_LAYOUT:
        if width == 1:
            out[col] = columns[name]
        else:  # one-hot: value v >= 1 sets slot min(v, width) - 1; 0 (unknown) sets nothing
            v = np.minimum(_flat(seqs, name).astype(np.int64), width)  # [N]
            rows = np.flatnonzero(v > 0)
            out[col + v[rows] - 1, rows] = 1.0
        col += width
    return np.ascontiguousarray(out.T)  # [N, W]


def _user_view(seqs: Sequences, u: int) -> Sequences:
    """Sequences holding only user u (views, no copies)."""
    lo, hi = int(seqs.offsets[u]), int(seqs.offsets[u + 1])
    return dataclasses.replace(
        seqs, items=seqs.items[lo:hi], offsets=np.array([0, hi - lo], dtype=np.int64),
        timestamps=None if seqs.timestamps is None else seqs.timestamps[lo:hi],
        raw_user_ids=seqs.raw_user_ids[u : u + 1],
        ratings=None if seqs.ratings is None else seqs.ratings[lo:hi],
        columns={k: v[lo:hi] for k, v in seqs.columns.items()})


def feature_matrix(seqs: Sequences, u: int) -> np.ndarray:
    """float32 [len_u, LAYOUT_WIDTH] raw features of user u's events (== feature_table's rows)."""
    return feature_table(_user_view(seqs, u))


def select_features(table: np.ndarray, num_features: int) -> np.ndarray:
    """float32 [N, num_features]: the first num_features layout columns, zero columns past the
    layout's width."""
    if num_features <= table.shape[1]:
        return np.ascontiguousarray(table[:, :num_features])
    pad = np.zeros((table.shape[0], num_features - table.shape[1]), dtype=table.dtype)
    return np.concatenate([table, pad], axis=1)


def training_rows(seqs: Sequences) -> np.ndarray:
    """bool [N]: each user's events without the validation and test targets (the last two)."""
    return _Steps(seqs).step < np.repeat(seqs.lengths - 2, seqs.lengths)


@dataclass
class FeatureNormalizer:
    """Per-column mean and std (floored at `std_floor`, so a constant column normalises to 0).

    mean, std: float32 [F]
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray, rows: np.ndarray, std_floor: float = 1e-2) -> FeatureNormalizer:
        """Fitted on features[rows] only (pass `training_rows(seqs)`): features [N, F], rows bool [N]."""
        train = features[rows].astype(np.float64)
        if len(train) == 0:
            raise ValueError("no training rows to fit the feature normalisation on")
        mean, std = train.mean(axis=0), train.std(axis=0)
        return cls(mean.astype(np.float32), np.maximum(std, std_floor).astype(np.float32))

    def normalize(self, features: np.ndarray) -> np.ndarray:
        """[..., F] -> [..., F] (x - mean) / std."""
        return (features - self.mean) / self.std

    def denormalize(self, normalized: np.ndarray) -> np.ndarray:
        """Inverse of `normalize`."""
        return normalized * self.std + self.mean


# ---- head labels ----
def head_names(seqs: Sequences) -> tuple[list[str], list[str]]:
    """(binary heads, regression heads) this data can supervise, in HEADS order:
    "engagement" if any of like/collect/share/follow/comment is present, "not_interested" if
    present, "click" if present and not constant; "rating" if the data has ratings,
    "watch_ratio" if present."""
    binary = []
    if any(has(seqs, f) for f in ENGAGEMENT_FLAGS):
        binary.append("engagement")
    if has(seqs, "not_interested"):
        binary.append("not_interested")
    if has(seqs, "click") and np.ptp(_flat(seqs, "click")) > 0:
        binary.append("click")
    regression = [name for name in ("rating", "watch_ratio") if has(seqs, name)]
    return binary, regression


def label_table(seqs: Sequences, heads: tuple[list[str], list[str]] | None = None) -> np.ndarray:
    """float32 [N, H] every event's head labels, columns in head_names order (binary, then
    regression)."""
    binary, regression = heads if heads is not None else head_names(seqs)
    cols = [engagement(seqs) if name == "engagement" else _flat(seqs, name) for name in binary + regression]
    if not cols:
        return np.zeros((len(seqs.items), 0), dtype=np.float32)
    return np.stack(cols, axis=1).astype(np.float32)


def label_matrix(seqs: Sequences, u: int) -> np.ndarray:
    """float32 [len_u, H] user u's events' head labels (heads as head_names(seqs))."""
    return label_table(_user_view(seqs, u), head_names(seqs))
