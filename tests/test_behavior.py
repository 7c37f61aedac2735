"""Behaviour logs: schema defaults, the rating table, the ML-100K / ML-1M / KuaiRand readers on
files the tests write (the real shared data only in slow tests), BehaviorSource, and the
synthetic generator's planted structure."""

from __future__ import annotations

import dataclasses
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from genrec.data.behavior import (
    FIELDS,
    RATING_FLAGS,
    BehaviorRecord,
    BehaviorSource,
    column,
    has,
    rating_flags,
    record,
    time_context,
)
from genrec.data.behavior_formats import read_kuairand, read_ml1m, read_ml100k
from genrec.data.behavior_synthetic import SyntheticBehaviorSource, generate_behavior
from genrec.data.interactions import DataError, InteractionLog, Sequences

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GENREC_SHARED_DATA", REPO.parent / "shared" / "data"))
SHA_100K_INTER = "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"
SMALL = dict(n_users=300, n_items=120, n_clusters=8, min_length=10, max_length=30)


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text(text)
    return p


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------

def test_record_fields_and_defaults_follow_the_table() -> None:
    names = [f.name for f in dataclasses.fields(BehaviorRecord)]
    assert names[:2] == ["item", "timestamp"]
    assert names[2:] == [f.name for f in FIELDS]
    defaults = BehaviorRecord(item=7)
    assert all(getattr(defaults, f.name) == f.default for f in FIELDS)
    assert defaults.timestamp is None


def test_rating_flags_table_by_hand() -> None:
    assert dict(RATING_FLAGS) == {"click": "always", "like": ">= 4", "not_interested": "<= 2"}
    flags = rating_flags(np.array([1, 2, 2.5, 3, 3.5, 4, 5], np.float32))
    assert flags["click"].tolist() == [1, 1, 1, 1, 1, 1, 1]
    assert flags["like"].tolist() == [0, 0, 0, 0, 0, 1, 1]
    assert flags["not_interested"].tolist() == [1, 1, 0, 0, 0, 0, 0]


def test_time_context_by_hand() -> None:
    # 1970-01-05 was a Monday; 2022-04-08 04:00 UTC a Friday (12:00 in UTC+8)
    t = np.array([4 * 86_400 + 3600 * 23 + 59, int(datetime(2022, 4, 8, 4, tzinfo=timezone.utc).timestamp())])
    ctx = time_context(t)
    assert ctx["hour"].tolist() == [23, 4] and ctx["weekday"].tolist() == [0, 4]
    ctx8 = time_context(t, utc_offset_hours=8)
    assert ctx8["hour"].tolist() == [7, 12] and ctx8["weekday"].tolist() == [1, 4]


def test_column_defaults_has_and_record() -> None:
    log = InteractionLog([1, 1, 2], [5, 6, 5], [30, 10, 20], ratings=[4.0, 1.0, 3.0],
                         columns={"like": np.array([1, 0, 0], np.int8), "category": np.array([3, 4, 3])})
    seqs = log.to_sequences()
    assert has(seqs, "like") and has(seqs, "rating") and not has(seqs, "watch_time")
    assert column(seqs, 0, "like").tolist() == [0, 1]  # time order: item 6 (t=10) first
    assert column(seqs, 0, "rating").tolist() == [1.0, 4.0]  # from InteractionLog.ratings
    absent = column(seqs, 1, "watch_time")
    assert absent.tolist() == [0.0] and absent.dtype == np.float32
    with pytest.raises(KeyError, match="watchtime"):
        column(seqs, 0, "watchtime")
    rec = record(seqs, 0, 1)
    assert (rec.item, rec.timestamp, rec.rating) == (1, 30, 4.0)
    assert (rec.like, rec.category, rec.duration) == (1, 3, 0.0)


