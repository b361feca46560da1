"""k-fold cross-validation: python scripts/cv.py [train overrides] [cv.folds=5 cv.holdout=val ...]."""
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from segkit.cv import run_cv


@hydra.main(version_base="1.3", config_path="../configs", config_name="cv")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    overrides = [o for o in hc.overrides.task if not o.lstrip("+~").startswith("cv.")]
    result = run_cv(cfg.cv, overrides, Path(hc.runtime.output_dir),
                    lambda extra: hydra.compose("train", overrides=extra))
    return result["pooled_oof"]["mIoU"]


if __name__ == "__main__":
    main()
