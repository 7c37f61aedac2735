"""export.py end to end on tiny checkpoints: ONNX graphs, parity, manifest, goldens, streaming in
onnxruntime, the TensorRT operator check, the TensorRT path (GPU hosts) and bad checkpoints."""

import csv
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import CONF, ROOT, compose_config
from hydra import compose, initialize_config_dir

from genrec.export import parity, tensorrt, triton
from genrec.export.builders import graph_specs
from genrec.export.fp16 import to_fp16
from genrec.export.graphs import FP32Boundary
from genrec.export.pipeline import ExportError, export, find_checkpoint
from genrec.run.checkpoint import CheckpointError, build_net, read_checkpoint
from genrec.run.training import train

ort = pytest.importorskip("onnxruntime")

TRAIN_FAST = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
              "trainer.limit_test_batches=1", "callbacks.early_stopping=null", "model.hidden_units=16"]
# name -> training overrides; mHC and TiSASRec graphs take the exporter 3-5x longer
MODELS = {
    "sasrec": [],
    "sasrec_reference": ["model.block=reference"],
    "sasrec_mhc": ["model.residual=mhc", "model.mhc_expansion=2", "model.mhc_sinkhorn_iters=2"],
    "tisasrec": ["model=tisasrec", "model.time_span=32"],
}
SHAPES = "parity.shapes=[{batch:1,seq:1,past:0},{batch:3,seq:7,past:5},{batch:5,seq:20,past:19}]"
HAS_TRT = torch.cuda.is_available() and importlib.util.find_spec("tensorrt") is not None


