"""GenerativeRecommendationModel (genrec/models/generative.py) and the size report
(genrec/models/size_report.py): shapes, the interaction layer against its naive definition,
causality, prefill + decode == full encode, gradients, config checks, parameter / KV counts."""

import pytest
import torch
from omegaconf import OmegaConf

from genrec.models.generative import GenerativeRecommendationModel
from genrec.models.size_report import main as size_report_main
from genrec.models.size_report import size_report
from genrec.validation import ConfigError

N_ITEMS, F, D = 40, 5, 16
HEADS, REG = ("engagement", "click"), ("rating",)


def _net(**kw) -> GenerativeRecommendationModel:
    torch.manual_seed(0)
    fields = {"n_items": N_ITEMS, "num_features": F, "embedding_dim": D, "hidden_dim": 24, "num_layers": 2,
              "num_heads": 2, "max_seq_len": 32, "dropout": 0.0, "heads": HEADS, "regression_heads": REG,
              "feature_mean": [0.5] * F, "feature_std": [2.0] * F, "init_std": 0.1, **kw}
    return GenerativeRecommendationModel(**fields).eval()


def _left_padded(lengths: list[int], t: int) -> torch.Tensor:
    """int [B, t]: row b holds lengths[b] random items at the right, zeros before."""
    items = torch.randint(1, N_ITEMS + 1, (len(lengths), t))
    for b, n in enumerate(lengths):
        items[b, : t - n] = 0
    return items


