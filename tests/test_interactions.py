import logging

import numpy as np
import pytest

from genrec.data.interactions import DataError, InteractionLog, LeaveOneOutSplit, Sequences


def _log(users, items, times=None):
    return InteractionLog(np.array(users), np.array(items), None if times is None else np.array(times))


def test_sequences_remap_ids_and_order_by_time_keeping_file_order_on_ties():
    # user 7: times 30, 10, 10 -> items in time order, the tie kept in file order (50 before 60)
    seqs = _log([7, 7, 7, 3, 3, 3], [40, 50, 60, 50, 40, 60], [30, 10, 10, 1, 2, 3]).to_sequences()
    assert seqs.n_users == 2 and seqs.n_items == 3
    raw = lambda u: seqs.raw_item_ids[seqs.user(u) - 1].tolist()  # noqa: E731
    assert raw(0) == [50, 40, 60]  # user 3 (smallest raw id) -> new id 0
    assert raw(1) == [50, 60, 40]
    assert seqs.items.min() == 1  # 0 stays padding
    assert seqs.user_times(1).tolist() == [10, 10, 30]


def test_kcore_is_iterated_until_stable():
    # item 9 has one user; dropping it leaves user 3 with one interaction, which must go too
    log = _log([1, 1, 2, 2, 3, 3], [5, 6, 5, 6, 6, 9]).kcore(2)
    assert set(log.users.tolist()) == {1, 2}
    assert sorted(log.items.tolist()) == [5, 5, 6, 6]


def test_drop_short_logs_the_count(caplog):
    seqs = _log([1, 1, 1, 2, 2], [1, 2, 3, 1, 2]).to_sequences()
    with caplog.at_level(logging.WARNING):
        kept = seqs.drop_short(3, "toy.txt")
    assert kept.n_users == 1
    assert "dropped 1 users with fewer than 3" in caplog.text and "toy.txt" in caplog.text


def test_leave_one_out_split():
    seqs = _log([0] * 5 + [1] * 3, [1, 2, 3, 4, 5, 3, 2, 1], list(range(8))).to_sequences()
    split = LeaveOneOutSplit(seqs)
    assert split.history(0, "train").tolist() == [1, 2, 3]
    assert split.target(0, "val") == 4 and split.history(0, "val").tolist() == [1, 2, 3]
    assert split.target(0, "test") == 5 and split.history(0, "test").tolist() == [1, 2, 3, 4]
    assert split.target(1, "test") == 1 and split.history_times(1, "test").tolist() == [5, 6]


def test_split_refuses_short_users():
    with pytest.raises(DataError, match="at least 3"):
        LeaveOneOutSplit(_log([1, 1], [1, 2]).to_sequences())


def test_empty_log_is_an_error():
    with pytest.raises(DataError, match="no interactions"):
        InteractionLog(np.array([]), np.array([]), source="empty.txt")


def test_sequences_cache_roundtrip(tmp_path):
    seqs = _log([1, 1, 1, 2, 2, 2], [4, 5, 6, 6, 5, 4], [1, 2, 3, 4, 5, 6]).to_sequences()
    path = tmp_path / "c" / "s.npz"
    seqs.save(path)
    back = Sequences.load(path)
    assert np.array_equal(back.items, seqs.items) and np.array_equal(back.timestamps, seqs.timestamps)
    assert not list(path.parent.glob("*.tmp*"))


def test_ratings_and_origin_follow_kcore_order_drop_short_and_the_cache(tmp_path):
    # user 1: events out of time order; user 2: two events (dropped by min_length 3);
    # item 9 is seen once (dropped by the 2-core, taking its rating with it)
    log = InteractionLog(np.array([1, 1, 1, 1, 2, 2, 3, 3, 3]), np.array([5, 6, 7, 9, 5, 6, 5, 6, 7]),
                         np.array([30, 10, 20, 40, 1, 2, 1, 2, 3]),
                         ratings=np.array([3.0, 1.0, 2.0, 5.0, 4.0, 4.5, 1.0, 1.5, 2.5]),
                         origin={"name": "toy", "path": "/x"})
    cored = log.kcore(2)
    assert cored.ratings.tolist() == [3, 1, 2, 4, 4.5, 1, 1.5, 2.5]
    assert cored.origin == {"name": "toy", "path": "/x"}
    seqs = cored.to_sequences()
    assert seqs.user_ratings(0).tolist() == [1, 2, 3]  # follows the time order of the items
    assert seqs.user_ratings(1).tolist() == [4, 4.5]
    kept = seqs.drop_short(3, "toy")
    assert kept.ratings.tolist() == [1, 2, 3, 1, 1.5, 2.5] and kept.origin["name"] == "toy"
    kept.save(tmp_path / "s.npz")
    back = Sequences.load(tmp_path / "s.npz")
    assert back.ratings.dtype == np.float32 and back.ratings.tolist() == [1, 2, 3, 1, 1.5, 2.5]
    assert back.describe() == {"name": "toy", "path": "/x", "n_users": 2, "n_items": 3, "n_interactions": 6,
                               "has_time": True, "has_ratings": True}


def test_a_log_without_ratings_stays_without(tmp_path):
    seqs = _log([1, 1, 1], [4, 5, 6]).to_sequences()
    seqs.save(tmp_path / "s.npz")
    back = Sequences.load(tmp_path / "s.npz")
    assert back.ratings is None and back.user_ratings(0) is None and back.describe()["has_ratings"] is False
    with pytest.raises(DataError, match="differ in length"):
        InteractionLog(np.array([1, 2]), np.array([3, 4]), ratings=np.array([1.0]))


def test_processed_key_covers_params_and_code_version(monkeypatch):
    import genrec.data.interactions as interactions

    key = interactions.processed_key("abc", kcore=0, min_length=3)
    assert key == interactions.processed_key("abc", min_length=3, kcore=0)  # order does not matter
    others = {interactions.processed_key("abd", kcore=0, min_length=3),
              interactions.processed_key("abc", kcore=5, min_length=3),
              interactions.processed_key("abc", kcore=0, min_length=4),
              interactions.processed_key("abc", kcore=0, min_length=3, maxlen=50)}
    monkeypatch.setattr(interactions, "PREPROCESS_VERSION", interactions.PREPROCESS_VERSION + 1)
    others.add(interactions.processed_key("abc", kcore=0, min_length=3))
    assert len(others) == 5 and key not in others
