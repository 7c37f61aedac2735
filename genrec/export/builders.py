"""Which graphs a model exports, chosen by what it can do; models never import genrec.export.

A builder is registered with a name (its options live under that key of conf/export.yaml
`graphs:`), a capability test and a dataclass of options:

    @register_builder("next_item", applies=is_scorer, options=NextItemOptions)
    def next_item_graphs(net, opts: NextItemOptions) -> list[GraphSpec]: ...

`graph_specs(net, options)` runs every builder whose test passes on `net`, each with only its
own options block; an options block naming an unknown builder, or an option a builder does not
take, is an error naming the key. A model that no builder accepts declares no graphs.
An encoder-decoder (RPG_ED) registers its own builder the same way (e.g. encode + decode_step graphs
with the `beam` and `enc_seq` axes), in a module under genrec/export/ imported at the end of
this file.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from genrec.export.graphs import (
    DecodeGraph,
    FP32Boundary,
    GraphSpec,
    PrefillGraph,
    ScoreGraph,
    TopKHead,
    random_items,
    random_timestamps,
)
from genrec.validation import ConfigError


class NoGraphsError(ValueError):
    """No registered builder accepts this model."""


@dataclass(frozen=True)
class Builder:
    name: str
    applies: Callable[[nn.Module], bool]
    options: type
    build: Callable[[nn.Module, object], list[GraphSpec]]


BUILDERS: dict[str, Builder] = {}


def register_builder(name: str, applies: Callable[[nn.Module], bool], options: type):
    """Decorator: add `build(net, options) -> [GraphSpec]` under `name`."""
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"builder {name}: options must be a dataclass, got {options!r}")

    def add(build: Callable[[nn.Module, object], list[GraphSpec]]):
        if name in BUILDERS and BUILDERS[name].build is not build:
            raise ValueError(f"graph builder {name!r} is already registered")
        BUILDERS[name] = Builder(name, applies, options, build)
        return build

    return add


def make_options(builder: Builder, values: dict | None) -> object:
    """The builder's options dataclass from a config block; unknown keys raise, naming them."""
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(builder.options)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"graphs.{builder.name}: unknown option(s) {', '.join(unknown)}; "
                         f"{builder.name} takes {sorted(known)}")
    return builder.options(**values)


def applicable(net: nn.Module) -> list[Builder]:
    return [b for b in BUILDERS.values() if b.applies(net)]


