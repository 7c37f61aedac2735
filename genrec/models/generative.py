"""The generative recommendation model: a decoder-only transformer over a user's item sequence,
conditioned on dense behaviour features, with multi-task heads and prefill/decode over a KV cache.

Inputs are left-padded (item 0). Positions count from the user's first real event (1, 2, ...; 0 at
padding, saturating at max_seq_len), so appending an event never moves earlier positions and a
decode step is one new position through the blocks against the cached K/V (cost O(past)).

Dense features (one vector of F raw values per step) enter through `FeatureContext`: normalised with
the training statistics held as buffers (graphs take raw features), projected per feature to F
vectors, all F(F-1)/2 pairwise dot products taken, then a small MLP of [interactions, pooled
projection] gives one D-dim context vector per step. The "context token" is fused into the
sequence by ADDING it to that step's token embedding (with the position embedding), not by
inserting an extra token: the sequence keeps one position per event, so the cache grows by one
slot per event, positions stay those of the events, and step t's features are seen from step t on
only (causal like the item itself).

Outputs: `score` over the items (tied to the token embedding or a separate projection) and
`task_scores`: the binary heads' logits, then the regression heads' values; the first binary head
is the recommendation score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from genrec.models.cache import KVCache
from genrec.models.layers import (
    KV,
    FastDropout,
    PlainResidual,
    TransformerBlock,
    causal_padding_mask,
    export_config,
    init_normal,
)
from genrec.validation import ConfigError, check_ranges


@dataclass
class GenerativeConfig:
    n_items: int
    num_features: int = 16
    embedding_dim: int = 128  # d_model
    hidden_dim: int = 256  # the blocks' FFN width
    num_layers: int = 4
    num_heads: int = 8
    max_seq_len: int = 512
    dropout: float = 0.1
    tie_weights: bool = True  # score with the token embedding (else a separate output projection)
    use_features: bool = True  # False: the dense feature path is off (ablation); items only
    heads: tuple[str, ...] = ()  # binary heads (logits); the first is the recommendation score
    regression_heads: tuple[str, ...] = ()
    feature_mean: list[float] | None = None  # per-feature training statistics; None: identity
    feature_std: list[float] | None = None
    init_std: float = 0.02  # N(0, init_std): Linear/Embedding weights and the feature vectors w_i, b_i
    # token embeddings times sqrt(embedding_dim) at the input (Vaswani et al.; SASRec): the item then
    # outweighs its position and feature context from the first step. Off by default: it slows what
    # the heads learn from the features (tests/test_generative_task.py's planted feature flag)
    scale_embedding: bool = False

    def __post_init__(self) -> None:
        check_ranges("model", self, {
            "n_items": {"lo": 1}, "num_features": {"lo": 1}, "embedding_dim": {"lo": 1},
            "hidden_dim": {"lo": 1}, "num_layers": {"lo": 1}, "num_heads": {"lo": 1},
            "max_seq_len": {"lo": 1}, "dropout": {"lo": 0, "hi": 1, "hi_open": True, "integer": False},
            "init_std": {"lo": 0, "integer": False}})
        if self.embedding_dim % self.num_heads:
            raise ConfigError(f"model.embedding_dim={self.embedding_dim}: must be divisible by "
                              f"model.num_heads={self.num_heads}")
        # plain containers (Hydra hands ListConfigs), so asdict() is checkpoint-safe
        self.heads = tuple(map(str, self.heads))
        self.regression_heads = tuple(map(str, self.regression_heads))
        names = self.heads + self.regression_heads
        if len(set(names)) != len(names):
            raise ConfigError(f"model.heads={list(self.heads)} / model.regression_heads="
                              f"{list(self.regression_heads)}: head names must be unique")
        for field in ("feature_mean", "feature_std"):
            self._check_statistics(field)

    def _check_statistics(self, field: str) -> None:
        values = getattr(self, field)
        if values is None:
            return
        values = [float(v) for v in values]
        if len(values) != self.num_features:
            raise ConfigError(f"model.{field}: {len(values)} values for "
                              f"model.num_features={self.num_features}")
        bad = [v for v in values if not math.isfinite(v) or (field == "feature_std" and v < 0)]
        if bad:
            rule = "finite and >= 0" if field == "feature_std" else "finite"
            raise ConfigError(f"model.{field}: value {bad[0]!r} must be {rule}")
        setattr(self, field, values)

    @property
    def n_heads_out(self) -> int:
        return len(self.heads) + len(self.regression_heads)


class FeatureContext(nn.Module):
    """Raw dense features [..., F] -> one context vector [..., D] per step.

    normalise -> project each feature i to e_i = x_i w_i + b_i (w_i, b_i in R^D) -> all F(F-1)/2
    dot products <e_i, e_j>, i < j -> MLP([interactions, mean_i e_i]) -> [..., D].
    The dot products use the exact identity
        <x_i w_i + b_i, x_j w_j + b_j> = x_i x_j <w_i,w_j> + x_i <w_i,b_j> + x_j <b_i,w_j> + <b_i,b_j>,
    whose four [F, F] coefficient tables depend on the weights only, so the [..., F, D] projection
    is never materialised (`project` builds it for reference and tests).
    """

    def __init__(self, num_features: int, d_model: int, mean: list[float] | None,
                 std: list[float] | None) -> None:
        super().__init__()
        f = num_features
        mean_t = torch.zeros(f) if mean is None else torch.tensor(mean, dtype=torch.float32)
        std_t = torch.ones(f) if std is None else torch.tensor(std, dtype=torch.float32)
        self.register_buffer("feature_mean", mean_t)  # [F]
        # a constant training column (std 0) is centred only, never divided by ~0
        scale = torch.where(std_t > 0, 1.0 / std_t.clamp_min(1e-12), 1.0)  # [F]
        self.register_buffer("feature_scale", scale)
        self.weight = nn.Parameter(torch.empty(f, d_model))  # w_i [F, D]
        self.bias = nn.Parameter(torch.empty(f, d_model))  # b_i [F, D]
        left, right = torch.triu_indices(f, f, offset=1)  # the F(F-1)/2 pairs i < j
        self.register_buffer("pair_i", left, persistent=False)
        self.register_buffer("pair_j", right, persistent=False)
        n_pairs = f * (f - 1) // 2
        self.mlp = nn.Sequential(nn.Linear(n_pairs + d_model, d_model), nn.ReLU(),
                                 nn.Linear(d_model, d_model))

    @property
    def n_pairs(self) -> int:
        return self.pair_i.numel()

    def normalise(self, features: torch.Tensor) -> torch.Tensor:
        """[..., F] raw -> [..., F] standardised with the training statistics."""
        return (features - self.feature_mean) * self.feature_scale

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised [..., F] -> the per-feature vectors e [..., F, D] (reference; not on the hot path)."""
        return x.unsqueeze(-1) * self.weight + self.bias  # [..., F, D]

    def interactions(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised [..., F] -> [..., F(F-1)/2] all <e_i, e_j>, i < j, in triu_indices order."""
        w, b, i, j = self.weight, self.bias, self.pair_i, self.pair_j
        ww = (w @ w.T)[i, j]  # [P] <w_i, w_j>
        wb = (w @ b.T)[i, j]  # [P] <w_i, b_j>
        bw = (b @ w.T)[i, j]  # [P] <b_i, w_j>
        bb = (b @ b.T)[i, j]  # [P] <b_i, b_j>
        xi, xj = x[..., i], x[..., j]  # [..., P]
        return xi * xj * ww + xi * wb + xj * bw + bb  # [..., P]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Raw [..., F] -> context [..., D]."""
        x = self.normalise(features)  # [..., F]
        pooled = (x @ self.weight + self.bias.sum(0)) / x.shape[-1]  # [..., D] mean_i e_i
        return self.mlp(torch.cat([self.interactions(x), pooled], -1))  # [..., D]


class GenerativeRecommendationModel(nn.Module):
    """Scorer interface: encode(items, dense_features) -> hidden [B, T, D]; score(hidden, items=None);
    task_scores(hidden); streaming: prefill / decode over a KVCache."""

    config_class = GenerativeConfig
    needs_time = False
    streams = True  # prefill/decode carry everything the encoder reads (items + dense features)

    @property
    def component_labels(self) -> dict[str, str]:
        """Names for genrec.models.size_report's rows (attribute path -> what it is)."""
        tied = " (= output projection, tied)" if self.output is None else ""
        blocks = {f"blocks.{i}": "causal block" for i in range(len(self.blocks))}
        return {"item_emb": "token embedding" + tied, "pos_emb": "position embedding",
                "features": "feature projection", "features.mlp": "interaction MLP", **blocks,
                "final_norm": "final norm", "output": "output projection", "heads": "task heads"}

    def __init__(self, **fields) -> None:
        super().__init__()
        self.config = cfg = self.config_class(**fields)
        d = cfg.embedding_dim
        self.item_emb = nn.Embedding(cfg.n_items + 1, d, padding_idx=0)
        self.embedding_scale = math.sqrt(d) if cfg.scale_embedding else 1.0
        self.pos_emb = nn.Embedding(cfg.max_seq_len + 1, d, padding_idx=0)
        self.features = (FeatureContext(cfg.num_features, d, cfg.feature_mean, cfg.feature_std)
                         if cfg.use_features else None)
        self.emb_dropout = FastDropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(d, cfg.num_heads, cfg.dropout, PlainResidual(), PlainResidual(),
                             d_inner=cfg.hidden_dim)
            for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(d, eps=1e-8)
        self.output = None if cfg.tie_weights else nn.Linear(d, cfg.n_items + 1, bias=False)
        n_out = cfg.n_heads_out  # one shared tower: binary logits, then regression values
        self.heads = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, n_out)) if n_out else None
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, FeatureContext):
            nn.init.normal_(module.weight, std=std)  # a table of vectors, like an embedding
            nn.init.normal_(module.bias, std=std)  # nonzero so <b_i, b_j> terms start alive
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init_normal(module, std)

    def export_config(self) -> dict:
        """What a checkpoint stores to rebuild this module without Hydra."""
        return export_config(self)

    @property
    def required_inputs(self) -> tuple[str, ...]:
        return ("items", "dense_features") if self.config.use_features else ("items",)

    # ---- forward ----
    def _context(self, dense_features: torch.Tensor | None, shape: torch.Size) -> torch.Tensor | float:
        """[B, T, F] or [B, F] (broadcast over T) raw features -> [B, T, D]; 0 with the path off."""
        if self.features is None:
            return 0.0
        f = self.config.num_features
        if dense_features is None:
            raise ValueError("dense_features is required (model.use_features=true); "
                             "set model.use_features=false for the items-only ablation")
        if dense_features.dim() == 2:
            dense_features = dense_features.unsqueeze(1)  # [B, 1, F]
        if dense_features.dim() != 3 or dense_features.shape[-1] != f:
            raise ValueError(f"dense_features: expected [B, T, {f}] or [B, {f}], "
                             f"got {list(dense_features.shape)}")
        dense_features = dense_features.expand(shape[0], shape[1], f)  # [B, T, F]
        return self.features(dense_features.to(self.item_emb.weight.dtype))  # [B, T, D]

    def embed(self, items: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor,
              dense_features: torch.Tensor | None) -> torch.Tensor:
        """items, positions int [B, T], valid bool [B, T] -> [B, T, D] (token + position + feature
        context; padding rows zero)."""
        x = self.item_emb(items) * self.embedding_scale  # [B, T, D]
        x = x + self.pos_emb(positions.clamp(max=self.config.max_seq_len))
        x = x + self._context(dense_features, items.shape)  # the fused context token
        return self.emb_dropout(x) * valid.unsqueeze(-1)

    def _run(self, items: torch.Tensor, dense_features: torch.Tensor | None, valid: torch.Tensor,
             past: list[KV] | None, past_valid: torch.Tensor | None,
             past_len: torch.Tensor | None) -> tuple[torch.Tensor, list[KV]]:
        """Shared by encode, prefill and decode. valid bool [B, T]; past_valid bool [B, P]."""
        start = past_len.unsqueeze(1) if past_len is not None else 0  # events before this chunk
        positions = (start + valid.long().cumsum(1)) * valid  # [B, T]
        key_valid = valid if past_valid is None else torch.cat([past_valid, valid], 1)  # [B, P+T]
        mask = causal_padding_mask(key_valid, items.shape[1])  # [B, 1, T, P+T]
        x = self.embed(items, positions, valid, dense_features)  # [B, T, D]
        present = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, mask, None if past is None else past[i])
            present.append(kv)
        return self.final_norm(x), present

    def encode(self, items: torch.Tensor, dense_features: torch.Tensor | None = None) -> torch.Tensor:
        """items int [B, T] left-padded, dense_features [B, T, F] | [B, F] | None -> hidden [B, T, D]."""
        hidden, _ = self._run(items, dense_features, items != 0, None, None, None)
        return hidden

    forward = encode

    def item_embeddings(self) -> torch.Tensor:
        """[n_items + 1, D] the table `score` multiplies with (row 0 = padding)."""
        return self.item_emb.weight if self.output is None else self.output.weight

    def score(self, hidden: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [..., D] -> [..., n_items + 1] (column 0 = padding), or with items [..., C] -> [..., C]."""
        table = self.item_embeddings()
        if items is None:
            return hidden @ table.T
        return (hidden.unsqueeze(-2) * nn.functional.embedding(items, table)).sum(-1)

    def task_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., D] -> [..., H]: the binary heads' logits, then the regression heads' values."""
        if self.heads is None:
            return hidden.new_zeros(*hidden.shape[:-1], 0)
        return self.heads(hidden)

    # ---- streaming: a per-layer K/V cache updated one event at a time ----
    def prefill(self, items: torch.Tensor, dense_features: torch.Tensor | None,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, KVCache]:
        """items int [B, T] left-padded (attention_mask [B, T], nonzero = real, may mark more padding)
        -> (next-item logits [B, n_items + 1], head scores [B, H] at the newest position, cache over T)."""
        valid = items != 0 if attention_mask is None else (items != 0) & attention_mask.bool()  # [B, T]
        hidden, present = self._run(items, dense_features, valid, None, None, None)
        last = hidden[:, -1]  # [B, D]
        return self.score(last), self.task_scores(last), KVCache.from_layers(present, valid)

    def decode(self, new_items: torch.Tensor, dense_features: torch.Tensor | None,
               cache: KVCache) -> tuple[torch.Tensor, torch.Tensor, KVCache]:
        """new_items int [B, 1] (0: no new event for that row: its slot is stored invalid and its
        outputs are meaningless this step), dense_features [B, 1, F] | [B, F] -> (logits
        [B, n_items + 1], scores [B, H], cache over P + 1). Position = cache.lengths() + 1 (clamped to
        max_seq_len): equal to a full encode while a user's events fit in max_seq_len."""
        valid = new_items != 0  # [B, 1]
        past = [cache.layer(i) for i in range(len(self.blocks))]
        hidden, present = self._run(new_items, dense_features, valid, past, cache.valid, cache.lengths())
        last = hidden[:, -1]  # [B, D]
        return self.score(last), self.task_scores(last), cache.grown(present, valid)

    def empty_cache(self, batch: int, device: torch.device | str = "cpu") -> KVCache:
        """The P = 0 cache of `batch` users (no events yet)."""
        cfg = self.config
        return KVCache.empty(cfg.num_layers, batch, cfg.num_heads, cfg.embedding_dim // cfg.num_heads,
                             self.item_emb.weight.dtype, device)

    def kv_cache_bytes(self, length: int, dtype_bytes: int = 4) -> int:
        """Bytes of one user's K/V cache over `length` positions: layers x 2 (K, V) x length x D x bytes
        (the bool fill mask, one byte per position, not counted)."""
        cfg = self.config
        return cfg.num_layers * 2 * length * cfg.embedding_dim * dtype_bytes
