"""Two-stage evaluation (genrec/run/two_stage.py): ranks of retrieved and missed targets, history
filtering, agreement with retrieval alone when the ranker re-scores by the retrieval score, and the
evaluate.py path on real (tiny, briefly trained) Phoenix checkpoints."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONF, compose_config
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from genrec.metrics import RankingMetrics
from genrec.run.checkpoint import CheckpointError
from genrec.run.evaluation import evaluate
from genrec.run.training import build_components, train
from genrec.run.two_stage import TwoStageSettings, retrieve, two_stage_pass, two_stage_ranks
from genrec.serving.index import CandidateIndex
from genrec.tasks.base import net_inputs
from genrec.tasks.retrieval import catalogue_vectors
from genrec.validation import ConfigError


def test_missed_target_is_a_miss_at_every_k_up_to_retrieve_k():
    candidates = torch.tensor([[4, 9, 2], [5, 6, 7], [5, 6, 7], [3, 8, 0]])  # [B=4, K=3]
    valid = torch.tensor([[True, True, True]] * 3 + [[True, True, False]])
    final = torch.tensor([[0.1, 0.9, 0.5], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0.05, 0.1, 9.0]])
    target = torch.tensor([2, 1, 1, 8])
    exact = torch.tensor([0, 1, 7, 2])  # row 1: an ANN miss the exact search had at rank 1
    ranks, finite = two_stage_ranks(final, candidates, valid, target, exact, torch.ones(4, dtype=torch.bool))
    # row 0: item 2 scores 0.5 behind 0.9; row 3: the empty slot's 9.0 does not count
    assert ranks.tolist() == [1, 3, 7, 0] and finite.all()
    metrics = RankingMetrics((1, 2, 3))
    metrics.update(ranks[1:3])
    assert all(v == 0 for k, v in metrics.compute().items() if k != "mrr")


def test_retrieve_filters_history_but_keeps_the_target():
    vectors = torch.eye(6)[:, :6] + 0.01 * torch.arange(6.0).unsqueeze(1)  # item i+1 ~ axis i
    index = CandidateIndex.build(vectors, torch.arange(1, 7))
    user = torch.tensor([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])  # prefers item 1 > 2 > ... > 6
    history = torch.tensor([[0, 1, 3, 2]])  # left-padded; item 2 is also the target
    cands, valid = retrieve(index, user, history, torch.tensor([2]), k=3, n_items=6)
    assert cands.tolist() == [[2, 4, 5]] and valid.all()
    cands, valid = retrieve(index, user, history, torch.tensor([2]), k=5, n_items=6)
    assert cands.tolist() == [[2, 4, 5, 6, 0]] and valid.tolist() == [[True] * 4 + [False]]


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="two_stage.index='lsh'"):
        TwoStageSettings(index="lsh")
    with pytest.raises(ConfigError, match="two_stage.retrieve_k=0"):
        TwoStageSettings(retrieve_k=0)


@pytest.fixture(scope="module")
def small_retrieval(tmp_path_factory):
    """An untrained PhoenixRetrieval on a small synthetic Phoenix data module."""
    cfg = compose_config(tmp_path_factory.mktemp("two_stage"), [
        "data=phoenix_synthetic", "data.source.n_users=120", "data.source.n_items=60",
        "data.source.n_clusters=4", "data.maxlen=12", "data.sampled_negatives=10",
        "model=phoenix_retrieval", "task=retrieval", "model.embedding_dim=16", "model.num_layers=1"])
    torch.manual_seed(0)
    datamodule, task = build_components(cfg)
    return datamodule, task.net.eval()


def retrieval_scorer(net, datamodule):
    """A stand-in ranker whose final score is the retrieval score itself."""
    table = catalogue_vectors(net, *datamodule.catalogue())  # [n_items + 1, D]

    def score(batch, candidates):
        users = net.user_embed(**net_inputs(net.user_embed, batch.model_inputs()))  # [B, D]
        return torch.einsum("bd,bkd->bk", users, table[candidates])  # [B, K]
    return score


@pytest.mark.parametrize("retrieve_k", [10, 60])
def test_ranker_with_the_retrieval_score_reproduces_retrieval_alone(small_retrieval, retrieve_k):
    """K = n_items: every item but the history reaches the ranker, so two-stage = retrieval at every
    k; K = 10: the same for k <= 10 (the top 10 keep their order, the rest are misses)."""
    datamodule, net = small_retrieval
    ks = list(range(1, 61))
    with torch.inference_mode():
        m = two_stage_pass(net, retrieval_scorer(net, datamodule), datamodule.test_dataloader(),
                           datamodule.catalogue(), TwoStageSettings(retrieve_k=retrieve_k), ks)
    assert 0 < m["retrieval/test/hr@10"] < 1
    for k in range(1, retrieve_k + 1):
        assert m[f"two_stage/test/hr@{k}"] == pytest.approx(m[f"retrieval/test/hr@{k}"], abs=1e-7)
        assert m[f"two_stage/test/ndcg@{k}"] == pytest.approx(m[f"retrieval/test/ndcg@{k}"], abs=1e-7)
    assert f"two_stage/test/hr@{retrieve_k + 1}" not in m
    if retrieve_k == 60:
        assert m["two_stage/test/mrr"] == pytest.approx(m["retrieval/test/mrr"], abs=1e-7)
    assert m["latency/test/retrieval_ms"] > 0 and m["latency/test/ranking_ms"] > 0


def test_a_reversed_ranker_reorders_and_ann_recall_is_reported(small_retrieval):
    datamodule, net = small_retrieval
    score = retrieval_scorer(net, datamodule)
    with torch.inference_mode():
        hnsw = TwoStageSettings(retrieve_k=20, index="hnsw", ef_search=4, hnsw_m=4)
        m = two_stage_pass(net, lambda b, c: -score(b, c), datamodule.test_dataloader(),
                           datamodule.catalogue(), hnsw, list(range(1, 21)))
    assert m["two_stage/test/hr@1"] != m["retrieval/test/hr@1"]
    assert 0 < m["ann/test/recall@20"] <= 1


# ---- evaluate.py on real checkpoints ----
TINY = ["data.source.n_users=120", "data.source.n_items=80", "data.source.n_clusters=4",
        "data.sampled_negatives=20", "data.maxlen=12", "data.batch_size=32", "model.embedding_dim=16",
        "model.num_layers=1", "trainer.max_epochs=1", "trainer.max_time=null",
        "+trainer.limit_train_batches=2", "trainer.check_val_every_n_epoch=1",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "logger=none"]


def _train(tmp: Path, experiment: str, *more: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}", *TINY, *more])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp / experiment)
        cfg.paths.data_dir = str(tmp / "data")
    return train(cfg)


@pytest.fixture(scope="module")
def phoenix_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("phoenix_runs")
    # 80 items: a long history leaves too few unseen items for the experiment's 48 negatives
    ranker = _train(tmp, "phoenix_ranker_synthetic", "data.train_dataset.n_candidates=16",
                    "data.train_dataset.positives=4")
    return tmp, ranker, _train(tmp, "phoenix_retrieval_synthetic")


def _evaluate(tmp: Path, ranker: str, retrieval: str, out: Path, *more: str) -> dict:
    return evaluate(compose_config(tmp, [f"ckpt_path={ranker}", f"retrieval_ckpt={retrieval}",
                                         f"output_dir={out}", "progress_bar=false", *more],
                                   config_name="evaluate"))


@pytest.mark.slow
def test_evaluate_two_stage_on_trained_checkpoints(phoenix_runs, tmp_path):
    tmp, ranker, retrieval = phoenix_runs
    m = _evaluate(tmp, ranker["best_checkpoint"], retrieval["best_checkpoint"], tmp_path / "eval",
                  "two_stage.retrieve_k=30")
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["two_stage/settings"]["retrieve_k"] == 30
    # an exact index retrieves exactly the exact top 30: HR@30 is retrieval's whatever the ranker does
    assert m["two_stage/test/hr@30"] == pytest.approx(m["retrieval/test/hr@30"], abs=1e-7)
    assert m["retrieval/test/hr@10"] == pytest.approx(retrieval["test/hr@10"], abs=1e-6)
    # the ranker's own pass on target + sampled negatives, as its training run tested it
    assert m["ranker/test/sampled/ndcg@10"] == pytest.approx(ranker["test/sampled/ndcg@10"], abs=1e-6)
    assert m["ranker/test/auc/click"] == pytest.approx(ranker["test/auc/click"], abs=1e-6)
    assert written["two_stage/test/ndcg@10"] == pytest.approx(m["two_stage/test/ndcg@10"])
    ivf = _evaluate(tmp, ranker["best_checkpoint"], retrieval["best_checkpoint"], tmp_path / "ivf",
                    "two_stage.retrieve_k=30", "two_stage.index=ivf", "two_stage.nprobe=1")
    assert 0 < ivf["ann/test/recall@30"] < 1


def _altered(ckpt_path: str, out: Path, change) -> Path:
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    change(ckpt)
    torch.save(ckpt, out)
    return out


@pytest.mark.slow
def test_mismatched_checkpoints_are_refused_without_output(phoenix_runs, tmp_path):
    tmp, ranker, retrieval = phoenix_runs
    r, q = ranker["best_checkpoint"], retrieval["best_checkpoint"]
    out = tmp_path / "eval"
    with pytest.raises(CheckpointError, match="swapped"):
        _evaluate(tmp, q, r, out)
    reseeded = _altered(q, tmp_path / "reseeded.ckpt",
                        lambda c: c["genrec_config"]["data"]["source"].update(seed=7))
    with pytest.raises(CheckpointError, match=r"reseeded\.ckpt \(retrieval\) were trained on different data"):
        _evaluate(tmp, r, reseeded, out)
    bigger = _altered(q, tmp_path / "bigger.ckpt",
                      lambda c: c["hyper_parameters"]["net_config"].update(n_items=81))
    with pytest.raises(CheckpointError, match="n_items: 80 vs 81"):
        _evaluate(tmp, r, bigger, out)
    assert not (out / "metrics.json").exists()
    assert np.isfinite(ranker["test/auc/click"])
