"""Export graphs of the Phoenix models (genrec/models/phoenix.py): the two towers of the retriever
and the candidate-isolation ranker.

    user_tower:      users int64 [batch], hist_items / hist_authors / hist_surfaces int64 [batch, seq]
                     (LEFT-padded, 0 = padding, newest event last), hist_actions fp32
                     [batch, seq, A_bin] (multi-hot of each event's binary actions)
                     -> user_vector fp32 [batch, D], L2-normalised (the newest position's state)
    candidate_tower: items int64 [cand], authors int64 [cand] (0 = unknown)
                     -> candidate_vectors fp32 [cand, D], L2-normalised (the faiss index's rows)
    ranker:          the user tower's inputs + cand_items / cand_authors / cand_surfaces int64
                     [batch, cand] -> action_probs fp32 [batch, cand, A]: sigmoid of the binary
                     actions then softplus of the regression ones (`net.action_names` order, also
                     written in the manifest's note)

Ids are hashed inside the graphs (genrec/models/hashing.py), so an id the training data never had
(a new post, user or author) is valid input. The ranker's candidates are isolated (each attends to
the user, the history and itself), so a candidate's probabilities do not depend on the other
candidates or on C; the `cand` axis is dynamic. `seq` (the history length S) may not exceed the
model's max_history. The FP16 variant keeps each tower's final L2 normalisation and the ranker's
action heads (and their sigmoid / softplus) in FP32.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from genrec.export.builders import _has, register_builder
from genrec.export.graphs import FP32Boundary, GraphSpec, random_items

HISTORY_INPUTS = ("users", "hist_items", "hist_authors", "hist_actions", "hist_surfaces")
CANDIDATE_INPUTS = ("cand_items", "cand_authors", "cand_surfaces")
UNSEEN_SHARE = 0.1  # share of sampled ids drawn beyond the training count (hashed all the same)


def _takes(method, names: tuple[str, ...]) -> bool:
    return callable(method) and set(names) <= set(inspect.signature(method).parameters)


def is_phoenix_retrieval(net: nn.Module) -> bool:
    """user_embed(users, hist_*) -> [B, D] and candidate_embed(items, authors) -> [..., D]."""
    return (_has(net, "user_embed", "candidate_embed") and _takes(net.user_embed, HISTORY_INPUTS)
            and hasattr(getattr(net, "config", None), "n_items"))


def is_phoenix_ranker(net: nn.Module) -> bool:
    """forward(users, hist_*, cand_*) -> logits [B, C, A] over isolated candidates, and
    activate(logits) -> probabilities."""
    return (_has(net, "activate") and _takes(net.forward, HISTORY_INPUTS + CANDIDATE_INPUTS)
            and hasattr(getattr(net, "config", None), "n_items"))


@dataclass
class PhoenixRetrievalOptions:
    """No options yet (top-K search runs in the index, genrec/serving/index.py)."""


@dataclass
class PhoenixRankerOptions:
    """No options yet (the final score's action weights are the task's, applied by the caller)."""


# ---- graph modules ----
class UserTowerGraph(nn.Module):
    """users [B], hist_* [B, S(, A_bin)] -> (user_vector [B, D],)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, users: torch.Tensor, hist_items: torch.Tensor, hist_authors: torch.Tensor,
                hist_actions: torch.Tensor, hist_surfaces: torch.Tensor) -> tuple[torch.Tensor]:
        vector = self.net.user_embed(users, hist_items, hist_authors, hist_actions, hist_surfaces)  # [B, D]
        return (vector.float(),)


class CandidateTowerGraph(nn.Module):
    """items [N], authors [N] -> (candidate_vectors [N, D],)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, items: torch.Tensor, authors: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.net.candidate_embed(items, authors).float(),)  # [N, D]


class RankerGraph(nn.Module):
    """users [B], hist_* [B, S(, A_bin)], cand_* [B, C] -> (action_probs [B, C, A],)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, users: torch.Tensor, hist_items: torch.Tensor, hist_authors: torch.Tensor,
                hist_actions: torch.Tensor, hist_surfaces: torch.Tensor, cand_items: torch.Tensor,
                cand_authors: torch.Tensor, cand_surfaces: torch.Tensor) -> tuple[torch.Tensor]:
        logits = self.net(users, hist_items, hist_authors, hist_actions, hist_surfaces,
                          cand_items, cand_authors, cand_surfaces)  # [B, C, A]
        return (self.net.activate(logits.float()),)


# ---- builders ----
# FP16 variant: FP32 from these modules on (a renamed module fails the export, fp16.py)
FINAL_NORM = "net.transformer.final_norm"  # towers: user projection + L2 norm; ranker: heads + activation
CANDIDATE_OUT = "net.candidate_mlp.2"  # the candidate MLP's last Linear, then the L2 norm
HISTORY_AXES = {"users": {0: "batch"}, "hist_items": {0: "batch", 1: "seq"},
                "hist_authors": {0: "batch", 1: "seq"}, "hist_actions": {0: "batch", 1: "seq"},
                "hist_surfaces": {0: "batch", 1: "seq"}}


