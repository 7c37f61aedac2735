"""Hash-based embeddings (Phoenix): any id >= 0 -> a vector, without a vocabulary.

Each id x is looked up through `num_hashes` independent universal hash functions
    h_i(x) = 1 + ((a_i * x + b_i) mod P) mod (num_buckets - 1),   P = 2^31 - 1 (a Mersenne prime),
into ONE shared table [num_buckets, hash_dim]; the per-hash vectors are concatenated and projected
to `dim` (the released code's reduction). Bucket 0 is reserved for id 0 (padding), whose output is
exactly zero. (a_i, b_i) come from numpy's default_rng(seed), so the buckets are the same in every
process and run; an id never seen in training still lands in trained buckets. Only int64 mul / add /
remainder, so the lookup exports (ONNX) as it runs. x is reduced mod P first, which leaves h_i
unchanged and keeps a_i * x below 2^62 for any int64 id.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

HASH_PRIME = 2**31 - 1


def hash_coefficients(num_hashes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) int64 [num_hashes]: a_i in [1, P), b_i in [0, P), from default_rng(seed)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, HASH_PRIME, size=num_hashes, dtype=np.int64)
    b = rng.integers(0, HASH_PRIME, size=num_hashes, dtype=np.int64)
    return a, b


class HashEmbedding(nn.Module):
    """ids int64 [...] -> [..., dim]; id 0 -> zeros."""

    def __init__(self, num_buckets: int, dim: int, num_hashes: int = 2, seed: int = 0,
                 hash_dim: int | None = None) -> None:
        super().__init__()
        if num_buckets < 2:
            raise ValueError(f"num_buckets must be >= 2 (bucket 0 is padding), got {num_buckets}")
        if num_hashes < 1:
            raise ValueError(f"num_hashes must be >= 1, got {num_hashes}")
        self.num_buckets, self.num_hashes = num_buckets, num_hashes
        hash_dim = hash_dim or max(1, dim // num_hashes)
        a, b = hash_coefficients(num_hashes, seed)
        self.register_buffer("hash_a", torch.from_numpy(a), persistent=False)  # [K]
        self.register_buffer("hash_b", torch.from_numpy(b), persistent=False)  # [K]
        self.table = nn.Embedding(num_buckets, hash_dim, padding_idx=0)  # shared by the K hashes
        self.proj = nn.Linear(num_hashes * hash_dim, dim, bias=False)  # no bias: id 0 stays 0

    def buckets(self, ids: torch.Tensor) -> torch.Tensor:
        """ids int64 [...] (>= 0) -> bucket ids int64 [..., K] in [1, num_buckets); id 0 -> 0."""
        x = (ids.long() % HASH_PRIME).unsqueeze(-1)  # [..., 1], < 2^31 so a * x < 2^62
        h = (self.hash_a * x + self.hash_b) % HASH_PRIME  # [..., K]
        h = 1 + h % (self.num_buckets - 1)  # [..., K] in 1..num_buckets-1
        return h * (ids != 0).unsqueeze(-1).long()  # [..., K] padding -> the zero row

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids int64 [...] -> [..., dim]."""
        vectors = self.table(self.buckets(ids))  # [..., K, hash_dim]
        return self.proj(vectors.flatten(-2))  # [..., dim]
