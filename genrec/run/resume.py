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

import yaml
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf

from genrec.run.checkpoint import CONFIG_KEY, CheckpointError, load_checkpoint_file
from genrec.validation import ConfigError

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


# what a resumed run cannot change: the weights' shapes and the item ids come from these
MUST_MATCH = ("model", "data.source", "data.kcore", "data.min_length")


def check_resume(argv: list[str], config_dir: Path, config_name: str = "train") -> None:
    """Before Hydra writes anything (.hydra/, config.yaml, csv/): the checkpoint to resume
    exists, is safe to load, and fits the config the command line composes (MUST_MATCH)."""
    overrides = [a for a in argv[1:] if not a.startswith("-")]
    ckpt = _value(overrides, "ckpt_path")
    if ckpt in (None, "null", "None") or any(a in ("-m", "--multirun") for a in argv):
        return
    run_dir = _value(overrides, "hydra.run.dir")
    if ckpt == "last":
        if run_dir is None:
            raise CheckpointError(f"ckpt_path=last: no run under {OUTPUTS_ROOT}/ has checkpoints/last.ckpt; "
                                  "name the run: python train.py ckpt_path=last hydra.run.dir=<run dir>")
        path = Path(run_dir) / "checkpoints" / "last.ckpt"
        if not path.is_file():
            resolve_ckpt_path("last", Path(run_dir))  # raises its CheckpointError
    else:
        path = Path(ckpt)
        if not path.is_file():
            raise CheckpointError(f"ckpt_path={ckpt}: no such checkpoint file")
    allow_unsafe = str(_value(overrides, "allow_unsafe_checkpoint")).lower() == "true"
    stored = load_checkpoint_file(path, allow_unsafe, mmap=True)
    if not isinstance(stored, dict) or CONFIG_KEY not in stored:
        raise CheckpointError(f"{path}: not a genrec training checkpoint (no '{CONFIG_KEY}')")
    composed = _compose([o for o in overrides if not _key(o).startswith("hydra")], config_dir, config_name)
    for key in MUST_MATCH:
        was = OmegaConf.select(OmegaConf.create(stored[CONFIG_KEY]), key)
        now = OmegaConf.select(composed, key)
        diff = _first_difference(_plain(was), _plain(now), key)
        if diff is not None:
            field, old, new = diff
            raise ConfigError(f"{field}={new!r} does not fit the checkpoint {path}, trained with "
                              f"{field}={old!r}: resume with the same {field}, or start a new run")


def _compose(overrides: list[str], config_dir: Path, config_name: str):
    from hydra import compose, initialize_config_dir  # noqa: PLC0415  (only on a resume)

    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _first_difference(was, now, key: str):
    """(field, stored, composed) of the first field that differs, or None."""
    if isinstance(was, dict) and isinstance(now, dict):
        for k in sorted(set(was) | set(now), key=lambda k: (k != "_target_", str(k))):
            found = _first_difference(was.get(k), now.get(k), f"{key}.{k}")
            if found is not None:
                return found
        return None
    return None if was == now else (key, was, now)


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


def keep_csv_history(loggers: list[Logger], ckpt_path: str | None, allow_unsafe: bool = False) -> None:
    """CSVLogger deletes metrics.csv when it starts; on a resume, carry over the rows logged
    before the checkpoint (the ones after it are logged again by the replayed epoch)."""
    if ckpt_path is None or rank_zero_only.rank != 0:
        return
    csv_loggers = [lg for lg in loggers if isinstance(lg, CSVLogger)]
    if not csv_loggers:
        return
    step = load_checkpoint_file(ckpt_path, allow_unsafe, mmap=True)["global_step"]
    for logger in csv_loggers:
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            rows = [{k: v for k, v in r.items() if v != ""}
                    for r in csv.DictReader(f) if int(r["step"]) < step]
        logger.experiment.metrics[:0] = rows  # creating the experiment deletes the file
