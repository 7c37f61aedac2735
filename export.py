"""Export a trained model: `python export.py run_dir=outputs/<date>/<time> [target=onnx|tensorrt|triton]`.

Anticipated failures (TensorRTUnavailable: the ONNX outputs are complete) end in one line
(genrec/run/cli.py); HYDRA_FULL_ERROR=1 shows the traceback.
"""

import hydra
from omegaconf import DictConfig

import genrec.resolvers  # noqa: F401  (registers the config resolvers)
from genrec.export.pipeline import export
from genrec.run.cli import run_cli


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
@run_cli
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
