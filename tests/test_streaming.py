"""Streaming SASRec in PyTorch: prefill + cached decode equals a full recompute, at every step."""

import pytest
import torch

from genrec.models.cache import KVCache
from genrec.models.sasrec import SASRec

N_ITEMS, MAXLEN = 40, 16


# (residual, block form) pairs a model can be built with
FORMS = [("plain", "pre_ln"), ("mhc", "pre_ln"), ("plain", "reference")]


def _net(residual: str = "plain", block: str = "pre_ln") -> SASRec:
    torch.manual_seed(0)
    net = SASRec(n_items=N_ITEMS, maxlen=MAXLEN, hidden_units=16, num_blocks=2, num_heads=2, dropout=0.0,
                 residual=residual, block=block, mhc_expansion=3, mhc_sinkhorn_iters=4).eval()
    with torch.no_grad():  # mHC: input-dependent maps, not the near-plain initialisation
        for module in net.modules():
            for name in ("gates", "gate_out"):
                if hasattr(module, name):
                    getattr(module, name).fill_(0.5)
    return net


def _sequences() -> torch.Tensor:
    """[3, 14] left-padded: users with 14, 10 and 3 events."""
    torch.manual_seed(1)
    items = torch.randint(1, N_ITEMS + 1, (3, 14))
    items[1, :4] = 0
    items[2, :11] = 0
    return items


def _full(net: SASRec, items: torch.Tensor) -> torch.Tensor:
    """Scores for the next item after every position, by a full forward: [B, T, n_items + 1]."""
    return net.score(net.encode(items))


@pytest.mark.parametrize("residual,block", FORMS)
@torch.no_grad()
def test_prefill_then_decode_equals_full_recompute_at_every_step(residual, block):
    net, items = _net(residual, block), _sequences()
    full = _full(net, items)
    scores, cache = net.prefill(items[:, :4])
    torch.testing.assert_close(scores, full[:, 3])
    for t in range(4, items.shape[1]):
        scores, cache = net.decode(items[:, t : t + 1], cache)
        torch.testing.assert_close(scores, full[:, t], atol=1e-5, rtol=1e-5)
    assert cache.kv.shape == (2, 2, 3, 2, 14, 8)  # [layers, k/v, B, heads, P, head_dim]
    assert torch.equal(cache.items, items)


@pytest.mark.parametrize("residual,block", FORMS)
@torch.no_grad()
def test_decode_from_an_empty_cache_equals_full_recompute(residual, block):
    net, items = _net(residual, block), _sequences()
    full = _full(net, items)
    cache = net.empty_cache(3)
    assert cache.seq_len == 0 and cache.kv.shape[4] == 0
    for t in range(items.shape[1]):
        scores, cache = net.decode(items[:, t : t + 1], cache)
        valid = items[:, t] != 0  # a padding step's scores are meaningless, the cache stays right
        torch.testing.assert_close(scores[valid], full[valid, t], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores, full[:, -1], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_a_user_without_a_new_event_keeps_a_correct_cache():
    net, items = _net(), _sequences()
    _, cache = net.prefill(items[:, :8])
    step = items[:, 8:9].clone()
    step[0] = 0  # user 0 has no event this step
    _, cache = net.decode(step, cache)
    assert cache.lengths().tolist() == [8, 5, 0]  # user 0 gained a padding slot, not an event
    scores, cache = net.decode(items[:, 9:10], cache)
    without = torch.cat([items[:1, :8], items[:1, 9:10]], 1)  # user 0's real events
    torch.testing.assert_close(scores[0], _full(net, without)[0, -1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores[1:], _full(net, items[1:, :10])[:, -1], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_cache_reorder_and_repeat_interleave_follow_the_users():
    net, items = _net(), _sequences()
    _, cache = net.prefill(items[:, :6])
    order = torch.tensor([2, 0, 0])
    reordered = cache.reorder(order)
    scores, _ = net.decode(items[order, 6:7], reordered)
    torch.testing.assert_close(scores, _full(net, items[order, :7])[:, -1], atol=1e-5, rtol=1e-5)
    repeated = cache.repeat_interleave(2)
    assert repeated.kv.shape[2] == 6 and torch.equal(repeated.items[1], cache.items[0])
    assert torch.equal(KVCache(*repeated).kv, repeated.kv)


def test_a_model_that_needs_timestamps_declares_a_score_graph_only():
    from genrec.models.tisasrec import TiSASRec  # noqa: PLC0415

    net = TiSASRec(n_items=N_ITEMS, maxlen=MAXLEN, hidden_units=16, num_blocks=1, num_heads=1).eval()
    assert not net.streams
    with pytest.raises(TypeError, match="cannot stream"):
        net.prefill(_sequences())
    (spec,) = net.export_graphs()
    assert spec.name == "score" and spec.inputs == ("items", "timestamps") and "score only" in spec.note
    example = spec.example({"batch": 2, "seq": 5})
    assert example["timestamps"].shape == (2, 5)
    assert ((example["timestamps"] == 0) == (example["items"] == 0)).all()


def test_streaming_graph_declarations():
    specs = {s.name: s for s in _net().export_graphs(top_k=5)}
    assert list(specs) == ["score", "prefill", "decode"]
    decode = specs["decode"]
    assert decode.axes == ("batch", "past")
    inputs = decode.example({"batch": 2, "past": 0})
    assert inputs["past_kv"].shape == (2, 2, 2, 2, 0, 8) and inputs["past_items"].shape == (2, 0)
    outs = decode.module(*inputs.values())
    assert dict(zip(decode.outputs, (o.shape for o in outs), strict=True)) == {
        "top_items": (2, 5), "top_scores": (2, 5), "present_kv": (2, 2, 2, 2, 1, 8), "present_items": (2, 1)}
