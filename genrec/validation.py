"""Config checks that run when an object is built, each naming the config field it is about.

`check_range("model.num_blocks", -1, lo=1)` raises
ConfigError("model.num_blocks=-1: must be an integer >= 1"); non-numbers (`=abc`) fail the same way.
"""

from __future__ import annotations

import math
import numbers
import os
import uuid
from pathlib import Path


class ConfigError(ValueError):
    """A config value that cannot work, named by its field (`model.hidden_units=abc: ...`)."""


def check_range(name: str, value, lo: float | None = None, hi: float | None = None, *,
                integer: bool = True, hi_open: bool = False, optional: bool = False):
    """`value` itself when it is a number (an integer if `integer`) in [lo, hi] (or [lo, hi) if
    `hi_open`); None passes when `optional`. Anything else raises ConfigError naming `name`."""
    if value is None and optional:
        return value
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, numbers.Integral if integer else numbers.Real) and not isinstance(value, bool)
    if not ok_type or (not integer and not math.isfinite(float(value))):
        raise ConfigError(f"{name}={value!r}: must be {kind}{_bounds(lo, hi, hi_open)}")
    if (lo is not None and value < lo) or (hi is not None and (value >= hi if hi_open else value > hi)):
        raise ConfigError(f"{name}={value!r}: must be {kind}{_bounds(lo, hi, hi_open)}")
    return value


def _bounds(lo, hi, hi_open: bool) -> str:
    parts = [f">= {lo}"] if lo is not None else []
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi}")
    return (" " + " and ".join(parts)) if parts else ""


def check_ranges(prefix: str, obj, rules: dict[str, dict]) -> None:
    """check_range(f"{prefix}.{field}", getattr(obj, field), **rule) for each field's rule."""
    for field, rule in rules.items():
        check_range(f"{prefix}.{field}", getattr(obj, field), **rule)


def check_writable(name: str, path: str | Path) -> Path:
    """Creates directory `path` (and parents) and writes a probe file in it, so an output
    location that cannot be written fails before the expensive work, naming the config field."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(f"{name}={path}: output directory is not writable ({reason})") from err
    return path


# SequenceDataModule fields (genrec/data/datamodule.py)
DATA_RANGES = {
    "maxlen": {"lo": 1}, "batch_size": {"lo": 1}, "eval_batch_size": {"lo": 1}, "num_workers": {"lo": 0},
    "prefetch_factor": {"lo": 1, "optional": True}, "kcore": {"lo": 0}, "min_length": {"lo": 3},
    "sampled_negatives": {"lo": 0}, "bucket_window": {"lo": 0}, "seed": {"lo": 0},
}


def check_task_args(args: dict) -> None:
    """NextItemTask's numeric arguments (its `locals()` at the top of __init__)."""
    ks = args.get("ks")
    if isinstance(ks, (str, bytes)) or not hasattr(ks, "__iter__") or not list(ks):
        raise ConfigError(f"task.ks={ks!r}: must be a non-empty list of integers >= 1")
    for i, k in enumerate(ks):
        check_range(f"task.ks[{i}]", k, lo=1)
    check_range("task.weight_decay", args.get("weight_decay", 0.0), lo=0, integer=False)
    if "num_negatives" in args:
        check_range("task.num_negatives", args["num_negatives"], lo=1)
    keywords = getattr(args.get("optimizer"), "keywords", None) or {}
    if "lr" in keywords:
        lr = check_range("task.optimizer.lr", keywords["lr"], lo=0, integer=False)
        if lr == 0:
            raise ConfigError("task.optimizer.lr=0: must be a number > 0")


def check_creatable(name: str, path: str | Path) -> None:
    """Directory `path` exists or can be made (its nearest existing ancestor is a writable
    directory), without creating anything: for Hydra's run dir, checked before Hydra makes it."""
    path = Path(path).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{name}={path}: output directory is not writable ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{name}={path}: output directory is not writable "
                          f"(permission denied on {existing})")
