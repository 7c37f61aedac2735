"""The FP16 variant of an exported graph: FP16 compute, and FP32 where the GraphSpec's
`FP32Boundary` says (ops, modules, everything after a module, outputs), by explicit Casts in
the ONNX graph, so TensorRT's strongly typed mode reads every tensor's precision from the file.
"""

from __future__ import annotations

import ast
from collections import deque

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from genrec.export.graphs import FP32Boundary

FP16_MAX = float(np.finfo(np.float16).max)


def to_fp16(model: onnx.ModelProto, boundary: FP32Boundary) -> onnx.ModelProto:
    """The graph with FP16 compute, except what `boundary` (the GraphSpec's `fp32`) names, kept
    FP32 by explicit Casts.

    Its `ops` are LayerNormalization, Softmax and the numerically touchy reductions and
    exponentials (mHC's RMS norm and Sinkhorn iterations run them; SASRec has none); scatters
    that accumulate count as reductions. Its modules are found by the exporter's name scopes
    (node metadata, which genrec/export/onnx.py keeps): `modules` are FP32 themselves, `after`
    also everything computed from them (for a scorer: the final norm, the dot products with the
    item table and the top-K). A float graph input or output takes the precision of the nodes
    that use or make it, so the K/V cache travels in FP16 and scores in FP32. Built for
    TensorRT's strongly typed mode, where the precision of every tensor is read from the graph.
    """
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = model.graph
    nodes = list(graph.node)  # indices below are positions in this (topological) order
    types = _elem_types(graph)
    consumers = _consumers(nodes)
    fp32 = _fp32_nodes(nodes, consumers, boundary)
    # initializers and Constant nodes stay FP32 when an FP32 node reads them, else become FP16
    keep32 = {name for name, readers in consumers.items() if any(i in fp32 for i in readers)}
    for i, node in enumerate(nodes):
        if node.op_type == "Constant":
            (fp32.add if node.output[0] in keep32 else fp32.discard)(i)
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in keep32:
            init.CopyFrom(_tensor_to_fp16(init))
    precision = _tensor_precision(graph, nodes, types, fp32, keep32, consumers)
    new_nodes, casts = [], {}
    for i, node in enumerate(nodes):
        want = TensorProto.FLOAT if i in fp32 else TensorProto.FLOAT16
        if want == TensorProto.FLOAT16:
            _attributes_to_fp16(node)
        if node.op_type not in ANY_TYPE_OPS:
            for j, name in enumerate(node.input):
                if types.get(name) == TensorProto.FLOAT and precision[name] != want:
                    node.input[j] = _cast(name, want, casts, new_nodes)
        new_nodes.append(node)
    for value in (*graph.input, *graph.output):
        if types.get(value.name) == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = precision[value.name]
    new_nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in new_nodes]
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    _check_outputs(model, boundary)
    return model


ANY_TYPE_OPS = ("Shape", "Size", "Cast")  # read any element type: no Cast needed in front


def _elem_types(graph: onnx.GraphProto) -> dict[str, int]:
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def _consumers(nodes: list[onnx.NodeProto]) -> dict[str, list[int]]:
    """tensor name -> indices of the nodes that read it."""
    out: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            out.setdefault(name, []).append(i)
    return out


def _fp32_nodes(nodes: list[onnx.NodeProto], consumers: dict[str, list[int]],
                boundary: FP32Boundary) -> set[int]:
    """Indices of the nodes that compute in FP32: the boundary's ops, modules, everything from its
    `after` modules on, and the producers of its outputs."""
    keep = {i for i, n in enumerate(nodes) if n.op_type in boundary.ops or _accumulates(n)}
    scopes = [_scopes(n) for n in nodes]
    for path in (*boundary.modules, *boundary.after):
        if not any(path in s for s in scopes):
            raise ValueError(f"FP32 boundary names module {path!r}, which no node of the graph comes from "
                             "(renamed? or the graph lost the exporter's name-scope metadata)")
    keep |= {i for i, s in enumerate(scopes) if any(p in s for p in boundary.modules)}
    after = {i for i, s in enumerate(scopes) if any(p in s for p in boundary.after)}
    queue = deque(name for i in after for name in nodes[i].output)
    while queue:  # every node computed from an `after` module
        for i in consumers.get(queue.popleft(), []):
            if i not in after:
                after.add(i)
                queue.extend(nodes[i].output)
    keep |= after
    producers = {name: i for i, n in enumerate(nodes) for name in n.output}
    return keep | {producers[o] for o in boundary.outputs if o in producers}


