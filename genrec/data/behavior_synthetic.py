"""The embedded synthetic behaviour log: the behaviour schema with structure a model can learn.

The item sequence is `generate_synthetic`'s (item clusters, user tastes, successor structure).
On top of it, seeded and vectorised:

- user attributes (age, gender, occupation, a preferred device and hour of day);
- context per event: hour (around the user's hour), weekday, device, network, source, position;
- item duration (seconds, fixed per item) and category (= the item's cluster + 1);
- item author (fixed per item, nested in clusters: cluster c owns authors
  c * authors_per_cluster + 1 .. (c + 1) * authors_per_cluster, each item draws one of them),
  from its own rng stream so every other column is what it was before authors existed;
- feedback that depends on the user-item match. Each event has a match level from the user's
  cluster counts: FAVOURITE (the item's cluster is among the user's `n_favourite` most visited
  clusters), FAR (the user visits that cluster only this once), else OTHER. Like,
  not-interested and watch ratio are drawn from MATCH_EFFECTS by level, so the flags are planted:
  like is several times likelier in favourite clusters, not-interested in far ones.
  Click falls with the display position; an event not clicked has no watch and no feedback.
  Collect, share, follow and comment follow a like. No ratings (a short-video style log).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from genrec.data import synthetic
from genrec.data.behavior_schema import as_columns, time_context
from genrec.data.interactions import InteractionLog
from genrec.rank_zero_log import get_logger

log = get_logger(__name__)

# Bump when generate_behavior's output for the same settings changes: cached data is keyed on it
# (together with synthetic.GENERATOR_VERSION, whose item sequences it reuses).
GENERATOR_VERSION = 2  # 2: the author column

FAR, OTHER, FAVOURITE = 0, 1, 2
# match level -> (P(like | click), P(not_interested | click, no like), mean watch ratio)
MATCH_EFFECTS = {FAVOURITE: (0.55, 0.01, 0.85), OTHER: (0.10, 0.05, 0.50), FAR: (0.02, 0.40, 0.15)}


def item_clusters(n_items: int, n_clusters: int, seed: int) -> np.ndarray:
    """generate_synthetic's cluster of each item, [n_items] in 0..n_clusters-1 (its first draw)."""
    return np.random.default_rng(seed).integers(0, n_clusters, n_items)


def item_authors(clusters: np.ndarray, authors_per_cluster: int, seed: int) -> np.ndarray:
    """Each item's author [n_items], 1-based: one of its cluster's `authors_per_cluster` authors
    (cluster c -> c * authors_per_cluster + 1 .. (c + 1) * authors_per_cluster)."""
    rng = np.random.default_rng([seed, 16])  # its own stream: the other columns do not move
    return clusters * authors_per_cluster + rng.integers(0, authors_per_cluster, len(clusters)) + 1


def match_levels(users: np.ndarray, clusters: np.ndarray, n_favourite: int) -> np.ndarray:
    """FAVOURITE / OTHER / FAR of each event [N] from each user's cluster counts (ties: lower id)."""
    _, u = np.unique(users, return_inverse=True)  # [N] users as 0..U-1
    counts = np.zeros((u.max() + 1, clusters.max() + 1), np.int64)  # [U, C]
    np.add.at(counts, (u, clusters), 1)
    top = np.argsort(-counts, axis=1, kind="stable")[:, :n_favourite]  # [U, n_favourite]
    favourite = np.zeros(counts.shape, bool)
    np.put_along_axis(favourite, top, True, axis=1)
    level = np.full(len(u), OTHER, np.int64)
    level[counts[u, clusters] <= 1] = FAR
    level[favourite[u, clusters]] = FAVOURITE
    return level


