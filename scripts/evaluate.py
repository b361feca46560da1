"""Evaluate a checkpoint: python scripts/evaluate.py ckpt_path=PATH [data=NAME] [data.split=val|test]."""
import hydra
from omegaconf import DictConfig

from segkit.pipeline import evaluate


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> float:
    return evaluate(cfg)["mIoU"]


if __name__ == "__main__":
    main()
