"""Process-level DDP plumbing that runs before Lightning's process group exists.

Two launchers start the ranks: torchrun (every rank runs train.py from the start, at the same
time) and Lightning's own (`trainer.devices=N`: rank 0 runs train.py and starts the others when
`fit` begins, passing `hydra.run.dir` to them). This module lets both end with one run directory
written by rank zero: the other ranks learn rank zero's directory before Hydra starts and keep
Hydra from writing there, wait for rank zero's data cache, and get `devices`/`num_nodes` from
torchrun's variables.
"""

from __future__ import annotations

import fcntl
import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

_RUN_DIR_KEY = "genrec/run_dir"


def env_local_rank() -> int:
    """This process's rank on its node, from the launcher's variables (0 when not launched)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def env_global_rank() -> int:
    """Global rank from torchrun's RANK, else the node-local rank (Lightning's children)."""
    return int(os.environ.get("RANK", env_local_rank()))


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def torchrun_trainer_overrides(trainer_cfg) -> dict:
    """`devices`/`num_nodes` for the Trainer from torchrun's variables, when the config says auto."""
    if not launched_by_torchrun() or str(trainer_cfg.get("devices", "auto")) != "auto":
        return {}
    local = int(os.environ["LOCAL_WORLD_SIZE"])
    return {"devices": local, "num_nodes": int(os.environ["WORLD_SIZE"]) // local}


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created if missing), released on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def wait_for_file(path: Path, what: str, timeout_s: float = 3600.0, poll_s: float = 0.2) -> None:
    """Block until another rank has written `path` (written atomically, so existence = complete)."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {env_global_rank()} waited {timeout_s:.0f}s for {what} "
                               f"at {path}; did rank 0 fail?")
        time.sleep(poll_s)


def build_once(done: Path, lock: Path, build: Callable[[], None], what: str) -> None:
    """Run `build` (which writes `done` last) once across processes: local rank 0 builds under a
    file lock (nodes may share the filesystem), the other ranks wait for `done`."""
    if done.exists():
        return
    if env_local_rank() != 0:
        wait_for_file(done, what=what)
        return
    with file_lock(lock):
        if not done.exists():  # another node may have built it meanwhile
            build()


# ---- before Hydra: one run directory for all ranks ----
def _has_override(overrides: list[str], key: str) -> bool:
    return any(o.lstrip("+~").split("=", 1)[0] == key for o in overrides)


def _agent_store():
    """A client of the key-value store torchrun's agent hosts at MASTER_ADDR:MASTER_PORT."""
    from torch.distributed import TCPStore  # noqa: PLC0415  (keeps `import genrec` light)

    return TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                    timeout=timedelta(minutes=10))


def _store_key() -> str:
    # a restarted torchrun attempt (--max-restarts) agrees on a new directory
    return f"{_RUN_DIR_KEY}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def _can_share_run_dir(argv: list[str]) -> bool:
    return (launched_by_torchrun() and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
            and not any(a in ("-m", "--multirun") for a in argv))


def rank_argv(argv: list[str]) -> list[str]:
    """The Hydra command line for this rank.

    Ranks other than zero write nothing: no `.hydra/` snapshot, no log file (logs go to the
    console, where the rank-zero loggers keep them quiet, and Python warnings are silenced:
    rank zero runs the same code and shows them once). Under torchrun they also take rank
    zero's run directory from the agent's store, so checkpoints and logs land in one place.
    """
    if env_global_rank() == 0:
        return argv
    warnings.simplefilter("ignore")
    overrides = argv[1:]
    extra = []
    if not _has_override(overrides, "hydra.output_subdir"):
        extra.append("hydra.output_subdir=null")
    if not _has_override(overrides, "hydra/job_logging"):
        extra.append("hydra/job_logging=stdout")
    if not _has_override(overrides, "hydra.run.dir") and _can_share_run_dir(argv):
        run_dir = _agent_store().get(_store_key()).decode()
        extra.append(f'hydra.run.dir="{run_dir}"')
    return [*argv, *extra]


def share_run_dir(run_dir: str, argv: list[str]) -> None:
    """Rank zero under torchrun: publish the run directory the other ranks wait for in rank_argv."""
    if env_global_rank() == 0 and _can_share_run_dir(argv):
        _agent_store().set(_store_key(), str(run_dir))
