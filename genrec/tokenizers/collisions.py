"""Deterministic collision resolution: after it, item <-> code is a bijection with n_digit unchanged.

Rule. Items are visited in item-id order. The first item holding a code keeps it; every later
item sharing that code ("a mover", in ascending id order) moves to the unused code under the same
first n_digit - 1 digits whose last digit is nearest to the item, by the squared distance between
the vector that digit quantises (`quantizer.digit_target`) and the last codebook's codewords; ties
go to the lowest code. "Unused" means held by no item's original code and not given to an earlier
mover. If all codebook_size last digits under that prefix are taken, the last 2 digits are freed
(then 3, ...), candidates ranked by the sum of their per-digit distances (exact for OPQ, whose
digits quantise orthogonal sub-spaces; for residual k-means the residual targets of the freed
digits are taken from the item's original code, an approximation used only in this rare case).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from genrec.tokenizers.index import pack_codes

MAX_CANDIDATES = 1 << 24  # freed-digit candidate codes examined for one item


@dataclass
class CollisionStats:
    """collisions: items that had to move (n_items - distinct codes before resolution).
    shared_codes: codes held by more than one item before resolution; max_bucket: most items on one code.
    moved_by_level: how many movers freed 1, 2, ... trailing digits.
    """

    collisions: int = 0
    shared_codes: int = 0
    max_bucket: int = 1
    moved_by_level: dict[int, int] = field(default_factory=dict)


def _digit_distances(quantizer, x: np.ndarray, codes: np.ndarray, level: int) -> np.ndarray:
    """Squared distances of each row's digit-`level` target to every codeword: float [n, K]."""
    target = quantizer.digit_target(x, codes, level).astype(np.float64)  # [n, d_l]
    book = quantizer.codebooks[level].astype(np.float64)  # [K, d_l]
    # expanded square, never an [n, K, d_l] temporary
    return (target**2).sum(1)[:, None] - 2.0 * target @ book.T + (book**2).sum(1)[None, :]


class _Occupancy:
    """Which packed codes are taken: the original distinct codes (sorted) plus movers' new codes."""

    def __init__(self, unique_packed: np.ndarray, k: int) -> None:
        self.unique = unique_packed  # int64 [u] sorted
        self.k = k
        self.assigned: dict[int, list[int]] = {}  # movers' codes by their first n_digit - 1 digits

    def add(self, code: int) -> None:
        self.assigned.setdefault(code // self.k, []).append(code)

    def used(self, first: int, count: int) -> np.ndarray:
        """bool [count]: is code first + j taken, for j in 0..count-1."""
        lo, hi = np.searchsorted(self.unique, [first, first + count])
        mask = np.zeros(count, dtype=bool)
        mask[self.unique[lo:hi] - first] = True
        if count == self.k:  # the common case: one last-digit block
            new = np.array(self.assigned.get(first // self.k, []), dtype=np.int64)
        else:
            new = np.array([c for block in self.assigned.values() for c in block], dtype=np.int64)
            new = new[(new >= first) & (new < first + count)]
        mask[new - first] = True
        return mask


def _place(dists: list[np.ndarray], first: int, occupancy: _Occupancy) -> int | None:
    """Nearest free code among first .. first + K^L - 1 (dists: L vectors [K]) or None if all taken."""
    total = dists[0]
    for d in dists[1:]:
        total = (total[:, None] + d[None, :]).reshape(-1)  # packed order: earlier digit most significant
    total = np.where(occupancy.used(first, total.size), np.inf, total)
    best = int(np.argmin(total))  # first minimum: ties go to the lowest code
    return None if not np.isfinite(total[best]) else first + best


def _move(quantizer, x: np.ndarray, code: np.ndarray, last: np.ndarray, k: int,
          occupancy: _Occupancy) -> tuple[np.ndarray, int]:
    """One mover: its new code [n_digit] and how many trailing digits were freed."""
    n_digit = code.shape[0]
    for free in range(1, n_digit + 1):
        if k ** free > MAX_CANDIDATES:
            break
        if free == 1:
            dists = [last]
        else:
            dists = [_digit_distances(quantizer, x[None], code[None], lv)[0]
                     for lv in range(n_digit - free, n_digit)]
        prefix = int(pack_codes(code[None, : n_digit - free], k)[0]) if free < n_digit else 0
        placed = _place(dists, prefix * k ** free, occupancy)
        if placed is not None:
            occupancy.add(placed)
            digits = [(placed // k ** (n_digit - 1 - lv)) % k for lv in range(n_digit)]
            return np.array(digits, dtype=np.int64), free
    raise RuntimeError(
        f"collision resolution: no free code within {MAX_CANDIDATES} candidates of {code.tolist()}; "
        "the embeddings are too degenerate (too many identical items) for this codebook")


def resolve_collisions(codes: np.ndarray, quantizer, x: np.ndarray) -> tuple[np.ndarray, CollisionStats]:
    """codes int64 [n, n_digit] (row i = item i + 1), x float32 [n, d] -> (distinct codes, stats)."""
    k = quantizer.codebook_size
    packed = pack_codes(codes, k)  # [n]
    unique, first_idx, counts = np.unique(packed, return_index=True, return_counts=True)
    stats = CollisionStats(collisions=len(packed) - len(unique), shared_codes=int((counts > 1).sum()),
                           max_bucket=int(counts.max()))
    if stats.collisions == 0:
        return codes.copy(), stats
    movers = np.setdiff1d(np.arange(len(packed)), first_idx)  # ascending item order
    last = _digit_distances(quantizer, x[movers], codes[movers], codes.shape[1] - 1)  # [m, K]
    occupancy = _Occupancy(unique, k)
    out = codes.copy()
    for j, i in enumerate(movers):
        out[i], free = _move(quantizer, x[i], codes[i], last[j], k, occupancy)
        stats.moved_by_level[free] = stats.moved_by_level.get(free, 0) + 1
    return out, stats
