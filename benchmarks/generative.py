"""The generative recommendation model: prefill/decode latency (eager vs onnxruntime), the per-event
cost of a cached decode against recomputing the sequence, and quality runs side by side.

    python benchmarks/generative.py                          # latency + decode-vs-recompute, random weights
    python benchmarks/generative.py --record-run generative_ml1m=outputs/gen_ml1m \\
        --record-run sasrec_ml1m_ce=outputs/sasrec_ce          # add finished train.py runs (no timing made)

Latency: the default model size (conf/model/generative.yaml: embedding 128, FFN 256, 4 layers, 8
heads, 16 features; ML-1M's 3,416 items, one head) at random weights, since weights do not change
the timings. `prefill` reads `seq` events; `decode` appends one event to a cache of seq - 1. Each cell
runs --min-time seconds (at least --min-iters calls) after warm-up: p50/p99 ms and users/s (batch /
mean latency). The decode-vs-recompute ratio (batch 1, length 512, onnxruntime) alternates the two
graphs in rounds so a shared machine slows both alike (genrec.export.generative.decode_vs_recompute).
Quality: `--record-run NAME=RUN_DIR` reads a finished run's metrics.json and csv log (test
NDCG/HR@10, popularity, per-head AUC, seconds per epoch) into the JSON's `quality` block, keeping
what the JSON already holds. Writes benchmarks/results/generative.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch
from common import ROOT, epoch_log
from inference import _cpu, timed

QUALITY_KEYS = ("ndcg@10", "hr@10", "sampled/ndcg@10")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-items", type=int, default=3416)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--lengths", type=int, nargs="+", default=[50, 200, 512])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--min-time", type=float, default=1.0)
    p.add_argument("--min-iters", type=int, default=5)
    p.add_argument("--ratio-rounds", type=int, default=20)
    p.add_argument("--record-run", metavar="NAME=RUN_DIR", action="append", default=[],
                   help="add a finished train.py run (logger=csv) to the quality block; no timing is made")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "generative.json"))
    return p.parse_args()


def default_model(n_items: int) -> torch.nn.Module:
    from genrec.models.size_report import build_model  # noqa: PLC0415

    torch.manual_seed(0)
    return build_model("generative", n_items=n_items, length=512, dropout=0.0, heads=["engagement"]).eval()


def latency(net: torch.nn.Module, args: argparse.Namespace, work: Path) -> list[dict]:
    from genrec.export import parity  # noqa: PLC0415
    from genrec.export.builders import graph_specs  # noqa: PLC0415
    from genrec.export.onnx import export_onnx  # noqa: PLC0415

    rows = []
    for spec in graph_specs(net, {"generative": {"top_k": 10}}):
        path = work / f"{spec.name}.onnx"
        export_onnx(spec, path)
        session = parity.ort_session(path, threads=args.threads)
        for length in args.lengths:
            for batch in args.batches:
                feeds = spec.example({"batch": batch, "seq": length, "past": length - 1}, seed=batch)
                arrays = {k: v.numpy() for k, v in feeds.items()}
                with torch.no_grad():
                    eager = timed(lambda f=feeds, m=spec.module: m(*f.values()), args.min_time,
                                  args.min_iters)
                ort = timed(lambda a=arrays, s=session: s.run(None, a), args.min_time, args.min_iters)
                for runtime, t in (("eager", eager), ("onnxruntime", ort)):
                    rows.append({"graph": spec.name, "runtime": runtime, "batch": batch,
                                 "length": length, **t, "users_per_s": batch / t["mean_ms"] * 1e3})
                print(f"  {spec.name:8s} length {length:3d} batch {batch:2d}: eager "
                      f"{eager['p50_ms']:.2f} ms, onnxruntime {ort['p50_ms']:.2f} ms", flush=True)
    return rows


def recorded_run(run_dir: Path) -> dict:
    """A finished `python train.py ... logger=csv` run: its test figures, AUCs and timing."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    log = epoch_log(run_dir)
    epoch_s = [r["time/epoch_seconds"] for r in log if "time/epoch_seconds" in r]
    minutes = max((r["time/elapsed_minutes"] for r in log if "time/elapsed_minutes" in r), default=None)
    return {"test": {k: metrics.get(f"test/{k}") for k in QUALITY_KEYS},
            "popularity_test": {k: metrics.get(f"popularity/test/{k}") for k in QUALITY_KEYS},
            "auc": {k.removeprefix("test/auc/"): v for k, v in metrics.items() if k.startswith("test/auc/")},
            "val_best_ndcg@10": metrics.get("val/ndcg@10_best"), "epochs_run": len(epoch_s),
            "s_per_epoch": statistics.median(epoch_s) if epoch_s else None, "minutes": minutes,
            "data": metrics.get("data"), "run_dir": str(run_dir)}


