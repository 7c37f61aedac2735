"""SASRec on ML-1M: time to quality of one experiment, and its step time beside the pinned CE.

    python benchmarks/sasrec_ml1m_time_to_quality.py --experiment sasrec_ml1m_fast --minutes 22
    python benchmarks/sasrec_ml1m_time_to_quality.py --experiment sasrec_ml1m_fast \
        --run-dir outputs/<a finished train.py run of that experiment>     # read it, train nothing

Two parts, one JSON (benchmarks/results/<experiment>.json unless --out):
1. Side by side: the experiment's training step against the pinned full-softmax CE
   (`experiment=sasrec_ml1m_ce`), each built from its own config (model, batches, bucketing,
   loss and dtypes), in one process, alternating `--steps` steps of each (the first steps of
   epoch 0; `--steps 48` = a whole ML-1M epoch) for `--rounds` rounds, so load from other
   processes falls on both alike. Reports seconds per training epoch (median mean step x steps
   per epoch) and the ratio pinned CE / experiment. Extra overrides apply to both sides.
2. Time to quality: `python train.py experiment=<experiment> logger=csv trainer.max_time=...`
   (or an existing run directory): seconds per epoch (train.py's EpochTimer: training plus
   validation), the epoch and minute at which validation NDCG@10 / HR@10 first reached each bar,
   and the best checkpoint's test figures (metrics.json), in both protocols.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import epoch_log  # benchmarks/common.py (this folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
BARS = {"val/ndcg@10": [0.1612, 0.18, 0.19], "val/hr@10": [0.31], "val/sampled/ndcg@10": [0.59]}
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
TEST_KEYS = ["test/ndcg@10", "test/hr@10", "test/sampled/ndcg@10", "test/sampled/hr@10",
             "popularity/test/ndcg@10"]


def host() -> dict:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if "model name" in line), "")
    kind = "AVX512-BF16" if "avx512_bf16" in flags else "AVX2-only" if "avx2" in flags else "other"
    # an AVX512 host capped to AVX2 (bf16 no longer native, so task.*_dtype=auto picks float32):
    # ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
    caps = {k: os.environ[k] for k in ISA_CAPS if k in os.environ}
    if caps and kind == "AVX512-BF16":
        kind = "AVX512-BF16 capped to AVX2"
    return {"cpu": model or platform.processor(), "kind": kind, "isa_caps": caps, "cores": os.cpu_count(),
            "load_average_at_start": os.getloadavg()}


BASELINE = "sasrec_ml1m_ce"  # the pinned full-CE experiment the issue halves


def _side(experiment: str, overrides: list[str], steps: int) -> dict:
    """One experiment's training step, as train.py would take it: its model, its batches (the
    first `steps` of epoch 0, so bucketing's batch mix is its own) and its loss settings."""
    import lightning as L
    import torch
    from hydra import compose, initialize_config_dir

    import genrec.resolvers  # noqa: F401
    from genrec.run.training import build_components
    from genrec.tasks.losses import resolve_matmul_dtype

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", "logger=none", *overrides])
    L.seed_everything(cfg.seed, workers=True)
    datamodule, task = build_components(cfg)
    net = task.net.train()
    loader = datamodule.train_dataloader()
    cpu, t = torch.device("cpu"), cfg.task
    loss = dict(kind=t.loss, ce_matmul_dtype=resolve_matmul_dtype(t.ce_matmul_dtype, cpu),
                num_negatives=t.get("num_negatives", 256), logq_correction=t.get("logq_correction", True),
                shared_negatives=t.get("shared_negatives", False),
                reduction=t.get("loss_reduction", "token_mean"),
                encoder_dtype=resolve_matmul_dtype(t.get("encoder_dtype", "float32"), cpu))
    return {"net": net, "optimizer": torch.optim.Adam(net.parameters(), lr=t.optimizer.lr),
            "batches": [b for _, b in zip(range(steps), loader, strict=False)],
            "steps_per_epoch": len(loader), "loss": loss,
            "settings": {**{k: str(v) for k, v in loss.items()}, "bucket_window": datamodule.bucket_window}}


def side_by_side(experiment: str, overrides: list[str], steps: int, rounds: int) -> dict:
    """Seconds per training epoch of the experiment and of the pinned full CE (sasrec_ml1m_ce),
    each with its own batches and settings, alternating in one process (load falls on both)."""
    from genrec.tasks.next_item import next_item_loss

    sides = {f"pinned CE ({BASELINE})": _side(BASELINE, overrides, steps),
             experiment: _side(experiment, overrides, steps)}
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds + 1):  # round 0 warms up (oneDNN primitive caches) and is dropped
        for name, side in sides.items():
            start = time.perf_counter()
            for batch in side["batches"]:
                loss = next_item_loss(side["net"], batch, **side["loss"])
                side["optimizer"].zero_grad(set_to_none=True)
                loss.backward()
                side["optimizer"].step()
            seconds[name].append((time.perf_counter() - start) / len(side["batches"]))
    per_epoch = {name: statistics.median(s[1:]) * sides[name]["steps_per_epoch"]
                 for name, s in seconds.items()}
    baseline = next(iter(per_epoch.values()))
    return {
        "steps_per_round": steps, "rounds": rounds,
        "steps_per_epoch": {name: side["steps_per_epoch"] for name, side in sides.items()},
        "sides": {name: side["settings"] for name, side in sides.items()},
        "step_seconds_per_round": {name: s[1:] for name, s in seconds.items()},
        "train_epoch_seconds": per_epoch,
        "ce_over_experiment": baseline / per_epoch[experiment],
        "load_average_at_end": os.getloadavg(),
    }


