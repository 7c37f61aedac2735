"""GenerativeTask: CE + weighted head losses, ranking + per-head metrics, beam generation, the pipeline."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from conftest import compose_config, experiment_config

from genrec.data.behavior_datasets import BehaviorBatch
from genrec.generation.beam import beam_search
from genrec.generation.items import MISS_RANK, beam_ranks
from genrec.generation.next_items import generate_next_items, item_steps
from genrec.metrics import full_ranking_ranks
from genrec.models.generative import GenerativeRecommendationModel
from genrec.run.evaluation import evaluate
from genrec.run.training import train
from genrec.tasks.baselines import PopularityBaseline
from genrec.tasks.generative import GenerativeTask, generative_loss, head_losses
from genrec.validation import ConfigError

N_ITEMS, F = 40, 4


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: see conftest.one_thread


def _net(heads=("like", "share"), regression=("rating",), seed=0, **kw) -> GenerativeRecommendationModel:
    torch.manual_seed(seed)
    fields = dict(n_items=N_ITEMS, num_features=F, embedding_dim=32, hidden_dim=64, num_layers=1,
                  num_heads=2, max_seq_len=16, dropout=0.0, heads=heads, regression_heads=regression)
    return GenerativeRecommendationModel(**{**fields, **kw})


def _task(net, **kw) -> GenerativeTask:
    return GenerativeTask(net, functools.partial(torch.optim.Adam, lr=1e-2), **kw)


def _cyclic_batch(n_users: int, length: int, seed: int, eval_rows: bool = False) -> BehaviorBatch:
    """Each user walks i -> i + 1 (mod N_ITEMS) from a random start; 'like' = the item is even,
    'share' = the first feature is positive, 'rating' = item / N_ITEMS; row 0 left-padded by 2."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, N_ITEMS, (n_users, 1), generator=g)
    seq = (start + torch.arange(length + 1)) % N_ITEMS + 1  # [B, T + 1] ids 1..N
    items, nxt = seq[:, :-1].clone(), seq[:, 1:].clone()  # [B, T]
    items[0, :2] = 0
    nxt[0, :2] = 0
    real = (items > 0).float()  # [B, T]
    feats = torch.randn(n_users, length, F, generator=g) * real[..., None]  # [B, T, F]
    labels = torch.stack([(items % 2 == 0).float(), (feats[..., 0] > 0).float(),
                          items.float() / N_ITEMS], -1) * real[..., None]  # [B, T, 3]
    batch = BehaviorBatch(items=items, users=torch.arange(n_users), dense_features=feats, labels=labels,
                          targets=nxt)
    if eval_rows:  # the newest event is the held-out one
        batch.target, batch.history, batch.targets = items[:, -1].clone(), items[:, :-1].clone(), None
    return batch


# ---- loss ----
def test_head_losses_are_bce_for_flags_and_mse_for_regression():
    scores = torch.tensor([[0.0, 2.0], [0.0, -1.0]])  # [N=2, H=2]: logit of "like", value of "rating"
    labels = torch.tensor([[1.0, 3.0], [0.0, -1.0]])
    losses = head_losses(scores, labels, ["like"], ["rating"])
    assert losses["like"].item() == pytest.approx(math.log(2))  # sigmoid(0) = 1/2 either way
    assert losses["rating"].item() == pytest.approx((1.0 + 0.0) / 2)  # squared errors 1 and 0


