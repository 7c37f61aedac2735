"""Inference latency and throughput: eager PyTorch against onnxruntime (and TensorRT with a GPU),
for every graph a model declares, at batch 1 and 64; plus the per-event streaming speed-up.

    python benchmarks/inference.py                                   # SASRec, ML-1M sizes, random weights
    python benchmarks/inference.py --ckpt outputs/.../checkpoints/best-epoch012.ckpt
    python benchmarks/inference.py --threads 2 --min-time 2 --out benchmarks/results/inference.json

Shapes: score and prefill read `--length` events (default 200, ML-1M's maxlen); decode appends one
event to a cache of length - 1, so "decode vs score" is the cost of the 200th event with and
without the cache. Each cell runs for --min-time seconds (at least --min-iters calls) after
warm-up; latency p50/p99 in ms, throughput in users per second (batch / mean latency). Weights do
not change the timings, so without --ckpt a model of the ML-1M paper size is built at random.
Prints a Markdown table and writes JSON (default benchmarks/results/inference.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", help="a genrec checkpoint (default: random SASRec of --n-items etc.)")
    p.add_argument("--n-items", type=int, default=3416)
    p.add_argument("--hidden", type=int, default=50)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--residual", default="plain")
    p.add_argument("--length", type=int, default=200)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--min-time", type=float, default=1.0)
    p.add_argument("--min-iters", type=int, default=10)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "inference.json"))
    return p.parse_args()


def build(args: argparse.Namespace) -> torch.nn.Module:
    if args.ckpt:
        from genrec.run.checkpoint import build_net, read_checkpoint  # noqa: PLC0415

        return build_net(read_checkpoint(args.ckpt), args.ckpt).eval()
    from genrec.models.sasrec import SASRec  # noqa: PLC0415

    torch.manual_seed(0)
    return SASRec(n_items=args.n_items, maxlen=args.length, hidden_units=args.hidden, num_blocks=args.blocks,
                  num_heads=args.heads, dropout=0.0, residual=args.residual).eval()


def timed(fn, min_time: float, min_iters: int) -> dict:
    """Latency percentiles (ms) of fn() after three warm-up calls."""
    for _ in range(3):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    ms = np.asarray(times)
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "calls": len(ms)}


def sizes_for(batch: int, length: int) -> dict[str, int]:
    return {"batch": batch, "seq": length, "past": length - 1}


def tensorrt_timer(spec, onnx_path: Path, args, work: Path):
    """(batch -> timing) of an FP16 engine of this graph, or None without a GPU and tensorrt."""
    from genrec.export import axes, tensorrt  # noqa: PLC0415
    from genrec.export.fp16 import to_fp16  # noqa: PLC0415
    from genrec.export.onnx import signature  # noqa: PLC0415

    try:
        tensorrt.require()
    except tensorrt.TensorRTUnavailable:
        return None
    import onnx  # noqa: PLC0415

    fp16 = to_fp16(onnx.load(onnx_path), spec.fp32)
    onnx.save(fp16, work / f"{spec.name}.fp16.onnx")
    hi = max(args.batches)
    length = args.length
    profiles = axes.profiles({"batch": [1, hi, hi], "seq": [1, length, length], "past": [0, length, length]})
    engine = work / f"{spec.name}.engine"
    shapes = tensorrt.profile_shapes(signature(fp16)["inputs"], profiles)
    tensorrt.build_engine(work / f"{spec.name}.fp16.onnx", engine, shapes, 4 << 30, work / "timing.cache")
    runner = tensorrt.EngineRunner(engine)

    def time_batch(feeds: dict[str, torch.Tensor]) -> dict:
        cuda = {k: v.to("cuda") for k, v in feeds.items()}
        return timed(lambda: runner(cuda), args.min_time, args.min_iters)

    return time_batch


def measure(net, args, work: Path) -> list[dict]:
    from genrec.export import parity  # noqa: PLC0415
    from genrec.export.builders import graph_specs  # noqa: PLC0415
    from genrec.export.onnx import export_onnx  # noqa: PLC0415

    rows = []
    for spec in graph_specs(net, {"next_item": {"top_k": args.top_k}}):
        path = work / f"{spec.name}.onnx"
        export_onnx(spec, path)
        session = parity.ort_session(path, threads=args.threads)
        names = [o.name for o in session.get_outputs()]
        trt = tensorrt_timer(spec, path, args, work)
        for batch in args.batches:
            feeds = spec.example(sizes_for(batch, args.length), seed=batch)
            numpy_feeds = {k: v.numpy() for k, v in feeds.items()}
            with torch.no_grad():
                eager = timed(lambda f=feeds, m=spec.module: m(*f.values()), args.min_time, args.min_iters)
            onnx = timed(lambda f=numpy_feeds, s=session, n=names: s.run(n, f), args.min_time, args.min_iters)
            timings = [("eager", eager), ("onnxruntime", onnx)]
            if trt is not None:
                timings.append(("tensorrt-fp16", trt(feeds)))
            for runtime, t in timings:
                rows.append({"graph": spec.name, "runtime": runtime, "batch": batch,
                             "shape": {k: list(v.shape) for k, v in feeds.items()},
                             **t, "users_per_s": batch / t["mean_ms"] * 1e3})
            print(f"  {spec.name:8s} batch {batch:3d}: " + ", ".join(
                f"{runtime} {t['p50_ms']:.2f} ms" for runtime, t in timings), flush=True)
    return rows


def table(rows: list[dict], length: int) -> str:
    """Markdown: one line per graph x batch, eager and onnxruntime side by side, then the
    per-event streaming speed-up (score over the full history vs one decode step)."""
    by = {(r["graph"], r["batch"], r["runtime"]): r for r in rows}
    lines = ["| graph | batch | eager p50 / p99 ms | onnxruntime p50 / p99 ms | eager users/s | "
             "onnxruntime users/s | onnxruntime speed-up |", "|---|---|---|---|---|---|---|"]
    for graph, batch in dict.fromkeys((r["graph"], r["batch"]) for r in rows):
        e, o = by[graph, batch, "eager"], by[graph, batch, "onnxruntime"]
        lines.append(f"| {graph} | {batch} | {e['p50_ms']:.2f} / {e['p99_ms']:.2f} | {o['p50_ms']:.2f} / "
                     f"{o['p99_ms']:.2f} | {e['users_per_s']:.0f} | {o['users_per_s']:.0f} | "
                     f"{e['p50_ms'] / o['p50_ms']:.2f}x |")
    trt = [r for r in rows if r["runtime"] == "tensorrt-fp16"]
    if trt:
        lines += ["", "| graph | batch | TensorRT fp16 p50 / p99 ms | users/s | speed-up over eager |",
                  "|---|---|---|---|---|"]
        for r in trt:
            gain = by[r["graph"], r["batch"], "eager"]["p50_ms"] / r["p50_ms"]
            lines.append(f"| {r['graph']} | {r['batch']} | {r['p50_ms']:.3f} / {r['p99_ms']:.3f} | "
                         f"{r['users_per_s']:.0f} | {gain:.1f}x |")
    batches = sorted({r["batch"] for r in rows if r["graph"] == "decode"})
    if batches:
        lines += ["", f"Per-event streaming speed-up at length {length} (score over {length} events / "
                      f"decode of event {length} with a cache of {length - 1}, p50):", "",
                  "| batch | eager | onnxruntime |", "|---|---|---|"]
        speed_up = lambda b, rt: by["score", b, rt]["p50_ms"] / by["decode", b, rt]["p50_ms"]  # noqa: E731
        for b in batches:
            lines.append(f"| {b} | {speed_up(b, 'eager'):.1f}x | {speed_up(b, 'onnxruntime'):.1f}x |")
        if trt:
            lines.append("TensorRT fp16: " + ", ".join(f"batch {b} {speed_up(b, 'tensorrt-fp16'):.1f}x"
                                                       for b in batches))
    return "\n".join(lines)


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    import onnxruntime  # noqa: PLC0415

    net = build(args)
    load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    with tempfile.TemporaryDirectory(prefix="genrec_inference_") as tmp:
        rows = measure(net, args, Path(tmp))
    text = table(rows, args.length)
    print(text)
    result = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/inference.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if k != "out" and v is not None),
        "model": net.export_config(),
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "threads": args.threads,
                    "load_average_1m": [load_before, os.getloadavg()[0]], "python": platform.python_version(),
                    "torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "rows": rows, "table": text,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
