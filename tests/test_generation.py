"""Beam search, greedy decoding, the prefix constraint and beam ranks on toy step functions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from genrec.generation import (
    BeamSearchOutput,
    PrefixConstraint,
    beam_ranks,
    beam_search,
    beams_to_items,
    first_items,
    greedy_search,
)
from genrec.generation.items import MISS_RANK
from genrec.metrics import RankingMetrics
from genrec.tokenizers import SemanticIDIndex, pack_codes

K, N_DIGIT = 4, 3


def _catalogue(n_items: int, seed: int = 0) -> np.ndarray:
    """item_id2tokens [n_items + 1, N_DIGIT]: distinct random codes, row 0 = -1."""
    rng = np.random.default_rng(seed)
    all_codes = np.array(list(itertools.product(range(K), repeat=N_DIGIT)))  # [K^n, n]
    pick = rng.choice(len(all_codes), n_items, replace=False)
    return np.concatenate([np.full((1, N_DIGIT), -1), all_codes[pick]], 0).astype(np.int64)


class ToyModel:
    """log-probs from a fixed random table indexed by (user, step, packed code prefix).

    The state records, per row, the user and the codes fed so far; the table lookup reads that
    history, so a wrong reorder gives wrong scores. Every reorder index is logged.
    """

    def __init__(self, batch: int, offsets: list[int], vocab: int, seed: int = 0,
                 steps: int = N_DIGIT) -> None:
        g = torch.Generator().manual_seed(seed)
        self.tables = [torch.randn(batch, K**t, vocab, generator=g).log_softmax(-1) for t in range(steps)]
        self.offsets, self.batch = torch.tensor(offsets), batch
        self.reorders: list[torch.Tensor] = []

    def init_state(self) -> dict:
        return {"user": torch.arange(self.batch), "hist": torch.zeros(self.batch, 0, dtype=torch.long)}

    def step(self, tokens, state):
        if tokens is not None:
            code = tokens[:, 0] - self.offsets[min(state["hist"].shape[1], N_DIGIT - 1)]  # [R]
            state = {"user": state["user"], "hist": torch.cat([state["hist"], code[:, None]], 1)}
        t = state["hist"].shape[1]
        prefix = pack_codes(state["hist"].clamp(0, K - 1), K) if t else torch.zeros_like(state["user"])
        return self.tables[t][state["user"], prefix], state  # [R, V]

    def reorder(self, state, index):
        self.reorders.append(index.clone())
        return {"user": state["user"][index], "hist": state["hist"][index]}

    def brute_force(self, table: np.ndarray, beam: int,
                    eos: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-`beam` (item ids, scores) per user by scoring every catalogue item (+ EOS after it)."""
        codes = torch.as_tensor(table[1:])  # [n, n_digit]
        score = torch.zeros(self.batch, len(codes))
        for t in range(N_DIGIT):
            prefix = pack_codes(codes[:, :t], K) if t else torch.zeros(len(codes), dtype=torch.long)
            score += self.tables[t][:, prefix, codes[:, t] + self.offsets[t]]  # [B, n]
        if eos is not None:
            score += self.tables[N_DIGIT][:, pack_codes(codes, K), eos]
        top = score.topk(min(beam, len(codes)), dim=1)
        return top.indices + 1, top.values


def _run(n_items: int, beam: int, offsets=(0, 0, 0), vocab: int = K, batch: int = 3, seed: int = 0):
    table = _catalogue(n_items, seed)
    model = ToyModel(batch, list(offsets), vocab, seed)
    constraint = PrefixConstraint(table, K, vocab, offsets)
    out = beam_search(model.step, model.init_state(), batch, N_DIGIT, beam, constraint.allowed, model.reorder)
    items = beams_to_items(out, SemanticIDIndex(table, K), constraint)
    return table, model, constraint, out, items


