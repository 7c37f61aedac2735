"""Dense behaviour features, head labels, the behaviour datasets and BehaviorDataModule."""

from __future__ import annotations

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import open_dict

from genrec.data.behavior import as_columns, rating_flags
from genrec.data.behavior_datamodule import BehaviorDataModule
from genrec.data.behavior_datasets import BehaviorEvalDataset, BehaviorTrainDataset, collate_behavior
from genrec.data.behavior_synthetic import SyntheticBehaviorSource
from genrec.data.features import (
    FEATURE_LAYOUT,
    LAYOUT_WIDTH,
    WINDOW,
    FeatureNormalizer,
    feature_matrix,
    feature_table,
    head_names,
    label_matrix,
    layout_markdown,
    select_features,
    training_rows,
)
from genrec.data.interactions import InteractionLog, LeaveOneOutSplit
from genrec.validation import ConfigError
from tests.conftest import SHARED_DATA, compose_config

COL = {}  # feature name -> first column
for _name, _width, _ in FEATURE_LAYOUT:
    COL[_name] = sum(w for n, w, _ in FEATURE_LAYOUT[: [f[0] for f in FEATURE_LAYOUT].index(_name)])
OUTCOMES = ("rating", "like", "not_interested", "click", "collect", "watch_ratio", "watch_time", "duration",
            "category")
CONTEXT = ("hour", "weekday", "device", "network", "source", "position")