def _context(rng: np.random.Generator, users: np.ndarray, times: np.ndarray) -> dict[str, np.ndarray]:
    """User attributes and per-event context; times [N] moved to the user's hour of day."""
    n_users, n = int(users.max()) + 1, len(users)
    pref_hour = rng.choice([8, 12, 19, 21, 23], n_users)  # [U]
    pref_device = rng.integers(1, 4, n_users)  # [U] 1 phone, 2 tablet, 3 desktop
    hour = (pref_hour[users] + np.rint(rng.normal(0, 1.5, n)).astype(np.int64)) % 24  # [N]
    seconds = times // 86_400 * 86_400 + hour * 3600 + rng.integers(0, 3600, n)  # gaps >= 1 day: order kept
    device = np.where(rng.random(n) < 0.85, pref_device[users], rng.integers(1, 4, n))
    return {"seconds": seconds, **time_context(seconds), "device": device,
            "network": rng.choice([1, 2, 3], n, p=[0.6, 0.3, 0.1]),
            "source": rng.choice([1, 2, 3, 4], n, p=[0.6, 0.15, 0.15, 0.1]),
            "position": np.minimum(rng.geometric(0.25, n), 10),
            "age": rng.integers(16, 66, n_users)[users], "gender": rng.integers(1, 3, n_users)[users],
            "occupation": rng.integers(1, 13, n_users)[users]}


def _feedback(rng: np.random.Generator, level: np.ndarray, ctx: dict[str, np.ndarray],
              duration: np.ndarray) -> dict[str, np.ndarray]:
    """Flags and watch time of each event [N] from its match level and context."""
    n = len(level)
    p_like, p_hate, mean_ratio = (np.array([MATCH_EFFECTS[k][j] for k in (FAR, OTHER, FAVOURITE)])[level]
                                  for j in range(3))  # each [N]
    click = rng.random(n) < 0.97 - 0.05 * (ctx["position"] - 1)
    like = click & (rng.random(n) < p_like)
    ratio = np.clip(mean_ratio + rng.normal(0, 0.15, n) - 0.1 * (ctx["network"] == 3), 0.0, 2.0) * click
    return {"click": click, "like": like, "not_interested": click & ~like & (rng.random(n) < p_hate),
            "collect": like & (rng.random(n) < 0.3), "share": like & (rng.random(n) < 0.15),
            "follow": like & (level == FAVOURITE) & (rng.random(n) < 0.1),
            "comment": click & (rng.random(n) < 0.03 + 0.1 * like),
            "watch_ratio": ratio, "duration": duration, "watch_time": ratio * duration}


def generate_behavior(
    n_users: int = 2000,
    n_items: int = 500,
    n_clusters: int = 20,
    min_length: int = 10,
    max_length: int = 60,
    p_follow: float = 0.75,
    p_popular: float = 0.05,
    zipf_a: float = 1.2,
    n_favourite: int = 2,
    authors_per_cluster: int = 4,
    seed: int = 0,
) -> InteractionLog:
    """A seeded synthetic behaviour log with every field of the schema but rating."""
    base = synthetic.generate_synthetic(n_users, n_items, n_clusters, min_length, max_length, p_follow,
                                        p_popular, zipf_a, seed)
    clusters = item_clusters(n_items, n_clusters, seed)  # [n_items]
    cluster = clusters[base.items]  # [N]
    level = match_levels(base.users, cluster, n_favourite)  # [N]
    rng = np.random.default_rng([seed, 15])  # its own stream: the item sequences stay generate_synthetic's
    duration = np.round(np.clip(np.exp(rng.normal(4.0, 0.6, n_items)), 5, 600), 1)  # [n_items] seconds
    ctx = _context(rng, base.users, base.timestamps)  # type: ignore[arg-type]
    values = {**{k: v for k, v in ctx.items() if k != "seconds"}, "category": cluster + 1,
              "author": item_authors(clusters, authors_per_cluster, seed)[base.items],
              **_feedback(rng, level, ctx, duration[base.items])}
    return InteractionLog(base.users, base.items, ctx["seconds"], source="behavior_synthetic",
                          columns=as_columns(values))


class SyntheticBehaviorSource(synthetic.SyntheticSource):
    """`SyntheticSource` serving `generate_behavior` (Hydra-buildable, the Source interface)."""

    generator = staticmethod(generate_behavior)

    def __init__(self, name: str = "behavior_synthetic", **params: Any) -> None:
        super().__init__(name, **params)

    def versions(self) -> dict[str, int]:
        return {"generator_version": GENERATOR_VERSION,
                "sequence_generator_version": synthetic.GENERATOR_VERSION}
