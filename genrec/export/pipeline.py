"""export(cfg): best checkpoint -> ONNX graphs (FP32 + FP16) checked in onnxruntime -> manifest,
then optionally TensorRT engines and a Triton repository. Called by export.py and by the tests.

Which graphs a model gets is decided by its capabilities (genrec/export/builders.py), with each
builder's options from `cfg.graphs.<builder>`; nothing here knows a model by name.
"""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import onnx
import torch
from omegaconf import DictConfig, OmegaConf

from genrec.export import axes, parity, tensorrt, tensorrt_ops, triton
from genrec.export.builders import applicable, graph_specs
from genrec.export.fp16 import to_fp16
from genrec.export.graphs import GraphSpec
from genrec.export.onnx import dynamic_axes, export_onnx, signature
from genrec.rank_zero_log import get_logger
from genrec.run.checkpoint import CheckpointError, build_net, read_checkpoint

log = get_logger(__name__)

class ExportError(RuntimeError):
    """A graph failed its parity or TensorRT-operator check (details in the manifest)."""


def export(cfg: DictConfig) -> dict:
    """Returns a summary: export_dir, graphs, the worst relative error per precision, passed."""
    if cfg.target not in ("onnx", "tensorrt", "triton"):
        raise ValueError(f"target must be onnx, tensorrt or triton, got {cfg.target!r}")
    axes.profiles(OmegaConf.to_container(cfg.tensorrt.profiles, resolve=True) or {})  # fail before exporting
    ckpt_path = find_checkpoint(cfg.get("run_dir"), cfg.get("ckpt_path"))
    ckpt = read_checkpoint(ckpt_path, allow_unsafe=bool(cfg.get("allow_unsafe_checkpoint", False)))
    net = load_net(ckpt, ckpt_path, cfg.get("model_target"))
    out_dir = Path(cfg.out_dir) if cfg.get("out_dir") else _default_out_dir(cfg.get("run_dir"), ckpt_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs: list[GraphSpec] = graph_specs(net, OmegaConf.to_container(cfg.graphs, resolve=True) or {})
    manifest = _manifest_header(cfg, ckpt, ckpt_path, net)
    failures: list[str] = []
    for spec in specs:
        log.info("exporting graph %s", spec.name)
        manifest["graphs"][spec.name] = _export_graph(spec, out_dir, cfg, failures)
        if spec.note:
            manifest["notes"].append(f"{spec.name}: {spec.note}")
    manifest["passed"] = not failures
    _write_manifest(out_dir, manifest)
    if failures:
        raise ExportError(f"export to {out_dir} failed: " + "; ".join(failures))
    if cfg.target == "tensorrt" or (cfg.target == "triton" and cfg.triton.backend == "tensorrt"):
        _tensorrt(manifest, out_dir, cfg)
    if cfg.target == "triton":
        _triton(manifest, out_dir, cfg)
    log.info("wrote %s", out_dir.resolve())
    return _summary(out_dir, manifest)


# ---- checkpoint ----
def find_checkpoint(run_dir: str | None, ckpt_path: str | None) -> Path:
    """ckpt_path if given, else the best checkpoint the training run recorded."""
    if ckpt_path:
        return Path(ckpt_path)
    if not run_dir:
        raise CheckpointError("nothing to export: give run_dir=<training run directory> or ckpt_path=<file>")
    run = Path(run_dir)
    if not run.is_dir():
        raise CheckpointError(f"{run}: training run directory does not exist")
    metrics = run / "metrics.json"
    if metrics.is_file():
        best = json.loads(metrics.read_text()).get("best_checkpoint")
        if best:  # the recorded path, or the same file name if the run directory moved
            for candidate in (Path(best), run / "checkpoints" / Path(best).name):
                if candidate.is_file():
                    return candidate
            raise CheckpointError(f"best checkpoint {best} is recorded in {metrics} but missing; "
                                  "pass ckpt_path=<file> to export another one")
    found = sorted((run / "checkpoints").glob("best*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise CheckpointError(f"{run}: no best checkpoint recorded (metrics.json 'best_checkpoint' or "
                              "checkpoints/best*.ckpt); pass ckpt_path=<file>")
    if len(found) > 1:
        log.warning("%d best checkpoints in %s, exporting the newest, %s", len(found), run, found[-1].name)
    return found[-1]


def load_net(ckpt: dict, path: Path, expected_target: str | None) -> torch.nn.Module:
    """The eval-mode network; a checkpoint of another model, or of one that declares no graphs, is refused."""
    net_config = ckpt.get("hyper_parameters", {}).get("net_config")
    if not net_config:
        raise CheckpointError(f"{path}: holds no network config (hyper_parameters.net_config)")
    found = net_config["_target_"]
    if expected_target and found != expected_target:
        raise CheckpointError(f"{path}: checkpoint holds model {found}, not the expected {expected_target}")
    net = build_net(ckpt, path).eval()
    if not applicable(net):
        raise CheckpointError(f"{path}: model {found} declares no export graphs (no graph builder in "
                              "genrec/export/builders.py accepts it)")
    return net


def _default_out_dir(run_dir: str | None, ckpt_path: Path) -> Path:
    # <run>/checkpoints/x.ckpt -> <run>/export
    return Path(run_dir) / "export" if run_dir else ckpt_path.resolve().parent.parent / "export"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- graphs ----
def _export_graph(spec: GraphSpec, out_dir: Path, cfg: DictConfig, failures: list[str]) -> dict:
    """Both precisions of one graph: file, signature, ops, checks, parity, goldens."""
    entry = {"inputs": list(spec.inputs), "outputs": list(spec.outputs), "axes": list(spec.axes),
             "dynamic_axes": {k: {str(d): a for d, a in v.items()} for k, v in spec.dynamic_axes.items()},
             "note": spec.note, "variants": {}}
    cases = parity.make_cases(spec, OmegaConf.to_container(cfg.parity.shapes, resolve=True), cfg.parity.seed)
    model = export_onnx(spec, out_dir / f"{spec.name}.onnx", cfg.opset)
    variants = {"fp32": (model, out_dir / f"{spec.name}.onnx")}
    if cfg.fp16:
        variants["fp16"] = (to_fp16(model, spec.fp32), out_dir / f"{spec.name}.fp16.onnx")
        onnx.save(*variants["fp16"])
    for precision, (graph, file) in variants.items():
        record = entry["variants"][precision] = _check_variant(spec, precision, graph, file, cases, cfg)
        check, problems = record["parity"], record["tensorrt_op_problems"]
        log.info("  %s %s: max rel error %.2e (tolerance %.0e), top-K agreement %s", spec.name, precision,
                 check["max_rel_error"], check["rtol"], check["topk_agreement"])
        if not check["passed"]:
            failures.append(f"{spec.name} ({precision}) parity: max rel error {check['max_rel_error']:.3g} "
                            f"(tolerance {check['rtol']:g}), top-K agreement {check['topk_agreement']} "
                            f"(needs {check['min_topk_agreement']})")
        if problems and cfg.check_tensorrt_ops:
            failures.append(f"{spec.name} ({precision}) has ops TensorRT rejects: " + "; ".join(problems))
    return entry


def _check_variant(spec: GraphSpec, precision: str, graph: onnx.ModelProto, file: Path,
                   cases: list[parity.Case], cfg: DictConfig) -> dict:
    """One ONNX file's manifest record: onnxruntime parity, TensorRT ops, goldens."""
    problems = tensorrt.unsupported(graph)
    session = parity.ort_session(file)
    check = parity.check(cases, parity.onnx_runner(session), float(cfg.parity[f"{precision}_rtol"]),
                         cfg.parity.topk_agreement, graph)
    check["provider"] = session.get_providers()[0]
    return {
        "file": file.name, "sha256": _sha256(file),
        "precision": precision if precision == "fp32" else spec.fp32.describe(),
        "opset": cfg.opset, "signature": signature(graph), "dynamic_axes": dynamic_axes(graph),
        "ops": sorted({n.op_type for n in graph.graph.node}), "onnx_checker": True,
        "tensorrt_ops_supported": not problems, "tensorrt_op_problems": problems, "parity": check,
        "golden": parity.save_goldens(cases, graph, file.parent / "golden" / f"{spec.name}.{precision}"),
    }


# ---- TensorRT ----
def _tensorrt(manifest: dict, out_dir: Path, cfg: DictConfig) -> None:
    """Build and check one engine per graph; TensorRTUnavailable leaves the ONNX outputs as they are."""
    trt_cfg = cfg.tensorrt
    tensorrt.require()
    precision = trt_cfg.precision
    profiles = axes.profiles(OmegaConf.to_container(trt_cfg.profiles, resolve=True) or {})
    failures = []
    for name, graph in manifest["graphs"].items():
        variant = graph["variants"][precision]
        engine = out_dir / f"{name}.engine"
        log.info("building TensorRT engine %s from %s", engine.name, variant["file"])
        record = tensorrt.build_engine(out_dir / variant["file"], engine,
                                       tensorrt.profile_shapes(variant["signature"]["inputs"], profiles),
                                       int(trt_cfg.workspace_gb * 2**30), out_dir / trt_cfg.timing_cache)
        record["variant"] = precision
        record["parity"] = tensorrt.verify_engine(
            engine, out_dir / "golden" / variant["golden"]["npz"], float(cfg.parity[f"{precision}_rtol"]),
            cfg.parity.topk_agreement, trt_cfg.latency_runs)
        graph["tensorrt"] = record
        if not record["parity"]["passed"]:
            failures.append(f"engine {engine.name}: max rel error {record['parity']['max_rel_error']:.3g}, "
                            f"top-K agreement {record['parity']['topk_agreement']}")
    manifest["passed"] = not failures
    _write_manifest(out_dir, manifest)
    if failures:
        raise ExportError("TensorRT engines disagree with eager PyTorch: " + "; ".join(failures))


def _triton(manifest: dict, out_dir: Path, cfg: DictConfig) -> None:
    repo = Path(cfg.triton.repository) if cfg.triton.get("repository") else out_dir / "triton"
    prefix = cfg.triton.get("prefix") or manifest["model"].rsplit(".", 1)[-1].lower()
    models = triton.write_repository(out_dir, manifest, repo, prefix, cfg.triton.max_batch_size,
                                     cfg.triton.instances, cfg.triton.kind, cfg.triton.max_queue_delay_us)
    manifest["triton"] = {"repository": str(repo), "models": models}
    _write_manifest(out_dir, manifest)


# ---- manifest ----
def _manifest_header(cfg: DictConfig, ckpt: dict, ckpt_path: Path, net: torch.nn.Module) -> dict:
    import onnxruntime  # noqa: PLC0415  (the `export` extra)

    return {
        "format": "genrec-export/1",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": net.export_config()["_target_"],
        "net_config": net.export_config(),
        "checkpoint": {"path": str(ckpt_path.resolve()), "sha256": _sha256(ckpt_path),
                       "epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step")},
        "opset": cfg.opset,
        "precisions": ["fp32", "fp16"] if cfg.fp16 else ["fp32"],
        "export_config": OmegaConf.to_container(cfg, resolve=True),
        "parity": {
            "definition": "max_rel = max|exported - eager| / max|eager| per output over finite entries "
                          "(-inf masks must coincide, integer outputs equal); top-K agreement = share of "
                          "ranks with the eager item or a score tied within the tolerance",
            "seed": cfg.parity.seed, "shapes": OmegaConf.to_container(cfg.parity.shapes, resolve=True),
            "fp32_rtol": cfg.parity.fp32_rtol, "fp16_rtol": cfg.parity.fp16_rtol,
            "min_topk_agreement": cfg.parity.topk_agreement,
        },
        "tensorrt_ops": {"source": tensorrt_ops.SOURCE, "version": tensorrt_ops.TENSORRT_VERSION},
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__, "python": platform.python_version()},
        "notes": [],
        "graphs": {},
    }


def _write_manifest(out_dir: Path, manifest: dict) -> None:
    (out_dir / "manifest.json").write_text(parity.to_json(manifest) + "\n")


def _summary(out_dir: Path, manifest: dict) -> dict:
    worst: dict[str, float] = {}
    for graph in manifest["graphs"].values():
        for precision, variant in graph["variants"].items():
            worst[precision] = max(worst.get(precision, 0.0), variant["parity"]["max_rel_error"])
    return {"export_dir": str(out_dir), "graphs": list(manifest["graphs"]), "passed": manifest["passed"],
            **{f"max_rel_error/{p}": v for p, v in worst.items()}}
