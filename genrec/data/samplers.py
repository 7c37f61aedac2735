"""Samplers that make every random draw a function of (seed, epoch, index), under DDP or not.

Training: `EpochShuffleSampler` shuffles with a generator seeded by (seed, epoch), gives each
rank a disjoint stride of that permutation and yields `(index, epoch)` keys; `EpochSeededDataset`
seeds torch's RNG from (seed, epoch, index) around each item, so negatives drawn inside a
dataset's `__getitem__` repeat exactly on a rerun, whatever the worker count and even after a
resume. Evaluation: `ShardSampler` gives each rank every world-size-th user and pads nothing,
so with sum-state metrics every user is counted exactly once.

Both subclass `DistributedSampler` so Lightning keeps them instead of injecting its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


class EpochShuffleSampler(DistributedSampler):
    """Seeded per-epoch permutation, strided over ranks; the last stride is padded by wrapping
    around (as DistributedSampler does) so that every rank takes the same number of steps.

    With `lengths` and `bucket_window` > 1 the permutation is cut into windows of
    `bucket_window` global batches, each window is sorted by length and cut into batches, and
    the full batches are shuffled (the one short batch stays last): a batch then holds rows of
    similar length, so a collate that pads to its longest row pads little. Every row is still
    seen once per epoch. `batch_size` is the global batch; rank r's loader batch (batch_size /
    world) is its stride of one global batch.

    Lightning calls `set_epoch` before every epoch; a plain loop that does not gets the next
    epoch on each new pass, so it still sees a fresh order every time.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 lengths: np.ndarray | None = None, batch_size: int = 1, bucket_window: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        if bucket_window > 1 and (lengths is None or len(lengths) != len(dataset)):
            raise ValueError("bucket_window > 1 needs one length per dataset row")
        self.lengths = lengths
        self.batch_size = batch_size
        self.bucket_window = bucket_window
        self._passes_at_epoch = 0  # passes started since the epoch was last set

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._passes_at_epoch = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self._passes_at_epoch:
            self.epoch += 1
        self._passes_at_epoch += 1
        n = len(self.dataset)
        # [seed, epoch] goes through SeedSequence: seed 1 epoch 0 and seed 0 epoch 1 differ
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n)  # [n]
        if self.bucket_window > 1:
            order = self._bucketed(order, rng)
        order = np.resize(order, self.total_size)  # wraps around to pad
        for index in order[self.rank :: self.num_replicas]:
            yield int(index), self.epoch

    def _bucketed(self, order: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """`order` regrouped into global batches of similar length, in random batch order."""
        b, window = self.batch_size, self.batch_size * self.bucket_window
        windows = [order[i : i + window] for i in range(0, len(order), window)]
        # stable sort: rows of equal length keep their random order
        ranked = np.concatenate([w[np.argsort(self.lengths[w], kind="stable")] for w in windows])
        full = len(ranked) // b
        batches = ranked[: full * b].reshape(full, b)[rng.permutation(full)]  # [full, b]
        return np.concatenate([batches.reshape(-1), ranked[full * b :]])  # the short batch last


class EpochSeededDataset(Dataset):
    """Indexed by `(index, epoch)`: torch's CPU RNG is seeded from (seed, epoch, index) while the
    wrapped dataset builds the item, and restored afterwards (the training RNG stream is untouched)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        rng = torch.default_generator  # torch.random.fork_rng costs ~40x more per item
        state = rng.get_state()
        rng.manual_seed(item_seed(self.seed, epoch, index))
        try:
            return self.dataset[index]
        finally:
            rng.set_state(state)


_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for every (seed, epoch, index) (nearby triples do not collide)."""
    return _splitmix64(_splitmix64(_splitmix64(seed) ^ epoch) ^ index) >> 1


class ShardSampler(DistributedSampler):
    """Users rank, rank + world, rank + 2 * world, ...: shards differ in size by at most one and
    nothing is repeated (DistributedSampler would pad by repeating users, counting them twice).
    With `lengths`, each shard is visited shortest first, so a batch pads to similar lengths."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0,
                 lengths: np.ndarray | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.lengths = lengths

    def __iter__(self) -> Iterator[int]:
        shard = np.arange(self.rank, len(self.dataset), self.num_replicas)
        if self.lengths is not None:
            shard = shard[np.argsort(self.lengths[shard], kind="stable")]
        return iter(shard.tolist())

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))