def test_columns_follow_kcore_to_sequences_save_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    users = rng.integers(0, 6, 80)
    items = rng.integers(0, 15, 80)
    times = rng.permutation(80) * 100
    # columns that can be recomputed from each row: a wrong reorder breaks the equalities below
    log = InteractionLog(users, items, times, columns={
        "category": items + 1, "position": (times // 100) % 7 + 1, **time_context(times)})
    seqs = log.kcore(3).to_sequences()
    seqs = seqs.drop_short(4, "test")
    seqs.save(tmp_path / "s.npz")
    loaded = Sequences.load(tmp_path / "s.npz")
    assert sorted(loaded.columns) == ["category", "hour", "position", "weekday"]
    for u in range(loaded.n_users):
        raw_items = loaded.raw_item_ids[loaded.user(u) - 1]
        t = loaded.user_times(u)
        assert (column(loaded, u, "category") == raw_items + 1).all()
        assert (column(loaded, u, "position") == (t // 100) % 7 + 1).all()
        assert (column(loaded, u, "hour") == time_context(t)["hour"]).all()
        assert (np.diff(t) >= 0).all()


# ---------------------------------------------------------------------------------------------
# MovieLens-100K (RecBole atomic files)
# ---------------------------------------------------------------------------------------------

USERS_100K = "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\t94043\n"


def ml100k_folder(tmp_path: Path, user_lines: str = USERS_100K) -> Path:
    d = tmp_path / "ml100k"
    write(d, "ml-100k.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                              "2\t20\t5\t874724710\n1\t10\t2\t874800000\n1\t20\t4\t874724710\n")
    write(d, "ml-100k.user", "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
          + user_lines)
    write(d, "ml-100k.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                             "10\tA Film\t1995\tDrama Comedy\n20\tB Film\t1996\tunknown\n")
    return d


def test_ml100k_reader_joins_users_items_and_ratings(tmp_path: Path) -> None:
    log = read_ml100k(ml100k_folder(tmp_path))
    assert sorted(log.columns) == ["age", "category", "click", "gender", "hour", "like", "not_interested",
                                   "occupation", "rating", "weekday"]
    c = log.columns
    assert log.users.tolist() == [2, 1, 1] and log.ratings.tolist() == [5, 2, 4]
    assert c["like"].tolist() == [1, 0, 1] and c["not_interested"].tolist() == [0, 1, 0]
    assert c["age"].tolist() == [53, 24, 24] and c["gender"].tolist() == [1, 2, 2]
    assert c["occupation"].tolist() == [14, 20, 20]  # "other" and "technician" in the sorted list of 21
    assert c["category"].tolist() == [0, 8, 0]  # Drama = 8th genre; unknown = 0
    # 874724710 = 1997-09-20 03:05:10 UTC, a Saturday
    assert c["hour"][0] == 3 and c["weekday"][0] == 5


@pytest.mark.parametrize("lines, expect", [
    ("1\t24\tM\ttechnician\t85711\n2\t53\tX\tother\t94043\n", r"ml-100k.user line 3: gender 'X'"),
    ("1\t24\tM\ttechnician\t85711\n2\tfifty\tF\tother\t94043\n", r"ml-100k.user line 3: age 'fifty'"),
    ("1\t24\tM\ttechnician\t85711\n", r"ml-100k.user: no row for user id 2"),
    ("1\t24\tM\ttechnician\t85711\n1\t25\tM\tother\t1\n2\t53\tF\tother\t9\n",
     r"line 3: id 1 already on line 2"),
])
def test_ml100k_bad_side_rows_name_file_line_field(tmp_path: Path, lines: str, expect: str) -> None:
    with pytest.raises(DataError, match=expect):
        read_ml100k(ml100k_folder(tmp_path, lines))


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "ml-100k-recbole").is_dir(), reason="shared data not present")
def test_ml100k_real_files(tmp_path: Path) -> None:
    source = BehaviorSource("ml-100k-behavior", "ml-100k", str(SHARED / "ml-100k-recbole"),
                            sha256={"ml-100k.inter": SHA_100K_INTER})
    log = source.load(tmp_path)
    seqs = log.to_sequences()
    assert (seqs.n_users, seqs.n_items, len(seqs.items)) == (943, 1682, 100_000)
    for name in ("rating", "like", "not_interested", "click", "hour", "weekday", "age", "gender",
                 "occupation", "category"):
        assert has(seqs, name)
    assert set(np.unique(log.columns["gender"])) == {1, 2}
    assert log.columns["occupation"].min() >= 1 and log.columns["category"].max() <= 18
    assert log.origin["sha256"] == SHA_100K_INTER


# ---------------------------------------------------------------------------------------------
# MovieLens-1M: SASRec ids through the sas_to_original maps
# ---------------------------------------------------------------------------------------------

def ml1m_folders(tmp_path: Path, user_map: str) -> tuple[Path, Path]:
    sas, meta = tmp_path / "sas", tmp_path / "meta"
    write(sas, "ml-1m.txt", "1 1\n1 2\n2 2\n2 1\n")
    write(sas, "sas_to_original_users.txt", user_map)
    write(sas, "sas_to_original_items.txt", "1 300\n2 100\n")
    write(meta, "users.dat", "10::F::18::0::111\n20::M::56::20::222\n")
    write(meta, "movies.dat", "100::Heat (1995)::Action|Crime\n300::Up: A Film (2009)::Comedy\n")
    return sas, meta


def test_ml1m_join_through_the_maps(tmp_path: Path) -> None:
    log = read_ml1m(*ml1m_folders(tmp_path, "1 10\n2 20\n"))
    assert log.timestamps is None and log.ratings is None
    assert sorted(log.columns) == ["age", "category", "gender", "occupation"]
    assert log.users.tolist() == [1, 1, 2, 2] and log.items.tolist() == [1, 2, 2, 1]
    assert log.columns["age"].tolist() == [18, 18, 56, 56]
    assert log.columns["gender"].tolist() == [1, 1, 2, 2]
    assert log.columns["occupation"].tolist() == [1, 1, 21, 21]  # +1: 0 = unknown
    assert log.columns["category"].tolist() == [5, 1, 1, 5]  # sas 1 -> 300 Comedy, sas 2 -> 100 Action


def test_ml1m_permuted_user_map_changes_the_join(tmp_path: Path) -> None:
    log = read_ml1m(*ml1m_folders(tmp_path, "1 20\n2 10\n"))
    assert log.columns["age"].tolist() == [56, 56, 18, 18]


def test_ml1m_missing_map_row_and_bad_dat_line(tmp_path: Path) -> None:
    sas, meta = ml1m_folders(tmp_path, "1 10\n")
    with pytest.raises(DataError, match=r"sas_to_original_users.txt: no row for sas user id 2"):
        read_ml1m(sas, meta)
    sas, meta = ml1m_folders(tmp_path, "1 10\n2 20\n")
    write(meta, "users.dat", "10::F::18::0::111\n20::M::56::20\n")
    with pytest.raises(DataError, match=r"users.dat line 2: expected 5 fields"):
        read_ml1m(sas, meta)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "ml-1m-sasrec").is_dir(), reason="shared data not present")
def test_ml1m_real_files(tmp_path: Path) -> None:
    source = BehaviorSource("ml-1m-behavior", "ml-1m", str(SHARED / "ml-1m-sasrec"),
                            meta_path=str(SHARED / "ml-1m-grouplens-meta"))
    seqs = source.load(tmp_path).to_sequences()
    assert (seqs.n_users, seqs.n_items, len(seqs.items)) == (6040, 3416, 999_611)
    assert sorted(seqs.columns) == ["age", "category", "gender", "occupation"]
    assert (seqs.columns["category"] >= 1).all()


# ---------------------------------------------------------------------------------------------
# KuaiRand log CSV
# ---------------------------------------------------------------------------------------------

KUAI_HEADER = ("user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,"
               "is_hate,long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,"
               "is_profile_enter,is_rand,tab\n")
NOON_MS = int(datetime(2022, 4, 8, 4, tzinfo=timezone.utc).timestamp()) * 1000  # 12:00 Beijing, Friday


def kuai_row(user: int, video: int, ms: int, flags: str = "1,1,0,0,1,0", play: str = "5000",
             duration: str = "10000", tab: str = "2") -> str:
    return f"{user},{video},20220408,1200,{ms},{flags},0,{play},{duration},0,0,0,0,{tab}\n"


def test_kuairand_mapping(tmp_path: Path) -> None:
    p = write(tmp_path, "log.csv", KUAI_HEADER + kuai_row(7, 70, NOON_MS)
              + kuai_row(7, 71, NOON_MS + 3_600_000, "1,0,1,1,0,1", "3000", "0", "0"))
    log = read_kuairand(p)
    c = log.columns
    assert sorted(c) == ["click", "comment", "duration", "follow", "hour", "like", "not_interested", "share",
                         "source", "watch_ratio", "watch_time", "weekday"]
    assert log.timestamps.tolist() == [NOON_MS // 1000, NOON_MS // 1000 + 3600]
    assert c["like"].tolist() == [1, 0] and c["follow"].tolist() == [0, 1] and c["comment"].tolist() == [0, 1]
    assert c["share"].tolist() == [1, 0] and c["not_interested"].tolist() == [0, 1]
    assert c["watch_time"].tolist() == [5.0, 3.0] and c["duration"].tolist() == [10.0, 0.0]
    assert c["watch_ratio"].tolist() == [0.5, 0.0]  # duration 0 -> 0
    assert c["source"].tolist() == [3, 1]  # tab + 1
    assert c["hour"].tolist() == [12, 13] and c["weekday"].tolist() == [4, 4]


def test_kuairand_only_columns_present(tmp_path: Path) -> None:
    p = write(tmp_path, "log.csv", "user_id,video_id,time_ms,is_like\n1,2,1000,1\n1,3,2000,0\n")
    assert sorted(read_kuairand(p).columns) == ["hour", "like", "weekday"]


@pytest.mark.parametrize("bad_row, expect", [
    (kuai_row(7, 71, NOON_MS, "1,x,0,0,0,0"), r"line 3: is_like 'x' is not an integer"),
    (kuai_row(7, 71, NOON_MS, "1,2,0,0,0,0"), r"line 3: is_like '2' is not 0 or 1"),
    (kuai_row(7, 71, NOON_MS, play="-5"), r"line 3: play_time_ms '-5' is negative"),
    (kuai_row(-7, 71, NOON_MS), r"line 3: user_id '-7' is not a non-negative integer"),
    (kuai_row(7, 71, NOON_MS)[:-3] + "\n", r"line 3: expected 19 fields"),
])
def test_kuairand_malformed_row_names_file_line_field(tmp_path: Path, bad_row: str, expect: str) -> None:
    rows = kuai_row(7, 70, NOON_MS) + bad_row + kuai_row(8, 70, NOON_MS)
    p = write(tmp_path, "log.csv", KUAI_HEADER + rows)
    with pytest.raises(DataError, match="log.csv " + expect):
        read_kuairand(p)


# ---------------------------------------------------------------------------------------------
# BehaviorSource
# ---------------------------------------------------------------------------------------------

def test_behavior_source_interface(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = ml100k_folder(tmp_path)
    source = BehaviorSource("b", "ml-100k", str(folder), sha256={"ml-100k.user": "0" * 64}, hint="get it")
    source.prepare(tmp_path)
    with caplog.at_level(logging.WARNING):
        log = source.load(tmp_path)
    assert "not the published" in caplog.text and "ml-100k.user" in caplog.text
    assert log.origin["name"] == "b" and log.origin["format"] == "ml-100k"
    files = {str((folder / f"ml-100k.{e}").resolve()) for e in ("inter", "user", "item")}
    assert set(log.origin["files"]) == files
    key = source.cache_key(kcore=0, min_length=3)
    assert key == source.cache_key(kcore=0, min_length=3) != source.cache_key(kcore=5, min_length=3)
    before = source.fingerprint()
    write(folder, "ml-100k.item", "item_id:token\tclass:token_seq\n10\tDrama\n20\tWar\n")  # side file
    assert source.fingerprint() != before
    (folder / "ml-100k.user").unlink()
    with pytest.raises(DataError, match=r"file not found: .*ml-100k.user; get it"):
        source.prepare(tmp_path)


def test_behavior_source_rejects_typos() -> None:
    with pytest.raises(DataError, match="unknown behaviour format 'ml100k'"):
        BehaviorSource("b", "ml100k", "x")
    with pytest.raises(DataError, match="utc_offset"):
        BehaviorSource("b", "ml-1m", "x", meta_path="y", utc_offset=8)
    with pytest.raises(DataError, match="meta_path"):
        BehaviorSource("b", "ml-1m", "x")


# ---------------------------------------------------------------------------------------------
# Synthetic behaviour
# ---------------------------------------------------------------------------------------------

def test_synthetic_is_deterministic_per_seed() -> None:
    a, b, c = (generate_behavior(**SMALL, seed=s) for s in (3, 3, 4))
    assert sorted(a.columns) == sorted(f.name for f in FIELDS if f.name != "rating")
    assert (a.items == b.items).all() and (a.timestamps == b.timestamps).all()
    assert all((a.columns[k] == b.columns[k]).all() for k in a.columns)
    assert len(a) != len(c) or (a.items != c.items).any()


def test_synthetic_flags_follow_the_planted_match() -> None:
    log = generate_behavior(**SMALL, seed=0)
    seqs = log.to_sequences()
    like, hate = log.columns["like"].astype(bool), log.columns["not_interested"].astype(bool)
    cat = log.columns["category"]
    counts = np.zeros((log.users.max() + 1, cat.max() + 1), int)  # [U, C] each user's category counts
    np.add.at(counts, (log.users, cat), 1)
    top2 = np.argsort(-counts, axis=1, kind="stable")[:, :2]
    fav = (top2[log.users] == cat[:, None]).any(axis=1)
    far = counts[log.users, cat] == 1
    assert like[fav].mean() > 2 * like[~fav].mean()
    assert hate[far].mean() > 4 * hate[~far].mean()
    assert log.columns["watch_ratio"][fav].mean() > log.columns["watch_ratio"][~fav].mean() + 0.2
    # the item sequences keep generate_synthetic's cluster walk: consecutive events mostly share a category
    same_user = np.ones(len(seqs.items) - 1, bool)  # pair (k, k+1) within one user
    same_user[seqs.offsets[1:-1] - 1] = False
    assert (seqs.columns["category"][1:] == seqs.columns["category"][:-1])[same_user].mean() > 0.5
    # consistency of the derived fields
    c = log.columns
    assert np.allclose(c["watch_time"], c["watch_ratio"] * c["duration"], rtol=1e-5)
    assert not (like & ~c["click"].astype(bool)).any() and not (like & hate).any()
    assert (time_context(log.timestamps)["hour"] == c["hour"]).all()


def test_synthetic_source(tmp_path: Path) -> None:
    source = SyntheticBehaviorSource(**SMALL)
    assert source.settings["seed"] == 0 and source.settings["n_users"] == 300
    log = source.load(tmp_path)
    assert log.origin["generator_version"] >= 1 and log.origin["settings"]["n_items"] == 120
    assert source.cache_key(kcore=0) != SyntheticBehaviorSource(**{**SMALL, "seed": 1}).cache_key(kcore=0)
    with pytest.raises(DataError, match="n_user"):
        SyntheticBehaviorSource(n_user=5)


def test_data_module_caches_the_columns(tmp_path: Path) -> None:
    from genrec.data.datamodule import SequenceDataModule

    source = SyntheticBehaviorSource(**SMALL)
    dm = SequenceDataModule(source, maxlen=20, batch_size=8, kcore=2, sampled_negatives=0,
                            cache_dir=str(tmp_path), seed=0)
    dm.prepare_data()
    assert dm.processed_path.exists()
    dm.setup()
    seqs = dm.split.sequences
    fresh = source.load(tmp_path).kcore(2).to_sequences()
    assert sorted(seqs.columns) == sorted(fresh.columns)
    for u in (0, seqs.n_users - 1):
        assert (column(seqs, u, "like") == column(fresh, u, "like")).all()
        assert (column(seqs, u, "watch_ratio") == column(fresh, u, "watch_ratio")).all()
