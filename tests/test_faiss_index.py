"""CandidateIndex (genrec/serving/index.py): exact search equals a brute-force matmul top-K, the
approximate kinds find most of the exact neighbours on clustered data, bad input is refused."""

import numpy as np
import pytest
import torch

from genrec.serving.index import MISSING_ID, CandidateIndex, time_search


def clustered(n: int, dim: int = 16, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """Unit vectors around `clusters` random unit centres (the shape of trained item vectors)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim))  # [n, dim]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_exact_matches_brute_force_top_k():
    vectors, queries = clustered(500, seed=0), clustered(7, seed=1)
    ids = np.arange(1000, 1500)[::-1].copy()  # ids differ from positions: the index must map them
    scores, found = CandidateIndex.build(vectors, ids, kind="exact").search(queries, 25)
    brute = torch.from_numpy(queries) @ torch.from_numpy(vectors).T  # [7, 500]
    top = brute.topk(25, dim=1)
    torch.testing.assert_close(torch.from_numpy(scores), top.values, rtol=1e-5, atol=1e-5)
    assert (found == ids[top.indices.numpy()]).all()


@pytest.mark.parametrize("kind,options", [("ivf", {"nprobe": 8}), ("hnsw", {"ef_search": 64})])
def test_approximate_recall_on_clustered_data(kind, options):
    vectors, queries = clustered(4000, seed=2), clustered(50, seed=3)
    ids = np.arange(1, 4001)
    exact = CandidateIndex.build(vectors, ids, kind="exact")
    approx = CandidateIndex.build(torch.from_numpy(vectors), torch.from_numpy(ids), kind=kind, **options)
    recall = approx.recall_against(exact, queries, 10)
    assert 0.8 <= recall <= 1.0
    assert exact.recall_against(exact, queries, 10) == 1.0


def test_ivf_defaults_and_missing_slots():
    vectors = clustered(400, seed=4)
    ivf = CandidateIndex.build(vectors, np.arange(1, 401), kind="ivf", nprobe=1)
    assert ivf.index.nlist == 80  # 4 * sqrt(400)
    scores, found = ivf.search(clustered(3, seed=5), 400)  # one list of 80 cannot hold 400
    missing = found == MISSING_ID
    assert missing.any() and np.isneginf(scores[missing]).all()
    assert np.isfinite(scores[~missing]).all() and (found[~missing] >= 1).all()


def test_bad_input_is_refused():
    vectors = clustered(50)
    index = CandidateIndex.build(vectors, np.arange(50))
    with pytest.raises(ValueError, match="dimension 8, the index holds dimension 16"):
        index.search(np.zeros((2, 8), np.float32), 5)
    with pytest.raises(ValueError, match="k = 51"):
        index.search(vectors[:2], 51)
    with pytest.raises(ValueError, match="k = 0"):
        index.search(vectors[:2], 0)
    bad = vectors.copy()
    bad[3, 1] = np.nan
    bad[7, 0] = np.inf
    with pytest.raises(ValueError, match=r"vectors: 2 row\(s\) hold NaN or inf \(first rows \[3, 7\]\)"):
        CandidateIndex.build(bad, np.arange(50))
    with pytest.raises(ValueError, match="queries: 1 row"):
        index.search(bad[3:4], 5)
    with pytest.raises(ValueError, match="duplicates"):
        CandidateIndex.build(vectors, np.zeros(50, np.int64))
    with pytest.raises(ValueError, match="unknown index kind 'lsh'"):
        CandidateIndex.build(vectors, np.arange(50), kind="lsh")


def test_time_search_reports_per_query_latency():
    index = CandidateIndex.build(clustered(200), np.arange(200))
    t = time_search(index, clustered(20, seed=6), k=10, batch=4, min_time=0.0, min_iters=6)
    assert t["calls"] == 6 and t["batch"] == 4
    assert t["ms_per_query"] == pytest.approx(t["mean_ms"] / 4) and t["p50_ms"] > 0


def test_hnsw_large_k_search_leaves_ef_search_alone():
    vectors = clustered(300, seed=7)
    hnsw = CandidateIndex.build(vectors, np.arange(300), kind="hnsw", ef_search=16)
    _, found = hnsw.search(vectors[:2], 200)  # needs ef >= 200 for this call
    assert (found >= 0).all() and hnsw.index.hnsw.efSearch == 16
