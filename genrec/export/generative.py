"""Export graphs of the generative recommendation model (genrec/models/generative.py): `prefill` and
`decode` with per-step dense features, the K/V cache stacked with a dynamic past.

    prefill: items int64 [batch, seq] left-padded, dense_features fp32 [batch, seq, F] RAW features
             (the model normalises with its stored training statistics)
             -> top_items int64 [batch, K], top_scores fp32 [batch, K] (history masked),
                head_scores fp32 [batch, H] (binary logits, then regression values; absent when
                the model has no heads), present_kv [L, 2, batch, heads, seq, Dh],
                present_valid bool [batch, seq]
    decode:  new_items int64 [batch, 1], dense_features fp32 [batch, 1, F], past_kv
             [L, 2, batch, heads, past, Dh], past_valid bool [batch, past], past_items int64
             [batch, past] (the history the top-K masks) -> the same outputs over past + 1, plus
             present_items [batch, past + 1] (the next step's past_items)

F is fixed by the model (not a dynamic axis). A model with its feature path off
(use_features=false) gets the same graphs without dense_features. The FP16 variant keeps the
feature context (raw features minus their mean cancels in FP16), the final norm and everything after
it (item scores, top-K, heads) in FP32. TensorRT profiles: the `seq` and `past` axes (conf/export.yaml).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from genrec.export.builders import _has, register_builder, takes_features
from genrec.export.graphs import DecodeGraph, FP32Boundary, GraphSpec, PrefillGraph, TopKHead, random_items
from genrec.validation import ConfigError

HEAD_SCORES = "head_scores"


def is_generative(net: nn.Module) -> bool:
    """A streaming scorer over an item table whose prefill/decode also take dense features."""
    return (_has(net, "encode", "score", "prefill", "decode", "empty_cache")
            and bool(getattr(net, "streams", False)) and hasattr(getattr(net, "config", None), "n_items")
            and takes_features(net))


@dataclass
class GenerativeOptions:
    top_k: int = 10  # clipped to the catalogue size
    mask_history: bool = True  # items already in the sequence / cache are never recommended


@register_builder("generative", applies=is_generative, options=GenerativeOptions)
def generative_graphs(net: nn.Module, opts: GenerativeOptions) -> list[GraphSpec]:
    if opts.top_k < 1:
        raise ConfigError(f"graphs.generative.top_k={opts.top_k}: must be >= 1")
    n = net.config.n_items
    head = TopKHead(min(opts.top_k, n), opts.mask_history)
    features = uses_features(net)
    heads = (HEAD_SCORES,) if net.config.n_heads_out else ()
    fp32 = FP32Boundary(after=("net.final_norm",), modules=("head", *(("net.features",) if features else ())),
                        outputs=(*head.outputs[1:], *heads))
    extra_in = ("dense_features",) if features else ()

    prefill = GraphSpec(
        "prefill", (FeaturePrefillGraph if features else PrefillGraph)(net, head, bool(heads)),
        ("items", *extra_in), (*head.outputs, *heads, "present_kv", "present_valid"),
        {"items": {0: "batch", 1: "seq"}, **({"dense_features": {0: "batch", 1: "seq"}} if features else {})},
        lambda sizes, gen: sample_prefill(net, sizes, gen), fp32=fp32)
    decode = GraphSpec(
        "decode", (FeatureDecodeGraph if features else DecodeGraph)(net, head, bool(heads)),
        ("new_items", *extra_in, "past_kv", "past_valid", "past_items"),
        (*head.outputs, *heads, "present_kv", "present_valid", "present_items"),
        {"new_items": {0: "batch"}, **({"dense_features": {0: "batch"}} if features else {}),
         "past_kv": {2: "batch", 4: "past"}, "past_valid": {0: "batch", 1: "past"},
         "past_items": {0: "batch", 1: "past"}},
        lambda sizes, gen: sample_decode(net, sizes, gen), fp32=fp32)
    return [prefill, decode]


def uses_features(net: nn.Module) -> bool:
    return "dense_features" in getattr(net, "required_inputs", ("items", "dense_features"))


class FeaturePrefillGraph(PrefillGraph):
    """items [B, T], dense_features [B, T, F] -> PrefillGraph's outputs."""

    def forward(self, items: torch.Tensor, dense_features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.run(items, dense_features=dense_features)


class FeatureDecodeGraph(DecodeGraph):
    """new_items [B, 1], dense_features [B, 1, F], past_kv, past_valid, past_items
    -> DecodeGraph's outputs."""

    def forward(self, new_items: torch.Tensor, dense_features: torch.Tensor, past_kv: torch.Tensor,
                past_valid: torch.Tensor, past_items: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.run(new_items, past_kv, past_valid, past_items, dense_features=dense_features)


# ---- random valid inputs ----
def random_features(net: nn.Module, items: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """float32 [B, T, F] raw features around the model's training statistics, 0 at padding."""
    b, t = items.shape
    f = net.config.num_features
    mean = net.features.feature_mean  # [F]
    std = 1.0 / net.features.feature_scale  # [F]
    raw = mean + std * torch.randn(b, t, f, generator=gen)  # [B, T, F]
    return raw * (items != 0).unsqueeze(-1)


def sample_prefill(net: nn.Module, sizes: dict[str, int], gen: torch.Generator) -> dict[str, torch.Tensor]:
    items = random_items(sizes["batch"], sizes["seq"], net.config.n_items, gen)
    if not uses_features(net):
        return {"items": items}
    return {"items": items, "dense_features": random_features(net, items, gen)}


def sample_decode(net: nn.Module, sizes: dict[str, int], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A real cache, as prefill leaves it; some users have no cached event at all."""
    b, p = sizes["batch"], sizes["past"]
    features = uses_features(net)
    past = random_items(b, p, net.config.n_items, gen, min_len=0)  # [B, P]
    new = random_items(b, 1, net.config.n_items, gen)  # [B, 1]
    past_df = random_features(net, past, gen) if features else None
    cache = net.prefill(past, past_df)[-1] if p else net.empty_cache(b)
    feeds = {"new_items": new, "past_kv": cache.kv, "past_valid": cache.valid, "past_items": past}
    if features:
        feeds["dense_features"] = random_features(net, new, gen)
    return feeds


# ---- per-event cost of a decode step against recomputing the sequence ----
def decode_vs_recompute(net: nn.Module, length: int = 512, batch: int = 1, threads: int = 1,
                        rounds: int = 20, work_dir: str | None = None, top_k: int = 10) -> dict:
    """Exports both graphs and times them in onnxruntime at `batch`: the decode of event `length`
    with a cache of length - 1, against a prefill over all `length` events (recomputing the
    sequence). Rounds alternate the two (a shared machine slows both alike); returns the medians
    (ms, thread CPU time and wall time) and their ratio."""
    import tempfile  # noqa: PLC0415

    from genrec.export.builders import graph_specs  # noqa: PLC0415
    from genrec.export.onnx import export_onnx  # noqa: PLC0415
    from genrec.export.parity import ort_session  # noqa: PLC0415

    specs = {s.name: s for s in graph_specs(net.eval(), {"generative": {"top_k": top_k}})}
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        sessions, feeds = {}, {}
        sizes = {"batch": batch, "seq": length, "past": length - 1}
        for name in ("prefill", "decode"):
            export_onnx(specs[name], f"{tmp}/{name}.onnx")
            sessions[name] = ort_session(f"{tmp}/{name}.onnx", threads=threads)
            feeds[name] = {k: v.numpy() for k, v in specs[name].example(sizes, seed=1).items()}
        times = {(name, clock): [] for name in sessions for clock in ("cpu", "wall")}
        calls = {"prefill": 3, "decode": 30}
        for name, session in sessions.items():  # warm-up
            for _ in range(3):
                session.run(None, feeds[name])
        for _ in range(rounds):
            for name, session in sessions.items():
                for _ in range(calls[name]):
                    c0, w0 = time.thread_time(), time.perf_counter()
                    session.run(None, feeds[name])
                    times[name, "cpu"].append(time.thread_time() - c0)
                    times[name, "wall"].append(time.perf_counter() - w0)
    ms = {f"{name}_{clock}_ms": float(np.median(t) * 1e3) for (name, clock), t in times.items()}
    return {"length": length, "batch": batch, "threads": threads, **ms,
            "ratio_cpu": ms["prefill_cpu_ms"] / ms["decode_cpu_ms"],
            "ratio_wall": ms["prefill_wall_ms"] / ms["decode_wall_ms"]}
