"""TiSASRec: the interval matrix by hand, the attention against the paper's formula, causality,
padding, gradients, the no-time error, and training on synthetic data with timestamps."""

import math

import pytest
import torch
from conftest import compose_config
from hydra.utils import instantiate

from genrec.models.tisasrec import TimeAwareAttention, TiSASRec, interval_matrix
from genrec.run.training import build_components, train

DAY = 86_400


def test_interval_matrix_by_hand():
    """r_ij = min(floor(|t_i - t_j| / s_i), span): s_i = the smallest non-zero gap up to i."""
    ts = torch.tensor([
        [777, 1000, 1000, 1030, 1075, 2000],  # seconds; 777 sits on padding and is ignored
        [0, 0, 10 * DAY, 12 * DAY, 13 * DAY, 17 * DAY],  # days: the scale is personal
        [5, 5, 5, 5, 5, 5],  # no non-zero gap: scale 1, every interval 0
        [0, 0, 0, 0, 0, 123],  # a single event
    ])
    valid = torch.tensor([[0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1], [1] * 6, [0, 0, 0, 0, 0, 1]]).bool()
    expected = torch.tensor([
        # s = 1, 1, 30, 30, 30 (gaps 0, 30, 45, 925); 75, 970, 1000 s exceed 31 * s: clipped
        [[0, 0, 0, 0, 0, 0],
         [0, 0, 0, 30, 31, 31],
         [0, 0, 0, 30, 31, 31],
         [0, 1, 1, 0, 1, 31],  # 45 / 30 = 1.5 -> 1; 970 / 30 = 32.3 -> clipped
         [0, 2, 2, 1, 0, 30],
         [0, 31, 31, 31, 30, 0]],
        # s = 1 s, 2 days, 1 day, 1 day (gaps 2, 1, 4 days)
        [[0] * 6,
         [0] * 6,
         [0, 0, 0, 31, 31, 31],
         [0, 0, 1, 0, 0, 2],  # 1 day / 2 days -> 0, 5 days / 2 days -> 2
         [0, 0, 3, 1, 0, 4],
         [0, 0, 7, 5, 4, 0]],
        [[0] * 6] * 6,
        [[0] * 6] * 6,
    ])
    out = interval_matrix(ts, valid, time_span=31)
    assert out.dtype == torch.int64
    torch.testing.assert_close(out, expected)


