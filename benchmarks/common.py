"""Helpers the benchmark scripts share (run as `python benchmarks/<script>.py`, which puts this
folder on sys.path): compose an experiment's config, peak RSS, the CSV log per epoch, a child process."""

from __future__ import annotations

import csv
import multiprocessing as mp
import resource
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def compose_experiment(experiment: str, run_dir: Path, overrides: list[str]):
    """conf/train.yaml with experiment=<experiment>, the CSV logger and `overrides`, writing to run_dir."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    import genrec.resolvers  # noqa: F401

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", "logger=csv", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    return cfg


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def epoch_log(run_dir: Path) -> list[dict]:
    """csv/metrics.csv merged to one row per epoch (Lightning writes several rows per epoch)."""
    epochs: dict[int, dict] = {}
    with open(run_dir / "csv" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):  # learning-rate rows carry only a step
                continue
            merged = epochs.setdefault(int(float(row["epoch"])), {})
            merged.update({k: float(v) for k, v in row.items() if v not in ("", None) and k != "step"})
    return [epochs[e] for e in sorted(epochs)]


def in_child(target, *args) -> dict:
    """target(*args, queue) in a fresh spawned process (its own peak RSS); returns what it put."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result
