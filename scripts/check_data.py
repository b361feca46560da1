"""Validate a dataset up front: python scripts/check_data.py data=NAME [data.source.root=...]. Exits 1 on problems."""
import sys

import hydra
from omegaconf import DictConfig

from segkit.check_data import check_data


@hydra.main(version_base="1.3", config_path="../configs", config_name="check_data")
def main(cfg: DictConfig) -> None:
    if check_data(cfg)["problems"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
