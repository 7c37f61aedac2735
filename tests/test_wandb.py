"""logger=wandb without network: offline runs hold the config, metrics, test table and checkpoint
artifact; offline is chosen without an API key; a Hydra multirun is one W&B group."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY, TINY_DATA, compose_config

from genrec.run.training import train
from genrec.run.wandb_logger import WandbRunLogger


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """WANDB_MODE=offline, no key, and every W&B directory inside tmp_path."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc key either


def _run_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))


def test_offline_run_holds_config_metrics_table_and_checkpoint(tmp_path, offline_wandb):
    import wandb

    cfg = compose_config(tmp_path, ["logger=wandb", "trainer.log_every_n_steps=1"])
    train(cfg)
    assert wandb.run is None  # finished, so a following multirun job starts its own run
    (run_file,) = _run_files(Path(cfg.paths.output_dir))
    # the run's record log (protobuf records) names every key it holds
    records = run_file.read_bytes()
    for key in (b"hidden_units", b"max_epochs",  # the resolved run config
                b"train/loss", b"lr-Adam", b"val/ndcg@10", b"test/ndcg@10",  # per step / epoch / test
                b"test/table", b"model.ckpt", b"proc.memory"):  # table, artifact, system metrics
        assert key in records, key
    assert list(run_file.parent.glob("files/media/table/test/table_*.table.json"))


def test_offline_is_chosen_when_no_api_key_is_found(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert WandbRunLogger(save_dir=str(tmp_path))._offline is True
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert WandbRunLogger(save_dir=str(tmp_path))._offline is False
    monkeypatch.setenv("WANDB_MODE", "disabled")  # an explicit mode is left to wandb itself
    monkeypatch.delenv("WANDB_API_KEY")
    assert WandbRunLogger(save_dir=str(tmp_path))._offline is False
    # one W&B run per run directory: resuming there continues it
    assert WandbRunLogger(save_dir=str(tmp_path)).version == WandbRunLogger(save_dir=str(tmp_path)).version


def test_multirun_jobs_are_separate_runs_in_one_group(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HOME": str(tmp_path),
           "WANDB_CACHE_DIR": str(tmp_path / "cache"), "WANDB_CONFIG_DIR": str(tmp_path / "config"),
           "WANDB_DATA_DIR": str(tmp_path / "wdata")}
    env.pop("WANDB_API_KEY", None)
    args = [*TINY_DATA, *(t for t in TINY if not t.startswith("logger=")), "logger=wandb",
            "trainer.max_epochs=1", "logger.wandb.log_best_checkpoint=false",
            f"paths.data_dir={tmp_path / 'data'}",
            f"hydra.sweep.dir={tmp_path / 'multirun/2024-01-01/10-00-00'}"]
    proc = subprocess.run([sys.executable, "train.py", "--multirun", "seed=1,2", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = [f for job in ("0", "1") for f in _run_files(tmp_path / "multirun/2024-01-01/10-00-00" / job)]
    assert len(files) == 2 and files[0].name != files[1].name  # two runs, two ids
    for f, seed in zip(files, (1, 2), strict=True):
        records = f.read_bytes()
        assert b"2024-01-01/10-00-00" in records  # the group: the sweep directory
        assert f"seed={seed}".encode() in records  # the name: job number and overrides