def _values(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Random values of every field for n events of one user."""
    rating = rng.integers(1, 6, n).astype(np.float32)
    return {"rating": rating, **rating_flags(rating), "collect": rng.integers(0, 2, n),
            "watch_ratio": rng.random(n), "watch_time": rng.random(n) * 100,
            "duration": rng.random(n) * 300, "category": rng.integers(0, 4, n),
            "hour": rng.integers(0, 24, n), "weekday": rng.integers(0, 7, n), "device": rng.integers(0, 6, n),
            "network": rng.integers(0, 4, n), "source": rng.integers(0, 9, n),
            "position": rng.integers(0, 10, n), "age": np.full(n, 31), "gender": np.full(n, 1),
            "occupation": np.full(n, 5)}


def _log(values: dict[str, np.ndarray], times: np.ndarray, users: np.ndarray | None = None,
         items: np.ndarray | None = None) -> InteractionLog:
    n = len(times)
    users = np.zeros(n, np.int64) if users is None else users
    items = np.arange(1, n + 1) if items is None else items
    return InteractionLog(users, items, times, ratings=values["rating"], columns=as_columns(values))


def _multi_user_log(seed: int = 0, lengths=(15, 6, 9)) -> InteractionLog:
    rng = np.random.default_rng(seed)
    parts = [_values(rng, n) for n in lengths]
    values = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    users = np.repeat(np.arange(len(lengths)), lengths)
    times = np.concatenate([np.cumsum(rng.integers(1, 5000, n)) for n in lengths])
    return _log(values, times, users, rng.integers(1, 30, sum(lengths)))


# ---- the layout ----
@pytest.mark.parametrize("t", [1, 4, 11, 14])
def test_features_at_step_t_ignore_events_from_t_on(t):
    rng = np.random.default_rng(t)
    n = 15
    values, times = _values(rng, n), np.cumsum(rng.integers(60, 10_000, n))
    base = feature_matrix(_log(values, times).to_sequences(), 0)
    changed = {k: v.copy() for k, v in values.items()}
    other = _values(np.random.default_rng(100 + t), n)
    for k in OUTCOMES:  # event t's outcome and everything after it
        changed[k][t:] = other[k][t:]
    for k in CONTEXT:  # later events' context
        changed[k][t + 1 :] = other[k][t + 1 :]
    later = times.copy()
    later[t + 1 :] += 777_777  # later events happen later still (order kept)
    items = np.arange(1, n + 1)
    items[t:] += 50
    after = feature_matrix(_log(changed, later, items=items).to_sequences(), 0)
    np.testing.assert_array_equal(after[: t + 1], base[: t + 1])
    if t + 1 < n:  # the change is visible one step later, so the check above can fail
        assert not np.array_equal(after[t + 1], base[t + 1])


def test_row_t_uses_event_t_context():
    rng = np.random.default_rng(0)
    values, times = _values(rng, 8), np.arange(8) * 3600
    base = feature_matrix(_log(values, times).to_sequences(), 0)
    values["hour"][5] = (values["hour"][5] + 6) % 24
    values["device"][5] = values["device"][5] % 4 + 1
    after = feature_matrix(_log(values, times).to_sequences(), 0)
    differs = np.flatnonzero((after != base).any(axis=0))
    assert set(differs) >= {COL["hour_sin"], COL["hour_cos"]}
    assert np.flatnonzero((after != base).any(axis=1)).tolist() == [5]


def test_hand_checked_values():
    n = 15
    rng = np.random.default_rng(1)
    values = _values(rng, n)
    values["rating"] = np.array([5, 1, 3, 4, 2, 5, 5, 1, 1, 3, 4, 4, 2, 5, 3], np.float32)
    values.update(rating_flags(values["rating"]), collect=np.zeros(n, np.int8))
    values["category"] = np.array([1, 1, 2, 1, 0, 3, 3, 3, 1, 2, 2, 1, 1, 1, 2])
    times = np.array([0, 60, 180] + list(range(1000, 1000 + 60 * 12, 60)))
    f = feature_matrix(_log(values, times).to_sequences(), 0)
    r = values["rating"]
    np.testing.assert_allclose(f[:3, COL["rating_mean_recent"]], [0, 5, 3])
    np.testing.assert_allclose(f[2, COL["last_rating"]], 1)
    np.testing.assert_allclose(f[12, COL["rating_mean_recent"]], r[12 - WINDOW : 12].mean(), rtol=1e-6)
    np.testing.assert_allclose(f[12, COL["rating_mean_all"]], r[:12].mean(), rtol=1e-6)
    np.testing.assert_allclose(f[:3, COL["history_log_length"]], np.log1p([0, 1, 2]), rtol=1e-6)
    np.testing.assert_allclose(f[:3, COL["gap_log_minutes"]], np.log1p([0, 1, 2]), rtol=1e-6)
    np.testing.assert_allclose(f[3, COL["engagement_rate_recent"]], 1 / 3, rtol=1e-6)  # 5 liked; 1, 3 not
    np.testing.assert_allclose(f[3, COL["not_interested_rate_recent"]], 1 / 3, rtol=1e-6)  # the 1
    # row 3: earlier categories [1, 1, 2]; previous is 2 -> share 1/3; pairs (1,1) (1,2) -> 1/2
    np.testing.assert_allclose(f[3, COL["last_category_share_recent"]], 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(f[3, COL["category_repeat_recent"]], 1 / 2, rtol=1e-6)
    assert f[0, COL["gender"]] == -1 and f[0, COL["age"]] == 31  # gender 1 = F
    occupation = f[:, COL["occupation"] : COL["occupation"] + 21]
    assert (occupation[:, 4] == 1).all() and occupation.sum() == n  # occupation 5 -> slot 4


def test_table_rows_equal_each_users_matrix():
    seqs = _multi_user_log().to_sequences()
    table = feature_table(seqs)
    assert table.shape == (len(seqs.items), LAYOUT_WIDTH) and table.dtype == np.float32
    for u in range(seqs.n_users):
        np.testing.assert_array_equal(table[seqs.offsets[u] : seqs.offsets[u + 1]], feature_matrix(seqs, u))
    assert (table[seqs.offsets[:-1], COL["rating_mean_recent"]] == 0).all()  # no leak across users


def test_layout_is_one_table_rendered_in_markdown():
    md = layout_markdown()
    assert all(f"`{name}`" in md for name, _, _ in FEATURE_LAYOUT)
    assert LAYOUT_WIDTH == sum(w for _, w, _ in FEATURE_LAYOUT) and LAYOUT_WIDTH >= 16


def test_num_features_truncates_then_zero_pads():
    table = feature_table(_multi_user_log().to_sequences())
    np.testing.assert_array_equal(select_features(table, 16), table[:, :16])
    wide = select_features(table, 1024)
    assert wide.shape == (len(table), 1024)
    np.testing.assert_array_equal(wide[:, :LAYOUT_WIDTH], table)
    assert not wide[:, LAYOUT_WIDTH:].any()


# ---- normalisation ----
def test_normalisation_round_trip_and_constant_columns():
    table = select_features(feature_table(_multi_user_log().to_sequences()), 100)
    norm = FeatureNormalizer.fit(table, np.ones(len(table), bool))
    z = norm.normalize(table)
    np.testing.assert_allclose(norm.denormalize(z), table, rtol=1e-5, atol=1e-5)
    assert np.isfinite(z).all() and not z[:, LAYOUT_WIDTH:].any()  # zero columns stay 0 (std floor)
    varying = table.std(axis=0) > 0.1
    np.testing.assert_allclose(z[:, varying].mean(axis=0), 0, atol=1e-5)


def test_normalisation_sees_training_rows_only():
    log = _multi_user_log()
    seqs = log.to_sequences()
    rows = training_rows(seqs)
    assert rows.sum() == len(seqs.items) - 2 * seqs.n_users
    fitted = FeatureNormalizer.fit(feature_table(seqs), rows)

    def refit(mask: np.ndarray) -> FeatureNormalizer:
        """Refit after changing every value of the events `mask` (flat, in seqs order)."""
        changed = seqs.columns | {}
        other = _values(np.random.default_rng(9), len(seqs.items))
        for k in OUTCOMES + CONTEXT:
            changed[k] = np.where(mask, other[k], seqs.columns[k]).astype(seqs.columns[k].dtype)
        ratings = np.where(mask, other["rating"], seqs.ratings).astype(np.float32)
        new = type(seqs)(seqs.items, seqs.offsets, seqs.timestamps, seqs.raw_user_ids, seqs.raw_item_ids,
                         ratings, seqs.origin, changed)
        return FeatureNormalizer.fit(feature_table(new), training_rows(new))

    held_out = refit(~rows)  # only the validation and test events change
    np.testing.assert_array_equal(held_out.mean, fitted.mean)
    np.testing.assert_array_equal(held_out.std, fitted.std)
    one_train = np.zeros(len(rows), bool)
    one_train[np.flatnonzero(rows)[3]] = True
    assert not np.array_equal(refit(one_train).mean, fitted.mean)  # a training event does count


# ---- head labels ----
def test_head_names_and_labels_from_ratings():
    rating = np.array([5, 1, 3, 4, 2, 5], np.float32)
    values = {"rating": rating, **rating_flags(rating)}
    seqs = _log(values, np.arange(6) * 10).to_sequences()
    binary, regression = head_names(seqs)
    assert binary == ["engagement", "not_interested"] and regression == ["rating"]  # click: constant
    labels = label_matrix(seqs, 0)
    assert labels.shape == (6, 3) and labels.dtype == np.float32
    np.testing.assert_array_equal(labels[:, 0], [1, 0, 0, 1, 0, 1])  # engagement: rating >= 4
    np.testing.assert_array_equal(labels[:, 1], [0, 1, 0, 0, 1, 0])  # not interested: rating <= 2
    np.testing.assert_array_equal(labels[:, 2], rating)


def test_head_names_follow_the_fields_present():
    n = 6
    values = {"click": np.array([1, 0, 1, 1, 0, 1]), "share": np.array([0, 0, 1, 0, 0, 0]),
              "watch_ratio": np.linspace(0, 1, n)}
    log = InteractionLog(np.zeros(n), np.arange(1, n + 1), np.arange(n), columns=as_columns(values))
    seqs = log.to_sequences()
    assert head_names(seqs) == (["engagement", "click"], ["watch_ratio"])
    labels = label_matrix(seqs, 0)
    np.testing.assert_array_equal(labels[:, 0], values["share"])
    np.testing.assert_array_equal(labels[:, 1], values["click"])
    np.testing.assert_allclose(labels[:, 2], values["watch_ratio"], rtol=1e-6)
    bare = InteractionLog(np.zeros(n), np.arange(1, n + 1)).to_sequences()
    assert head_names(bare) == ([], []) and label_matrix(bare, 0).shape == (n, 0)


# ---- datasets ----
def _coded_split(lengths=(7, 4, 5)):
    """A split whose features / labels are the flat event index, to check alignment."""
    seqs = _multi_user_log(3, lengths).to_sequences()
    n = len(seqs.items)
    features = np.stack([np.arange(n), -np.arange(n)], axis=1).astype(np.float32) + 1  # [N, 2], 1-based
    labels = (np.arange(n, dtype=np.float32) + 1)[:, None]  # [N, 1]
    return LeaveOneOutSplit(seqs), features, labels


def test_train_dataset_shift_and_left_padding():
    split, features, labels = _coded_split()
    seqs = split.sequences
    ds = BehaviorTrainDataset(split, maxlen=3, features=features, labels=labels)
    assert len(ds) == 3
    batch = collate_behavior([ds[i] for i in range(len(ds))])
    assert batch.items.shape == (3, 3) and batch.dense_features.shape == (3, 3, 2)
    assert batch.labels.shape == (3, 3, 1) and set(batch.model_inputs()) == {"items", "dense_features"}
    for b, u in enumerate(batch.users.tolist()):
        seq, lo = seqs.user(u), int(seqs.offsets[u])
        n_in = min(len(seq) - 3, 3)  # training inputs: seq[:-3], last 3
        pos = np.arange(len(seq) - 3)[-n_in:]  # their positions in the user's sequence
        assert (batch.items[b, : 3 - n_in] == 0).all() and (batch.dense_features[b, : 3 - n_in] == 0).all()
        assert (batch.labels[b, : 3 - n_in] == 0).all() and (batch.targets[b, : 3 - n_in] == 0).all()
        np.testing.assert_array_equal(batch.items[b, 3 - n_in :], seq[pos])
        np.testing.assert_array_equal(batch.targets[b, 3 - n_in :], seq[pos + 1])  # the next item
        np.testing.assert_array_equal(batch.dense_features[b, 3 - n_in :, 0], lo + pos + 1)
        np.testing.assert_array_equal(batch.labels[b, 3 - n_in :, 0], lo + pos + 1)
        assert int(batch.targets[b, -1]) == seq[-3]  # never the validation or test target


@pytest.mark.parametrize("stage", ["val", "test"])
def test_eval_dataset_rows_end_with_the_target(stage):
    split, features, labels = _coded_split()
    seqs = split.sequences
    ds = BehaviorEvalDataset(split, stage, maxlen=4, candidates=None, features=features, labels=labels)
    batch = collate_behavior([ds[u] for u in range(len(ds))])
    assert batch.targets is None and batch.candidates is None
    for u in range(seqs.n_users):
        seq, lo = seqs.user(u), int(seqs.offsets[u])
        t = len(seq) - (2 if stage == "val" else 1)  # the target's position
        assert int(batch.target[u]) == seq[t] == int(batch.items[u, -1])
        assert int(batch.items[u, -2]) == seq[t - 1]
        n_in = min(t + 1, 4)
        np.testing.assert_array_equal(batch.items[u, 4 - n_in :], seq[t + 1 - n_in : t + 1])
        rows = lo + np.arange(t + 1 - n_in, t + 1)  # flat indices of the row's events
        np.testing.assert_array_equal(batch.dense_features[u, 4 - n_in :, 0], rows + 1)
        assert float(batch.labels[u, -1, 0]) == lo + t + 1
        assert (batch.items[u, : 4 - n_in] == 0).all() and (batch.dense_features[u, : 4 - n_in] == 0).all()
        np.testing.assert_array_equal(batch.history[u][batch.history[u] > 0], seq[:t])


# ---- the data module ----
def _tiny_module(tmp_path, **kwargs) -> BehaviorDataModule:
    source = SyntheticBehaviorSource(n_users=60, n_items=40, n_clusters=4, min_length=5, max_length=12,
                                     seed=0)
    return BehaviorDataModule(source, maxlen=10, batch_size=16, sampled_negatives=5,
                              cache_dir=str(tmp_path / "data"), **kwargs)


def test_datamodule_model_kwargs_and_batches(tmp_path):
    dm = _tiny_module(tmp_path)
    dm.prepare_data()
    dm.setup()
    kw = dm.model_kwargs()
    assert set(kw) == {"n_items", "num_features", "feature_mean", "feature_std", "heads", "regression_heads"}
    assert kw["num_features"] == 16 and len(kw["feature_mean"]) == len(kw["feature_std"]) == 16
    assert all(isinstance(x, float) for x in kw["feature_mean"] + kw["feature_std"])
    assert kw["heads"] == ["engagement", "not_interested", "click"]
    assert kw["regression_heads"] == ["watch_ratio"]
    rows = training_rows(dm.sequences)
    np.testing.assert_allclose(kw["feature_mean"], dm.features[rows].mean(axis=0), rtol=1e-5, atol=1e-6)
    assert dm.input_names() == {"items", "dense_features"}
    dm.require_fields(train=["items", "dense_features", "targets", "labels"],
                      eval=["target", "history", "labels"])
    batch = next(iter(dm.train_dataloader()))
    assert batch.dense_features.shape == (*batch.items.shape, 16) and batch.labels.shape[-1] == 4
    val = next(iter(dm.val_dataloader()))
    assert val.candidates.shape[1] == 6 and (val.items[:, -1] == val.target).all()
    with pytest.raises(ConfigError, match="labels"):
        dm.require_fields(train=["negatives"])


def test_datamodule_wide_features_are_zero_padded(tmp_path):
    dm = _tiny_module(tmp_path, num_features=1024)
    kw = dm.model_kwargs()
    assert len(kw["feature_mean"]) == 1024 and dm.features.shape[1] == 1024
    assert not dm.features[:, LAYOUT_WIDTH:].any()
    assert kw["feature_mean"][LAYOUT_WIDTH:] == [0.0] * (1024 - LAYOUT_WIDTH)


@pytest.mark.parametrize("bad", [0, 1025, 2.5])
def test_num_features_range_is_a_named_config_error(tmp_path, bad):
    with pytest.raises(ConfigError, match="data.num_features"):
        _tiny_module(tmp_path, num_features=bad)


def test_behavior_synthetic_config_builds(tmp_path):
    cfg = compose_config(tmp_path, ["data=behavior_synthetic"])
    with open_dict(cfg):
        cfg.data.source.update(n_users=40, n_items=30, min_length=5, max_length=10)
        cfg.data.sampled_negatives = 5
    dm = instantiate(cfg.data)
    assert isinstance(dm, BehaviorDataModule) and dm.maxlen == 50
    assert len(dm.model_kwargs()["feature_std"]) == 16


@pytest.mark.skipif(not (SHARED_DATA / "ml-100k-recbole" / "ml-100k.user").exists(), reason="no ML-100K copy")
def test_ml100k_behavior_config_reads_the_real_files(tmp_path):
    cfg = compose_config(tmp_path, ["data=ml-100k-behavior", f"paths.shared_data={SHARED_DATA}"])
    dm = instantiate(cfg.data)
    kw = dm.model_kwargs()
    assert kw["n_items"] == 1682 and kw["heads"] == ["engagement", "not_interested"]
    assert kw["regression_heads"] == ["rating"] and dm.features.shape == (100_000, 16)


@pytest.mark.skipif(not (SHARED_DATA / "ml-1m-grouplens-meta" / "users.dat").exists(), reason="no ML-1M copy")
def test_ml1m_behavior_config_points_at_its_files(tmp_path):
    cfg = compose_config(tmp_path, ["data=ml-1m-behavior", f"paths.shared_data={SHARED_DATA}"])
    dm = instantiate(cfg.data)
    assert dm.maxlen == 200 and dm.num_features == 16
    files = dm.source.files()
    assert all(p.is_file() for p in files) and set(dm.source.sha256) == {p.name for p in files}
