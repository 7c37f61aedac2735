"""Exported graph vs eager PyTorch on fresh random inputs at several shapes, and the golden files.

Errors, per output and over finite entries (masked scores are -inf in both and must coincide):
    max_abs = max |exported - eager|,  max_rel = max_abs / max |eager|
(relative to the output's scale, so near-zero entries do not blow it up). Integer outputs must be
equal. Top-K agreement: the share of ranks where the exported graph picks the eager item, or an
item whose score ties with it within the tolerance (a tie may be broken either way).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from genrec.export.axes import get_axis
from genrec.export.graphs import GraphSpec

TOP_ITEMS, TOP_SCORES = "top_items", "top_scores"


class ParityError(AssertionError):
    """An exported graph disagrees with eager PyTorch beyond its tolerance."""


@dataclass
class Case:
    """One parity shape: sizes per axis, inputs (as the graph takes them) and eager outputs."""

    sizes: dict[str, int]
    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]


def graph_shapes(spec: GraphSpec, shapes: list[dict[str, int]]) -> list[dict[str, int]]:
    """The configured shapes restricted to this graph's axes, deduplicated; each axis must take
    at least two values (and 0 when the axis registry allows it, e.g. `past`), else the check
    proves little."""
    out: list[dict[str, int]] = []
    for sizes in shapes:
        missing = [a for a in spec.axes if a not in sizes]
        if missing:
            raise ValueError(f"parity.shapes entry {sizes} gives no size for axis {missing} of graph "
                             f"{spec.name}: add it to every entry")
        picked = {a: int(sizes[a]) for a in spec.axes}
        if picked not in out:
            out.append(picked)
    for axis in spec.axes:
        values = {s[axis] for s in out}
        zero = get_axis(axis).min_size == 0
        if len(values) < 2 or (zero and 0 not in values):
            raise ValueError(f"parity.shapes gives axis '{axis}' of graph {spec.name} the values "
                             f"{sorted(values)}: need two or more{', including 0' if zero else ''}")
    return out


def make_cases(spec: GraphSpec, shapes: list[dict[str, int]], seed: int) -> list[Case]:
    """Fresh random valid inputs at each shape, with the eager outputs."""
    cases = []
    for i, sizes in enumerate(graph_shapes(spec, shapes)):
        feeds = spec.example(sizes, seed=seed + i)
        with torch.no_grad():
            outs = spec.module(*feeds.values())
        cases.append(Case(sizes, {k: v.numpy() for k, v in feeds.items()},
                          {k: v.numpy() for k, v in zip(spec.outputs, outs, strict=True)}))
    return cases


def cast_inputs(inputs: dict[str, np.ndarray], model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Inputs in the dtypes the graph declares (the FP16 variant takes its K/V cache in FP16)."""
    dtypes = {v.name: onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
              for v in model.graph.input}
    return {k: v.astype(dtypes[k], copy=False) for k, v in inputs.items()}


def ort_session(path: str | Path, threads: int = 0):
    """An onnxruntime session: CUDA when this onnxruntime has it, else the CPU."""
    import onnxruntime as ort  # noqa: PLC0415  (optional: the `export` extra)

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return ort.InferenceSession(str(path), opts, providers=providers)


def compare(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """{output: {max_abs, max_rel}} for float outputs, {mismatches} for integer ones; a mismatch
    of -inf/NaN positions counts as infinite error."""
    errors = {}
    for name, ref in expected.items():
        out = np.asarray(got[name])
        if out.shape != ref.shape:
            raise ParityError(f"output {name}: shape {out.shape}, expected {ref.shape}")
        if not np.issubdtype(ref.dtype, np.floating):  # ids: judged by equality (top-K by agreement)
            errors[name] = {"mismatches": int((out != ref).sum())}
            continue
        ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
        finite = np.isfinite(ref64)
        same_masks = np.array_equal(finite, np.isfinite(out64))
        if not same_masks or not np.array_equal(ref64[~finite], out64[~finite]):
            errors[name] = {"max_abs": float("inf"), "max_rel": float("inf")}
            continue
        diff = np.abs(ref64[finite] - out64[finite])
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(ref64[finite]).max()) if diff.size else 0.0
        errors[name] = {"max_abs": max_abs, "max_rel": max_abs / scale if scale else max_abs}
    return errors


