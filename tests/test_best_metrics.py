"""The best validation pass's metrics (val/..._best) and the sweeper's optimized_metric."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from genrec.run.callbacks import BestValidationMetrics
from genrec.run.report import MissingMetricError, optimized_value


class _Logger:
    def __init__(self) -> None:
        self.logged: list[dict] = []

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.logged.append(dict(metrics))


def _pass(cb: BestValidationMetrics, trainer, ndcg: float, hr: float, sanity: bool = False) -> None:
    trainer.sanity_checking = sanity
    trainer.callback_metrics.update({"val/ndcg@10": ndcg, "val/hr@10": hr, "train/loss": 1.0})
    cb.on_validation_end(trainer, None)


def _trainer() -> SimpleNamespace:
    return SimpleNamespace(sanity_checking=False, callback_metrics={}, loggers=[_Logger()], global_step=0)


def test_best_pass_is_snapshot_whole_and_sanity_check_ignored():
    cb, trainer = BestValidationMetrics("val/ndcg@10"), _trainer()
    _pass(cb, trainer, 0.9, 0.9, sanity=True)  # the sanity check is not an epoch
    assert cb.best_metrics() == {}
    _pass(cb, trainer, 0.1, 0.5)
    _pass(cb, trainer, 0.3, 0.4)  # best ndcg; hr is not its max, it is this pass's
    _pass(cb, trainer, 0.2, 0.6)
    assert cb.best_metrics() == {"val/ndcg@10_best": 0.3, "val/hr@10_best": 0.4}
    assert trainer.loggers[0].logged[-1] == {"val/ndcg@10_best": 0.3, "val/hr@10_best": 0.4}
    assert float(trainer.callback_metrics["val/ndcg@10_best"]) == pytest.approx(0.3)
    _pass(cb, trainer, math.nan, 0.0)  # NaN never improves
    assert cb.best_score == 0.3


def test_mode_min_and_resumed_state():
    cb, trainer = BestValidationMetrics("val/ndcg@10", mode="min"), _trainer()
    _pass(cb, trainer, 0.3, 0.1)
    _pass(cb, trainer, 0.2, 0.2)
    assert cb.best_metrics()["val/hr@10_best"] == 0.2
    resumed = BestValidationMetrics("val/ndcg@10", mode="min")
    resumed.load_state_dict(cb.state_dict())
    _pass(resumed, _trainer(), 0.25, 0.9)  # worse than the stored best: kept
    assert resumed.best_metrics() == {"val/ndcg@10_best": 0.2, "val/hr@10_best": 0.2}
    with pytest.raises(ValueError, match="mode"):
        BestValidationMetrics("val/ndcg@10", mode="best")


def test_optimized_metric_missing_key_raises_naming_it():
    metrics = {"val/ndcg@10_best": 0.25, "test/hr@10": 0.5, "best_checkpoint": "x.ckpt"}
    assert optimized_value(metrics, "val/ndcg@10_best") == 0.25
    assert optimized_value(metrics, None) is None
    with pytest.raises(KeyError) as err:
        optimized_value(metrics, "val/ndcg@20_best")
    assert isinstance(err.value, MissingMetricError)
    assert str(err.value).startswith("optimized_metric=val/ndcg@20_best: this run produced no such metric")
    assert str(err.value).endswith("; available: test/hr@10, val/ndcg@10_best")


@pytest.mark.slow
def test_train_reports_the_best_epoch_not_the_last(tiny_cfg):
    from genrec.run.training import train  # noqa: PLC0415

    # lr 0.3: val/ndcg@10 peaks at epoch 3 of 4, so the last epoch is not the best
    cfg = tiny_cfg("logger=csv", "trainer.max_epochs=4", "callbacks.early_stopping=null",
                   "task.optimizer.lr=0.3")
    assert cfg.optimized_metric == "val/ndcg@10_best"
    metrics = train(cfg)
    out = Path(cfg.paths.output_dir)
    with open(out / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    per_epoch = [float(r["val/ndcg@10"]) for r in rows if r.get("val/ndcg@10")]
    assert len(per_epoch) == 4 and per_epoch[-1] < max(per_epoch)
    stored = json.loads((out / "metrics.json").read_text())
    assert stored["val/ndcg@10_best"] == pytest.approx(max(per_epoch))
    assert metrics["val/ndcg@10_best"] == stored["val/ndcg@10_best"]
    assert stored["val/ndcg@10"] == pytest.approx(per_epoch[-1])  # the last epoch's, kept beside
    logged_best = [float(r["val/ndcg@10_best"]) for r in rows if r.get("val/ndcg@10_best")]
    assert logged_best[-1] == pytest.approx(max(per_epoch))
    assert optimized_value(metrics, cfg.optimized_metric) == stored["val/ndcg@10_best"]


# every metric key a task logs reaches evaluate's metrics.json, the table, the plot and W&B
LOGGED = {"test/hr@10": 0.5, "test/recall@5": 0.25, "test/recall@10": 0.375, "test/auc": 0.75,
          "test/loss": 3.5, "test/sampled/hr@10": 0.875, "popularity/test/recall@5": 0.125,
          "val/ndcg@10": 0.3, "train/loss": 2.0, "epoch": 3.0}


def test_evaluate_keeps_every_test_metric_whatever_its_name():
    from genrec.run.evaluation import test_metrics  # noqa: PLC0415

    kept = test_metrics(LOGGED)
    assert set(kept) == {"test/hr@10", "test/recall@5", "test/recall@10", "test/auc", "test/loss",
                         "test/sampled/hr@10", "popularity/test/recall@5"}


def test_plot_has_a_panel_for_every_at_k_family():
    from genrec.run.evaluation import at_k_curves  # noqa: PLC0415

    curves = at_k_curves(LOGGED)
    assert set(curves) == {"hr", "ndcg", "recall"}  # auc/loss have no K
    assert curves["recall"] == {"model test": {5: 0.25, 10: 0.375}, "popularity test": {5: 0.125}}
    assert curves["hr"]["model test sampled"] == {10: 0.875}


def test_table_shows_every_metric_name(capsys):
    from genrec.run.report import print_metrics_table  # noqa: PLC0415

    print_metrics_table({**LOGGED, "val/ndcg@10_best": 0.4, "best_checkpoint": "x.ckpt"}, title="t")
    out = capsys.readouterr().out
    for row in ("HR@10", "RECALL@5", "RECALL@10", "AUC", "LOSS", "NDCG@10"):
        assert row in out, row
    assert "0.2500" in out and "0.7500" in out and "3.5000" in out and "0.4000" in out
    assert "2.0000" not in out  # train/loss is no evaluation pass


def test_wandb_table_has_every_test_metric():
    from genrec.run.wandb_logger import WandbRunLogger  # noqa: PLC0415

    tables = []
    fake = SimpleNamespace(log_table=lambda key, columns, data: tables.append(data))
    WandbRunLogger.log_test_table(fake, LOGGED)
    assert sorted(tables[0]) == sorted([
        ["hr@10", "model", "full", 0.5], ["recall@5", "model", "full", 0.25],
        ["recall@10", "model", "full", 0.375], ["auc", "model", "full", 0.75],
        ["loss", "model", "full", 3.5], ["hr@10", "model", "sampled", 0.875],
        ["recall@5", "popularity", "full", 0.125]])