def test_output_shapes():
    net = _net()
    items, feats = _left_padded([6, 3, 6], 6), torch.randn(3, 6, F)
    hidden = net.encode(items, feats)
    assert hidden.shape == (3, 6, D)
    assert net.score(hidden).shape == (3, 6, N_ITEMS + 1)
    assert net.score(hidden[:, -1], torch.randint(1, N_ITEMS + 1, (3, 4))).shape == (3, 4)
    assert net.task_scores(hidden).shape == (3, 6, len(HEADS) + len(REG))
    logits, scores, cache = net.prefill(items, feats)
    assert logits.shape == (3, N_ITEMS + 1) and scores.shape == (3, 3)
    assert cache.kv.shape == (2, 2, 3, 2, 6, D // 2)
    torch.testing.assert_close(logits, net.score(hidden[:, -1]))
    torch.testing.assert_close(scores, net.task_scores(hidden[:, -1]))


def test_one_feature_vector_per_user_broadcasts_to_every_step():
    net = _net()
    items, feats = _left_padded([5, 2], 5), torch.randn(2, F)
    torch.testing.assert_close(net.encode(items, feats), net.encode(items, feats[:, None].expand(2, 5, F)))


def test_interaction_layer_equals_the_naive_double_loop_over_pairs():
    net = _net()
    x = torch.randn(3, 4, F)  # normalised features
    e = net.features.project(x)  # [3, 4, F, D] e_i = x_i w_i + b_i
    pairs = [(i, j) for i in range(F) for j in range(i + 1, F)]
    naive = torch.stack([(e[..., i, :] * e[..., j, :]).sum(-1) for i, j in pairs], -1)  # [3, 4, P]
    fast = net.features.interactions(x)  # [3, 4, F(F-1)/2]
    assert fast.shape == (3, 4, F * (F - 1) // 2)
    torch.testing.assert_close(fast, naive, atol=1e-6, rtol=1e-5)


def test_features_are_normalised_inside_with_the_training_statistics():
    torch.manual_seed(0)
    mean, std = torch.randn(F), torch.rand(F) + 0.5
    with_stats = _net(feature_mean=mean.tolist(), feature_std=std.tolist())
    without = _net(feature_mean=None, feature_std=None)  # same seed: same weights
    items, raw = _left_padded([4, 4], 4), torch.randn(2, 4, F) * 3 + 1
    torch.testing.assert_close(with_stats.encode(items, raw), without.encode(items, (raw - mean) / std))
    assert not torch.allclose(with_stats.encode(items, raw), without.encode(items, raw))


def test_causal_a_later_item_or_feature_leaves_earlier_hidden_states_unchanged():
    net = _net()
    items, feats = _left_padded([8, 6], 8), torch.randn(2, 8, F)
    base = net.encode(items, feats)
    later_item, later_feat = items.clone(), feats.clone()
    later_item[:, 5] = later_item[:, 5] % N_ITEMS + 1
    later_feat[:, 5] += 3.0
    for changed in (net.encode(later_item, feats), net.encode(items, later_feat)):
        torch.testing.assert_close(changed[:, :5], base[:, :5])
        assert not torch.allclose(changed[:, 5:], base[:, 5:])


@pytest.mark.parametrize("tie_weights", [True, False])
def test_prefill_then_decode_equals_one_full_encode(tie_weights):
    net = _net(tie_weights=tie_weights)
    t, n = 5, 4
    items = _left_padded([5, 2, 3], t + n)  # left padding, rows of different lengths
    items[:, t:] = torch.randint(1, N_ITEMS + 1, (3, n))  # every row gets a real event each step
    feats = torch.randn(3, t + n, F)  # per-step features
    hidden = net.encode(items, feats)  # [3, t + n, D]
    logits, scores, cache = net.prefill(items[:, :t], feats[:, :t])
    torch.testing.assert_close(logits, net.score(hidden[:, t - 1]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores, net.task_scores(hidden[:, t - 1]), atol=1e-5, rtol=1e-5)
    for s in range(t, t + n):
        step_feats = feats[:, s] if s % 2 else feats[:, s : s + 1]  # [B, F] and [B, 1, F] both accepted
        before = cache.seq_len, cache.lengths().clone()
        logits, scores, cache = net.decode(items[:, s : s + 1], step_feats, cache)
        assert cache.seq_len == before[0] + 1 and cache.kv.shape[4] == before[0] + 1  # one slot per step
        assert torch.equal(cache.lengths(), before[1] + 1)
        torch.testing.assert_close(logits, net.score(hidden[:, s]), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(scores, net.task_scores(hidden[:, s]), atol=1e-5, rtol=1e-5)


def test_decode_from_an_empty_cache_and_an_attention_mask_match_the_full_encode():
    net = _net()
    items, feats = _left_padded([3, 3], 3), torch.randn(2, 3, F)
    hidden = net.encode(items, feats)
    cache = net.empty_cache(2)
    for s in range(3):
        logits, scores, cache = net.decode(items[:, s : s + 1], feats[:, s], cache)
    torch.testing.assert_close(logits, net.score(hidden[:, -1]), atol=1e-5, rtol=1e-5)
    # an attention_mask marking extra padding == those items zeroed
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    _, masked_scores, masked_cache = net.prefill(items, feats, attention_mask=mask)
    _, zeroed_scores, _ = net.prefill(items * mask, feats)
    torch.testing.assert_close(masked_scores, zeroed_scores)
    assert masked_cache.lengths().tolist() == [2, 3]


def test_each_head_and_the_feature_path_get_gradients():
    net = _net().train()
    items, feats = _left_padded([6, 4], 6), torch.randn(2, 6, F)
    hidden = net.encode(items, feats)
    out = net.task_scores(hidden)  # [B, T, 3]
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out[..., :2], torch.ones_like(out[..., :2]))
    (loss + out[..., 2].pow(2).mean() + net.score(hidden[:, -1]).logsumexp(-1).mean()).backward()
    last = net.heads[-1]
    for h in range(3):
        assert last.weight.grad[h].abs().sum() > 0 and last.bias.grad[h] != 0, f"head {h} got no gradient"
    for name, p in net.features.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"features.{name} got no gradient"


def test_use_features_false_needs_no_dense_features():
    net = _net(use_features=False)
    assert net.features is None and net.required_inputs == ("items",)
    items = _left_padded([4, 2], 4)
    logits, scores, cache = net.prefill(items, None)
    logits, scores, cache = net.decode(torch.tensor([[3], [4]]), None, cache)
    assert logits.shape == (2, N_ITEMS + 1) and cache.seq_len == 5
    with_features = _net()
    assert with_features.required_inputs == ("items", "dense_features")
    with pytest.raises(ValueError, match="dense_features"):
        with_features.encode(items)


@pytest.mark.parametrize(("field", "value"), [
    ("n_items", 0), ("num_features", 0), ("dropout", 1.0), ("num_layers", "two"), ("init_std", -0.1),
    ("max_seq_len", 0), ("feature_mean", [0.0] * (F + 1)), ("feature_std", [-1.0] * F)])
def test_a_config_range_error_names_the_field(field, value):
    with pytest.raises(ConfigError, match=f"model.{field}"):
        _net(**{field: value})


def test_export_config_rebuilds_the_model_with_plain_containers():
    net = _net(heads=OmegaConf.create(["engagement"]), regression_heads=OmegaConf.create([]))
    cfg = net.export_config()
    assert cfg["_target_"] == "genrec.models.generative.GenerativeRecommendationModel"
    assert cfg["heads"] == ("engagement",) and isinstance(cfg["feature_mean"], list)
    rebuilt = GenerativeRecommendationModel(**{k: v for k, v in cfg.items() if k != "_target_"})
    rebuilt.load_state_dict(net.state_dict())


def test_size_report_counts_every_parameter_once_and_the_kv_bytes_by_hand():
    for tie in (True, False):
        net = _net(tie_weights=tie)
        report = size_report(net, length=10)
        total = sum(p.numel() for p in net.parameters())
        assert report["total_parameters"] == total == sum(report["components"].values())
        assert report["parameter_bytes"] == {"fp32": 4 * total, "fp16": 2 * total, "int8": total}
        assert ("output" in report["components"]) is not tie
    # hand-counted pieces: embeddings, the feature projection, one block
    comps = report["components"]
    assert comps["item_emb"] == (N_ITEMS + 1) * D and comps["pos_emb"] == 33 * D
    assert comps["features"] == 2 * F * D
    assert comps["blocks.0"] == (D * 3 * D + 3 * D) + (D * D + D) + (D * 24 + 24 + 24 * D + D) + 4 * D
    # layers x 2 x length x d x bytes = 2 * 2 * 10 * 16 * bytes, and what a real cache holds
    assert report["kv_cache"] == {"length": 10, "bytes_per_user": {"fp32": 2560, "fp16": 1280, "int8": 640}}
    _, _, cache = net.prefill(_left_padded([10], 10), torch.randn(1, 10, F))
    assert cache.kv.numel() * cache.kv.element_size() == 2560


def test_size_report_cli_composes_a_model_config():
    report = size_report_main(["--model", "generative_light", "--n-items", "100", "--length", "8",
                               "--heads", "engagement"])
    # 64 dim, 8 features, 2 layers, 256 positions (conf/model/generative_light.yaml)
    assert report["components"]["item_emb"] == 101 * 64 and report["components"]["pos_emb"] == 257 * 64
    assert report["components"]["features"] == 2 * 8 * 64 and "blocks.1" in report["components"]
    assert report["kv_cache"]["bytes_per_user"]["fp32"] == 2 * 2 * 8 * 64 * 4
