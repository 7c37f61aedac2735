import math

import numpy as np
import pytest
import torch

from genrec.data.datasets import sampled_candidates
from genrec.data.interactions import InteractionLog, LeaveOneOutSplit
from genrec.metrics import NonFiniteScoresError, RankingMetrics, full_ranking_ranks, rank_of_target

NAN, INF = float("nan"), float("inf")


def test_metric_values_by_hand():
    metric = RankingMetrics(ks=(1, 3), prefix="t/")
    metric.update(torch.tensor([0, 2]))  # ranks 0 and 2 (0-based)
    metric.update(torch.tensor([5]))
    out = metric.compute()
    assert out["t/hr@1"] == pytest.approx(1 / 3)
    assert out["t/hr@3"] == pytest.approx(2 / 3)
    assert out["t/ndcg@1"] == pytest.approx(1 / 3)
    assert out["t/ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert out["t/mrr"] == pytest.approx((1 + 1 / 3 + 1 / 6) / 3)


def test_states_are_sums_so_split_updates_equal_one_update():
    a, b = RankingMetrics((10,)), RankingMetrics((10,))
    ranks = torch.tensor([0, 3, 11, 40, 9])
    a.update(ranks)
    b.update(ranks[:2])
    b.update(ranks[2:])
    assert {k: float(v) for k, v in a.compute().items()} == {k: float(v) for k, v in b.compute().items()}


def _ranks(result):
    ranks, finite = result
    return ranks.tolist(), finite.tolist()


def test_rank_counts_higher_scores_and_ties_against_the_target():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.5], [3.0, 1.0, 2.0, 0.0]])
    # row 0: target 0.5 has 0.9 above and one other 0.5 tied with it
    assert _ranks(rank_of_target(scores, torch.tensor([2, 0]))) == ([2, 0], [True, True])
    assert _ranks(rank_of_target(scores, torch.tensor([2, 0]), ties="expected")) == ([1.5, 0.0], [True, True])


@pytest.mark.parametrize("bad", [NAN, -INF, INF])
def test_sampled_non_finite_target_ranks_last(bad):
    scores = torch.tensor([[bad, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 0.0]])
    for ties in ("pessimistic", "expected"):
        ranks, finite = rank_of_target(scores, torch.tensor([0, 3]), ties=ties)
        assert ranks.tolist() == [3, 3] and finite.tolist() == [False, True]


def test_sampled_constant_scores_never_hit_with_pessimistic_ties():
    scores = torch.full((2, 101), 0.25)  # C = 101 candidates, all equal
    ranks, finite = rank_of_target(scores, torch.tensor([0, 57]))
    assert ranks.tolist() == [100, 100] and finite.all()
    expected, _ = rank_of_target(scores, torch.tensor([0, 57]), ties="expected")
    assert expected.tolist() == [50.0, 50.0]  # (C - 1) / 2
    metric = RankingMetrics(ks=(10,))
    metric.update(ranks, finite)
    out = metric.compute()
    assert float(out["hr@10"]) == 0.0 and float(out["ndcg@10"]) == 0.0
    assert float(out["mrr"]) == pytest.approx(1 / 101)
    metric = RankingMetrics(ks=(10, 51))  # the expected rank (a float) is plugged in as the rank
    metric.update(*rank_of_target(scores, torch.tensor([0, 57]), ties="expected"))
    out = metric.compute()
    assert float(out["hr@10"]) == 0.0 and float(out["hr@51"]) == 1.0
    assert float(out["ndcg@51"]) == pytest.approx(1 / math.log2(52))
    assert float(out["mrr"]) == pytest.approx(1 / 51)


def test_sampled_non_finite_others_neither_help_nor_hurt():
    # NaN and +inf among the others count as -inf: only 0.9 is above the target 0.5
    scores = torch.tensor([[0.5, NAN, 0.9, 0.1, INF, -INF]])
    assert _ranks(rank_of_target(scores, torch.tensor([0]))) == ([1], [True])
    # a -inf target does not tie with the NaN/-inf others in its favour: still last of 6
    scores = torch.tensor([[-INF, NAN, 0.9, -INF]])
    assert _ranks(rank_of_target(scores, torch.tensor([0]), ties="expected")) == ([3.0], [False])


def test_unknown_ties_mode_is_refused():
    with pytest.raises(ValueError, match="ties"):
        rank_of_target(torch.zeros(1, 3), torch.tensor([0]), ties="optimistic")


def test_full_ranking_masks_history_and_padding_but_never_the_target():
    #                    pad   1    2    3    4
    scores = torch.tensor([[9.0, 5.0, 4.0, 3.0, 1.0]])
    history = torch.tensor([[1, 0]])
    assert _ranks(full_ranking_ranks(scores, torch.tensor([3]), None)) == ([2], [True])  # items 1, 2 above
    assert _ranks(full_ranking_ranks(scores, torch.tensor([3]), history)) == ([1], [True])  # item 2 above
    # a re-consumed target stays rankable
    assert _ranks(full_ranking_ranks(scores, torch.tensor([1]), torch.tensor([[1, 2]]))) == ([0], [True])


