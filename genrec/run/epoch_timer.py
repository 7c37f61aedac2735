"""Wall-clock logging, so every run's CSV/W&B log carries time-to-quality."""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.callbacks import Callback


class EpochTimer(Callback):
    """Logs `time/epoch_seconds` (the epoch's training and its validation: Lightning calls
    on_train_epoch_end after the epoch's validation) and `time/elapsed_minutes` since fit start."""

    def __init__(self) -> None:
        self._fit_start = 0.0
        self._epoch_start = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.perf_counter()
        pl_module.log("time/epoch_seconds", now - self._epoch_start)
        pl_module.log("time/elapsed_minutes", (now - self._fit_start) / 60)
