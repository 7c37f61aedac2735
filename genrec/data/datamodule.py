"""The LightningDataModule of the SASRec family: one source, leave-one-out, left-padded batches."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from genrec.data.datasets import (
    NextItemEvalDataset,
    NextItemTrainDataset,
    collate,
    sampled_candidates,
)
from genrec.data.interactions import LeaveOneOutSplit, Sequences
from genrec.data.samplers import EpochSeededDataset, EpochShuffleSampler, ShardSampler
from genrec.run.distributed import env_local_rank, file_lock, wait_for_file

log = logging.getLogger(__name__)


class SequenceDataModule(L.LightningDataModule):
    """Parses the source once (cached as .npz), splits leave-one-out, serves next-item batches.

    `batch_size` is the global batch: under DDP each rank loads batch_size / world_size.
    Training order and negatives are seeded by (seed, epoch, index) and split over ranks;
    evaluation gives each rank a disjoint shard of the users, none repeated (see samplers.py).
    `pin_memory=None` pins when training on a GPU; `persistent_workers` keeps the
    `num_workers` loader processes alive between epochs.
    """

    def __init__(
        self,
        source,
        maxlen: int = 200,
        batch_size: int = 128,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        persistent_workers: bool = True,
        pin_memory: bool | None = None,
        prefetch_factor: int | None = None,
        kcore: int = 0,
        min_length: int = 3,
        sampled_negatives: int = 100,
        train_negatives: bool = True,
        seed: int = 42,
        cache_dir: str = "data",
    ) -> None:
        super().__init__()
        self.source = source
        self.maxlen = maxlen
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.persistent_workers = persistent_workers
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.kcore = kcore
        self.min_length = min_length
        self.sampled_negatives = sampled_negatives
        self.train_negatives = train_negatives
        self.seed = seed
        self.cache_dir = Path(cache_dir)
        self.split: LeaveOneOutSplit | None = None

    # ---- preprocessing (cached) ----
    @property
    def processed_path(self) -> Path:
        key = f"{self.source.fingerprint()}-k{self.kcore}-m{self.min_length}"
        return self.cache_dir / "processed" / self.source.name / f"{key}.npz"

    def prepare_data(self) -> None:
        """Download and preprocess once; later runs load the cached arrays in seconds.

        Safe when several processes start at once (torchrun): local rank 0 builds the cache
        under a file lock (nodes may share the filesystem), the other ranks wait for the file.
        """
        if self.processed_path.exists():
            return
        if env_local_rank() != 0:
            wait_for_file(self.processed_path, what=f"the preprocessed '{self.source.name}' data")
            return
        with file_lock(self.processed_path.with_suffix(".lock")):
            if not self.processed_path.exists():  # another node may have built it meanwhile
                self._build_cache()

    def _build_cache(self) -> None:
        self.source.prepare(self.cache_dir)
        interactions = self.source.load(self.cache_dir)
        if self.kcore > 0:
            interactions = interactions.kcore(self.kcore)
        sequences = interactions.to_sequences().drop_short(self.min_length, interactions.source)
        sequences.save(self.processed_path)
        log.info("%s: %d users, %d items, %d interactions (cached at %s)", self.source.name,
                 sequences.n_users, sequences.n_items, len(sequences.items), self.processed_path)

    def setup(self, stage: str | None = None) -> None:
        if self.split is not None:
            return
        if not self.processed_path.exists():
            self.prepare_data()
        self.split = LeaveOneOutSplit(Sequences.load(self.processed_path))
        self._candidates = {
            s: sampled_candidates(self.split, s, self.sampled_negatives, self.seed)
            if self.sampled_negatives > 0 else None
            for s in ("val", "test")
        }

    # ---- facts the model and task need ----
    @property
    def sequences(self) -> Sequences:
        if self.split is None:
            self.setup()
        return self.split.sequences

    @property
    def n_items(self) -> int:
        return self.sequences.n_items

    @property
    def has_time(self) -> bool:
        return self.sequences.timestamps is not None

    def item_popularity(self) -> torch.Tensor:
        """float [n_items + 1] interaction counts in the training part (index 0 = padding)."""
        seqs = self.sequences
        train_rows = np.concatenate([seqs.user(u)[:-2] for u in range(seqs.n_users)])
        return torch.from_numpy(np.bincount(train_rows, minlength=seqs.n_items + 1).astype(np.float32))

    # ---- loaders ----
    def _world(self) -> tuple[int, int]:
        """(world size, global rank) of the attached trainer; (1, 0) without one."""
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def _loader(self, dataset, batch_size: int, sampler) -> DataLoader:
        workers = self.num_workers > 0
        pin = self.pin_memory
        if pin is None:  # pinned host memory only pays off for copies to a GPU
            pin = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.persistent_workers and workers,
            prefetch_factor=self.prefetch_factor if workers else None,
            pin_memory=pin,
            # the workers' base seed comes from here, not from the global RNG, so creating an
            # iterator never shifts the dropout stream (a resumed run creates it at another time)
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        world, rank = self._world()
        if self.batch_size % world:
            raise ValueError(f"data.batch_size={self.batch_size} (global) does not divide by "
                             f"world size {world}")
        dataset = NextItemTrainDataset(self.split, self.maxlen, negatives=self.train_negatives)
        sampler = EpochShuffleSampler(dataset, num_replicas=world, rank=rank, seed=self.seed)
        return self._loader(EpochSeededDataset(dataset, self.seed), self.batch_size // world, sampler)

    def eval_dataset(self, stage: str) -> NextItemEvalDataset:
        return NextItemEvalDataset(self.split, stage, self.maxlen, self._candidates[stage])

    def _eval_loader(self, stage: str) -> DataLoader:
        world, rank = self._world()
        dataset = self.eval_dataset(stage)
        sampler = ShardSampler(dataset, num_replicas=world, rank=rank)
        return self._loader(dataset, max(1, self.eval_batch_size // world), sampler)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
