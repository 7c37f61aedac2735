"""The entry points end to end on tiny synthetic data: train, evaluate, configs, errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONF, ROOT, compose_config
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from genrec.data.behavior_datamodule import BehaviorDataModule
from genrec.data.behavior_datasets import BehaviorEvalDataset, BehaviorTrainDataset, collate_behavior
from genrec.data.datasets import NextItemEvalDataset, NextItemTrainDataset, collate
from genrec.data.phoenix_datamodule import PhoenixDataModule
from genrec.data.phoenix_datasets import PhoenixEvalDataset, RetrievalTrainDataset, collate_phoenix
from genrec.run.checkpoint import CheckpointError, read_checkpoint
from genrec.run.evaluation import evaluate
from genrec.run.training import build_components, build_trainer, train


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_data_option_instantiates_its_data_module(tmp_path):
    for data in _options("data"):
        cfg = compose_config(tmp_path, [f"data={data}"])
        datamodule = instantiate(cfg.data)  # builds nothing yet: no file is read
        assert datamodule.source.name == data  # data=X loads the dataset named X
        assert datamodule.maxlen == cfg.data.maxlen > 0
        behavior = (BehaviorTrainDataset, BehaviorEvalDataset, collate_behavior)  # + features, labels
        next_item = (NextItemTrainDataset, NextItemEvalDataset, collate)
        phoenix = (RetrievalTrainDataset, PhoenixEvalDataset, collate_phoenix)  # events, candidates
        train_set, eval_set, batcher = behavior if isinstance(datamodule, BehaviorDataModule) else next_item
        if isinstance(datamodule, PhoenixDataModule):
            train_set, eval_set, batcher = phoenix
        assert datamodule.make_train_dataset.func is train_set
        assert datamodule.make_eval_dataset.func is eval_set
        assert datamodule.collate.func is batcher
        assert "${task." not in OmegaConf.to_yaml(cfg.data)  # data never follows a task setting


# model options that are not next-item scorers: built directly, small, with what their data gives
OTHER_MODELS = {
    "rpg_ed": {"n_digit": 3, "codebook_size": 8, "d_model": 32, "n_heads": 2, "d_inner": 64,
               "encoder_layers": 1, "decoder_layers": 1},
    **{name: {"n_items": 50, "num_features": 16, "embedding_dim": 32, "hidden_dim": 64, "num_layers": 1,
              "num_heads": 2, "heads": ("engagement",)}
       for name in ("generative", "generative_light", "generative_large", "generative_xl")},
    **{name: {"n_items": 50, "n_users": 20, "n_authors": 5, "n_surfaces": 3, "actions": ("favorite", "click"),
              "regression_actions": ("dwell_time",), "embedding_dim": 16, "num_layers": 1, "max_history": 8}
       for name in ("phoenix_retrieval", "phoenix_ranker", "phoenix_ranker_grok")},
}
# each task option with a model it takes
TASK_MODEL = {"next_item": "sasrec", "semantic_id": "rpg_ed", "generative": "generative_light",
              "retrieval": "phoenix_retrieval", "ranking": "phoenix_ranker"}


def _net(tmp_path, model: str):
    cfg = compose_config(tmp_path, [f"model={model}"])
    if model in OTHER_MODELS:
        return instantiate(cfg.model, **OTHER_MODELS[model])
    return build_components(cfg)[1].net


def test_every_model_option_builds_and_runs(tmp_path):
    for model in _options("model"):
        cfg = compose_config(tmp_path, [f"model={model}"])
        if model in OTHER_MODELS:
            net = _net(tmp_path, model)
            for key, value in OTHER_MODELS[model].items():
                assert getattr(net.config, key) == value, (model, key)
            continue
        datamodule, task = build_components(cfg)  # a next-item scorer on the default data
        assert task.net.config.n_items == datamodule.n_items == 120
        assert task.net.config.hidden_units == cfg.model.hidden_units
        assert type(task.net).__module__ + "." + type(task.net).__name__ == cfg.model._target_
        batch = next(iter(datamodule.val_dataloader()))
        task.eval()
        task.validation_step(batch, 0)
        assert int(task.metrics["val"].count) == len(batch), model


def test_every_task_option_instantiates_with_its_monitor_and_baselines(tmp_path):
    for name in _options("task"):
        assert name in TASK_MODEL, f"task={name}: add it to TASK_MODEL with a model it takes"
        cfg = compose_config(tmp_path, [f"task={name}", "task.monitor=val/mrr"])
        task = instantiate(cfg.task, net=_net(tmp_path, TASK_MODEL[name]))
        assert task.monitor == "val/mrr" == cfg.task.monitor
        assert [b.name for b in task.baselines] == ["popularity"]
        assert "popularity_test" in task.metrics and "val" in task.metrics


def test_every_callbacks_and_logger_option_instantiates(tmp_path):
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    for option in _options("callbacks"):
        cfg = compose_config(tmp_path, [f"callbacks={option}", "task.monitor=val/mrr"])
        built = [instantiate(n) for n in (cfg.get("callbacks") or {}).values() if n is not None]
        for callback in built:  # both follow the one task.monitor key
            if isinstance(callback, (ModelCheckpoint, EarlyStopping)):
                assert callback.monitor == "val/mrr" and callback.mode == "max"
        if option == "default":
            assert {type(c) for c in built} >= {ModelCheckpoint, EarlyStopping}
        else:
            assert built == []
    for option in _options("logger"):
        cfg = compose_config(tmp_path, [f"logger={option}"])
        for node in (cfg.get("logger") or {}).values():
            if node is not None and "wandb" not in node._target_.lower():  # wandb: tests/test_wandb.py
                logger = instantiate(node)
                assert str(tmp_path / "run") in str(logger.save_dir)


def _experiment(name: str):
    """An experiment as the user gets it: no test-size overrides."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[f"experiment={name}"])


