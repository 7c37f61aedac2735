"""The task base: optimizer parameter groups, the metric dicts and baselines, keyword inputs;
and FastDropout's rate where 1/256 steps cannot express it."""

import functools

import pytest
import torch

from genrec.data.datasets import SequenceBatch
from genrec.models.layers import FastDropout
from genrec.models.sasrec import SASRec
from genrec.tasks.base import net_inputs, parameter_groups, required_inputs
from genrec.tasks.baselines import PopularityBaseline
from genrec.tasks.next_item import NextItemTask
from genrec.validation import ConfigError


def _net(**kw) -> SASRec:
    return SASRec(**{"n_items": 40, "maxlen": 8, "hidden_units": 16, **kw})


def _task(**kw) -> NextItemTask:
    adam = functools.partial(torch.optim.AdamW, lr=1e-3)
    return NextItemTask(_net(), adam, **kw)


def _ids(group) -> set[int]:
    return {id(p) for p in group["params"]}


def test_every_parameter_lands_in_exactly_one_group_and_decay_only_on_matrices():
    net = _net()
    groups = parameter_groups(net.named_parameters(), 0.1)
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    everything = [id(p) for p in net.parameters()]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(everything)  # none missing, none twice
    decay, no_decay = groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert net.final_norm.weight.dim() == 1 and id(net.final_norm.weight) in _ids(no_decay)


def test_a_custom_group_takes_its_matches_first_with_its_own_options():
    task = _task(weight_decay=0.05, param_groups=[
        {"name": "embeddings", "match": r"item_emb", "lr": 0.01, "weight_decay": 0.0}])
    optimizer = task.configure_optimizers()
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"embeddings", "decay", "no_decay"}
    assert _ids(groups["embeddings"]) == {id(task.net.item_emb.weight)}
    assert groups["embeddings"]["lr"] == 0.01 and groups["embeddings"]["weight_decay"] == 0.0
    assert groups["decay"]["lr"] == 1e-3 and groups["decay"]["weight_decay"] == 0.05
    assert id(task.net.item_emb.weight) not in _ids(groups["decay"])
    n = sum(len(g["params"]) for g in optimizer.param_groups)
    assert n == len(list(task.net.parameters()))


def test_a_group_that_matches_nothing_is_a_named_error():
    with pytest.raises(ConfigError, match=r"task.param_groups\[0\] \(hash\): match 'hash_table'"):
        parameter_groups(_net().named_parameters(), 0.0, [{"name": "hash", "match": "hash_table"}])


def test_the_base_builds_metrics_for_model_and_baselines_and_stores_the_net_config():
    task = _task(baselines=[PopularityBaseline()], monitor="val/mrr")
    assert set(task.metrics) == {"val", "val_sampled", "test", "test_sampled",
                                 "popularity_test", "popularity_test_sampled"}
    assert task.metrics["popularity_test"].prefix == "popularity/test/"
    assert task.monitor == "val/mrr" and task.hparams.monitor == "val/mrr"
    assert task.hparams.net_config["n_items"] == 40
    assert "baselines" not in task.hparams and "net" not in task.hparams


def test_the_task_says_which_batch_fields_its_loss_reads():
    assert "negatives" in _task(loss="bce").batch_fields("train")
    assert "negatives" not in _task(loss="ce").batch_fields("train")
    assert _task().batch_fields("eval") >= {"target", "history"}


def test_inputs_go_to_the_network_by_keyword():
    items = torch.tensor([[0, 3, 4]])
    batch = SequenceBatch(items=items, users=torch.tensor([0]), timestamps=torch.tensor([[0, 5, 9]]))

    def encode(items, dense=None):
        return items

    assert set(net_inputs(encode, batch.model_inputs())) == {"items"}  # timestamps not taken
    assert set(net_inputs(lambda **kw: kw, batch.model_inputs())) == {"items", "timestamps"}
    assert required_inputs(_net()) == {"items"}


def test_popularity_baseline_scores_every_row_by_the_counts():
    class Data:
        def item_popularity(self):
            return torch.tensor([0.0, 5.0, 1.0, 3.0])

    baseline = PopularityBaseline()
    baseline.fit(Data())
    batch = SequenceBatch(items=torch.ones(2, 3, dtype=torch.long), users=torch.tensor([0, 1]))
    scores = baseline.scores(batch, torch.device("cpu"))
    assert scores.tolist() == [[0.0, 5.0, 1.0, 3.0]] * 2


@pytest.mark.parametrize("p", [1e-3, 0.01, 0.2])
def test_fast_dropout_drops_at_the_asked_rate_even_below_one_256th(p):
    torch.manual_seed(0)
    drop = FastDropout(p).train()
    x = torch.ones(4_000_000)
    y = drop(x)
    dropped = (y == 0).float().mean().item()
    sd = (p * (1 - p) / x.numel()) ** 0.5
    assert abs(dropped - p) < max(6 * sd, 0.02 * p), (dropped, p)
    assert torch.allclose(y[y != 0], torch.full((1,), 1 / (1 - p)), rtol=2e-3)
    assert torch.equal(drop.eval()(x), x)


def test_attention_dropout_runs_fused_off_the_cpu_path_and_never_vanishes_at_tiny_p(monkeypatch):
    """Training attention: explicit softmax + FastDropout on the CPU; on other devices the fused
    SDPA kernel with dropout_p (simulated here by emptying the CPU list). A rate that rounds to
    zero bytes (p = 1e-3) still drops."""
    import torch.nn.functional as F

    from genrec.models import layers

    attn = layers.CausalSelfAttention(16, 2, dropout=0.001).train()
    x = torch.randn(2, 5, 16)
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(layers.F, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(kw.get("dropout_p")) or real(*a, **kw))
    attn(x, mask)
    assert calls == []  # CPU: explicit path
    monkeypatch.setattr(layers, "EXPLICIT_DROPOUT_DEVICES", ())
    attn(x, mask)
    assert calls == [0.001]  # fused path, dropout passed on
    attn.eval()(x, mask)
    assert calls[-1] == 0.0  # no dropout in evaluation