def _scopes(node: onnx.NodeProto) -> tuple[str, ...]:
    """The module paths a node was traced inside (torch's dynamo exporter metadata)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            return tuple(ast.literal_eval(prop.value))
    return ()


def _check_outputs(model: onnx.ModelProto, boundary: FP32Boundary) -> None:
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.output}
    wrong = [o for o in boundary.outputs if types.get(o) != TensorProto.FLOAT]
    if wrong:
        raise ValueError(f"FP16 variant: outputs {wrong} must be float32 by the graph's FP32 boundary")


def _accumulates(node: onnx.NodeProto) -> bool:
    """A scatter that adds or multiplies into its target (TiSASRec's per-bucket sums): FP32 like
    the reductions (and onnxruntime's CPU kernels take no float16 there)."""
    return node.op_type in ("ScatterElements", "ScatterND") and any(
        a.name == "reduction" and a.s not in (b"", b"none") for a in node.attribute)


def _tensor_precision(graph, nodes, types, fp32, keep32, consumers) -> dict[str, int]:
    """The element type every float tensor has in the FP16 graph (others keep theirs)."""
    precision = dict(types)
    for value in graph.input:  # an input read by an FP32 node stays FP32
        if types.get(value.name) == TensorProto.FLOAT:
            readers = [i for i in consumers.get(value.name, []) if nodes[i].op_type not in ANY_TYPE_OPS]
            reads32 = any(i in fp32 for i in readers)
            precision[value.name] = TensorProto.FLOAT if reads32 else TensorProto.FLOAT16
    for init in graph.initializer:
        if types.get(init.name) == TensorProto.FLOAT:
            precision[init.name] = TensorProto.FLOAT if init.name in keep32 else TensorProto.FLOAT16
    for i, node in enumerate(nodes):
        for name in node.output:
            if types.get(name) == TensorProto.FLOAT:
                precision[name] = TensorProto.FLOAT if i in fp32 else TensorProto.FLOAT16
    return precision


def _cast(name: str, to: int, casts: dict, new_nodes: list) -> str:
    key = (name, to)
    if key not in casts:
        out = f"{name}_to_{'fp32' if to == TensorProto.FLOAT else 'fp16'}"
        new_nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"cast_{out}"))
        casts[key] = out
    return casts[key]


def _tensor_to_fp16(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """Finite values clipped to the FP16 range (a -3.4e38 mask stays a large finite negative)."""
    values = numpy_helper.to_array(tensor)
    finite = np.isfinite(values)
    values = np.where(finite, np.clip(values, -FP16_MAX, FP16_MAX), values).astype(np.float16)
    return numpy_helper.from_array(values, tensor.name)


def _attributes_to_fp16(node: onnx.NodeProto) -> None:
    """Cast(to=float) -> float16; float tensor attributes (Constant, ConstantOfShape) -> float16."""
    if node.op_type == "ConstantOfShape" and not any(a.name == "value" for a in node.attribute):
        # without `value` it makes float32 zeros
        zero = numpy_helper.from_array(np.zeros(1, np.float16))
        node.attribute.append(helper.make_attribute("value", zero))
    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
            attr.i = TensorProto.FLOAT16
        elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
            attr.t.CopyFrom(_tensor_to_fp16(attr.t))
        elif node.op_type == "Constant" and attr.name == "value_float":
            raise NotImplementedError("Constant value_float in an FP16 region")