@pytest.mark.parametrize("offsets,vocab", [((0, 0, 0), K), ((3, 3 + K, 3 + 2 * K), 3 + 3 * K + 2)])
def test_wide_beams_equal_brute_force_top_k(offsets, vocab):
    """With beam >= the number of 2-digit prefixes (K^2) nothing is pruned: beams = exact top-k."""
    table, model, _, out, items = _run(n_items=30, beam=K * K, offsets=offsets, vocab=vocab)
    want_items, want_scores = model.brute_force(table, beam=K * K)
    assert torch.equal(items, want_items)
    torch.testing.assert_close(out.scores, want_scores)
    assert out.sequences.shape == (3, K * K, N_DIGIT)


def test_eos_step_allows_only_eos_after_real_items():
    offsets, eos, vocab = [3, 3 + K, 3 + 2 * K], 2, 3 + 3 * K
    table = _catalogue(12, seed=2)
    model = ToyModel(3, offsets, vocab, seed=2, steps=N_DIGIT + 1)
    constraint = PrefixConstraint(table, K, vocab, offsets, eos_token=eos)
    out = beam_search(model.step, model.init_state(), 3, N_DIGIT + 1, 12, constraint.allowed, model.reorder)
    assert (out.sequences[:, :, -1] == eos).all()
    want_items, want_scores = model.brute_force(table, beam=12, eos=eos)  # beam = catalogue: exact
    assert torch.equal(beams_to_items(out, SemanticIDIndex(table, K), constraint), want_items)
    torch.testing.assert_close(out.scores, want_scores)


def _reference_beam_search(model: ToyModel, table: np.ndarray, beam: int) -> list[list[int]]:
    """Plain-Python beam search per user over the catalogue's prefixes: the spec, slowly."""
    codes = [tuple(c) for c in table[1:].tolist()]
    out = []
    for b in range(model.batch):
        beams = [((), 0.0)]
        for t in range(N_DIGIT):
            cands = []
            for prefix, score in beams:
                lp = model.tables[t][b, int(pack_codes(np.array(prefix, dtype=np.int64), K)) if t else 0]
                for c in sorted({code[t] for code in codes if code[:t] == prefix}):
                    cands.append((prefix + (c,), score + float(lp[c + model.offsets[t]])))
            beams = sorted(cands, key=lambda x: -x[1])[:beam]
        out.append([codes.index(p) + 1 for p, _ in beams])
    return out


@pytest.mark.parametrize("beam", [2, 5])
def test_narrow_beams_equal_reference_beam_search(beam):
    table, model, _, _, items = _run(n_items=30, beam=beam, seed=1)
    assert items.tolist() == _reference_beam_search(model, table, beam)


def test_beams_are_valid_sorted_and_distinct():
    table, _, _, out, items = _run(n_items=40, beam=10, seed=3)
    assert (items > 0).all()  # every beam is a real item (40 items >= 10 beams)
    assert (out.scores[:, :-1] >= out.scores[:, 1:]).all()
    for row in items:
        assert len(set(row.tolist())) == len(row)
    codes = torch.as_tensor(table)[items]  # [B, beam, n_digit]
    assert torch.equal(codes, out.sequences)


def test_fewer_items_than_beams_pad_with_minus_inf_and_item_zero():
    table, model, _, out, items = _run(n_items=3, beam=5)
    assert torch.isfinite(out.scores[:, :3]).all() and torch.isinf(out.scores[:, 3:]).all()
    assert (items[:, 3:] == 0).all()
    assert torch.equal(items[:, :3].sort(1).values, torch.tensor([[1, 2, 3]] * 3))
    want_items, _ = model.brute_force(table, beam=5)
    assert torch.equal(items[:, :3], want_items)