def graph_specs(net: nn.Module, options: dict[str, dict] | None = None) -> list[GraphSpec]:
    """Every graph the applicable builders declare for `net`; options: {builder name: {option: value}}."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(BUILDERS))
    if unknown:
        raise ConfigError(f"graphs: unknown graph builder(s) {', '.join(unknown)}; "
                         f"registered: {sorted(BUILDERS)}")
    builders = applicable(net)
    if not builders:
        model = f"{type(net).__module__}.{type(net).__qualname__}"
        raise NoGraphsError(f"model {model} declares no export graphs "
                            f"(no registered graph builder accepts it: {sorted(BUILDERS)})")
    specs: list[GraphSpec] = []
    for builder in builders:
        specs += builder.build(net, make_options(builder, options.get(builder.name)))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"graph builders {[b.name for b in builders]} declare clashing graph names {names}")
    return specs


# ---- capabilities ----
def _has(net: nn.Module, *methods: str) -> bool:
    return all(callable(getattr(net, m, None)) for m in methods)


def takes_features(net: nn.Module) -> bool:
    """encode or prefill takes per-step dense features (the generative model: its own builder,
    genrec/export/generative.py)."""
    methods = [getattr(net, m, None) for m in ("encode", "prefill")]
    return any(callable(m) and "dense_features" in inspect.signature(m).parameters for m in methods)


def is_scorer(net: nn.Module) -> bool:
    """encode(items[, timestamps]) -> hidden and score(hidden) -> scores over the item table
    (items, and timestamps, are all it reads: not a model that takes dense features)."""
    return (_has(net, "encode", "score") and hasattr(getattr(net, "config", None), "n_items")
            and not takes_features(net))


def streams_items(net: nn.Module) -> bool:
    """prefill(items) / decode(new_items, KVCache) / empty_cache(batch), and says it streams."""
    return _has(net, "prefill", "decode", "empty_cache") and bool(getattr(net, "streams", False))


# ---- the SASRec family (scorers over an item table) ----
@dataclass
class NextItemOptions:
    top_k: int = 10  # clipped to the catalogue size
    mask_history: bool = True  # items already in the sequence / cache are never recommended
    full_scores: bool = False  # also output the full [B, n_items + 1] scores


def scorer_fp32(head: TopKHead) -> FP32Boundary:
    """The final norm and everything after it (item dot products, top-K) in FP32."""
    return FP32Boundary(after=("net.final_norm",), modules=("head",), outputs=head.outputs[1:])


@register_builder("next_item", applies=is_scorer, options=NextItemOptions)
def next_item_graphs(net: nn.Module, opts: NextItemOptions) -> list[GraphSpec]:
    """`score` always; `prefill` + `decode` when the model streams, else a note saying why not."""
    if opts.top_k < 1:
        raise ConfigError(f"graphs.next_item.top_k={opts.top_k}: must be >= 1")
    n = net.config.n_items
    head = TopKHead(min(opts.top_k, n), opts.mask_history, opts.full_scores)
    if streams_items(net):
        return [score_spec(net, head, n, with_time=False), *streaming_specs(net, head, n)]
    reason = getattr(net, "not_streaming_reason", "the model has no prefill/decode/empty_cache")
    with_time = bool(getattr(net, "needs_time", False))
    return [score_spec(net, head, n, with_time, note=f"score only: {reason}")]


def score_spec(net: nn.Module, head: TopKHead, n_items: int, with_time: bool, note: str = "") -> GraphSpec:
    inputs = ("items", "timestamps") if with_time else ("items",)

    def sample(sizes: dict[str, int], gen: torch.Generator) -> dict[str, torch.Tensor]:
        items = random_items(sizes["batch"], sizes["seq"], n_items, gen)
        if not with_time:
            return {"items": items}
        return {"items": items, "timestamps": random_timestamps(items, gen)}

    axes = {name: {0: "batch", 1: "seq"} for name in inputs}
    return GraphSpec("score", ScoreGraph(net, head), inputs, head.outputs, axes, sample,
                     fp32=scorer_fp32(head), note=note)


def streaming_specs(net: nn.Module, head: TopKHead, n_items: int) -> list[GraphSpec]:
    """`prefill` and `decode` of a model with prefill/decode/empty_cache."""

    def sample_prefill(sizes: dict[str, int], gen: torch.Generator) -> dict[str, torch.Tensor]:
        return {"items": random_items(sizes["batch"], sizes["seq"], n_items, gen)}

    def sample_decode(sizes: dict[str, int], gen: torch.Generator) -> dict[str, torch.Tensor]:
        b, p = sizes["batch"], sizes["past"]
        # a real cache, as prefill leaves it; some users have no cached event at all
        past = random_items(b, p, n_items, gen, min_len=0)
        cache = net.prefill(past)[1] if p else net.empty_cache(b)
        return {"new_items": random_items(b, 1, n_items, gen), "past_kv": cache.kv,
                "past_valid": cache.valid, "past_items": past}

    prefill = GraphSpec("prefill", PrefillGraph(net, head), ("items",),
                        (*head.outputs, "present_kv", "present_valid"),
                        {"items": {0: "batch", 1: "seq"}}, sample_prefill, fp32=scorer_fp32(head))
    decode = GraphSpec(
        "decode", DecodeGraph(net, head), ("new_items", "past_kv", "past_valid", "past_items"),
        (*head.outputs, "present_kv", "present_valid", "present_items"),
        {"new_items": {0: "batch"}, "past_kv": {2: "batch", 4: "past"},
         "past_valid": {0: "batch", 1: "past"}, "past_items": {0: "batch", 1: "past"}},
        sample_decode, fp32=scorer_fp32(head))
    return [prefill, decode]


# the modules below register their builders
from genrec.export import generative, phoenix, seq2seq  # noqa: E402, F401
