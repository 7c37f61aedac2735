"""Candidate retrieval over item vectors with faiss: maximum inner product search, exact or approximate.

Kinds (all inner product, so L2-normalised vectors give cosine similarity):
  exact  IndexFlatIP: brute force, the reference the approximate kinds are measured against.
  ivf    IndexIVFFlat: k-means into `nlist` lists (default 4 * sqrt(N)), trained on the indexed
         vectors themselves (faiss subsamples to `train_points_per_list` per list), `nprobe` lists
         scanned per query.
  hnsw   IndexHNSWFlat(METRIC_INNER_PRODUCT): graph with `hnsw_m` links per node, `ef_search`
         (raised to k when smaller, as faiss does) candidates kept while searching.
An approximate search may find fewer than k vectors (IVF with few lists probed): the missing slots
get id -1 and score -inf, so they sort last and never match a real item id.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import faiss
import numpy as np
import torch

KINDS = ("exact", "ivf", "hnsw")
MISSING_ID = -1


def _as_float32(name: str, array, dim: int | None = None) -> np.ndarray:
    """A C-contiguous float32 [n, d] copy of `array` (numpy or torch), checked for shape and finiteness."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty [n, d] matrix, got shape {tuple(array.shape)}")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"{name}: vectors have dimension {array.shape[1]}, the index holds dimension {dim}")
    bad = ~np.isfinite(array).all(axis=1)  # [n]
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(f"{name}: {len(rows)} row(s) hold NaN or inf (first rows {rows[:5].tolist()})")
    return array


def _faiss_index(vectors: np.ndarray, kind: str, nlist: int | None, nprobe: int, hnsw_m: int,
                 ef_search: int, train_points_per_list: int, seed: int) -> faiss.Index:
    n, dim = vectors.shape
    if kind == "exact":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = ef_search
        return index
    nlist = nlist or max(1, round(4 * math.sqrt(n)))
    if nlist > n:
        raise ValueError(f"ivf: nlist {nlist} exceeds the {n} vectors to cluster")
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.max_points_per_centroid = train_points_per_list  # k-means on a sample: faster, same lists
    index.cp.seed = seed
    index.train(vectors)
    index.nprobe = min(nprobe, nlist)
    return index


@dataclass
class CandidateIndex:
    """Item vectors in a faiss index, searched by user vectors; returns the items' own ids."""

    index: faiss.Index
    ids: np.ndarray  # int64 [N]: position in the index -> item id
    kind: str
    dim: int

    @classmethod
    def build(cls, vectors, ids, kind: str = "exact", nlist: int | None = None, nprobe: int = 16,
              hnsw_m: int = 32, ef_search: int = 64, train_points_per_list: int = 64,
              seed: int = 0) -> CandidateIndex:
        """vectors float32 [N, D], ids int64 [N] (unique)."""
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)}")
        vectors = _as_float32("vectors", vectors)
        ids = np.asarray(ids.cpu().numpy() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64)
        if ids.shape != (len(vectors),):
            raise ValueError(f"ids: expected shape ({len(vectors)},) to match the vectors, got {ids.shape}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids: every indexed vector needs its own id; found duplicates")
        index = _faiss_index(vectors, kind, nlist, nprobe, hnsw_m, ef_search, train_points_per_list, seed)
        index.add(vectors)
        return cls(index=index, ids=ids, kind=kind, dim=vectors.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries float32 [B, D] -> (scores float32 [B, k] best first, ids int64 [B, k])."""
        if not 1 <= k <= len(self):
            raise ValueError(f"k = {k}: must be between 1 and the {len(self)} indexed vectors")
        queries = _as_float32("queries", queries, self.dim)
        params = None
        if self.kind == "hnsw":  # ef >= k for this call only (the index keeps its own efSearch)
            params = faiss.SearchParametersHNSW(efSearch=max(self.index.hnsw.efSearch, k))
        scores, rows = self.index.search(queries, k, params=params)  # [B, k], [B, k] (-1 = nothing found)
        found = rows >= 0
        ids = np.where(found, self.ids[np.where(found, rows, 0)], MISSING_ID)  # [B, k]
        scores = np.where(found, scores, -np.inf).astype(np.float32)  # [B, k]
        return scores, ids

    def recall_against(self, exact: CandidateIndex, queries, k: int) -> float:
        """Mean over queries of |top-k here ∩ exact top-k| / k (ties at the k-th exact score aside)."""
        _, mine = self.search(queries, k)  # [B, k]
        _, truth = exact.search(queries, k)  # [B, k]
        hits = [len(np.intersect1d(a[a != MISSING_ID], b)) for a, b in zip(mine, truth, strict=True)]
        return float(np.mean(hits) / k)


def time_search(index: CandidateIndex, queries, k: int, batch: int = 1, min_time: float = 0.5,
                min_iters: int = 5) -> dict:
    """Latency of index.search on batches of `batch` queries, cycling through `queries`:
    p50/p99/mean ms per batch (after one warm-up call) and ms per query."""
    queries = _as_float32("queries", queries, index.dim)
    starts = range(0, max(1, len(queries) - batch + 1), batch)
    index.search(queries[:batch], k)
    times: list[float] = []
    begin = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - begin < min_time:
        start = starts[len(times) % len(starts)]
        t0 = time.perf_counter()
        index.search(queries[start:start + batch], k)
        times.append((time.perf_counter() - t0) * 1e3)
    ms = np.asarray(times)
    return {"batch": batch, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "ms_per_query": float(ms.mean() / batch), "calls": len(ms)}
