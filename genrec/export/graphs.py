"""What an export consists of: GraphSpec (an all-tensor module with named inputs, outputs, dynamic
axes and FP32 boundary), the top-K head, and the SASRec family's graph modules.

onnx.py, fp16.py, parity.py, tensorrt.py and triton.py work from GraphSpecs alone and know no
model by name; genrec/export/builders.py picks which graphs a model gets from its capabilities.
Dynamic axes carry names from the open registry genrec/export/axes.py (batch, seq, past, beam,
enc_seq, cand, ...), so TensorRT profiles and parity shapes are configured once per axis.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from genrec.export.axes import AXES, get_axis
from genrec.models.cache import KVCache

Sampler = Callable[[dict[str, int], torch.Generator], dict[str, torch.Tensor]]

# op types the FP16 variant computes in FP32 wherever they occur: normalisations and the ops that
# overflow or lose precision in FP16 (sums of squares, exponentials)
FP32_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2",
            "ReduceLogSumExp", "Exp", "Log", "Pow", "Sqrt", "Reciprocal",
            "IsInf")  # IsInf takes no float16 before opset 20


@dataclass(frozen=True)
class FP32Boundary:
    """What a graph's FP16 variant keeps in FP32 (genrec/export/fp16.py).

    after:   module paths inside the graph module (e.g. "net.final_norm"): their nodes and every
             node computed from them (a scorer's head after its final norm)
    modules: module paths whose own nodes are FP32 (e.g. "head")
    outputs: graph outputs that must come out FP32 (their producers are FP32; checked)
    ops:     op types kept FP32 anywhere in the graph
    A module path that matches no node of the exported graph is an error, so a renamed module
    cannot silently drop out of the boundary.
    """

    after: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    ops: tuple[str, ...] = FP32_OPS

    def describe(self) -> str:
        parts = [f"ops {', '.join(self.ops)}"]
        if self.modules:
            parts.append(f"modules {', '.join(self.modules)}")
        if self.after:
            parts.append(f"everything from {', '.join(self.after)} on")
        if self.outputs:
            parts.append(f"outputs {', '.join(self.outputs)}")
        return "fp16 compute; fp32 (explicit Casts): " + "; ".join(parts)


@dataclass
class GraphSpec:
    """One exported graph.

    module:       tensors in (in `inputs` order), a tuple of tensors out (in `outputs` order)
    dynamic_axes: input name -> {dim: axis name}, names from genrec/export/axes.py; output axes
                  follow from the exported graph
    sample:       (sizes per axis, generator) -> valid inputs by name, for export and parity
    fp32:         what the FP16 variant keeps in FP32
    note:         said in the manifest (e.g. why a model exports fewer graphs)
    """

    name: str
    module: nn.Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    sample: Sampler
    fp32: FP32Boundary = field(default_factory=FP32Boundary)
    note: str = ""
    axes: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        for axis in {a for dims in self.dynamic_axes.values() for a in dims.values()}:
            try:
                get_axis(axis)
            except ValueError as err:
                raise ValueError(f"graph {self.name}: {err}") from None
        unknown = set(self.dynamic_axes) - set(self.inputs)
        if unknown:
            raise ValueError(f"graph {self.name}: dynamic_axes names {sorted(unknown)}, "
                             f"not inputs {self.inputs}")
        missing = set(self.fp32.outputs) - set(self.outputs)
        if missing:
            raise ValueError(f"graph {self.name}: fp32 boundary names outputs {sorted(missing)} "
                             "it does not have")
        used = {a for dims in self.dynamic_axes.values() for a in dims.values()}
        self.axes = tuple(a for a in AXES if a in used)  # registry order

    def example(self, sizes: dict[str, int] | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
        """Inputs at `sizes` (default: each axis's registered example size), in `inputs` order."""
        gen = torch.Generator().manual_seed(seed)
        defaults = {a: get_axis(a).example for a in self.axes}
        with torch.no_grad():
            feeds = self.sample({**defaults, **(sizes or {})}, gen)
        return {name: feeds[name] for name in self.inputs}


class TopKHead(nn.Module):
    """scores [B, N + 1] (column = item id, 0 = padding) -> top_items int64 [B, K], top_scores [B, K]
    (+ scores [B, N + 1] as ranked: -inf at padding and, with mask_history, at the user's history).

    Never recommends the padding item or (with mask_history) an item of the user's history: when
    fewer than K items remain, the slots past them hold item id 0 and score -inf (sorted last),
    so a client stops at the first id 0. Runs in FP32 whatever the body's precision (the
    graphs name it in their FP32 boundary).
    """

    def __init__(self, k: int, mask_history: bool = True, full_scores: bool = False) -> None:
        super().__init__()
        self.k = k
        self.mask_history = mask_history
        self.full_scores = full_scores

    @property
    def outputs(self) -> tuple[str, ...]:
        return ("top_items", "top_scores", "scores") if self.full_scores else ("top_items", "top_scores")

    def forward(self, scores: torch.Tensor, history: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """history: int64 [B, H] item ids to exclude (0 = padding, excluded anyway)."""
        scores = scores.float()
        # padding never recommended: a constant mask (one Where node; N is fixed at export)
        first = torch.arange(scores.shape[1], device=scores.device) == 0  # [N + 1]
        scores = scores.masked_fill(first, float("-inf"))  # [B, N + 1]
        if self.mask_history:
            scores = scores.scatter(1, history, float("-inf"))  # [B, N + 1]
        top_scores, top_items = scores.topk(self.k, dim=1)  # [B, K], sorted descending
        # a -inf slot is a masked item topk had to take: report "no item", never the masked one
        top_items = top_items.masked_fill(top_scores == float("-inf"), 0)  # [B, K]
        return (top_items, top_scores, scores) if self.full_scores else (top_items, top_scores)


class ScoreGraph(nn.Module):
    """items [B, T] left-padded (+ timestamps [B, T]) -> the head's outputs for the next item."""

    def __init__(self, net: nn.Module, head: TopKHead) -> None:
        super().__init__()
        self.net = net
        self.head = head

    def forward(self, items: torch.Tensor,
                timestamps: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        hidden = self.net.encode(items, timestamps)[:, -1]  # [B, D] newest position
        return self.head(self.net.score(hidden), items)


class PrefillGraph(nn.Module):
    """items [B, T] -> head outputs, present_kv [L, 2, B, H, T, Dh], present_valid bool [B, T].

    The first decode step's past_items are these items (not an output: TensorRT engines do not
    pass an input straight through). A model whose prefill takes more inputs (dense features)
    subclasses this with its own forward signature and calls `run(items, name=tensor, ...)`;
    a prefill returning (logits, *extra, cache) adds the extras (e.g. head scores) after the
    top-K outputs when `extra_outputs` is set."""

    def __init__(self, net: nn.Module, head: TopKHead, extra_outputs: bool = False) -> None:
        super().__init__()
        self.net = net
        self.head = head
        self.extra_outputs = extra_outputs

    def forward(self, items: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.run(items)

    def run(self, items: torch.Tensor, **inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scores, *extra, cache = self.net.prefill(items, **inputs)
        extra = extra if self.extra_outputs else []
        return (*self.head(scores, items), *extra, cache.kv, cache.valid)


class DecodeGraph(nn.Module):
    """new_items [B, 1], past_kv [L, 2, B, H, P, Dh], past_valid bool [B, P] (the cache's stored
    fill), past_items [B, P] (the history the head masks, nothing else) -> head outputs,
    present_kv [L, 2, B, H, P + 1, Dh], present_valid [B, P + 1], present_items [B, P + 1].

    History masking costs O(P): one Concat (present_items) and a ScatterElements of P + 1 ids
    into the scores. More inputs (dense features) and extra outputs: as PrefillGraph."""

    def __init__(self, net: nn.Module, head: TopKHead, extra_outputs: bool = False) -> None:
        super().__init__()
        self.net = net
        self.head = head
        self.extra_outputs = extra_outputs

    def forward(self, new_items: torch.Tensor, past_kv: torch.Tensor, past_valid: torch.Tensor,
                past_items: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.run(new_items, past_kv, past_valid, past_items)

    def run(self, new_items: torch.Tensor, past_kv: torch.Tensor, past_valid: torch.Tensor,
            past_items: torch.Tensor, **inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scores, *extra, cache = self.net.decode(new_items, cache=KVCache(past_kv, past_valid), **inputs)
        extra = extra if self.extra_outputs else []
        items = torch.cat([past_items, new_items], 1)  # [B, P + 1] the history to mask
        return (*self.head(scores, items), *extra, cache.kv, cache.valid, items)


# ---- random valid inputs ----
def random_items(batch: int, length: int, n_items: int, gen: torch.Generator,
                 min_len: int = 1) -> torch.Tensor:
    """int64 [batch, length] left-padded ids in 1..n_items; row lengths in [min_len, length],
    the first row full, so every shape exercises both padding and a full window."""
    ids = torch.randint(1, n_items + 1, (batch, length), generator=gen)  # [B, T]
    lengths = torch.randint(min(min_len, length), length + 1, (batch,), generator=gen)  # [B]
    lengths[0] = length
    cols = torch.arange(length).unsqueeze(0)  # [1, T]
    return ids * (cols >= length - lengths.unsqueeze(1))  # [B, T] zeros on the left


def random_timestamps(items: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """int64 [B, T] non-decreasing seconds at real events (gaps up to ten days), 0 at padding."""
    gaps = torch.randint(0, 10 * 86_400, items.shape, generator=gen)  # [B, T]
    return (1_600_000_000 + gaps.cumsum(1)) * (items != 0)
