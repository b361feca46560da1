"""Predict masks: python scripts/predict.py ckpt_path=PATH input=DIR_OR_FILE output=DIR."""
import hydra
from omegaconf import DictConfig

from segkit.pipeline import predict


@hydra.main(version_base="1.3", config_path="../configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