def train(experiment: str, overrides: list[str], minutes: float | None, run_dir: Path) -> list[str]:
    cmd = [sys.executable, "train.py", f"experiment={experiment}", "logger=csv",
           "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}", *overrides]
    if minutes:
        seconds = round(minutes * 60)
        cmd.append(f"trainer.max_time=00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}")
    subprocess.run(cmd, cwd=ROOT, check=True)
    return cmd


def time_to_bars(log: list[dict]) -> dict[str, dict | None]:
    out = {}
    for key, bars in BARS.items():
        for bar in bars:
            hit = next((r for r in log if r.get(key, -1) >= bar and "time/elapsed_minutes" in r), None)
            out[f"{key} >= {bar}"] = None if hit is None else {
                "epoch": int(hit["epoch"]) + 1, "minutes": hit["time/elapsed_minutes"]}
    return out


def quality(run_dir: Path) -> dict:
    log = epoch_log(run_dir)
    timed = [r["time/epoch_seconds"] for r in log if "time/epoch_seconds" in r]
    # a run stopped before its test has no metrics.json: its validation curve still counts
    done = (run_dir / "metrics.json").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text()) if done else {}
    return {
        "run_dir": str(run_dir),
        "epochs_run": len(timed),
        "epoch_seconds_median": statistics.median(timed),
        "train_minutes": max(r.get("time/elapsed_minutes", 0.0) for r in log),
        "tested": done,
        "best_checkpoint": metrics.get("best_checkpoint"),
        "test": {k: metrics[k] for k in TEST_KEYS if k in metrics},
        "time_to_val_bars": time_to_bars(log),
        "per_epoch": [{k: v for k, v in r.items() if k == "epoch" or k.startswith("time/") or
                       k in ("train/loss", "val/ndcg@10", "val/hr@10", "val/sampled/ndcg@10")}
                      for r in log],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="sasrec_ml1m_fast")
    parser.add_argument("--minutes", type=float, default=None, help="train.py time budget")
    parser.add_argument("--run-dir", default=None, help="read this finished run instead of training")
    parser.add_argument("--steps", type=int, default=8, help="side by side: steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="side by side: rounds (plus one warm-up)")
    parser.add_argument("--skip-side-by-side", action="store_true",
                        help="keep the side-by-side part already in --out")
    parser.add_argument("--skip-time-to-quality", action="store_true",
                        help="keep the time-to-quality part already in --out")
    parser.add_argument("--note", default=None, help="stored in the JSON (host load, provenance)")
    parser.add_argument("--out", default=None, help="default benchmarks/results/<experiment>.json")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides (both parts)")
    args = parser.parse_args()

    out = Path(args.out or ROOT / "benchmarks" / "results" / f"{args.experiment}.json")
    # a part that is skipped keeps what an earlier invocation wrote
    result: dict = json.loads(out.read_text()) if out.exists() else {}
    command = " ".join(["python", "benchmarks/" + Path(sys.argv[0]).name, *sys.argv[1:]])
    result.update({"experiment": args.experiment, "overrides": args.overrides, "host": host()})
    if args.note:
        result["note"] = args.note
    if not args.skip_side_by_side:
        result["side_by_side"] = side_by_side(args.experiment, args.overrides, args.steps, args.rounds)
        result["side_by_side"]["command"] = command
    if not args.skip_time_to_quality:
        train_cmd = None
        if args.run_dir:
            run_dir = Path(args.run_dir)
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = ROOT / "outputs" / f"time-to-quality-{args.experiment}-{stamp}"
            cmd = train(args.experiment, args.overrides, args.minutes, run_dir)
            train_cmd = " ".join(["python", *cmd[1:]])
        result["time_to_quality"] = quality(run_dir)
        result["time_to_quality"]["command"] = command
        if train_cmd:
            result["time_to_quality"]["train_command"] = train_cmd
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    _print(result)
    print(f"wrote {out}")


def _print(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"SASRec ML-1M time to quality ({result['experiment']}, {result['host']['kind']})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    sbs = result.get("side_by_side")
    if sbs:
        for name, seconds in sbs["train_epoch_seconds"].items():
            table.add_row(f"s / train epoch, side by side: {name}", f"{seconds:.1f}")
        table.add_row("ratio pinned CE / experiment", f"{sbs['ce_over_experiment']:.2f}")
    q = result.get("time_to_quality")
    if q is None:
        Console().print(table)
        return
    table.add_row("epochs run", str(q["epochs_run"]))
    table.add_row("s / epoch in train.py (median, with validation)", f"{q['epoch_seconds_median']:.1f}")
    table.add_row("training minutes", f"{q['train_minutes']:.1f}")
    for bar, hit in q["time_to_val_bars"].items():
        table.add_row(f"to {bar}", "not reached" if hit is None else
                      f"epoch {hit['epoch']}, {hit['minutes']:.1f} min")
    for key, value in q["test"].items():
        table.add_row(key, f"{value:.4f}")
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
