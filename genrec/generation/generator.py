"""Beam search over a PyTorch encoder-decoder generator, constrained to real items.

A generator is any module with `prefill(users, history) -> (log_probs [B, V], cache)` and
`decode(tokens [R, 1], cache) -> (log_probs [R, V], cache)` whose cache has `reorder(index)`
(genrec/models/cache.py). Nothing here names a model; the exported graphs drive the same
`beam_search` through onnxruntime (genrec/generation/steps.py onnx_steps).
"""

from __future__ import annotations

import torch
from torch import nn

from genrec.generation.beam import BeamSearchOutput, beam_search, greedy_search
from genrec.generation.items import beams_to_items
from genrec.generation.steps import torch_steps
from genrec.generation.trie import PrefixConstraint
from genrec.tokenizers.index import SemanticIDIndex


@torch.no_grad()
def generate_items(net: nn.Module, users: torch.Tensor, history: torch.Tensor, index: SemanticIDIndex,
                   constraint: PrefixConstraint, beam_size: int = 10,
                   greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Top `beam_size` items per user: (items int64 [B, beam] best first, 0 = none; scores [B, beam]).

    One step per semantic-ID digit; the constraint keeps every beam on a real item's prefix.
    """
    step, state, reorder = torch_steps(net, users, history)
    batch = users.shape[0]
    if greedy:
        out: BeamSearchOutput = greedy_search(step, state, batch, index.n_digit, constraint.allowed)
    else:
        out = beam_search(step, state, batch, index.n_digit, beam_size, constraint.allowed, reorder)
    return beams_to_items(out, index, constraint), out.scores
