"""evaluate(cfg): test a checkpoint on its own data config, both protocols, K = 1..ks_max."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from genrec.run.checkpoint import build_task, read_checkpoint
from genrec.rank_zero_log import get_logger
from genrec.run.report import print_metrics_table

log = get_logger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Returns flat test metrics (test/..., test/sampled/..., popularity/test/...)."""
    ckpt_path = Path(cfg.ckpt_path)
    ckpt = read_checkpoint(ckpt_path)
    run_cfg = OmegaConf.create(ckpt["genrec_config"])
    if cfg.get("data_overrides"):
        run_cfg.data = OmegaConf.merge(run_cfg.data, cfg.data_overrides)
    ks = list(range(1, int(cfg.ks_max) + 1))
    task, run_cfg = build_task(ckpt, ckpt_path, task_overrides={"ks": ks}, run_cfg=run_cfg)
    datamodule = instantiate(run_cfg.data)
    trainer = L.Trainer(accelerator=cfg.accelerator, devices=cfg.devices, logger=False,
                        enable_progress_bar=cfg.progress_bar, enable_model_summary=False)
    trainer.test(task, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
               if k.startswith(("test/", "popularity/"))}
    if rank_zero_only.rank == 0:
        out_dir = Path(cfg.output_dir) if cfg.get("output_dir") else ckpt_path.parent.parent / "evaluation"
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        plot_curves(metrics, ks, out_dir / "metrics_at_k.png", title=ckpt_path.name)
        shown = {k: v for k, v in metrics.items()
                 if k.rsplit("@", 1)[-1] in ("5", "10", "20") or k.endswith("mrr")}
        print_metrics_table(shown, title=f"evaluation of {ckpt_path}")
        log.info("wrote %s", out_dir.resolve())
    return metrics


def plot_curves(metrics: dict[str, float], ks: list[int], path: Path, title: str) -> None:
    """HR@K and NDCG@K against K for the model and the popularity baseline, both protocols."""
    import matplotlib  # noqa: PLC0415  (plotting is optional at import time)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, name in zip(axes, ("hr", "ndcg"), strict=True):
        for prefix, label, style in (
            ("test/", "model, full ranking", "-"),
            ("test/sampled/", "model, 100 sampled", "--"),
            ("popularity/test/", "popularity, full ranking", "-"),
            ("popularity/test/sampled/", "popularity, 100 sampled", "--"),
        ):
            values = [metrics.get(f"{prefix}{name}@{k}") for k in ks]
            if values[0] is not None:
                ax.plot(ks, values, style, label=label, color="C1" if prefix.startswith("pop") else "C0")
        ax.set_xlabel("K")
        ax.set_ylabel(f"{name.upper()}@K")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
