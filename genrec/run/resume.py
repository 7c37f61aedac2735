"""Resuming a run in its own directory: `python train.py ckpt_path=last`.

Before Hydra starts, `resume_argv` turns the command line of a resume into the command line of
the interrupted run:
- the run directory: `hydra.run.dir=...` when given; else, for `ckpt_path=last`, the newest run
  under outputs/ that has `checkpoints/last.ckpt`; for `ckpt_path=<run>/checkpoints/x.ckpt`, <run>;
- the overrides that run was started with (its `.hydra/overrides.yaml`) are replayed, and the
  ones on the new command line win key by key (so `trainer.max_epochs=50` extends a run).
`train()` then resolves `ckpt_path=last` to `<run dir>/checkpoints/last.ckpt`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
import yaml
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities import rank_zero_only

from genrec.run.checkpoint import CheckpointError

OUTPUTS_ROOT = Path("outputs")  # conf/hydra/default.yaml: outputs/DATE/TIME, relative to the cwd


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _value(overrides: list[str], key: str) -> str | None:
    found = [o.split("=", 1)[1] for o in overrides if "=" in o and _key(o) == key]
    return found[-1].strip("'\"") if found else None


def newest_run_with_last(root: Path = OUTPUTS_ROOT) -> Path | None:
    """The run directory under `root` whose checkpoints/last.ckpt was written most recently."""
    candidates = list(root.glob("*/*/checkpoints/last.ckpt"))
    if not candidates:
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime).parent.parent


def _run_dir_of(ckpt_path: str) -> Path | None:
    if ckpt_path == "last":
        return newest_run_with_last()
    path = Path(ckpt_path)
    run = path.parent.parent
    if path.parent.name == "checkpoints" and (run / ".hydra" / "overrides.yaml").is_file():
        return run
    return None


def resume_argv(argv: list[str]) -> list[str]:
    """argv for Hydra: unchanged unless `ckpt_path` is set (single runs only, not --multirun)."""
    overrides = [a for a in argv[1:] if not a.startswith("-")]
    ckpt = _value(overrides, "ckpt_path")
    if ckpt in (None, "null", "None") or any(a in ("-m", "--multirun") for a in argv):
        return argv
    extra: list[str] = []
    run_dir = _value(overrides, "hydra.run.dir")
    if run_dir is None:
        found = _run_dir_of(ckpt)
        if found is None:  # a checkpoint from elsewhere: a new run directory starts from it
            return argv
        run_dir = str(found)
        extra.append(f'hydra.run.dir="{run_dir}"')
    saved_file = Path(run_dir) / ".hydra" / "overrides.yaml"
    saved = yaml.safe_load(saved_file.read_text()) if saved_file.is_file() else []
    return [*argv, *[o for o in saved or [] if not _overridden(o, overrides)], *extra]


def _overridden(saved: str, given: list[str]) -> bool:
    """A saved override is dropped when the new command line sets the same key, or deletes it
    or a parent (`~callbacks.x` drops `+callbacks.x._target_=...`)."""
    key = _key(saved)
    return any(_key(g) == key or (g.startswith("~") and key.startswith(_key(g) + ".")) for g in given)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """`last` -> <output_dir>/checkpoints/last.ckpt, with a clear error when there is none."""
    if ckpt_path is None or ckpt_path != "last":
        if ckpt_path is not None and not Path(ckpt_path).is_file():
            raise CheckpointError(f"ckpt_path={ckpt_path}: no such checkpoint file")
        return ckpt_path
    last = output_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise CheckpointError(
            f"ckpt_path=last: {last} does not exist. Resume a run by its directory: "
            f"python train.py ckpt_path=last hydra.run.dir=<outputs/DATE/TIME of the run>")
    return str(last)


def keep_csv_history(loggers: list[Logger], ckpt_path: str | None) -> None:
    """CSVLogger deletes metrics.csv when it starts; on a resume, carry over the rows logged
    before the checkpoint (the ones after it are logged again by the replayed epoch)."""
    if ckpt_path is None or rank_zero_only.rank != 0:
        return
    csv_loggers = [lg for lg in loggers if isinstance(lg, CSVLogger)]
    if not csv_loggers:
        return
    step = torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=False)["global_step"]
    for logger in csv_loggers:
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            rows = [{k: v for k, v in r.items() if v != ""}
                    for r in csv.DictReader(f) if int(r["step"]) < step]
        logger.experiment.metrics[:0] = rows  # creating the experiment deletes the file
