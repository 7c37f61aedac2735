"""Train a recommender: `python train.py [experiment=...] [key=value ...]` (Hydra).

Resume an interrupted run in its directory: `python train.py ckpt_path=last [hydra.run.dir=...]`.
Several processes: `torchrun --nproc_per_node=2 train.py trainer=ddp` (see conf/trainer/ddp.yaml).
Anticipated failures end in one line (genrec/run/cli.py); HYDRA_FULL_ERROR=1 shows the traceback.
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import genrec.resolvers  # noqa: F401  (registers the config resolvers)
from genrec.run.cli import run_cli
from genrec.run.distributed import rank_argv, share_run_dir
from genrec.run.report import check_optimized_metric, optimized_value
from genrec.run.resume import check_resume, resume_argv
from genrec.run.training import train
from genrec.validation import check_creatable

CONF = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@run_cli
def main(cfg: DictConfig) -> float | None:
    share_run_dir(HydraConfig.get().runtime.output_dir, sys.argv)  # torchrun: ranks > 0 wait for it
    check_optimized_metric(cfg)
    metrics = train(cfg)
    # returned for Hydra sweepers that optimise a metric; a key the run did not log raises
    return optimized_value(metrics, cfg.get("optimized_metric"))


@run_cli
def before_hydra(argv: list[str]) -> list[str]:
    """A resume reuses its run's directory and overrides, and is checked against its checkpoint
    before Hydra writes into that directory; ranks > 0 share rank 0's directory."""
    argv = resume_argv(argv)
    check_resume(argv, CONF)
    run_dirs = [a.split("=", 1)[1].strip("'\"") for a in argv if a.startswith("hydra.run.dir=")]
    if run_dirs:  # Hydra's own error for it is a traceback
        check_creatable("hydra.run.dir", run_dirs[-1])
    return rank_argv(argv)


if __name__ == "__main__":
    sys.argv = before_hydra(sys.argv)
    main()
