"""Evaluate a checkpoint: `python evaluate.py ckpt_path=outputs/.../checkpoints/best-epoch012.ckpt`.

Anticipated failures end in one line (genrec/run/cli.py); HYDRA_FULL_ERROR=1 shows the traceback.
"""

import hydra
from omegaconf import DictConfig

import genrec.resolvers  # noqa: F401  (registers the config resolvers)
from genrec.run.cli import run_cli
from genrec.run.evaluation import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
@run_cli
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
