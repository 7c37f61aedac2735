"""Streaming SASRec in PyTorch: prefill + cached decode equals a full recompute, at every step;
the cache's stored fill and cross part; the graphs the export builders declare."""

import pytest
import torch

from genrec.export.builders import graph_specs
from genrec.export.graphs import TopKHead
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
    assert cache.valid.dtype == torch.bool and torch.equal(cache.valid, items != 0)
    assert cache.seq_len == 14 and cache.lengths().tolist() == [14, 10, 3]


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
    assert repeated.kv.shape[2] == 6
    for row in range(6):  # rows 2u and 2u + 1 are user u, keys, values and fill alike
        assert torch.equal(repeated.kv[:, :, row], cache.kv[:, :, row // 2])
        assert torch.equal(repeated.valid[row], cache.valid[row // 2])
    scores, _ = net.decode(items[:, 6:7].repeat_interleave(2, 0), repeated)
    torch.testing.assert_close(scores[1::2], _full(net, items[:, :7])[:, -1], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_decode_reads_the_stored_fill_not_the_item_ids():
    """A cache whose stored fill marks every slot empty scores a new event as an empty cache does,
    whatever keys it holds: validity comes from `valid`, nothing else."""
    net, items = _net(), _sequences()
    _, cache = net.prefill(items[:, :6])
    blank = cache._replace(valid=torch.zeros_like(cache.valid))
    scores, grown = net.decode(items[:, 6:7], blank)
    # the new event sits at position 1 with only itself to attend to, as after an empty cache
    expected, _ = net.decode(items[:, 6:7], net.empty_cache(3))
    torch.testing.assert_close(scores[items[:, 6] != 0], expected[items[:, 6] != 0], atol=1e-5, rtol=1e-5)
    assert grown.lengths().tolist() == (items[:, 6] != 0).long().tolist()
    assert not torch.allclose(scores, net.decode(items[:, 6:7], cache)[0])  # the full cache differs


def test_the_cross_attention_part_moves_with_reorder_and_repeat_interleave():
    """An encoder-decoder's cache: growing self K/V + fixed cross K/V + encoder mask, kept together."""
    gen = torch.Generator().manual_seed(0)
    cross = torch.randn(2, 2, 3, 1, 5, 4, generator=gen)  # [L, 2, B, H, S, Dh]
    enc_valid = torch.tensor([[True] * 5, [False, True, True, True, True], [False] * 3 + [True] * 2])
    cache = KVCache.empty(2, 3, 1, 4, cross_kv=cross, enc_valid=enc_valid)
    present = [(torch.randn(3, 1, 2, 4, generator=gen), torch.randn(3, 1, 2, 4, generator=gen))] * 2
    cache = cache.grown(present, torch.ones(3, 2, dtype=torch.bool))
    assert cache.seq_len == 2 and cache.cross_kv is cross and cache.lengths().tolist() == [2, 2, 2]
    k, v = cache.cross_layer(1)
    assert torch.equal(k, cross[1, 0]) and torch.equal(v, cross[1, 1])
    order = torch.tensor([2, 2, 0])
    moved = cache.reorder(order)
    assert torch.equal(moved.cross_kv, cross[:, :, order]) and torch.equal(moved.enc_valid, enc_valid[order])
    assert torch.equal(moved.kv, cache.kv[:, :, order]) and torch.equal(moved.valid, cache.valid[order])
    beams = cache.repeat_interleave(4)
    assert torch.equal(beams.cross_kv[:, :, 9], cross[:, :, 2])
    assert torch.equal(beams.enc_valid[9], enc_valid[2])
    with pytest.raises(ValueError, match="no cross-attention part"):
        KVCache.empty(1, 1, 1, 4).cross_layer(0)


def test_a_model_that_needs_timestamps_declares_a_score_graph_only():
    from genrec.models.tisasrec import TiSASRec  # noqa: PLC0415

    net = TiSASRec(n_items=N_ITEMS, maxlen=MAXLEN, hidden_units=16, num_blocks=1, num_heads=1).eval()
    assert not net.streams
    with pytest.raises(TypeError, match="cannot stream"):
        net.prefill(_sequences())
    (spec,) = graph_specs(net)
    assert spec.name == "score" and spec.inputs == ("items", "timestamps") and "score only" in spec.note
    example = spec.example({"batch": 2, "seq": 5})
    assert example["timestamps"].shape == (2, 5)
    assert ((example["timestamps"] == 0) == (example["items"] == 0)).all()


def test_streaming_graph_declarations():
    specs = {s.name: s for s in graph_specs(_net(), {"next_item": {"top_k": 5}})}
    assert list(specs) == ["score", "prefill", "decode"]
    decode = specs["decode"]
    assert decode.axes == ("batch", "past")
    assert decode.fp32.after == ("net.final_norm",) and "top_scores" in decode.fp32.outputs
    inputs = decode.example({"batch": 2, "past": 0})
    assert inputs["past_kv"].shape == (2, 2, 2, 2, 0, 8) and inputs["past_items"].shape == (2, 0)
    assert inputs["past_valid"].shape == (2, 0) and inputs["past_valid"].dtype == torch.bool
    outs = decode.module(*inputs.values())
    assert dict(zip(decode.outputs, (o.shape for o in outs), strict=True)) == {
        "top_items": (2, 5), "top_scores": (2, 5), "present_kv": (2, 2, 2, 2, 1, 8),
        "present_valid": (2, 1), "present_items": (2, 1)}


def test_graph_options_go_to_their_builder_and_unknown_ones_are_named():
    net = _net()
    with pytest.raises(ValueError, match=r"graphs.next_item: unknown option\(s\) beam_size"):
        graph_specs(net, {"next_item": {"top_k": 5, "beam_size": 3}})
    with pytest.raises(ValueError, match=r"unknown graph builder\(s\) rpg"):
        graph_specs(net, {"rpg": {}})
    (score,) = [s for s in graph_specs(net, {"next_item": {"top_k": 100, "full_scores": True}})
                if s.name == "score"]
    assert score.module.head.k == N_ITEMS and score.outputs == ("top_items", "top_scores", "scores")


def test_a_graph_spec_refuses_an_unregistered_axis():
    from genrec.export.axes import AXES, profiles  # noqa: PLC0415
    from genrec.export.graphs import GraphSpec  # noqa: PLC0415

    assert {"batch", "seq", "past", "beam", "enc_seq", "cand"} <= set(AXES)
    with pytest.raises(ValueError, match="unknown dynamic axis 'beams'"):
        GraphSpec("g", torch.nn.Identity(), ("x",), ("y",), {"x": {0: "beams"}}, lambda sizes, gen: {})
    assert profiles({"past": [0, 8, 16]})["past"] == [0, 8, 16] and profiles()["batch"] == [1, 64, 1024]
    with pytest.raises(ValueError, match="tensorrt.profiles.seq"):
        profiles({"seq": [0, 8, 16]})  # seq may not be empty
    with pytest.raises(ValueError, match="unknown dynamic axis 'users'"):
        profiles({"users": [1, 2, 3]})


def test_top_k_never_returns_a_consumed_or_padding_item_when_fewer_than_k_remain():
    """Catalogue of 6, K = 5, a history of 3 distinct items (and padding): 3 items remain, so the
    last two slots are marked (id 0, score -inf), never a history item or the padding item."""
    scores = torch.tensor([[9.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                           [9.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])  # [B, N + 1], column 0 = padding
    history = torch.tensor([[0, 6, 5, 1], [2, 2, 3, 4]])  # [B, H]
    top_items, top_scores = TopKHead(5)(scores, history)
    assert top_items.tolist() == [[4, 3, 2, 0, 0], [1, 5, 6, 0, 0]]
    assert top_scores[:, :3].tolist() == [[4.0, 3.0, 2.0], [6.0, 2.0, 1.0]]
    assert torch.isneginf(top_scores[:, 3:]).all()
    unmasked_items, _ = TopKHead(5, mask_history=False)(scores, history)
    assert unmasked_items.tolist() == [[6, 5, 4, 3, 2], [1, 2, 3, 4, 5]]  # padding still never
