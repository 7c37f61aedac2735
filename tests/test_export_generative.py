"""Export of the generative model: builder chosen by capability, prefill + ten decode steps in
onnxruntime == the PyTorch forward over the whole sequence, and export(cfg) recording FP16 parity."""

import json

import numpy as np
import pytest
import torch
from conftest import CONF
from hydra import compose, initialize_config_dir

from genrec.export.builders import graph_specs, is_scorer
from genrec.export.generative import is_generative, random_features
from genrec.export.graphs import random_items
from genrec.export.onnx import export_onnx
from genrec.export.parity import ort_session
from genrec.models.generative import GenerativeRecommendationModel
from genrec.models.sasrec import SASRec

pytest.importorskip("onnxruntime")

F = 6
TINY = dict(n_items=40, num_features=F, embedding_dim=32, hidden_dim=48, num_layers=2, num_heads=4,
            max_seq_len=32, dropout=0.0, heads=("engagement", "click"), regression_heads=("rating",),
            feature_mean=[float(i) for i in range(F)], feature_std=[1.0 + i for i in range(F)])
TOP_K = 5


def _net(**changes) -> GenerativeRecommendationModel:
    torch.manual_seed(0)
    return GenerativeRecommendationModel(**{**TINY, **changes}).eval()


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """(net, {graph: onnxruntime session}) of the tiny model's exported prefill and decode."""
    tmp = tmp_path_factory.mktemp("generative_export")
    net = _net()
    sessions = {}
    for spec in graph_specs(net, {"generative": {"top_k": TOP_K}}):
        export_onnx(spec, tmp / f"{spec.name}.onnx")
        sessions[spec.name] = ort_session(tmp / f"{spec.name}.onnx", threads=1)
    return net, sessions


def test_the_generative_builder_claims_the_model_and_next_item_does_not():
    net = _net()
    assert is_generative(net) and not is_scorer(net)
    specs = {s.name: s for s in graph_specs(net)}
    assert list(specs) == ["prefill", "decode"]
    assert specs["prefill"].inputs == ("items", "dense_features")
    assert specs["decode"].outputs == ("top_items", "top_scores", "head_scores", "present_kv",
                                       "present_valid", "present_items")
    assert 2 not in specs["prefill"].dynamic_axes["dense_features"]  # F is fixed by the model
    sasrec = SASRec(n_items=20, maxlen=8, hidden_units=8, num_blocks=1, num_heads=1)
    assert not is_generative(sasrec)
    assert [s.name for s in graph_specs(sasrec)] == ["score", "prefill", "decode"]


def test_without_the_feature_path_the_graphs_take_items_only():
    specs = {s.name: s for s in graph_specs(_net(use_features=False, heads=(), regression_heads=()))}
    assert specs["prefill"].inputs == ("items",)
    assert specs["decode"].inputs == ("new_items", "past_kv", "past_valid", "past_items")
    assert "head_scores" not in specs["decode"].outputs


def _reference(net, items: torch.Tensor, features: torch.Tensor) -> dict[str, np.ndarray]:
    """Top-K (history masked) and head scores of the newest position, by one full forward."""
    with torch.no_grad():
        hidden = net.encode(items, features)[:, -1]  # [B, D]
        logits = net.score(hidden)  # [B, N + 1]
        logits[:, 0] = float("-inf")
        logits = logits.scatter(1, items, float("-inf"))
        top_scores, top_items = logits.topk(TOP_K, dim=1)
        return {"top_items": top_items.numpy(), "top_scores": top_scores.numpy(),
                "head_scores": net.task_scores(hidden).numpy()}


def test_prefill_then_ten_onnx_decode_steps_equal_the_full_forward(graphs):
    net, sessions = graphs
    gen = torch.Generator().manual_seed(1)
    batch, start, steps = 3, 7, 10
    items = random_items(batch, start + steps, TINY["n_items"], gen)  # [B, T]
    items[1, : start - 3] = 0  # row 1: a shorter history (left padding in the prefill)
    items[2, :start] = 0  # row 2: no event before the decode steps (a cache of padding only)
    items[2, start + 4] = 0  # ... and a step without an event (its slot stored invalid)
    features = random_features(net, items, gen)  # [B, T, F] 0 at padding
    feeds = {"items": items[:, :start].numpy(), "dense_features": features[:, :start].numpy()}
    out = dict(zip([o.name for o in sessions["prefill"].get_outputs()], sessions["prefill"].run(None, feeds),
                   strict=True))
    past = {"past_kv": out["present_kv"], "past_valid": out["present_valid"], "past_items": feeds["items"]}
    assert out["present_kv"].shape[4] == start
    for t in range(start, start + steps):
        feeds = {"new_items": items[:, t:t + 1].numpy(), "dense_features": features[:, t:t + 1].numpy(),
                 **past}
        names = [o.name for o in sessions["decode"].get_outputs()]
        out = dict(zip(names, sessions["decode"].run(None, feeds), strict=True))
        assert out["present_kv"].shape[4] == t + 1  # the cache grows by exactly one position
        ref = _reference(net, items[:, : t + 1], features[:, : t + 1])
        real = items[:, t] != 0  # a row without an event this step has meaningless outputs
        np.testing.assert_array_equal(out["top_items"][real], ref["top_items"][real])
        torch.testing.assert_close(torch.from_numpy(out["top_scores"][real]),
                                   torch.from_numpy(ref["top_scores"][real]), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(torch.from_numpy(out["head_scores"][real]),
                                   torch.from_numpy(ref["head_scores"][real]), rtol=1e-4, atol=1e-5)
        past = {"past_kv": out["present_kv"], "past_valid": out["present_valid"],
                "past_items": out["present_items"]}
    assert past["past_valid"].sum(1).tolist() == (items != 0).sum(1).tolist()


@pytest.mark.slow
def test_export_pipeline_writes_both_graphs_with_fp16_parity(tmp_path):
    from genrec.export.pipeline import export  # noqa: PLC0415

    net = _net()
    ckpt = {"genrec_config": {"model": net.export_config()}, "epoch": 0, "global_step": 0,
            "hyper_parameters": {"net_config": net.export_config()},
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}
    torch.save(ckpt, tmp_path / "best.ckpt")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("export", overrides=[f"ckpt_path={tmp_path / 'best.ckpt'}",
                                           f"out_dir={tmp_path / 'export'}"])
    summary = export(cfg)
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert summary["passed"] and set(manifest["graphs"]) == {"prefill", "decode"}
    for graph in manifest["graphs"].values():
        assert set(graph["variants"]) == {"fp32", "fp16"}
        for precision, variant in graph["variants"].items():
            assert variant["parity"]["passed"], (precision, variant["parity"]["max_rel_error"])
            rtol = cfg.parity[f"{precision}_rtol"]
            assert variant["parity"]["per_output"]["head_scores"]["max_rel"] <= rtol
