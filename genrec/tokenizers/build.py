"""Embeddings -> quantiser -> collision-free codes -> `SemanticIDIndex`, with the build's statistics."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import faiss
import numpy as np

from genrec.data.interactions import DataError
from genrec.rank_zero_log import get_logger
from genrec.tokenizers.collisions import resolve_collisions
from genrec.tokenizers.index import SemanticIDIndex, check_capacity
from genrec.tokenizers.quantizers import make_quantizer

log = get_logger(__name__)


@dataclass
class TokenizerConfig:
    """method: 'opq' (OPQ + PQ, RPG) or 'rkmeans' (residual k-means, TIGER-style).
    threads: faiss OpenMP threads (None = faiss default; 1 is much faster on a loaded shared CPU).
    normalize: L2-normalise embeddings first (sentence embeddings already are).
    """

    method: str = "rkmeans"
    n_digit: int = 4
    codebook_size: int = 256
    seed: int = 0
    niter: int = 25
    normalize: bool = False
    threads: int | None = None


def code_utilisation(codes: np.ndarray, codebook_size: int) -> list[float]:
    """Fraction of each digit's codebook used by at least one item: n_digit floats in (0, 1]."""
    return [len(np.unique(codes[:, digit])) / codebook_size for digit in range(codes.shape[1])]


def build_semantic_ids(embeddings: np.ndarray, cfg: TokenizerConfig,
                       on_stage: Callable[[str], None] | None = None,
                       meta: dict | None = None) -> SemanticIDIndex:
    """embeddings float [n_items, d] (row i = item i + 1, no padding row) -> SemanticIDIndex.

    `on_stage(name)` is called as each stage ends ('fit', 'encode', 'resolve'); the statistics
    (collisions before resolution, utilisation per digit, seconds) land in `index.meta`.
    """
    x = np.ascontiguousarray(embeddings, dtype=np.float32)  # [n, d]
    if x.ndim != 2 or not np.isfinite(x).all():
        raise DataError(f"embeddings: must be a finite [n_items, d] matrix, got shape {x.shape}")
    check_capacity(len(x), cfg.n_digit, cfg.codebook_size)
    if cfg.normalize:
        x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
    if cfg.threads is not None:
        faiss.omp_set_num_threads(cfg.threads)
    stage = on_stage or (lambda name: None)
    t0 = time.perf_counter()
    quantizer = make_quantizer(cfg.method, cfg.n_digit, cfg.codebook_size, cfg.seed, cfg.niter).fit(x)
    stage("fit")
    t_fit = time.perf_counter() - t0
    raw = quantizer.encode(x)  # [n, n_digit]
    stage("encode")
    codes, stats = resolve_collisions(raw, quantizer, x)
    stage("resolve")
    table = np.concatenate([np.full((1, cfg.n_digit), -1, dtype=np.int64), codes], 0)  # [n + 1, n_digit]
    info = {**(meta or {}), "config": asdict(cfg), "n_dim": int(x.shape[1]),
            "fit_seconds": round(t_fit, 3), "build_seconds": round(time.perf_counter() - t0, 3),
            "collisions": stats.collisions, "shared_codes": stats.shared_codes,
            "max_bucket": stats.max_bucket,
            "moved_by_freed_digits": {str(k): v for k, v in sorted(stats.moved_by_level.items())},
            "utilisation_before": code_utilisation(raw, cfg.codebook_size),
            "utilisation": code_utilisation(codes, cfg.codebook_size)}
    return SemanticIDIndex(table, cfg.codebook_size, info)
