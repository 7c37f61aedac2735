"""One sentence at the command line: train.py, evaluate.py and export.py end every anticipated
failure with exit code 1 and one line naming what to fix, no traceback.

Anticipated: DataError, CheckpointError, ConfigError, NonFiniteLossError, ExportError,
TensorRTUnavailable, NonFiniteScoresError, missing/unwritable paths (FileNotFoundError,
PermissionError, NotADirectoryError, ...) and a full disk. Anything else keeps its traceback.
`HYDRA_FULL_ERROR=1` (or `GENREC_DEBUG=1`) re-raises everything with its full traceback.
"""

from __future__ import annotations

import errno
import functools
import importlib
import os
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# (module, class name): imported lazily, so an entry point does not pay for what it never raises
ANTICIPATED = (
    ("genrec.validation", "ConfigError"),
    ("genrec.data.interactions", "DataError"),
    ("genrec.run.checkpoint", "CheckpointError"),
    ("genrec.run.callbacks", "NonFiniteLossError"),
    ("genrec.run.callbacks", "DiskFullError"),
    ("genrec.metrics", "NonFiniteScoresError"),
    ("genrec.export.pipeline", "ExportError"),
    ("genrec.export.tensorrt", "TensorRTUnavailable"),
    ("genrec.export.tensorrt", "UnsupportedOpError"),
    ("genrec.export.builders", "NoGraphsError"),
)
# OSErrors that name a path the user gave: said in one line as well
PATH_ERRORS = (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError)


def full_errors() -> bool:
    """True when the user asked for full tracebacks (HYDRA_FULL_ERROR=1 or GENREC_DEBUG=1)."""
    return any(os.environ.get(v, "") not in ("", "0") for v in ("HYDRA_FULL_ERROR", "GENREC_DEBUG"))


def _anticipated_types() -> tuple[type[BaseException], ...]:
    found = []
    for module, name in ANTICIPATED:
        mod = sys.modules.get(module)
        if mod is None and module.startswith("genrec.export"):
            continue  # not imported: cannot have been raised
        if mod is None:
            try:
                mod = importlib.import_module(module)
            except ImportError:
                continue
        cls = getattr(mod, name, None)
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def one_line(err: BaseException) -> str | None:
    """The sentence for an anticipated failure, or None for anything else. Hydra's
    instantiate wraps errors (InstantiationException from ConfigError): the causes count too."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        message = _sentence(err)
        if message is not None:
            return message
        err = err.__cause__
    return None


def _sentence(err: BaseException) -> str | None:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = err.filename or "the output device"
        return str(err) if str(err).startswith("no space left") else f"no space left on {where}"
    if isinstance(err, _anticipated_types()):
        return " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, PATH_ERRORS):
        reason = err.strerror or str(err)
        return f"{err.filename}: {reason.lower()}" if err.filename else reason
    return None


def exit_with_sentence(err: BaseException) -> None:
    """Raise SystemExit(1) with the one-line message for an anticipated `err`; else return."""
    if full_errors():
        return
    message = one_line(err)
    if message is None:
        return
    rank = int(os.environ.get("RANK", "0") or 0)
    prefix = f"rank {rank}: " if rank else ""  # the sentence alone (exit status 1 says it failed)
    raise SystemExit(prefix + message) from None


def run_cli(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator for an entry point's task function (and the code that runs before Hydra)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001  (anticipated ones become one line, others re-raise)
            exit_with_sentence(err)
            raise

    return wrapper
