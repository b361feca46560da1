"""Train a segmentation model: python scripts/train.py [hydra overrides]."""
import hydra
from omegaconf import DictConfig

from segkit.pipeline import train


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float:
    return train(cfg)["mIoU"]


if __name__ == "__main__":
    main()
