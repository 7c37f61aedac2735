"""Phoenix's action taxonomy and how each action is read from a behaviour log: ONE table.

`PHOENIX_ACTIONS` are the 19 actions of the released Phoenix ranker, in released order (18
binary actions and the `dwell_time` regression). `ACTION_SOURCES` says which behaviour field
(behavior_schema.FIELDS) gives an action and how; an action without an entry has no source in
any behaviour log genrec reads. A data set yields an action when its field is really there
(`has()`) and not constant over the events; `click` is kept even when it is constant 1 (a log
of interactions only, e.g. ratings): the ranker's sampled negatives give it its zeros.
Ratings reach the table through RATING_FLAGS (rating -> click, like, not_interested), so
ML-100K yields favorite, click and not_interested.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from genrec.data.behavior_schema import column, has
from genrec.data.interactions import Sequences

PHOENIX_ACTIONS: tuple[str, ...] = (
    "favorite", "reply", "repost", "photo_expand", "click", "profile_click", "video_quality_view",
    "share", "share_via_dm", "share_via_copy_link", "dwell", "quote", "quoted_click",
    "follow_author", "not_interested", "block_author", "mute_author", "report", "dwell_time")
REGRESSION_ACTIONS = frozenset({"dwell_time"})  # softplus outputs; every other action is a sigmoid


@dataclass(frozen=True)
class ActionSource:
    """field: the behaviour field; rule: "flag" (the 0/1 value), ">= 0.5" (a threshold on a
    float field) or "value" (the float itself, a regression target)."""

    field: str
    rule: str


ACTION_SOURCES: dict[str, ActionSource] = {
    "favorite": ActionSource("like", "flag"),
    "reply": ActionSource("comment", "flag"),
    "repost": ActionSource("share", "flag"),
    "click": ActionSource("click", "flag"),
    "dwell": ActionSource("watch_ratio", ">= 0.5"),
    "follow_author": ActionSource("follow", "flag"),
    "not_interested": ActionSource("not_interested", "flag"),
    "dwell_time": ActionSource("watch_ratio", "value"),
}
KEEP_CONSTANT = frozenset({"click"})  # present even when constant (negatives supply the zeros)


def _flat(seqs: Sequences, name: str) -> np.ndarray:
    """float64 [N] field `name` of every event, default-filled."""
    whole = dataclasses.replace(seqs, offsets=np.array([0, len(seqs.items)], dtype=np.int64))
    return np.asarray(column(whole, 0, name), dtype=np.float64)


def action_values(seqs: Sequences, action: str) -> np.ndarray:
    """float32 [N] the action's label of every event (aligned with seqs.items)."""
    src = ACTION_SOURCES[action]
    x = _flat(seqs, src.field)
    if src.rule == ">= 0.5":
        x = (x >= 0.5).astype(np.float64)
    return x.astype(np.float32)


def phoenix_actions(seqs: Sequences) -> tuple[list[str], list[str]]:
    """(binary actions, regression actions) this data yields, each in PHOENIX_ACTIONS order."""
    present = []
    for action in PHOENIX_ACTIONS:
        src = ACTION_SOURCES.get(action)
        if src is None or not has(seqs, src.field):
            continue
        if action in KEEP_CONSTANT or np.ptp(action_values(seqs, action)) > 0:
            present.append(action)
    return ([a for a in present if a not in REGRESSION_ACTIONS],
            [a for a in present if a in REGRESSION_ACTIONS])


def action_table(seqs: Sequences, binary: list[str], regression: list[str]) -> np.ndarray:
    """float32 [N, A] every event's action labels: binary columns, then regression columns."""
    names = list(binary) + list(regression)
    if not names:
        return np.zeros((len(seqs.items), 0), dtype=np.float32)
    return np.stack([action_values(seqs, a) for a in names], axis=1)


def actions_markdown() -> str:
    """The 19 actions and their behaviour-log source as a markdown table (for the README)."""
    lines = ["| action | kind | read from the behaviour log |", "|---|---|---|"]
    for action in PHOENIX_ACTIONS:
        kind = "regression (softplus)" if action in REGRESSION_ACTIONS else "binary (sigmoid)"
        src = ACTION_SOURCES.get(action)
        if src is None:
            how = "(no source)"
        elif src.rule == "flag":
            how = f"`{src.field}`" + (" (kept when constant)" if action in KEEP_CONSTANT else "")
        elif src.rule == "value":
            how = f"`{src.field}` (the value)"
        else:
            how = f"`{src.field} {src.rule}`"
        lines.append(f"| `{action}` | {kind} | {how} |")
    return "\n".join(lines)
