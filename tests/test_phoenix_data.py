"""Phoenix data layer: the author field, action table, event-sequence datasets and data module."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, compose_config
from hydra.utils import instantiate
from omegaconf import open_dict

from genrec.data import behavior, behavior_synthetic
from genrec.data.behavior import FIELD, BehaviorSource, has
from genrec.data.behavior_formats import brand_of_items, read_beauty, read_kuairand
from genrec.data.behavior_schema import RECORD_FIELDS, rating_flags
from genrec.data.behavior_synthetic import SyntheticBehaviorSource, generate_behavior
from genrec.data.datasets import sampled_candidates
from genrec.data.interactions import DataError, InteractionLog, LeaveOneOutSplit
from genrec.data.phoenix_actions import (
    ACTION_SOURCES,
    PHOENIX_ACTIONS,
    action_table,
    actions_markdown,
    phoenix_actions,
)
from genrec.data.phoenix_datamodule import PhoenixDataModule
from genrec.data.phoenix_datasets import (
    MODEL_INPUTS,
    PhoenixEvalDataset,
    RankerTrainDataset,
    RetrievalTrainDataset,
    collate_phoenix,
    popular_items,
)
from genrec.data.samplers import EpochSeededDataset

TINY = dict(n_users=30, n_items=60, n_clusters=4, min_length=8, max_length=14, seed=3)


# ---------------------------------------------------------------------------------------------
# a hand-built log: 2 users, items 1..12 (raw ids = new ids), authors = item // 3 + 1
# ---------------------------------------------------------------------------------------------

def hand_log() -> InteractionLog:
    users = np.array([0] * 7 + [1] * 5)
    items = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])  # raw ids 1..12 -> new ids 1..12
    times = np.arange(12) * 10
    like = np.array([1, 0, 0, 1, 0, 0, 1, 0, 1, 0, 0, 1])
    ratio = np.array([0.9, 0.1, 0.5, 0.2, 0.7, 0.0, 1.2, 0.3, 0.6, 0.4, 0.8, 0.45])
    cols = {"like": like, "click": np.ones(12, np.int8), "not_interested": np.zeros(12, np.int8),
            "watch_ratio": ratio, "source": np.arange(12) % 3 + 1, "author": items // 3 + 1}
    return InteractionLog(users, items, times, "hand", columns=behavior.as_columns(cols))


def hand_arrays():
    seqs = hand_log().to_sequences()
    binary, regression = phoenix_actions(seqs)
    return seqs, binary, regression, action_table(seqs, binary, regression)


def hand_dataset_kwargs(seqs, binary, table) -> dict:
    authors = np.zeros(seqs.n_items + 1, np.int64)
    authors[seqs.items] = seqs.columns["author"]
    return {"item_authors": authors, "surfaces": seqs.columns["source"].astype(np.int64), "actions": table,
            "n_binary": len(binary)}


# ---------------------------------------------------------------------------------------------
# schema, action table
# ---------------------------------------------------------------------------------------------

def test_author_is_a_schema_field_and_record_attribute() -> None:
    assert FIELD["author"].kind == "int" and FIELD["author"].default == 0
    assert RECORD_FIELDS[-1] == "author"
    seqs = hand_log().to_sequences()
    assert behavior.record(seqs, 1, 2).author == 10 // 3 + 1  # user 1's third event is item 10


def test_action_taxonomy_is_the_released_one() -> None:
    assert len(PHOENIX_ACTIONS) == 19
    assert PHOENIX_ACTIONS[0] == "favorite" and PHOENIX_ACTIONS[-1] == "dwell_time"
    assert PHOENIX_ACTIONS.index("follow_author") == 13
    assert set(ACTION_SOURCES) <= set(PHOENIX_ACTIONS)
    assert all(src.field in FIELD for src in ACTION_SOURCES.values())
    table = actions_markdown()
    assert len(table.splitlines()) == 2 + 19 and "`like`" in table and "`watch_ratio >= 0.5`" in table


def test_action_table_of_a_hand_built_log() -> None:
    seqs, binary, regression, table = hand_arrays()
    # not_interested is constant 0 -> dropped; click is constant 1 -> kept (negatives give zeros)
    assert binary == ["favorite", "click", "dwell"] and regression == ["dwell_time"]
    ratio = seqs.columns["watch_ratio"]
    expect = np.stack([seqs.columns["like"], np.ones(12), ratio >= 0.5, ratio], axis=1).astype(np.float32)
    np.testing.assert_array_equal(table, expect)
    assert table.dtype == np.float32 and table[2, 2] == 1.0  # watch ratio exactly 0.5 counts as dwell


def test_ratings_give_favorite_click_not_interested() -> None:
    ratings = np.array([5, 1, 3, 4, 2, 5], np.float32)
    log = InteractionLog(np.array([0, 0, 0, 1, 1, 1]), np.arange(6), np.arange(6), ratings=ratings,
                         columns=behavior.as_columns(rating_flags(ratings)))
    seqs = log.to_sequences()
    binary, regression = phoenix_actions(seqs)
    assert (binary, regression) == (["favorite", "click", "not_interested"], [])
    table = action_table(seqs, binary, regression)
    assert table[:, 0].tolist() == [1, 0, 0, 1, 0, 1] and table[:, 2].tolist() == [0, 1, 0, 0, 1, 0]


# ---------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------

def test_retrieval_rows_left_padded_targets_shifted() -> None:
    seqs, binary, _, table = hand_arrays()
    ds = RetrievalTrainDataset(LeaveOneOutSplit(seqs), maxlen=4, **hand_dataset_kwargs(seqs, binary, table))
    batch = collate_phoenix([ds[0], ds[1]])
    # user 0 training part: items 1..5 -> history 1..4 (last 4), targets 2..5
    # user 1 training part: items 8, 9, 10 -> history 8, 9 left-padded, targets 9, 10
    assert batch.users.tolist() == [1, 2]  # 1-based
    assert batch.hist_items.tolist() == [[1, 2, 3, 4], [0, 0, 8, 9]]
    assert batch.targets.tolist() == [[2, 3, 4, 5], [0, 0, 9, 10]]
    assert batch.hist_authors.tolist() == [[1, 1, 2, 2], [0, 0, 3, 4]]
    assert batch.hist_surfaces.tolist() == [[1, 2, 3, 1], [0, 0, 2, 3]]  # event k: k % 3 + 1
    assert batch.hist_actions.shape == (2, 4, 3)  # binary actions only
    np.testing.assert_array_equal(batch.hist_actions[0].numpy(), table[0:4, :3])
    assert not batch.hist_actions[1, :2].any()
    assert batch.cand_items is None and set(batch.model_inputs()) == set(MODEL_INPUTS[:5])


def test_ranker_negatives_unseen_positives_labelled() -> None:
    seqs, binary, _, table = hand_arrays()
    kw = hand_dataset_kwargs(seqs, binary, table)
    ds = EpochSeededDataset(RankerTrainDataset(LeaveOneOutSplit(seqs), maxlen=10, n_candidates=5, positives=2,
                                               **kw), seed=0)
    seen_cuts = set()
    for epoch in range(12):
        row = ds[(0, epoch)]  # user 0: training events items 1..5 (rows 0..4)
        t = len(row["hist_items"])
        seen_cuts.add(t)
        assert 1 <= t <= 4 and row["hist_items"].tolist() == list(range(1, t + 1))
        n_pos = min(2, 5 - t)
        pos, neg = row["cand_items"][:n_pos], row["cand_items"][n_pos:]
        assert pos.tolist() == list(range(t + 1, t + 1 + n_pos))  # the next events, in order
        np.testing.assert_array_equal(row["labels"][:n_pos], table[t : t + n_pos])
        assert len(neg) == 5 - n_pos and not np.isin(neg, seqs.user(0)).any()  # never the user's items
        assert len(set(neg.tolist())) == len(neg) and not row["labels"][n_pos:].any()
        assert (row["cand_surfaces"] == kw["surfaces"][t]).all()  # the request's surface = event t's
        np.testing.assert_array_equal(row["cand_authors"], kw["item_authors"][row["cand_items"]])
    assert len(seen_cuts) > 1  # the cut moves between epochs
    again = ds[(0, 3)]
    np.testing.assert_array_equal(again["cand_items"], ds[(0, 3)]["cand_items"])  # seeded


def test_popular_negatives_follow_training_popularity_and_skip_the_users_items() -> None:
    probs = np.array([0.5, 0.3, 0.15, 0.05, 0.0])  # items 1..5; item 5 never trained on
    rng = np.random.default_rng(0)
    draws = np.concatenate([popular_items(rng, probs, np.array([2]), 1) for _ in range(4000)])
    counts = np.bincount(draws, minlength=6)
    assert counts[2] == 0 and counts[5] == 0  # the user's item and an item without a count
    assert counts[1] > counts[3] > counts[4] > 0  # in popularity order (item 2 excluded)
    assert abs(counts[1] / len(draws) - 0.5 / 0.7) < 0.03
    assert sorted(popular_items(rng, probs, np.array([0]), 9).tolist()) == [1, 2, 3, 4]  # fewer left
    seqs, binary, _, table = hand_arrays()
    kw = hand_dataset_kwargs(seqs, binary, table)
    ds = EpochSeededDataset(RankerTrainDataset(LeaveOneOutSplit(seqs), maxlen=10, n_candidates=5, positives=1,
                                               popular_negatives=1.0, **kw), seed=0)
    for epoch in range(5):
        neg = ds[(0, epoch)]["cand_items"][1:]  # 4 negatives for user 0 (items 1..7)
        assert not np.isin(neg, seqs.user(0)).any() and len(set(neg.tolist())) == len(neg)
        # only items 8, 9, 10 have a training count outside user 0's items: all three are drawn by
        # popularity, the fourth negative falls back to a uniform draw (11 or 12)
        assert {8, 9, 10} <= set(neg.tolist())


def test_ranker_too_many_candidates_is_a_named_error() -> None:
    seqs, binary, _, table = hand_arrays()
    ds = RankerTrainDataset(LeaveOneOutSplit(seqs), maxlen=10, n_candidates=20, positives=2,
                            **hand_dataset_kwargs(seqs, binary, table))
    with pytest.raises(DataError, match="n_candidates"):
        ds[0]


def test_eval_rows_target_first_labels_at_column_zero() -> None:
    seqs, binary, _, table = hand_arrays()
    split = LeaveOneOutSplit(seqs)
    cands = sampled_candidates(split, "test", 3, seed=0)
    kw = hand_dataset_kwargs(seqs, binary, table)
    ds = PhoenixEvalDataset(split, "test", maxlen=3, candidates=cands, **kw)
    batch = collate_phoenix([ds[0], ds[1]])
    assert batch.target.tolist() == [7, 12] and batch.candidates[:, 0].tolist() == [7, 12]
    assert torch.equal(batch.cand_items, batch.candidates)
    assert batch.hist_items.tolist() == [[4, 5, 6], [9, 10, 11]]  # the last 3 before the target
    assert batch.history.tolist() == [[1, 2, 3, 4, 5, 6], [0, 0, 8, 9, 10, 11]]
    np.testing.assert_array_equal(batch.labels[:, 0].numpy(), table[[6, 11]])  # the target events
    assert not batch.labels[:, 1:].any()
    assert batch.cand_surfaces[0].tolist() == [kw["surfaces"][6]] * 4
    assert batch.cand_surfaces[1].tolist() == [kw["surfaces"][11]] * 4
    val = PhoenixEvalDataset(split, "val", maxlen=10, candidates=None, **kw)[1]
    assert val["cand_items"].tolist() == [11] and val["hist_items"].tolist() == [8, 9, 10]
    np.testing.assert_array_equal(val["labels"][0], table[10])


# ---------------------------------------------------------------------------------------------
# sources: synthetic author, Beauty brand, KuaiRand author_id, cache keys
# ---------------------------------------------------------------------------------------------

def test_synthetic_author_fixed_per_item_nested_in_clusters() -> None:
    a = generate_behavior(**TINY, authors_per_cluster=3)
    b = generate_behavior(**TINY, authors_per_cluster=5)
    for log in (a, b):
        author, item, cluster = log.columns["author"], log.items, log.columns["category"]
        for i in np.unique(item):
            assert len(np.unique(author[item == i])) == 1  # one author per item
        for x in np.unique(author):
            assert len(np.unique(cluster[author == x])) == 1  # an author lives in one cluster
    assert 1 <= a.columns["author"].min() and a.columns["author"].max() <= 4 * 3
    assert len(np.unique(a.columns["author"])) > 4  # several authors per cluster
    # its own rng stream: every other column is the same whatever the authors
    assert np.array_equal(a.items, b.items) and np.array_equal(a.timestamps, b.timestamps)
    for name in a.columns:
        if name != "author":
            np.testing.assert_array_equal(a.columns[name], b.columns[name])


def test_synthetic_cache_key_follows_generator_version(monkeypatch) -> None:
    assert behavior_synthetic.GENERATOR_VERSION >= 2  # bumped with the author column
    src = SyntheticBehaviorSource(**TINY)
    key = src.cache_key(kcore=0, min_length=3)
    monkeypatch.setattr(behavior_synthetic, "GENERATOR_VERSION", 1)
    assert src.cache_key(kcore=0, min_length=3) != key


def test_behavior_source_cache_key_follows_reader_version(tmp_path: Path, monkeypatch) -> None:
    folder = beauty_folder(tmp_path)
    src = BehaviorSource("b", "beauty", str(folder))
    key = src.cache_key(kcore=0, min_length=3)
    monkeypatch.setattr(behavior, "READER_VERSION", behavior.READER_VERSION - 1)
    assert src.cache_key(kcore=0, min_length=3) != key


def beauty_folder(tmp_path: Path, attrs: dict | None = None) -> Path:
    folder = tmp_path / "beauty"
    folder.mkdir(exist_ok=True)
    (folder / "Beauty.txt").write_text("1 1 2 3\n2 4 5 6 1\n")
    attrs = attrs if attrs is not None else {
        "1": [10, 20, 30],  # brand 10, categories 20, 30
        "2": [20, 30],      # starts with a category (20 follows 10 in item 1): no brand
        "3": [11, 20],      # brand 11
        "4": [30, 40],      # 30 is a category: no brand
        "5": [],            # no attributes
    }                       # item 6: not in the file -> 0
    (folder / "Beauty_item2attributes.json").write_text(json.dumps(attrs))
    return folder


def test_beauty_brand_is_the_first_attribute_unless_a_category(tmp_path: Path) -> None:
    assert brand_of_items({1: [10, 20, 30], 2: [20, 30], 3: [11, 20], 4: [30, 40], 5: []}) == \
        {1: 10, 2: 0, 3: 11, 4: 0, 5: 0}
    log = read_beauty(beauty_folder(tmp_path))
    assert log.timestamps is None and sorted(log.columns) == ["author", "click"]
    assert log.items.tolist() == [1, 2, 3, 4, 5, 6, 1]
    assert log.columns["author"].tolist() == [1, 0, 2, 0, 0, 0, 1]  # brands 10 -> 1, 11 -> 2
    assert (log.columns["click"] == 1).all()
    seqs = log.to_sequences()
    assert phoenix_actions(seqs) == (["click"], [])


def test_beauty_bad_json_names_the_file(tmp_path: Path) -> None:
    folder = beauty_folder(tmp_path, {"1": ["x"]})
    with pytest.raises(DataError, match="Beauty_item2attributes.json"):
        read_beauty(folder)


def test_kuairand_author_id_is_optional_and_shifted(tmp_path: Path) -> None:
    p = tmp_path / "log.csv"
    p.write_text("user_id,video_id,time_ms,is_click,author_id\n1,10,1600000000000,1,0\n1,11,1600000100000,0,7\n")
    log = read_kuairand(p)
    assert log.columns["author"].tolist() == [1, 8]
    p.write_text("user_id,video_id,time_ms,is_click\n1,10,1600000000000,1\n")
    assert "author" not in read_kuairand(p).columns
    p.write_text("user_id,video_id,time_ms,author_id\n1,10,1600000000000,-3\n")
    with pytest.raises(DataError, match="author_id"):
        read_kuairand(p)


# ---------------------------------------------------------------------------------------------
# data module and config
# ---------------------------------------------------------------------------------------------

def tiny_module(tmp_path: Path, **kwargs) -> PhoenixDataModule:
    dm = PhoenixDataModule(SyntheticBehaviorSource("phoenix_tiny", **TINY), maxlen=6, batch_size=8,
                           eval_batch_size=8, sampled_negatives=5, seed=0, cache_dir=str(tmp_path), **kwargs)
    dm.setup()
    return dm


def test_datamodule_facts_and_batches(tmp_path: Path) -> None:
    dm = tiny_module(tmp_path)
    seqs = dm.sequences
    assert has(seqs, "author")  # the cache carries the new column
    kw = dm.model_kwargs()
    assert kw["n_items"] == seqs.n_items and kw["n_users"] == seqs.n_users
    assert kw["n_authors"] == int(seqs.columns["author"].max()) + 1
    assert kw["n_surfaces"] == int(seqs.columns["source"].max()) + 1
    assert (kw["actions"], kw["regression_actions"]) == phoenix_actions(seqs)
    items, authors = dm.catalogue()
    assert items.tolist() == list(range(1, seqs.n_items + 1)) and items.dtype == torch.int64
    ia = dm.item_authors()
    assert ia.shape == (seqs.n_items + 1,) and ia[0] == 0 and torch.equal(ia[1:], authors)
    np.testing.assert_array_equal(ia.numpy()[seqs.items], seqs.columns["author"])
    train = next(iter(dm.train_dataloader()))
    assert train.targets is not None and train.hist_items.shape[1] <= 6
    val = next(iter(dm.val_dataloader()))
    assert set(val.model_inputs()) == dm.input_names() == set(MODEL_INPUTS)
    assert val.labels.shape == (8, 6, len(kw["actions"]) + len(kw["regression_actions"]))
    assert (val.users >= 1).all()


def test_datamodule_ranker_partial(tmp_path: Path) -> None:
    dm = tiny_module(tmp_path, train_dataset=partial(RankerTrainDataset, n_candidates=6, positives=2))
    batch = next(iter(dm.train_dataloader()))
    assert batch.cand_items.shape == (8, 6) and batch.labels.shape[:2] == (8, 6)
    hist = batch.hist_items
    for b in range(len(batch)):
        user_items = dm.sequences.user(int(batch.users[b]) - 1)
        assert not np.isin(batch.cand_items[b, 2:].numpy(), user_items).any()
        assert hist[b, -1] != 0  # newest event in the last column


def test_phoenix_synthetic_config_builds(tmp_path: Path) -> None:
    cfg = compose_config(tmp_path, ["data=phoenix_synthetic"])
    assert (cfg.data.source.n_users, cfg.data.source.n_items, cfg.data.source.n_clusters) == (2000, 2000, 40)
    with open_dict(cfg):
        cfg.data.source.update(n_users=30, n_items=60, n_clusters=4, min_length=5, max_length=10)
        cfg.data.sampled_negatives = 5
    dm = instantiate(cfg.data)
    assert isinstance(dm, PhoenixDataModule) and dm.maxlen == 50
    assert dm.model_kwargs()["regression_actions"] == ["dwell_time"]


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "beauty-5core-s3rec" / "Beauty_item2attributes.json").exists() or
                    not (SHARED_DATA / "ml-100k-recbole" / "ml-100k.inter").exists(), reason="no shared data")
def test_real_ml100k_and_beauty(tmp_path: Path) -> None:
    def real(name: str) -> PhoenixDataModule:
        cfg = compose_config(tmp_path, [f"data={name}", f"paths.shared_data={SHARED_DATA}"])
        return instantiate(cfg.data)

    ml = real("phoenix_ml100k")
    kw = ml.model_kwargs()
    assert (kw["n_users"], kw["n_items"]) == (943, 1682) and ml.maxlen == 128
    assert (kw["actions"], kw["regression_actions"]) == (["favorite", "click", "not_interested"], [])
    assert kw["n_authors"] == 1 and kw["n_surfaces"] == 1
    beauty = real("phoenix_beauty")
    kw = beauty.model_kwargs()
    assert (kw["n_users"], kw["n_items"]) == (22363, 12101) and kw["actions"] == ["click"]
    branded = float((beauty.item_authors()[1:] > 0).float().mean())
    assert 0.55 < branded < 0.7  # measured 0.6191 (7,492 of 12,101 items)
    assert kw["n_authors"] == 436  # 435 brands + "none"
    batch = next(iter(beauty.test_dataloader()))
    assert batch.candidates.shape[1] == 101 and batch.labels[:, 0].eq(1).all()


def test_a_kuairand_log_trains_phoenix_through_the_readme_overrides(tmp_path: Path) -> None:
    """README: a KuaiRand CSV replaces the ML-100K files by data.source overrides alone."""
    rows = ["user_id,video_id,time_ms,is_click,is_like,is_follow,is_hate,tab,play_time_ms,duration_ms,"
            "author_id"]
    rng = np.random.default_rng(0)
    for u in range(6):
        for t in range(8):
            v = int(rng.integers(1, 30))
            flags = f"{int(rng.random() < 0.8)},{int(rng.random() < 0.3)},{int(t == 3)},{int(t == 5)}"
            ms = 1_600_000_000_000 + (u * 100 + t) * 60_000
            rows.append(f"{u},{v},{ms},{flags},{t % 3},{1000 * t},9000,{v % 4}")
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    cfg = compose_config(tmp_path, ["experiment=phoenix_ranker_ml100k", "model=phoenix_ranker",
                                    "task=ranking", "data.source.format=kuairand",
                                    f"data.source.path={tmp_path / 'log.csv'}", "data.source.sha256=null",
                                    "data.source.name=phoenix_kuairand", "data.sampled_negatives=5"])
    dm = instantiate(cfg.data)
    dm.setup()
    kwargs = dm.model_kwargs()
    assert kwargs["n_users"] == 6 and kwargs["n_authors"] == 5 and kwargs["n_surfaces"] == 4  # tab + 1
    assert set(kwargs["actions"]) == {"click", "favorite", "follow_author", "not_interested", "dwell"}
    assert kwargs["regression_actions"] == ["dwell_time"]
