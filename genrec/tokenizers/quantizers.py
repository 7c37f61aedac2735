"""Two faiss quantisers turning item embeddings into `n_digit` codes of `codebook_size` each.

Both expose the same small surface the collision resolver needs: per-digit codebooks and, for an
item and its code, the vector each digit quantises (`digit_target`), so the distance of any
codeword at digit l to the item is `||digit_target(x, codes, l) - codebooks[l][j]||^2`.

- `OPQQuantizer` (RPG's recipe): a learnt rotation (faiss.OPQMatrix) then a product quantiser;
  digit l encodes sub-vector l of the rotated embedding. Digits are unordered sub-space codes,
  not a coarse-to-fine hierarchy.
- `ResidualKMeans` (TIGER-style coarse-to-fine, RQ-KMeans): level l runs faiss.Kmeans on the
  residual left by levels 0..l-1; digit l encodes that residual.
"""

from __future__ import annotations

import faiss
import numpy as np

from genrec.validation import ConfigError


def _nearest(codebook: np.ndarray, x: np.ndarray) -> np.ndarray:
    """codebook float32 [K, d], x float32 [n, d] -> int64 [n] index of the nearest codeword (L2)."""
    index = faiss.IndexFlatL2(codebook.shape[1])
    index.add(codebook)
    _, idx = index.search(np.ascontiguousarray(x), 1)  # [n, 1]
    return idx[:, 0].astype(np.int64)


class OPQQuantizer:
    """OPQ rotation + product quantiser; needs codebook_size a power of two (faiss PQ nbits).

    When d is not a multiple of n_digit the rotation maps to the next multiple (zero-padded).
    """

    name = "opq"

    def __init__(self, n_digit: int, codebook_size: int, seed: int = 0, niter: int = 25,
                 opq_niter: int = 50) -> None:
        nbits = int(codebook_size).bit_length() - 1
        if codebook_size < 2 or 1 << nbits != codebook_size:
            raise ConfigError(f"tokenizer.codebook_size={codebook_size} must be a power of two >= 2 for opq")
        self.n_digit, self.codebook_size, self.nbits = n_digit, codebook_size, nbits
        self.seed, self.niter, self.opq_niter = seed, niter, opq_niter
        self.opq: faiss.OPQMatrix | None = None
        self.codebooks: list[np.ndarray] = []

    def fit(self, x: np.ndarray) -> OPQQuantizer:
        d = x.shape[1]
        d_out = -(-d // self.n_digit) * self.n_digit
        self.opq = faiss.OPQMatrix(d, self.n_digit, d_out)
        self.opq.niter = self.opq_niter
        self._inner_pq = faiss.ProductQuantizer(d_out, self.n_digit, self.nbits)  # kept alive: opq.pq
        self._inner_pq.cp.seed = self.seed
        self.opq.pq = self._inner_pq
        self.opq.train(x)
        pq = faiss.ProductQuantizer(d_out, self.n_digit, self.nbits)  # the final PQ, fully trained
        pq.cp.seed, pq.cp.niter = self.seed, self.niter
        pq.train(self.transform(x))
        cents = faiss.vector_to_array(pq.centroids).reshape(self.n_digit, self.codebook_size, -1)
        self.codebooks = [np.ascontiguousarray(c) for c in cents]  # n_digit x [K, d_out / n_digit]
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """float32 [n, d] -> the rotated space [n, d_out] the codebooks live in."""
        return self.opq.apply(np.ascontiguousarray(x, dtype=np.float32))

    def encode(self, x: np.ndarray) -> np.ndarray:
        xr = self.transform(x)  # [n, d_out]
        return np.stack([_nearest(c, self._sub(xr, lv)) for lv, c in enumerate(self.codebooks)], 1)

    def _sub(self, xr: np.ndarray, level: int) -> np.ndarray:
        ds = xr.shape[1] // self.n_digit
        return np.ascontiguousarray(xr[:, level * ds:(level + 1) * ds])

    def digit_target(self, x: np.ndarray, codes: np.ndarray, level: int) -> np.ndarray:
        """Sub-vector `level` of the rotated x [n, d_out / n_digit]; it does not depend on codes."""
        return self._sub(self.transform(x), level)


class ResidualKMeans:
    """Level-wise faiss.Kmeans on residuals (any codebook_size >= 2)."""

    name = "rkmeans"

    def __init__(self, n_digit: int, codebook_size: int, seed: int = 0, niter: int = 25) -> None:
        if codebook_size < 2:
            raise ConfigError(f"tokenizer.codebook_size={codebook_size} must be >= 2")
        self.n_digit, self.codebook_size, self.seed, self.niter = n_digit, codebook_size, seed, niter
        self.codebooks: list[np.ndarray] = []

    def fit(self, x: np.ndarray) -> ResidualKMeans:
        residual = np.array(x, dtype=np.float32)  # [n, d], shrinks level by level
        for level in range(self.n_digit):
            km = faiss.Kmeans(residual.shape[1], self.codebook_size, niter=self.niter, seed=self.seed + level)
            km.train(residual)
            self.codebooks.append(np.ascontiguousarray(km.centroids))
            residual -= self.codebooks[-1][_nearest(self.codebooks[-1], residual)]
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=np.float32)

    def encode(self, x: np.ndarray) -> np.ndarray:
        residual = np.array(x, dtype=np.float32)
        codes = []
        for c in self.codebooks:
            codes.append(_nearest(c, residual))  # [n]
            residual -= c[codes[-1]]
        return np.stack(codes, 1)  # [n, n_digit]

    def digit_target(self, x: np.ndarray, codes: np.ndarray, level: int) -> np.ndarray:
        """x minus the codewords of digits 0..level-1 of `codes` [n, d]."""
        residual = np.array(x, dtype=np.float32)
        for lv in range(level):
            residual -= self.codebooks[lv][codes[:, lv]]
        return residual


def make_quantizer(method: str, n_digit: int, codebook_size: int, seed: int = 0, niter: int = 25):
    if method == "opq":
        return OPQQuantizer(n_digit, codebook_size, seed=seed, niter=niter)
    if method == "rkmeans":
        return ResidualKMeans(n_digit, codebook_size, seed=seed, niter=niter)
    raise ConfigError(f"tokenizer.method={method!r}: must be 'opq' or 'rkmeans'")
