"""ONNX -> TensorRT engine (TensorRT 10 and 11 Python APIs), its check on the golden inputs, and
the supported-operator check that runs everywhere.

Precision comes from the graph: the FP16 ONNX variant (genrec/export/fp16.py `to_fp16`) is built
as a strongly typed network, which TensorRT 11 requires (it dropped BuilderFlag.FP16) and 10.x
supports. `tensorrt` is imported lazily: without it, or without a CUDA GPU, `require()` raises
TensorRTUnavailable with one sentence and nothing else in this module is reached.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import torch

from genrec.export import tensorrt_ops
from genrec.export.parity import TOP_ITEMS, compare, load_goldens, topk_agreement


class TensorRTUnavailable(RuntimeError):
    """No tensorrt package or no CUDA GPU here: the ONNX outputs are complete, the engines are not."""


class UnsupportedOpError(ValueError):
    """A graph uses an operator (or a form of one) that TensorRT's ONNX parser rejects."""


# ---- the check that runs everywhere ----
def unsupported(model: onnx.ModelProto) -> list[str]:
    """Every reason TensorRT's parser would reject this graph, by our data (tensorrt_ops.py)."""
    lo, hi = tensorrt_ops.OPSET_RANGE
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    problems = [] if lo <= opset <= hi else [f"opset {opset} outside TensorRT's {lo}-{hi}"]
    constants = {t.name: t for t in model.graph.initializer}
    for node in _all_nodes(model.graph):
        if node.op_type == "Constant":
            constants[node.output[0]] = next((a.t for a in node.attribute if a.name == "value"), None)
    used = {name for node in _all_nodes(model.graph) for name in node.input}
    for node in _all_nodes(model.graph):
        where = f"{node.op_type} ({node.name or 'unnamed'})"
        if node.domain not in ("", "ai.onnx") or node.op_type not in tensorrt_ops.OPS:
            domain = f"{node.domain}::" if node.domain not in ("", "ai.onnx") else ""
            version = tensorrt_ops.TENSORRT_VERSION
            problems.append(f"{domain}{where}: not in TensorRT {version}'s ONNX operators")
        elif node.op_type.startswith("Reduce") and len(node.input) > 1 and node.input[1] not in constants:
            problems.append(f"{where}: axes must be a constant")
        elif node.op_type == "LayerNormalization" and any(o in used for o in node.output[1:] if o):
            problems.append(f"{where}: only output Y is supported")
        elif node.op_type == "TopK" and node.input[1] in constants:
            k = int(onnx.numpy_helper.to_array(constants[node.input[1]]).reshape(-1)[0])
            if k >= tensorrt_ops.TOPK_MAX_K:
                problems.append(f"{where}: K={k}, TensorRT needs K < {tensorrt_ops.TOPK_MAX_K}")
    return problems


def check_ops(model: onnx.ModelProto, name: str) -> None:
    """Raise UnsupportedOpError listing every problem of `unsupported(model)`."""
    problems = unsupported(model)
    if problems:
        raise UnsupportedOpError(f"graph {name} would not build in TensorRT ({tensorrt_ops.SOURCE}): "
                                 + "; ".join(problems))