def test_loss_decreases_and_every_part_is_logged():
    net = _net()
    task = _task(net)
    batch = _cyclic_batch(16, 10, seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first, parts = generative_loss(net, batch, task.head_weights)
    assert set(parts) == {"ce", "like", "share", "rating"}
    for _ in range(40):
        opt.zero_grad()
        loss, _ = generative_loss(net, batch, task.head_weights)
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first.item()
    # the total is CE plus the weighted head terms
    total, parts = generative_loss(net, batch, {"like": 2.0, "share": 0.0, "rating": 0.5})
    expected = parts["ce"] + 2 * parts["like"] + 0.5 * parts["rating"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("head", ["like", "share", "rating"])
def test_a_zero_head_weight_removes_that_heads_gradient(head):
    net = _net()
    order = ["like", "share", "rating"]  # the task_scores columns: binary heads, then regression
    weights = {h: 0.0 if h == head else 1.0 for h in order}
    loss, _ = generative_loss(net, _cyclic_batch(8, 6, seed=1), _task(net, head_weights=weights).head_weights)
    loss.backward()
    out = net.heads[-1]  # the last Linear: row i produces head i
    for i, h in enumerate(order):
        grad = out.weight.grad[i].abs().sum() + out.bias.grad[i].abs()
        assert (grad == 0) == (h == head), (head, h, grad)


def test_head_weights_must_name_a_head_and_be_non_negative():
    with pytest.raises(ConfigError, match=r"head_weights names \['watch_ratio'\].*'like', 'share', 'rating'"):
        _task(_net(), head_weights={"like": 1.0, "watch_ratio": 2.0})
    with pytest.raises(ConfigError, match="task.head_weights.like=-1"):
        _task(_net(), head_weights={"like": -1})
    weights = _task(_net(), head_weights={"share": 0.25}).head_weights
    assert weights == {"like": 1.0, "share": 0.25, "rating": 1.0}


def test_batch_fields_ask_for_labels_only_with_heads():
    assert _task(_net()).batch_fields("train") == {"targets", "labels"}
    assert _task(_net()).batch_fields("eval") == {"target", "history", "labels"}
    assert _task(_net(heads=(), regression=())).batch_fields("eval") == {"target", "history"}


def test_other_config_values_fail_by_name():
    with pytest.raises(ConfigError, match="task.generation='sample'"):
        _task(_net(), generation="sample")
    with pytest.raises(ConfigError, match="task.beam_size=5"):
        _task(_net(), generation="beam", beam_size=5, ks=(5, 10))


# ---- learning ----
def _fit(task: GenerativeTask, steps: int) -> None:
    opt = torch.optim.Adam(task.net.parameters(), lr=1e-2)
    task.train()
    for step in range(steps):
        opt.zero_grad()
        loss, _ = generative_loss(task.net, _cyclic_batch(32, 12, seed=step), task.head_weights)
        loss.backward()
        opt.step()
    task.eval()


def test_planted_flag_is_learned_and_the_model_beats_popularity():
    """Fast variant on the cyclic data: 'like' (item parity) reaches AUC > 0.9, 'share' (a feature's
    sign) > 0.7, and the next item ranks far above popularity (every item equally popular)."""
    popularity = PopularityBaseline()
    task = _task(_net(), baselines=[popularity], ks=(10,))
    _fit(task, 80)
    batch = _cyclic_batch(200, 12, seed=999, eval_rows=True)
    popularity.counts = torch.bincount(batch.history.flatten(), minlength=N_ITEMS + 1).float()
    popularity.counts[0] = 0
    with torch.no_grad():
        task.evaluate(batch, "test")
        task.rank_scores("popularity_test", popularity.scores(batch, "cpu"), batch)
    computed = {task.head_keys[k]: m.compute().item() for k, m in task.head_metrics.items()
                if k.startswith("test")}
    auc = {k: v for k, v in computed.items() if "/auc/" in k}
    assert auc["test/auc/like"] > 0.9 and auc["test/auc/share"] > 0.7, auc
    ours, pop = task.metrics["test"].compute(), task.metrics["popularity_test"].compute()
    assert ours["test/ndcg@10"] > 0.8 > 3 * pop["popularity/test/ndcg@10"], (ours, pop)
    assert computed["test/mse/rating"] < 0.05  # labels item / N in (0, 1]: variance ~0.08


def test_an_untrained_model_scores_chance_auc():
    """The AUC above must be learned: a fresh model on the same rows is near 0.5."""
    task = _task(_net())
    with torch.no_grad():
        task.evaluate(_cyclic_batch(400, 12, seed=999, eval_rows=True), "val")
    auc = task.head_metrics["val_auc_0"].compute().item()
    assert 0.3 < auc < 0.7


# ---- generation ----
@pytest.mark.parametrize("mask_history", [True, False])
def test_beam_search_with_one_step_ranks_like_topk(mask_history):
    net = _net(seed=3).eval()
    batch = _cyclic_batch(12, 8, seed=5, eval_rows=True)
    batch.history[1, 0] = batch.target[1]  # a re-consumed target stays rankable
    task = _task(net, generation="beam", generation_steps=1, ks=(1, 5, 10), mask_history=mask_history,
                 beam_size=N_ITEMS + 1)  # every item: the two rankings must agree at every rank
    with torch.no_grad():
        task.evaluate(batch, "val")
    topk, beam = task.metrics["val"].compute(), task.metrics["val_beam"].compute()
    assert topk["val/mrr"] > 0
    for key, value in topk.items():
        torch.testing.assert_close(beam[key.replace("val/", "val/beam/")], value)
    # a short beam: the same ranks inside it, a miss beyond
    with torch.no_grad():
        hidden = net.encode(batch.items, batch.dense_features)  # [B, T, D]
        ranks, _ = full_ranking_ranks(net.score(hidden[:, -2]), batch.target,
                                      batch.history if mask_history else None)
        banned = torch.zeros(12, N_ITEMS + 1, dtype=torch.bool)
        banned[:, 0] = True
        if mask_history:
            banned.scatter_(1, batch.history, True)
            banned.scatter_(1, batch.target[:, None], False)
        items, scores = generate_next_items(net, batch.items[:, :-1], batch.dense_features[:, :-1], banned,
                                            n_steps=1, beam_size=5)
    beam_rank, _ = beam_ranks(items, scores, batch.target)
    assert (ranks < 5).any() and (ranks >= 5).any()
    assert beam_rank.tolist() == torch.where(ranks < 5, ranks, MISS_RANK).tolist()


def test_decode_steps_feed_the_chosen_item_with_the_last_features_and_never_repeat():
    net = _net(seed=4).eval()
    batch = _cyclic_batch(3, 6, seed=6)
    banned = torch.zeros(3, N_ITEMS + 1, dtype=torch.bool)
    banned[:, 0] = True
    banned[:, 1:6] = True  # e.g. history
    step, reorder, allowed = item_steps(net, batch.items, batch.dense_features, banned)
    with torch.no_grad():
        out = beam_search(step, None, 3, 3, 4, allowed, reorder)  # [B, beam=4, steps=3]
        seqs = out.sequences
        assert ((seqs >= 6) & (seqs <= N_ITEMS)).all()  # never padding nor a banned item
        assert all(len(set(s)) == 3 for s in seqs.reshape(-1, 3).tolist())  # no repeats
        # the best beam's score = its log-probs under full encodes of the grown sequence,
        # each new step carrying the prompt's last features
        items, feats = batch.items, batch.dense_features
        total = torch.zeros(3)
        for t in range(3):
            logits = net.score(net.encode(items, feats)[:, -1]).clone()  # [B, V]
            logits[:, 0] = float("-inf")
            chosen = seqs[:, 0, t]  # [B]
            total += torch.log_softmax(logits, -1).gather(1, chosen[:, None]).squeeze(1)
            items = torch.cat([items, chosen[:, None]], 1)
            feats = torch.cat([feats, feats[:, -1:]], 1)
    torch.testing.assert_close(out.scores[:, 0], total, atol=1e-4, rtol=1e-4)


# ---- the pipeline ----
TINY_BEHAVIOR = ["data.source.n_users=150", "data.source.n_items=80", "data.sampled_negatives=20",
                 "data.maxlen=20", "data.batch_size=64",
                 "model.embedding_dim=32", "model.hidden_dim=64", "model.num_layers=1", "model.num_heads=2",
                 "trainer.max_epochs=2", "trainer.max_time=null"]


def test_train_writes_best_validation_ndcg_and_auc(tmp_path):
    metrics = train(experiment_config(tmp_path, ["experiment=generative_synthetic", *TINY_BEHAVIOR]))
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "val/ndcg@10_best" in written and written["test/ndcg@10"] == pytest.approx(metrics["test/ndcg@10"])
    auc = [k for k in written if k.startswith("test/auc/")]
    assert auc and all(0.0 <= written[k] <= 1.0 for k in auc), written
    assert any(k.startswith("val/auc/") and k.endswith("_best") for k in written)
    assert "popularity/test/ndcg@10" in written
    # evaluate.py rebuilds the task and model from the checkpoint alone (feature statistics, heads)
    again = evaluate(compose_config(tmp_path, [f"ckpt_path={metrics['best_checkpoint']}",
                                               f"output_dir={tmp_path / 'eval'}", "progress_bar=false"],
                                    config_name="evaluate"))
    for key in ("test/ndcg@10", *auc):
        assert again[key] == pytest.approx(written[key], abs=1e-6), key


@pytest.mark.slow
def test_generative_synthetic_learns_a_planted_flag_and_beats_popularity(tmp_path):
    """The experiment as shipped (its data and model), 6 epochs. The planted not-interested flag
    (40% of clicks on a once-visited cluster vs 1% in favourite ones) is learned first; engagement's
    planted signal is weaker from the past alone (a category-share oracle: AUC 0.61 on training
    rows) and stays near 0.52-0.59 this early (measured), so it is not asserted here."""
    metrics = train(experiment_config(tmp_path, ["experiment=generative_synthetic", "trainer.max_epochs=6",
                                                  "trainer.max_time=null"]))
    assert metrics["val/auc/not_interested_best"] > 0.65, metrics
    assert metrics["test/ndcg@10"] > 2 * metrics["popularity/test/ndcg@10"], metrics


def test_train_with_beam_generation_logs_beam_metrics(tmp_path):
    overrides = ["experiment=generative_synthetic", *TINY_BEHAVIOR, "trainer.max_epochs=1",
                 "task.generation=beam", "task.generation_steps=2", "task.ks=[5,10]"]
    metrics = train(experiment_config(tmp_path, overrides))
    assert 0 <= metrics["val/beam/ndcg@10_best"] <= metrics["val/beam/hr@10_best"] <= 1
    assert 0 <= metrics["test/beam/ndcg@10"] <= metrics["test/beam/hr@10"] <= 1
    assert "test/ndcg@10" in metrics  # the top-k ranking is reported beside it
