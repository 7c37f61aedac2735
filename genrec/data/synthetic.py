"""The embedded synthetic dataset: the offline default, no network needed.

Items live in clusters; each user has a latent taste (a distribution over clusters) and
walks through items with a Markov structure: the next item is usually a near successor of
the current one in its cluster, sometimes a jump to a new cluster drawn from the user's
taste, sometimes a popular item. A popularity ranking therefore does poorly while a
sequence model that learns the transitions does well.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from genrec.data.interactions import DataError, InteractionLog, processed_key
from genrec.rank_zero_log import get_logger

log = get_logger(__name__)

# Bump when generate_synthetic's output for the same settings changes: cached data is keyed on it.
GENERATOR_VERSION = 1


def generate_synthetic(
    n_users: int = 2000,
    n_items: int = 500,
    n_clusters: int = 20,
    min_length: int = 10,
    max_length: int = 60,
    p_follow: float = 0.75,
    p_popular: float = 0.05,
    zipf_a: float = 1.2,
    seed: int = 0,
) -> InteractionLog:
    """Return a seeded synthetic log with timestamps (one event per 1..3 days)."""
    rng = np.random.default_rng(seed)
    cluster_of = rng.integers(0, n_clusters, n_items)  # [n_items]
    members = [np.flatnonzero(cluster_of == c) for c in range(n_clusters)]
    members = [m if len(m) else rng.integers(0, n_items, 1) for m in members]
    popularity = 1.0 / np.arange(1, n_items + 1) ** zipf_a
    popularity = popularity[rng.permutation(n_items)]
    popularity /= popularity.sum()

    users, items, times = [], [], []
    for u in range(n_users):
        taste = rng.dirichlet(np.full(n_clusters, 0.3))  # few favourite clusters per user
        length = int(rng.integers(min_length, max_length + 1))
        seq = np.empty(length, dtype=np.int64)
        c = rng.choice(n_clusters, p=taste)
        pos = int(rng.integers(len(members[c])))
        for t in range(length):
            r = rng.random()
            if r < p_popular:
                item = int(rng.choice(n_items, p=popularity))
            elif r < p_popular + p_follow:
                # the successor structure a sequence model can learn: step 1 or 2 ahead
                pos = (pos + int(rng.integers(1, 3))) % len(members[c])
                item = int(members[c][pos])
            else:
                c = rng.choice(n_clusters, p=taste)
                pos = int(rng.integers(len(members[c])))
                item = int(members[c][pos])
            seq[t] = item
        start = int(rng.integers(1_500_000_000, 1_600_000_000))
        gaps = rng.integers(1, 4, length) * 86_400
        users.append(np.full(length, u))
        items.append(seq)
        times.append(start + np.cumsum(gaps))
    return InteractionLog(
        np.concatenate(users), np.concatenate(items), np.concatenate(times), source="synthetic"
    )


class SyntheticSource:
    """Hydra-buildable source with the same interface as `genrec.data.sources.Source`.

    `settings` holds every generator argument, defaults included, so a changed default
    changes the cache key too. A subclass swaps `generator` (and `versions`) to serve another
    embedded generator (genrec/data/behavior_synthetic.py).
    """

    generator = staticmethod(generate_synthetic)

    def __init__(self, name: str = "synthetic", **params: Any) -> None:
        self.name = name
        try:
            bound = inspect.signature(self.generator).bind(**params)
        except TypeError as exc:  # a typo fails here, by name
            raise DataError(f"data '{name}': bad synthetic setting: {exc}") from exc
        bound.apply_defaults()
        self.settings: dict[str, Any] = dict(bound.arguments)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, {self.settings})"

    def prepare(self, cache_dir) -> None:  # nothing to download
        return None

    def versions(self) -> dict[str, int]:
        """The generator code versions the cache key and origin carry."""
        return {"generator_version": GENERATOR_VERSION}

    def load(self, cache_dir) -> InteractionLog:
        interactions = self.generator(**self.settings)
        generator = f"{self.generator.__module__}.{self.generator.__qualname__}"
        interactions.origin = {"name": self.name, "generator": generator, **self.versions(),
                               "settings": dict(self.settings)}
        log.info("data '%s': generated %d interactions with %s", self.name, len(interactions), self.settings)
        return interactions

    def fingerprint(self) -> str:
        return processed_key(self.name, **self.versions(), **self.settings)

    def cache_key(self, **preprocessing: Any) -> str:
        """Key of the processed cache: generator settings and version plus every preprocessing parameter."""
        return processed_key(self.fingerprint(), **preprocessing)
