"""The SASRec family side by side: SASRec, TiSASRec and each with the mHC residual, same data,
split, protocol and epochs.

    python benchmarks/family.py                                     # beauty_time, ml-100k, ml-1m
    python benchmarks/family.py --datasets ml-100k --epochs ml-100k=10
    python benchmarks/family.py --datasets ml-100k --variants SASRec TiSASRec task.loss=bce

Datasets: the timestamped Beauty 5-core (data=beauty_time) and ML-100K run all four variants;
ML-1M (the SASRec file, no timestamps) runs SASRec and SASRec+mHC only. Hyperparameters are the
papers' (d 50, 2 blocks, 1 head; maxlen 50 / dropout 0.5 on Beauty, maxlen 200 / dropout 0.2 on
ML-1M; ML-100K: maxlen 50, dropout 0.2) with the task's default loss (full-softmax CE) and no
early stopping, so every variant of a dataset trains the same number of epochs; the best
validation epoch is then tested.
Each run is train.py's `train(cfg)` in its own spawned process, so its peak RSS is its own.
Prints one rich table and writes JSON (default benchmarks/results/family.json): seconds per
training epoch (mean), peak RSS, full-ranking and sampled (100 negatives) HR@10 / NDCG@10 on the
test split, and the parameter count.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

VARIANTS = {
    "SASRec": ["model=sasrec"],
    "SASRec+mHC": ["model=sasrec", "model.residual=mhc"],
    "TiSASRec": ["model=tisasrec"],
    "TiSASRec+mHC": ["model=tisasrec", "model.residual=mhc"],
}
DATASETS = {  # name: (overrides, variants, default epochs)
    "beauty_time": (["data=beauty_time", "data.maxlen=50", "model.hidden_units=50", "model.dropout=0.5"],
                    list(VARIANTS), 1),
    # maxlen 50, not ML-1M's 200: 943 users make 8 batches an epoch, and at 200 an epoch of
    # the mHC variants costs ~4x more, too much for a CPU budget of minutes
    "ml-100k": (["data=ml-100k", "data.maxlen=50", "model.hidden_units=50", "model.dropout=0.2"],
                list(VARIANTS), 10),
    "ml-1m": (["data=ml-1m", "data.maxlen=200", "model.hidden_units=50", "model.dropout=0.2"],
              ["SASRec", "SASRec+mHC"], 1),
}
COMMON = ["model.num_blocks=2", "model.num_heads=1", "data.batch_size=128", "trainer.accelerator=cpu",
          "logger=csv", "callbacks.early_stopping=null", "callbacks.rich_progress_bar=null",
          "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
COLUMNS = ["test/hr@10", "test/ndcg@10", "test/sampled/hr@10", "test/sampled/ndcg@10"]


def run_variant(overrides: list[str], run_dir: str, queue) -> None:
    """One training run (in a spawned child): metrics, epoch times, peak RSS, parameter count."""
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    import genrec.resolvers  # noqa: F401  (resolvers)
    from genrec.run.training import train

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = run_dir
    start = time.perf_counter()
    metrics = train(cfg)
    wall = time.perf_counter() - start
    state = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    params = sum(v.numel() for k, v in state.items() if k.startswith("net."))
    queue.put({"metrics": metrics, "wall_seconds": wall, "parameters": params,
               "epoch_seconds": _epoch_seconds(Path(run_dir)),
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})  # Linux: KiB


def _epoch_seconds(run_dir: Path) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(r["time/epoch_seconds"]) for r in csv.DictReader(f) if r.get("time/epoch_seconds")]


def _in_child(overrides: list[str]) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="bench-family-") as run_dir:
        proc = ctx.Process(target=run_variant, args=(overrides, run_dir, queue))
        proc.start()
        result = queue.get()
        proc.join()
    return result


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--epochs", nargs="*", default=[], metavar="DATASET=N",
                   help="epochs per variant, e.g. ml-100k=10 (defaults: " +
                        ", ".join(f"{k}={v[2]}" for k, v in DATASETS.items()) + ")")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "family.json"))
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    return p.parse_args()


def main() -> None:
    args = parse()
    epochs = {name: spec[2] for name, spec in DATASETS.items()}
    epochs.update({k: int(v) for k, v in (e.split("=", 1) for e in args.epochs)})
    rows = []
    for dataset in args.datasets:
        data_overrides, variants, _ = DATASETS[dataset]
        for variant in (v for v in variants if v in args.variants):
            overrides = [*data_overrides, *VARIANTS[variant], *COMMON,
                         f"trainer.max_epochs={epochs[dataset]}", *args.overrides]
            print(f"[family] {dataset} {variant}: {epochs[dataset]} epoch(s)", flush=True)
            result = _in_child(overrides)
            m, seconds = result["metrics"], result["epoch_seconds"]
            rows.append({
                "dataset": dataset, "variant": variant, "epochs": len(seconds),
                "epoch_seconds": statistics.mean(seconds) if seconds else None,
                "wall_seconds": result["wall_seconds"], "peak_rss_mb": result["peak_rss_mb"],
                "parameters": result["parameters"], **{k: m.get(k) for k in COLUMNS},
                "popularity": {k: m.get(f"popularity/{k}") for k in COLUMNS},
                "overrides": overrides,
            })
            _write(Path(args.out), rows)  # after every run: a cut-short benchmark keeps its rows
    _print(rows)
    print(f"wrote {args.out}")


def _write(out: Path, rows: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "rows": rows,
    }, indent=2))


def _print(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="SASRec family: test split, best validation epoch (full ranking | 100 sampled)")
    for col in ("dataset", "variant", "epochs", "s/epoch", "peak RSS MB", "params", "HR@10", "NDCG@10",
                "HR@10 s", "NDCG@10 s"):
        table.add_column(col, justify="left" if col in ("dataset", "variant") else "right")
    for r in rows:
        table.add_row(r["dataset"], r["variant"], str(r["epochs"]),
                      "-" if r["epoch_seconds"] is None else f"{r['epoch_seconds']:.1f}",
                      f"{r['peak_rss_mb']:.0f}", f"{r['parameters']:,}",
                      *(f"{r[k]:.4f}" for k in COLUMNS))
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        pop = next(r["popularity"] for r in rows if r["dataset"] == dataset)
        table.add_row(dataset, "popularity", "", "", "", "", *(f"{pop[k]:.4f}" for k in COLUMNS))
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
