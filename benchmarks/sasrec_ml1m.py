"""SASRec on ML-1M: the pipeline (train.py) against a plain PyTorch loop, side by side.

    python benchmarks/sasrec_ml1m.py                                   # paper setting, BCE
    python benchmarks/sasrec_ml1m.py --experiment sasrec_ml1m_ce --minutes 45

Prints a table and writes JSON: seconds per training epoch, peak RSS, validation/test HR@10
and NDCG@10 in both protocols next to the popularity baseline, minutes until the validation
NDCG@10 first reached each bar, and the ratio pipeline / plain loop (Lightning's overhead)
measured on the same model, batches and loss. Each side runs in its own process so its peak
RSS is its own; the plain loop runs before and after the pipeline and its mean is used.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import (  # benchmarks/common.py (this folder is on sys.path)
    compose_experiment,
    epoch_log,
    in_child,
    peak_rss_mb,
)

ROOT = Path(__file__).resolve().parent.parent
BARS = {"val/ndcg@10": [0.1612, 0.18], "val/sampled/ndcg@10": [0.5749, 0.59]}


def plain_loop(experiment: str, overrides: list[str], epochs: int, queue) -> None:
    """The same model, batches and loss with no Lightning: the overhead baseline."""
    import lightning as L
    import torch
    from hydra.utils import instantiate

    from genrec.run.training import build_components
    from genrec.tasks.losses import resolve_matmul_dtype
    from genrec.tasks.next_item import next_item_loss

    cfg = compose_experiment(experiment, Path(tempfile.mkdtemp()), overrides)
    L.seed_everything(cfg.seed, workers=True)
    datamodule, task = build_components(cfg)
    net = task.net.train()
    optimizer = instantiate(cfg.task.optimizer)(params=net.parameters())
    dtype = resolve_matmul_dtype(cfg.task.ce_matmul_dtype, torch.device("cpu"))
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        for batch in datamodule.train_dataloader():
            loss = next_item_loss(net, batch, cfg.task.loss, dtype)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - start)
    queue.put({"epoch_seconds": seconds, "peak_rss_mb": peak_rss_mb()})


def pipeline(experiment: str, overrides: list[str], run_dir: str, queue) -> None:
    from genrec.run.training import train

    cfg = compose_experiment(experiment, Path(run_dir), overrides)
    metrics = train(cfg)
    queue.put({"metrics": metrics, "peak_rss_mb": peak_rss_mb()})


def time_to_bars(log: list[dict]) -> dict[str, float | None]:
    out = {}
    for key, bars in BARS.items():
        for bar in bars:
            hit = next((r["time/elapsed_minutes"] for r in log
                        if r.get(key, -1) >= bar and "time/elapsed_minutes" in r), None)
            out[f"minutes to {key} >= {bar}"] = hit
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="sasrec_ml1m")
    parser.add_argument("--epochs", type=int, default=20, help="pipeline epochs (max)")
    parser.add_argument("--minutes", type=float, default=None, help="pipeline time budget")
    parser.add_argument("--plain-epochs", type=int, default=2, help="plain-loop epochs, before and after")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sasrec_ml1m.json"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = parser.parse_args()

    overrides = [f"trainer.max_epochs={args.epochs}", "callbacks.early_stopping=null", *args.overrides]
    if args.minutes:
        seconds = round(args.minutes * 60)
        hms = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        overrides.append(f"trainer.max_time=00:{hms}")  # Lightning's DD:HH:MM:SS
    run_dir = Path(tempfile.mkdtemp(prefix="bench-sasrec-"))
    plain_before = in_child(plain_loop, args.experiment, overrides, args.plain_epochs)
    piped = in_child(pipeline, args.experiment, overrides, str(run_dir))
    plain_after = in_child(plain_loop, args.experiment, overrides, args.plain_epochs)

    log = epoch_log(run_dir)
    pipe_epoch = statistics.median(r["time/epoch_seconds"] for r in log if "time/epoch_seconds" in r)
    plain_epoch = statistics.median(plain_before["epoch_seconds"] + plain_after["epoch_seconds"])
    m = piped["metrics"]
    result = {
        "experiment": args.experiment,
        "overrides": overrides,
        "epochs_run": sum("time/epoch_seconds" in r for r in log),
        "pipeline_epoch_seconds": pipe_epoch,
        "plain_epoch_seconds": plain_epoch,
        "pipeline_over_plain": pipe_epoch / plain_epoch,
        "pipeline_peak_rss_mb": piped["peak_rss_mb"],
        "plain_peak_rss_mb": max(plain_before["peak_rss_mb"], plain_after["peak_rss_mb"]),
        "metrics": {k: v for k, v in m.items() if "@10" in k or k == "best_checkpoint"},
        **time_to_bars(log),
        "per_epoch": log,
    }
    _print(result, m)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


def _print(result: dict, m: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"SASRec ML-1M ({result['experiment']}, {result['epochs_run']} epochs)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("s / train epoch (pipeline)", f"{result['pipeline_epoch_seconds']:.2f}"),
        ("s / train epoch (plain PyTorch)", f"{result['plain_epoch_seconds']:.2f}"),
        ("pipeline / plain", f"{result['pipeline_over_plain']:.3f}"),
        ("peak RSS pipeline (MB)", f"{result['pipeline_peak_rss_mb']:.0f}"),
        ("peak RSS plain (MB)", f"{result['plain_peak_rss_mb']:.0f}"),
    ]
    for split in ("val", "test"):
        for proto in ("", "sampled/"):
            for name in ("hr@10", "ndcg@10"):
                key = f"{split}/{proto}{name}"
                if key in m:
                    rows.append((key, f"{m[key]:.4f}"))
    for proto in ("", "sampled/"):
        for name in ("hr@10", "ndcg@10"):
            key = f"popularity/test/{proto}{name}"
            rows.append((key, f"{m[key]:.4f}"))
    for key, value in result.items():
        if key.startswith("minutes to"):
            rows.append((key, "not reached" if value is None else f"{value:.1f}"))
    for row in rows:
        table.add_row(*row)
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