def test_full_ranking_ties_count_only_unmasked_items():
    #                    pad   1    2    3    4
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.5, 0.1]])
    history = torch.tensor([[2, 0]])  # item 2 (tied) removed; padding column (tied) never ranked
    assert _ranks(full_ranking_ranks(scores, torch.tensor([1]), history)) == ([1], [True])
    assert _ranks(full_ranking_ranks(scores, torch.tensor([1]), history, ties="expected")) == ([0.5], [True])
    assert _ranks(full_ranking_ranks(scores, torch.tensor([1]), None)) == ([2], [True])


@pytest.mark.parametrize("bad", [NAN, -INF, INF])
def test_full_ranking_non_finite_target_ranks_last_of_the_rankable_items(bad):
    #                    pad   1     2     3     4
    scores = torch.tensor([[9.0, bad, -INF, -INF, 0.2]])
    history = torch.tensor([[3, 0]])  # item 3 is masked: -inf, but not a candidate at all
    for ties in ("pessimistic", "expected"):
        ranks, finite = full_ranking_ranks(scores, torch.tensor([1]), history, ties=ties)
        assert ranks.tolist() == [2] and finite.tolist() == [False]  # after items 2 and 4, of 3
    # a finite target above an unmasked -inf item and a NaN item
    scores = torch.tensor([[9.0, 0.3, -INF, NAN, 0.2]])
    assert _ranks(full_ranking_ranks(scores, torch.tensor([1]), None)) == ([0], [True])


def test_full_ranking_constant_scores():
    scores = torch.full((1, 51), 1.0)  # 50 items + padding
    history = torch.tensor([[3, 4, 5, 6, 8, 0, 0]])
    assert _ranks(full_ranking_ranks(scores, torch.tensor([7]), None)) == ([49], [True])
    assert _ranks(full_ranking_ranks(scores, torch.tensor([7]), None, ties="expected")) == ([24.5], [True])
    assert _ranks(full_ranking_ranks(scores, torch.tensor([7]), history)) == ([44], [True])


def test_all_non_finite_pass_raises_but_one_finite_target_does_not():
    nan_scores = torch.full((4, 11), NAN)
    metric = RankingMetrics(ks=(10,), prefix="val/")
    metric.update(*full_ranking_ranks(nan_scores, torch.tensor([1, 2, 3, 4]), None))
    with pytest.raises(NonFiniteScoresError, match="NaN or infinite"):
        metric.compute()
    assert issubclass(NonFiniteScoresError, ValueError)
    scores = nan_scores.clone()
    scores[0] = torch.arange(11.0)  # one user with finite scores: item 10 is first
    metric = RankingMetrics(ks=(5,), prefix="val/")
    metric.update(*full_ranking_ranks(scores, torch.tensor([10, 2, 3, 4]), None))
    out = metric.compute()
    # user 0 ranks 0; the three NaN users rank last (rank 9 of 10 items) and miss the top 5
    assert float(out["val/hr@5"]) == pytest.approx(1 / 4)
    assert float(out["val/mrr"]) == pytest.approx((1 + 3 / 10) / 4)
    assert RankingMetrics(ks=(10,)).compute()["hr@10"] == 0  # an empty pass is not an error


def test_nan_model_scores_zero_not_one():
    # the old counting (strictly greater only) gave a NaN model HR@10 = NDCG@10 = MRR = 1
    scores = torch.full((3, 101), NAN)
    scores[:, 0] = 0.0  # keep one finite target so compute() does not refuse
    metric = RankingMetrics(ks=(10,))
    metric.update(*rank_of_target(scores, torch.tensor([0, 5, 9])))
    out = metric.compute()
    assert float(out["hr@10"]) == pytest.approx(1 / 3)  # only user 0 (finite, above all NaNs)
    assert float(out["mrr"]) == pytest.approx((1 + 2 / 101) / 3)


def test_sampled_protocol_never_samples_a_history_item_and_is_seeded():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(50), 30)
    items = rng.integers(1, 200, len(users))
    split = LeaveOneOutSplit(InteractionLog(users, items).to_sequences())
    cands = sampled_candidates(split, "test", 100, seed=3)
    assert cands.shape == (50, 101)
    for u in range(50):
        seen = set(split.sequences.user(u).tolist())
        assert cands[u, 0] == split.target(u, "test")
        assert not seen & set(cands[u, 1:].tolist())
        assert len(set(cands[u, 1:].tolist())) == 100
    assert np.array_equal(cands, sampled_candidates(split, "test", 100, seed=3))
    assert not np.array_equal(cands, sampled_candidates(split, "val", 100, seed=3))
