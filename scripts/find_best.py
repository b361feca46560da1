"""Choose between cross-validated configurations: python scripts/find_best.py 'cv_dirs=[CV_DIR_A,CV_DIR_B,...]'."""
from pathlib import Path

import hydra
from omegaconf import DictConfig

from segkit.cv import find_best


@hydra.main(version_base="1.3", config_path="../configs", config_name="find_best")
def main(cfg: DictConfig) -> float:
    output = Path(cfg.output_dir) if cfg.get("output_dir") else Path(hydra.core.hydra_config.HydraConfig.get()
                                                                     .runtime.output_dir)
    dirs = [cfg.cv_dirs] if isinstance(cfg.cv_dirs, str) else list(cfg.cv_dirs)  # one directory, or a list
    return find_best(dirs, output, bool(cfg.postprocessing))["best"]["mIoU"]


if __name__ == "__main__":
    main()
