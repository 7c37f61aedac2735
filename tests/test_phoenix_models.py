"""Phoenix models (genrec/models/hashing.py, phoenix_blocks.py, phoenix.py): shapes, candidate
isolation (replace / reorder / remove the other candidates, default, Grok-style and causal history),
the mask against a hand-built one, padding, hashing determinism and spread, unit-norm towers,
per-action gradients, causality of the retrieval user states, config checks."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from genrec.models.hashing import HASH_PRIME, HashEmbedding, hash_coefficients
from genrec.models.phoenix import PhoenixRanker, PhoenixRetrieval
from genrec.models.phoenix_blocks import candidate_isolation_mask, phoenix_positions
from genrec.validation import ConfigError

N_ITEMS, N_USERS, N_AUTHORS, N_SURFACES = 60, 30, 8, 4
ACTIONS, REGRESSION = ("favorite", "click", "not_interested"), ("dwell_time",)
S, C, B, D = 7, 5, 3, 16
GROK = {"rotary": True, "kv_heads": 1, "attn_softcap": 30.0, "ffn": "geglu", "norm": "rms"}
VARIANTS = {"default": {}, "grok": GROK, "causal": {"history_attention": "causal"},
            "grok_causal": {**GROK, "history_attention": "causal"}}


def _kwargs(**kw) -> dict:
    return {"n_items": N_ITEMS, "n_users": N_USERS, "n_authors": N_AUTHORS, "n_surfaces": N_SURFACES,
            "actions": ACTIONS, "regression_actions": REGRESSION, "embedding_dim": D, "num_heads": 4,
            "max_history": S, "dropout": 0.0, "init_std": 0.2, **kw}


def _ranker(**kw) -> PhoenixRanker:
    torch.manual_seed(0)
    return PhoenixRanker(**_kwargs(**kw)).eval()


def _retrieval(**kw) -> PhoenixRetrieval:
    torch.manual_seed(0)
    return PhoenixRetrieval(**_kwargs(**kw)).eval()


def _history(lengths: list[int], s: int = S, seed: int = 1) -> dict:
    """users [B], hist_* [B, s] LEFT-padded: row b has lengths[b] events at the right."""
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    valid = torch.arange(s).unsqueeze(0) >= (s - torch.tensor(lengths)).unsqueeze(1)  # [B, s]
    return {"users": torch.randint(1, N_USERS + 1, (b,), generator=g),
            "hist_items": torch.randint(1, N_ITEMS + 1, (b, s), generator=g) * valid,
            "hist_authors": torch.randint(0, N_AUTHORS, (b, s), generator=g) * valid,
            "hist_actions": (torch.rand(b, s, len(ACTIONS), generator=g) < 0.4).float() * valid.unsqueeze(-1),
            "hist_surfaces": torch.randint(0, N_SURFACES, (b, s), generator=g) * valid}


def _candidates(b: int, c: int, seed: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"cand_items": torch.randint(1, N_ITEMS + 1, (b, c), generator=g),
            "cand_authors": torch.randint(0, N_AUTHORS, (b, c), generator=g),
            "cand_surfaces": torch.randint(1, N_SURFACES, (b, 1), generator=g).expand(b, c).clone()}


def _take(cands: dict, index: torch.Tensor) -> dict:
    """Candidates reindexed along C by index [C'] (same for every row)."""
    return {k: v[:, index] for k, v in cands.items()}


# ---- shapes ----
def test_ranker_shapes_and_activation():
    net = _ranker()
    logits = net(**_history([S, 3, 0]), **_candidates(B, C))
    assert logits.shape == (B, C, len(ACTIONS) + len(REGRESSION))
    assert net.action_names == ACTIONS + REGRESSION
    assert net.required_inputs == ("users", "hist_items", "hist_authors", "hist_actions", "hist_surfaces",
                                   "cand_items", "cand_authors", "cand_surfaces")
    probs = net.activate(logits)
    torch.testing.assert_close(probs[..., :3], torch.sigmoid(logits[..., :3]))
    torch.testing.assert_close(probs[..., 3:], torch.nn.functional.softplus(logits[..., 3:]))


def test_retrieval_shapes_and_unit_norm():
    net = _retrieval()
    hist = _history([S, 3, 0])
    states, user = net.user_states(**hist), net.user_embed(**hist)
    assert states.shape == (B, S, D) and user.shape == (B, D)
    cands = net.candidate_embed(torch.randint(1, N_ITEMS + 1, (B, C)), torch.randint(0, N_AUTHORS, (B, C)))
    flat = net.candidate_embed(torch.arange(1, N_ITEMS + 1), torch.zeros(N_ITEMS, dtype=torch.long))
    assert cands.shape == (B, C, D) and flat.shape == (N_ITEMS, D)
    for vectors in (user, states[hist["hist_items"] != 0], cands, flat):
        torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(vectors.shape[:-1]))
    # the newest slot's state serves; a user without history gets the user token's state
    torch.testing.assert_close(user[:2], states[:2, -1])
    assert not torch.allclose(user[2], states[2, -1])
    assert net.required_inputs == ("users", "hist_items", "hist_authors", "hist_actions", "hist_surfaces")


