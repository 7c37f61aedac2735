"""Callbacks and the checkpoint writer that make runs resumable and failures explicit.

- `EpochSeed`: reseeds every RNG at each epoch start from (seed, epoch, rank), so the random
  stream of epoch e does not depend on how the run got there (straight through or resumed).
- `NonFiniteLossGuard`: stops at the first NaN/inf loss, before the update, on every rank.
- `AtomicCheckpointIO`: a checkpoint file is either the old one or the new one, never half.
- `BestValidationMetrics`: the best validation pass's metrics, logged as `val/..._best`.
"""

from __future__ import annotations

import errno
import os
import random
import uuid
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from genrec.data.samplers import item_seed
from genrec.rank_zero_log import get_logger

log = get_logger(__name__)


class EpochSeed(Callback):
    """Seeds torch (all devices), numpy and `random` at each training epoch start.

    Dropout and anything else drawn from the global RNGs then depends only on (seed, epoch,
    global rank): a run resumed from an end-of-epoch checkpoint replays the next epoch exactly
    as the uninterrupted run did. (Data order and negatives have their own per-epoch seeds,
    see genrec/data/samplers.py.)
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seed = item_seed(self.seed, trainer.current_epoch, trainer.global_rank)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("seed") != self.seed:
            log.warning("resuming a run trained with seed=%s under seed=%s: the rest of the run "
                        "will not match an uninterrupted one", state_dict.get("seed"), self.seed)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class NonFiniteLossGuard(Callback):
    """Raises NonFiniteLossError when the loss is not finite on any rank, before backward.

    No optimizer step is taken with the bad loss and no checkpoint is written after it (an
    exception skips Lightning's end-of-epoch saving), so `checkpoints/last.ckpt` stays the
    last good state. Under DDP the ranks agree first, so they all stop instead of one hanging.
    """

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            message = self._message(trainer, loss)
            log.error(message)
            raise NonFiniteLossError(message)

    @staticmethod
    def _message(trainer: L.Trainer, loss: torch.Tensor) -> str:
        where = (f"train/loss is {loss.detach().float().cpu().item()} on rank {trainer.global_rank} "
                 f"at epoch {trainer.current_epoch}, global step {trainer.global_step}")
        ckpt = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        last = Path(ckpt.dirpath) / "last.ckpt" if ckpt is not None and ckpt.dirpath else None
        if last is not None and last.is_file():
            kept = (f"the last good checkpoint is kept at {last} (resume: python train.py "
                    f"ckpt_path=last hydra.run.dir={last.parent.parent})")
        else:
            kept = "no checkpoint had been written yet"
        return (f"{where} (or another rank's is): training stopped before this update; {kept}. "
                "Lower the learning rate or set trainer.gradient_clip_val.")


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file beside the target, fsync, then os.replace.

    os.replace is atomic on POSIX filesystems, so a kill during a save leaves the previous
    `last.ckpt` intact (plus at most a hidden `.last.ckpt.*.tmp` file). Remote paths (with a
    URL scheme) fall back to Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # same directory (a rename across filesystems is a copy); open() keeps the umask's mode
        tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp, "xb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            if _disk_full(err):  # one line instead of torch's writer errors; older files are intact
                raise DiskFullError(f"no space left on {path.parent} (writing {path.name}); "
                                    "free space there and resume: python train.py ckpt_path=last") from err
            raise
        _fsync_dir(path.parent)  # the rename itself survives a power loss


class DiskFullError(OSError):
    """A checkpoint could not be written: its filesystem is full."""


def _disk_full(err: BaseException | None) -> bool:
    """ENOSPC anywhere in the exception chain (torch's writer may wrap the OSError)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        err = err.__cause__ or err.__context__
    return False


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BestValidationMetrics(Callback):
    """Keeps every `val/...` metric of the best validation pass, logged as `<key>_best`.

    After each validation pass (not the sanity check) in which `monitor` improved, the pass's
    `val/...` values are snapshotted; the snapshot is logged to every logger and put into
    `trainer.callback_metrics` as e.g. `val/ndcg@10_best`, so `metrics.json` and a sweeper's
    `optimized_metric` report the best checkpoint's validation metrics, not the last epoch's.
    The snapshot is in the checkpoint: a resumed run keeps its best. Under DDP the metric values
    are already reduced across ranks when this runs.
    """

    SUFFIX = "_best"

    def __init__(self, monitor: str, mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"BestValidationMetrics mode must be 'max' or 'min', got {mode!r}")
        self.monitor = monitor
        self.mode = mode
        self.best_score: float | None = None
        self.best: dict[str, float] = {}  # the best pass's val/... values, keys without suffix

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    def best_metrics(self) -> dict[str, float]:
        """The best pass's metrics under their `<key>_best` names (empty before any pass)."""
        return {f"{k}{self.SUFFIX}": v for k, v in self.best.items()}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            log.warning("BestValidationMetrics: %s was not logged in this validation pass", self.monitor)
            return
        score = float(value)
        if self._improved(score):
            self.best_score = score
            self.best = {k: float(v) for k, v in trainer.callback_metrics.items()
                         if k.startswith("val/") and not k.endswith(self.SUFFIX)}
        best = self.best_metrics()
        for key, v in best.items():
            trainer.callback_metrics[key] = torch.tensor(v)
        for logger in trainer.loggers:
            logger.log_metrics(best, step=trainer.global_step)

    def _improved(self, score: float) -> bool:
        if score != score:  # NaN never improves
            return False
        if self.best_score is None:
            return True
        return score > self.best_score if self.mode == "max" else score < self.best_score

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "mode": self.mode, "best_score": self.best_score,
                "best": dict(self.best)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict["best_score"]
        self.best = dict(state_dict["best"])