# the published hyperparameters each experiment pins (see the comment at the top of each file)
PINNED = {
    "sasrec_ml1m": {
        "data.source.name": "ml-1m", "data.maxlen": 200, "data.batch_size": 128,
        "model._target_": "genrec.models.sasrec.SASRec", "model.hidden_units": 50, "model.num_blocks": 2,
        "model.num_heads": 1, "model.dropout": 0.2, "task.loss": "bce", "task.optimizer.lr": 0.001,
        "task.optimizer.betas": [0.9, 0.98], "trainer.max_epochs": 200,
        "trainer.check_val_every_n_epoch": 5, "callbacks.early_stopping.patience": 6},
    "sasrec_ml1m_ce": {
        "data.source.name": "ml-1m", "data.maxlen": 200, "data.batch_size": 128,
        "model.hidden_units": 128, "model.num_blocks": 2, "model.num_heads": 1, "model.dropout": 0.1,
        "model.init_std": 0.02, "task.loss": "ce", "task.optimizer.lr": 0.001,
        "task.scheduler._target_": "genrec.tasks.schedules.cosine_decay", "trainer.max_epochs": 100,
        "callbacks.early_stopping": None},
    "sasrec_ml1m_fast": {
        "data.source.name": "ml-1m", "data.maxlen": 200, "data.batch_size": 128,
        "model.hidden_units": 128, "model.num_blocks": 2, "model.num_heads": 1, "model.dropout": 0.1,
        "data.bucket_window": 8, "model.init_std": 0.02, "task.loss": "ce", "task.loss_reduction": "row_sum",
        "task.encoder_dtype": "auto", "task.optimizer.lr": 0.004,
        "task.scheduler._target_": "genrec.tasks.schedules.cosine_decay", "trainer.max_epochs": 30,
        "callbacks.early_stopping": None},
    "tisasrec_beauty": {
        "data.source.name": "beauty_time", "data.maxlen": 50, "data.batch_size": 128,
        "model._target_": "genrec.models.tisasrec.TiSASRec", "model.hidden_units": 50,
        "model.num_blocks": 2, "model.num_heads": 1, "model.dropout": 0.5, "model.time_span": 256,
        "task.loss": "bce", "task.optimizer.lr": 0.001, "trainer.max_epochs": 200,
        "callbacks.early_stopping.patience": 6},
    "rpg_ed_beauty": {
        "data.source.name": "beauty", "data.maxlen": 20, "data.batch_size": 256,
        "data.semantic_ids.source": "text", "data.semantic_ids.method": "rkmeans",
        "data.semantic_ids.n_digit": 4, "data.semantic_ids.codebook_size": 256,
        "model._target_": "genrec.models.rpg_ed.RPGED", "model.n_user_buckets": 2000,
        "model.d_model": 64, "model.n_heads": 4, "model.d_inner": 256, "model.encoder_layers": 2,
        "model.decoder_layers": 2, "task.beam_size": 10, "task.optimizer.lr": 0.001,
        "task.scheduler._target_": "genrec.tasks.schedules.cosine_decay", "trainer.max_epochs": 20,
        "trainer.check_val_every_n_epoch": 4, "trainer.max_time": "00:00:60:00",
        "callbacks.early_stopping": None},
    "sasrec_beauty_ce": {
        "data.source.name": "beauty", "data.maxlen": 50, "data.batch_size": 128,
        "model._target_": "genrec.models.sasrec.SASRec", "model.hidden_units": 64, "model.num_blocks": 2,
        "model.num_heads": 1, "model.dropout": 0.5, "task.loss": "ce", "task.optimizer.lr": 0.001,
        "task.scheduler._target_": "genrec.tasks.schedules.cosine_decay", "trainer.max_epochs": 20,
        "trainer.max_time": "00:00:30:00", "callbacks.early_stopping": None},
    "generative_synthetic": {
        "data.source.name": "behavior_synthetic", "data.num_features": 8, "data.maxlen": 50,
        "data.batch_size": 64, "model._target_": "genrec.models.generative.GenerativeRecommendationModel",
        "model.num_features": 8, "model.embedding_dim": 64, "model.num_layers": 2,
        "task._target_": "genrec.tasks.generative.GenerativeTask", "task.generation": "topk",
        "task.optimizer.lr": 0.002, "trainer.max_epochs": 10, "trainer.max_time": "00:00:05:00"},
    "generative_ml100k": {
        "data.source.name": "ml-100k-behavior", "data.num_features": 16, "data.maxlen": 200,
        "data.batch_size": 128, "model.num_features": 16, "model.embedding_dim": 64, "model.hidden_dim": 128,
        "model.num_layers": 2, "model.num_heads": 2, "model.dropout": 0.2, "model.scale_embedding": True,
        "task._target_": "genrec.tasks.generative.GenerativeTask", "task.optimizer.lr": 0.001,
        "trainer.max_epochs": 200, "trainer.max_time": "00:00:10:00",
        "callbacks.early_stopping.patience": 10},
    "generative_ml1m": {
        "data.source.name": "ml-1m-behavior", "data.num_features": 16, "data.maxlen": 200,
        "data.batch_size": 128, "model.num_features": 16, "model.embedding_dim": 128, "model.hidden_dim": 128,
        "model.num_layers": 2, "model.num_heads": 1, "model.dropout": 0.1, "model.scale_embedding": True,
        "task._target_": "genrec.tasks.generative.GenerativeTask", "task.optimizer.lr": 0.001,
        "task.scheduler._target_": "genrec.tasks.schedules.cosine_decay", "trainer.max_epochs": 40,
        "trainer.max_time": "00:00:30:00", "callbacks.early_stopping": None},
    "phoenix_retrieval_synthetic": {
        "data.source.name": "phoenix_synthetic", "data.maxlen": 50, "data.batch_size": 128,
        "model._target_": "genrec.models.phoenix.PhoenixRetrieval", "model.embedding_dim": 64,
        "model.num_layers": 2, "task._target_": "genrec.tasks.retrieval.RetrievalTask",
        "task.temperature": 0.05, "task.logq_correction": True, "task.ks": [10, 100, 1000],
        "task.optimizer.lr": 0.002, "trainer.max_epochs": 40, "trainer.max_time": "00:00:04:00"},
    "phoenix_ranker_synthetic": {
        "data.source.name": "phoenix_synthetic", "data.maxlen": 50, "data.batch_size": 32,
        "data.train_dataset._target_": "genrec.data.phoenix_datasets.RankerTrainDataset",
        "data.train_dataset.n_candidates": 64, "data.train_dataset.positives": 16,
        "model._target_": "genrec.models.phoenix.PhoenixRanker",
        "model.embedding_dim": 64, "model.num_layers": 2, "model.num_heads": 2,
        "task._target_": "genrec.tasks.ranking.RankingTask", "task.monitor": "val/sampled/ndcg@10",
        "task.action_weights.favorite": 0.5, "task.action_weights.reply": 5.0,
        "task.action_weights.report": -234.0, "trainer.max_time": "00:00:04:00"},
    "phoenix_retrieval_ml100k": {
        "data.source.name": "phoenix_ml100k", "data.maxlen": 128, "model.embedding_dim": 64,
        "task._target_": "genrec.tasks.retrieval.RetrievalTask", "task.extra_negatives": 256,
        "task.logq_correction": False,
        "trainer.max_time": "00:00:08:00"},
    "phoenix_ranker_ml100k": {
        "data.source.name": "phoenix_ml100k", "data.maxlen": 128,
        "data.train_dataset._target_": "genrec.data.phoenix_datasets.RankerTrainDataset",
        "model._target_": "genrec.models.phoenix.PhoenixRanker", "model.embedding_dim": 64,
        "task._target_": "genrec.tasks.ranking.RankingTask", "trainer.max_time": "00:00:08:00"},
    "phoenix_retrieval_beauty": {
        "data.source.name": "phoenix_beauty", "data.maxlen": 50, "model.embedding_dim": 64,
        "task._target_": "genrec.tasks.retrieval.RetrievalTask", "task.extra_negatives": 1024,
        "task.logq_correction": False,
        "trainer.max_time": "00:00:20:00"},
    "phoenix_ranker_beauty": {
        "data.source.name": "phoenix_beauty", "data.maxlen": 50,
        "data.train_dataset._target_": "genrec.data.phoenix_datasets.RankerTrainDataset",
        "model._target_": "genrec.models.phoenix.PhoenixRanker", "model.embedding_dim": 64,
        "task._target_": "genrec.tasks.ranking.RankingTask", "trainer.max_time": "00:00:20:00"},
    "tisasrec_ml1m": {
        "data.maxlen": 200, "data.batch_size": 128, "data.kcore": 5,
        "model._target_": "genrec.models.tisasrec.TiSASRec", "model.hidden_units": 50,
        "model.num_blocks": 2, "model.num_heads": 1, "model.dropout": 0.2, "model.time_span": 256,
        "task.loss": "bce", "task.optimizer.lr": 0.001, "trainer.max_epochs": 200,
        "callbacks.early_stopping.patience": 6},
}


@pytest.mark.parametrize("name", _options("experiment"))
def test_experiment_pins_its_published_hyperparameters(name):
    assert name in PINNED, f"conf/experiment/{name}.yaml has no pinned values in this test"
    cfg = _experiment(name)
    for key, expected in PINNED[name].items():
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value)
        assert value == expected, f"{name}: {key}={value!r}, expected {expected!r}"
    if name == "tisasrec_ml1m":  # needs GroupLens ratings with timestamps, not SASRec's ml-1m.txt
        assert cfg.data.source.format == "movielens_dat"


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


def test_bce_loss_gets_its_negatives_and_learns(tmp_path):
    cfg = compose_config(tmp_path, ["task.loss=bce", "trainer.max_epochs=4", "task.optimizer.lr=0.005"])
    datamodule, _ = build_components(cfg)  # the task asked for negatives; no data config says so
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.negatives is not None and ((batch.negatives > 0) == (batch.targets > 0)).all()
    metrics = train(cfg)
    assert metrics["test/ndcg@10"] > 2 * metrics["popularity/test/ndcg@10"]


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
