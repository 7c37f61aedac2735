"""The W&B logger of `logger=wandb`: offline without a key, named after the Hydra run or sweep."""

from __future__ import annotations

import hashlib
import netrc
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from genrec.run.report import split_key


def wandb_api_key_available() -> bool:
    """WANDB_API_KEY is set, or `wandb login` stored a key in ~/.netrc for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def hydra_run_names() -> tuple[str | None, str | None]:
    """(run name, group): "DATE/TIME" of a single run; under --multirun the sweep's "DATE/TIME"
    is the group and "<job number>:<overrides>" the name. (None, None) outside Hydra."""
    from hydra.core.hydra_config import HydraConfig  # noqa: PLC0415
    from hydra.types import RunMode  # noqa: PLC0415

    if not HydraConfig.initialized():
        return None, None
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        group = "/".join(Path(hc.sweep.dir).parts[-2:])
        return f"{hc.job.num}:{hc.job.override_dirname}", group
    return "/".join(Path(hc.run.dir).parts[-2:]), None


class WandbRunLogger(WandbLogger):
    """Lightning's WandbLogger with the project's defaults.

    offline: None = offline exactly when no API key is found (sync later with `wandb sync`);
             a WANDB_MODE environment variable (offline/disabled/online) always wins.
    id:      derived from the run directory, so resuming in the same directory continues the
             same W&B run.
    log_best_checkpoint: upload the best checkpoint as a "model" artifact (alias "best") after
             training; Lightning's own `log_model` is off (it refuses offline mode).
    """

    def __init__(
        self,
        project: str = "genrec",
        save_dir: str = ".",
        offline: bool | None = None,
        name: str | None = None,
        group: str | None = None,
        tags: Sequence[str] = (),
        log_best_checkpoint: bool = True,
        **kwargs,
    ) -> None:
        if os.environ.get("WANDB_MODE"):
            offline = False  # wandb.init reads WANDB_MODE itself
        elif offline is None:
            offline = not wandb_api_key_available()
        hydra_name, hydra_group = hydra_run_names()
        kwargs.setdefault("id", hashlib.sha1(str(Path(save_dir).resolve()).encode()).hexdigest()[:16])
        super().__init__(project=project, save_dir=save_dir, offline=offline, name=name or hydra_name,
                         group=group or hydra_group, tags=list(tags), log_model=False, **kwargs)
        self.log_best_checkpoint_enabled = log_best_checkpoint

    @rank_zero_only
    def log_test_table(self, metrics: dict[str, float]) -> None:
        """Every test metric as one W&B table: metric (any name: hr@10, recall@5, auc...), scorer
        (model or a baseline such as popularity), protocol (full, sampled...), value."""
        rows = []
        for key, value in sorted(metrics.items()):
            parsed = split_key(key) if isinstance(value, int | float) else None
            if parsed is None or parsed[0].split(" ")[1] != "test":
                continue
            scorer, _, *protocol = parsed[0].split(" ")
            rows.append([key.rsplit("/", 1)[-1], scorer, "/".join(protocol) or "full", float(value)])
        self.log_table("test/table", columns=["metric", "scorer", "protocol", "value"], data=rows)

    @rank_zero_only
    def log_checkpoint(self, path: str, monitor: str | None, score: float | None) -> None:
        """Upload `path` as the run's model artifact with the aliases "best" and "latest"."""
        import wandb  # noqa: PLC0415

        if not self.log_best_checkpoint_enabled:
            return
        artifact = wandb.Artifact(f"model-{self.experiment.id}", type="model",
                                  metadata={"monitor": monitor, "score": score,
                                            "original_filename": Path(path).name})
        artifact.add_file(path, name="model.ckpt")
        self.experiment.log_artifact(artifact, aliases=["best", "latest"])

    @rank_zero_only
    def close(self, exit_code: int = 0) -> None:
        """Finish the W&B run (a Hydra multirun starts the next job's run in this process)."""
        if self._experiment is not None:
            self._experiment.finish(exit_code=exit_code)
            self._experiment = None