def _reference_attention(att, x, mask, intervals, pos_k, pos_v, interval_k, interval_v):
    """The paper's Eq. (5)-(6) as written, with [B, T, T, D] interval tensors (as the authors'
    code gathers them)."""
    b, t, d = x.shape
    h = att.n_heads
    q, k, v = att.qkv(x).view(b, t, 3, h, d // h).unbind(2)  # [B, T, H, Dh]
    rk = interval_k[intervals].view(b, t, t, h, d // h)  # [B, T, T, H, Dh]
    rv = interval_v[intervals].view(b, t, t, h, d // h)
    keys = k + pos_k.view(b, t, h, -1)
    values = v + pos_v.view(b, t, h, -1)
    e = torch.einsum("bihd,bjhd->bhij", q, keys) + torch.einsum("bihd,bijhd->bhij", q, rk)
    a = (e / math.sqrt(d // h)).masked_fill(~mask, float("-inf")).softmax(-1)
    z = torch.einsum("bhij,bjhd->bihd", a, values) + torch.einsum("bhij,bijhd->bihd", a, rv)
    return att.out(z.reshape(b, t, d))


def test_bucketed_attention_equals_the_papers_formula():
    torch.manual_seed(0)
    b, t, d, span = 3, 9, 16, 12
    att = TimeAwareAttention(d, n_heads=2, dropout=0.0).eval()
    x = torch.randn(b, t, d)
    mask = torch.tril(torch.ones(t, t, dtype=torch.bool)).expand(b, 1, t, t)
    inputs = {"intervals": torch.randint(0, span + 1, (b, t, t)), "pos_k": torch.randn(b, t, d),
              "pos_v": torch.randn(b, t, d), "interval_k": torch.randn(span + 1, d),
              "interval_v": torch.randn(span + 1, d)}
    out, (k, v) = att(x, mask, **inputs)
    torch.testing.assert_close(out, _reference_attention(att, x, mask, **inputs), atol=1e-5, rtol=1e-5)
    assert k.shape == v.shape == (b, 2, t, d // 2)


FORMS = [("plain", "pre_ln"), ("mhc", "pre_ln"), ("plain", "reference")]  # (residual, block)


def _net(**kw):
    torch.manual_seed(0)
    return TiSASRec(**{"n_items": 50, "maxlen": 12, "hidden_units": 16, "num_blocks": 2, "num_heads": 2,
                       "dropout": 0.0, "time_span": 16, **kw}).eval()


def _times(b: int, t: int) -> torch.Tensor:
    """Non-decreasing seconds, 0 to 3 days apart."""
    return 1_500_000_000 + (torch.randint(0, 4, (b, t)) * DAY).cumsum(1)


@pytest.mark.parametrize("residual,block", FORMS)
def test_causal_output_at_t_ignores_later_items_and_times(residual, block):
    net = _net(residual=residual, block=block)
    items, ts = torch.randint(1, 51, (2, 10)), _times(2, 10)
    changed, changed_ts = items.clone(), ts.clone()
    changed[:, 6:] = torch.randint(1, 51, (2, 4))
    changed_ts[:, 6:] = ts[:, 5:6] + (torch.randint(1, 60, (2, 4)) * 3600).cumsum(1)  # other gaps
    torch.testing.assert_close(net.encode(items, ts)[:, :6], net.encode(changed, changed_ts)[:, :6])
    assert not torch.allclose(net.encode(items, ts)[:, 6:], net.encode(changed, changed_ts)[:, 6:])


def test_the_output_depends_on_the_time_intervals():
    net = _net()
    items, ts = torch.randint(1, 51, (2, 10)), _times(2, 10)
    spread = ts.clone()
    spread[:, 5:] += 40 * DAY  # same order, one long pause
    assert not torch.allclose(net.encode(items, ts)[:, -1], net.encode(items, spread)[:, -1])


@pytest.mark.parametrize("residual,block", FORMS)
def test_left_padding_does_not_change_the_result(residual, block):
    net = _net(residual=residual, block=block)
    items, ts = torch.randint(1, 51, (1, 5)), _times(1, 5)
    pad = torch.zeros(1, 4, dtype=torch.long)
    out = net.encode(torch.cat([pad, items], 1), torch.cat([pad, ts], 1))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, -5:], net.encode(items, ts), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("residual,block", FORMS)
def test_gradients_reach_every_parameter(residual, block):
    net = _net(dropout=0.1, residual=residual, block=block).train()
    items, ts = torch.randint(0, 51, (4, 12)), _times(4, 12)
    items[:, -1] = 1
    net.encode(items, ts).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_export_config_rebuilds_the_same_model():
    net = _net(time_span=7, residual="mhc")
    again = instantiate(net.export_config())
    assert type(again) is TiSASRec and again.config == net.config
    again.load_state_dict(net.state_dict())


def test_no_timestamps_fails_with_one_clear_sentence(tmp_path):
    with pytest.raises(ValueError, match="TiSASRec needs timestamps"):
        _net().encode(torch.randint(1, 51, (2, 5)))
    pairs = tmp_path / "pairs.txt"  # SASRec-style `user item` lines: no time
    pairs.write_text("".join(f"{u} {(u * 7 + k) % 80 + 1}\n" for u in range(1, 31) for k in range(6)))
    cfg = compose_config(tmp_path, ["data=ml-1m", f"data.source.path={pairs}", "data.sampled_negatives=20",
                                    "model=tisasrec"])
    with pytest.raises(ValueError, match="needs timestamps, but data 'ml-1m' has none"):
        build_components(cfg)


@pytest.mark.parametrize("residual", ["plain", "mhc"])
def test_tisasrec_learns_on_synthetic_data_with_timestamps(tmp_path, residual):
    metrics = train(compose_config(tmp_path, [
        "model=tisasrec", f"model.residual={residual}", "trainer.max_epochs=3",
        "task.optimizer.lr=0.005", "data.source.n_users=500"]))
    assert metrics["test/ndcg@10"] > 2 * metrics["popularity/test/ndcg@10"]
    assert metrics["test/sampled/ndcg@10"] > 2 * metrics["popularity/test/sampled/ndcg@10"]
