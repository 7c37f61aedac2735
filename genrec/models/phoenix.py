"""Phoenix: a two-tower retriever and a candidate-isolation ranking transformer over hashed ids.

Both share the event embedding (`PhoenixEventEmbedding`): users, items and authors go through
`HashEmbedding`s (genrec/models/hashing.py), so ids unseen in training still embed. A history event
is concat[item, author, Linear(binary-action multi-hot), surface] -> Linear -> D; a ranking
candidate is concat[item, author, surface] -> Linear -> D; the user token is the user's hash
embedding. History is LEFT-padded (item 0), newest last; padding rows are zeroed and masked as keys.

- `PhoenixRetrieval`: user tower = blocks over [user | history] (causal by default), the state after
  each history position -> LayerNorm -> Linear -> L2-normalised; candidate tower = item + author
  hash embeddings -> MLP -> L2-normalised. Score = dot product.
- `PhoenixRanker`: blocks over [user | history | candidates] under the candidate-isolation mask
  (genrec/models/phoenix_blocks.py), candidate outputs -> norm -> Linear -> [B, C, A] logits:
  binary actions then regression actions (`activate`: sigmoid / softplus).

Position ids (phoenix_blocks.phoenix_positions): user 0, history ..max_history (newest =
max_history), every candidate max_history + 1; with S = max_history (history padded to the data's
maxlen, as the configs set it) that is user 0, history 1..S, candidates S + 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genrec.models.hashing import HashEmbedding
from genrec.models.layers import FastDropout, export_config, init_normal
from genrec.models.phoenix_blocks import (
    FFN_KINDS,
    NORM_KINDS,
    PhoenixBlock,
    candidate_isolation_mask,
    make_norm,
    phoenix_positions,
)
from genrec.validation import ConfigError, check_ranges

ATTENTION_KINDS = ("bidirectional", "causal")
HISTORY_INPUTS = ("users", "hist_items", "hist_authors", "hist_actions", "hist_surfaces")
CANDIDATE_INPUTS = ("cand_items", "cand_authors", "cand_surfaces")


@dataclass
class PhoenixConfig:
    n_items: int
    n_users: int
    n_authors: int  # max author id + 1 (0 = unknown)
    n_surfaces: int  # max surface id + 1 (0 = unknown)
    actions: tuple[str, ...]  # binary actions (history multi-hot; the ranker's sigmoid outputs)
    regression_actions: tuple[str, ...] = ()  # the ranker's softplus outputs (e.g. dwell_time)
    embedding_dim: int = 128
    num_layers: int = 2
    num_heads: int = 2
    kv_heads: int | None = None  # < num_heads: grouped-query attention; None: = num_heads
    max_history: int = 128  # position ids; set to the data's maxlen
    rotary: bool = False  # rotary positions instead of a learned position table
    attn_softcap: float | None = None  # cap * tanh(logits / cap) on attention logits (Grok-1: 30)
    ffn: str = "gelu"  # "gelu" | "geglu"
    ffn_mult: int = 4  # FFN width = ffn_mult * embedding_dim
    norm: str = "layer"  # "layer" | "rms"
    dropout: float = 0.1
    num_hashes: int = 2
    hash_seed: int = 0
    item_buckets: int | None = None  # hash table rows; None: n_items + 1
    author_buckets: int | None = None  # None: n_authors + 1
    user_buckets: int | None = None  # None: n_users + 1
    init_std: float = 0.02

    def __post_init__(self) -> None:
        check_ranges("model", self, {
            "n_items": {"lo": 1}, "n_users": {"lo": 1}, "n_authors": {"lo": 1}, "n_surfaces": {"lo": 1},
            "embedding_dim": {"lo": 2}, "num_layers": {"lo": 1}, "num_heads": {"lo": 1},
            "kv_heads": {"lo": 1, "optional": True}, "max_history": {"lo": 1},
            "attn_softcap": {"lo": 0, "integer": False, "optional": True}, "ffn_mult": {"lo": 1},
            "dropout": {"lo": 0, "hi": 1, "hi_open": True, "integer": False}, "num_hashes": {"lo": 1},
            "hash_seed": {"lo": 0}, "item_buckets": {"lo": 2, "optional": True},
            "author_buckets": {"lo": 2, "optional": True}, "user_buckets": {"lo": 2, "optional": True},
            "init_std": {"lo": 0, "integer": False}})
        self.actions = tuple(map(str, self.actions))  # plain containers: checkpoint-safe asdict()
        self.regression_actions = tuple(map(str, self.regression_actions))
        names = self.action_names
        if len(set(names)) != len(names):
            raise ConfigError(f"model.actions={list(self.actions)} / model.regression_actions="
                              f"{list(self.regression_actions)}: action names must be unique")
        kv = self.kv_heads or self.num_heads
        if self.embedding_dim % self.num_heads or self.num_heads % kv:
            raise ConfigError(f"model.embedding_dim={self.embedding_dim}, num_heads={self.num_heads}, "
                              f"kv_heads={self.kv_heads}: D must divide by num_heads, num_heads by kv_heads")
        if self.rotary and (self.embedding_dim // self.num_heads) % 2:
            raise ConfigError(f"model.rotary=true needs an even head dim, got "
                              f"{self.embedding_dim // self.num_heads}")
        for field, kinds in (("ffn", FFN_KINDS), ("norm", NORM_KINDS)):
            if getattr(self, field) not in kinds:
                raise ConfigError(f"model.{field}={getattr(self, field)!r}: must be one of {kinds}")

    @property
    def action_names(self) -> tuple[str, ...]:
        return self.actions + self.regression_actions

    def buckets(self, field: str, count: int) -> int:
        value = getattr(self, field)
        return max(2, count + 1) if value is None else value


@dataclass
class PhoenixRetrievalConfig(PhoenixConfig):
    embedding_dim: int = 64
    # causal: the state after history position t sees events <= t (every position trains);
    # bidirectional: only the newest state is meaningful (serving), positions leak the future
    user_attention: str = "causal"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.user_attention not in ATTENTION_KINDS:
            raise ConfigError(f"model.user_attention={self.user_attention!r}: must be one of "
                              f"{ATTENTION_KINDS}")


@dataclass
class PhoenixRankerConfig(PhoenixConfig):
    # bidirectional (default): user + history attend to each other freely; causal: each history
    # event sees itself and earlier events only (what the January 2026 release's code does)
    history_attention: str = "bidirectional"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.history_attention not in ATTENTION_KINDS:
            raise ConfigError(f"model.history_attention={self.history_attention!r}: must be one of "
                              f"{ATTENTION_KINDS}")
        if not self.action_names:
            raise ConfigError("model.actions / model.regression_actions: the ranker needs >= 1 action")


class PhoenixEventEmbedding(nn.Module):
    """Users, history events and candidates -> D-dim vectors (shared by both Phoenix models)."""

    def __init__(self, cfg: PhoenixConfig) -> None:
        super().__init__()
        d, k, seed = cfg.embedding_dim, cfg.num_hashes, cfg.hash_seed
        # distinct seeds: item, author and user ids hash independently
        self.item = HashEmbedding(cfg.buckets("item_buckets", cfg.n_items), d, k, seed)
        self.author = HashEmbedding(cfg.buckets("author_buckets", cfg.n_authors), d, k, seed + 1)
        self.user = HashEmbedding(cfg.buckets("user_buckets", cfg.n_users), d, k, seed + 2)
        self.n_surfaces = cfg.n_surfaces
        self.surface = nn.Embedding(cfg.n_surfaces, d, padding_idx=0)
        self.action = nn.Linear(len(cfg.actions), d, bias=False) if cfg.actions else None
        self.history_proj = nn.Linear(4 * d, d)
        self.candidate_proj = nn.Linear(3 * d, d)

    def surfaces(self, surfaces: torch.Tensor) -> torch.Tensor:
        """int64 [...] -> [..., D]; a surface id beyond the table reads as 0 (unknown)."""
        return self.surface(surfaces * (surfaces < self.n_surfaces).long())

    def history(self, items: torch.Tensor, authors: torch.Tensor, actions: torch.Tensor,
                surfaces: torch.Tensor) -> torch.Tensor:
        """items, authors, surfaces int64 [B, S], actions float [B, S, A_bin] -> [B, S, D] (padding 0)."""
        item = self.item(items)  # [B, S, D]
        act = (self.action(actions.to(item.dtype)) if self.action is not None
               else torch.zeros_like(item))  # [B, S, D]
        x = torch.cat([item, self.author(authors), act, self.surfaces(surfaces)], -1)  # [B, S, 4D]
        return self.history_proj(x) * (items != 0).unsqueeze(-1)  # [B, S, D]

    def candidates(self, items: torch.Tensor, authors: torch.Tensor, surfaces: torch.Tensor) -> torch.Tensor:
        """int64 [B, C] each -> [B, C, D]."""
        x = torch.cat([self.item(items), self.author(authors), self.surfaces(surfaces)], -1)  # [B, C, 3D]
        return self.candidate_proj(x)  # [B, C, D]


class PhoenixTransformer(nn.Module):
    """Blocks over [user | history | candidates] under the candidate-isolation mask."""

    def __init__(self, cfg: PhoenixConfig) -> None:
        super().__init__()
        d = cfg.embedding_dim
        self.max_history = cfg.max_history
        # learned positions 0 .. max_history + 1 (rotary: none, the blocks rotate q/k by the ids)
        self.pos_emb = None if cfg.rotary else nn.Embedding(cfg.max_history + 2, d)
        self.emb_dropout = FastDropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            PhoenixBlock(d, cfg.num_heads, cfg.kv_heads, cfg.ffn_mult * d, cfg.ffn, cfg.rotary,
                         cfg.attn_softcap, cfg.dropout, cfg.norm)
            for _ in range(cfg.num_layers))
        self.final_norm = make_norm(cfg.norm, d)

    def forward(self, x: torch.Tensor, hist_valid: torch.Tensor, n_candidates: int,
                causal: bool) -> torch.Tensor:
        """x [B, 1 + S + C, D], hist_valid bool [B, S] -> [B, 1 + S + C, D] (final-normed)."""
        b, n_hist = hist_valid.shape
        positions = phoenix_positions(n_hist, n_candidates, self.max_history, x.device)  # [L]
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)  # [B, L, D]
        ones = hist_valid.new_ones(b, 1)
        key_valid = torch.cat([ones, hist_valid, ones.expand(b, n_candidates)], 1)  # [B, L]
        base = candidate_isolation_mask(n_hist, n_candidates, causal, x.device)  # [L, L]
        eye = torch.eye(base.shape[0], dtype=torch.bool, device=x.device)  # a padding row keeps itself
        mask = ((base & key_valid[:, None, :]) | eye).unsqueeze(1)  # [B, 1, L, L]
        x = self.emb_dropout(x)
        for block in self.blocks:
            x = block(x, mask, positions)
        return self.final_norm(x)


class _PhoenixBase(nn.Module):
    config_class: type[PhoenixConfig] = PhoenixConfig
    needs_time = False

    def __init__(self, **fields) -> None:
        super().__init__()
        self.config = self.config_class(**fields)
        self.embed = PhoenixEventEmbedding(self.config)
        self.transformer = PhoenixTransformer(self.config)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        # apply() visits children first, so this overrides the generic init of the hash table
        if isinstance(module, HashEmbedding):  # unit-scale buckets; the projection sets the scale
            nn.init.normal_(module.table.weight, std=module.table.weight.shape[1] ** -0.5)
            module.table.weight.data[0].zero_()
            nn.init.normal_(module.proj.weight, std=std)
            return
        if isinstance(module, (nn.Linear, nn.Embedding)) and module.weight.numel():
            init_normal(module, std)

    def export_config(self) -> dict:
        """What a checkpoint stores to rebuild this module without Hydra."""
        return export_config(self)

    def _context(self, users: torch.Tensor, hist_items: torch.Tensor, hist_authors: torch.Tensor,
                 hist_actions: torch.Tensor, hist_surfaces: torch.Tensor) -> torch.Tensor:
        """-> [B, 1 + S, D]: the user token then the history events."""
        user = self.embed.user(users).unsqueeze(1)  # [B, 1, D]
        hist = self.embed.history(hist_items, hist_authors, hist_actions, hist_surfaces)  # [B, S, D]
        return torch.cat([user, hist], 1)


class PhoenixRetrieval(_PhoenixBase):
    """Two towers: user_states / user_embed (user + history) and candidate_embed (item + author)."""

    config_class = PhoenixRetrievalConfig
    required_inputs = HISTORY_INPUTS

    def __init__(self, **fields) -> None:
        super().__init__(**fields)
        d = self.config.embedding_dim
        self.user_out = nn.Linear(d, d)
        self.candidate_mlp = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, d))
        self.apply(self._init_weights)

    def _states(self, users, hist_items, hist_authors, hist_actions, hist_surfaces) -> torch.Tensor:
        """-> [B, 1 + S, D] L2-normalised tower outputs at the user token and every history slot."""
        x = self._context(users, hist_items, hist_authors, hist_actions, hist_surfaces)  # [B, 1+S, D]
        h = self.transformer(x, hist_items != 0, 0, self.config.user_attention == "causal")
        return F.normalize(self.user_out(h), dim=-1)  # [B, 1+S, D]

    def user_states(self, users: torch.Tensor, hist_items: torch.Tensor, hist_authors: torch.Tensor,
                    hist_actions: torch.Tensor, hist_surfaces: torch.Tensor) -> torch.Tensor:
        """users [B], hist_* [B, S] (hist_actions [B, S, A_bin]) -> [B, S, D] unit vectors: the user
        after each history position (meaningless at padding slots)."""
        return self._states(users, hist_items, hist_authors, hist_actions, hist_surfaces)[:, 1:]

    def user_embed(self, users: torch.Tensor, hist_items: torch.Tensor, hist_authors: torch.Tensor,
                   hist_actions: torch.Tensor, hist_surfaces: torch.Tensor) -> torch.Tensor:
        """-> [B, D] unit vectors: the newest position's state (the user token's when no history)."""
        h = self._states(users, hist_items, hist_authors, hist_actions, hist_surfaces)  # [B, 1+S, D]
        has_history = (hist_items[:, -1:] != 0)  # [B, 1] left padding: the last slot is the newest
        return torch.where(has_history, h[:, -1], h[:, 0])  # [B, D]

    def candidate_embed(self, items: torch.Tensor, authors: torch.Tensor) -> torch.Tensor:
        """items, authors int64 [...] -> [..., D] unit vectors (item 0 -> zeros)."""
        x = torch.cat([self.embed.item(items), self.embed.author(authors)], -1)  # [..., 2D]
        return F.normalize(self.candidate_mlp(x), dim=-1)  # [..., D]

    forward = user_embed


class PhoenixRanker(_PhoenixBase):
    """forward(user, history, candidates) -> logits [B, C, A]; a candidate sees only the context
    and itself, so its logits do not depend on the other candidates."""

    config_class = PhoenixRankerConfig
    required_inputs = HISTORY_INPUTS + CANDIDATE_INPUTS

    def __init__(self, **fields) -> None:
        super().__init__(**fields)
        self.head = nn.Linear(self.config.embedding_dim, len(self.config.action_names))
        self.apply(self._init_weights)

    @property
    def action_names(self) -> tuple[str, ...]:
        """Binary actions, then regression actions: the order of the logits' last axis."""
        return self.config.action_names

    def forward(self, users: torch.Tensor, hist_items: torch.Tensor, hist_authors: torch.Tensor,
                hist_actions: torch.Tensor, hist_surfaces: torch.Tensor, cand_items: torch.Tensor,
                cand_authors: torch.Tensor, cand_surfaces: torch.Tensor) -> torch.Tensor:
        """users [B], hist_* [B, S] (hist_actions [B, S, A_bin]), cand_* [B, C] -> logits [B, C, A]:
        binary logits then regression pre-activations."""
        ctx = self._context(users, hist_items, hist_authors, hist_actions, hist_surfaces)  # [B, 1+S, D]
        cand = self.embed.candidates(cand_items, cand_authors, cand_surfaces)  # [B, C, D]
        n_cand = cand_items.shape[1]
        causal = self.config.history_attention == "causal"
        h = self.transformer(torch.cat([ctx, cand], 1), hist_items != 0, n_cand, causal)  # [B, L, D]
        return self.head(h[:, ctx.shape[1]:])  # [B, C, A]

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [..., A] -> sigmoid for the binary actions, softplus for the regression ones."""
        n_bin = len(self.config.actions)
        return torch.cat([torch.sigmoid(logits[..., :n_bin]), F.softplus(logits[..., n_bin:])], -1)

