"""The sampled-softmax loss against hand-written references, and its `next_item_loss` branch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import genrec.tasks.next_item as next_item
from genrec.data.datasets import SequenceBatch
from genrec.models.sasrec import SASRec
from genrec.tasks.losses import linear_cross_entropy, sample_negatives, sampled_softmax_cross_entropy


def _reference(h, w, y, negatives, logq: bool) -> torch.Tensor:
    """Position by position: log(exp(s_y) + sum over negatives != y of exp(s_k + c)) - s_y, averaged
    over the positions with a target. negatives [K] (shared) or [B, K] (per sequence)."""
    n_items, k = w.shape[0] - 1, negatives.shape[-1]
    c = math.log(n_items / k) if logq else 0.0
    losses = []
    for b in range(h.shape[0]):
        row_negatives = (negatives if negatives.dim() == 1 else negatives[b]).tolist()
        for t in range(h.shape[1]):
            if y[b, t] == 0:
                continue
            s_y = h[b, t] @ w[y[b, t]]
            terms = [s_y] + [h[b, t] @ w[j] + c for j in row_negatives if j != y[b, t]]
            losses.append(torch.logsumexp(torch.stack(terms), 0) - s_y)
    return torch.stack(losses).mean()


def _tensors(d=4, n_items=7, seed=0):
    torch.manual_seed(seed)
    h = torch.randn(2, 3, d, requires_grad=True)  # [B, T, D]
    w = torch.randn(n_items + 1, d, requires_grad=True)
    y = torch.tensor([[0, 2, 3], [3, 5, 7]])  # one position without a target
    return h, w, y


@pytest.mark.parametrize("logq", [True, False])
@pytest.mark.parametrize("negatives", [
    torch.tensor([3, 4, 4, 7, 2]),  # shared: hits 4 positions; 4 drawn twice
    torch.tensor([[3, 2, 2], [5, 1, 3]]),  # per sequence: hits (0, 1) twice, (0, 2), (1, 0), (1, 1)
])
def test_sampled_softmax_equals_a_hand_written_reference(logq, negatives):
    h, w, y = _tensors()
    ref = _reference(h, w, y, negatives, logq)
    ref_grads = torch.autograd.grad(ref, [h, w])
    out = sampled_softmax_cross_entropy(h, w, y, negatives, logq_correction=logq)
    grads = torch.autograd.grad(out, [h, w])
    torch.testing.assert_close(out, ref)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)


def test_accidental_hits_are_masked():
    h, w, y = _tensors()
    one = (h[:1, 1:2], y[:1, 1:2])  # one position, target 2
    # every negative is the target: only the positive is left, so the loss is 0
    assert sampled_softmax_cross_entropy(*one[:1], w, one[1], torch.full((5,), 2)).item() == 0.0
    assert sampled_softmax_cross_entropy(*one[:1], w, one[1], torch.full((1, 5), 2)).item() == 0.0
    # an unmasked hit would count the target in the denominator again: the loss would be log 6
    s_y = (h[0, 1] @ w[2]).reshape(1, 1)
    unmasked = F.cross_entropy(s_y.expand(1, 6), torch.zeros(1, dtype=torch.long))
    assert unmasked.item() == pytest.approx(math.log(6), rel=1e-5)


@pytest.mark.parametrize("negatives", [torch.tensor([4, 6]), torch.tensor([[4, 6], [6, 6]])])
def test_gradients_reach_the_encoder_and_only_the_scored_rows(negatives):
    h, w, y = _tensors()
    sampled_softmax_cross_entropy(h, w, y, negatives).backward()
    assert h.grad.abs().sum(-1).gt(0).equal(y > 0)  # every position with a target, only those
    scored = set(y[y > 0].tolist()) | set(negatives.flatten().tolist())
    for row in range(w.shape[0]):
        assert w.grad[row].abs().sum().gt(0).item() == (row in scored), row


def test_all_items_as_negatives_is_full_cross_entropy():
    h, w, y = _tensors(d=8, n_items=40)
    full = linear_cross_entropy(h[y > 0], w, y[y > 0])
    every_item = torch.arange(1, w.shape[0])  # K = n_items: the correction is log 1 = 0
    torch.testing.assert_close(sampled_softmax_cross_entropy(h, w, y, every_item), full)
    torch.testing.assert_close(sampled_softmax_cross_entropy(h, w, y, every_item.expand(2, -1)), full)


def test_many_uniform_negatives_approach_full_cross_entropy_only_with_the_logq_correction():
    h, w, y = _tensors(d=8, n_items=40)
    full = linear_cross_entropy(h[y > 0], w, y[y > 0]).item()
    torch.manual_seed(1)
    negatives = sample_negatives((2, 40_000), 40, torch.device("cpu"))
    assert negatives.min() == 1 and negatives.max() == 40
    corrected = sampled_softmax_cross_entropy(h, w, y, negatives).item()
    plain = sampled_softmax_cross_entropy(h, w, y, negatives, logq_correction=False).item()
    assert corrected == pytest.approx(full, abs=0.02)
    assert plain > full + 5.0  # the 1000x over-drawn negatives dominate the denominator uncorrected


def _net_and_batch():
    torch.manual_seed(0)
    net = SASRec(n_items=30, maxlen=10, hidden_units=16, num_blocks=1, num_heads=1, dropout=0.0).eval()
    items = torch.randint(1, 31, (4, 10))
    items[0, :3] = 0  # left padding
    targets = torch.roll(items, -1, 1)
    targets[:, -1] = torch.randint(1, 31, (4,))
    targets[items == 0] = 0
    return net, SequenceBatch(items=items, users=torch.arange(4), targets=targets)


def test_next_item_loss_sampled_branch_with_every_item_equals_the_ce_branch(monkeypatch):
    net, batch = _net_and_batch()
    ce = next_item.next_item_loss(net, batch, "ce")
    every_item = torch.arange(1, 31)
    monkeypatch.setattr(next_item, "sample_negatives", lambda shape, n, device: every_item.expand(shape))
    for shared in (True, False):
        sampled = next_item.next_item_loss(net, batch, "sampled_softmax", num_negatives=30,
                                           shared_negatives=shared)
        torch.testing.assert_close(sampled, ce)


def test_next_item_loss_sampled_branch_draws_num_negatives_and_backpropagates(monkeypatch):
    net, batch = _net_and_batch()
    drawn = []

    def spy(shape, n, device):
        drawn.append((shape, n))
        return sample_negatives(shape, n, device)

    monkeypatch.setattr(next_item, "sample_negatives", spy)
    next_item.next_item_loss(net, batch, "sampled_softmax", num_negatives=8, shared_negatives=True)
    loss = next_item.next_item_loss(net, batch, "sampled_softmax", num_negatives=8)
    loss.backward()
    assert drawn == [((8,), 30), ((4, 8), 30)]  # shared, then one set per sequence (B = 4)
    assert net.item_emb.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.blocks.parameters())


def test_next_item_loss_bf16_encoder_stays_close_to_fp32():
    net, batch = _net_and_batch()
    torch.manual_seed(3)
    fp32 = next_item.next_item_loss(net, batch, "sampled_softmax", num_negatives=16)
    torch.manual_seed(3)  # the same negatives
    bf16 = next_item.next_item_loss(net, batch, "sampled_softmax", num_negatives=16,
                                    encoder_dtype=torch.bfloat16)
    assert bf16.dtype == torch.float32
    assert bf16.item() == pytest.approx(fp32.item(), rel=0.03)
    assert bf16.item() != fp32.item()  # autocast did run


def test_task_rejects_an_unknown_loss():
    net, _ = _net_and_batch()
    with pytest.raises(ValueError, match="sampled_softmax"):
        next_item.NextItemTask(net, optimizer=torch.optim.Adam, loss="sampled")


def _rows(batch: SequenceBatch, rows: slice) -> SequenceBatch:
    return SequenceBatch(items=batch.items[rows], users=batch.users[rows], targets=batch.targets[rows])


def test_row_sum_weighs_every_position_alike_across_batches_of_other_lengths():
    net, batch = _net_and_batch()  # row 0 has 7 positions with a target, rows 1-3 have 10 each
    short, rest = _rows(batch, slice(0, 1)), _rows(batch, slice(1, 4))

    def loss(b, reduction):
        return next_item.next_item_loss(net, b, "ce", reduction=reduction).item()

    # row_sum is additive over rows: two batches' losses, weighted by rows, give the whole batch's
    parts = loss(short, "row_sum") * 1 + loss(rest, "row_sum") * 3
    assert loss(batch, "row_sum") * 4 == pytest.approx(parts, rel=1e-5)
    # the token mean over-weighs the short batch's positions when batches are split by length
    parts = loss(short, "token_mean") * 1 + loss(rest, "token_mean") * 3
    assert loss(batch, "token_mean") * 4 != pytest.approx(parts, rel=1e-3)
    with pytest.raises(ValueError, match="loss_reduction"):
        next_item.NextItemTask(net, optimizer=torch.optim.Adam, loss_reduction="sum")
