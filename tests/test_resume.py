"""Resume and faults: SIGKILL then `ckpt_path=last` equals an uninterrupted run; NaN guard;
atomic checkpoint writes; how a resume command line is rebuilt."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, TINY, TINY_DATA, compose_config

from genrec.run.callbacks import AtomicCheckpointIO, NonFiniteLossError
from genrec.run.checkpoint import CheckpointError, read_checkpoint
from genrec.run.resume import resolve_ckpt_path, resume_argv
from genrec.run.training import train
from genrec.tasks.next_item import NextItemTask

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def _train_py(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def _test_metrics(run: Path) -> dict[str, float]:
    metrics = json.loads((run / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if k.startswith(("test/", "val/"))}


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_metrics(tmp_path):
    # 300 users / batch 64 = 5 steps per epoch: step 12 is in the middle of the third epoch;
    # bce draws negatives, dropout draws from torch's RNG: both must replay exactly
    args = [*TINY_DATA, *(t for t in TINY if t != "logger=none"), "logger=csv", "trainer.log_every_n_steps=1",
            "trainer.max_epochs=3", "task.loss=bce", "callbacks.early_stopping.patience=1",
            f"paths.data_dir={tmp_path / 'data'}"]
    straight = _train_py([*args, f"hydra.run.dir={tmp_path / 'straight'}"])
    assert straight.returncode == 0, straight.stderr[-3000:]

    run = tmp_path / "killed"
    killed = _train_py([*args, f"hydra.run.dir={run}", "+callbacks.fault._target_=tests.faults.SigkillAtStep",
                        "+callbacks.fault.step=12"])
    assert killed.returncode == -signal.SIGKILL
    assert not (run / "metrics.json").exists()
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 1  # end of the 2nd epoch

    # the resume names only the run: its overrides are replayed from .hydra/overrides.yaml
    resumed = _train_py(["ckpt_path=last", f"hydra.run.dir={run}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert _test_metrics(run) == _test_metrics(tmp_path / "straight")  # exact, on the CPU
    # the CSV log is continuous and every step's loss is the same as in the straight run
    assert _csv_curve(run) == _csv_curve(tmp_path / "straight")
    assert len(_csv_curve(run)) == 15 + 3  # 3 epochs x 5 steps + 3 validations


def _csv_curve(run: Path) -> list[tuple]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return [(r["step"], r["train/loss"], r["val/ndcg@10"]) for r in csv.DictReader(f)
                if r["train/loss"] or r["val/ndcg@10"]]


def test_nan_guard_stops_on_injected_inf_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    step = NextItemTask.training_step

    def poisoned(self, batch, batch_idx):
        loss = step(self, batch, batch_idx)
        return loss * float("inf") if self.global_step == 7 else loss  # 2nd epoch (5 steps each)

    monkeypatch.setattr(NextItemTask, "training_step", poisoned)
    cfg = compose_config(tmp_path, ["trainer.max_epochs=3"])
    with pytest.raises(NonFiniteLossError, match=r"train/loss is inf .* global step 7.*last\.ckpt"):
        train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    ckpt = read_checkpoint(last)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 5  # nothing written after the bad step
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values() if t.is_floating_point())
    assert not (Path(cfg.paths.output_dir) / "metrics.json").exists()


def test_atomic_checkpoint_write_keeps_the_old_file_when_a_save_dies(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # what a kill looks like from inside the process

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary left behind
    io.save_checkpoint({"step": 3}, path)
    assert torch.load(path, weights_only=True)["step"] == 3


def test_resume_argv_replays_the_runs_overrides_and_lets_new_ones_win(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old, new = tmp_path / "outputs/2024-01-01/10-00-00", tmp_path / "outputs/2024-01-02/09-00-00"
    for run, overrides in ((old, ["seed=1"]), (new, ["trainer.max_epochs=3", "seed=7",
                                                     "+callbacks.fault._target_=x.Y"])):
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "last.ckpt").write_bytes(b"")
        (run / ".hydra").mkdir()
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    os.utime(old / "checkpoints" / "last.ckpt", (1, 1))

    argv = resume_argv(["train.py", "ckpt_path=last", "trainer.max_epochs=9", "~callbacks.fault"])
    assert argv == ["train.py", "ckpt_path=last", "trainer.max_epochs=9", "~callbacks.fault", "seed=7",
                    f'hydra.run.dir="{Path("outputs/2024-01-02/09-00-00")}"']
    # an explicit run directory, or a checkpoint inside one, picks that run
    assert "seed=1" in resume_argv(["train.py", "ckpt_path=last", f"hydra.run.dir={old}"])
    assert "seed=1" in resume_argv(["train.py", f"ckpt_path={old}/checkpoints/last.ckpt"])
    # no resume, or a sweep: untouched
    assert resume_argv(["train.py", "seed=3"]) == ["train.py", "seed=3"]
    assert resume_argv(["train.py", "-m", "ckpt_path=last"]) == ["train.py", "-m", "ckpt_path=last"]


def test_ckpt_path_last_without_a_checkpoint_fails_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="hydra.run.dir="):
        resolve_ckpt_path("last", tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        resolve_ckpt_path(str(tmp_path / "nope.ckpt"), tmp_path)
    assert resolve_ckpt_path(None, tmp_path) is None
