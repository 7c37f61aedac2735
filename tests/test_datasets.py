"""The next-item datasets, collate, popularity and the data module's seams, on hand-made sequences."""

import numpy as np
import pytest
import torch
from conftest import compose_config
from hydra.utils import instantiate

from genrec.data.datamodule import training_popularity
from genrec.data.datasets import NextItemEvalDataset, NextItemTrainDataset, collate
from genrec.data.interactions import LeaveOneOutSplit, Sequences
from genrec.tasks.baselines import PopularityBaseline
from genrec.validation import ConfigError

N_ITEMS = 30
# user 0: 10 events, user 1: 5 events, user 2: 4 events; item 30 is user 1's test target and
# in user 2's training row
USERS = [list(range(1, 11)), [21, 22, 23, 24, 30], [25, 30, 26, 27]]


def _split(with_time: bool = True) -> LeaveOneOutSplit:
    items = np.concatenate([np.array(u, dtype=np.int64) for u in USERS])
    offsets = np.cumsum([0] + [len(u) for u in USERS]).astype(np.int64)
    times = (items * 100 + np.arange(len(items))).astype(np.int64) if with_time else None
    seqs = Sequences(items=items, offsets=offsets, timestamps=times,
                     raw_user_ids=np.arange(len(USERS)), raw_item_ids=np.arange(N_ITEMS))
    return LeaveOneOutSplit(seqs)


def test_train_rows_shift_by_one_and_keep_the_last_maxlen_positions():
    split = _split()
    row = NextItemTrainDataset(split, maxlen=4)[0]  # user 0: train part 1..8
    assert row["items"].tolist() == [4, 5, 6, 7]  # the newest inputs, not the oldest
    assert row["targets"].tolist() == [5, 6, 7, 8]  # input i predicts item i + 1; val/test held out
    assert row["timestamps"].tolist() == [t * 100 + t - 1 for t in (4, 5, 6, 7)]  # aligned with items
    assert "negatives" not in row


def test_collate_left_pads_every_sequence_field():
    split = _split()
    ds = NextItemTrainDataset(split, maxlen=4, negatives=True)
    batch = collate([ds[0], ds[1]])  # user 1's train part is 21, 22, 23: inputs 21, 22
    assert batch.items.tolist() == [[4, 5, 6, 7], [0, 0, 21, 22]]
    assert batch.targets.tolist() == [[5, 6, 7, 8], [0, 0, 22, 23]]
    assert batch.timestamps[1, :2].tolist() == [0, 0] and (batch.timestamps[1, 2:] > 0).all()
    assert (batch.negatives[1, :2] == 0).all() and (batch.negatives[1, 2:] > 0).all()
    assert batch.users.tolist() == [0, 1]
    assert set(batch.model_inputs()) == {"items", "timestamps"}
    no_time = collate([NextItemTrainDataset(_split(with_time=False), maxlen=4)[0]])
    assert set(no_time.model_inputs()) == {"items"}  # a None field is not passed to the network


def test_bce_negatives_never_come_from_the_users_training_items():
    split = _split()
    ds = NextItemTrainDataset(split, maxlen=20, negatives=True)
    torch.manual_seed(0)
    seen = set()
    for _ in range(200):
        row = ds[0]  # user 0 owns 8 of the 30 items in training: plenty of chances to collide
        neg = row["negatives"]
        assert len(neg) == len(row["targets"])
        assert not set(neg.tolist()) & set(split.history(0, "train").tolist())
        assert ((neg >= 1) & (neg <= N_ITEMS)).all()
        seen |= set(neg.tolist())
    assert len(seen) == N_ITEMS - 8  # uniform over the rest: every other item shows up


def test_eval_rows_hold_the_history_before_the_held_out_item():
    split = _split()
    val = NextItemEvalDataset(split, "val", maxlen=3, candidates=None)[0]
    assert val["target"] == 9 and val["history"].tolist() == list(range(1, 9))
    assert val["items"].tolist() == [6, 7, 8]  # the model sees the newest maxlen of the history
    test = NextItemEvalDataset(split, "test", maxlen=3, candidates=None)[0]
    assert test["target"] == 10 and test["history"].tolist() == list(range(1, 10))
    batch = collate([NextItemEvalDataset(split, "test", 3, None)[u] for u in (0, 2)])
    assert batch.target.tolist() == [10, 27]
    assert batch.items.tolist() == [[7, 8, 9], [25, 30, 26]]
    assert batch.history[1].tolist() == [0] * 6 + [25, 30, 26]  # left-padded to the longest history
    assert batch.targets is None and batch.negatives is None


def test_popularity_counts_training_rows_only():
    counts = training_popularity(_split())
    assert counts.shape == (N_ITEMS + 1,) and counts[0] == 0
    assert counts[30] == 1  # item 30: user 2's training row; user 1's is its test target
    assert counts[9] == 0 and counts[10] == 0  # user 0's val and test targets
    assert counts[24] == 0 and counts[26] == 0 and counts[27] == 0
    assert counts.sum() == sum(len(u) - 2 for u in USERS)


def test_popularity_baseline_fits_on_the_data_modules_training_rows(tmp_path):
    cfg = compose_config(tmp_path)
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    baseline = PopularityBaseline()
    baseline.fit(datamodule)
    seqs = datamodule.sequences
    assert baseline.counts.sum() == (seqs.lengths - 2).sum()
    expected = np.bincount(np.concatenate([seqs.user(u)[:-2] for u in range(seqs.n_users)]),
                           minlength=seqs.n_items + 1)
    assert baseline.counts.numpy().tolist() == expected.tolist()


def test_data_module_switches_on_the_fields_the_task_reads(tmp_path):
    datamodule = instantiate(compose_config(tmp_path).data)
    datamodule.setup()
    assert datamodule.model_kwargs() == {"n_items": 120}
    assert next(iter(datamodule.train_dataloader())).negatives is None
    datamodule.require_fields(train={"targets", "negatives"}, eval={"target", "history"})
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.negatives is not None and batch.negatives.shape == batch.targets.shape
    with pytest.raises(ConfigError, match=r"batch fields \['labels'\] in eval.*NextItemEvalDataset"):
        datamodule.require_fields(eval={"labels"})
    with pytest.raises(ConfigError, match="needs inputs"):
        datamodule.check_inputs({"items", "dense_features"}, "M")
