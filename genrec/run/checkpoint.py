"""Checkpoints carry their own run config, so evaluate.py and export.py rebuild without guessing."""

from __future__ import annotations

import functools
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from genrec.rank_zero_log import get_logger

log = get_logger(__name__)

CONFIG_KEY = "genrec_config"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or not what the caller expects."""


class ConfigInCheckpoint(Callback):
    """Stores the resolved run config in every checkpoint Lightning writes."""

    def __init__(self, cfg: DictConfig) -> None:
        self.config = OmegaConf.to_container(cfg, resolve=True)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = self.config
        # the task's hparams hold Hydra partials (optimizer): stored as their config, so the file
        # loads with torch.load(weights_only=True) (nothing reads them back from a checkpoint)
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"] = plain_data(checkpoint["hyper_parameters"])


def plain_data(value):
    """`value` as dicts, lists, strings, numbers and tensors only; a partial becomes its Hydra
    config ({_target_, _partial_: true, **keywords}), anything else its repr."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, functools.partial):
        func = value.func
        target = f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', repr(func))}"
        return {"_target_": target, "_partial_": True, **plain_data(dict(value.keywords))}
    if isinstance(value, Mapping):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    return repr(value)


def load_checkpoint_file(path: str | Path, allow_unsafe: bool = False, mmap: bool = False):
    """torch.load on the CPU with weights_only=True: tensors and plain data only, so a file
    with a pickle payload is refused before any of it runs. `allow_unsafe` (the config key
    `allow_unsafe_checkpoint=true`) loads any pickle, with a warning naming the file."""
    path = Path(path)
    if allow_unsafe:
        log.warning("%s: loading with weights_only=False (allow_unsafe_checkpoint=true): a pickle "
                    "in this file can run any code; do this only for files you trust", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_unsafe, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if allow_unsafe or found is None:  # a corrupt file, not a foreign object
            reason = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(err))
            reason = reason.group(1) if reason else str(err).splitlines()[0]
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (UnpicklingError: "
                                  f"{reason[:200]})") from err
        raise CheckpointError(
            f"{path}: holds pickled Python objects ({found.group(1)}) besides tensors and plain data, "
            "which could run code when loaded; refused. Only if you trust the file: "
            "allow_unsafe_checkpoint=true") from None
    except Exception as err:  # torch raises several types for truncated or foreign files
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason})") from err


def read_checkpoint(path: str | Path, allow_unsafe: bool = False) -> dict:
    """Load a genrec checkpoint on the CPU, with one clear error for every way it can be wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    ckpt = load_checkpoint_file(path, allow_unsafe)
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