def export_config(run_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("export", overrides=[f"run_dir={run_dir}", SHAPES, *overrides])


def train_run(tmp_path: Path, overrides: list[str]) -> Path:
    cfg = compose_config(tmp_path, [*TRAIN_FAST, *overrides])
    train(cfg)
    return Path(cfg.paths.output_dir)


@pytest.fixture(scope="module", params=[
    "sasrec",
    pytest.param("sasrec_reference", marks=pytest.mark.slow),
    pytest.param("sasrec_mhc", marks=pytest.mark.slow),
    pytest.param("tisasrec", marks=pytest.mark.slow),
])
def exported(request, tmp_path_factory):
    """(run_dir, export summary, manifest) of a tiny trained model, exported once per module."""
    run = train_run(tmp_path_factory.mktemp(request.param), MODELS[request.param])
    summary = export(export_config(run))
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    return run, summary, manifest


@pytest.fixture(scope="module")
def sasrec_run(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("sasrec_only"), [])


# ---- what export writes ----
def test_every_graph_passes_the_checker_parity_and_the_tensorrt_op_check(exported):
    run, summary, manifest = exported
    assert summary["passed"] and manifest["passed"]
    for name, graph in manifest["graphs"].items():
        assert set(graph["variants"]) == {"fp32", "fp16"}
        for precision, variant in graph["variants"].items():
            model = onnx.load(run / "export" / variant["file"])
            onnx.checker.check_model(model, full_check=True)
            assert next(o.version for o in model.opset_import if o.domain == "") == 17
            check = variant["parity"]
            assert check["passed"] and check["max_rel_error"] <= check["rtol"], (name, precision, check)
            assert check["topk_agreement"] == 1.0
            assert variant["tensorrt_ops_supported"] and not tensorrt.unsupported(model)
    assert summary["max_rel_error/fp32"] <= 1e-4 and summary["max_rel_error/fp16"] <= 1e-2


def test_manifest_records_graphs_axes_parity_shapes_and_the_checkpoint(exported):
    run, _, manifest = exported
    ckpt = Path(manifest["checkpoint"]["path"])
    assert ckpt.parent == run / "checkpoints" and ckpt.name.startswith("best")
    assert manifest["checkpoint"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert manifest["opset"] == 17 and manifest["precisions"] == ["fp32", "fp16"]
    assert manifest["model"] == read_checkpoint(ckpt)["hyper_parameters"]["net_config"]["_target_"]
    streams = build_net(read_checkpoint(ckpt)).streams
    assert list(manifest["graphs"]) == (["score", "prefill", "decode"] if streams else ["score"])
    if not streams:
        assert manifest["graphs"]["score"]["inputs"] == ["items", "timestamps"]
        assert any("score only" in note for note in manifest["notes"])
    for graph in manifest["graphs"].values():
        variant = graph["variants"]["fp32"]
        assert [v["name"] for v in variant["signature"]["inputs"]] == graph["inputs"]
        assert [v["name"] for v in variant["signature"]["outputs"]] == graph["outputs"]
        assert variant["dynamic_axes"][graph["inputs"][0]]["0"] == "batch"
        sizes = [s["sizes"] for s in variant["parity"]["shapes"]]
        for axis in graph["axes"]:  # two or more shapes per dynamic axis, past length 0 included
            assert len({s[axis] for s in sizes}) >= 2
        if "past" in graph["axes"]:
            assert 0 in {s["past"] for s in sizes}
            assert variant["dynamic_axes"]["past_kv"] == {"2": "batch", "4": "past"}
            assert variant["dynamic_axes"]["past_valid"] == {"0": "batch", "1": "past"}
        golden = run / "export" / "golden"
        cases = parity.load_goldens(golden / variant["golden"]["npz"])
        assert len(cases) == len(sizes) and set(cases[0][0]) == set(graph["inputs"])
        assert (golden / variant["golden"]["polygraphy_inputs"]).is_file()


def test_fp16_variant_keeps_layernorm_softmax_and_the_score_head_in_fp32(exported):
    run, _, manifest = exported
    for graph in manifest["graphs"].values():
        model = onnx.load(run / "export" / graph["variants"]["fp16"]["file"])
        model = onnx.shape_inference.infer_shapes(model)
        types = {v.name: v.type.tensor_type.elem_type for v in
                 (*model.graph.value_info, *model.graph.input, *model.graph.output)}
        types |= {t.name: t.data_type for t in model.graph.initializer}
        float_in = {n.op_type: types[n.input[0]] for n in model.graph.node
                    if n.op_type in ("LayerNormalization", "Softmax", "TopK")}
        assert set(float_in) == {"LayerNormalization", "Softmax", "TopK"}
        assert set(float_in.values()) == {onnx.TensorProto.FLOAT}
        matmuls = {types[n.output[0]] for n in model.graph.node if n.op_type == "MatMul"}
        assert onnx.TensorProto.FLOAT16 in matmuls  # the body does run in FP16
        outputs = {v["name"]: v["dtype"] for v in graph["variants"]["fp16"]["signature"]["outputs"]}
        assert outputs["top_scores"] == "float32" and outputs["top_items"] == "int64"
        if "present_kv" in outputs:
            assert outputs["present_kv"] == "float16" and outputs["present_valid"] == "bool"
        assert graph["variants"]["fp16"]["precision"].startswith("fp16 compute; fp32")


def test_the_fp16_rewrite_follows_the_spec_boundary(exported):
    """The item-table product (after the final norm) is FP32 only because the boundary says so;
    a boundary naming a module the graph lacks is refused."""
    run, _, manifest = exported
    net = build_net(read_checkpoint(manifest["checkpoint"]["path"]))
    spec = graph_specs(net, manifest["export_config"]["graphs"])[0]
    model = onnx.load(run / "export" / "score.onnx")

    def last_matmul_type(rewritten: onnx.ModelProto) -> int:
        types = {v.name: v.type.tensor_type.elem_type for v in rewritten.graph.value_info}
        return types[[n for n in rewritten.graph.node if n.op_type == "MatMul"][-1].output[0]]

    assert last_matmul_type(to_fp16(model, spec.fp32)) == onnx.TensorProto.FLOAT
    outputs_only = FP32Boundary(outputs=spec.fp32.outputs)
    assert last_matmul_type(to_fp16(model, outputs_only)) == onnx.TensorProto.FLOAT16
    with pytest.raises(ValueError, match="module 'net.no_such_norm'"):
        to_fp16(model, FP32Boundary(after=("net.no_such_norm",)))


@pytest.mark.parametrize("precision,tol", [("fp32", 1e-4), ("fp16", 1e-2)])
def test_ten_streaming_decode_steps_in_onnxruntime_equal_the_full_forward(exported, precision, tol):
    run, _, manifest = exported
    if "decode" not in manifest["graphs"]:
        pytest.skip("this model does not stream (score graph only)")
    net = build_net(read_checkpoint(manifest["checkpoint"]["path"]))
    suffix = "" if precision == "fp32" else f".{precision}"
    prefill = parity.ort_session(run / "export" / f"prefill{suffix}.onnx")
    decode = parity.ort_session(run / "export" / f"decode{suffix}.onnx")
    score = {s.name: s for s in graph_specs(net, manifest["export_config"]["graphs"])}["score"].module
    torch.manual_seed(3)
    items = torch.randint(1, net.config.n_items + 1, (3, 14))
    items[1, :2] = 0  # users with 14, 12 and 9 events
    items[2, :5] = 0
    top_items, top_scores, kv, valid = prefill.run(None, {"items": items[:, :4].numpy()})
    past_items = items[:, :4].numpy()
    for t in range(4, 14):  # ten decode steps, each against a full forward over the prefix
        feeds = {"new_items": items[:, t : t + 1].numpy(), "past_kv": kv, "past_valid": valid,
                 "past_items": past_items}
        top_items, top_scores, kv, valid, past_items = decode.run(None, feeds)
        with torch.no_grad():
            ref_items, ref_scores = score(items[:, : t + 1])
        scale = ref_scores.abs().max()
        torch.testing.assert_close(torch.from_numpy(top_scores), ref_scores, rtol=0, atol=tol * scale)
        if precision == "fp32":
            assert np.array_equal(top_items, ref_items.numpy())
    assert kv.shape[4] == 14 and np.array_equal(past_items, items.numpy())
    assert np.array_equal(valid, items.numpy() != 0)


def test_triton_repository_from_the_manifest(exported, tmp_path):
    run, _, manifest = exported
    prefix = manifest["model"].rsplit(".", 1)[-1].lower()
    models = triton.write_repository(run / "export", manifest, tmp_path, prefix, 64, 1, "KIND_GPU", 100)
    assert set(models) == set(manifest["graphs"])
    score = (tmp_path / models["score"] / "config.pbtxt").read_text()
    assert "max_batch_size: 64" in score and "dynamic_batching" in score and 'backend: "onnxruntime"' in score
    assert 'name: "items" data_type: TYPE_INT64 dims: [ -1 ]' in score
    assert (tmp_path / models["score"] / "1" / "model.onnx").is_file()
    if "decode" in models:  # the K/V cache is batched on dim 2: served unbatched
        decode = (tmp_path / models["decode"] / "config.pbtxt").read_text()
        assert "max_batch_size: 0" in decode and "dynamic_batching" not in decode


# ---- checks that must fail ----
def _plant(model: onnx.ModelProto, node: onnx.NodeProto) -> onnx.ModelProto:
    planted = onnx.ModelProto.FromString(model.SerializeToString())
    planted.graph.node.append(node)
    return planted


def test_the_tensorrt_op_check_fails_on_a_planted_unsupported_op(exported):
    run, _, _ = exported
    model = onnx.load(run / "export" / "score.onnx")
    assert tensorrt.unsupported(model) == []
    planted = _plant(model, onnx.helper.make_node("Unique", ["items"], ["unique_items"], name="planted"))
    onnx.checker.check_model(planted)  # a valid ONNX graph, just not a TensorRT one
    with pytest.raises(tensorrt.UnsupportedOpError, match=r"Unique \(planted\): not in TensorRT 10.15"):
        tensorrt.check_ops(planted, "score")
    custom = _plant(model, onnx.helper.make_node("FusedMatMul", ["a", "b"], ["c"], domain="com.microsoft"))
    assert any("com.microsoft::FusedMatMul" in p for p in tensorrt.unsupported(custom))
    big_k = onnx.ModelProto.FromString(model.SerializeToString())
    big_k.graph.initializer.append(onnx.numpy_helper.from_array(np.array([4000], np.int64), "k4000"))
    big_k.graph.node.append(onnx.helper.make_node("TopK", ["items", "k4000"], ["v", "i"], name="wide"))
    assert any("K=4000" in p for p in tensorrt.unsupported(big_k))


def test_export_fails_when_a_graph_has_an_unsupported_op(sasrec_run, monkeypatch, tmp_path):
    from genrec.export import pipeline  # noqa: PLC0415

    real_export, real_graphs = pipeline.export_onnx, pipeline.graph_specs

    def planted_export(spec, path, opset):
        model = _plant(real_export(spec, path, opset), onnx.helper.make_node("Unique", ["items"], ["u"]))
        onnx.save(model, path)
        return model

    monkeypatch.setattr(pipeline, "export_onnx", planted_export)
    monkeypatch.setattr(pipeline, "graph_specs", lambda net, options: real_graphs(net, options)[:1])
    with pytest.raises(ExportError, match="score \\(fp32\\) has ops TensorRT rejects: Unique"):
        export(export_config(sasrec_run, f"out_dir={tmp_path}", "fp16=false"))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["passed"] is False
    assert manifest["graphs"]["score"]["variants"]["fp32"]["tensorrt_ops_supported"] is False


def test_parity_catches_a_graph_that_differs_from_eager(exported, tmp_path):
    run, _, manifest = exported
    net = build_net(read_checkpoint(manifest["checkpoint"]["path"]))
    spec = graph_specs(net)[0]
    model = onnx.load(run / "export" / "score.onnx")
    weights = next(t for t in model.graph.initializer if t.name.endswith("item_emb.weight"))
    values = onnx.numpy_helper.to_array(weights).copy()
    values[1:] *= 1.001  # a 0.1 % drift in the item table
    weights.CopyFrom(onnx.numpy_helper.from_array(values, weights.name))
    onnx.save(model, tmp_path / "drifted.onnx")
    cases = parity.make_cases(spec, [{"batch": 2, "seq": 5}, {"batch": 3, "seq": 9}], seed=0)
    session = parity.ort_session(tmp_path / "drifted.onnx")
    check = parity.check(cases, parity.onnx_runner(session), 1e-4, 1.0, model)
    assert not check["passed"] and check["max_rel_error"] > 1e-4


# ---- TensorRT ----
@pytest.mark.skipif(HAS_TRT, reason="checks the CPU behaviour; this host has a GPU and tensorrt")
def test_tensorrt_target_without_gpu_or_package_stops_with_one_sentence_and_keeps_onnx(sasrec_run, tmp_path):
    out = tmp_path / "export"
    proc = subprocess.run(
        [sys.executable, "export.py", f"run_dir={sasrec_run}", f"out_dir={out}", "target=tensorrt", SHAPES],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("target=tensorrt needs") and last.count(". ") == 0  # one sentence
    assert "Traceback" not in proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["passed"] and "tensorrt" not in manifest["graphs"]["decode"]
    for graph in ("score", "prefill", "decode"):
        onnx.checker.check_model(onnx.load(out / f"{graph}.onnx"))
        assert (out / f"{graph}.fp16.onnx").is_file()
    assert not list(out.glob("*.engine"))


def test_tensorrt_profiles_come_from_axis_names():
    inputs = [{"name": "past_kv", "shape": [2, 2, "batch", 1, "past", 32]},
              {"name": "new_items", "shape": ["batch", 1]}]
    shapes = tensorrt.profile_shapes(inputs, {"batch": [1, 64, 1024], "past": [0, 100, 200]})
    assert shapes["past_kv"] == [[2, 2, 1, 1, 0, 32], [2, 2, 64, 1, 100, 32], [2, 2, 1024, 1, 200, 32]]
    assert shapes["new_items"] == [[1, 1], [64, 1], [1024, 1]]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="needs a CUDA GPU and the tensorrt package (GPU host only)")
def test_tensorrt_engines_build_and_match_the_goldens(sasrec_run, tmp_path):
    profiles = "tensorrt.profiles={batch:[1,8,64],seq:[1,20,40],past:[0,10,40]}"
    export(export_config(sasrec_run, f"out_dir={tmp_path}", "target=tensorrt", profiles,
                         "tensorrt.latency_runs=5"))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert (tmp_path / "timing.cache").is_file()
    for name, graph in manifest["graphs"].items():
        record = graph["tensorrt"]
        assert (tmp_path / f"{name}.engine").is_file() and record["strongly_typed"]
        assert record["parity"]["passed"], (name, record["parity"])
        assert all(s["latency_ms_p50"] > 0 for s in record["parity"]["shapes"])


# ---- checkpoints ----
def test_a_corrupt_or_foreign_checkpoint_gives_a_clear_error(sasrec_run, tmp_path):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"\x80\x04 definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        export(export_config(sasrec_run, f"ckpt_path={corrupt}"))
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a genrec training checkpoint"):
        export(export_config(sasrec_run, f"ckpt_path={foreign}"))
    with pytest.raises(CheckpointError, match="does not exist"):
        export(export_config(sasrec_run, f"ckpt_path={tmp_path / 'missing.ckpt'}"))


def test_a_checkpoint_of_a_different_model_gives_a_clear_error(sasrec_run, tmp_path):
    best = find_checkpoint(str(sasrec_run), None)
    with pytest.raises(CheckpointError, match="holds model genrec.models.sasrec.SASRec, not the expected "
                                              "genrec.models.tisasrec.TiSASRec"):
        export(export_config(sasrec_run, "model_target=genrec.models.tisasrec.TiSASRec"))
    ckpt = read_checkpoint(best)
    ckpt["hyper_parameters"]["net_config"]["_target_"] = "genrec.models.tisasrec.TiSASRec"
    torch.save(ckpt, tmp_path / "relabelled.ckpt")  # SASRec weights under TiSASRec's name
    with pytest.raises(CheckpointError, match="weights do not fit genrec.models.tisasrec.TiSASRec"):
        export(export_config(sasrec_run, f"ckpt_path={tmp_path / 'relabelled.ckpt'}"))
    linear = {"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 2}
    ckpt["hyper_parameters"]["net_config"] = linear
    ckpt["state_dict"] = {f"net.{k}": v for k, v in torch.nn.Linear(2, 2).state_dict().items()}
    torch.save(ckpt, tmp_path / "linear.ckpt")
    with pytest.raises(CheckpointError, match="declares no export graphs"):
        export(export_config(sasrec_run, f"ckpt_path={tmp_path / 'linear.ckpt'}"))


def test_the_best_checkpoint_is_found_in_a_run_directory_even_after_a_move(sasrec_run, tmp_path):
    best = find_checkpoint(str(sasrec_run), None)
    assert best.name.startswith("best") and best.parent == sasrec_run / "checkpoints"
    moved = tmp_path / "moved"
    (moved / "checkpoints").mkdir(parents=True)
    (moved / "checkpoints" / best.name).write_bytes(best.read_bytes())
    record = json.loads((sasrec_run / "metrics.json").read_text())
    record["best_checkpoint"] = "/nowhere/checkpoints/" + best.name
    (moved / "metrics.json").write_text(json.dumps(record))
    assert find_checkpoint(str(moved), None) == moved / "checkpoints" / best.name
    (moved / "metrics.json").unlink()
    assert find_checkpoint(str(moved), None) == moved / "checkpoints" / best.name  # checkpoints/best*.ckpt
    with pytest.raises(CheckpointError, match="no best checkpoint recorded"):
        find_checkpoint(str(tmp_path), None)
    with pytest.raises(CheckpointError, match="give run_dir"):
        find_checkpoint(None, None)


# ---- parity at trained weight magnitudes ----
@pytest.mark.slow
def test_export_parity_holds_on_a_model_trained_to_its_plateau(tmp_path, record_property):
    """FP16 trouble shows with trained weights, not near init: train until validation NDCG@10
    stops improving (early stopping, patience 3), then export and check FP32 and FP16 parity at
    the configured tolerances; the measured errors go to the manifest and the test report."""
    max_epochs = 60
    cfg = compose_config(tmp_path, [f"trainer.max_epochs={max_epochs}", "callbacks.early_stopping.patience=3",
                                    "+callbacks.early_stopping.min_delta=0.001", "task.optimizer.lr=0.005",
                                    "model.hidden_units=32", "test=false", "logger=csv"])
    start = time.perf_counter()
    train(cfg)
    train_seconds = time.perf_counter() - start
    run = Path(cfg.paths.output_dir)
    (history,) = run.glob("**/metrics.csv")
    ndcg = [float(row["val/ndcg@10"]) for row in csv.DictReader(history.open()) if row.get("val/ndcg@10")]
    best_epoch = int(np.argmax(ndcg))
    # early stopping ended it: patience epochs without a 0.001 gain after the best, before max_epochs
    assert best_epoch >= 3 and len(ndcg) < max_epochs, ndcg
    assert max(ndcg[best_epoch + 1 :]) < ndcg[best_epoch] + 1e-3 and len(ndcg) - 1 - best_epoch >= 3, ndcg
    best = read_checkpoint(find_checkpoint(str(run), None))
    assert best["epoch"] == best_epoch
    summary = export(export_config(run))
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    assert summary["passed"] and manifest["passed"]
    for name, graph in manifest["graphs"].items():
        for precision, variant in graph["variants"].items():
            check = variant["parity"]
            record_property(f"{name}/{precision}/max_rel_error", check["max_rel_error"])
            record_property(f"{name}/{precision}/topk_agreement", check["topk_agreement"])
            assert check["passed"] and check["topk_agreement"] == 1.0, (name, precision, check)
    assert summary["max_rel_error/fp32"] <= 1e-4 and summary["max_rel_error/fp16"] <= 1e-2
    emb = build_net(best).item_emb.weight.detach()
    record_property("train_seconds", round(train_seconds, 1))
    record_property("val_ndcg@10_per_epoch", [round(v, 4) for v in ndcg])
    record_property("item_emb_max_abs", float(emb.abs().max()))
    record_property("max_rel_error/fp32", summary["max_rel_error/fp32"])
    record_property("max_rel_error/fp16", summary["max_rel_error/fp16"])