@register_builder("phoenix_retrieval", applies=is_phoenix_retrieval, options=PhoenixRetrievalOptions)
def phoenix_retrieval_graphs(net: nn.Module, opts: PhoenixRetrievalOptions) -> list[GraphSpec]:
    user = GraphSpec("user_tower", UserTowerGraph(net), HISTORY_INPUTS, ("user_vector",), HISTORY_AXES,
                     lambda sizes, gen: sample_user(net, sizes, gen),
                     fp32=FP32Boundary(after=(FINAL_NORM,), outputs=("user_vector",)))
    candidate = GraphSpec("candidate_tower", CandidateTowerGraph(net), ("items", "authors"),
                          ("candidate_vectors",), {"items": {0: "cand"}, "authors": {0: "cand"}},
                          lambda sizes, gen: sample_catalogue(net, sizes, gen),
                          fp32=FP32Boundary(after=(CANDIDATE_OUT,), outputs=("candidate_vectors",)))
    return [user, candidate]


@register_builder("phoenix_ranker", applies=is_phoenix_ranker, options=PhoenixRankerOptions)
def phoenix_ranker_graphs(net: nn.Module, opts: PhoenixRankerOptions) -> list[GraphSpec]:
    axes = {**HISTORY_AXES, **{name: {0: "batch", 1: "cand"} for name in CANDIDATE_INPUTS}}
    names = ", ".join(getattr(net, "action_names", ()))
    return [GraphSpec("ranker", RankerGraph(net), HISTORY_INPUTS + CANDIDATE_INPUTS, ("action_probs",), axes,
                      lambda sizes, gen: sample_ranker(net, sizes, gen),
                      fp32=FP32Boundary(after=(FINAL_NORM,), outputs=("action_probs",)),
                      note=f"action_probs columns: {names}" if names else "")]


# ---- random valid inputs ----
def _counts(net: nn.Module) -> dict[str, int]:
    cfg = net.config
    return {"items": cfg.n_items, "users": cfg.n_users, "authors": cfg.n_authors,
            "surfaces": cfg.n_surfaces, "actions": len(cfg.actions)}


def with_unseen(ids: torch.Tensor, count: int, gen: torch.Generator) -> torch.Tensor:
    """ids with about UNSEEN_SHARE of the non-zero entries replaced by ids in count+1 .. 2*count+1
    (ids the training data never had; the hash embeddings take them)."""
    fresh = torch.randint(count + 1, 2 * count + 2, ids.shape, generator=gen)
    swap = (torch.rand(ids.shape, generator=gen) < UNSEEN_SHARE) & (ids != 0)
    return torch.where(swap, fresh, ids)


def random_ids(shape: tuple[int, ...], count: int, gen: torch.Generator,
               unknown: float = 0.0) -> torch.Tensor:
    """int64 ids in 1..count (a share `unknown` of them 0, and some unseen beyond count); all 0 when
    count is 0 (the data has no such field)."""
    if count < 1:
        return torch.zeros(shape, dtype=torch.long)
    ids = torch.randint(1, count + 1, shape, generator=gen)
    ids = ids * (torch.rand(shape, generator=gen) >= unknown)
    return with_unseen(ids, count, gen)


def sample_history(net: nn.Module, batch: int, seq: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The user tower's inputs: left-padded histories (the first row full, others shorter, some
    empty: a new user), multi-hot actions and surfaces at real events only."""
    n = _counts(net)
    items = random_items(batch, seq, n["items"], gen, min_len=0)  # [B, S] left-padded
    real = items != 0  # [B, S]
    actions = (torch.rand(batch, seq, n["actions"], generator=gen) < 0.3) & real.unsqueeze(-1)
    return {
        "users": random_ids((batch,), n["users"], gen),  # [B]
        "hist_items": with_unseen(items, n["items"], gen),  # [B, S]
        "hist_authors": random_ids((batch, seq), n["authors"] - 1, gen, unknown=0.1) * real,  # [B, S]
        "hist_actions": actions.float(),  # [B, S, A_bin]
        "hist_surfaces": torch.randint(0, n["surfaces"], (batch, seq), generator=gen) * real,  # [B, S]
    }


def sample_user(net: nn.Module, sizes: dict[str, int], gen: torch.Generator) -> dict[str, torch.Tensor]:
    return sample_history(net, sizes["batch"], sizes["seq"], gen)


def sample_catalogue(net: nn.Module, sizes: dict[str, int], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """items [N] (some unseen), authors [N] (some unknown, some unseen)."""
    n = _counts(net)
    return {"items": random_ids((sizes["cand"],), n["items"], gen),
            "authors": random_ids((sizes["cand"],), n["authors"] - 1, gen, unknown=0.1)}


def sample_ranker(net: nn.Module, sizes: dict[str, int], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A history plus C candidates per user, all served on the request's surface."""
    b, c = sizes["batch"], sizes["cand"]
    n = _counts(net)
    feeds = sample_history(net, b, sizes["seq"], gen)
    surface = torch.randint(0, n["surfaces"], (b, 1), generator=gen)  # [B, 1] the request's
    return {**feeds, "cand_items": random_ids((b, c), n["items"], gen),  # [B, C]
            "cand_authors": random_ids((b, c), n["authors"] - 1, gen, unknown=0.1),  # [B, C]
            "cand_surfaces": surface.expand(b, c).contiguous()}  # [B, C]