def latency_table(rows: list[dict], ratio: dict | None) -> str:
    by = {(r["graph"], r["length"], r["batch"], r["runtime"]): r for r in rows}
    lines = ["| graph | length | batch | eager p50 / p99 ms | onnxruntime p50 / p99 ms | eager users/s | "
             "onnxruntime users/s |", "|---|--:|--:|--:|--:|--:|--:|"]
    for graph, length, batch in dict.fromkeys((r["graph"], r["length"], r["batch"]) for r in rows):
        e, o = by[graph, length, batch, "eager"], by[graph, length, batch, "onnxruntime"]
        lines.append(f"| {graph} | {length} | {batch} | {e['p50_ms']:.2f} / {e['p99_ms']:.2f} | "
                     f"{o['p50_ms']:.2f} / {o['p99_ms']:.2f} | {e['users_per_s']:.0f} | "
                     f"{o['users_per_s']:.0f} |")
    if ratio:
        lines += ["", f"Decode with the cache vs recomputing the sequence, length {ratio['length']}, batch "
                      f"{ratio['batch']}, onnxruntime ({ratio['threads']} thread): prefill "
                      f"{ratio['prefill_cpu_ms']:.2f} ms / decode {ratio['decode_cpu_ms']:.3f} ms CPU time = "
                      f"**{ratio['ratio_cpu']:.1f}x** (wall {ratio['ratio_wall']:.1f}x)"]
    return "\n".join(lines)


def quality_table(quality: dict) -> str:
    lines = ["| run | test NDCG@10 | test HR@10 | sampled NDCG@10 | popularity NDCG@10 | AUC per head | "
             "s/epoch | epochs | minutes |", "|---|--:|--:|--:|--:|---|--:|--:|--:|"]
    fmt = lambda v, p=4: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    for name, r in quality.items():
        auc = ", ".join(f"{k} {v:.3f}" for k, v in r["auc"].items()) or "-"
        lines.append(f"| {name} | {fmt(r['test']['ndcg@10'])} | {fmt(r['test']['hr@10'])} | "
                     f"{fmt(r['test']['sampled/ndcg@10'])} | {fmt(r['popularity_test']['ndcg@10'])} | "
                     f"{auc} | {fmt(r['s_per_epoch'], 0)} | {r['epochs_run']} | {fmt(r['minutes'], 1)} |")
    return "\n".join(lines)


def main() -> None:
    args = parse()
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    if args.record_run:
        quality = result.setdefault("quality", {})
        for item in args.record_run:
            name, run_dir = item.split("=", 1)
            quality[name] = recorded_run(Path(run_dir))
        print(quality_table(quality))
    else:
        torch.set_num_threads(args.threads)
        import onnxruntime  # noqa: PLC0415

        from genrec.export.generative import decode_vs_recompute  # noqa: PLC0415

        net = default_model(args.n_items)
        load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
        with tempfile.TemporaryDirectory(prefix="genrec_generative_") as tmp:
            rows = latency(net, args, Path(tmp))
            ratio = decode_vs_recompute(net, length=512, batch=1, threads=args.threads,
                                        rounds=args.ratio_rounds, work_dir=tmp)
        text = latency_table(rows, ratio)
        print(text)
        result.update({
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": "python benchmarks/generative.py " + " ".join(
                f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in vars(args).items() if k not in ("out", "record_run")),
            "model": net.export_config() | {"feature_mean": None, "feature_std": None},
            "machine": {"cpu": _cpu(), "avx512_bf16": "avx512_bf16" in Path("/proc/cpuinfo").read_text(),
                        "cores": os.cpu_count(), "threads": args.threads,
                        "load_average_1m": [load_before, os.getloadavg()[0]],
                        "python": platform.python_version(), "torch": torch.__version__,
                        "onnxruntime": onnxruntime.__version__},
            "rows": rows, "decode_vs_recompute": ratio, "table": text})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
