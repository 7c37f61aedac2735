"""Parameter and memory report of any nn.Module, counted from the module itself.

Parameters per component: each top-level child is one row, except that a container (ModuleList /
ModuleDict: `blocks.0`, `blocks.1`, ...) and a child holding both its own parameters and
parameterised sub-modules (the feature path: its projection `features`, its MLP `features.mlp`)
are split one level deeper. A tensor shared by two names (tied weights) counts once, under the
first. Memory = parameters x bytes per value (FP32 4, FP16 2, INT8 1; weights only: no buffers,
activations or optimiser state). KV-cache bytes per user at a length: only for a module that says
how (`kv_cache_bytes(length, dtype_bytes)`); for the generative model layers x 2 x length x D x bytes.

CLI: python -m genrec.models.size_report --model generative_large --n-items 3416 --length 512
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

from genrec.rank_zero_log import get_logger

log = get_logger(__name__)

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "model"
MIB = 2**20


def _split(child: nn.Module) -> bool:
    """Whether a top-level child gets one row per sub-module instead of one row."""
    if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
        return True
    own = any(True for _ in child.parameters(recurse=False))
    return own and any(any(True for _ in c.parameters()) for c in child.children())


def component_of(name: str, module: nn.Module) -> str:
    """'blocks.2.attn.qkv.weight' -> 'blocks.2'; 'item_emb.weight' -> 'item_emb'; a parameter
    registered on the module itself keeps its own name."""
    parts = name.split(".")
    if len(parts) == 1:
        return name
    child = module.get_submodule(parts[0])
    if len(parts) > 2 and _split(child):
        return ".".join(parts[:2])
    return parts[0]


def parameter_counts(module: nn.Module) -> dict[str, int]:
    """component -> number of parameters (each tensor counted once), in registration order."""
    counts: dict[str, int] = {}
    for name, p in module.named_parameters():  # deduplicated: a tied tensor appears once
        key = component_of(name, module)
        counts[key] = counts.get(key, 0) + p.numel()
    return counts


def size_report(module: nn.Module, length: int | None = None) -> dict:
    """{"components": {name: params}, "total_parameters", "trainable_parameters",
    "parameter_bytes": {fp32, fp16, int8}, "kv_cache": None | {"length", "bytes_per_user": {...}},
    "labels": {name: description}}."""
    counts = parameter_counts(module)
    total = sum(counts.values())
    report = {
        "components": counts,
        "total_parameters": total,
        "trainable_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "parameter_bytes": {k: total * b for k, b in DTYPE_BYTES.items()},
        "kv_cache": None,
        # optional row names a module gives (`component_labels`: attribute path -> description)
        "labels": {k: v for k, v in getattr(module, "component_labels", {}).items() if k in counts},
    }
    kv_bytes = getattr(module, "kv_cache_bytes", None)
    if length is not None and callable(kv_bytes):
        report["kv_cache"] = {"length": length,
                              "bytes_per_user": {k: kv_bytes(length, b) for k, b in DTYPE_BYTES.items()}}
    return report


def _rows(report: dict) -> list[tuple[str, str, str]]:
    """(label, parameters, share or size) rows shared by the rich and the plain table."""
    total, labels = report["total_parameters"], report.get("labels", {})
    rows = [(f"{name}: {labels[name]}" if name in labels else name, f"{n:,}",
             f"{100 * n / max(total, 1):.1f}%") for name, n in report["components"].items()]
    rows.append(("total", f"{total:,}", "100.0%"))
    for kind, nbytes in report["parameter_bytes"].items():
        rows.append((f"weights {kind.upper()}", "", f"{nbytes / MIB:,.2f} MiB"))
    if report["kv_cache"] is not None:
        length = report["kv_cache"]["length"]
        for kind, nbytes in report["kv_cache"]["bytes_per_user"].items():
            rows.append((f"KV cache / user @ {length} {kind.upper()}", "", f"{nbytes / MIB:,.3f} MiB"))
    return rows


def format_plain(report: dict, title: str = "model size") -> str:
    """The report as aligned plain text (for logs)."""
    rows = [("component", "parameters", "share / memory"), *_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [title] + [f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows]
    return "\n".join(lines)


def rich_table(report: dict, title: str = "model size"):
    """The report as a rich Table."""
    from rich.table import Table  # noqa: PLC0415  (only the CLI renders with rich)

    table = Table(title=title)
    table.add_column("component")
    table.add_column("parameters", justify="right")
    table.add_column("share / memory", justify="right")
    for row in _rows(report):
        table.add_row(*row)
    return table


def log_size_report(module: nn.Module, length: int | None = None, title: str = "model size") -> dict:
    """Log the report (rank 0) as plain text, e.g. at train start; returns it."""
    report = size_report(module, length)
    log.info("%s", format_plain(report, title))
    return report


def build_model(name: str, n_items: int, length: int, conf_dir: Path = CONF_DIR, **fields) -> nn.Module:
    """conf/model/<name>.yaml composed with OmegaConf, with the data-side interpolations supplied
    (data.maxlen = length, data.num_features = fields' num_features or 16), then instantiated with
    n_items and `fields` (what a data module's model_kwargs() would pass)."""
    from hydra.utils import instantiate  # noqa: PLC0415
    from omegaconf import OmegaConf  # noqa: PLC0415

    path = conf_dir / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"--model {name}: no {path}")
    root = OmegaConf.create({"data": {"maxlen": length, "num_features": fields.get("num_features", 16)}})
    root.model = OmegaConf.load(path)
    model_cfg = OmegaConf.to_container(root.model, resolve=True)
    return instantiate(model_cfg, n_items=n_items, **fields)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="generative", help="a conf/model/<name>.yaml")
    parser.add_argument("--n-items", type=int, required=True)
    parser.add_argument("--length", type=int, default=512, help="KV-cache length per user")
    parser.add_argument("--num-features", type=int, default=None, help="override the yaml's")
    parser.add_argument("--heads", default="", help="binary heads, comma-separated (as the data gives)")
    parser.add_argument("--regression-heads", default="", help="regression heads, comma-separated")
    args = parser.parse_args(argv)
    fields = {k: [h for h in v.split(",") if h] for k, v in
              (("heads", args.heads), ("regression_heads", args.regression_heads)) if v}
    if args.num_features is not None:
        fields["num_features"] = args.num_features
    model = build_model(args.model, args.n_items, args.length, **fields)
    report = size_report(model, args.length)
    from rich.console import Console  # noqa: PLC0415

    Console().print(rich_table(report, title=f"{args.model} (n_items={args.n_items})"))
    return report


if __name__ == "__main__":
    main()
