"""Train a recommender: `python train.py [experiment=...] [key=value ...]` (Hydra).

Resume an interrupted run in its directory: `python train.py ckpt_path=last [hydra.run.dir=...]`.
Several processes: `torchrun --nproc_per_node=2 train.py trainer=ddp` (see conf/trainer/ddp.yaml).
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import genrec.resolvers  # noqa: F401  (registers the config resolvers)
from genrec.run.distributed import rank_argv, share_run_dir
from genrec.run.resume import resume_argv
from genrec.run.training import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    share_run_dir(HydraConfig.get().runtime.output_dir, sys.argv)  # torchrun: ranks > 0 wait for it
    metrics = train(cfg)
    # returned for Hydra sweepers that optimise a metric
    return metrics.get(cfg.get("optimized_metric") or "", None)


if __name__ == "__main__":
    # before Hydra: a resume reuses its run's directory and overrides; ranks > 0 share rank 0's
    sys.argv = rank_argv(resume_argv(sys.argv))
    main()