# ---- candidate isolation ----
def test_mask_hand_built():
    ctx, c3, c4, c5 = [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 1, 0], [1, 1, 1, 0, 0, 1]
    bidirectional = torch.tensor([ctx, ctx, ctx, c3, c4, c5], dtype=torch.bool)
    causal = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], ctx, c3, c4, c5], dtype=torch.bool)
    assert torch.equal(candidate_isolation_mask(2, 3), bidirectional)
    assert torch.equal(candidate_isolation_mask(2, 3, causal=True), causal)
    assert torch.equal(phoenix_positions(2, 3, 2), torch.tensor([0, 1, 2, 3, 3, 3]))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_candidate_isolation(variant):
    net = _ranker(**VARIANTS[variant])
    hist, cands = _history([S, 4, 1]), _candidates(B, C)
    full = net(**hist, **cands)  # [B, C, A]
    # replaced: candidates 1.. are new items; candidate 0 unchanged
    other = _candidates(B, C, seed=9)
    replaced = {k: torch.cat([v[:, :1], other[k][:, 1:]], 1) for k, v in cands.items()}
    assert not torch.equal(replaced["cand_items"][:, 1:], cands["cand_items"][:, 1:])
    torch.testing.assert_close(net(**hist, **replaced)[:, 0], full[:, 0])
    # reordered: outputs follow their candidates
    perm = torch.tensor([3, 0, 4, 2, 1])
    torch.testing.assert_close(net(**hist, **_take(cands, perm)), full[:, perm])
    # removed: any subset, and one candidate alone
    keep = torch.tensor([4, 1])
    torch.testing.assert_close(net(**hist, **_take(cands, keep)), full[:, keep])
    torch.testing.assert_close(net(**hist, **_take(cands, torch.tensor([2]))), full[:, [2]])


def test_candidates_do_see_the_history():
    """Isolation must not come from ignoring the context: a history change moves the logits."""
    net = _ranker()
    hist, cands = _history([S, S, S]), _candidates(B, C)
    changed = dict(hist, hist_items=hist["hist_items"].roll(1, 0))
    assert not torch.allclose(net(**hist, **cands), net(**changed, **cands))


# ---- padding ----
def _garbage_padding(hist: dict) -> dict:
    """Random authors / actions / surfaces in the padding slots (hist_items stays 0 there)."""
    pad = hist["hist_items"] == 0
    g = torch.Generator().manual_seed(5)
    out = dict(hist)
    out["hist_authors"] = torch.where(pad, torch.randint(1, N_AUTHORS, pad.shape, generator=g),
                                      hist["hist_authors"])
    out["hist_surfaces"] = torch.where(pad, torch.randint(1, N_SURFACES, pad.shape, generator=g),
                                       hist["hist_surfaces"])
    out["hist_actions"] = torch.where(pad.unsqueeze(-1), 1.0, hist["hist_actions"])
    return out


@pytest.mark.parametrize("variant", ["default", "grok"])
def test_padding_rows_do_not_change_outputs(variant):
    net, retrieval = _ranker(**VARIANTS[variant]), _retrieval(**VARIANTS[variant])
    hist, cands = _history([S, 4, 2]), _candidates(B, C)
    full, user = net(**hist, **cands), retrieval.user_embed(**hist)
    torch.testing.assert_close(net(**_garbage_padding(hist), **cands), full)
    torch.testing.assert_close(retrieval.user_embed(**_garbage_padding(hist)), user)
    # a shorter window (less left padding) for the rows that fit: the same outputs
    short = {k: v[1:, S - 4:] if k != "users" else v[1:] for k, v in hist.items()}
    torch.testing.assert_close(net(**short, **{k: v[1:] for k, v in cands.items()}), full[1:])
    torch.testing.assert_close(retrieval.user_embed(**short), user[1:])


# ---- retrieval causality ----
def test_causal_user_states_ignore_later_history():
    t = 3
    hist = _history([S, S, 5])
    later = dict(hist, hist_items=hist["hist_items"].clone())
    later["hist_items"][:, t + 1:] = (later["hist_items"][:, t + 1:] % N_ITEMS) + 1  # other real items
    causal = _retrieval()
    before, after = causal.user_states(**hist), causal.user_states(**later)
    torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1])
    assert not torch.allclose(after[:, t + 1:], before[:, t + 1:])
    bidirectional = _retrieval(user_attention="bidirectional")  # the check can fail
    assert not torch.allclose(bidirectional.user_states(**later)[:, :t + 1],
                              bidirectional.user_states(**hist)[:, :t + 1])


