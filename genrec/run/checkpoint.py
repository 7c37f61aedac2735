"""Checkpoints carry their own run config, so evaluate.py and export.py rebuild without guessing."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

CONFIG_KEY = "genrec_config"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or not what the caller expects."""


class ConfigInCheckpoint(Callback):
    """Stores the resolved run config in every checkpoint Lightning writes."""

    def __init__(self, cfg: DictConfig) -> None:
        self.config = OmegaConf.to_container(cfg, resolve=True)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = self.config


def read_checkpoint(path: str | Path) -> dict:
    """Load a genrec checkpoint on the CPU, with one clear error for every way it can be wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for truncated or foreign files
        reason = f"{type(err).__name__}: {err}"
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason})") from err
    if not isinstance(ckpt, dict) or CONFIG_KEY not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a genrec training checkpoint (no '{CONFIG_KEY}' or 'state_dict')")
    return ckpt


def build_net(ckpt: dict, path: str | Path = "<checkpoint>") -> torch.nn.Module:
    """The plain nn.Module with its trained weights, rebuilt from the checkpoint alone."""
    net_config = ckpt["hyper_parameters"]["net_config"]
    net = instantiate(net_config)
    state = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit {net_config['_target_']}: {err}") from err
    return net.eval()


def build_task(ckpt: dict, path: str | Path = "<checkpoint>", expected_target: str | None = None,
               task_overrides: dict | None = None, run_cfg: DictConfig | None = None):
    """(task LightningModule with weights, run config) from a checkpoint.

    `expected_target` guards against a checkpoint of another model (e.g. export of model=X);
    `task_overrides` changes evaluation-only task fields (such as the Ks).
    """
    cfg = run_cfg if run_cfg is not None else OmegaConf.create(ckpt[CONFIG_KEY])
    found = cfg.model._target_
    if expected_target is not None and found != expected_target:
        raise CheckpointError(f"{path}: checkpoint holds model {found}, expected {expected_target}")
    net = build_net(ckpt, path)
    task = instantiate(cfg.task, net=net, **(task_overrides or {}))
    task.load_state_dict(ckpt["state_dict"], strict=False)
    return task, cfg
