"""Export a trained model: `python export.py run_dir=outputs/<date>/<time> [target=onnx|tensorrt|triton]`."""

import hydra
from omegaconf import DictConfig

import genrec.resolvers  # noqa: F401  (registers the config resolvers)
from genrec.export.pipeline import export
from genrec.export.tensorrt import TensorRTUnavailable


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        export(cfg)
    except TensorRTUnavailable as err:  # one sentence, no traceback: the ONNX outputs are complete
        raise SystemExit(str(err)) from None


if __name__ == "__main__":
    main()
