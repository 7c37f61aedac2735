"""Decoding over a step function (beam search, greedy), the semantic-ID prefix constraint, and the
mapping from generated beams to item ids and target ranks, and the next-item step adapter over a
decoder-only model's prefill/decode. No model is named here."""

from genrec.generation.beam import (
    BeamSearchOutput,
    beam_search,
    flatten_beams,
    greedy_search,
    unflatten_beams,
)
from genrec.generation.items import beam_ranks, beams_to_items
from genrec.generation.next_items import first_items, generate_next_items, item_steps
from genrec.generation.trie import PrefixConstraint

__all__ = ["BeamSearchOutput", "PrefixConstraint", "beam_ranks", "beam_search", "beams_to_items",
           "first_items", "flatten_beams", "generate_next_items", "greedy_search", "item_steps",
           "unflatten_beams"]