def topk_agreement(expected: dict[str, np.ndarray], got: dict[str, np.ndarray], rtol: float) -> dict | None:
    """{agreement, exact_overlap} over every row and rank, or None for a graph without top-K."""
    if TOP_ITEMS not in expected:
        return None
    ref_items, out_items = expected[TOP_ITEMS], np.asarray(got[TOP_ITEMS])
    if ref_items.size == 0:
        return {"agreement": 1.0, "exact_overlap": 1.0}
    ref_scores, out_scores = expected[TOP_SCORES].astype(np.float64), np.asarray(got[TOP_SCORES], np.float64)
    finite = ref_scores[np.isfinite(ref_scores)]
    tol = rtol * (float(np.abs(finite).max()) if finite.size else 1.0)
    with np.errstate(invalid="ignore"):
        tied = np.abs(ref_scores - out_scores) <= tol
    same = (ref_items == out_items) | tied  # [B, K]
    overlap = np.mean([len(set(r) & set(o)) / len(r) for r, o in zip(ref_items, out_items, strict=True)])
    return {"agreement": float(same.mean()), "exact_overlap": float(overlap)}


def check(cases: list[Case], run, rtol: float, min_agreement: float,
          model: onnx.ModelProto | None = None) -> dict:
    """Run every case through `run(inputs) -> {output: array}`; the manifest's parity record.

    `passed` is False when any output's max_rel exceeds rtol or the top-K agreement falls
    below min_agreement; the caller decides whether that stops the export.
    """
    per_shape, worst, agree = [], {}, []
    for case in cases:
        feeds = cast_inputs(case.inputs, model) if model is not None else case.inputs
        got = run(feeds)
        errors = compare(case.expected, got)
        top = topk_agreement(case.expected, got, rtol)
        per_shape.append({"sizes": case.sizes, "errors": errors, "topk": top})
        for name, err in errors.items():
            w = worst.setdefault(name, dict.fromkeys(err, 0))
            for key, value in err.items():
                w[key] = max(w[key], value)
        if top is not None:
            agree.append(top["agreement"])
    max_rel = max((w["max_rel"] for w in worst.values() if "max_rel" in w), default=0.0)
    max_abs = max((w["max_abs"] for w in worst.values() if "max_abs" in w), default=0.0)
    id_mismatches = sum(w.get("mismatches", 0) for name, w in worst.items() if name != TOP_ITEMS)
    agreement = min(agree) if agree else None
    passed = max_rel <= rtol and not id_mismatches and (agreement is None or agreement >= min_agreement)
    return {"passed": bool(passed), "rtol": rtol, "min_topk_agreement": min_agreement,
            "max_abs_error": max_abs, "max_rel_error": max_rel, "topk_agreement": agreement,
            "per_output": worst, "shapes": per_shape}


def onnx_runner(session):
    """`run(inputs) -> {output: array}` for an onnxruntime session."""
    names = [o.name for o in session.get_outputs()]
    return lambda feeds: dict(zip(names, session.run(names, feeds), strict=True))


# ---- golden files ----
def save_goldens(cases: list[Case], model: onnx.ModelProto, stem: Path) -> dict[str, str]:
    """<stem>.npz (case{i}/in/<name>, case{i}/out/<name>) and, with polygraphy installed,
    <stem>.inputs.json + <stem>.outputs.json for `polygraphy run --load-inputs/--load-outputs`."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for i, case in enumerate(cases):
        arrays |= {f"case{i}/in/{k}": v for k, v in cast_inputs(case.inputs, model).items()}
        arrays |= {f"case{i}/out/{k}": v for k, v in case.expected.items()}
    np.savez(f"{stem}.npz", **arrays)
    files = {"npz": f"{stem.name}.npz"}
    try:
        from polygraphy.comparator import IterationResult, RunResults  # noqa: PLC0415  (optional)
        from polygraphy.json import save_json  # noqa: PLC0415
        from polygraphy.logger import G_LOGGER  # noqa: PLC0415
    except ImportError:
        return files
    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        save_json([cast_inputs(c.inputs, model) for c in cases], f"{stem}.inputs.json")
        results = RunResults()
        results.append(("pytorch-eager", [IterationResult(dict(c.expected), runner_name="pytorch-eager")
                                          for c in cases]))
        results.save(f"{stem}.outputs.json")
    return files | {"polygraphy_inputs": f"{stem.name}.inputs.json",
                     "polygraphy_outputs": f"{stem.name}.outputs.json"}


def load_goldens(path: str | Path) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """[(inputs, expected outputs)] per case, from a golden .npz."""
    data = np.load(path)
    cases: dict[int, tuple[dict, dict]] = {}
    for key in data.files:
        case, kind, name = key.split("/", 2)
        ins, outs = cases.setdefault(int(case.removeprefix("case")), ({}, {}))
        (ins if kind == "in" else outs)[name] = data[key]
    return [cases[i] for i in sorted(cases)]


def to_json(obj) -> str:
    """JSON with inf written as a string (the manifest stays valid JSON)."""

    def clean(x):
        if isinstance(x, float) and not np.isfinite(x):
            return str(x)
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(obj), indent=2)