def test_reorder_gets_flattened_parent_indices():
    batch, beam = 3, 4
    _, model, _, _, _ = _run(n_items=30, beam=beam, batch=batch)
    assert len(model.reorders) == N_DIGIT - 1  # after every step but the last
    assert torch.equal(model.reorders[0], torch.arange(batch).repeat_interleave(beam))  # user b's rows
    for index in model.reorders[1:]:
        assert index.shape == (batch * beam,)
        assert torch.equal(index // beam, torch.arange(batch).repeat_interleave(beam))  # never across users


def test_beam_one_equals_greedy():
    table = _catalogue(30, seed=5)
    model = ToyModel(4, [0, 0, 0], K, seed=5)
    constraint = PrefixConstraint(table, K)
    beam1 = beam_search(model.step, model.init_state(), 4, N_DIGIT, 1, constraint.allowed, model.reorder)
    greedy = greedy_search(model.step, model.init_state(), 4, N_DIGIT, constraint.allowed)
    assert torch.equal(beam1.sequences, greedy.sequences)
    torch.testing.assert_close(beam1.scores, greedy.scores)


def test_nan_model_gives_no_items_and_not_finite():
    table = _catalogue(10)
    constraint = PrefixConstraint(table, K)

    def nan_step(tokens, state):
        return torch.full((state, K), float("nan")), state

    def reorder(state, index):
        return len(index)

    out = beam_search(nan_step, 2, 2, N_DIGIT, 3, constraint.allowed, reorder)
    items = beams_to_items(out, SemanticIDIndex(table, K), constraint)
    ranks, finite = beam_ranks(items, out.scores, torch.tensor([1, 2]))
    assert (items == 0).all() and not finite.any()
    assert torch.equal(ranks, torch.tensor([MISS_RANK, MISS_RANK]))


def test_prefix_constraint_matches_enumeration():
    table = _catalogue(20, seed=7)
    offsets = [3, 3 + K, 3 + 2 * K]
    constraint = PrefixConstraint(table, K, 3 + 3 * K, offsets)
    codes = table[1:]
    for t in range(N_DIGIT):
        prefixes = np.array(list(itertools.product(range(K), repeat=t)), dtype=np.int64).reshape(K**t, t)
        tokens = torch.as_tensor(prefixes + np.array(offsets[:t]), dtype=torch.long)
        mask = constraint.allowed(tokens)  # [K^t, V]
        for p, row in zip(prefixes, mask, strict=True):
            nxt = {c[t] for c in codes if (c[:t] == p).all()}
            assert set(torch.nonzero(row)[:, 0].tolist()) == {offsets[t] + c for c in nxt}
    garbage = torch.tensor([[0, 1]])  # token 0 is not a digit-0 token
    assert not constraint.allowed(garbage).any()


def test_beam_ranks_hand_case():
    items = torch.tensor([[5, 3, 0], [2, 9, 7], [1, 4, 6], [0, 0, 0]])
    scores = torch.tensor([[-1.0, -2.0, -float("inf")], [-1.0, -2.0, -3.0], [-0.5, -1.0, -2.0],
                           [-float("inf")] * 3])
    ranks, finite = beam_ranks(items, scores, torch.tensor([3, 8, 1, 0]))
    assert torch.equal(ranks, torch.tensor([1, MISS_RANK, 0, MISS_RANK]))  # 8 missed; 0 never matches
    metric = RankingMetrics((1, 3), "t/")
    metric.update(ranks, finite)
    out = metric.compute()  # by hand: hits at ranks 1 and 0 among 4 users; misses add nothing to MRR
    assert out["t/hr@3"] == pytest.approx(2 / 4) and out["t/mrr"] == pytest.approx((1 / 2 + 1) / 4)
    assert torch.equal(finite, torch.tensor([True, True, True, False]))


def test_beams_to_items_zero_for_unknown_code():
    table = _catalogue(5)
    missing = [c for c in itertools.product(range(K), repeat=N_DIGIT) if list(c) not in table.tolist()][0]
    seqs = torch.tensor([[table[2].tolist(), list(missing)]])  # [1, 2, n_digit]
    out = BeamSearchOutput(seqs, torch.tensor([[-1.0, -2.0]]))
    assert beams_to_items(out, SemanticIDIndex(table, K)).tolist() == [[2, 0]]


def test_first_items_keeps_each_first_item_once_in_beam_order():
    seqs = torch.tensor([[[3, 1], [3, 2], [5, 1], [7, 7]]])  # [B=1, beam=4, steps=2]
    scores = torch.tensor([[-1.0, -2.0, -3.0, float("-inf")]])
    items, kept = first_items(BeamSearchOutput(seqs, scores))
    assert items.tolist() == [[3, 5, 0, 0]]
    assert kept[0, :2].tolist() == [-1.0, -3.0] and torch.isinf(kept[0, 2:]).all()
