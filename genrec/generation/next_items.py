"""Next-item generation over a decoder-only model's prefill/decode, one catalogue item per step.

The model needs `prefill(items [B, T], dense_features [B, T, F] | None) -> (logits [B, n_items + 1],
head scores, cache)` and `decode(items [R, 1], dense_features [R, 1, F] | None, cache) -> (logits,
head scores, cache)` whose cache has `reorder(index)` (genrec/models/generative.py,
genrec/models/cache.py). `item_steps` puts it behind the step interface of genrec/generation/beam.py;
`first_items` turns the beams into a ranked list of distinct next items for `beam_ranks`.
"""

from __future__ import annotations

import torch
from torch import nn

from genrec.generation.beam import AllowedFn, BeamSearchOutput, ReorderFn, StepFn, beam_search


def item_steps(net: nn.Module, items: torch.Tensor, dense_features: torch.Tensor | None,
               banned: torch.Tensor) -> tuple[StepFn, ReorderFn, AllowedFn]:
    """(step_fn, reorder_fn, allowed_fn) for `beam_search` over items (init_state None).

    items int [B, T] (left-padded) and dense_features [B, T, F] are the prompt; each decode step
    feeds the chosen item with the prompt's last features (what is known of the next request).
    banned bool [B, n_items + 1]: never generated (padding, masked history); a beam never
    repeats an item it already generated.
    """
    last = None if dense_features is None else dense_features[:, -1:]  # [B, 1, F]
    batch = items.shape[0]

    def log_probs(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float().clone()  # [R, V]
        logits[:, 0] = float("-inf")  # padding is no item
        return torch.log_softmax(logits, dim=-1)

    def step(tokens: torch.Tensor | None, state):
        if tokens is None:
            logits, _, cache = net.prefill(items, dense_features)
            return log_probs(logits), (cache, last)
        cache, feats = state
        logits, _, cache = net.decode(tokens, feats, cache)
        return log_probs(logits), (cache, feats)

    def reorder(state, index: torch.Tensor):
        cache, feats = state  # index int [R'] parent row of each new row
        return cache.reorder(index), (None if feats is None else feats[index])

    def allowed(prefix: torch.Tensor) -> torch.Tensor:
        ok = ~banned.repeat_interleave(prefix.shape[0] // batch, dim=0)  # [R, V]
        return ok.scatter(1, prefix, False) if prefix.shape[1] else ok  # no repeats

    return step, reorder, allowed


def first_items(out: BeamSearchOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """The beams' first items in beam order without repeats: (items int [B, beam], 0 = none;
    scores [B, beam], -inf for a dropped repeat or a beam without a finite score)."""
    first = out.sequences[..., 0]  # [B, beam]
    beam = first.shape[1]
    before = torch.ones(beam, beam, dtype=torch.bool, device=first.device).tril(-1)  # [i, j]: j < i
    repeat = ((first[:, :, None] == first[:, None, :]) & before).any(-1)  # [B, beam]
    drop = repeat | ~torch.isfinite(out.scores)  # [B, beam]
    order = torch.sort(drop.to(torch.int8), dim=1, stable=True).indices  # kept first, order kept
    items = torch.where(drop, 0, first).gather(1, order)  # [B, beam]
    scores = torch.where(drop, float("-inf"), out.scores).gather(1, order)  # [B, beam]
    return items, scores


@torch.no_grad()
def generate_next_items(net: nn.Module, items: torch.Tensor, dense_features: torch.Tensor | None,
                        banned: torch.Tensor, n_steps: int, beam_size: int) -> tuple[torch.Tensor, ...]:
    """Beam search for `n_steps` items after the prompt; ranked first items, see `first_items`."""
    step, reorder, allowed = item_steps(net, items, dense_features, banned)
    out = beam_search(step, None, items.shape[0], n_steps, beam_size, allowed, reorder)
    return first_items(out)
