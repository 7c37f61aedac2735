"""The LightningDataModule of the SASRec family: one source, leave-one-out, left-padded batches.

The datasets and the collate function are Hydra partials (data.train_dataset, data.eval_dataset,
data.collate), so a new objective is a config change; the task says which batch fields it reads
(`require_fields`, called by build_components) and the model is built from `model_kwargs()`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
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
from genrec.run.distributed import build_once
from genrec.validation import DATA_RANGES, ConfigError, check_ranges

log = logging.getLogger(__name__)


def training_popularity(split: LeaveOneOutSplit) -> torch.Tensor:
    """float [n_items + 1] interaction counts over the training rows only (every user's
    sequence without its validation and test targets; index 0 = padding, count 0)."""
    seqs = split.sequences
    rows = [split.history(u, "train") for u in range(seqs.n_users)]  # without val and test targets
    train = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(np.bincount(train, minlength=seqs.n_items + 1).astype(np.float32))


class SequenceDataModule(L.LightningDataModule):
    """Parses the source once (cached as .npz), splits leave-one-out, serves next-item batches.

    `batch_size` is the global batch: under DDP each rank loads batch_size / world_size.
    Training order and negatives are seeded by (seed, epoch, index) and split over ranks;
    evaluation gives each rank a disjoint shard of the users, none repeated (see samplers.py).
    `pin_memory=None` pins when training on a GPU; `persistent_workers` keeps the
    `num_workers` loader processes alive between epochs. `bucket_window` > 1 draws training
    batches of similar length from windows of that many batches (samplers.EpochShuffleSampler),
    so the collate pads less, and visits each evaluation shard shortest first; 0 or 1: plain
    shuffle, users in id order.
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
        bucket_window: int = 0,
        seed: int = 42,
        cache_dir: str = "data",
        train_dataset: Callable = NextItemTrainDataset,
        eval_dataset: Callable = NextItemEvalDataset,
        collate: Callable = collate,
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
        self.bucket_window = bucket_window
        self.seed = seed
        self.cache_dir = Path(cache_dir)
        check_ranges("data", self, DATA_RANGES)  # named errors for out-of-range numbers
        # partials: train_dataset(split=, maxlen=, **optional fields), eval_dataset(split=, stage=,
        # maxlen=, candidates=), collate(rows) -> batch
        self.make_train_dataset = train_dataset
        self.make_eval_dataset = eval_dataset
        self.collate = collate
        self.train_fields: frozenset[str] = frozenset()  # optional fields the task asked for
        self.split: LeaveOneOutSplit | None = None

    # ---- preprocessing (cached) ----
    @property
    def processed_path(self) -> Path:
        # every preprocessing parameter goes into the key (with the source's and code's versions)
        key = self.source.cache_key(kcore=self.kcore, min_length=self.min_length)
        return self.cache_dir / "processed" / self.source.name / f"{key}.npz"

    def prepare_data(self) -> None:
        """Download and preprocess once; later runs load the cached arrays in seconds.

        Safe when several processes start at once (torchrun): local rank 0 builds the cache
        under a file lock (nodes may share the filesystem), the other ranks wait for the file.
        """
        build_once(self.processed_path, self.processed_path.with_suffix(".lock"), self._build_cache,
                   what=f"the preprocessed '{self.source.name}' data")

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
        self.split = self._load_split()
        self._candidates = {
            s: sampled_candidates(self.split, s, self.sampled_negatives, self.seed)
            if self.sampled_negatives > 0 else None
            for s in ("val", "test")
        }

    def _load_split(self) -> LeaveOneOutSplit:
        if not self.processed_path.exists():
            self.prepare_data()
        return LeaveOneOutSplit(Sequences.load(self.processed_path))

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

    def model_kwargs(self) -> dict:
        """What the model is built from (merged into the model config by build_components)."""
        return {"n_items": self.n_items}

    def input_names(self) -> frozenset[str]:
        """The model inputs its batches carry (SequenceBatch.model_inputs keys)."""
        return frozenset({"items", "timestamps"} if self.has_time else {"items"})

    def check_inputs(self, required: Iterable[str], model: str) -> None:
        """ConfigError naming the missing input when `model` needs one the data lacks."""
        missing = sorted(set(required) - self.input_names())
        if "timestamps" in missing:
            raise ConfigError(f"model {model} needs timestamps, but data '{self.source.name}' has none; "
                              "pick a dataset with time")
        if missing:
            raise ConfigError(f"model {model} needs inputs {missing}, but data '{self.source.name}' "
                              f"batches carry only {sorted(self.input_names())}")

    def require_fields(self, train: Iterable[str] = (), eval: Iterable[str] = ()) -> None:  # noqa: A002
        """The task's batch fields per stage; optional ones are switched on in the datasets,
        fields a dataset cannot produce are a ConfigError (before any loader is built)."""
        for stage, wanted, factory in (("train", train, self.make_train_dataset),
                                       ("eval", eval, self.make_eval_dataset)):
            cls = getattr(factory, "func", factory)
            provided = getattr(cls, "fields", None)
            missing = sorted(set(wanted) - provided) if provided is not None else []
            if missing:
                raise ConfigError(f"the task reads batch fields {missing} in {stage}, which "
                                  f"data.{stage}_dataset ({getattr(cls, '__name__', cls)}) does not "
                                  f"provide (it has {sorted(provided)})")
        self.train_fields = frozenset(train)

    def dataset_kwargs(self) -> dict:
        """Extra keyword arguments for both dataset partials (a subclass's codes, features...)."""
        return {}

    def item_popularity(self) -> torch.Tensor:
        """float [n_items + 1] interaction counts in the training part (index 0 = padding)."""
        return training_popularity(self.split if self.split is not None else self._load_split())

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
            collate_fn=self.collate,
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
        cls = getattr(self.make_train_dataset, "func", self.make_train_dataset)
        optional = {f: f in self.train_fields for f in getattr(cls, "optional_fields", ())}
        dataset = self.make_train_dataset(split=self.split, maxlen=self.maxlen, **optional,
                                          **self.dataset_kwargs())
        lengths = None
        if self.bucket_window > 1:
            if not hasattr(dataset, "row_lengths"):
                raise ConfigError(f"data.bucket_window={self.bucket_window} needs the training rows' "
                                  f"lengths, which {type(dataset).__name__} does not give "
                                  "(row_lengths()); set data.bucket_window=0")
            lengths = dataset.row_lengths()
        sampler = EpochShuffleSampler(dataset, num_replicas=world, rank=rank, seed=self.seed,
                                      lengths=lengths, batch_size=self.batch_size,
                                      bucket_window=self.bucket_window)
        return self._loader(EpochSeededDataset(dataset, self.seed), self.batch_size // world, sampler)

    def build_eval_dataset(self, stage: str):
        return self.make_eval_dataset(split=self.split, stage=stage, maxlen=self.maxlen,
                                      candidates=self._candidates[stage], **self.dataset_kwargs())

    def _eval_loader(self, stage: str) -> DataLoader:
        world, rank = self._world()
        dataset = self.build_eval_dataset(stage)
        # bucketing also orders each evaluation shard by length (metrics are sums: order-free)
        ordered = self.bucket_window > 1 and hasattr(dataset, "row_lengths")
        lengths = dataset.row_lengths() if ordered else None
        sampler = ShardSampler(dataset, num_replicas=world, rank=rank, lengths=lengths)
        return self._loader(dataset, max(1, self.eval_batch_size // world), sampler)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
