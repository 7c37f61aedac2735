"""RetrievalTask and RankingTask (Phoenix): loss pieces on hand-worked values, learning on
synthetic data, and the experiments through train()."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED_DATA, compose_config, experiment_config

from genrec.run.evaluation import evaluate
from genrec.run.training import build_components, train
from genrec.tasks.ranking import RankingTask, final_score, ranking_losses
from genrec.tasks.retrieval import candidate_log_q, sampled_softmax_logits
from genrec.validation import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: see conftest.one_thread


# ---- retrieval loss pieces ----
def test_log_q_shifts_every_logit_by_exactly_minus_log_q():
    g = torch.Generator().manual_seed(0)
    users = F.normalize(torch.randn(3, 4, generator=g), dim=-1)  # [N, D]
    cands = F.normalize(torch.randn(5, 4, generator=g), dim=-1)  # [M, D]
    cand_ids, targets = torch.tensor([2, 4, 6, 8, 9]), torch.tensor([4, 2, 9])
    positive = torch.tensor([1, 0, 4])
    log_q = torch.tensor([-1.0, 0.5, -3.0, 2.0, 0.25])
    plain = sampled_softmax_logits(users, cands, cand_ids, targets, positive, 0.1)
    corrected = sampled_softmax_logits(users, cands, cand_ids, targets, positive, 0.1, log_q)
    torch.testing.assert_close(corrected - plain, (-log_q).expand(3, -1))
    torch.testing.assert_close(plain, users @ cands.T / 0.1)  # temperature divides the dot product


def test_log_q_is_the_expected_draw_count_of_in_batch_and_uniform_candidates():
    probs = torch.tensor([0.0, 0.5, 0.25, 0.25])  # training popularity of items 1..3
    got = candidate_log_q(torch.tensor([1, 3]), probs, n_targets=4, n_extra=2, n_items=3)
    torch.testing.assert_close(got, torch.tensor([math.log(4 * 0.5 + 2 / 3), math.log(4 * 0.25 + 2 / 3)]))
    # no extras: log p + log N, the same shift for every column, so only -log p matters
    only = candidate_log_q(torch.tensor([1, 3]), probs, n_targets=4, n_extra=0, n_items=3)
    torch.testing.assert_close(only, torch.log(torch.tensor([0.5, 0.25])) + math.log(4))


def test_accidental_hit_is_masked_but_the_positive_is_kept():
    users, cands = torch.eye(2), torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    cand_ids = torch.tensor([5, 7, 5])  # column 2: an extra negative that drew item 5 again
    targets, positive = torch.tensor([5, 7]), torch.tensor([0, 1])
    logits = sampled_softmax_logits(users, cands, cand_ids, targets, positive, 1.0)
    assert logits[0, 2] == float("-inf")  # row 0's own target in another column
    assert torch.isfinite(logits[0, :2]).all() and torch.isfinite(logits[1]).all()
    expected = math.log(1 + math.e ** -1)  # row 0: [1, 0, masked] -> -log(e / (e + 1))
    loss0 = F.cross_entropy(logits[:1], positive[:1])
    assert loss0.item() == pytest.approx(expected)


# ---- ranking pieces ----
def _ranker(actions=("favorite", "click"), regression=("dwell_time",), **kw):
    from genrec.models.phoenix import PhoenixRanker
    torch.manual_seed(0)
    return PhoenixRanker(n_items=30, n_users=10, n_authors=4, n_surfaces=3, actions=actions,
                         regression_actions=regression, embedding_dim=16, num_layers=1, num_heads=2,
                         max_history=8, dropout=0.0, **kw)


def _ranking_task(net, **kw) -> RankingTask:
    return RankingTask(net, functools.partial(torch.optim.Adam, lr=1e-2), **kw)


def test_ranking_losses_are_bce_and_softplus_mse():
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0]])  # [N=2, A=2]: "click" logit, dwell_time pre-activation
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    losses = ranking_losses(logits, labels, 1, ["click", "dwell_time"])
    assert losses["click"].item() == pytest.approx(math.log(2))
    sp = math.log(2)  # softplus(0)
    assert losses["dwell_time"].item() == pytest.approx((sp**2 + (sp - 1) ** 2) / 2)


def _batch(b=3, s=5, c=4, seed=0):
    from genrec.data.phoenix_datasets import PhoenixBatch
    g = torch.Generator().manual_seed(seed)
    return PhoenixBatch(
        users=torch.arange(1, b + 1), hist_items=torch.randint(1, 31, (b, s), generator=g),
        hist_authors=torch.randint(0, 4, (b, s), generator=g),
        hist_actions=torch.randint(0, 2, (b, s, 2), generator=g).float(),
        hist_surfaces=torch.randint(0, 3, (b, s), generator=g),
        cand_items=torch.randint(1, 31, (b, c), generator=g),
        cand_authors=torch.randint(0, 4, (b, c), generator=g),
        cand_surfaces=torch.ones(b, c, dtype=torch.long), labels=torch.zeros(b, c, 3))


def test_final_score_is_the_weighted_sum_of_activated_outputs():
    values = torch.tensor([[0.5, 0.2, 2.0]])
    assert final_score(values, torch.tensor([1.0, -2.0, 0.5])).item() == pytest.approx(0.5 - 0.4 + 1.0)
    net = _ranker()
    task = _ranking_task(net, action_weights={"favorite": 3.0, "click": -0.5, "report": -234.0})
    # dwell_time: the default; report: not in this data, ignored
    assert task.score_weights.tolist() == pytest.approx([3.0, -0.5, 0.1])
    net.eval()
    batch = _batch()
    with torch.no_grad():
        logits = net(**batch.model_inputs())  # [B, C, 3]
        by_hand = 3.0 * torch.sigmoid(logits[..., 0]) - 0.5 * torch.sigmoid(logits[..., 1]) \
            + 0.1 * F.softplus(logits[..., 2])
        torch.testing.assert_close(task.scores(batch), by_hand)


def test_unknown_action_name_is_a_config_error():
    net = _ranker()
    with pytest.raises(ConfigError, match="favourite"):
        _ranking_task(net, action_weights={"favourite": 1.0})
    with pytest.raises(ConfigError, match="task.action_loss_weights"):
        _ranking_task(net, action_loss_weights={"clik": 1.0})
    with pytest.raises(ConfigError, match="task.action_loss_weights.click"):
        _ranking_task(net, action_loss_weights={"click": -1.0})
    assert _ranking_task(net, action_loss_weights={"click": 0.0}).loss_weights["click"] == 0.0


def test_ranking_loss_weights_scale_each_action_term():
    net = _ranker()
    batch = _batch()
    batch.labels[:, 0, 1] = 1.0
    task = _ranking_task(net, action_loss_weights={"favorite": 0.0, "click": 2.0, "dwell_time": 0.5})
    task.log = task.log_dict = lambda *a, **k: None  # no trainer attached
    torch.manual_seed(1)
    loss = task.training_step(batch, 0)
    net.eval()
    with torch.no_grad():
        parts = ranking_losses(net(**batch.model_inputs()).flatten(0, 1), batch.labels.flatten(0, 1), 2,
                               task.names)
        loss = task.training_step(batch, 0)
    expected = 2.0 * parts["click"].item() + 0.5 * parts["dwell_time"].item()  # favorite: weight 0
    assert loss.item() == pytest.approx(expected, rel=1e-5)


# ---- learning on synthetic data ----
SMALL_DATA = ["data=phoenix_synthetic", "data.source.n_users=600", "data.source.n_items=400",
              "data.source.n_clusters=20", "data.maxlen=30", "data.sampled_negatives=50"]


def _fit(tmp_path: Path, overrides: list[str]) -> dict:
    cfg = compose_config(tmp_path, [*SMALL_DATA, "callbacks=none", *overrides])
    L.seed_everything(0)
    datamodule, task = build_components(cfg)
    trainer = L.Trainer(accelerator="cpu", max_epochs=cfg.trainer.max_epochs, logger=False,
                        check_val_every_n_epoch=cfg.trainer.check_val_every_n_epoch,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        num_sanity_val_steps=0)
    trainer.fit(task, datamodule=datamodule)
    trainer.test(task, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_retrieval_learns_on_synthetic_data(tmp_path):
    """Chance Recall@K is K / 400; the planted clusters (20 of ~20 items) make far better easy."""
    m = _fit(tmp_path, ["model=phoenix_retrieval", "task=retrieval", "model.embedding_dim=32",
                        "model.num_layers=1", "data.batch_size=64", "task.optimizer.lr=0.005",
                        "trainer.max_epochs=6"])
    assert m["test/hr@10"] > 10 * 10 / 400, m  # measured 0.43
    assert m["test/hr@100"] > 2.4 * 100 / 400, m  # measured 0.84
    assert m["test/hr@100"] > 1.5 * m["popularity/test/hr@100"], m  # popularity 0.32


@pytest.mark.slow
def test_ranker_learns_on_synthetic_data(tmp_path):
    """~380 steps, 20-50 s (the ranker reaches the history only through attention: slower than
    the two tower; 4 epochs left click AUC at 0.53). Chance AUC is 0.5; measured click 0.80,
    favorite 0.83, sampled NDCG@10 0.31 vs popularity 0.13."""
    m = _fit(tmp_path, ["model=phoenix_ranker", "task=ranking", "model.embedding_dim=32",
                        "model.num_layers=1", "data.batch_size=32", "task.optimizer.lr=0.003",
                        "trainer.max_epochs=20", "trainer.check_val_every_n_epoch=20",
                        "data.train_dataset._target_=genrec.data.phoenix_datasets.RankerTrainDataset"])
    assert m["test/auc/click"] > 0.7, m
    assert m["test/auc/favorite"] > 0.7, m
    assert m["test/sampled/ndcg@10"] > 1.5 * m["popularity/test/sampled/ndcg@10"], m


# ---- the experiments through train() ----
TINY_PHOENIX = ["data.source.n_users=150", "data.source.n_items=120", "data.sampled_negatives=20",
                "data.maxlen=16", "data.batch_size=64", "model.embedding_dim=16", "model.num_layers=1",
                "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1", "trainer.max_time=null"]


@pytest.mark.parametrize(("experiment", "key"), [("phoenix_retrieval_synthetic", "test/hr@10"),
                                                 ("phoenix_ranker_synthetic", "test/auc/click")])
def test_synthetic_experiment_trains_and_evaluate_reproduces_it(tmp_path, experiment, key):
    metrics = train(experiment_config(tmp_path, [f"experiment={experiment}", *TINY_PHOENIX]))
    assert 0.0 <= metrics[key] <= 1.0 and "popularity/test/sampled/ndcg@10" in metrics, metrics
    again = evaluate(compose_config(tmp_path, [f"ckpt_path={metrics['best_checkpoint']}",
                                               f"output_dir={tmp_path / 'eval'}", "progress_bar=false"],
                                    config_name="evaluate"))
    for name in (key, "test/sampled/ndcg@10"):  # evaluate.py ranks at its own ks (5, 10, 20, 50)
        assert again[name] == pytest.approx(metrics[name], abs=1e-6), name


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["phoenix_retrieval_ml100k", "phoenix_ranker_ml100k",
                                        "phoenix_retrieval_beauty", "phoenix_ranker_beauty"])
def test_real_data_experiment_runs_one_short_epoch(tmp_path, experiment):
    folder = "ml-100k-recbole" if "ml100k" in experiment else "beauty-5core-s3rec"
    if not (SHARED_DATA / folder).exists():
        pytest.skip(f"{SHARED_DATA / folder} not found")
    metrics = train(experiment_config(tmp_path, [
        f"experiment={experiment}", "trainer.max_epochs=1", "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=2", "trainer.max_time=null",
        f"paths.shared_data={SHARED_DATA}"]))
    # the real dataset was loaded (not a fallback) and the stage's own metric was logged
    assert (metrics["data"]["n_users"], metrics["data"]["n_items"]) == (
        (943, 1682) if "ml100k" in experiment else (22363, 12101))
    assert ("test/hr@100" if "retrieval" in experiment else "test/auc/click") in metrics, sorted(metrics)


def test_ranking_task_option_builds_on_the_phoenix_data(tmp_path):
    """conf/task/ranking.yaml's weights all name Phoenix actions (no ConfigError on any data)."""
    cfg = compose_config(tmp_path, [*SMALL_DATA, "model=phoenix_ranker", "task=ranking",
                                    "model.embedding_dim=16",
                                    "data.train_dataset._target_=genrec.data.phoenix_datasets.RankerTrainDataset"])
    datamodule, task = build_components(cfg)
    kwargs = datamodule.model_kwargs()
    assert task.names == tuple(kwargs["actions"] + kwargs["regression_actions"])
    weights = dict(zip(task.names, task.score_weights.tolist(), strict=True))
    assert weights["favorite"] == 0.5 and weights["reply"] == 5.0 and weights["not_interested"] < 0


def test_auc_of_one_class_is_left_out_not_reported_as_zero():
    """torchmetrics returns 0.0 for an AUC whose labels are one class; that key must not be logged."""
    from torchmetrics.classification import BinaryAUROC

    from genrec.tasks.head_metrics import is_defined

    def local(flag, all):  # noqa: A002  (the strategy's reduce_boolean_decision, one process)
        return flag

    auc = BinaryAUROC()
    auc.update(torch.tensor([0.2, 0.9]), torch.tensor([1, 1]))
    assert not is_defined(auc, local)
    auc.update(torch.tensor([0.1]), torch.tensor([0]))
    assert is_defined(auc, local)
