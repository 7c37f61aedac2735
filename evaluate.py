"""Evaluate a checkpoint: `python evaluate.py ckpt_path=outputs/.../checkpoints/best-epoch012.ckpt`."""

import hydra
from omegaconf import DictConfig

import genrec.resolvers  # noqa: F401  (registers the config resolvers)
from genrec.run.evaluation import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
