"""Shared fixtures: the real Hydra configs composed with tiny overrides (CPU, few batches, tmp dirs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

import genrec.resolvers  # noqa: F401  (resolvers)

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
SHARED_DATA = Path(os.environ.get("GENREC_SHARED_DATA", ROOT.parent / "shared" / "data"))

# A small synthetic dataset that trains in seconds (left out when a test picks data=...).
TINY_DATA = [
    "data.source.n_users=300",
    "data.source.n_items=120",
    "data.source.min_length=8",
    "data.source.max_length=30",
]
TINY = [
    "data.maxlen=20",
    "data.batch_size=64",
    "data.sampled_negatives=50",
    "model.hidden_units=32",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logger=none",
]


def _tiny_for(overrides) -> list[str]:
    """TINY minus the entries about a group the test picks itself (data=..., callbacks=...)."""
    picked = {o.split("=")[0] for o in overrides if "=" in o and "." not in o.split("=")[0]}
    if "experiment" in picked:
        picked.add("data")
    tiny = TINY if "data" in picked else TINY_DATA + TINY
    return [t for t in tiny if t.split(".")[0].split("=")[0] not in picked]


def compose_config(tmp_path: Path, overrides: list[str] = (), config_name: str = "train") -> DictConfig:
    """Compose conf/<config_name>.yaml as the entry point would, writing under tmp_path."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        if config_name == "train":
            overrides = [*_tiny_for(overrides), *overrides]
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=False)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.data_dir = str(tmp_path / "data")
    return cfg


@pytest.fixture
def one_thread():
    """Tiny matmuls on one torch thread: two fight over the shared CPUs (~20x slower per step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def experiment_config(tmp_path: Path, overrides: list[str]) -> DictConfig:
    """An experiment composed as train.py would (no TINY shrinking: the caller's overrides shrink
    it), on the CPU without loggers or bars, writing under tmp_path."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false", "logger=none", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.data_dir = str(tmp_path / "data")
    return cfg


@pytest.fixture
def tiny_cfg(tmp_path):
    """compose(overrides) -> a tiny training config writing under tmp_path."""
    return lambda *overrides: compose_config(tmp_path, list(overrides))


def shared_file(relative: str) -> Path:
    """A file of ../shared/data, or skip the test when the checkout has none beside it."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} not found (set GENREC_SHARED_DATA)")
    return path
