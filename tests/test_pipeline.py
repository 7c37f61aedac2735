"""The entry points end to end on tiny synthetic data: train, evaluate, configs, errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONF, ROOT, compose_config
from hydra.utils import instantiate

from genrec.run.checkpoint import CheckpointError, read_checkpoint
from genrec.run.evaluation import evaluate
from genrec.run.training import build_components, build_trainer, train


def test_every_config_group_option_composes_and_instantiates(tmp_path):
    for data in sorted(p.stem for p in (CONF / "data").glob("*.yaml")):
        cfg = compose_config(tmp_path, [f"data={data}"])
        assert cfg.data.source._target_
    cfg = compose_config(tmp_path)
    for group in ("callbacks", "logger"):
        for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
            composed = compose_config(tmp_path, [f"{group}={option}"])
            for node in (composed.get(group) or {}).values():
                if node is not None and "wandb" not in node._target_.lower():
                    instantiate(node)
    datamodule, task = build_components(cfg)
    assert task.net.config.n_items == datamodule.n_items == 120


def test_experiments_compose(tmp_path):
    for exp in sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")):
        cfg = compose_config(tmp_path, [f"experiment={exp}"])
        assert cfg.model._target_ and cfg.data._target_


def test_progress_bar_off_drops_the_bar_callback(tmp_path):
    """trainer.enable_progress_bar=false alone is enough (Lightning refuses a bar callback then)."""
    from lightning.pytorch.callbacks import ProgressBar
    trainer = build_trainer(compose_config(tmp_path, ["trainer.enable_progress_bar=false"]))
    assert not any(isinstance(c, ProgressBar) for c in trainer.callbacks)
    trainer = build_trainer(compose_config(tmp_path, ["trainer.enable_progress_bar=true"]))
    assert any(isinstance(c, ProgressBar) for c in trainer.callbacks)


def test_scheduler_with_total_steps_decays_over_max_epochs(tmp_path):
    cfg = compose_config(tmp_path, [
        "trainer.max_epochs=2", "callbacks.early_stopping=null",
        "task.scheduler={_target_:genrec.tasks.schedules.cosine_decay,_partial_:true}"])
    datamodule, task = build_components(cfg)
    trainer = build_trainer(cfg)
    trainer.fit(task, datamodule=datamodule)
    assert trainer.global_step == trainer.estimated_stepping_batches > 2
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_sasrec_learns_on_synthetic_data(tmp_path):
    metrics = train(compose_config(tmp_path, [
        "trainer.max_epochs=8", "task.optimizer.lr=0.005", "data.source.n_users=500"]))
    assert metrics["test/ndcg@10"] > 2 * metrics["popularity/test/ndcg@10"]
    assert metrics["test/sampled/ndcg@10"] > 2 * metrics["popularity/test/sampled/ndcg@10"]


def test_bce_loss_trains(tmp_path):
    metrics = train(compose_config(tmp_path, ["task.loss=bce", "trainer.max_epochs=1"]))
    assert 0.0 <= metrics["test/ndcg@10"] <= 1.0


def test_train_writes_outputs_and_evaluate_reproduces_test_metrics(tmp_path):
    cfg = compose_config(tmp_path, ["callbacks.early_stopping=null"])
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    written = json.loads((run / "metrics.json").read_text())
    assert written["test/ndcg@10"] == pytest.approx(metrics["test/ndcg@10"])
    assert (run / "config.yaml").exists()
    best = Path(metrics["best_checkpoint"])
    assert best.exists() and (run / "checkpoints" / "last.ckpt").exists()

    eval_cfg = compose_config(tmp_path, [f"ckpt_path={best}", f"output_dir={tmp_path / 'eval'}",
                                         "progress_bar=false"], config_name="evaluate")
    again = evaluate(eval_cfg)
    for key in ("test/ndcg@10", "test/hr@10", "test/sampled/ndcg@10", "popularity/test/ndcg@10"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-6), key
    assert (tmp_path / "eval" / "metrics_at_k.png").stat().st_size > 10_000
    assert "test/hr@50" in json.loads((tmp_path / "eval" / "metrics.json").read_text())


def test_foreign_or_corrupt_checkpoint_is_refused(tmp_path):
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a genrec training checkpoint"):
        read_checkpoint(foreign)
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(corrupt)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.ckpt")


def test_config_typo_fails_with_hydras_message(tmp_path):
    proc = subprocess.run([sys.executable, "train.py", "model.hiden_units=8"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Could not override 'model.hiden_units'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_train_py_default_command_runs(tmp_path):
    """`python train.py` as a user types it (default synthetic data, fewer epochs)."""
    proc = subprocess.run(
        [sys.executable, "train.py", "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'run'}",
         f"paths.data_dir={tmp_path / 'data'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NDCG@10" in proc.stdout
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test/ndcg@10"] > 0
