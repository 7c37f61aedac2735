"""train(cfg): fit, keep the best checkpoint by the validation metric, test it, report."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from genrec.rank_zero_log import get_logger
from genrec.run.callbacks import AtomicCheckpointIO, BestValidationMetrics, EpochSeed
from genrec.run.checkpoint import ConfigInCheckpoint
from genrec.run.distributed import torchrun_trainer_overrides
from genrec.run.report import print_metrics_table
from genrec.run.resume import keep_csv_history, resolve_ckpt_path
from genrec.run.wandb_logger import WandbRunLogger
from genrec.tasks.base import required_inputs
from genrec.validation import check_writable

log = get_logger(__name__)


def build_components(cfg: DictConfig):
    """(datamodule, task) from the config: the data says what the model is built from
    (model_kwargs) and which inputs it has; the task says which batch fields it reads."""
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()
    net = instantiate(cfg.model, **datamodule.model_kwargs())
    datamodule.check_inputs(required_inputs(net), cfg.model._target_)
    task = instantiate(cfg.task, net=net)
    datamodule.require_fields(train=task.batch_fields("train"), eval=task.batch_fields("eval"))
    return datamodule, task


def build_trainer(cfg: DictConfig, **overrides) -> L.Trainer:
    """Callbacks and loggers from the config, plus what every run needs: the config in each
    checkpoint, per-epoch seeding (exact resume) and atomic checkpoint writes."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    if not loggers:  # LearningRateMonitor raises without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning raises on a bar it may not show
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    callbacks += [ConfigInCheckpoint(cfg), EpochSeed(cfg.seed)]
    if cfg.trainer.get("plugins") is None:
        overrides.setdefault("plugins", [AtomicCheckpointIO()])
    overrides = {**torchrun_trainer_overrides(cfg.trainer), **overrides}
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **overrides)


def train(cfg: DictConfig) -> dict[str, float]:
    """Returns the test metrics (flat keys, e.g. test/ndcg@10) of the best checkpoint."""
    L.seed_everything(cfg.seed, workers=True, verbose=rank_zero_only.rank == 0)
    out_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), out_dir)
    if rank_zero_only.rank == 0:  # an output that cannot be written fails now, not after an epoch
        check_output_dirs(cfg)
    datamodule, task = build_components(cfg)
    trainer = build_trainer(cfg)
    if rank_zero_only.rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
    if ckpt_path is not None:
        log.info("resuming from %s", ckpt_path)
    try:
        metrics = _fit_and_test(cfg, trainer, task, datamodule, ckpt_path)
    except BaseException:
        _close_loggers(trainer, exit_code=1)
        raise
    _close_loggers(trainer, exit_code=0)
    if rank_zero_only.rank == 0:
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        print_metrics_table(metrics, title=f"test metrics ({cfg.model._target_.rsplit('.', 1)[-1]})")
        log.info("run directory: %s", out_dir.resolve())
    return metrics


def _fit_and_test(cfg: DictConfig, trainer: L.Trainer, task, datamodule, ckpt_path: str | None) -> dict:
    unsafe = bool(cfg.get("allow_unsafe_checkpoint", False))  # default: tensors and plain data only
    keep_csv_history(trainer.loggers, ckpt_path, unsafe)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(resolved)
    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=not unsafe)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    for callback in trainer.callbacks:  # the best validation pass's val/..._best, beside the last's
        if isinstance(callback, BestValidationMetrics):
            metrics |= callback.best_metrics()
    if cfg.get("test", True):
        best = _best_checkpoint(trainer)
        trainer.test(task, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=not unsafe)
        metrics |= {k: float(v) for k, v in trainer.callback_metrics.items()
                    if k.startswith(("test/", "popularity/"))}
        metrics["best_checkpoint"] = best
        _log_to_wandb(trainer, metrics, best)
    metrics["data"] = datamodule.sequences.describe()  # which dataset, from where, its counts
    return metrics


def check_output_dirs(cfg: DictConfig) -> None:
    """The run directory and every ModelCheckpoint dirpath exist and take a file (ConfigError)."""
    check_writable("paths.output_dir", cfg.paths.output_dir)
    for name, callback in (cfg.get("callbacks") or {}).items():
        if callback is not None and str(callback.get("_target_", "")).endswith("ModelCheckpoint") \
                and callback.get("dirpath"):
            check_writable(f"callbacks.{name}.dirpath", callback.dirpath)


def _log_to_wandb(trainer: L.Trainer, metrics: dict, best: str | None) -> None:
    ckpt_cb = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    for logger in trainer.loggers:
        if isinstance(logger, WandbRunLogger):
            logger.log_test_table(metrics)
            if best is not None:
                score = ckpt_cb.best_model_score
                logger.log_checkpoint(best, ckpt_cb.monitor, None if score is None else float(score))


def _close_loggers(trainer: L.Trainer, exit_code: int) -> None:
    for logger in trainer.loggers:
        if isinstance(logger, WandbRunLogger):
            logger.close(exit_code)


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    ckpt_cb = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    if ckpt_cb is None or not ckpt_cb.best_model_path:
        log.warning("no best checkpoint recorded: testing the weights in memory")
        return None
    return ckpt_cb.best_model_path
