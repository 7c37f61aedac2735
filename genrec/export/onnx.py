"""GraphSpec -> ONNX file, and what the manifest says about a graph (the FP16 variant: fp16.py).

Export uses the dynamo exporter (`torch.onnx.export(dynamo=True, dynamic_shapes=...)`) at a
pinned opset with the weights inside the file; the legacy exporter bakes attention shapes in.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper

from genrec.export.graphs import GraphSpec

EXPORTER_MIN_OPSET = 18  # torch's dynamo exporter writes 18+ and converts down itself


def export_onnx(spec: GraphSpec, path: str | Path, opset: int = 17) -> onnx.ModelProto:
    """Trace spec.module at its example inputs with symbolic axes; write one self-contained file."""
    example = spec.example()
    dims = {a: torch.export.Dim(a, min=0 if a == "past" else 1) for a in spec.axes}
    dynamic = {name: {d: dims[a] for d, a in spec.dynamic_axes[name].items()} if name in spec.dynamic_axes
               else None for name in spec.inputs}
    with _quiet_exporter(), torch.no_grad():
        # as torch.onnx captures: sizes 0/1 stay symbolic, shape checks become runtime asserts
        with torch.fx.experimental._config.patch(backed_size_oblivious=True):
            program = torch.export.export(spec.module.eval(), tuple(example.values()), dynamic_shapes=dynamic,
                                          strict=False, prefer_deferred_runtime_asserts_over_guards=True)
        program = program.run_decompositions(DECOMPOSITIONS)  # only these ops; the exporter does the rest
        torch.onnx.export(program, tuple(example.values()), str(path), dynamo=True,
                          input_names=list(spec.inputs), output_names=list(spec.outputs),
                          opset_version=max(opset, EXPORTER_MIN_OPSET), external_data=False)
    model = _name_axes(onnx.load(str(path)), spec)
    if _opset(model) != opset:
        # the exporter writes 18+; its own down-conversion gives up on some graphs (mHC's
        # Reduce*) while converting the optimised graph afterwards succeeds
        converted = _drop_reduce_noop_attribute(onnx.version_converter.convert_version(model, opset))
        if _opset(converted) != opset:
            raise RuntimeError(f"{path}: could not convert the graph to the pinned opset {opset}")
        model = _keep_node_metadata(model, converted)
    onnx.save(model, str(path))
    onnx.checker.check_model(model, full_check=True)
    return model


def _name_axes(model: onnx.ModelProto, spec: GraphSpec) -> onnx.ModelProto:
    """The exporter names symbolic sizes s0, s1, ...; use the spec's axis names everywhere
    (outputs read e.g. `past + 1`)."""
    rename = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        for d, axis in spec.dynamic_axes.get(value.name, {}).items():
            if dims[d].dim_param:
                rename[dims[d].dim_param] = axis
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, rename)) + r")\b") if rename else None
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if pattern and dim.dim_param:
                dim.dim_param = pattern.sub(lambda m: rename[m.group(1)], dim.dim_param)
    return model


def _cumulative(x: torch.Tensor, dim: int, pick_min: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """cummin / cummax as a masked [..., T, T] reduction (T^2 work, fine for T <= a few hundred).

    Ties go to the latest index, as torch's kernels do."""
    x = x.movedim(dim, -1)  # [..., T]
    t = x.shape[-1]
    seen = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()  # [T(i), T(j)]: j <= i
    rows = x.unsqueeze(-2).expand(*x.shape[:-1], t, t)  # [..., i, j] = x[..., j]
    if x.dtype.is_floating_point:
        fill = torch.finfo(x.dtype).max if pick_min else torch.finfo(x.dtype).min
    else:
        fill = torch.iinfo(x.dtype).max if pick_min else torch.iinfo(x.dtype).min
    rows = rows.masked_fill(~seen, fill)
    values = rows.amin(-1) if pick_min else rows.amax(-1)  # [..., T]
    j = torch.arange(t, device=x.device)
    hit = (rows == values.unsqueeze(-1)) & seen  # [..., i, j]
    indices = (hit * j).amax(-1)  # latest j reaching the extreme
    return values.movedim(-1, dim), indices.movedim(-1, dim)


# aten ops without an ONNX translation in torch's exporter, decomposed before it runs
DECOMPOSITIONS = {
    torch.ops.aten.cummin.default: lambda x, dim: _cumulative(x, dim, pick_min=True),
    torch.ops.aten.cummax.default: lambda x, dim: _cumulative(x, dim, pick_min=False),
}


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter prints its progress and version-conversion notes; keep them out of our logs."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _drop_reduce_noop_attribute(model: onnx.ModelProto) -> onnx.ModelProto:
    """The converter (onnx 1.23) leaves `noop_with_empty_axes` on Reduce* below opset 18, where
    only ReduceSum has it; at its default 0 it means what the attribute-less op does."""
    for node in model.graph.node:
        if node.op_type.startswith("Reduce") and node.op_type != "ReduceSum":
            kept = [a for a in node.attribute if a.name != "noop_with_empty_axes"]
            if any(a.name == "noop_with_empty_axes" and a.i for a in node.attribute):
                raise RuntimeError(f"{node.name}: noop_with_empty_axes=1 has no opset-17 form")
            del node.attribute[:]
            node.attribute.extend(kept)
    return model


def _keep_node_metadata(source: onnx.ModelProto, converted: onnx.ModelProto) -> onnx.ModelProto:
    """The version converter drops node metadata; copy it back by node name (names survive). The
    FP16 rewrite finds a GraphSpec's FP32 modules by the exporter's `pkg.torch.onnx.name_scopes`."""
    meta = {n.name: list(n.metadata_props) for n in source.graph.node if n.name}
    for node in converted.graph.node:
        if node.name in meta and not node.metadata_props:
            node.metadata_props.extend(meta[node.name])
    return converted


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


# ---- what the manifest records ----
def signature(model: onnx.ModelProto) -> dict:
    """Inputs and outputs: name, dtype, shape with axis names for the dynamic dimensions."""

    def describe(value: onnx.ValueInfoProto) -> dict:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        return {"name": value.name, "dtype": np.dtype(dtype).name, "shape": dims}

    return {"inputs": [describe(v) for v in model.graph.input],
            "outputs": [describe(v) for v in model.graph.output]}


def dynamic_axes(model: onnx.ModelProto) -> dict[str, dict[int, str]]:
    """Tensor name -> {dim: symbolic size} for every input and output with symbolic dimensions."""
    out = {}
    for value in (*model.graph.input, *model.graph.output):
        dims = {i: d.dim_param for i, d in enumerate(value.type.tensor_type.shape.dim) if d.dim_param}
        if dims:
            out[value.name] = dims
    return out
