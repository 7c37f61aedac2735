"""Decoding over a step function (beam search, greedy), the semantic-ID prefix constraint, and the
mapping from generated beams to item ids and target ranks. No model is named here."""

from genrec.generation.beam import (
    BeamSearchOutput,
    beam_search,
    flatten_beams,
    greedy_search,
    unflatten_beams,
)
from genrec.generation.items import beam_ranks, beams_to_items
from genrec.generation.trie import PrefixConstraint

__all__ = ["BeamSearchOutput", "PrefixConstraint", "beam_ranks", "beam_search", "beams_to_items",
           "flatten_beams", "greedy_search", "unflatten_beams"]