# ---- gradients ----
def test_each_action_head_gets_gradient():
    net = _ranker().train()
    logits = net(**_history([S, 4, 1]), **_candidates(B, C))
    n_actions = logits.shape[-1]
    for a in range(n_actions):
        (grad,) = torch.autograd.grad(net.activate(logits)[..., a].sum(), net.head.weight, retain_graph=True)
        assert grad[a].abs().sum() > 0
        assert grad[torch.arange(n_actions) != a].abs().sum() == 0  # the action's own row only
    logits.sum().backward()
    for name in ("embed.item.table.weight", "embed.author.table.weight", "embed.user.table.weight",
                 "embed.action.weight", "embed.surface.weight"):
        assert net.get_parameter(name).grad.abs().sum() > 0, name


# ---- hashing ----
def test_hash_matches_formula_for_any_id():
    emb = HashEmbedding(1000, 8, num_hashes=2, seed=3)
    a, b = hash_coefficients(2, 3)
    ids = [1, 2, 999, 10**6, 2**31 - 2, 2**31 - 1, 2**40 + 7, 2**62 + 11]
    expected = [[1 + ((int(a[i]) * x + int(b[i])) % HASH_PRIME) % 999 for i in range(2)] for x in ids]
    assert emb.buckets(torch.tensor(ids)).tolist() == expected  # exact Python-int arithmetic
    assert emb.buckets(torch.tensor([0, 0])).tolist() == [[0, 0], [0, 0]]


_BUCKETS_CODE = ("import torch; from genrec.models.hashing import HashEmbedding; "
                 "print(HashEmbedding(1000, 8, num_hashes=3, seed=7).buckets(torch.arange(1, 50)).tolist())")


def test_hash_deterministic_across_processes():
    here = HashEmbedding(1000, 8, num_hashes=3, seed=7).buckets(torch.arange(1, 50)).tolist()
    out = subprocess.run([sys.executable, "-c", _BUCKETS_CODE], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(here)
    # numpy's PCG64 stream is stable: the seed-0 coefficients, pinned
    a, b = hash_coefficients(2, 0)
    assert a.tolist() == [1826701614, 1367864807] and b.tolist() == [1097657231, 579362555]


def test_hash_spreads_ids():
    emb = HashEmbedding(1000, 8, num_hashes=2, seed=0)
    buckets = emb.buckets(torch.arange(1, 100_001))  # [N, 2] in 1..999
    for k in range(2):
        load = np.bincount(buckets[:, k].numpy(), minlength=1000)[1:]  # [999]
        assert load.max() <= 1.5 * load.mean() and load.min() >= 0.5 * load.mean()
    # the two hashes are independent: ids rarely share both buckets with another id
    pairs = buckets[:, 0] * 1000 + buckets[:, 1]
    assert torch.unique(pairs).numel() > 0.9 * 100_000
    assert (buckets[:, 0] == buckets[:, 1]).float().mean() < 0.01


def test_hash_embedding_unseen_and_padding():
    torch.manual_seed(0)
    emb = HashEmbedding(50, 8)
    vectors = emb(torch.tensor([0, 3, 10**9, 2**50]))  # ids far beyond the table
    assert torch.equal(vectors[0], torch.zeros(8))
    assert (vectors[1:].abs().sum(-1) > 0).all()
    net = _retrieval()
    unseen = net.candidate_embed(torch.tensor([N_ITEMS + 500]), torch.tensor([N_AUTHORS + 3]))
    torch.testing.assert_close(unseen.norm(dim=-1), torch.ones(1))


# ---- configs ----
def test_config_checks_and_roundtrip():
    with pytest.raises(ConfigError, match="history_attention"):
        PhoenixRanker(**_kwargs(history_attention="sideways"))
    with pytest.raises(ConfigError, match="user_attention"):
        PhoenixRetrieval(**_kwargs(user_attention="sideways"))
    with pytest.raises(ConfigError, match="kv_heads"):
        PhoenixRanker(**_kwargs(kv_heads=3))
    with pytest.raises(ConfigError, match="needs >= 1 action"):
        PhoenixRanker(**_kwargs(actions=(), regression_actions=()))
    net = _ranker(**GROK)
    rebuilt = instantiate(net.export_config())
    assert type(rebuilt) is PhoenixRanker and rebuilt.config == net.config
    rebuilt.load_state_dict(net.state_dict())
    hist, cands = _history([S, 2, 0]), _candidates(B, C)
    torch.testing.assert_close(rebuilt.eval()(**hist, **cands), net(**hist, **cands))
