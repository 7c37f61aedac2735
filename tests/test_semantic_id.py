"""The semantic-ID objective end to end: data module (codes, samples), task (loss, beam-search
validation through RankingMetrics), on tiny synthetic data."""

import numpy as np
import pytest
import torch

from genrec.data.interactions import LeaveOneOutSplit, Sequences
from genrec.data.seq2seq import SemanticIDCollate, SemanticIDEvalDataset, SemanticIDTrainDataset
from genrec.run.training import build_components, train

RPG_TINY = [
    "model=rpg_ed", "task=semantic_id",
    "model.d_model=32", "model.n_heads=2", "model.d_inner=64", "model.encoder_layers=1",
    "model.decoder_layers=1", "model.n_user_buckets=50", "model.dropout=0.0",
    "data.semantic_ids.n_digit=3", "data.semantic_ids.codebook_size=8", "data.semantic_ids.dim=16",
    "task.ks=[1,5,10]",
]


def _split(rows: list[list[int]], n_items: int) -> LeaveOneOutSplit:
    items = np.concatenate([np.asarray(r) for r in rows])
    offsets = np.cumsum([0] + [len(r) for r in rows])
    return LeaveOneOutSplit(Sequences(items, offsets, None, np.arange(len(rows)), np.arange(1, n_items + 1)))


def test_train_samples_every_training_position_with_its_history():
    split = _split([[1, 2, 3, 4, 5], [6, 7, 8]], n_items=8)
    codes = np.concatenate([np.full((1, 2), -1), np.stack([np.arange(8), np.arange(8) % 3], 1)])
    data = SemanticIDTrainDataset(split, maxlen=2, codes=codes)
    # user 0 trains on [1, 2, 3] (4 = validation, 5 = test): targets 2, 3; user 1 on [6]: none
    got = [(r["user"], list(r["history"]), r["target"]) for r in (data[i] for i in range(len(data)))]
    assert got == [(0, [1], 2), (0, [1, 2], 3)]
    batch = SemanticIDCollate(codes)([data[0], data[1]])
    assert batch.history.tolist() == [[0, 1], [1, 2]]  # left-padded item ids
    assert batch.history_codes[0, 0].tolist() == [-1, -1]  # padding item -> -1 codes
    assert batch.target_codes.tolist() == [codes[2].tolist(), codes[3].tolist()]
    evaluation = SemanticIDEvalDataset(split, "test", maxlen=3, codes=codes)
    assert list(evaluation[0]["history"]) == [2, 3, 4] and evaluation[0]["target"] == 5


def test_data_module_builds_a_bijective_code_table(tiny_cfg):
    cfg = tiny_cfg(*RPG_TINY)
    datamodule, task = build_components(cfg)
    index = datamodule.index
    codes = index.item_id2tokens
    assert codes.shape == (datamodule.n_items + 1, 3) and (codes[0] == -1).all()
    assert len({tuple(c) for c in codes[1:]}) == datamodule.n_items  # every item its own code
    items = torch.arange(1, datamodule.n_items + 1)
    assert torch.equal(index.codes_to_items(torch.from_numpy(codes[1:])), items)
    assert task.net.config.n_digit == 3 and task.net.config.codebook_size == 8  # from the data


def test_beam_search_validation_learns_on_synthetic_data(tiny_cfg):
    """Two epochs of a tiny RPG_ED: validation NDCG@10 comes from beams and beats popularity."""
    cfg = tiny_cfg(*RPG_TINY, "trainer.max_epochs=4", "task.optimizer.lr=0.003")
    metrics = train(cfg)
    for key in ("test/hr@10", "test/ndcg@10", "test/mrr", "popularity/test/ndcg@10", "val/ndcg@10_best"):
        assert key in metrics, key
    assert 0 < metrics["test/hr@10"] <= 1
    assert metrics["data"]["name"] == "synthetic" and metrics["data"]["n_items"] == 120  # what was loaded
    assert metrics["test/ndcg@10"] > metrics["popularity/test/ndcg@10"]


def test_ks_beyond_the_beam_are_refused(tiny_cfg):
    from genrec.validation import ConfigError

    with pytest.raises(Exception, match="beam_size") as err:
        build_components(tiny_cfg(*RPG_TINY, "task.ks=[20]"))
    assert isinstance(err.value, ConfigError) or isinstance(err.value.__cause__, ConfigError)
