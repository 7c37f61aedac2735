"""Training throughput of one process against two DDP processes (gloo on the CPU, NCCL on GPUs).

    python benchmarks/ddp_scaling.py                       # synthetic data, SASRec defaults
    python benchmarks/ddp_scaling.py --steps 100 --overrides data=ml-1m

Each setting runs train.py's own components (build_components/build_trainer, trainer=ddp for
two processes under torchrun) for --warmup + --steps optimizer steps with validation off, and
times the --steps steps on rank zero. Settings: 1 process x 1 thread (the baseline), 2 processes
x 1 thread with the same global batch (strong scaling) and with twice the batch (weak scaling),
and 1 process x 2 threads (the other way to use two cores). The settings run in --repeats
interleaved rounds (other work on a shared machine drifts over minutes) and the table shows the
median, with the ratio to the baseline's median; JSON (default benchmarks/results/ddp_scaling.json)
keeps every round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def worker(args: argparse.Namespace) -> None:
    """One setting (run by torchrun or directly): time the steps, rank zero writes the result."""
    import lightning as L
    from hydra import compose, initialize_config_dir
    from lightning.pytorch.callbacks import Callback
    from omegaconf import open_dict

    import genrec.resolvers  # noqa: F401
    from genrec.run.training import build_components, build_trainer

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.start = self.seconds = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == args.warmup:
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == args.warmup + args.steps:
                self.seconds = time.perf_counter() - self.start

    run_dir = Path(tempfile.mkdtemp(prefix="ddp_scaling_"))
    overrides = [f"trainer={args.trainer}", "logger=none", "callbacks=none", "trainer.accelerator=cpu",
                 f"data.batch_size={args.batch_size}", f"data.num_workers={args.num_workers}",
                 *args.overrides]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    L.seed_everything(cfg.seed, verbose=False)
    datamodule, task = build_components(cfg)
    trainer = build_trainer(cfg, max_steps=args.warmup + args.steps, max_epochs=-1, limit_val_batches=0,
                            enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0)
    timer = StepTimer()
    trainer.callbacks.append(timer)
    trainer.fit(task, datamodule=datamodule)
    if trainer.global_rank == 0:
        samples = args.steps * args.batch_size  # global batch per step
        Path(args.result).write_text(json.dumps({
            "world_size": trainer.world_size, "seconds": timer.seconds,
            "samples_per_second": samples / timer.seconds, "ms_per_step": 1000 * timer.seconds / args.steps,
        }))


SETTINGS = [  # name, processes, threads per process, global batch multiplier
    ("1 process x 1 thread", 1, 1, 1),
    ("2 processes x 1 thread, same global batch (strong)", 2, 1, 1),
    ("2 processes x 1 thread, 2x global batch (weak)", 2, 1, 2),
    ("1 process x 2 threads", 1, 2, 1),
]


def run_setting(args: argparse.Namespace, procs: int, threads: int, batch: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result = f.name
    common = ["--worker", "--result", result, "--steps", str(args.steps), "--warmup", str(args.warmup),
              "--batch-size", str(batch), "--num-workers", str(args.num_workers),
              "--trainer", "ddp" if procs > 1 else "default", "--overrides", *args.overrides]
    if procs > 1:
        cmd = [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={procs}", __file__, *common]
    else:
        cmd = [sys.executable, __file__, *common]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "disabled"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(Path(result).read_text())
    Path(result).unlink()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="timed optimizer steps per setting")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of all settings")
    parser.add_argument("--batch-size", type=int, default=128, help="global batch of the baseline")
    parser.add_argument("--num-workers", type=int, default=0, help="data loader processes per rank")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ddp_scaling.json")
    parser.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides, e.g. data=ml-1m")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--trainer", default="default", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from rich.console import Console
    from rich.table import Table

    load_before = os.getloadavg()[0]  # other work on the machine skews every figure
    rounds = [[run_setting(args, procs, threads, args.batch_size * mult)
               for _, procs, threads, mult in SETTINGS] for _ in range(args.repeats)]
    rows = []
    for i, (name, procs, threads, mult) in enumerate(SETTINGS):
        runs = [r[i] for r in rounds]
        rows.append({"setting": name, "processes": procs, "threads_per_process": threads,
                     "global_batch": args.batch_size * mult,
                     "samples_per_second": statistics.median(r["samples_per_second"] for r in runs),
                     "ms_per_step": statistics.median(r["ms_per_step"] for r in runs),
                     "samples_per_second_each_round": [r["samples_per_second"] for r in runs]})
    base = rows[0]["samples_per_second"]
    table = Table(title=f"training throughput, median of {args.repeats} rounds of {args.steps} steps "
                        f"after {args.warmup} warm-up "
                        f"({os.cpu_count()} CPUs, load average {load_before:.1f} before; "
                        f"overrides: {' '.join(args.overrides) or 'none'})")
    for col in ("setting", "global batch", "ms / step", "samples / s", "x baseline", "rounds (samples / s)"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    for r in rows:
        r["ratio_to_baseline"] = r["samples_per_second"] / base
        table.add_row(r["setting"], str(r["global_batch"]), f"{r['ms_per_step']:.1f}",
                      f"{r['samples_per_second']:.0f}", f"{r['ratio_to_baseline']:.2f}",
                      " ".join(f"{x:.0f}" for x in r["samples_per_second_each_round"]))
    console = Console(width=140)
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "cpus": os.cpu_count(),
        "machine": platform.platform(), "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0], "steps": args.steps, "warmup": args.warmup,
        "repeats": args.repeats,
        "overrides": args.overrides, "results": rows,
    }, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