def _all_nodes(graph: onnx.GraphProto):
    """Nodes of the graph and of every subgraph (If / Loop / Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _all_nodes(sub)


# ---- build ----
def require():
    """The tensorrt module, when it and a CUDA GPU are both here."""
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("target=tensorrt needs a CUDA GPU and this machine has none, so no "
                                  "engine was built (the ONNX graphs, goldens and manifest are complete).")
    try:
        import tensorrt as trt  # noqa: PLC0415  (GPU hosts only)
    except (ImportError, OSError) as err:
        raise TensorRTUnavailable(
            f"target=tensorrt needs the tensorrt package (pip install 'tensorrt>=10,<12'), which does not "
            f"import here ({err}), so no engine was built (the ONNX graphs, goldens and manifest are "
            "complete).") from err
    return trt


def profile_shapes(inputs: list[dict], profiles: dict[str, list[int]]) -> dict[str, list[list[int]]]:
    """{input: [min, opt, max] shapes} from the manifest signature, one (min, opt, max) per axis name."""
    out = {}
    for value in inputs:
        dims = [[d, d, d] if isinstance(d, int) else list(profiles[d]) for d in value["shape"]]
        out[value["name"]] = [[d[i] for d in dims] for i in range(3)]
    return out


def build_engine(onnx_path: Path, engine_path: Path, shapes: dict[str, list[list[int]]],
                 workspace_bytes: int, timing_cache: Path) -> dict:
    """Parse, build strongly typed with one optimization profile, serialise; the manifest record."""
    trt = require()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # STRONGLY_TYPED exists since 10.0 and is the only mode (a no-op flag) in 11
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        raise UnsupportedOpError(f"{onnx_path.name}: TensorRT's parser failed: " + "; ".join(
            f"{e.node_operator()} {e.node_name()}: {e.desc()}" for e in errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
    config.set_timing_cache(cache, False)  # ignore_mismatch=False: a cache from another GPU is refused
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    if config.add_optimization_profile(profile) < 0:
        raise ValueError(f"{onnx_path.name}: invalid optimization profile {shapes}")
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"{onnx_path.name}: TensorRT failed to build the engine (see its log above)")
    engine_path.write_bytes(bytes(plan))
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"engine": engine_path.name, "timing_cache": timing_cache.name, "tensorrt": trt.__version__,
            "strongly_typed": True, "profile": shapes, "workspace_bytes": workspace_bytes,
            "build_seconds": round(time.perf_counter() - start, 1),
            "device": torch.cuda.get_device_name()}


# ---- run ----
class EngineRunner:
    """Runs a serialised engine on CUDA torch tensors (execute_async_v3, TRT 10 and 11)."""

    def __init__(self, engine_path: Path) -> None:
        trt = self.trt = require()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)  # must outlive the engine
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{engine_path}: TensorRT could not load the engine (other GPU or version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.stream = torch.cuda.Stream()
        self.dummy = torch.zeros(64, dtype=torch.uint8, device="cuda")  # address for empty inputs

    def torch_dtype(self, name: str) -> torch.dtype:
        pairs = (("float32", torch.float32), ("float16", torch.float16), ("bfloat16", torch.bfloat16),
                 ("int32", torch.int32), ("int64", torch.int64), ("int8", torch.int8), ("bool", torch.bool))
        table = {getattr(self.trt, n): t for n, t in pairs if hasattr(self.trt, n)}
        return table[self.engine.get_tensor_dtype(name)]

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keep = {}
        for name in self.inputs:
            t = keep[name] = feeds[name].to("cuda", self.torch_dtype(name)).contiguous()
            if not self.context.set_input_shape(name, tuple(t.shape)):
                raise ValueError(f"input {name}: shape {tuple(t.shape)} is outside the engine's profile")
            self.context.set_tensor_address(name, t.data_ptr() if t.numel() else self.dummy.data_ptr())
        outs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=self.torch_dtype(name), device="cuda")
            self.context.set_tensor_address(name, outs[name].data_ptr() if outs[name].numel()
                                            else self.dummy.data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        self.stream.synchronize()
        return outs


def verify_engine(engine_path: Path, golden_npz: Path, rtol: float, min_agreement: float,
                  runs: int = 50) -> dict:
    """The engine on the golden inputs: errors vs eager as parity.py reports them, and latency."""
    runner = EngineRunner(engine_path)
    shapes, worst_rel, agreement = [], 0.0, 1.0
    for inputs, expected in load_goldens(golden_npz):
        feeds = {k: torch.from_numpy(v) for k, v in inputs.items()}
        got = {k: v.cpu().numpy() for k, v in runner(feeds).items()}
        got = {k: got[k].astype(expected[k].dtype) for k in expected}
        errors = compare(expected, got)
        top = topk_agreement(expected, got, rtol)
        cuda = {k: v.to("cuda") for k, v in feeds.items()}
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            runner(cuda)
            times.append((time.perf_counter() - start) * 1e3)
        sizes = {k: list(v.shape) for k, v in inputs.items()}
        shapes.append({"input_shapes": sizes, "errors": errors, "topk": top,
                       "latency_ms_p50": float(np.percentile(times, 50)),
                       "latency_ms_p99": float(np.percentile(times, 99))})
        ids_differ = any(e.get("mismatches") for k, e in errors.items() if k != TOP_ITEMS)
        worst_rel = max([worst_rel, *(e["max_rel"] for e in errors.values() if "max_rel" in e),
                         float("inf") if ids_differ else 0.0])
        if top is not None:
            agreement = min(agreement, top["agreement"])
    return {"passed": bool(worst_rel <= rtol and agreement >= min_agreement), "rtol": rtol,
            "max_rel_error": worst_rel, "topk_agreement": agreement, "shapes": shapes}
