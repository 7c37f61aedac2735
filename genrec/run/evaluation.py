"""evaluate(cfg): test a checkpoint on its own data config, both protocols, K = 1..ks_max."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from genrec.rank_zero_log import get_logger
from genrec.run.checkpoint import CheckpointError, build_task, read_checkpoint
from genrec.run.report import print_metrics_table, split_key
from genrec.validation import check_writable

log = get_logger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Returns every flat test metric the task logs (test/..., test/sampled/..., popularity/test/...);
    with `retrieval_ckpt` set, the Phoenix two-stage evaluation's metrics instead."""
    if cfg.get("retrieval_ckpt"):
        from genrec.run.two_stage import evaluate_two_stage  # noqa: PLC0415  (it imports this module)

        return evaluate_two_stage(cfg)
    ckpt_path = Path(cfg.ckpt_path)
    out_dir = Path(cfg.output_dir) if cfg.get("output_dir") else ckpt_path.parent.parent / "evaluation"
    if rank_zero_only.rank == 0:  # before the test pass, not after it
        check_writable("output_dir", out_dir)
    ckpt = read_checkpoint(ckpt_path, allow_unsafe=bool(cfg.get("allow_unsafe_checkpoint", False)))
    run_cfg = OmegaConf.create(ckpt["genrec_config"])
    if cfg.get("data_overrides"):
        run_cfg.data = OmegaConf.merge(run_cfg.data, cfg.data_overrides)
    # K = 1..ks_max; a task that ranks beams (task.beam_size) ranks no further than its beam
    ks = list(range(1, min(int(cfg.ks_max), int(run_cfg.task.get("beam_size") or cfg.ks_max)) + 1))
    task, run_cfg = build_task(ckpt, ckpt_path, task_overrides={"ks": ks}, run_cfg=run_cfg)
    datamodule = instantiate(run_cfg.data)
    check_item_count(ckpt, datamodule, ckpt_path)
    trainer = L.Trainer(accelerator=cfg.accelerator, devices=cfg.devices, logger=False,
                        enable_progress_bar=cfg.progress_bar, enable_model_summary=False)
    trainer.test(task, datamodule=datamodule, verbose=False)
    metrics = test_metrics(trainer.callback_metrics)
    if rank_zero_only.rank == 0:
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        plot_curves(metrics, ks, out_dir / "metrics_at_k.png", title=ckpt_path.name)
        shown = {k: v for k, v in metrics.items() if split_key(k)[2] in ("", "5", "10", "20")}
        print_metrics_table(shown, title=f"evaluation of {ckpt_path}")
        log.info("wrote %s", out_dir.resolve())
    return metrics


def check_item_count(ckpt: dict, datamodule, ckpt_path: Path) -> None:
    """What the data builds the model from (`model_kwargs`: the item count, code levels...) is what
    the checkpoint was trained with (else item ids or codes mean other items)."""
    datamodule.prepare_data()
    datamodule.setup()
    trained = ckpt["hyper_parameters"]["net_config"]
    for key, value in datamodule.model_kwargs().items():
        if key in trained and trained[key] != value:
            raise CheckpointError(f"{ckpt_path} was trained with {key}={trained[key]}, but the data "
                                  f"(data_overrides) gives {key}={value}: evaluate it on its own data")


def test_metrics(callback_metrics: dict) -> dict[str, float]:
    """Every key of a test pass, whatever the metric (hr@K, recall@K, auc, loss...) and scorer
    (the model's test/..., a baseline's popularity/test/...)."""
    return {k: float(v) for k, v in callback_metrics.items()
            if (parsed := split_key(k)) is not None and parsed[0].split(" ")[1] == "test"}


def at_k_curves(metrics: dict[str, float]) -> dict[str, dict[str, dict[int, float]]]:
    """family (hr, ndcg, recall...) -> column ('model test sampled'...) -> K -> value."""
    curves: dict[str, dict[str, dict[int, float]]] = {}
    for key, value in metrics.items():
        parsed = split_key(key)
        if parsed is not None and parsed[2].isdigit():
            column, name, k = parsed
            curves.setdefault(name, {}).setdefault(column, {})[int(k)] = value
    return curves


def plot_curves(metrics: dict[str, float], ks: list[int], path: Path, title: str) -> None:
    """Every @K metric family present (hr, ndcg, recall...) against K: one panel per family,
    one line per scorer x protocol (model/baseline, full/sampled)."""
    import matplotlib  # noqa: PLC0415  (plotting is optional at import time)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    curves = at_k_curves(metrics)
    if not curves:
        log.warning("no @K metric to plot: %s not written", path)
        return
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), squeeze=False)
    scorers = sorted({c.split(" ")[0] for family in curves.values() for c in family})
    for ax, name in zip(axes[0], sorted(curves), strict=True):
        for column, values in sorted(curves[name].items()):
            xs = [k for k in ks if k in values] or sorted(values)
            ax.plot(xs, [values[k] for k in xs], "--" if len(column.split(" ")) > 2 else "-",
                    label=column, color=f"C{scorers.index(column.split(' ')[0])}")
        ax.set_xlabel("K")
        ax.set_ylabel(f"{name.upper()}@K")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
