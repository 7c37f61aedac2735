"""RPG_ED: vocabulary layout, encoder padding, decoder causality, cached decode == recompute, learning."""

import pytest
import torch

from genrec.models.rpg_ed import (
    BOS,
    EOS,
    RPGED,
    RPGEDConfig,
    check_vocabulary,
    user_bucket,
    vocabulary_ranges,
)

TINY = dict(n_digit=3, codebook_size=8, n_user_buckets=16, max_history=6, d_model=32, n_heads=4,
            d_inner=64, encoder_layers=2, decoder_layers=2, dropout=0.0)


def _net(**overrides) -> RPGED:
    torch.manual_seed(0)
    return RPGED(**{**TINY, **overrides}).eval()


def _history(batch: int, length: int, n_digit: int, codebook: int, seed: int = 0) -> torch.Tensor:
    """int64 [B, H, n_digit] codes, row b left-padded (-1) to b % length real items (at least 1)."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, codebook, (batch, length, n_digit), generator=gen)
    for b in range(batch):
        real = 1 + b % length
        codes[b, : length - real] = -1
    return codes


def test_vocabulary_ranges_are_disjoint_and_tile_the_vocabulary():
    cfg = RPGEDConfig(**TINY)
    ranges = vocabulary_ranges(cfg)
    assert ranges == [(0, 3), (3, 19), (19, 27), (27, 35), (35, 43)]
    assert cfg.vocab_size == 43
    check_vocabulary(ranges, cfg.vocab_size)
    with pytest.raises(ValueError, match="overlap"):
        check_vocabulary([(0, 3), (3, 19), (18, 27)], 27)  # a digit starting inside the users
    with pytest.raises(ValueError, match="gap"):
        check_vocabulary([(0, 3), (4, 19)], 19)
    with pytest.raises(ValueError, match="do not end"):
        check_vocabulary([(0, 3), (3, 19)], 20)


def test_user_bucket_is_stable_and_in_range():
    users = torch.tensor([0, 1, 2, 12345, 2**40])
    buckets = user_bucket(users, 10_000)
    assert ((buckets >= 0) & (buckets < 10_000)).all()
    assert buckets.tolist() == user_bucket(users.clone(), 10_000).tolist()
    # the documented hash, worked by hand for user 1: 2654435761 % 10000
    assert int(buckets[1]) == 2654435761 % 10_000


def test_forward_shapes():
    net = _net()
    history = _history(4, 6, 3, 8)
    dec = torch.tensor([[BOS, 20, 30, 40]] * 4)
    logits = net(torch.arange(4), history, dec)
    assert logits.shape == (4, 4, net.config.vocab_size)
    memory, valid = net.encode(torch.arange(4), history)
    assert memory.shape == (4, 7, 32) and valid.shape == (4, 7)
    assert valid[:, 0].all()  # the user token is always attended


def test_encoder_ignores_padded_positions():
    net = _net()
    users = torch.arange(3)
    history = _history(3, 6, 3, 8)
    pad = history[..., 0] < 0  # [B, H]
    # a row encodes the same with or without its padded slots (keys masked, positions by recency)
    memory, valid = net.encode(users, history)
    for b in range(3):
        real = int((~pad[b]).sum())
        mem_b, _ = net.encode(users[b:b + 1], history[b:b + 1, -real:])
        torch.testing.assert_close(memory[b, -real:], mem_b[0, 1:], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(memory[b, 0], mem_b[0, 0], rtol=1e-5, atol=1e-5)


def test_decoder_is_causal():
    net = _net()
    users, history = torch.arange(2), _history(2, 6, 3, 8)
    a = torch.tensor([[BOS, 20, 30, 40]] * 2)
    b = a.clone()
    b[:, 2:] = torch.tensor([28, 37])  # change the future
    la, lb = net(users, history, a), net(users, history, b)
    torch.testing.assert_close(la[:, :2], lb[:, :2])
    assert not torch.allclose(la[:, 2:], lb[:, 2:])


def test_cached_decode_equals_full_recompute():
    net = _net()
    users, history = torch.arange(5), _history(5, 6, 3, 8, seed=3)
    cfg = net.config
    tokens = torch.stack([torch.randint(*cfg.digit_range(d), (5,)) for d in range(3)], 1)  # [B, 3]
    full = net(users, history, torch.cat([torch.full((5, 1), BOS), tokens], 1)).log_softmax(-1)  # [B, 4, V]
    logp, cache = net.prefill(users, history)
    torch.testing.assert_close(logp, full[:, 0], rtol=1e-5, atol=1e-5)
    for step in range(3):
        logp, cache = net.decode(tokens[:, step:step + 1], cache)
        torch.testing.assert_close(logp, full[:, step + 1], rtol=1e-5, atol=1e-5)
    assert cache.seq_len == 4


def test_cache_reorder_follows_beam_parents():
    net = _net()
    users, history = torch.arange(3), _history(3, 6, 3, 8, seed=4)
    _, cache = net.prefill(users, history)
    beams = cache.repeat_interleave(2)  # [B * 2]
    parents = torch.tensor([5, 4, 3, 2, 1, 0])
    reordered = beams.reorder(parents)
    torch.testing.assert_close(reordered.kv, beams.kv[:, :, parents])
    assert torch.equal(reordered.valid, beams.valid[parents])
    torch.testing.assert_close(reordered.cross_kv, beams.cross_kv[:, :, parents])
    assert torch.equal(reordered.enc_valid, beams.enc_valid[parents])
    # decoding a reordered cache equals decoding the reordered users from scratch
    tok = torch.full((6, 1), net.config.digit_range(0)[0] + 1)
    got, _ = net.decode(tok, reordered)
    order = torch.arange(3).repeat_interleave(2)[parents]
    _, fresh = net.prefill(users[order], history[order])
    want, _ = net.decode(tok, fresh)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_tiny_rpg_ed_learns_a_synthetic_mapping():
    """The next item's codes are the last history item's codes, each digit + 1 (mod codebook):
    the decoder can only get them through cross-attention. Untrained: ~1/8^3 exact matches."""
    torch.manual_seed(0)
    net = RPGED(**TINY)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        history = torch.randint(0, 8, (n, 2, 3))  # [n, H, n_digit]
        return history, net.codes_to_tokens((history[:, -1] + 1) % 8)  # target tokens [n, 3]

    def exact_match() -> float:
        net.eval()
        history, target = sample(256)
        dec_in = torch.cat([torch.full((256, 1), BOS), target], 1)
        pred = net(torch.zeros(256, dtype=torch.long), history, dec_in).argmax(-1)[:, :3]  # [256, 3]
        net.train()
        return (pred == target).all(1).float().mean().item()

    before = exact_match()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(120):
        history, target = sample(64)
        dec_in = torch.cat([torch.full((64, 1), BOS), target], 1)  # [BOS, s1, s2, s3]
        labels = torch.cat([target, torch.full((64, 1), EOS)], 1)  # [s1, s2, s3, EOS]
        logits = net(torch.zeros(64, dtype=torch.long), history, dec_in)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert before < 0.05
    assert exact_match() >= 0.9


def test_constrained_beams_are_real_items_sorted_distinct_and_beam_one_is_greedy():
    from genrec.generation.generator import generate_items
    from genrec.generation.trie import PrefixConstraint
    from genrec.tokenizers.index import SemanticIDIndex

    net = _net()
    cfg = net.config
    gen = torch.Generator().manual_seed(0)
    codes = torch.randperm(8**3, generator=gen)[:30]  # 30 distinct items among 512 codes
    table = torch.stack([codes // 64, (codes // 8) % 8, codes % 8], 1)  # [30, 3]
    item_id2tokens = torch.cat([torch.full((1, 3), -1), table]).numpy()
    index = SemanticIDIndex(item_id2tokens, 8)
    constraint = PrefixConstraint(item_id2tokens, 8, cfg.vocab_size,
                                  [cfg.digit_range(d)[0] for d in range(3)])
    users, history = torch.arange(4), _history(4, 6, 3, 8, seed=5)
    items, scores = generate_items(net, users, history, index, constraint, beam_size=5)
    assert items.shape == (4, 5) and ((items >= 1) & (items <= 30)).all()  # real items only
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # best first
    assert all(len(set(row.tolist())) == 5 for row in items)  # no duplicates
    beam1, s1 = generate_items(net, users, history, index, constraint, beam_size=1)
    greedy, sg = generate_items(net, users, history, index, constraint, greedy=True)
    assert torch.equal(beam1, greedy)
    torch.testing.assert_close(s1, sg)


def test_beam_reorder_within_users_keeps_the_cross_part_and_matches_a_full_reorder():
    net = _net()
    users, history = torch.arange(3), _history(3, 6, 3, 8, seed=6)
    _, cache = net.prefill(users, history)
    beams = cache.repeat_interleave(2)  # rows 2b, 2b + 1 belong to user b
    parents = torch.tensor([1, 1, 2, 3, 5, 4])  # every parent inside its user's block
    cheap, full = beams.reorder_within_groups(parents), beams.reorder(parents)
    assert cheap.cross_kv is beams.cross_kv  # not copied
    for a, b in zip(cheap, full, strict=True):
        torch.testing.assert_close(a, b)
